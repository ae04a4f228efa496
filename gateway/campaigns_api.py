"""The local API's campaign endpoints (gateway/campaigns.py), mounted by gateway/api.py.

Authenticated like every endpoint (the API's bearer middleware), JSON out, errors
`{"error": "..."}`:

  POST /campaigns?group=G[&canary=N|F][&window_s=S][&healthy_after_s=S]
        body: the release image (.lup) as is (Content-Type application/octet-stream), up to
        release_image.MAX_IMAGE bytes. 201 the campaign; 400 not a release image, not signed by
        the city's key, or not for every node of the group (the message names them); 404 no
        such group; 409 a node is in another running or paused campaign, or no delivery wired;
        413 too large
  GET  /campaigns                 every campaign kept: {"campaigns": [summary]}
  GET  /campaigns/{id}            one, with "nodes": {id: {"stage", "state", "fraction", "since",
                                  "reason", "installed_at"}}
  POST /campaigns/{id}/pause      running -> paused (the delivery in flight is cancelled)
  POST /campaigns/{id}/resume     paused -> running (delivery goes on to the nodes still pending)
  POST /campaigns/{id}/abort      running or paused -> aborted
        200 the campaign; 404 no such campaign; 409 not in a state that allows it
"""

from __future__ import annotations

import math
from typing import Any

from aiohttp import web

from gateway.campaigns import CampaignError, Campaigns
from gateway.release_image import MAX_IMAGE
from gateway.store import StoreError

_PARAMS = ("group", "canary", "window_s", "healthy_after_s")


def _error(status: int, msg: str) -> web.Response:
    return web.json_response({"error": msg}, status=status)


def _number(request: web.Request, name: str) -> float | None:
    text = request.query.get(name)
    if text is None:
        return None
    try:
        v = float(text)
    except ValueError:
        v = math.nan
    if not math.isfinite(v) or len(text) > 20:
        raise CampaignError(f"{name}: a number, got {text[:20]!r}")
    return v


class CampaignRoutes:
    def __init__(self, campaigns: Campaigns | None) -> None:
        self.campaigns = campaigns

    def add(self, r: web.UrlDispatcher) -> None:
        r.add_post("/campaigns", self.post_campaign)
        r.add_get("/campaigns", self.list_campaigns)
        r.add_get("/campaigns/{id}", self.get_campaign)
        for action in ("pause", "resume", "abort"):
            r.add_post("/campaigns/{id}/" + action, self.act)

    def _need(self) -> Campaigns:
        if self.campaigns is None:
            raise web.HTTPNotFound(
                text='{"error": "campaigns are not run by this API"}', content_type="application/json"
            )
        return self.campaigns

    async def post_campaign(self, request: web.Request) -> web.Response:
        campaigns = self._need()
        extra = sorted(set(request.query) - set(_PARAMS))
        if extra:
            return _error(400, f"{extra[0][:40]}: unknown parameter (known: {', '.join(_PARAMS)})")
        group = request.query.get("group")
        if not group:
            return _error(400, "group: required (?group=NAME)")
        chunks, size = [], 0
        async for chunk in request.content.iter_chunked(65536):
            size += len(chunk)
            if size > MAX_IMAGE:
                return _error(413, f"the image is over {MAX_IMAGE} bytes")
            chunks.append(chunk)
        try:
            canary = _number(request, "canary")
            c = await campaigns.create(
                group,
                b"".join(chunks),
                canary=1 if canary is None else canary,
                window_s=_number(request, "window_s"),
                healthy_after_s=_number(request, "healthy_after_s"),
            )
        except CampaignError as e:
            return _error(e.status, str(e))
        except StoreError as e:
            return _error(503, f"not saved: {e}")
        return web.json_response(c.public(), status=201)

    async def list_campaigns(self, request: web.Request) -> web.Response:
        campaigns = self._need()
        return web.json_response({"campaigns": [c.summary() for c in campaigns.all()]})

    def _id(self, request: web.Request) -> int:
        text = request.match_info["id"]
        if not text.isascii() or not text.isdigit() or len(text) > 12:
            raise web.HTTPBadRequest(text='{"error": "a campaign id is a number"}', content_type="application/json")
        return int(text)

    async def get_campaign(self, request: web.Request) -> web.Response:
        c = self._need().get(self._id(request))
        if c is None:
            return _error(404, "no such campaign")
        return web.json_response(c.public())

    async def act(self, request: web.Request) -> web.Response:
        campaigns = self._need()
        cid = self._id(request)
        action: Any = {
            "pause": campaigns.pause,
            "resume": campaigns.resume,
            "abort": campaigns.abort,
        }[request.path.rsplit("/", 1)[1]]
        try:
            c = await action(cid)
        except CampaignError as e:
            return _error(e.status, str(e))
        except StoreError as e:
            return _error(503, f"not saved: {e}")
        return web.json_response(c.public())
