# An update over LoRa on the node (SPEC §13 "Over LoRa"): a fragment session's frames and
# status, reassembled into flash files. Loaded by string name (firmware/runtime.py) for one
# fragment frame or status request, and unloaded again after it with protocol/nodefrag.py:
# between frames a session holds no heap at all, its state is on flash. The frames reach rx()
# already checked: MIC under the node's or the group's key, counter at or above the next one,
# written before acting.
#
# The state: the SETUP body in /frag.setup, the image in /frag.image, the bitmap of fragments
# held and the coded rows in /frag.coded (protocol/nodefrag.py), so a reboot (or a battery
# node's deep sleep) resumes the session where it was. When the image is complete /frag.setup
# gets a 15th byte, 0, and the node reboots (as for a reboot command): at boot, before the
# node's code loads, main.py's release_state() installs the
# image in a boot of its own (firmware/updater.py boot(): signature, manifest, every hash, with
# the heap free of the node's code; 2 or 3 there while it runs) and resets the board into the
# trial. A refusal there
# leaves /frag.setup as 14 bytes, 1, the reason: a status request answers "refused" and puts
# the reason in last_error. A SETUP for the release the node runs (its bundle id's first 3
# bytes, as in HELLO) opens no session and does not load the decoder.
#
# qstrs are never freed and a lamp's pools are nearly full (SPEC §13 "Sizes"): the names here
# are ones the node has interned already, and the file names are long enough (over 10
# characters) to stay plain strings.

const = int  # MicroPython's compiler folds const() itself, whatever the name is bound to
# protocol.fragments / messages numbers, as private consts (tests/test_node_consts.py checks them)
_SETUP = const(1)
_SETUP_LEN = const(14)
_DATA = const(2)
_DATA_HEAD = const(4)
_ST_NO_SESSION = const(1)
_ST_REFUSED = const(2)
_RES_OK = const(0)
_RES_REFUSED = const(4)
_OP_REBOOT = const(9)


def rx(node, x):
    """A fragment frame's body (bytes), or a status request's COMMAND args (a list): for the
    latter (result, value). A body that is refused raises ValueError (the runtime counts it
    rx_rejected, its text in last_error) and changes nothing."""
    try:
        if x[:1] == b"\x01" and x[2:5] == node.cfg.get("bundle"):
            return None  # a SETUP for the release running here (a repeat after the install)
        from protocol import nodefrag

        try:
            with open("/frag.setup", "rb") as f:
                b = f.read()
            size, f, n = nodefrag.parse(b[:_SETUP_LEN])[2:5]
        except (OSError, ValueError):
            b = None  # none, or unreadable: no session
        if type(x) is list or type(x) is tuple:
            if b is None or len(x) != 1 or x[0] != b[1]:
                return _RES_REFUSED, _ST_NO_SESSION
            if len(b) > _SETUP_LEN + 1:
                node.last_error = str(b[_SETUP_LEN + 1 :], "utf-8")
                return _RES_REFUSED, _ST_REFUSED
            if len(b) > _SETUP_LEN:
                return _RES_OK, 0  # complete: installed at the next boot
            d = nodefrag.Decoder("/frag.image", "/frag.coded", size, f, n, True)
            d.close()
            return _RES_OK, d.missing
        k = x[0]
        if k == _SETUP:
            size, f, n = nodefrag.parse(x)[2:5]  # refused (ValueError) before anything changes
            if b is not None and b[:6] == bytes(x[:6]):
                return None  # the set-up again (repeated for nodes that missed it): same id, same bundle
            # the files start afresh (opened "wb", truncated: no os module to load for a remove)
            try:
                nodefrag.Decoder("/frag.image", "/frag.coded", size, f, n).close()
            except OSError:
                open("/frag.setup", "wb").close()  # storage: no session left half made
                raise
            with open("/frag.setup", "wb") as f:
                f.write(x)
            return None
        if k != _DATA or len(x) < _DATA_HEAD:
            raise ValueError("not a fragment frame")
        if b is None or x[1] != b[1]:
            raise ValueError("fragment of session %d: not this node's session" % x[1])
        if len(b) > _SETUP_LEN:
            return None  # complete, or refused
        d = nodefrag.Decoder("/frag.image", "/frag.coded", size, f, n, True)
        try:
            k = d.add(int.from_bytes(x[2:4], "big"), x[_DATA_HEAD:])  # a wrong length raises
        finally:
            d.close()
        if k:
            with open("/frag.setup", "wb") as f:
                f.write(b + b"\x00")  # complete: installed at the next boot (main.py release_state)
            node.execute(_OP_REBOOT, (), 0)  # once the queue is out, as a reboot command
        return None
    finally:
        from firmware import unload

        unload("fuota", "protocol.nodefrag")
