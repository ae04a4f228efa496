# The fragment code a node runs during an update over LoRa (SPEC §13 "Over LoRa"): the
# frame bodies' layout, LoRaWAN TS004's parity matrix line, and a decoder that keeps the
# image and its coded rows in flash files, not in the heap. protocol/fragments.py (the
# host's encoder, sizes) re-exports it. Loaded only during a session (firmware/fuota.py).
#
# Decoding (TS004's idea, our code): fragment i < N is the image's bytes [i*F, (i+1)*F)
# (the last one padded with zeros), written where it belongs in the image file. A coded
# fragment (index >= N) is the XOR of the uncoded fragments its matrix line names. On
# arrival its line loses every fragment the node has (their bytes XORed out of its data),
# then it is reduced against the rows kept so far, each keyed by its pivot (the lowest
# fragment it still names, one the node lacks): a row that ends empty told nothing new, else
# it is kept with a new pivot. Kept rows live in the rows file (line bits + data, after the
# bitmap of fragments held, so that a reboot resumes: resume=True); the heap holds two
# bitmaps of N bits and one list entry per kept row. When the rows cover every missing
# fragment they are solved from the highest pivot down (each row then names only its pivot
# among the fragments still missing) and written into the image.

const = int  # MicroPython's compiler folds const() itself, whatever the name is bound to

_SETUP = const(1)  # body kinds (byte 0)
_DATA = const(2)
_SETUP_LEN = const(14)
_DATA_HEAD = const(4)
_N_MAX = const(4096)  # fragments in a session: the bitmaps stay at 512 B each


def _u(b, i, n):
    return int.from_bytes(b[i : i + n], "big")


def setup(body):
    """A SETUP body -> (session, bundle prefix (4 bytes), image size, fragment size F, N, redundancy).

    Raises ValueError when it is not one or its numbers do not agree."""
    if len(body) != _SETUP_LEN or body[0] != _SETUP:
        raise ValueError("not a fragment session set-up (%d bytes)" % len(body))
    size, f, n, r = _u(body, 6, 3), body[9], _u(body, 10, 2), _u(body, 12, 2)
    if not (f and 0 < n <= _N_MAX and (n - 1) * f < size <= n * f):
        raise ValueError("set-up numbers disagree: %d B in %d fragments of %d B" % (size, n, f))
    return body[1], bytes(body[2:6]), size, f, n, r


def prbs23(x):
    """TS004's 23-bit pseudo-random sequence step."""
    return (x >> 1) | (((x ^ (x >> 5)) & 1) << 22)


