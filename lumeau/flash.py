"""`lumeau node flash`: put a bundle and a node's config on a MicroPython board.

Over the board's USB serial REPL with mpremote's transport (the raw REPL and
raw-paste mode every MicroPython port speaks):

1. (``--micropython IMAGE``, ESP32 only) write the MicroPython image with esptool;
2. connect, soft-reset into the raw REPL, check the board's .mpy version;
3. hash every bundle file ON the board (hashlib there): unchanged files are not
   copied again, so a flash is idempotent and an interrupted one resumes;
4. check the free space, then write each changed file to ``PATH.part``, hash it on
   the board, and only then rename it over ``PATH``: a cut cable never leaves a
   half-written module that would stop the node booting;
5. remove files under firmware/ and protocol/ that the bundle does not have (an
   old ``.py`` would shadow the new ``.mpy``; stale ``.part`` files). /config.json,
   /state (the node's frame counters) and anything else are never touched;
6. copy the config (validated on the laptop first: the node's validators, unknown keys
   and missing pins, lumeau/boards.py) to /config.json the same way;
   a config marked ``key_fresh`` (a new key, from ``lumeau node provision``) is
   flashed once: the node clears the mark on the board once it holds counter state
   for the key, and the laptop's file is cleared the same way right after it was
   copied (firmware.config.cleared: the same bytes on both sides, so the next flash
   finds it unchanged). A key's counter never restarts at 0 (SPEC §4 "Counter
   persistence"): an erased board, or the file moved to another board, refuses to
   send until re-keyed;
   then write /ab.json (SPEC §13) naming the flashed release as the one that boots, with its
   bundle id, and remove the over-the-air release slots /s0 and /s1;
7. soft-reset in the friendly REPL so boot.py and main.py run, and confirm: on the
   console (no traceback, no "cannot start" within ``settle_s``: the node prints an
   app's exception there) or, with a gateway, by the node's HELLO there (last seen
   after the reset, reporting this firmware), then by ``run_check_s`` without an
   app_exception alarm (its EVENT value names the exception's type, SPEC §5), and
   say when the first report is due.

With a gateway, its API and the token are checked before the board is touched
(a refused token, an unknown node, a gateway that does not answer).

Errors are FlashError with a ``reason`` a script can test (REASONS) and a message
for the technician. Limits: CHUNK bytes per raw-REPL write (raw paste has flow
control, so any size is safe; 1 KiB keeps a round trip short at 115200 Bd);
RETRIES per file on a hash mismatch.

One file (over 600 lines): the steps below share one connection and one
report, and read in the order a flash runs them.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import io
import json
import os
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lumeau.bundle import Bundle, BundleError
from lumeau.bundle import load as load_bundle

if TYPE_CHECKING:  # imported where used: mpremote loads only for a flash
    from mpremote.transport_serial import SerialTransport

CONFIG_PATH = "config.json"  # on the board: firmware/main.py reads /config.json
MANAGED_DIRS = ("firmware", "protocol")  # the bundle owns these directories on the board
AB_STATE = "ab.json"  # the A/B release state (firmware/slots.py, SPEC §13)
# Runs on the board: remove the over-the-air release slots /s0 and /s1 (a wired flash replaces them).
WIPE_SLOTS = """
import os
def _lumeau_rm(p):
    try:
        es = list(os.ilistdir(p))
    except OSError:
        return
    for e in es:
        q = p + '/' + e[0]
        if e[1] == 0x4000:
            _lumeau_rm(q)
        else:
            os.remove(q)
    os.rmdir(p)
for _s in ('s0', 's1'):
    _lumeau_rm(_s)
