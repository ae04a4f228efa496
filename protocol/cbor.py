"""Small deterministic CBOR (RFC 8949) codec shared by nodes (MicroPython) and gateway (CPython).

Encoding (`dumps`) follows the core deterministic profile, RFC 8949 section 4.2.1: shortest
heads, definite lengths only, map keys sorted bytewise by their encoded form, floats in the
shortest of half/single/double that keeps the value exactly (every NaN becomes f97e00).
Note: cbor2's `canonical=True` sorts keys length-first (RFC 7049); the two orders agree
whenever all keys of a map share a major type (e.g. the protocol's small integer keys).

Decoding (`loads`) accepts any well-formed item, including indefinite lengths and
non-shortest forms, and returns dict / list / bytes / str / int / float / bool / None,
`Tag`, `Simple` and the `UNDEFINED` singleton. Anything else raises `CBORDecodeError`
(a ValueError) whose message names the problem and its byte offset (also in `.offset`).

Limits and decisions:
- Integers: -2**64 .. 2**64-1 on both sides. Tags 2/3 (bignums) are decoded to int, so
  loads accepts values that dumps refuses (CBOREncodeError), and a non-byte-string
  bignum content is rejected.
- Nesting: at most MAX_DEPTH arrays/maps/tags inside each other, in both directions.
- Simple values 0..31 in the two-byte form (f800..f81f, including f818) are rejected: RFC
  8949 section 3.3 makes them not well-formed (RFC 7049 allowed f818).
- Duplicate map keys are rejected, and so are keys Python cannot hash (arrays, maps).
  Keys that Python considers equal (1, 1.0, True) count as duplicates.
- Text must be valid UTF-8 (no overlongs, surrogates, or code points past U+10FFFF),
  checked by hand because MicroPython's str() does not reject those.
- Floats: NaN payloads are not kept. Half precision is derived by hand from float32 bits,
  because MicroPython 1.27's struct.pack(">e") is wrong for some half subnormals. On ports
  built with single-precision floats, decoded doubles lose precision.
- No streaming: one complete item per call; trailing bytes are an error.

Errors: CBOREncodeError and CBORDecodeError, both subclasses of CBORError(ValueError).
"""

import struct

MAX_DEPTH = 32

_U64 = 0xFFFFFFFFFFFFFFFF
_NAN = b"\xf9\x7e\x00"


class CBORError(ValueError):
    pass


class CBOREncodeError(CBORError):
    pass


class CBORDecodeError(CBORError):
    # offset: byte position of the problem in the input, or None
    offset = None


class Tag:
    def __init__(self, tag, value):
        self.tag = tag
        self.value = value

    def __eq__(self, other):
        return isinstance(other, Tag) and self.tag == other.tag and self.value == other.value

    def __ne__(self, other):
        return not self.__eq__(other)

    # Hashable so a tagged scalar can be a map key; a tagged array stays unhashable.
    def __hash__(self):
        return hash((self.tag, self.value))

    def __repr__(self):
        return "Tag(%d, %r)" % (self.tag, self.value)


class Simple:
    def __init__(self, value):
        self.value = value

    def __eq__(self, other):
        return isinstance(other, Simple) and self.value == other.value

    def __ne__(self, other):
        return not self.__eq__(other)

    def __hash__(self):
        return hash(self.value)

    def __repr__(self):
        return "Simple(%d)" % self.value


class _Undefined:
    def __repr__(self):
        return "UNDEFINED"


UNDEFINED = _Undefined()


# ---------------------------------------------------------------- encoding


def dumps(obj):
    buf = bytearray()
    _enc(buf, obj, 0)
    return bytes(buf)


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
    # Identity tests first: on CPython bool is an int, on MicroPython it is not.
    if obj is None:
        buf.append(0xF6)
    elif obj is False:
        buf.append(0xF4)
    elif obj is True:
        buf.append(0xF5)
    elif obj is UNDEFINED:
        buf.append(0xF7)
    elif isinstance(obj, int):
        if obj >= 0:
            if obj > _U64:
                raise CBOREncodeError("integer %d above 2**64-1" % obj)
            _head(buf, 0x00, obj)
        else:
            if obj < -_U64 - 1:
                raise CBOREncodeError("integer %d below -2**64" % obj)
            _head(buf, 0x20, -1 - obj)
    elif isinstance(obj, float):
        _float(buf, obj)
    elif isinstance(obj, str):
        try:
            b = obj.encode("utf-8")
        except UnicodeError:
            raise CBOREncodeError("text is not encodable as UTF-8")
        _head(buf, 0x60, len(b))
        buf.extend(b)
    elif isinstance(obj, (bytes, bytearray, memoryview)):
        _head(buf, 0x40, len(obj))
        buf.extend(obj)
    else:
        # Containers: the bound also stops self-referencing structures.
        if depth >= MAX_DEPTH:
            raise CBOREncodeError("nesting deeper than %d" % MAX_DEPTH)
        depth += 1
        if isinstance(obj, (list, tuple)):
            _head(buf, 0x80, len(obj))
            for x in obj:
                _enc(buf, x, depth)
        elif isinstance(obj, dict):
            _map(buf, obj, depth)
        elif isinstance(obj, Tag):
            t = obj.tag
            if not isinstance(t, int) or t is True or t is False or t < 0 or t > _U64:
                raise CBOREncodeError("tag number %r outside 0..2**64-1" % (t,))
            _head(buf, 0xC0, t)
            _enc(buf, obj.value, depth)
        elif isinstance(obj, Simple):
            v = obj.value
            if isinstance(v, int) and 0 <= v < 20:
                buf.append(0xE0 | v)
            elif isinstance(v, int) and 32 <= v <= 255:
                buf.append(0xF8)
                buf.append(v)
            else:
                # 20..23 are false/true/null/undefined, 24..31 are reserved.
                raise CBOREncodeError("simple value %r not encodable" % (v,))
        else:
            raise CBOREncodeError("cannot encode type %s" % type(obj).__name__)