def line(k, n, out):
    """The TS004 parity matrix line of coded fragment k (1-based) over n fragments, as a
    bitmap written into `out` (bytearray of (n + 7) // 8, cleared here)."""
    for i in range(len(out)):
        out[i] = 0
    mm = 1 if n & (n - 1) == 0 else 0  # n a power of two: one more value, TS004
    x = 1 + 1001 * k
    for _ in range(n // 2):
        r = n
        while r >= n:
            x = prbs23(x)
            r = x % (n + mm)
        out[r >> 3] |= 1 << (r & 7)
    if n == 1:
        out[0] = 1


def _low(bits):
    # the lowest set bit's index, or -1
    for i in range(len(bits)):
        b = bits[i]
        if b:
            j = 0
            while not b & 1:
                b >>= 1
                j += 1
            return 8 * i + j
    return -1


def _xor(a, b):
    for i in range(len(a)):
        a[i] ^= b[i]


class Decoder:
    """Reassembles N fragments of F bytes into the image file `path` (size bytes), with the
    coded rows kept in `rows_path`. add() -> True once the image is complete."""

    def __init__(self, path, rows_path, size, f, n, resume=False):
        self.size = size
        self.f = f
        self.n = n
        nb = (n + 7) // 8
        self.have = bytearray(nb)  # also at the start of the rows file: a reboot resumes (below)
        self.piv = bytearray(nb)  # fragments that are some kept row's pivot
        self.rows = []  # per kept row's slot in the rows file: its pivot, or -1 (free: its bits all 0)
        self.missing = n
        self.rec = nb + f
        self.buf = bytearray(f)
        self.tmp = bytearray(nb)
        if resume:  # the files of a session cut by a reboot (OSError: none, start over)
            self.img = open(path, "r+b")
            self.rf = open(rows_path, "r+b")
            if self.rf.readinto(self.have) != nb:
                raise OSError("no session state")
            lost = []
            d = bytearray(f)
            while self.rf.readinto(self.tmp) == nb and self.rf.readinto(d) == f:
                p = _low(self.tmp)
                self.rows.append(p)
                if p >= 0:
                    if self.have[p >> 3] & (1 << (p & 7)):
                        lost.append(len(self.rows) - 1)  # its pivot came in before the cut
                    else:
                        self.piv[p >> 3] |= 1 << (p & 7)
            self.missing = n - sum(bin(b).count("1") for b in self.have)
            for slot in lost:
                self._free(slot)
            return
        self.img = open(path, "w+b")
        z = bytes(256)
        left = size
        while left:  # the image file at its size: fragments are written in place
            left -= self.img.write(z if left >= 256 else z[:left])
        self.rf = open(rows_path, "w+b")
        self.rf.write(self.have)
        self.img.flush()
        self.rf.flush()

    def close(self):
        self.img.close()
        self.rf.close()

    def complete(self):
        return not self.missing

    def _put(self, i, data):
        # fragment i into the image (the last one trimmed of its padding)
        self.img.seek(i * self.f)
        self.img.write(data[: self.size - i * self.f] if i == self.n - 1 else data)
        self.have[i >> 3] |= 1 << (i & 7)
        self.missing -= 1
        self.rf.seek(i >> 3)  # after the data: a cut in between only makes it come again
        self.rf.write(self.have[i >> 3 : (i >> 3) + 1])

    def _get(self, i, out):
        # fragment i (had) into out, padded with zeros
        self.img.seek(i * self.f)
        got = self.img.readinto(out)
        for j in range(got or 0, self.f):
            out[j] = 0

    def _drop_had(self, bits, data):
        # XOR every fragment the node has out of a row
        have, buf = self.have, self.buf
        for k in range(len(bits)):
            m = bits[k] & have[k]
            if m:
                for j in range(8):
                    if m & (1 << j):
                        self._get(8 * k + j, buf)
                        _xor(data, buf)
                bits[k] &= ~m

    def _read(self, slot, bits, data):
        self.rf.seek(len(self.tmp) + slot * self.rec)
        self.rf.readinto(bits)
        self.rf.readinto(data)

    def add(self, idx, data):
        """Take fragment `idx` (F bytes); True when the image is complete."""
        if len(data) != self.f:
            raise ValueError("fragment of %d B, the session's are %d B" % (len(data), self.f))
        n = self.n
        if self.missing == 0:
            return True
        if idx < n:
            if self.have[idx >> 3] & (1 << (idx & 7)):
                return False  # a repeat
            self._put(idx, data)
            if self.piv[idx >> 3] & (1 << (idx & 7)):  # a kept row lost its pivot: reduce it again
                self.piv[idx >> 3] &= ~(1 << (idx & 7))
                self._free(self.rows.index(idx))
        else:
            bits = bytearray(len(self.tmp))
            line(idx - n + 1, n, bits)
            self._reduce(bits, bytearray(data))
        if self.missing and len(self.rows) - self.rows.count(-1) == self.missing:
            self._solve()
        # on flash at once (littlefs commits a file on flush): a reset or a deep sleep loses
        # nothing taken, and the complete image is readable through another handle
        self.img.flush()
        self.rf.flush()
        return not self.missing

    def _free(self, slot):
        # take a kept row out (its pivot came in) and reduce it again
        bits, d = bytearray(len(self.tmp)), bytearray(self.f)
        self._read(slot, bits, d)
        self.rows[slot] = -1
        self.rf.seek(len(self.tmp) + slot * self.rec)
        self.rf.write(bytes(len(bits)))  # free on the file too
        self._reduce(bits, d)

    def _reduce(self, bits, data):
        tmp, d2 = self.tmp, bytearray(self.f)
        while True:
            self._drop_had(bits, data)
            p = _low(bits)
            if p < 0:
                return  # nothing new
            if not self.piv[p >> 3] & (1 << (p & 7)):
                break
            self._read(self.rows.index(p), tmp, d2)
            _xor(bits, tmp)
            _xor(data, d2)
        try:
            slot = self.rows.index(-1)
            self.rows[slot] = p
        except ValueError:
            slot = len(self.rows)
            self.rows.append(p)
        self.rf.seek(len(self.tmp) + slot * self.rec)
        self.rf.write(bits)
        self.rf.write(data)
        self.piv[p >> 3] |= 1 << (p & 7)

    def _solve(self):
        bits, data = self.tmp, bytearray(self.f)
        for p in sorted([p for p in self.rows if p >= 0], reverse=True):
            slot = self.rows.index(p)
            self._read(slot, bits, data)
            self.rows[slot] = -1
            self.piv[p >> 3] &= ~(1 << (p & 7))
            bits[p >> 3] &= ~(1 << (p & 7))
            self._drop_had(bits, data)  # every other fragment it names is had by now
            self._put(p, data)
        self.rows = []
