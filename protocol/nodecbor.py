# A node's CBOR: the part of protocol/cbor.py that its messages and records
# use, with protocol/cbor.py itself as the fallback for everything else.
#
# A node's bodies hold only ints, byte strings, short text, arrays and maps
# (SPEC §5), but SPEC §9 promises that decoding accepts any well-formed CBOR
# with the errors cbor.py gives. So this module handles that common subset
# and hands anything else to cbor.py, imported only then: floats, tags,
# simple values and undefined, indefinite lengths, non-ASCII text, integers
# past 64 bits, and every malformed input (cbor.py finds the error and names
# it). dumps and loads therefore return or raise exactly what cbor.dumps and
# cbor.loads do (tests/test_nodecbor.py checks it on random input), while a
# node in normal service never loads cbor.py's tags, floats and UTF-8 checker.

const = int  # MicroPython's compiler folds const() itself, whatever the name is bound to

_MAX_DEPTH = const(32)  # cbor.MAX_DEPTH
_U64 = const(0xFFFFFFFFFFFFFFFF)


def dumps(obj):
    """cbor.dumps(obj): deterministic CBOR."""
    buf = bytearray()
    if _enc(buf, obj, 0):
        return bytes(buf)
    from protocol import cbor

    return cbor.dumps(obj)


def _head(buf, major, n):
    if n < 24:
        buf.append(major | n)
    elif n < 0x100:
        buf.append(major | 24)
        buf.append(n)
    elif n < 0x10000:
        buf.append(major | 25)
        buf.extend(n.to_bytes(2, "big"))
    elif n < 0x100000000:
        buf.append(major | 26)
        buf.extend(n.to_bytes(4, "big"))
    else:
        buf.append(major | 27)
        buf.extend(n.to_bytes(8, "big"))


def _first(pair):
    return pair[0]


def _enc(buf, obj, depth):
    # False: outside the subset (dumps then asks cbor.py). Identity tests
    # first: on CPython bool is an int, on MicroPython it is not.
    if obj is None:
        buf.append(0xF6)
    elif obj is False:
        buf.append(0xF4)
    elif obj is True:
        buf.append(0xF5)
    elif isinstance(obj, int):
        if obj >= 0:
            if obj > _U64:
                return False
            _head(buf, 0x00, obj)
        else:
            if obj < -_U64 - 1:
                return False
            _head(buf, 0x20, -1 - obj)
    elif isinstance(obj, str):
        try:
            b = obj.encode("utf-8")
        except UnicodeError:
            return False
        _head(buf, 0x60, len(b))
        buf.extend(b)
    elif isinstance(obj, (bytes, bytearray, memoryview)):
        _head(buf, 0x40, len(obj))
        buf.extend(obj)
    elif depth >= _MAX_DEPTH:
        return False
    elif isinstance(obj, (list, tuple)):
        _head(buf, 0x80, len(obj))
        for x in obj:
            if not _enc(buf, x, depth + 1):
                return False
    elif isinstance(obj, dict):
        # keys in the order of their encoding, each encoded on its own first
        pairs = []
        for k, v in obj.items():
            kb = bytearray()
            if not _enc(kb, k, depth + 1):
                return False
            pairs.append((bytes(kb), v))
        pairs.sort(key=_first)
        _head(buf, 0xA0, len(pairs))
        prev = None
        for kb, v in pairs:
            if kb == prev:
                return False  # two keys encode identically: cbor.py raises
            prev = kb
            buf.extend(kb)
            if not _enc(buf, v, depth + 1):
                return False
    else:
        return False
    return True


def loads(data):
    """cbor.loads(data): one complete item."""
    if isinstance(data, (bytes, bytearray, memoryview)):
        try:
            if type(data) is not bytes:
                data = bytes(data)
            d = _Lean(data)
            v = d.item(0)
            if d.pos == len(data):
                return v
        except Exception:
            pass  # outside the subset, or malformed: cbor.py decides
    from protocol import cbor

    return cbor.loads(data)


class _Lean:
    # Raises (anything) as soon as the input leaves the subset.
    def __init__(self, data):
        self.data = data
        self.pos = 0

    def take(self, n):
        p = self.pos
        if n > len(self.data) - p:
            raise ValueError
        self.pos = p + n
        return self.data[p : p + n]

    def item(self, depth):
        ib = self.data[self.pos]
        self.pos += 1
        major = ib >> 5
        ai = ib & 31
        if major == 7:
            if ai == 20:
                return False
            if ai == 21:
                return True
            if ai == 22:
                return None
            raise ValueError
        if ai < 24:
            n = ai
        elif ai < 28:
            n = int.from_bytes(self.take(1 << (ai - 24)), "big")
        else:
            raise ValueError
        if major == 0:
            return n
        if major == 1:
            return -1 - n
        if major == 2:
            return self.take(n)
        if major == 3:
            b = self.take(n)
            s = str(b, "utf-8")
            if len(s) != len(b):
                raise ValueError  # not ASCII: cbor.py checks the UTF-8
            return s
        if depth >= _MAX_DEPTH or major == 6:
            raise ValueError
        if n > len(self.data) - self.pos:
            raise ValueError
        if major == 4:
            return [self.item(depth + 1) for _ in range(n)]
        out = {}
        for _ in range(n):
            k = self.item(depth + 1)
            size = len(out)
            out[k] = self.item(depth + 1)
            if len(out) == size:
                raise ValueError  # duplicate key
        return out
