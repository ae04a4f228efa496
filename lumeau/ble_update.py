"""`lumeau node update IMAGE --ble ADDR`: install a signed release (.lup, SPEC §13) over BLE.

The technician's laptop walking by a node (SPEC §11, "Updates"; the node's side is
firmware/bleupd.py): find the node (by address or node id, as `lumeau node check`), connect,
open a session (ble_tools.open_session: nothing is written unless the node's answer verifies
with its key), then on the control characteristic

1. BEGIN with the image's size and SHA-256: the node answers how many bytes of this image it
   already holds on flash (0 for a new one) -- a transfer cut by a lost link, a walk out of
   reach or a reboot resumes there;
2. CHUNKs of up to protocol.ble.UPDATE_CHUNK_MAX bytes from that offset, each tagged, each
   answered with the node's offset (written in pieces that fit the link's MTU);
3. FINISH: the node checks the image's hash, runs its own updater (signature, manifest,
   hashes, the free A/B slot) and answers "installed" with the version, or the refusal's
   text; then it resets into the release on trial.

A lost link is retried `reconnects` times (scan, connect, new session, BEGIN: the node says
where to go on). The laptop never decides whether an image is good: the node does. Errors
are BleToolError (ble_tools: not_found, connect, auth, protocol, refused, ...; `bad_image`
for an image the host cannot even read).
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from lumeau.ble_tools import (
    DEFAULT_TIMEOUT_S,
    KINDS,
    Backends,
    BleToolError,
    Link,
    Seen,
    Session,
    find,
    load_keys,
    open_session,
    verified,
)
from lumeau.update import UpdateError, describe
from protocol import ble as pb
from protocol.keys import NodeKeys

DEFAULT_RECONNECTS = 5
# finish: the node hashes the image, verifies the signature (Ed25519 in Python: seconds on a
# board, SPEC §13), writes and reads back every file before it answers
FINISH_TIMEOUT_S = 120.0
RECONNECT_PAUSE_S = 1.0
WRITE_PIECE_MAX = pb.CONTROL_WRITE_MAX  # the node's attribute buffer
FRAMING_OVERHEAD = 6  # §8: two delimiters, the CRC, at most two COBS code bytes for 257


@dataclass
class BleUpdated:
    seen: Seen
    version: str = ""
    bundle: str = ""
    size: int = 0
    sent_bytes: int = 0
    resumed_at: list[int] = field(default_factory=list)
    reconnects: int = 0
    seconds: float = 0.0

    def json(self) -> dict[str, object]:
        return {
            "node": f"{self.seen.node_id:08x}",
            "address": self.seen.address,
            "version": self.version,
            "bundle": self.bundle,
            "size": self.size,
            "sent_bytes": self.sent_bytes,
            "resumed_at": self.resumed_at,
            "reconnects": self.reconnects,
            "seconds": round(self.seconds, 2),
        }


def chunk_size(mtu: int) -> int:
    """Bytes of image per chunk: one §8 frame filling whole write pieces of this link's MTU."""
    piece = max(1, min(mtu - 3, WRITE_PIECE_MAX))
    pieces = (pb.UPDATE_CHUNK_MAX + pb.UPDATE_HEAD + pb.TAG_LEN + FRAMING_OVERHEAD) // piece
    return max(1, min(pb.UPDATE_CHUNK_MAX, pieces * piece - pb.UPDATE_HEAD - pb.TAG_LEN - FRAMING_OVERHEAD))


def message(keys: NodeKeys, session: Session, op: int, offset: int, data: bytes = b"") -> bytes:
    m = bytes((pb.UPDATE, op)) + offset.to_bytes(4, "big") + data
    return m + pb.update_tag(keys, m, session.tag_input)


def parse_answer(keys: NodeKeys, session: Session, answer: bytes, node: str) -> tuple[int, int, str]:
    """(status, offset, text) of the node's answer, verified; BleToolError otherwise."""
    if answer[:1] == bytes((pb.REFUSED,)) and len(answer) == pb.REFUSAL_LEN and answer[1] == pb.R_MALFORMED:
        raise BleToolError(
            "protocol", f"{node} does not take firmware updates over BLE (its firmware predates them): use --port"
        )
    if answer[:1] != bytes((pb.UPDATE,)) or len(answer) < pb.UPDATE_HEAD + pb.TAG_LEN:
        raise BleToolError("protocol", f"{node} answered an update message with {len(answer)} bytes of something else")
    if not verified(keys, answer, session.tag_input):
        raise BleToolError("auth", f"{node}: an answer not tagged with this node's key for this session: not trusted")
    text = answer[pb.UPDATE_HEAD : -pb.TAG_LEN].decode("utf-8", "replace")
    return answer[1], int.from_bytes(answer[2:6], "big"), text


