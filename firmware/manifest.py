# The files that go on a device, per node kind.
#
# Two uses:
# - read as data (DEVICE_FILES, LIB_PACKAGES) by the deploy tooling and by
#   tests/test_manifest.py, which checks that each kind's list is exactly
#   the import closure of main.py for that kind: nothing missing, nothing
#   carried for nothing (every module costs heap, firmware/README.md);
# - executed by MicroPython's manifest tool to freeze the code into a
#   firmware image (bytecode then runs from flash, not from the heap):
#     make -C ports/esp32 BOARD=ESP32_GENERIC FROZEN_MANIFEST=<repo>/firmware/manifest.py
#   which freezes every kind's modules and the micropython-lib LoRa drivers.
#
# Device layout: /boot.py and /main.py (from firmware/), /firmware/*.py,
# /protocol/*.py, /config.json (written by the technician tooling), /state/
# (the store's records, created at first boot).

# protocol/ files every kind imports, then those only some kinds import: the
# nodes' frames and messages (nodeframe.py, nodemsg.py, nodecbor.py; cbor.py, loaded only for CBOR
# outside a node's subset) and the BLE profile (nodeble.py, only for firmware/ble.py when
# BLE commissioning is on: flash, not heap), a lamp's multicast groups (nodegroup.py, only for
# firmware/group.py once the lamp joined a group), a calendar's checks and reassembly (nodecal.py,
# only while a calendar arrives), the bridge's serial messages.
PROTOCOL = ("__init__.py", "crypto.py", "keys.py", "nodelora.py", "serial.py")
# ed25519.py and noderelease.py: only while an update is checked (firmware/updater.py);
# nodefrag.py only during an update over LoRa (firmware/fuota.py).
_PROTOCOL_NODE = (
    "cbor.py",
    "ed25519.py",
    "nodeble.py",
    "nodecal.py",
    "nodecbor.py",
    "nodefrag.py",
    "nodeframe.py",
    "nodemsg.py",
    "noderelease.py",
)
PROTOCOL_FOR = {
    "lighting": _PROTOCOL_NODE + ("nodegroup.py",),
    "irrigation": _PROTOCOL_NODE,
    # ed25519.py and noderelease.py: main.py's release_state() installs an update completed over LoRa
    # (never on a bridge, which takes none, but main.py's path is one for every kind)
    "bridge": ("bridge_msg.py", "ed25519.py", "noderelease.py"),
}
# ble.py is carried by every node but imported only when the config enables
# BLE commissioning (firmware/main.py): flash, not heap. slots.py (A/B releases) is
# loaded by boot.py and main.py and dropped; updater.py only during an update
# (`lumeau node update`, SPEC §13); fuota.py only during a LoRa fragment session (SPEC §13
# "Over LoRa"); bleupd.py only while an update arrives over BLE (firmware/ble.py loads it by
# its dotted name, SPEC §11 "Updates"). radio_lorawan.py only on a node whose radio is a
# LoRaWAN modem (radio.type "lorawan", SPEC §14).
_NODE = (
    "__init__.py",
    "aio.py",
    "ble.py",
    "bleupd.py",
    "calendar.py",
    "config.py",
    "fuota.py",
    "hal_machine.py",
    "radio.py",
    "radio_lora.py",
    "radio_lorawan.py",
    "runtime.py",
    "slots.py",
    "store.py",
    "updater.py",
    "uplink.py",
)
FIRMWARE = {
    "lighting": _NODE + ("astro.py", "group.py", "lighting.py", "lighting_cfg.py"),
    "irrigation": _NODE + ("irrigation.py", "irrigation_cfg.py", "battery.py", "hal_battery.py"),
    "bridge": (
        "__init__.py",
        "aio.py",
        "bridge.py",
        "config.py",
        "hal_machine.py",
        "radio.py",
        "radio_lora.py",
        "slots.py",
        "updater.py",  # flash only: main.py release_state() (above)
    ),
}
ROOT_FILES = ("boot.py", "main.py")  # firmware/boot.py -> /boot.py, firmware/main.py -> /main.py
# micropython-lib packages (mip install on the board, or `require` when freezing)
LIB_PACKAGES = ("lora-async", "lora-sx127x", "lora-sx126x", "aioble")  # aioble: BLE commissioning


def device_files(kind):
    """[(source path in the repo, path on the device)] for one node kind."""
    out = [("firmware/" + f, "/" + f) for f in ROOT_FILES]
    out += [("firmware/" + f, "/firmware/" + f) for f in FIRMWARE[kind]]
    out += [("protocol/" + f, "/protocol/" + f) for f in PROTOCOL + PROTOCOL_FOR[kind]]
    return out


if "freeze" in globals():  # run by MicroPython's manifest tool (tools/manifestfile.py)
    for _pkg in LIB_PACKAGES:
        require(_pkg)  # noqa: F821
    _all = set()
    for _files in FIRMWARE.values():
        _all.update(_files)
    package("firmware", files=sorted(_all), base_path="..")  # noqa: F821
    _proto = set(PROTOCOL)
    for _files in PROTOCOL_FOR.values():
        _proto.update(_files)
    package("protocol", files=sorted(_proto), base_path="..")  # noqa: F821
