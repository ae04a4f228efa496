"""A release image over LoRa to a list of nodes: fragments with forward error correction (SPEC §13 "Over LoRa").

`FuotaDelivery.deliver(image, node_ids, report)` runs one fragment session (LoRaWAN TS004's
scheme, protocol/fragments.py) for the nodes:

- **multicast** to the members of a group whose lamps all hold the group key and listen on
  the group channel (gateway/multicast.py `choose`), when all of its lamps are to be sent
  the image (the others would hear the fragments and install too): a SETUP, the N uncoded fragments and
  `redundancy` x N coded ones, each a GROUP_FRAG sent at once through the packet forwarders
  at SF9 (98-byte fragments in 115-byte frames), paced so that the session uses at most
  `duty_cycle` of the time (the g3 sub-band allows 10 %); a forwarder whose duty cycle is
  spent is waited for;
- **multicast on a temporary group** to the other lamps that listen (members of a group,
  `Multicast.listening`: a campaign's canaries, or its rest when it is not a whole group):
  a group of their own (`Multicast.open_temporary`: a fresh address, a join_group to each),
  the session as above on it once their joins are answered, and a leave to each when it
  ends, however it ends. The group's other lamps hear those frames and drop them at once (no
  key for that address: firmware/group.py `check`, counted rx_other, no update code loaded:
  tests/micropython/mp_group_frag.py). A lamp whose join is refused (in 4 groups), not
  queued or not answered within `status_timeout_s` goes by unicast;
- **unicast** to every other node (class A: battery valves, lamps outside such a group):
  FRAG frames sealed with the node's key and downlink counter, one per receive window
  after its uplinks, when nothing queued for it is due (gateway/downlinks.py `fillers`),
  34-byte fragments so that a frame fits 51 bytes at SF12.

Then each node is asked by unicast (COMMAND `frag_status`, op 11) what it still misses; it
answers in its CMD_ACK (ok, value = fragments missing). Repairs are coded fragments: for a
group as many as its worst member misses plus `margin`, for a node alone what it misses plus
`margin`; at most `max_rounds` rounds. A node with nothing missing has handed the image to its
updater (it verifies everything and reboots into the trial): "verifying". A node whose
updater refused the image, that never answers, or that still misses fragments after the last
round is "failed", the reason in the log; so is one that answers "no session" after a HELLO
since its session began that does not name the release: a session survives a reboot in the
node's flash (SPEC §13 "Reboots"), so it held the image, installed it and is back on its old
release (its trial HELLO lost, or a release that crashes before HELLO). Sending it everything
again would install it again. Installed, healthy and rolled back come from the
node's next HELLO (gateway/releases.py), not from here.

report(node_id, state, fraction): "receiving" (fraction of the image the node holds, as far
as the gateway knows: frames sent until its first status answer), "verifying" (None),
"failed" (None, and the reason as a 4th argument).

`drop(node_id)`: the caller (a campaign that saw the node roll back, fail or boot the release
from its HELLO) takes a node out of the session that holds it: no more unicast fragments, no
status request (one queued is withdrawn), nothing more reported for it; a multicast goes on
for the others, its repairs sized on them.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import secrets
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from gateway import releases
from gateway.downlinks import DownlinkRejected, Downlinks
from gateway.multicast import Multicast, Temporary
from gateway.registry import Group, Registry, format_node_id
from gateway.store import Store
from protocol import fragments as fz
from protocol import lora
from protocol import messages as m
from protocol import noderelease as rel

log = logging.getLogger("lumeau.gateway.fuota")


class Report(Protocol):
    """A session's report per node (module doc); `reason` says why a node "failed"."""

    def __call__(self, node_id: int, state: str, fraction: float | None, reason: str = "") -> None: ...


UNICAST_FRAME = lora.max_payload(12)  # 51 B: a unicast fragment fits any data rate
MULTICAST_SF = 9  # protocol.groupcast.GROUP_SF: where members listen


@dataclass(frozen=True)
class FuotaSettings:
    redundancy: float = 0.25  # coded fragments sent up front, as a share of N
    margin: int = 2  # coded fragments sent beyond what the worst node misses, per repair
    max_rounds: int = 4  # status + repair rounds after the first pass
    duty_cycle: float = 0.1  # share of the time multicast fragments may use (g3 sub-band: 10 %)
    status_timeout_s: float = 7200.0  # a node's answer to a status request (it comes after its next uplink)
    session_timeout_s: float = 7 * 86400.0  # unicast: the fragments of one pass through the receive windows


