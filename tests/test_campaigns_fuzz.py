"""POST /campaigns and the campaign actions under hostile input (hypothesis): random bodies, an
image cut, padded or with any byte flipped, random query parameters and ids. Never a 5xx, never
a campaign from an image that is not the one signed; the real API, store and campaigns run on
their own loop in a thread (tests/test_fleet_cli.py Threaded)."""

from __future__ import annotations

import urllib.error
import urllib.parse
import urllib.request

import pytest
from campaign_helpers import build_images
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_campaigns import TOKEN
from test_fleet_cli import Threaded

from gateway.campaigns import Campaigns

AUTH = {"Authorization": f"Bearer {TOKEN}"}


class Nowhere:
    """A delivery that never sends (the fuzz is about what the API accepts, not what moves)."""

    async def deliver(self, image, node_ids, report) -> None:
        return None


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    images = build_images(tmp_path_factory.mktemp("fuzz-images"))
    s = Threaded(tmp_path_factory.mktemp("fuzz-gw"), Nowhere())
    s.rig.campaigns.release_key = images.public_key  # as [campaigns] release_key sets it
    yield s, images
    s.close()


def call(s: Threaded, method: str, path: str, data: bytes | None = None) -> tuple[int, bytes]:
    req = urllib.request.Request(s.url + path, data=data, method=method, headers=AUTH)
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def mutate(image: bytes, how: str, at: int, byte: int) -> bytes:
    at %= len(image)
    if how == "cut":
        return image[:at]
    if how == "pad":
        return image + bytes([byte]) * (1 + at % 7)
    flipped = image[at] ^ (byte or 1)
    return image[:at] + bytes([flipped]) + image[at + 1 :]


queries = st.one_of(
    st.just({"group": "quai"}),
    st.dictionaries(
        st.sampled_from(["group", "canary", "window_s", "healthy_after_s", "x"]),
        st.one_of(st.text(max_size=25), st.sampled_from(["quai", "mixte", "1", "0.5", "-1", "nan", "1e400", "3"])),
        max_size=4,
    ),
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    how=st.sampled_from(["cut", "pad", "flip"]),
    at=st.integers(min_value=0, max_value=2**20),
    byte=st.integers(min_value=0, max_value=255),
    query=queries,
    junk=st.binary(max_size=300),
    use_junk=st.booleans(),
)
def test_fuzz_post_campaigns_never_5xx_nor_a_bad_image_started(env, how, at, byte, query, junk, use_junk):
    s, images = env
    body = junk if use_junk else mutate(images.image, how, at, byte)
    status, out = call(s, "POST", "/campaigns?" + urllib.parse.urlencode(query), body)
    assert status in (400, 404, 409, 413), (status, out[:200])
    campaigns: Campaigns = s.rig.campaigns
    assert campaigns.all() == []


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    ident=st.one_of(st.text(max_size=14), st.integers(min_value=-5, max_value=10**15).map(str)),
    action=st.sampled_from(["", "/pause", "/resume", "/abort", "/x"]),
    method=st.sampled_from(["GET", "POST"]),
)
def test_fuzz_campaign_ids_and_actions_never_5xx(env, ident, action, method):
    s, _ = env
    path = "/campaigns/" + (urllib.parse.quote(ident, safe="") or "%20") + action
    status, out = call(s, method, path, b"" if method == "POST" else None)
    assert status < 500, (status, out[:200])