del _lumeau_rm
"""
CHUNK = 1024
RETRIES = 1
CONNECT_TIMEOUT_S = 10.0
SETTLE_S = 3.0
HELLO_TIMEOUT_S = 60.0
RUN_CHECK_S = 20.0  # after the HELLO: the node restarts a failed app after 10 s, so a crash loop shows
API_PORT = 8760  # the gateway API's default port ([api] port)
TOKEN_HELP = (
    "the token is the gateway config's [api] token, or the file its [api] token_file names; "
    "give it with --token or $LUMEAU_API_TOKEN"
)
RESUME = "reconnect the board and rerun the same command: it resumes (files already on the board are not copied again)"
REASONS = (
    "no_such_port",
    "port_busy",
    "port_access",
    "not_micropython",
    "timeout",
    "incompatible",
    "board_full",
    "hash_mismatch",
    "bad_bundle",
    "bad_config",
    "node_failed",
    "transport",
    "image",
    "rekey",
    "token",
    "gateway",
    "app_failed",
)


class FlashError(Exception):
    def __init__(self, reason: str, message: str):
        assert reason in REASONS, reason
        super().__init__(message)
        self.reason = reason


@dataclass
class FlashReport:
    port: str
    board: str = ""
    copied: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    bytes_copied: int = 0
    confirmed: str = ""  # how the node was seen running
    first_report: str = ""  # when the node's first report is due


def _remote_repr(value: object) -> str:
    return repr(value)


# Runs on the board: sha256 of each path (None when missing), in one round trip.
HASH_SCRIPT = """
import hashlib, binascii
def _lumeau_h(p):
    try:
        f = open(p, 'rb')
    except OSError:
        return None
    h = hashlib.sha256()
    b = bytearray(512)
    m = memoryview(b)
    while True:
        n = f.readinto(b)
        if not n:
            break
        h.update(m[:n])
    f.close()
    return binascii.hexlify(h.digest()).decode()
print(repr([_lumeau_h(p) for p in %s]))
del _lumeau_h
"""

# Runs on the board: (block size, free blocks) and the size of each path (-1 when missing).
SPACE_SCRIPT = """
import os
s = os.statvfs('/')
def _lumeau_sz(p):
    try:
        return os.stat(p)[6]
    except OSError:
        return -1