def _map(buf, obj, depth):
    # Keys must be ordered by their encoding, so each is encoded on its own first.
    pairs = []
    for k, v in obj.items():
        kb = bytearray()
        _enc(kb, k, depth)
        pairs.append((bytes(kb), v))
    pairs.sort(key=_first)
    _head(buf, 0xA0, len(pairs))
    prev = None
    for kb, v in pairs:
        if kb == prev:
            raise CBOREncodeError("two map keys encode identically")
        prev = kb
        buf.extend(kb)
        _enc(buf, v, depth)


def _float(buf, x):
    if x != x:
        buf.extend(_NAN)
        return
    # MicroPython packs out-of-range values as garbage instead of raising: the unpack
    # comparison is what decides whether single precision is exact.
    try:
        b = struct.pack(">f", x)
    except OverflowError:
        b = None
    if b is not None and struct.unpack(">f", b)[0] == x:
        h = _half_bits(int.from_bytes(b, "big"))
        if h < 0:
            buf.append(0xFA)
            buf.extend(b)
        else:
            buf.append(0xF9)
            buf.extend(h.to_bytes(2, "big"))
        return
    buf.append(0xFB)
    buf.extend(struct.pack(">d", x))


def _half_bits(f):
    # Half-precision bits of the float32 with bits f, or -1 if not exact. Done by hand:
    # MicroPython 1.27's struct.pack(">e") mangles subnormals 0x0200..0x03ff.
    s = (f >> 16) & 0x8000
    e = (f >> 23) & 0xFF
    m = f & 0x7FFFFF
    if e == 0xFF:
        return s | 0x7C00 if m == 0 else -1
    if e == 0:
        # float32 subnormals lie far below the smallest half.
        return s if m == 0 else -1
    e -= 127
    if e > 15 or e < -24:
        return -1
    if e >= -14:
        if m & 0x1FFF:
            return -1
        return s | ((e + 15) << 10) | (m >> 13)
    # Half subnormal: mantissa (with its hidden bit) shifted down, no bit lost.
    shift = -e - 1
    m |= 0x800000
    if m & ((1 << shift) - 1):
        return -1
    return s | (m >> shift)


# ---------------------------------------------------------------- decoding


def _err(msg, offset):
    e = CBORDecodeError("%s at offset %d" % (msg, offset))
    e.offset = offset
    return e


def loads(data):
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise CBORDecodeError("expected bytes, got %s" % type(data).__name__)
    if not isinstance(data, bytes):
        data = bytes(data)
    d = _Decoder(data)
    value = d.item(0)
    if d.pos != d.end:
        raise _err("trailing bytes: %d after the item" % (d.end - d.pos), d.pos)
    return value


def _utf8_error(b):
    # Offset of the first byte that breaks RFC 3629 UTF-8, or -1.
    i = 0
    n = len(b)
    while i < n:
        c = b[i]
        if c < 0x80:
            i += 1
            continue
        lo = 0x80
        hi = 0xBF
        if 0xC2 <= c <= 0xDF:
            k = 1
        elif 0xE0 <= c <= 0xEF:
            k = 2
            if c == 0xE0:
                lo = 0xA0  # overlong
            elif c == 0xED:
                hi = 0x9F  # surrogates
        elif 0xF0 <= c <= 0xF4:
            k = 3
            if c == 0xF0:
                lo = 0x90  # overlong
            elif c == 0xF4:
                hi = 0x8F  # above U+10FFFF
        else:
            return i
        if i + k >= n:
            return i
        if not lo <= b[i + 1] <= hi:
            return i + 1
        for j in range(i + 2, i + k + 1):
            if not 0x80 <= b[j] <= 0xBF:
                return j
        i += k + 1
    return -1


