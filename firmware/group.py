# A lamp's multicast groups (SPEC §5 "Groups"): the keys it was given by
# join_group, and the next group counter it takes per group. Loaded only by a
# lamp that is (or becomes) a member of a group: firmware/lighting.py imports
# it on the first join_group, or at boot when a record is stored. The names a
# lamp without a group loads (this module's, the app's attribute, the storage
# key) are one: "group". Every new name costs a node heap a qstr, and the
# lighting node's qstr pool was full (a new pool: some 4.6 KB, bench/README.md).
#
# HAL storage "group": per group 28 bytes, addr u32, key generation u32, next
# group counter u32, group key (16). Written before a join answers ok and
# before a group frame acts (as the downlink window, SPEC §4): a reboot never
# takes a group frame twice, and a frame whose counter could not be written is
# not acted on. The node's flash holds its root key already (config.json), so
# the group key is kept the same way.

from protocol import nodegroup as ng

const = int  # MicroPython's compiler folds const() itself, whatever the name is bound to
# protocol.groupcast / messages numbers, as private consts (tests/test_node_consts.py checks them)
_GROUPS_MAX = const(4)
_JOIN_ARGS = const(7)
_GROUP_ADDR_MAX = const(0xFFFF)
_RES_OK = const(0)
_RES_BAD_ARGS = const(2)
_RES_REFUSED = const(4)
_RES_FAILED = const(6)


def _u32(b, i):
    return int.from_bytes(b[i : i + 4], "big")


class Groups:
    def __init__(self, hal, keys):
        self.hal = hal
        self.keys = keys
        self.slots = []  # [addr, gen, next counter, group key, its MIC key]
        data = hal.load("group") or b""
        for i in range(0, len(data) - 27, 28):
            a = _u32(data, i)
            k = bytes(data[i + 12 : i + 28])
            self.slots.append([a, _u32(data, i + 4), _u32(data, i + 8), k, ng.mic_key(k, a)])

    def _save(self, slots):
        out = b""
        for s in slots:
            out += s[0].to_bytes(4, "big") + s[1].to_bytes(4, "big") + s[2].to_bytes(4, "big") + s[3]
        self.hal.save("group", out)

    def join(self, args):
        """join_group [addr, gen, next, w0..w3] (the key, wrapped) or [addr] (leave) -> (result, gen)."""
        n = len(args)
        addr = args[0] if n else 0
        if not (1 <= addr <= _GROUP_ADDR_MAX and (n == 1 or n == _JOIN_ARGS)):
            return _RES_BAD_ARGS, 0
        old = None
        slots = []
        for s in self.slots:
            if s[0] == addr:
                old = s
            else:
                slots.append(s)
        gen = 0
        if n > 1:
            gen, nxt = args[1], args[2]
            if gen < 0 or nxt < 0:
                return _RES_BAD_ARGS, 0
            if old is not None and gen < old[1]:
                return _RES_REFUSED, old[1]  # an older key never comes back
            if old is not None and gen == old[1] and nxt < old[2]:
                nxt = old[2]  # the same key again: never looser than what was taken
            if len(slots) >= _GROUPS_MAX:
                return _RES_REFUSED, 0
            w = bytearray(16)
            for i in range(4):
                w[4 * i : 4 * i + 4] = (args[3 + i] & 0xFFFFFFFF).to_bytes(4, "big")
            k = ng.xor16(w, ng.wrap_pad(self.keys, addr, gen))
            slots.append([addr, gen, nxt, k, ng.mic_key(k, addr)])
        try:
            self._save(slots)
        except OSError:
            return _RES_FAILED, 0  # nothing changed: the gateway retries
        self.slots = slots
        return _RES_OK, gen

    def check(self, f):
        """A parsed GROUP_COMMAND frame -> its COMMAND body (CBOR), None when it is for a group
        this lamp is not in, False when refused (MIC, replay, not written). Refused changes nothing."""
        for s in self.slots:
            if s[0] == f.node_id:
                was = s[2]
                if f.counter < was or f.encrypted or not ng.mic_ok(s[4], f.raw):
                    return False
                s[2] = f.counter + 1
                try:
                    self._save(self.slots)
                except OSError:
                    s[2] = was
                    return False
                return f.body
        return None


def load(hal, node):
    """The groups of the lamp `node` (firmware.runtime.Node); its radio listens between uplinks
    from now on (firmware/group_rx.py: on a LoRa modem, the continuous receive of a member)."""
    from firmware import group_rx

    node.radio = group_rx.wrap(hal, node.radio)
    return Groups(hal, node.keys)