async def update(
    target: str,
    image_path: Path,
    *,
    config: Path | None = None,
    registry: Path | None = None,
    timeout: float = DEFAULT_TIMEOUT_S,
    reconnects: int = DEFAULT_RECONNECTS,
    backends: Backends | None = None,
    log: Callable[[str], None] = print,
) -> BleUpdated:
    try:
        image = image_path.read_bytes()
        m = describe(image)
    except OSError as e:
        raise BleToolError("bad_image", f"{image_path}: {e.strerror}") from None
    except UpdateError as e:
        raise BleToolError("bad_image", str(e)) from None
    carried = sum(1 for f in m["files"] if f[3])
    log(
        f"{image_path}: release {m['version']} for {m['target']} {m['kind']}, "
        f"{'delta' if m.get('base') else 'full'} ({carried} of {len(m['files'])} files, {len(image)} bytes)"
    )
    digest = hashlib.sha256(image).digest()
    started = time.monotonic()
    device, seen = await find(target, timeout, backends)
    keys = load_keys(seen.node_id, config, registry)
    node = f"node {seen.node_id:08x}"
    log(f"{node} at {seen.address} ({KINDS.get(seen.kind, seen.kind)}, firmware {seen.firmware}), RSSI {seen.rssi} dBm")
    done = BleUpdated(seen, size=len(image))
    lost = 0
    held = 0
    finishing = False
    while True:
        try:
            async with Link(device, seen, timeout, backends) as link:
                session = await open_session(link, keys)

                async def ask(op: int, offset: int, data: bytes = b"") -> tuple[int, int, str]:
                    return await _ask(link, keys, session, node, op, offset, data)  # noqa: B023  # awaited here

                status, held, text = await ask(pb.U_BEGIN, len(image), digest)
                if status != pb.U_HELD:
                    raise BleToolError("refused", f"{node} refused the update: {text}; nothing was changed")
                if held:
                    done.resumed_at.append(held)
                    log(f"  resuming at {held} of {len(image)} bytes (the node kept them)")
                n = chunk_size(link.client.mtu_size)
                if not done.sent_bytes and not held:
                    log(f"  sending {len(image)} bytes in chunks of {n} (ATT MTU {link.client.mtu_size})")
                step = max(1, len(image) // 10)
                while held < len(image):
                    data = image[held : held + n]
                    status, now, text = await ask(pb.U_CHUNK, held, data)
                    if status != pb.U_HELD:
                        raise BleToolError("refused", f"{node} refused the update at {held} bytes: {text}")
                    if now == held + len(data):
                        done.sent_bytes += len(data)
                    elif now > len(image):
                        raise BleToolError("protocol", f"{node} says it holds {now} bytes of a {len(image)}-byte image")
                    if now // step != held // step:
                        log(f"  {now} of {len(image)} bytes ({100 * now // len(image)} %)")
                    held = now
                log(f"  sent in {time.monotonic() - started:.1f} s; the node verifies and stages it")
                finishing = True
                link.timeout = max(timeout, FINISH_TIMEOUT_S)
                status, _, text = await ask(pb.U_FINISH, len(image))
                if status == pb.U_INSTALLED:
                    done.version, done.bundle = text, m["bundle"]
                    done.seconds = time.monotonic() - started
                    return done
                raise BleToolError("refused", f"{node} refused the release: {text}; nothing was changed")
        except BleToolError as e:
            if e.reason not in ("disconnected", "timeout", "connect"):
                raise
            if finishing:
                raise BleToolError(
                    e.reason,
                    f"{node}: no answer to finish ({e}); the node may have installed the release and reset: "
                    f"`lumeau node check {seen.node_id:08x}` shows the firmware it runs",
                ) from None
            if lost >= reconnects:
                raise BleToolError(
                    e.reason,
                    f"{node}: the link was lost {lost + 1} times ({e}); the node keeps the {held} bytes it "
                    "holds: run the command again to resume",
                ) from None
            lost += 1
            done.reconnects = lost
            log(f"  link lost ({e}); reconnecting ({lost} of {reconnects})")
        await _pause()
        device, seen = await find(f"{seen.node_id:08x}", timeout, backends)


async def _ask(
    link: Link, keys: NodeKeys, session: Session, node: str, op: int, offset: int, data: bytes
) -> tuple[int, int, str]:
    return parse_answer(keys, session, await link.exchange(message(keys, session, op, offset, data)), node)


async def _pause() -> None:
    import asyncio

    await asyncio.sleep(RECONNECT_PAUSE_S)