print(repr((s[0], s[4], [_lumeau_sz(p) for p in %s])))
del _lumeau_sz
"""


class Flasher:
    """One flashing session on one port (a context manager holding the port)."""

    def __init__(self, port: str, *, connect_timeout: float = CONNECT_TIMEOUT_S, log: Callable[[str], None] = print):
        self.port = port
        self.connect_timeout = connect_timeout
        self.log = log
        self.transport: SerialTransport | None = None

    # -- connection ----------------------------------------------------------------

    def __enter__(self) -> Flasher:
        self.connect()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def connect(self) -> None:
        from mpremote.transport import TransportError
        from mpremote.transport_serial import SerialTransport

        if not os.path.exists(self.port):
            raise FlashError(
                "no_such_port",
                f"{self.port}: no such port (is the board plugged in? look for /dev/ttyUSB* or /dev/ttyACM*)",
            )
        try:
            # A read timeout, or mpremote waits forever on a silent pty.
            t = self.transport = SerialTransport(self.port, baudrate=115200, timeout=min(1.0, self.connect_timeout))
        except TransportError:
            raise self._diagnose_open() from None
        buf = io.StringIO()
        try:
            with contextlib.redirect_stdout(buf):  # mpremote prints what it got on failure
                t.enter_raw_repl(soft_reset=True, timeout_overall=self.connect_timeout)
        except (TransportError, OSError) as e:
            got = buf.getvalue().strip()
            self.close()
            if isinstance(e, OSError):
                raise FlashError("transport", f"{self.port}: {e}; {RESUME}") from None
            if got in ("", "b''"):
                raise FlashError(
                    "timeout",
                    f"{self.port}: no answer within {self.connect_timeout:g} s "
                    "(is the board powered? in its bootloader? another baud rate?)",
                ) from None
            raise FlashError(
                "not_micropython", f"{self.port}: not a MicroPython REPL; the device answered {got[:120]}"
            ) from None
        t.serial.timeout = 5.0  # replies from a working board come within ms

    def _diagnose_open(self) -> FlashError:
        import serial

        try:
            s = serial.Serial(self.port, 115200, exclusive=True, timeout=0)
        except serial.SerialException as e:
            text = str(e)
            if "exclusively lock" in text or getattr(e, "errno", None) in (errno.EAGAIN, errno.EBUSY):
                return FlashError(
                    "port_busy",
                    f"{self.port} is in use by another program "
                    "(a terminal, mpremote, the gateway?): close it and retry",
                )
            if getattr(e, "errno", None) == errno.EACCES or "Permission denied" in text:
                return FlashError(
                    "port_access",
                    f"{self.port}: permission denied (add yourself to the dialout group, then log in again)",
                )
            return FlashError("no_such_port", f"{self.port}: cannot open: {text}")
        s.close()
        return FlashError("port_busy", f"{self.port}: could not be opened by mpremote (busy a moment ago?)")

    def close(self) -> None:
        if self.transport is not None:
            with contextlib.suppress(Exception):
                if self.transport.in_raw_repl:
                    self.transport.exit_raw_repl()
            with contextlib.suppress(Exception):
                self.transport.close()
            self.transport = None

    # -- board operations --------------------------------------------------------------

    def _connected(self) -> SerialTransport:
        if self.transport is None:
            raise FlashError("transport", f"{self.port}: not connected to the board")
        return self.transport

    def _exec(self, code: str) -> bytes:
        from mpremote.transport import TransportError, TransportExecError

        try:
            return self._connected().exec(code)
        except TransportExecError as e:
            if "ENOSPC" in e.error_output or "OSError: 28" in e.error_output:
                raise FlashError("board_full", f"{self.port}: the board's filesystem is full") from None
            raise FlashError(
                "transport", f"{self.port}: the board failed: {e.error_output.strip()[-300:]}; {RESUME}"
            ) from None
        except (TransportError, OSError) as e:
            raise FlashError("transport", f"{self.port}: lost the board: {e}; {RESUME}") from None

    def _eval(self, code: str) -> Any:
        import ast

        out = self._exec(code).decode("utf-8", "replace").strip()
        try:
            return ast.literal_eval(out)
        except (ValueError, SyntaxError):
            raise FlashError("transport", f"{self.port}: unexpected answer from the board: {out[:200]!r}") from None

    def run(self, code: str) -> bytes:
        """Execute code on the board (raw REPL) and return its output; FlashError on failure."""
        return self._exec(code)

    def evaluate(self, code: str, silent_s: float | None = None) -> Any:
        """Execute code that prints one Python literal, and return that value.

        silent_s: how long the board may stay silent (mpremote's default is 10 s between two
        characters: too short for work that prints only at its end, like an update's install).
        """
        if silent_s is None:
            return self._eval(code)
        import ast

        from mpremote.transport import TransportError

        try:
            out, err = self._connected().exec_raw(code, timeout=silent_s)
        except (TransportError, OSError) as e:
            raise FlashError("transport", f"{self.port}: lost the board: {e}; {RESUME}") from None
        if err:
            raise FlashError("transport", f"{self.port}: the board failed: {err.decode(errors='replace')[-300:]}")
        text = out.decode("utf-8", "replace").strip()
        try:
            return ast.literal_eval(text)
        except (ValueError, SyntaxError):
            raise FlashError("transport", f"{self.port}: unexpected answer from the board: {text[:200]!r}") from None

    def board_info(self) -> dict[str, Any]:
        mpy, platform, version = self._eval(
            "import sys\nprint(repr((sys.implementation._mpy, sys.platform, sys.version)))"
        )
        return {
            "mpy_version": mpy & 0xFF,
            "mpy_sub_version": (mpy >> 8) & 3,
            "mpy_arch": mpy >> 10,
            "platform": platform,
            "version": version,
            # sys.version is "3.4.0; MicroPython v1.24.1 on ...": 3.4.0 is the Python
            # language level MicroPython implements, not a version of anything here
            "board": version.split("; ", 1)[-1],
        }

    def remote_hashes(self, paths: list[str]) -> list[str | None]:
        return self._eval(HASH_SCRIPT % _remote_repr(paths))

    def remote_space(self, paths: list[str]) -> tuple[int, int, list[int]]:
        bsize, bfree, sizes = self._eval(SPACE_SCRIPT % _remote_repr(paths))
        return bsize, bfree, sizes

    def mkdirs(self, path: str) -> None:
        parts = path.split("/")[:-1]
        for i in range(1, len(parts) + 1):
            d = "/".join(parts[:i])
            self._exec("import os\ntry:\n os.mkdir(%r)\nexcept OSError:\n pass" % d)

    def write_verified(self, path: str, data: bytes, sha256: str) -> None:
        """Write to PATH.part, check its hash on the board, rename over PATH."""
        part = path + ".part"
        for attempt in range(RETRIES + 1):
            self.mkdirs(path)
            try:
                self._connected().fs_writefile(part, data, chunk_size=CHUNK)
            except OSError as e:
                self._exec("import os\ntry:\n os.remove(%r)\nexcept OSError:\n pass" % part)
                if e.errno == errno.ENOSPC:
                    raise FlashError(
                        "board_full",
                        f"{self.port}: the board's filesystem filled up while writing {path} ({len(data)} bytes)",
                    ) from None
                raise FlashError("transport", f"{self.port}: writing {path} failed: {e}; {RESUME}") from None
            except Exception as e:  # mpremote's TransportError and friends
                raise FlashError("transport", f"{self.port}: writing {path} failed: {e}; {RESUME}") from None
            got = self.remote_hashes([part])[0]
            if got == sha256:
                self._exec(
                    "import os\ntry:\n os.remove(%r)\nexcept OSError:\n pass\nos.rename(%r, %r)" % (path, part, path)
                )
                return
            self._exec("import os\nos.remove(%r)" % part)
            if attempt < RETRIES:
                self.log(f"  {path}: hash mismatch on the board, writing it again")
        raise FlashError(
            "hash_mismatch",
            f"{self.port}: {path} reads back from the board as sha256 {got}, "
            f"expected {sha256} ({RETRIES + 1} attempts): the board's flash "
            "may be failing",
        )

    def list_managed(self) -> list[str]:
        """Files under MANAGED_DIRS on the board (relative paths)."""
        found: list[str] = []
        todo = [d for d in MANAGED_DIRS]
        while todo:
            d = todo.pop()
            try:
                entries = self._connected().fs_listdir(d)
            except OSError:
                continue
            except Exception as e:
                raise FlashError("transport", f"{self.port}: listing {d} failed: {e}; {RESUME}") from None
            for ent in entries:
                p = d + "/" + ent.name
                if ent.st_mode & 0x4000:
                    todo.append(p)
                else:
                    found.append(p)
        return sorted(found)

    def soft_reset_and_watch(self, seconds: float) -> bytes:
        """Friendly REPL, Ctrl-D: boot.py and main.py run; returns the console output."""
        t = self._connected()
        t.exit_raw_repl()
        t.serial.reset_input_buffer()
        t.serial.write(b"\x04")
        out = b""
        deadline = time.monotonic() + seconds
        t.serial.timeout = 0.1
        while time.monotonic() < deadline:
            out += t.serial.read(4096)
            if b"Traceback (most recent call last)" in out or b"lumeau: cannot start" in out:
                time.sleep(0.3)  # the rest of the message
                out += t.serial.read(65536)
                break
        return out


def _check_compatible(bundle: Bundle, info: dict, log: Callable[[str], None]) -> None:
    if info["mpy_version"] != bundle.mpy_version or info["mpy_sub_version"] < bundle.mpy_sub_version:
        raise FlashError(
            "incompatible",
            f"the board runs MicroPython with .mpy v{info['mpy_version']}."
            f"{info['mpy_sub_version']} ({info['version']}); the bundle is .mpy "
            f"v{bundle.mpy_version}.{bundle.mpy_sub_version} (mpy-cross "
            f"{bundle.mpy_cross}): update the board's MicroPython (--micropython)",
        )


def read_config(path: Path, bundle: Bundle) -> tuple[bytes, dict]:
    from lumeau import boards

    try:
        data = path.read_bytes()
    except OSError as e:
        raise FlashError("bad_config", f"{path}: cannot read: {e.strerror}") from None
    try:
        cfg = boards.validate(data, require_pins=False)  # the node's validators, apps included; unknown keys
    except boards.ConfigKeyError as e:
        raise FlashError("bad_config", f"{path}: {e}") from None
    if cfg["kind"] != bundle.kind:
        raise FlashError(
            "bad_config",
            f"{path}: a {cfg['kind']} node's config, but the bundle is for {bundle.kind} "
            "nodes: build the right bundle (lumeau node build --kind ...)",
        )
    try:
        boards.validate(data)  # and every pin the node reads
    except boards.ConfigKeyError as e:
        raise FlashError("bad_config", f"{path}: {e}") from None
    return data, cfg


def fresh_consumed(cfg_data: bytes | None, cfg: dict | None) -> bytes | None:
    """The config's bytes with its fresh mark cleared, or None when it is not marked."""
    if cfg_data is None or cfg is None or not cfg.get("key_fresh"):
        return None
    from firmware import config as fwconfig

    return fwconfig.cleared(cfg_data)


def rekey(
    config: Path,
    *,
    registry: Path | None = None,
    gateway: str | None = None,
    token: str | None = None,
    log: Callable[[str], None] = print,
) -> str:
    """Give the node of `config` a new root key, as `lumeau node provision` does.

    `flash --erase` wipes the board's counter state; under the old key its
    counter would restart at 0 and reuse the AES-CTR keystream (SPEC §4
    "Counter persistence"). So the erase re-keys first: same id, kind, site
    settings and location; a new key registered (registry file or gateway API)
    and written to `config`, marked fresh. Returns where it was registered.
    """
    from lumeau import provision as pv

    try:
        doc = json.loads(config.read_bytes())
        node_id, kind = doc["node_id"], doc["kind"]
        if isinstance(node_id, str):  # "00c0ffee", as provision writes it (the node reads both)
            node_id = int(node_id, 16)
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise FlashError("bad_config", f"{config}: cannot read the node's config to re-key it: {e}") from None
    if not isinstance(doc, dict) or not isinstance(node_id, int) or not isinstance(kind, str):
        raise FlashError("bad_config", f"{config}: not a node's config")
    if registry is None and gateway is None:
        raise FlashError(
            "rekey",
            "--erase wipes the node's frame counters, so it re-keys the node: give --registry FILE "
            "or --gateway URL (with --token) to register the new key, and --config",
        )
    loc = doc.get("location") or {}
    template = {k: v for k, v in doc.items() if k not in ("node_id", "kind", "root_key", "key_fresh", "location")}
    try:
        p = pv.provision(
            kind,
            config,
            node_id=node_id,
            registry=registry,
            gateway=gateway,
            token=token,
            template=template,
            lat=loc.get("lat"),
            lon=loc.get("lon"),
            force=True,  # a re-key replaces the registered key and this config (issue 17)
        )
    except pv.ProvisionError as e:
        raise FlashError("rekey", f"re-keying node {node_id:08x} before the erase failed: {e}") from None
    log(
        f"node {node_id:08x}: re-keyed before the erase (as lumeau node provision does): the erase wipes "
        f"its frame counters, and a new key never reuses one; the new key is in {config} and {p.registered_in}"
    )
    return p.registered_in


def _api_get(url: str, token: str, path: str) -> dict[str, Any]:
    req = urllib.request.Request(url.rstrip("/") + path, headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(req, timeout=5) as resp:
        doc = json.loads(resp.read())
    if not isinstance(doc, dict):
        raise ValueError(f"not a JSON object: {str(doc)[:80]}")
    return doc


def _http_error(url: str, node_id: int, e: urllib.error.HTTPError) -> FlashError:
    """What an HTTP error from the gateway's /nodes/ID means, and what to do."""
    if e.code in (401, 403):
        return FlashError("token", f"the gateway at {url} refused the API token (HTTP {e.code}): {TOKEN_HELP}")
    if e.code == 404:
        return FlashError(
            "gateway",
            f"the gateway at {url} does not know node {node_id:08x} (HTTP 404: not in its registry): "
            f"provision it there (lumeau node provision --gateway {url}), or, provisioned into the "
            "registry file, check that it is the file the gateway reads (it reloads it by itself within a second); "
            "or --gateway names another service",
        )
    return FlashError("gateway", f"the gateway at {url} answered HTTP {e.code} {e.reason or ''}".rstrip())


NEW_NODE_WAIT_S = 5.0


def check_gateway(url: str, token: str | None, node_id: int) -> None:
    """Before the board is touched: the gateway answers, takes the token and knows the node."""
    if not token:
        raise FlashError("token", f"--gateway needs the gateway's API token: {TOKEN_HELP}")
    if "://" not in url:
        raise FlashError("gateway", f"--gateway {url!r} has no scheme: write http://{url}")
    # A node just provisioned into the registry file is known once the gateway reloads the file,
    # within a second (gateway/service.py's watcher): a 404 is taken as final after NEW_NODE_WAIT_S.
    deadline = time.monotonic() + NEW_NODE_WAIT_S
    try:
        while True:
            try:
                _api_get(url, token, f"/nodes/{node_id:08x}")
                return
            except urllib.error.HTTPError as e:
                if e.code != 404 or time.monotonic() >= deadline:
                    raise _http_error(url, node_id, e) from None
            time.sleep(0.25)
    except (urllib.error.URLError, OSError, ValueError) as e:
        why = getattr(e, "reason", e)
        raise FlashError(
            "gateway",
            f"cannot reach the gateway API at {url} ({why}): is the gateway running, and is that its "
            f"[api] port (default {API_PORT})? Nothing was written to the board",
        ) from None


def alarm_field(alarm: Any, name: str) -> Any:
    """A field of an open alarm as GET /nodes/{id} gives it: {"fields": {name: {"value": ...}}, "since": ...}."""
    f = alarm.get("fields") if isinstance(alarm, dict) else None
    v = f.get(name) if isinstance(f, dict) else None
    return v.get("value") if isinstance(v, dict) else None


def app_exception_reason(alarm: dict[str, Any]) -> str:
    """The EVENT app_exception's value as words (SPEC §5: type << 16 | restarts)."""
    from protocol.messages import APP_EXC_TYPES

    v = alarm_field(alarm, "value")
    if not isinstance(v, int) or v < 0:
        return "the app raised an exception"
    t, n = v >> 16, v & 0xFFFF
    name = APP_EXC_TYPES[t] if t < len(APP_EXC_TYPES) else f"exception type {t}"
    return f"the app raised {'an' if name[0] in 'AEIOU' else 'a'} {name} ({n} restart{'s' if n != 1 else ''} so far)"


def wait_app_runs(url: str, token: str, node_id: int, seconds: float, port: str, log: Callable[[str], None]) -> None:
    """After the HELLO: `seconds` without an app_exception alarm open at the gateway."""
    log(f"  waiting {seconds:g} s for the app to run cleanly (no app_exception alarm at the gateway)")
    deadline = time.monotonic() + seconds
    while True:
        try:
            node = _api_get(url, token, f"/nodes/{node_id:08x}")
        except urllib.error.HTTPError as e:
            raise _http_error(url, node_id, e) from None
        except (urllib.error.URLError, OSError, ValueError):
            node = {}
        for a in node.get("open_alarms") or []:
            if alarm_field(a, "code") in ("app_exception", 23):
                raise FlashError(
                    "app_failed",
                    f"node {node_id:08x} started, but {app_exception_reason(a)}: it crash-loops with its "
                    f"outputs in their safe state. The traceback is on its console (mpremote connect {port}); "
                    "check the config against firmware/README.md, fix it and flash again",
                )
        if time.monotonic() >= deadline:
            return
        time.sleep(0.5)


def first_report_due(cfg: dict, since: float) -> str:
    from firmware import config as fwconfig

    s = cfg.get("report_interval_s") or fwconfig.DEFAULTS["report_interval_s"]
    at = time.strftime("%H:%M:%S", time.localtime(since + s))
    return f"first report due about {s} s after the start (at {at}, +-5 %), then every {s} s (report_interval_s)"


def wait_hello_at_gateway(
    url: str, token: str, node_id: int, since: float, firmware: str, timeout: float, log: Callable[[str], None]
) -> str:
    """Poll the gateway's API until the node was seen after `since` running `firmware`."""
    req_url = url.rstrip("/") + f"/nodes/{node_id:08x}"
    deadline = time.monotonic() + timeout
    last_err = ""
    while time.monotonic() < deadline:
        req = urllib.request.Request(req_url, headers={"Authorization": f"Bearer {token}"})
        try:
            with urllib.request.urlopen(req, timeout=5) as resp:
                node = json.loads(resp.read())
            seen = node.get("last_seen")
            if isinstance(seen, (int, float)) and seen >= since and (node.get("reported_firmware") in (firmware, None)):
                return (
                    f"HELLO at the gateway (last seen {time.strftime('%H:%M:%S', time.localtime(seen))}"
                    f", firmware {node.get('reported_firmware')})"
                )
        except urllib.error.HTTPError as e:
            raise _http_error(url, node_id, e) from None
        except (urllib.error.URLError, OSError, ValueError) as e:
            last_err = str(e)
        time.sleep(0.5)
    raise FlashError(
        "timeout",
        f"no HELLO from node {node_id:08x} at the gateway {url} within {timeout:g} s"
        + (f" (last error: {last_err})" if last_err else "")
        + ": check its radio settings, the antenna, and that the gateway runs",
    )


def flash(
    port: str,
    bundle_dir: Path,
    config: Path | None = None,
    *,
    connect_timeout: float = CONNECT_TIMEOUT_S,
    settle_s: float = SETTLE_S,
    gateway: str | None = None,
    token: str | None = None,
    hello_timeout: float = HELLO_TIMEOUT_S,
    run_check_s: float = RUN_CHECK_S,
    reset: bool = True,
    log: Callable[[str], None] = print,
) -> FlashReport:
    try:
        bundle = load_bundle(bundle_dir)
    except BundleError as e:
        raise FlashError("bad_bundle", str(e)) from None
    cfg_data, cfg = read_config(config, bundle) if config is not None else (None, None)
    if gateway and cfg is None:
        raise FlashError("bad_config", "waiting for the HELLO at a gateway needs --config (for the node id)")
    if gateway and cfg is not None:
        check_gateway(gateway, token, cfg["node_id"])  # before the board is touched

    report = FlashReport(port)
    with Flasher(port, connect_timeout=connect_timeout, log=log) as fl:
        info = fl.board_info()
        report.board = info["board"]
        log(f"{port}: {info['board']} ({info['platform']})")
        _check_compatible(bundle, info, log)

        wanted = [(f.path, bundle.local(f).read_bytes(), f.sha256) for f in bundle.files]
        fresh_cleared = fresh_consumed(cfg_data, cfg)
        cleared_digest = hashlib.sha256(fresh_cleared).hexdigest() if fresh_cleared is not None else None
        if cfg_data is not None:
            wanted.append((CONFIG_PATH, cfg_data, hashlib.sha256(cfg_data).hexdigest()))
        remote = fl.remote_hashes([p for p, _, _ in wanted] + ([CONFIG_PATH] if cfg_data is None else []))
        if cfg_data is None:
            if remote.pop() is None and reset:
                raise FlashError(
                    "bad_config",
                    f"{port}: the board has no /{CONFIG_PATH} and no --config was given: "
                    "the node could not start (lumeau node provision writes one)",
                )
        todo = []
        for (path, data, digest), have in zip(wanted, remote):
            if have == digest or (path == CONFIG_PATH and have is not None and have == cleared_digest):
                report.unchanged.append(path)
            else:
                todo.append((path, data, digest))

        if todo:
            bsize, bfree, sizes = fl.remote_space([p for p, _, _ in todo])
            blocks = lambda n: -(-n // bsize) if n > 0 else 0  # noqa: E731
            grow = sum(max(0, blocks(len(d)) - blocks(max(s, 0))) for (_, d, _), s in zip(todo, sizes))
            peak = max(blocks(len(d)) for _, d, _ in todo)  # the .part copy beside the old file
            if grow + peak > bfree:
                raise FlashError(
                    "board_full",
                    f"{port}: the board's filesystem is full: these files need "
                    f"{(grow + peak) * bsize // 1024} KiB, {bfree * bsize // 1024} KiB "
                    "free (remove files, or erase the board with --micropython --erase, which re-keys the node)",
                )

        for path, data, digest in todo:
            log(f"  {path}: {len(data)} bytes")
            fl.write_verified(path, data, digest)
            report.copied.append(path)
            report.bytes_copied += len(data)
        if fresh_cleared is not None and config is not None:
            # the key is this board's now: the laptop's copy must not start another board at 0
            from lumeau.provision import write_private

            write_private(config, fresh_cleared)
            log(f"  {config}: key_fresh cleared (the key is in use on this board; SPEC §4)")

        # The wired release is the one that boots: the A/B state (SPEC §13) names it active with
        # its bundle id (HELLO key 5), and releases installed over the air before are removed.
        from lumeau.release import factory_state

        state = factory_state(bundle)
        if fl.remote_hashes([AB_STATE])[0] != hashlib.sha256(state).hexdigest():
            fl.write_verified(AB_STATE, state, hashlib.sha256(state).hexdigest())
            fl._exec(WIPE_SLOTS)
            log(f"  /{AB_STATE}: the flashed release boots (over-the-air slots cleared)")
        # A flash cut short leaves PATH.part files; at the root one may hold the key.
        stray = [p + ".part" for p, _, _ in wanted if "/" not in p]
        fl._exec("import os\nfor p in %r:\n try:\n  os.remove(p)\n except OSError:\n  pass" % (stray,))
        keep = {f.path for f in bundle.files}
        for path in fl.list_managed():
            if path not in keep:
                fl._exec("import os\nos.remove(%r)" % path)
                report.removed.append(path)
                log(f"  {path}: removed (not in the bundle)")
        log(
            f"{port}: {len(report.copied)} copied ({report.bytes_copied} bytes), "
            f"{len(report.unchanged)} unchanged, {len(report.removed)} removed"
        )

        if not reset:
            return report
        since = time.time()
        out = fl.soft_reset_and_watch(settle_s)
    text = out.decode("utf-8", "replace")
    if b"MPY: soft reboot" not in out:
        raise FlashError("timeout", f"{port}: the board did not soft-reset after flashing; console: {text[-300:]!r}")
    if "Traceback (most recent call last)" in text or "lumeau: cannot start" in text:
        tail = text[text.find("MPY: soft reboot") :].strip()
        raise FlashError("node_failed", f"{port}: the node failed to start:\n{tail[-1500:]}")
    if gateway:
        assert cfg is not None  # checked before connecting: a gateway needs --config
        report.confirmed = wait_hello_at_gateway(
            gateway, token or "", cfg["node_id"], since, bundle.firmware_version, hello_timeout, log
        )
        log(f"{port}: {report.confirmed}")
        if run_check_s > 0:
            wait_app_runs(gateway, token or "", cfg["node_id"], run_check_s, port, log)
            report.confirmed += f"; the app ran {run_check_s:g} s without an exception"
    else:
        report.confirmed = f"running: no error on the console within {settle_s:g} s of the reset"
        log(f"{port}: {report.confirmed}")
    if cfg is not None:
        report.first_report = first_report_due(cfg, since)
        log(f"node {cfg['node_id']:08x}: {report.first_report}")
    return report


def write_micropython(
    port: str, image: Path, target: str, *, erase: bool = False, baud: int = 460800, log: Callable[[str], None] = print
) -> None:
    """Write a MicroPython firmware image to an ESP32 with esptool's Python API."""
    if target != "esp32":
        raise FlashError(
            "image",
            f"--micropython writes ESP32 images with esptool; a {target} board takes its "
            "MicroPython .uf2 by copying it to the drive it shows in BOOTSEL mode",
        )
    try:
        head = image.read_bytes()[:1]
    except OSError as e:
        raise FlashError("image", f"{image}: cannot read: {e.strerror}") from None
    if head != b"\xe9":
        raise FlashError(
            "image",
            f"{image}: not an ESP32 firmware image (no 0xE9 magic byte): download the "
            "ESP32_GENERIC .bin from micropython.org",
        )
    if not os.path.exists(port):
        raise FlashError("no_such_port", f"{port}: no such port")
    from esptool import cmds

    try:
        esp = cmds.detect_chip(port, baud)
    except Exception as e:  # esptool raises FatalError and serial errors
        raise FlashError(
            "image", f"{port}: no ESP32 bootloader answered ({e}): hold BOOT while pressing EN, then retry"
        ) from None
    try:
        chip = getattr(esp, "CHIP_NAME", "?")
        if chip != "ESP32":
            raise FlashError(
                "image", f"{port}: the chip is an {chip}; this image and offset (0x1000) are for the ESP32"
            )
        log(f"{port}: {chip} found, writing {image.name}")
        esp = cmds.run_stub(esp)
        cmds.attach_flash(esp)
        if erase:
            log(f"{port}: erasing the flash (the board's files go too)")
            cmds.erase_flash(esp)
        cmds.write_flash(esp, [(0x1000, str(image))])
        cmds.reset_chip(esp, "hard-reset")
    except FlashError:
        raise
    except Exception as e:
        raise FlashError("image", f"{port}: esptool failed: {e}") from None
    finally:
        with contextlib.suppress(Exception):
            esp._port.close()
