"""The end of an update over LoRa on the virtual board (real MicroPython, boot.py and main.py as
flashed by `lumeau node flash`): an image the node completed from fragments (firmware/fuota.py's
files on flash, /frag.setup's 15th byte 0) is installed at boot, before the node's code loads
(main.py release_state() -> firmware/updater.py boot()), in a boot of its own,
which then resets the board into the release on trial; an image
signed by another key is refused there, the refusal kept on flash for the gateway's status
request, and the board boots its running release as before. SPEC §13 "Over LoRa"."""

from __future__ import annotations

import json
import time
from pathlib import Path

from test_update_serial import flashed, releases_dir  # noqa: F401  (the flashed board and its releases)

from protocol import fragments as fz

F = 34  # SF12's fragment


def _complete(flash_dir: Path, image: bytes) -> bytes:
    # what firmware/fuota.py leaves once the last fragment is in: the image, the rows file, and
    # the SETUP body with a 15th byte 0
    mlen = int.from_bytes(image[4:6], "big")
    bundle = bytes.fromhex(json.loads(image[6 : 6 + mlen])["bundle"])
    setup = fz.setup_body(3, bundle, len(image), F, -(-len(image) // F), 8)
    (flash_dir / "frag.image").write_bytes(image)
    (flash_dir / "frag.coded").write_bytes(bytes((len(image) // F + 8) // 8))
    (flash_dir / "frag.setup").write_bytes(setup + b"\x00")
    return setup


def _wait(what, cond, seconds: float = 90) -> None:
    deadline = time.monotonic() + seconds
    while not cond():
        assert time.monotonic() < deadline, what
        time.sleep(0.2)


def _ab(flash_dir: Path) -> dict:
    return json.loads((flash_dir / "ab.json").read_text())


def test_a_complete_image_installs_at_boot_and_the_board_resets_into_the_trial(flashed, releases_dir):  # noqa: F811
    d = flashed.flash_dir
    flashed.stop()
    _complete(d, (releases_dir / "delta.lup").read_bytes())
    flashed.start()
    _wait("the release armed and the session's files gone", lambda: not list(d.glob("frag.*")) and _ab(d)["t"] == "s0")
    assert _ab(d)["v"]["s0"] == "0.1.1"
    _wait("the node runs its release on trial", lambda: flashed.control({"get": "state"})["running"])
    assert flashed.control({"get": "state"})["boots"] >= 2  # the install's boot, then the trial's


def test_a_forged_image_is_refused_at_boot_and_kept_for_the_status(flashed, releases_dir):  # noqa: F811
    d = flashed.flash_dir
    flashed.stop()
    setup = _complete(d, (releases_dir / "forged.lup").read_bytes())
    flashed.start()
    _wait("the refusal on flash", lambda: (d / "frag.setup").stat().st_size > 15)
    st = (d / "frag.setup").read_bytes()
    assert st[:14] == setup and st[14] == 1 and b"signature" in st[15:], st
    assert not (d / "frag.image").exists() and not (d / "frag.coded").exists()
    assert _ab(d)["t"] == ""  # nothing armed
    _wait("the node runs its release as before", lambda: flashed.control({"get": "state"})["running"])