class _Decoder:
    def __init__(self, data):
        self.data = data
        self.pos = 0
        self.end = len(data)

    def take(self, n):
        p = self.pos
        # Checked before slicing so a huge declared length never allocates.
        if n > self.end - p:
            raise _err("truncated: need %d bytes, %d left" % (n, self.end - p), p)
        self.pos = p + n
        return self.data[p : p + n]

    def arg(self, ai, start):
        if ai < 24:
            return ai
        if ai < 28:
            return int.from_bytes(self.take(1 << (ai - 24)), "big")
        raise _err("reserved additional information %d" % ai, start)

    def text(self, b, start):
        # start: offset of the first content byte, so errors point at the bad byte.
        bad = -1
        try:
            s = str(b, "utf-8")
        except UnicodeError:
            s = None
        if s is None or len(s) != len(b):
            bad = _utf8_error(b)
        if s is None or bad >= 0:
            raise _err("invalid UTF-8 in text string", start + max(bad, 0))
        return s

    def at_break(self):
        if self.pos < self.end and self.data[self.pos] == 0xFF:
            self.pos += 1
            return True
        return False

    def item(self, depth):
        start = self.pos
        if start >= self.end:
            raise _err("truncated: need 1 byte, 0 left", start)
        ib = self.data[start]
        self.pos = start + 1
        major = ib >> 5
        ai = ib & 31
        if major == 7:
            return self.simple(ai, start)
        if ai == 31:
            if major == 2 or major == 3:
                return self.chunks(major, start)
            if major < 2 or major == 6:
                raise _err("indefinite length on major type %d" % major, start)
            n = -1
        else:
            n = self.arg(ai, start)
        if major == 0:
            return n
        if major == 1:
            return -1 - n
        if major == 2:
            return self.take(n)
        if major == 3:
            return self.text(self.take(n), self.pos - n)
        if depth >= MAX_DEPTH:
            raise _err("nesting deeper than %d" % MAX_DEPTH, start)
        depth += 1
        if major == 4:
            out = []
            if n < 0:
                while not self.at_break():
                    out.append(self.item(depth))
                return out
            # Every element takes at least one byte: reject impossible counts before looping.
            if n > self.end - self.pos:
                raise _err("array of %d items exceeds the %d bytes left" % (n, self.end - self.pos), start)
            for _ in range(n):
                out.append(self.item(depth))
            return out
        if major == 5:
            out = {}
            if n < 0:
                while not self.at_break():
                    self.pair(out, depth)
                return out
            if n > (self.end - self.pos) >> 1:
                raise _err("map of %d pairs exceeds the %d bytes left" % (n, self.end - self.pos), start)
            for _ in range(n):
                self.pair(out, depth)
            return out
        value = self.item(depth)
        if n == 2 or n == 3:
            if not isinstance(value, bytes):
                raise _err("bignum tag %d needs a byte string" % n, start)
            big = int.from_bytes(value, "big")
            return big if n == 2 else -1 - big
        return Tag(n, value)

    def pair(self, out, depth):
        kpos = self.pos
        k = self.item(depth)
        v = self.item(depth)
        size = len(out)
        # `in` is not enough: MicroPython answers False for unhashable keys instead of raising.
        try:
            out[k] = v
        except TypeError:
            raise _err("unhashable map key of type %s" % type(k).__name__, kpos)
        if len(out) == size:
            raise _err("duplicate map key %r" % (k,), kpos)

    def chunks(self, major, start):
        parts = []
        while not self.at_break():
            cpos = self.pos
            if cpos >= self.end:
                raise _err("truncated: need 1 byte, 0 left", cpos)
            ib = self.data[cpos]
            self.pos = cpos + 1
            if ib >> 5 != major or ib & 31 == 31:
                raise _err("chunk 0x%02x in indefinite string of major type %d" % (ib, major), cpos)
            b = self.take(self.arg(ib & 31, cpos))
            if major == 3:
                # Each chunk must be valid on its own (RFC 8949 section 3.2.3).
                self.text(b, self.pos - len(b))
            parts.append(b)
        b = b"".join(parts)
        return b if major == 2 else str(b, "utf-8")

    def simple(self, ai, start):
        if ai < 20:
            return Simple(ai)
        if ai == 20:
            return False
        if ai == 21:
            return True
        if ai == 22:
            return None
        if ai == 23:
            return UNDEFINED
        if ai == 24:
            v = self.take(1)[0]
            if v < 32:
                raise _err("simple value %d in two-byte form (not well-formed)" % v, start)
            return Simple(v)
        if ai == 25:
            return struct.unpack(">e", self.take(2))[0]
        if ai == 26:
            return struct.unpack(">f", self.take(4))[0]
        if ai == 27:
            return struct.unpack(">d", self.take(8))[0]
        if ai == 31:
            raise _err("break outside an indefinite-length item", start)
        raise _err("reserved additional information %d" % ai, start)