def image_bundle(image: bytes) -> bytes:
    """The bundle id (32 bytes) of a release image (.lup); ValueError when it is not one."""
    try:
        mlen = rel.parse_header(bytes(image[: rel.HEADER]))
        doc = json.loads(bytes(image[rel.HEADER : rel.HEADER + mlen]))
        return bytes.fromhex(doc["bundle"])
    except (rel.Refused, ValueError, KeyError, TypeError) as e:
        raise ValueError(f"not a release image: {e}") from None


class _Failed(Exception):
    pass


DROPPED = object()  # what `_for` returns for a node dropped meanwhile


class _Feed:
    """A unicast session's frames for gateway/downlinks.py (a Filler): one per receive window;
    a frame the transport refused (the RX1 band's duty cycle closed) goes first in a later one."""

    def __init__(self, frames: list[bytes], counts: dict[str, Any]) -> None:
        self.queue: deque[bytes] = deque(frames)
        self.emptied = asyncio.Event()  # the last frame went: time to ask the node's status
        self.counts = counts
        self.progress: Callable[[int], None] = lambda left: None

    def __call__(self) -> tuple[int, bytes] | None:
        if not self.queue:
            self.emptied.set()
            return None
        body = self.queue.popleft()
        self.counts["unicast_frames"] += 1
        left = len(self.queue)
        if left % 8 == 0:
            self.progress(left)
        if not self.queue:
            self.emptied.set()
        return fz.FRAG, body

    def put_back(self, made: tuple[int, bytes]) -> None:
        self.queue.appendleft(made[1])
        self.counts["unicast_frames"] -= 1
        self.counts["refused"] += 1


