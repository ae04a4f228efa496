"""Firmware update campaigns (issue 12 item 5): a signed release to a group, canaries first.

(Over 600 lines: the model, its runner and the uplink observer are one state machine, kept together.)

A campaign sends one release image (.lup, SPEC §13) to the members of a group in two stages:
the canaries (the first `canary` members by node id: a count, or a fraction of the group
rounded up, at least 1), then the rest, only once every canary is healthy within
`window_s` of the end of their delivery. It can be paused, resumed and aborted.

Campaign states: running, paused, done, halted (a canary rolled back, failed, or was not
healthy in time: the reason says which; the rest are never sent the release), aborted.
Stages: canary, rest, done. A rest-stage node that rolls back or fails does not stop the
others: it is dropped from the delivery at once (Delivery.drop) and the campaign ends done,
its reason "done with failures: 2 rolled back, 1 failed of 60" (empty when every node is
healthy).

Node states, in order:
  pending      not sent yet
  receiving    the delivery is moving the image (its `fraction`, 0..1)
  verifying    the node holds the whole image and checks it (the delivery says so)
  installed    a HELLO reports the release's bundle id: it booted the new release, on trial
  healthy      an uplink `healthy_after_s` (default 150 s) or more after that HELLO, with no
               HELLO between: the node ran its trial past HEALTHY_MS (2 min, firmware/slots.py),
               after hearing the TIME the gateway answers every HELLO with, so it committed
  rolled_back  after verifying/installed/healthy, a HELLO reports another bundle id (or none):
               the release crashed, hung or could not reach the gateway and rolled itself back
  failed       the delivery reported failure, or (rest stage) not healthy within the window

Why these rules (SPEC §13 "A/B slots"): the node commits a trial itself and HELLO carries no
"committed" flag, only the running bundle id (3 bytes). A trial that is not committed resets
and says HELLO again, from the new release while it has boots left (installed_at restarts:
the node must again run `healthy_after_s`), then from the previous one (rolled_back). A
HELLO from the old release while the image is still `receiving` is only a reboot. The
gateway's per-node release tracking (gateway/releases.py) is fed the same way: the expected
release is set for a node when it holds the image (verifying, or its stage's delivery
returned), not before, so a node rebooting mid-transfer is not taken for a rollback.

Delivery is a seam (`Delivery`): the runner hands it the image and the nodes of a stage and
it reports receiving/verifying/failed per node (gateway/fuota.py's FuotaDelivery over LoRa;
gateway/service.py wires it: lamps that listen get a stage by multicast, on their group when
the stage is all of it, else on a temporary group of the stage's lamps, the canaries' own).
Installed, healthy and rolled back come only from uplinks through the pipeline (`on_uplink`,
an observer like the downlinks).

Persistence: every campaign, its image and its nodes are rows of the gateway's SQLite store
(gateway/store/campaigns.py), written within FLUSH_S of a change and at once on a change of
campaign state or stage. A restarted gateway loads them and resumes each running campaign:
a stage whose delivery had not returned is delivered again to its nodes still pending or
receiving; otherwise its window goes on where it was.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

from gateway import release_image, releases
from gateway.model import Reception, Record
from gateway.registry import Registry, format_node_id
from gateway.store import Store, StoreError
from protocol import messages as m

log = logging.getLogger("lumeau.gateway.campaigns")

NODE_STATES = ("pending", "receiving", "verifying", "installed", "healthy", "rolled_back", "failed")
STATES = ("running", "paused", "done", "halted", "aborted")
FINAL = frozenset(("done", "halted", "aborted"))
ACTIVE = frozenset(("running", "paused"))
HEALTHY_AFTER_S = 150.0  # HEALTHY_MS (120 s, firmware/slots.py) and a margin for the node's boot
WINDOW_S = 7200.0  # a failing trial rolls back within 3 boots of TRIAL_MS (30 min): 90 min, and margin
FLUSH_S = 0.5  # progress reports reach the disk this often at most
REPORTED = ("receiving", "verifying", "failed")  # what a Delivery may report
PAST_DELIVERY = frozenset(("verifying", "installed", "healthy"))
DELIVERABLE = frozenset(("pending", "receiving"))
# a node in these while its stage's delivery runs is dropped from it (Delivery.drop): its HELLO
# showed the release (it holds the image) or a rollback, or the delivery gave up on it
OUT_OF_DELIVERY = frozenset(("installed", "healthy", "rolled_back", "failed"))


class Report(Protocol):
    """What a Delivery calls per node: ("receiving", fraction), ("verifying", None), ("failed", None,
    why): the reason is shown with the node (a Delivery may leave it out)."""

    def __call__(self, node_id: int, state: str, fraction: float | None, reason: str = "") -> None: ...


class Delivery(Protocol):
    """Moves a release image to nodes (gateway/fuota.py FuotaDelivery: LoRa multicast with FEC).

    Reports per node: ("receiving", fraction 0..1), ("verifying", None), ("failed", None).
    Returns when it is done with every node; it is cancelled on pause and abort, and in the
    canary stage when a canary is rolled back or failed meanwhile. It may also have
    `drop(node_id)`: take one node out of the delivery (no more frames nor status requests to
    it, nothing more reported; the others go on), called once per node that rolled back,
    failed or installed the release meanwhile (FuotaDelivery has it)."""

    async def deliver(self, image: bytes, node_ids: Sequence[int], report: Report) -> None: ...


class CampaignError(ValueError):
    """A campaign request refused; `status` is the HTTP status the API answers."""

    def __init__(self, msg: str, status: int = 400) -> None:
        super().__init__(msg)
        self.status = status


@dataclass
class NodeProgress:
    stage: str  # canary | rest
    state: str = "pending"
    fraction: float | None = None
    since: float = 0.0
    reason: str = ""
    installed_at: float | None = None  # the latest HELLO reporting the release's bundle id
    expected_set: bool = False  # the release is expected of it in gateway/releases.py
    previous: dict[str, str] | None = None  # the release expected of it before the campaign

    def to_doc(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_doc(cls, doc: dict[str, Any]) -> NodeProgress:
        return cls(**{k: doc[k] for k in cls.__dataclass_fields__ if k in doc})


@dataclass
class Campaign:
    id: int
    group: str
    release: dict[str, Any]  # version, bundle, kind, target, base, key, bytes
    canary: int
    window_s: float
    healthy_after_s: float
    state: str = "running"
    stage: str = "canary"
    reason: str = ""
    created: float = 0.0
    updated: float = 0.0
    delivered: bool = False  # the current stage's delivery returned
    deadline: float | None = None  # the current stage's window ends
    nodes: dict[int, NodeProgress] = field(default_factory=dict)

    _FIELDS = ("group", "release", "canary", "window_s", "healthy_after_s", "state", "stage", "reason")

    def doc(self) -> dict[str, Any]:
        keys = (*self._FIELDS, "created", "updated", "delivered", "deadline")
        return {k: getattr(self, k) for k in keys}

    def counts(self) -> dict[str, int]:
        out = dict.fromkeys(NODE_STATES, 0)
        for n in self.nodes.values():
            out[n.state] += 1
        return out

    def summary(self) -> dict[str, Any]:
        return {"id": self.id, **self.doc(), "nodes_total": len(self.nodes), "counts": self.counts()}

    def public(self) -> dict[str, Any]:
        nodes = {
            format_node_id(n): {k: v for k, v in p.to_doc().items() if k not in ("previous", "expected_set")}
            for n, p in sorted(self.nodes.items())
        }
        return {**self.summary(), "nodes": nodes}

    def stage_nodes(self) -> list[int]:
        return sorted(n for n, p in self.nodes.items() if p.stage == self.stage)


def canary_count(value: float, members: int) -> int:
    """A count (an integer >= 1) or a fraction (0 < f < 1, rounded up), at least 1, at most the group."""
    if value >= 1:
        if value != int(value):
            raise CampaignError("canary: a count (a whole number >= 1) or a fraction between 0 and 1")
        return min(int(value), members)
    if value <= 0:
        raise CampaignError("canary: a count (a whole number >= 1) or a fraction between 0 and 1")
    return min(members, max(1, math.ceil(value * members)))


class Campaigns:
    """Every campaign of this gateway: create, pause, resume, abort; the runners; the uplink observer.

    `await load()` before the pipeline runs (the observer then knows the active campaigns),
    `start()` once the transports are up (the runners deliver), `await close()` first at stop.
    """

    def __init__(
        self,
        store: Store,
        registry: Registry,
        delivery: Delivery | None,
        *,
        release_key: bytes | None = None,
        target: str = "",
        healthy_after_s: float = HEALTHY_AFTER_S,
        window_s: float = WINDOW_S,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.registry = registry
        self.delivery = delivery
        self.release_key = release_key
        self.target = target
        self.healthy_after_s = healthy_after_s
        self.window_s = window_s
        self.clock = clock
        self.campaigns: dict[int, Campaign] = {}
        self._by_node: dict[int, Campaign] = {}  # nodes of running or paused campaigns
        self._images: dict[int, bytes] = {}
        self._tasks: dict[int, asyncio.Task] = {}
        self._events: dict[int, asyncio.Event] = {}
        self._dirty: dict[int, set[int]] = {}  # campaign id -> nodes changed (the campaign row always)
        self._wake = asyncio.Event()
        self._lock = asyncio.Lock()
        self._flusher: asyncio.Task | None = None
        self._closing = False

    # ------------------------------------------------------------ lifecycle

    async def load(self) -> None:
        for cid, doc, nodes in self.store.campaigns.rows():
            c = Campaign(id=cid, **{k: doc[k] for k in Campaign._FIELDS})
            c.created, c.updated = doc["created"], doc["updated"]
            c.delivered, c.deadline = doc["delivered"], doc["deadline"]
            c.nodes = {n: NodeProgress.from_doc(d) for n, d in nodes.items()}
            self.campaigns[cid] = c
            if c.state in ACTIVE:
                self._index(c)
                self._reconcile(c)

    def _reconcile(self, c: Campaign) -> None:
        """Fold in what the store's node state saw while no campaign was watching (a HELLO
        between the last flush and a crash): a node running the release is installed."""
        for n, p in c.nodes.items():
            since = self._runs_release(c, n)
            if since is not None and p.state in DELIVERABLE | {"verifying"}:
                self._set(c, n, p, "installed", installed_at=since)

    def _runs_release(self, c: Campaign, node_id: int) -> float | None:
        """When the node's last HELLO (as the store's node state keeps it) reported the release, else None."""
        rel = (self.store.node_state(node_id) or {}).get("release") or {}
        if not releases.runs(rel.get("running"), c.release["bundle"]):
            return None
        last = (self.store.node_state(node_id) or {}).get("last_seen")
        return float(rel.get("since") or last or self.clock())

    def start(self) -> None:
        self._flusher = asyncio.create_task(self._run_flusher(), name="lumeau-campaigns-flush")
        running = [c for c in self.campaigns.values() if c.state == "running"]
        if running and self.delivery is None:
            log.warning("campaigns running but no release delivery wired: they wait", extra={"campaigns": len(running)})
            return
        for c in running:
            self._spawn(c)

    async def close(self) -> None:
        """Stop the runners (their campaigns stay running on disk: the next start resumes them)."""
        self._closing = True
        tasks = list(self._tasks.values())
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for c in self.campaigns.values():
            if c.state == "running":
                self._put_back(c)  # their delivery was cancelled: sent again from the start
        if self._flusher is not None:
            self._flusher.cancel()
            await asyncio.gather(self._flusher, return_exceptions=True)
        try:
            await self._flush()
        except StoreError as e:
            log.warning("campaign progress not flushed at close: %s", e)

    # ------------------------------------------------------------ requests

    async def create(
        self,
        group: str,
        image: bytes,
        canary: float = 1,
        window_s: float | None = None,
        healthy_after_s: float | None = None,
    ) -> Campaign:
        """Check the image against the group's nodes and start a campaign (CampaignError: why not)."""
        if self.delivery is None:
            raise CampaignError(
                "this gateway has no release delivery wired (FUOTA: gateway/service.py _campaign_delivery)", 409
            )
        g = self.registry.group(group)
        if g is None:
            raise CampaignError(f"no such group {group!r}", 404)
        if not g.members:
            raise CampaignError(f"group {group} has no member")
        for name, v in (("window_s", window_s), ("healthy_after_s", healthy_after_s)):
            if v is not None and not 0 < v <= 30 * 86400:
                raise CampaignError(f"{name}: seconds, more than 0 and at most 30 days")
        try:
            manifest = release_image.inspect(image, self.release_key)
            release_image.check_nodes(manifest, self._targets(g.members), self.target)
        except release_image.ImageRefused as e:
            raise CampaignError(str(e)) from None
        busy = sorted(n for n in g.members if n in self._by_node)
        if busy:
            other = self._by_node[busy[0]].id
            raise CampaignError(f"node {format_node_id(busy[0])} is in campaign {other}, not finished", 409)
        count = canary_count(canary, len(g.members))
        now = self.clock()
        members = sorted(g.members)
        c = Campaign(
            id=0,
            group=group,
            release=release_image.summary(manifest, len(image)),
            canary=count,
            window_s=window_s or self.window_s,
            healthy_after_s=healthy_after_s or self.healthy_after_s,
            created=now,
            updated=now,
        )
        for i, n in enumerate(members):
            prev = ((self.store.node_state(n) or {}).get("release") or {}).get("expected")
            p = c.nodes[n] = NodeProgress(stage="canary" if i < count else "rest", since=now, previous=prev)
            p.installed_at = self._runs_release(c, n)
            if p.installed_at is not None:  # flashed by wire, or left from an earlier campaign
                p.state = "installed"
        c.id = await self.store.campaigns.create(c.doc(), image, {n: p.to_doc() for n, p in c.nodes.items()})
        self.campaigns[c.id] = c
        for old in self.store.campaigns.forget([k for k, v in self.campaigns.items() if v.state in FINAL]):
            del self.campaigns[old]  # the store keeps the last KEEP_ENDED ended ones
        self._images[c.id] = image
        self._index(c)
        log.info(
            "campaign started",
            extra={"campaign": c.id, "group": group, "version": c.release["version"], "nodes": len(members)},
        )
        self._spawn(c)
        return c

    def get(self, cid: int) -> Campaign | None:
        return self.campaigns.get(cid)

    def all(self) -> list[Campaign]:
        return [self.campaigns[k] for k in sorted(self.campaigns)]

    async def pause(self, cid: int) -> Campaign:
        c = self._need(cid, ("running",), "pause")
        await self._stop_runner(c)
        c.state = "paused"
        self._put_back(c)
        await self._changed(c, "paused")
        return c

    async def resume(self, cid: int) -> Campaign:
        c = self._need(cid, ("paused",), "resume")
        if self.delivery is None:
            raise CampaignError("this gateway has no release delivery wired: nothing can be sent", 409)
        c.state = "running"
        if c.delivered:
            c.deadline = self.clock() + c.window_s  # a fresh window: time paused is not the nodes' fault
        await self._changed(c, "resumed")
        self._spawn(c)
        return c

    async def abort(self, cid: int) -> Campaign:
        c = self._need(cid, ("running", "paused"), "abort")
        await self._stop_runner(c)
        await self._finish(c, "aborted", "aborted by request")
        return c

    def _need(self, cid: int, states: tuple[str, ...], what: str) -> Campaign:
        c = self.campaigns.get(cid)
        if c is None:
            raise CampaignError(f"no campaign {cid}", 404)
        if c.state not in states:
            raise CampaignError(f"campaign {cid} is {c.state}: cannot {what} it", 409)
        return c

    def _targets(self, members: Sequence[int]) -> list[release_image.Target]:
        out = []
        for n in members:
            e = self.registry.get(n)
            st = self.store.node_state(n) or {}
            running = (st.get("release") or {}).get("running")
            firmware = st.get("firmware") or (e.firmware if e is not None else "") or None
            out.append(release_image.Target(n, e.kind if e is not None else None, firmware, running))
        return out

    # ------------------------------------------------------------ observing the nodes

    def on_uplink(self, record: Record, reception: Reception) -> None:
        c = self._by_node.get(record.node_id)
        if c is None:
            return
        p = c.nodes[record.node_id]
        if record.mtype == m.HELLO:
            running = releases.hello_running(record.body.get(m.H_BUNDLE))
            if releases.runs(running, c.release["bundle"]):
                if p.state != "healthy":  # a committed node rebooting stays healthy
                    self._set(c, record.node_id, p, "installed", installed_at=record.rx_time)
            elif p.state in PAST_DELIVERY:
                self._set(c, record.node_id, p, "rolled_back", reason=f"HELLO reports bundle {running or 'none'}")
        elif p.state == "installed" and p.installed_at is not None:
            if record.rx_time - p.installed_at >= c.healthy_after_s:
                self._set(c, record.node_id, p, "healthy")

    def on_duplicate(self, node_id: int, counter: int, reception: Reception) -> None:
        pass

    def _report(self, c: Campaign, node_id: int, state: str, fraction: float | None, reason: str = "") -> None:
        """A Delivery's report; never moves a node back from what its uplinks showed."""
        p = c.nodes.get(node_id)
        if (
            c.state != "running"
            or p is None
            or state not in REPORTED
            or p.stage != c.stage
            or p.state not in DELIVERABLE | {"verifying"}
        ):
            return
        if state == "receiving":
            f = fraction if isinstance(fraction, (int, float)) and math.isfinite(fraction) else None
            f = None if f is None else min(1.0, max(0.0, float(f)))
            if p.state == "receiving" and p.fraction == f:
                return
            self._set(c, node_id, p, "receiving", fraction=f)
        elif state == "verifying":
            self._set(c, node_id, p, "verifying", fraction=1.0)
        else:
            why = reason[:200] if isinstance(reason, str) and reason else ""
            self._set(c, node_id, p, "failed", reason=f"delivery failed: {why}" if why else "delivery failed")

    def _set(self, c: Campaign, node_id: int, p: NodeProgress, state: str, **kw: Any) -> None:
        changed = p.state != state
        p.state = state
        p.since = self.clock() if changed else p.since
        for k, v in kw.items():
            setattr(p, k, v)
        if changed and state != "receiving":
            log.info(
                "campaign node %s",
                state,
                extra={"campaign": c.id, "node": format_node_id(node_id), "reason": p.reason or None},
            )
        self._dirty.setdefault(c.id, set()).add(node_id)
        self._wake.set()
        ev = self._events.get(c.id)
        if ev is not None:
            ev.set()

    # ------------------------------------------------------------ the runner

    def _spawn(self, c: Campaign) -> None:
        if self._closing:
            return
        self._events[c.id] = asyncio.Event()
        self._tasks[c.id] = asyncio.create_task(self._run(c), name=f"lumeau-campaign-{c.id}")

    async def _stop_runner(self, c: Campaign) -> None:
        t = self._tasks.pop(c.id, None)
        if t is not None and t is not asyncio.current_task():
            t.cancel()
            await asyncio.gather(t, return_exceptions=True)

    async def _run(self, c: Campaign) -> None:
        try:
            while c.state == "running":
                if not c.delivered:
                    await self._deliver(c)
                    continue
                verdict = self._judge(c)
                if verdict is None:
                    ev = self._events[c.id]
                    ev.clear()
                    left = (c.deadline or self.clock()) - self.clock()
                    try:
                        await asyncio.wait_for(ev.wait(), max(0.0, left))
                    except TimeoutError:
                        pass
                    continue
                await verdict
        except asyncio.CancelledError:
            raise
        except StoreError as e:  # the disk: the campaign stays as it was on it; a restart resumes it
            log.error("campaign runner stopped: progress not saved: %s", e, extra={"campaign": c.id})
        except Exception:  # a bug: the campaign stops where it is, the gateway goes on
            log.exception("campaign runner failed", extra={"campaign": c.id})
            try:
                await self._finish(c, "halted", "internal error (see the gateway's log)")
            except StoreError as e:
                log.error("campaign halt not saved: %s", e, extra={"campaign": c.id})
        finally:
            if self._tasks.get(c.id) is asyncio.current_task():
                del self._tasks[c.id]

    async def _deliver(self, c: Campaign) -> None:
        ids = [n for n in c.stage_nodes() if c.nodes[n].state in DELIVERABLE]
        if ids:
            assert self.delivery is not None
            image = self._image(c)
            log.info("campaign delivering", extra={"campaign": c.id, "stage": c.stage, "nodes": len(ids)})
            try:
                await self._deliver_watching(c, image, ids)
            except asyncio.CancelledError:
                raise
            except Exception as e:  # the delivery gave up: its nodes failed, the window decides the rest
                log.warning("campaign delivery failed: %r", e, extra={"campaign": c.id})
                for n in ids:
                    p = c.nodes[n]
                    if p.state in DELIVERABLE:
                        self._set(c, n, p, "failed", reason=f"delivery failed: {str(e)[:120]}")
        c.delivered = True
        c.deadline = self.clock() + c.window_s
        await self._changed(c, None)

    async def _deliver_watching(self, c: Campaign, image: bytes, ids: list[int]) -> None:
        """The stage's delivery, watched: cut short when a canary rolls back or fails, and in the
        rest stage a node that did is dropped from it (the others go on).

        A node installs as soon as its image is complete (firmware/fuota.py), so it can boot the
        release, fail its trial and come back on the old one while the delivery still serves the
        others (or waits for its own status answer, which would then ask it for the whole image
        again): the halt, or the drop, must not wait for the delivery to return. A node whose
        HELLO reports the release holds the image: it is dropped too (no more fragments to it)."""
        assert self.delivery is not None
        task = asyncio.ensure_future(self.delivery.deliver(image, ids, functools.partial(self._report, c)))
        ev = self._events[c.id]
        drop: Callable[[int], None] | None = getattr(self.delivery, "drop", None)
        dropped: set[int] = set()
        try:
            while not task.done():
                ev.clear()
                woke = asyncio.ensure_future(ev.wait())
                try:
                    await asyncio.wait({task, woke}, return_when=asyncio.FIRST_COMPLETED)
                finally:
                    woke.cancel()
                if task.done():
                    break
                if c.stage == "canary" and self._canary_down(c):
                    log.info("campaign delivery stopped: a canary is down", extra={"campaign": c.id})
                    task.cancel()
                    await asyncio.gather(task, return_exceptions=True)
                    return
                if drop is not None:
                    for n in ids:
                        if n not in dropped and c.nodes[n].state in OUT_OF_DELIVERY:
                            dropped.add(n)
                            drop(n)
            await task  # its exception, if any
        finally:
            if not task.done():  # we were cancelled (pause, abort, close)
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)

    def _canary_down(self, c: Campaign) -> bool:
        return any(c.nodes[n].state in ("rolled_back", "failed") for n in c.stage_nodes())

    def _judge(self, c: Campaign) -> Any:
        """The stage's outcome as a coroutine to await, or None while it is open."""
        nodes = [c.nodes[n] for n in c.stage_nodes()]
        late = c.deadline is not None and self.clock() >= c.deadline
        if c.stage == "canary":
            for n in c.stage_nodes():
                p = c.nodes[n]
                if p.state in ("rolled_back", "failed"):
                    what = "rolled back" if p.state == "rolled_back" else "failed"
                    return self._finish(c, "halted", f"canary {format_node_id(n)} {what}: {p.reason}")
            if all(p.state == "healthy" for p in nodes):
                return self._next_stage(c)
            if late:
                slow = [format_node_id(n) for n in c.stage_nodes() if c.nodes[n].state != "healthy"]
                return self._finish(c, "halted", f"canaries not healthy within {c.window_s:g} s: {', '.join(slow[:5])}")
            return None
        if all(p.state in ("healthy", "rolled_back", "failed") for p in nodes):
            return self._finish(c, "done", self._failures(c))
        if late:
            for n in c.stage_nodes():
                p = c.nodes[n]
                if p.state not in ("healthy", "rolled_back", "failed"):
                    self._set(c, n, p, "failed", reason=f"not healthy within {c.window_s:g} s ({p.state})")
            return self._finish(c, "done", self._failures(c))
        return None

    def _failures(self, c: Campaign) -> str:
        """A done campaign's reason: what did not take the release ("" when every node did)."""
        counts = c.counts()
        parts = [f"{counts[s]} {s.replace('_', ' ')}" for s in ("rolled_back", "failed") if counts[s]]
        return f"done with failures: {', '.join(parts)} of {len(c.nodes)}" if parts else ""

    async def _next_stage(self, c: Campaign) -> None:
        if any(p.stage == "rest" for p in c.nodes.values()):
            c.stage, c.delivered, c.deadline = "rest", False, None
            await self._changed(c, "canaries healthy: the rest")
        else:
            await self._finish(c, "done", "")

    async def _finish(self, c: Campaign, state: str, reason: str) -> None:
        c.state, c.reason = state, reason
        if state != "done":
            self._put_back(c)
        else:
            c.stage = "done"
        self._unindex(c)
        await self._changed(c, state)
        self._images.pop(c.id, None)

    def _put_back(self, c: Campaign) -> None:
        """Nodes still waiting for the image are moved back to pending; their expectation is undone
        when the campaign ends (halted, aborted)."""
        for n, p in c.nodes.items():
            if p.state == "receiving":
                self._set(c, n, p, "pending", fraction=None)

    # ------------------------------------------------------------ persistence

    def _image(self, c: Campaign) -> bytes:
        img = self._images.get(c.id)
        if img is None:
            img = self._images[c.id] = self.store.campaigns.image(c.id)
        return img

    def _index(self, c: Campaign) -> None:
        for n in c.nodes:
            self._by_node[n] = c

    def _unindex(self, c: Campaign) -> None:
        for n in c.nodes:
            if self._by_node.get(n) is c:
                del self._by_node[n]

    async def _changed(self, c: Campaign, what: str | None) -> None:
        c.updated = self.clock()
        self._dirty.setdefault(c.id, set())
        if what:
            log.info("campaign %s", what, extra={"campaign": c.id, "stage": c.stage, "reason": c.reason or None})
        await self._flush()

    async def _run_flusher(self) -> None:
        while True:
            await self._wake.wait()
            await asyncio.sleep(FLUSH_S)
            try:
                await self._flush()
            except StoreError as e:  # kept dirty: tried again at the next change
                log.warning("campaign progress not saved: %s", e)
                await asyncio.sleep(FLUSH_S)

    async def _flush(self) -> None:
        async with self._lock:
            self._wake.clear()
            dirty, self._dirty = self._dirty, {}
            try:
                await self._expectations(dirty)
                for cid, nodes in dirty.items():
                    c = self.campaigns[cid]
                    await self.store.campaigns.save(cid, c.doc(), {n: c.nodes[n].to_doc() for n in nodes})
            except BaseException:
                for cid, nodes in dirty.items():
                    self._dirty.setdefault(cid, set()).update(nodes)
                raise

    async def _expectations(self, dirty: dict[int, set[int]]) -> None:
        """gateway/releases.py's expected release: set for nodes that hold the image, put back as it
        was for nodes of an ended campaign that never ran it."""
        for cid in dirty:
            c = self.campaigns[cid]
            expected = {"version": c.release["version"], "bundle": c.release["bundle"]}
            now = self.clock()
            if c.state in ("halted", "aborted"):
                undo = [n for n, p in c.nodes.items() if p.expected_set and p.state in ("pending", "failed")]
                for prev in {repr(c.nodes[n].previous): c.nodes[n].previous for n in undo}.values():
                    ids = [n for n in undo if c.nodes[n].previous == prev]
                    await self.store.expect_release(ids, prev, now)
                for n in undo:
                    c.nodes[n].expected_set = False
                    dirty[cid].add(n)
                continue
            want = [
                n
                for n, p in c.nodes.items()
                if not p.expected_set
                and (p.state in PAST_DELIVERY or (c.delivered and p.stage == c.stage and p.state in DELIVERABLE))
            ]
            if want:
                await self.store.expect_release(want, expected, now)
                for n in want:
                    c.nodes[n].expected_set = True
                    dirty[cid].add(n)

    # ------------------------------------------------------------ figures

    def figures(self) -> tuple[dict[str, int], dict[str, int]]:
        """(campaigns by state, nodes of running and paused campaigns by state) for /metrics."""
        by_state = dict.fromkeys(STATES, 0)
        nodes = dict.fromkeys(NODE_STATES, 0)
        for c in self.campaigns.values():
            by_state[c.state] += 1
            if c.state in ACTIVE:
                for p in c.nodes.values():
                    nodes[p.state] += 1
        return by_state, nodes
