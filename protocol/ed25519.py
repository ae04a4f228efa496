# Ed25519 signature verification (RFC 8032, section 5.1.7) in plain Python,
# for the node: MicroPython has arbitrary-precision ints but no Ed25519 and,
# on the boards Lumeau targets, no hashlib.sha512. The host signs with the
# `cryptography` library (lumeau/release.py); this side only verifies.
#
# Loaded only while an update is checked (firmware/updater.py), then dropped:
# none of it stays resident. Cost under MicroPython: bench/release_verify.py
# and bench/README.md. Verification is cofactorless, by comparing encodings:
# R' = [S]B - [k]A is computed and its canonical encoding compared with the
# signature's R (what RFC 8032's reference verifier and SUPERCOP's ref10 do);
# S >= L is refused (malleability), an A that is not a point is refused.
# Signatures made by OpenSSL/`cryptography` always pass this check.
#
# Points are in extended twisted Edwards coordinates (X, Y, Z, T), x = X/Z,
# y = Y/Z, x*y = T/Z (Hisil, Wong, Carter, Dawson 2008; a = -1), so the
# 253-step double-and-add needs one field inversion at the end.

_P = 2**255 - 19
_L = 2**252 + 27742317777372353535851937790883648493
_D2 = 16295367250680780974490674513165176452449235426866156013048779062215315747161  # 2*d mod p
_D = 37095705934669439343138083508754565189542113879843219016388785533085940283555
_SQRT_M1 = 19681161376707505956807079304988542015446066515923890162744021073123829784752
_B = (
    15112221349535400772501151409588531511454012693041857206046113283949847762202,
    46316835694926478169428394003475163141307993866256225615783033603165251855960,
    1,
    46827403850823179245072216630277197565144205554125654976674165829533817101731,
)
_M64 = 0xFFFFFFFFFFFFFFFF


def _add(p, q):
    x1, y1, z1, t1 = p
    x2, y2, z2, t2 = q
    a = (y1 - x1) * (y2 - x2) % _P
    b = (y1 + x1) * (y2 + x2) % _P
    c = t1 * _D2 * t2 % _P
    d = z1 * 2 * z2 % _P
    e, f, g, h = b - a, d - c, d + c, b + a
    return (e * f % _P, g * h % _P, f * g % _P, e * h % _P)


def _double(p):
    x1, y1, z1, _ = p
    a = x1 * x1 % _P
    b = y1 * y1 % _P
    c = 2 * z1 * z1 % _P
    h = a + b
    e = h - (x1 + y1) * (x1 + y1) % _P
    g = a - b
    f = c + g
    return (e * f % _P, g * h % _P, f * g % _P, e * h % _P)