class FuotaDelivery:
    def __init__(
        self,
        registry: Registry,
        store: Store,
        downlinks: Downlinks,
        multicast: Multicast | None = None,
        settings: FuotaSettings | None = None,
        sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep,
    ) -> None:
        self.registry = registry
        self.store = store
        self.downlinks = downlinks
        self.multicast = multicast
        self.settings = settings or FuotaSettings()
        self.sleep = sleep
        self._answers: dict[int, asyncio.Future[tuple[int, int]]] = {}  # status command id -> CMD_ACK
        self._live: set[int] = set()  # nodes of the sessions running now
        self._dropped: set[int] = set()  # ... taken out of theirs (drop)
        self._jobs: dict[int, asyncio.Task] = {}  # node -> what the session awaits for it alone now
        self._hello_at: dict[int, Any] = {}  # node -> its last HELLO's time when its session began
        self._temporaries: set[int] = set()  # addresses of the temporary groups of the sessions running
        downlinks.cmd_ack_listeners.append(self._on_cmd_ack)
        self.counts = {"multicast_frames": 0, "unicast_frames": 0, "repairs": 0, "airtime_ms": 0.0, "refused": 0}

    # ------------------------------------------------------------ the plan

    def plan(self, node_ids: Sequence[int]) -> tuple[list[tuple[Group, list[int]]], list[int], list[int]]:
        """([(group, its members to update)], lamps for a temporary group, nodes by unicast): a
        group when multicast suits it and all its lamps are to be updated; the other lamps that
        listen (members of a group) in a temporary group of their own (module doc)."""
        left = list(dict.fromkeys(node_ids))
        groups: list[tuple[Group, list[int]]] = []
        mc = self.multicast
        if mc is not None and mc.radio is not None:
            for g in self.registry.groups():
                lamps = mc.lamps(g)
                take = [n for n in left if n in lamps]
                # every lamp holding the group key hears a GROUP_FRAG and installs what it
                # completes (firmware/fuota.py): a multicast for some of the group (a campaign's
                # canaries) would update the rest too, before the canaries were judged
                if take and len(take) == len(lamps) and mc.choose(g, ("lighting",))[0] == "multicast":
                    groups.append((g, take))
                    left = [n for n in left if n not in take]
            listeners = [n for n in left if mc.listening(n)]
            return groups, listeners, [n for n in left if n not in listeners]
        return groups, [], left

    async def deliver(self, image: bytes, node_ids: Sequence[int], report: Report) -> None:
        """Run one session for `node_ids`; every node ends "verifying" or "failed" in `report`."""
        bundle = image_bundle(image)
        sid = secrets.randbelow(256)
        known = []
        for n in dict.fromkeys(node_ids):
            if self.registry.get(n) is None:
                self._fail(n, "not in the registry", report)
            else:
                known.append(n)
                report(n, "receiving", 0.0)
        if self.multicast is not None and self.multicast.radio is not None:
            await self.multicast.close_stale(self._temporaries)
        groups, listeners, solo = self.plan(known)
        log.info(
            "update session",
            extra={
                "session": sid,
                "bytes": len(image),
                "groups": len(groups),
                "temporary": len(listeners),
                "unicast": len(solo),
            },
        )
        jobs = [self._group(g, members, image, bundle, sid, report) for g, members in groups]
        if listeners:
            jobs.append(self._temporary(listeners, image, bundle, sid, report))
        jobs += [self._for(n, self._node(n, image, bundle, sid, report)) for n in solo]
        self._live.update(known)
        for n in known:
            self._hello_at[n] = ((self.store.node_state(n) or {}).get("release") or {}).get("hello_at")
        try:
            await asyncio.gather(*jobs)
        finally:
            self._live.difference_update(known)
            self._dropped.difference_update(known)
            for n in known:
                self._hello_at.pop(n, None)

    def drop(self, node_id: int) -> None:
        """Take a node out of the session that holds it (module doc); a node in none is ignored."""
        if node_id not in self._live or node_id in self._dropped:
            return
        self._dropped.add(node_id)
        log.info("update session: node dropped", extra={"node": format_node_id(node_id)})
        job = self._jobs.get(node_id)
        if job is not None:
            job.cancel()

    async def _for(self, node: int, coro: Awaitable[Any]) -> Any:
        """Await `coro` for this node alone; DROPPED (coro cancelled) when `drop(node)` comes first.
        Cancelling the caller (pause, abort) cancels it too."""
        task = asyncio.ensure_future(coro)
        if node in self._dropped:
            task.cancel()
        self._jobs[node] = task
        try:
            await asyncio.wait({task})  # returns, not raises, when the task is cancelled by drop
        finally:
            if self._jobs.get(node) is task:
                del self._jobs[node]
            if not task.done():  # the caller was cancelled
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
        return DROPPED if task.cancelled() else task.result()

    # ------------------------------------------------------------ status

    def _on_cmd_ack(self, record: Any) -> None:
        fut = self._answers.get(record.body.get(m.CA_ID, -1))
        if fut is not None and not fut.done():
            fut.set_result((record.body.get(m.CA_RESULT, -1), record.body.get(m.CA_VALUE, 0)))

    async def _ask(self, node: int, sid: int) -> tuple[int, int] | None:
        """The node's (result, value) to frag_status, or None without an answer in time."""
        s = self.settings
        try:
            dl = await self.downlinks.enqueue(
                node, m.COMMAND, {m.C_OP: fz.OP_FRAG_STATUS, m.C_ARGS: [sid]}, ttl_s=s.status_timeout_s
            )
        except DownlinkRejected as e:
            log.warning("status request not queued", extra={"node": format_node_id(node), "why": str(e)[:200]})
            return None
        fut: asyncio.Future[tuple[int, int]] = asyncio.get_running_loop().create_future()
        self._answers[dl.id] = fut
        try:
            return await asyncio.wait_for(fut, s.status_timeout_s)
        except TimeoutError:
            return None
        except asyncio.CancelledError:  # dropped, paused, aborted: the question is withdrawn, not sent later
            try:
                await self.downlinks.cancel(dl.id)
            except Exception as e:  # the store: the request expires by its own ttl
                log.info("status request not withdrawn", extra={"node": format_node_id(node), "why": str(e)[:200]})
            raise
        finally:
            del self._answers[dl.id]

    async def _missing(self, node: int, sid: int, n: int, bundle: bytes) -> int:
        """Fragments the node still misses (0: complete); raises _Failed with the reason."""
        got = await self._ask(node, sid)
        if got is None:
            raise _Failed(f"no answer to the status request within {self.settings.status_timeout_s:g} s")
        res, value = got
        if res == m.RES_OK:
            return max(0, int(value))
        if res == m.RES_REFUSED and value == fz.ST_REFUSED:
            raise _Failed("the node's updater refused the image (its last_error says why)")
        if res == m.RES_REFUSED and value == fz.ST_NO_SESSION:
            now = (self.store.node_state(node) or {}).get("release") or {}
            if releases.runs(now.get("running"), bundle.hex()):
                return 0  # complete, installed and rebooted: its HELLO names the new bundle
            if now.get("hello_at") != self._hello_at.get(node):
                # a session lives in the node's flash through a reboot (SPEC §13 "Reboots"): gone
                # after one, the image was complete and installed, and the node is back on its
                # old release (its trial HELLO lost, or none: a release that crashes at boot).
                # Sending it again would install it again
                raise _Failed(
                    f"rebooted on bundle {now.get('running') or 'none'} without the session: it held the image"
                    " and rolled back (or it had missed the set-up)"
                )
            return n  # it missed the set-up: everything again
        raise _Failed(f"status request answered with result {res}: the node's firmware has no LoRa update")

    # ------------------------------------------------------------ multicast

    async def _transmit(self, group: Group | Temporary, body: bytes) -> None:
        mc = self.multicast
        assert mc is not None
        air = lora.airtime_ms(13 + len(body), MULTICAST_SF) / 1000
        # transmit_now returns as the frame starts: the next one starts T/d later (the band's
        # off-time, protocol/lora.py DutyCycle.record)
        off = air / self.settings.duty_cycle
        for _ in range(8):
            try:
                await mc.send_frame(group, body)
            except Exception as e:  # the forwarders' DownlinkError: duty cycle spent, no route
                log.info("multicast fragment not sent, waiting", extra={"group": group.name, "why": str(e)[:200]})
                await self.sleep(max(off, 1.0) * 4)
                continue
            self.counts["multicast_frames"] += 1
            self.counts["airtime_ms"] += air * 1000
            await self.sleep(off)
            return
        raise _Failed("the packet forwarders refused the group's fragments (duty cycle or no route)")

    async def _temporary(self, nodes: list[int], image: bytes, bundle: bytes, sid: int, report: Report) -> None:
        """Lamps that listen but are not a whole group: a temporary group of them (their join_group
        answered ok), by multicast; unicast for those whose join was refused (in 4 groups already),
        not queued or not answered within status_timeout_s. They leave it when the session ends,
        however it ends."""
        mc = self.multicast
        assert mc is not None
        t = await mc.open_temporary(nodes)
        self._temporaries.add(t.addr)
        try:
            joined = await self._joined(t)
            solo = [n for n in nodes if n not in joined and n not in self._dropped]
            log.info(
                "temporary group for the session",
                extra={"session": sid, "addr": t.addr, "joined": len(joined), "unicast": len(solo)},
            )
            jobs = [self._group(t, joined, image, bundle, sid, report)] if joined else []
            jobs += [self._for(n, self._node(n, image, bundle, sid, report)) for n in solo]
            await asyncio.gather(*jobs)
        finally:
            self._temporaries.discard(t.addr)
            try:
                await mc.close_temporary(t)
            except Exception as e:  # the store, at a stop: closed by the next session (close_stale)
                log.warning("temporary group not closed: %s", e, extra={"addr": t.addr})

    async def _joined(self, t: Temporary) -> list[int]:
        """The members whose join_group was answered ok, waiting for each answer up to
        status_timeout_s (members dropped meanwhile are left out)."""
        loop = asyncio.get_running_loop()
        futs: dict[int, asyncio.Future[tuple[int, int]]] = {}
        for n, dl_id in t.joins.items():
            futs[n] = self._answers[dl_id] = loop.create_future()

        def ok(n: int) -> bool:
            f = futs[n]
            if f.done():
                return f.result()[0] == m.RES_OK
            dl = self.store.downlink(t.joins[n])  # answered before its future was there
            return dl is not None and dl.state == "acked" and dl.result == m.RES_OK

        try:
            deadline = loop.time() + self.settings.status_timeout_s
            while True:
                waiting = [f for n, f in futs.items() if not f.done() and not ok(n) and n not in self._dropped]
                left = deadline - loop.time()
                if not waiting or left <= 0:
                    break
                await asyncio.wait(waiting, timeout=min(left, 5.0))  # 5 s: the store's view, and drops
        finally:
            for dl_id in t.joins.values():
                self._answers.pop(dl_id, None)
        return [n for n in t.members if n in futs and n not in self._dropped and ok(n)]

    async def _group(
        self, group: Group | Temporary, members: list[int], image: bytes, bundle: bytes, sid: int, report: Report
    ) -> None:
        s = self.settings
        f = fz.fragment_size(lora.max_payload(MULTICAST_SF))
        enc = fz.Encoder(image, f)
        n = enc.n
        coded = math.ceil(n * s.redundancy)
        setup = fz.setup_body(sid, bundle, len(image), f, n, coded)
        pending = list(members)
        try:
            await self._transmit(group, setup)
            for i in range(n + coded):
                if all(node in self._dropped for node in pending):
                    return  # every member out of it (a campaign dropped them): nobody to send to
                await self._transmit(group, fz.data_body(sid, i, enc.fragment(i)))
                if i % 16 == 15:
                    for node in pending:
                        if node not in self._dropped:
                            report(node, "receiving", min(1.0, (i + 1) / n) * 0.99)
            nxt = n + coded
            for rnd in range(s.max_rounds + 1):
                need = 0
                for node in list(pending):
                    try:
                        k = await self._for(node, self._missing(node, sid, n, bundle))
                    except _Failed as e:
                        self._fail(node, str(e), report)
                        pending.remove(node)
                        continue
                    if k is DROPPED:  # the others go on; its loss no longer sizes the repairs
                        pending.remove(node)
                    elif k == 0:
                        report(node, "verifying", None)
                        pending.remove(node)
                    else:
                        report(node, "receiving", 1 - k / n)
                        need = max(need, k)
                if not pending:
                    return
                if rnd == s.max_rounds:
                    break
                self.counts["repairs"] += 1
                await self._transmit(group, setup)  # for members that missed it: a repeat costs the others nothing
                for i in range(nxt, nxt + need + s.margin):
                    await self._transmit(group, fz.data_body(sid, i, enc.fragment(i)))
                nxt += need + s.margin
            for node in pending:
                if node not in self._dropped:
                    self._fail(node, f"fragments still missing after {s.max_rounds} repair rounds", report)
        except _Failed as e:
            for node in pending:
                if node not in self._dropped:
                    self._fail(node, str(e), report)

    # ------------------------------------------------------------ unicast

    async def _node(self, node: int, image: bytes, bundle: bytes, sid: int, report: Report) -> None:
        s = self.settings
        f = fz.fragment_size(UNICAST_FRAME)
        try:
            enc = fz.Encoder(image, f)
        except ValueError as e:
            self._fail(node, str(e), report)
            return
        n = enc.n
        coded = math.ceil(n * s.redundancy)
        setup = fz.setup_body(sid, bundle, len(image), f, n, coded)
        feed = _Feed([setup] + [fz.data_body(sid, i, enc.fragment(i)) for i in range(n + coded)], self.counts)
        queue, emptied, total = feed.queue, feed.emptied, len(feed.queue)
        feed.progress = lambda left: report(node, "receiving", min(1.0, (total - left) / total) * 0.99)
        self.downlinks.fillers[node] = feed
        nxt = n + coded
        try:
            for rnd in range(s.max_rounds + 1):
                try:
                    await asyncio.wait_for(emptied.wait(), s.session_timeout_s)
                except TimeoutError:
                    raise _Failed(f"fragments not all sent within {s.session_timeout_s:g} s (no uplinks?)") from None
                k = await self._missing(node, sid, n, bundle)
                if k == 0:
                    report(node, "verifying", None)
                    return
                report(node, "receiving", 1 - k / n)
                if rnd == s.max_rounds:
                    raise _Failed(f"{k} fragments still missing after {s.max_rounds} repair rounds")
                self.counts["repairs"] += 1
                emptied.clear()
                if k >= n:
                    queue.append(setup)
                queue.extend(fz.data_body(sid, i, enc.fragment(i)) for i in range(nxt, nxt + k + s.margin))
                nxt += k + s.margin
        except _Failed as e:
            self._fail(node, str(e), report)
        finally:
            self.downlinks.fillers.pop(node, None)

    def _fail(self, node: int, why: str, report: Report) -> None:
        log.warning("update failed: %s", why, extra={"node": format_node_id(node), "why": why})
        report(node, "failed", None, why)
