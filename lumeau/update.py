"""`lumeau node update`: install a signed release (.lup, SPEC §13) on a node over its USB serial.

The wired path a technician or a bridge board uses, with mpremote's transport (lumeau/flash.py's
connection, the raw REPL):

1. connect (the node's app stops: a soft reset into the raw REPL, not counted as a boot);
2. upload the image to /upd.lup.part in CHUNK-byte appends; an interrupted upload resumes
   where the board's copy still matches the image (its SHA-256 over what it holds), then
   the whole file is hashed on the board and renamed to /upd.lup;
3. run the node's OWN updater (firmware/updater.py from the running release): it verifies
   the signature with the release key in the node's /config.json, the manifest (kind,
   target, versions, a delta's base), every file's hash, stages the release into the free
   A/B slot and arms it. A refusal leaves the node as it was, and is printed;
4. remove /upd.lup and hard-reset the board: boot.py boots the new release on trial, and
   the node commits it once healthy or rolls back (firmware/slots.py).

The laptop never decides whether an image is good: the node does. The host only reads the
manifest to say what it sends. Errors are UpdateError with a `reason` (REASONS).
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from lumeau.flash import CONNECT_TIMEOUT_S, Flasher, FlashError
from protocol import noderelease as rel

REMOTE = "upd.lup"
PART = REMOTE + ".part"
CHUNK = 512  # bytes per raw-REPL append (their repr is up to 4x that on the line)
SETTLE_S = 3.0
# The node prints its verdict only when done: a signature check takes seconds on a board
# (bench/README.md, release_verify.py), then up to 64 files are written and read back.
INSTALL_SILENT_S = 300.0
REASONS = ("bad_image", "refused", "board_full", "transport", "no_such_port", "port_busy", "timeout")

INSTALL_SCRIPT = (
    """
import sys, json
try:
    with open('/ab.json') as _f:
        _a = json.load(_f).get('a') or ''
except Exception:
    _a = ''
for _m in [m for m in sys.modules if m.split('.')[0] in ('firmware', 'protocol')]:
    del sys.modules[_m]
if _a and '/' + _a not in sys.path:
    sys.path.insert(0, '/' + _a)
from firmware import updater
from protocol.noderelease import Refused
with open('/config.json') as _f:
    _kind = json.load(_f)['kind']
try:
    _r = updater.install('/%s', _kind, updater.release_key())
    print(repr(('ok', _r['version'], _r['bundle'])))
except Refused as e:
    print(repr(('refused', str(e))))
"""
    % REMOTE
)


class UpdateError(Exception):
    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason


@dataclass
class UpdateReport:
    version: str = ""
    bundle: str = ""
    sent_bytes: int = 0
    resumed_at: int = 0
    console: str = ""


def describe(image: bytes) -> dict:
    """The image's manifest as the host reads it (unverified: only the node decides)."""
    try:
        mlen = rel.parse_header(image[: rel.HEADER])
        return rel.parse_manifest(image[rel.HEADER : rel.HEADER + mlen])
    except rel.Refused as e:
        raise UpdateError("bad_image", f"not a usable release image: {e}") from None


def upload(fl: Flasher, image: bytes, log: Callable[[str], None], stop_after: int | None = None) -> tuple[int, int]:
    """Put the image at /upd.lup, resuming a partial copy; (bytes sent, offset resumed at).

    stop_after (tests): stop after that many chunks, as a pulled cable would."""
    whole = hashlib.sha256(image).hexdigest()
    bsize, bfree, (done, part) = fl.remote_space([REMOTE, PART])
    if done == len(image) and fl.remote_hashes([REMOTE])[0] == whole:
        log(f"  the image is already on the board ({len(image)} bytes)")
        return 0, len(image)
    start = 0
    if 0 < part <= len(image) and fl.remote_hashes([PART])[0] == hashlib.sha256(image[:part]).hexdigest():
        start = part
        log(f"  resuming the upload at {start} of {len(image)} bytes")
    else:
        fl.run(f"import os\nfor p in ({REMOTE!r}, {PART!r}):\n try: os.remove(p)\n except OSError: pass")
    if (len(image) - start) + 4 * bsize > bsize * bfree:
        raise UpdateError("board_full", f"the board has {bsize * bfree} bytes free, the image needs {len(image)}")
    sent = 0
    for n, off in enumerate(range(start, len(image), CHUNK)):
        if stop_after is not None and n >= stop_after:
            raise UpdateError("transport", f"upload stopped at {off} bytes (rerun to resume)")
        fl.run(f"f = open({PART!r}, 'ab')\nf.write({image[off : off + CHUNK]!r})\nf.close()")
        sent += len(image[off : off + CHUNK])
    if fl.remote_hashes([PART])[0] != whole:
        fl.run(f"import os\nos.remove({PART!r})")
        raise UpdateError("transport", "the image reads back wrong from the board; rerun the command")
    fl.run(f"import os\nos.rename({PART!r}, {REMOTE!r})")
    return sent, start


def update(
    port: str,
    image_path: Path,
    *,
    connect_timeout: float = CONNECT_TIMEOUT_S,
    settle_s: float = SETTLE_S,
    log: Callable[[str], None] = print,
    stop_after: int | None = None,
) -> UpdateReport:
    try:
        image = image_path.read_bytes()
    except OSError as e:
        raise UpdateError("bad_image", f"{image_path}: {e.strerror}") from None
    m = describe(image)
    carried = sum(1 for f in m["files"] if f[3])
    log(
        f"{image_path}: release {m['version']} for {m['target']} {m['kind']}, "
        f"{'delta' if m.get('base') else 'full'} ({carried} of {len(m['files'])} files, {len(image)} bytes)"
    )
    report = UpdateReport()
    try:
        with Flasher(port, connect_timeout=connect_timeout, log=log) as fl:
            info = fl.board_info()
            log(f"{port}: {info['board']} ({info['platform']})")
            report.sent_bytes, report.resumed_at = upload(fl, image, log, stop_after)
            log(f"  uploaded ({report.sent_bytes} bytes sent); the node verifies and stages it")
            verdict = fl.evaluate(INSTALL_SCRIPT, silent_s=INSTALL_SILENT_S)
            fl.run(f"import os\ntry: os.remove({REMOTE!r})\nexcept OSError: pass")
            if verdict[0] != "ok":
                raise UpdateError("refused", f"the node refused the release: {verdict[1]}; nothing was changed")
            report.version, report.bundle = verdict[1], verdict[2]
            log(f"  staged and armed: {report.version} (bundle {report.bundle[:6]}); resetting the board")
            t = fl.transport
            if t is not None:
                # run the reset without waiting for an answer the board will never finish
                t.serial.write(b"import machine\nmachine.reset()\x04")
                t.in_raw_repl = False  # the reset leaves it
                report.console = _watch(t.serial, settle_s)
    except FlashError as e:
        raise UpdateError(e.reason if e.reason in REASONS else "transport", str(e)) from None
    return report


def _watch(ser, seconds: float) -> str:  # type: ignore[no-untyped-def]  # a pyserial Serial
    out = b""
    ser.timeout = 0.1
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            out += ser.read(4096)
        except Exception:  # the port re-enumerates on a USB board
            break
    return out.decode("utf-8", "replace")


def report_json(r: UpdateReport) -> str:
    return json.dumps({"version": r.version, "bundle": r.bundle, "sent_bytes": r.sent_bytes,
                       "resumed_at": r.resumed_at})  # fmt: skip