def _decode(s):
    """The point encoded by 32 bytes, or None when it is not one."""
    if len(s) != 32:
        return None
    y = int.from_bytes(s, "little")
    sign = y >> 255
    y &= (1 << 255) - 1
    if y >= _P:
        return None
    u = (y * y - 1) % _P
    v = (_D * y * y + 1) % _P
    x = u * pow(v, 3, _P) * pow(u * pow(v, 7, _P), (_P - 5) // 8, _P) % _P
    vx2 = v * x * x % _P
    if vx2 != u:
        if vx2 != (_P - u) % _P:
            return None
        x = x * _SQRT_M1 % _P
    if x == 0 and sign:
        return None
    if x & 1 != sign:
        x = _P - x
    return (x, y, 1, x * y % _P)


def _encode(p):
    x, y, z, _ = p
    zi = pow(z, _P - 2, _P)
    x = x * zi % _P
    y = y * zi % _P
    return (y | ((x & 1) << 255)).to_bytes(32, "little")


# SHA-512 (FIPS 180-4), used only when the port's hashlib has none: Ed25519
# hashes R || A || M once, and M is a 32-byte digest here, so one block.
_K = None


def _k():
    # The 80 round constants: the first 64 bits of the fractional parts of the
    # cube roots of the first 80 primes, computed (not listed) to keep the
    # module small; integer cube root by Newton's method on 2^192-scaled ints.
    out = []
    n = 2
    while len(out) < 80:
        if all(n % q for q in range(2, int(n**0.5) + 1)):
            v = n << 192
            # start above the root (a float estimate, +1/256; MicroPython ints have no bit_length)
            r = int(n ** (1 / 3) * 2**40) << 24
            r += r >> 8
            while True:
                s = (2 * r + v // (r * r)) // 3
                if s >= r:
                    break
                r = s
            while r * r * r > v:
                r -= 1
            out.append(r & _M64)
        n += 1
    return out


def _rotr(x, n):
    return ((x >> n) | (x << (64 - n))) & _M64


def sha512(data):
    global _K
    if _K is None:
        _K = _k()
    k = _K
    h = [
        0x6A09E667F3BCC908,
        0xBB67AE8584CAA73B,
        0x3C6EF372FE94F82B,
        0xA54FF53A5F1D36F1,
        0x510E527FADE682D1,
        0x9B05688C2B3E6C1F,
        0x1F83D9ABFB41BD6B,
        0x5BE0CD19137E2179,
    ]
    n = len(data)
    data = bytes(data) + b"\x80" + bytes((111 - n) % 128) + (n * 8).to_bytes(16, "big")
    for off in range(0, len(data), 128):
        w = [int.from_bytes(data[off + 8 * i : off + 8 * i + 8], "big") for i in range(16)]
        for i in range(16, 80):
            a, b = w[i - 15], w[i - 2]
            s0 = _rotr(a, 1) ^ _rotr(a, 8) ^ (a >> 7)
            s1 = _rotr(b, 19) ^ _rotr(b, 61) ^ (b >> 6)
            w.append((w[i - 16] + s0 + w[i - 7] + s1) & _M64)
        a, b, c, d, e, f, g, hh = h
        for i in range(80):
            t1 = (hh + (_rotr(e, 14) ^ _rotr(e, 18) ^ _rotr(e, 41)) + ((e & f) ^ (~e & g)) + k[i] + w[i]) & _M64
            t2 = (_rotr(a, 28) ^ _rotr(a, 34) ^ _rotr(a, 39)) + ((a & b) ^ (a & c) ^ (b & c))
            hh, g, f, e, d, c, b, a = g, f, e, (d + t1) & _M64, c, b, a, (t1 + t2) & _M64
        h = [(x + y) & _M64 for x, y in zip(h, (a, b, c, d, e, f, g, hh))]
    return b"".join(x.to_bytes(8, "big") for x in h)


def _h512(data):
    import hashlib

    if hasattr(hashlib, "sha512"):
        return hashlib.sha512(data).digest()
    return sha512(data)


def verify(public, sig, msg):
    """True when `sig` (64 bytes) is a valid Ed25519 signature of `msg` by `public` (32 bytes)."""
    if len(sig) != 64 or len(public) != 32:
        return False
    a = _decode(public)
    if a is None:
        return False
    s = int.from_bytes(sig[32:], "little")
    if s >= _L:
        return False
    k = int.from_bytes(_h512(bytes(sig[:32]) + bytes(public) + bytes(msg)), "little") % _L
    # [S]B + [k](-A), both scalars at once (Straus/Shamir): one doubling per bit
    na = ((_P - a[0]) % _P, a[1], a[2], (_P - a[3]) % _P)
    both = _add(_B, na)
    q = (0, 1, 1, 0)
    for i in range(252, -1, -1):  # s, k < L < 2^253
        q = _double(q)
        bs, bk = (s >> i) & 1, (k >> i) & 1
        if bs and bk:
            q = _add(q, both)
        elif bs:
            q = _add(q, _B)
        elif bk:
            q = _add(q, na)
    return _encode(q) == bytes(sig[:32])
