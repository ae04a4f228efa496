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
# bitmap of fragments held, so that a reboot resumes: lost=True); the heap holds a bitmap of
# N bits and one list entry per kept row (its pivot). When the rows cover every missing
# fragment they are solved from the highest pivot down (each row then names only its pivot
# among the fragments still missing) and written into the image.

const = int  # MicroPython's compiler folds const() itself, whatever the name is bound to

_SETUP = const(1)  # body kinds (byte 0)
_DATA = const(2)
_SETUP_LEN = const(14)
_DATA_HEAD = const(4)
_N_MAX = const(4096)  # fragments in a session: the bitmaps stay at 512 B each


def parse(body):
    """A SETUP body -> (session, bundle prefix (4 bytes), image size, fragment size F, N, redundancy).

    Raises ValueError when it is not one or its numbers do not agree."""
    if len(body) != _SETUP_LEN or body[0] != _SETUP:
        raise ValueError("not a fragment session set-up (%d bytes)" % len(body))
    size, f = int.from_bytes(body[6:9], "big"), body[9]
    n, r = int.from_bytes(body[10:12], "big"), int.from_bytes(body[12:14], "big")
    if not (f and 0 < n <= _N_MAX and (n - 1) * f < size <= n * f):
        raise ValueError("set-up numbers disagree: %d B in %d fragments of %d B" % (size, n, f))
    return body[1], bytes(body[2:6]), size, f, n, r


def line(k, n, buf):
    """The TS004 parity matrix line of coded fragment k (1-based) over n fragments, as a
    bitmap written into `buf` (bytearray of (n + 7) // 8, cleared here)."""
    for i in range(len(buf)):
        buf[i] = 0
    mm = 1 if n & (n - 1) == 0 else 0  # n a power of two: one more value, TS004
    x = 1 + 1001 * k
    for _ in range(n // 2):
        r = n
        while r >= n:
            x = (x >> 1) | (((x ^ (x >> 5)) & 1) << 22)  # TS004's 23-bit PRBS step (fragments.prbs23)
            r = x % (n + mm)
        buf[r >> 3] |= 1 << (r & 7)
    if n == 1:
        buf[0] = 1


def _first(item):
    # the lowest set bit's index, or -1
    for i in range(len(item)):
        b = item[i]
        if b:
            j = 0
            while not b & 1:
                b >>= 1
                j += 1
            return 8 * i + j
    return -1


class Decoder:
    """Reassembles N fragments of F bytes into the image file `path` (size bytes), with the
    coded rows kept in the file `queue`. add() -> True once the image is complete; `missing`
    says how many fragments it still lacks. lost=True: the heap was lost (a reboot, or the
    node loads this module for one frame only), the files of the session carry on.

    Its names are ones a lamp has interned already (mask, values, queue, ...): the lamp's
    qstr pools are nearly full and qstrs are never freed (SPEC §13 "Sizes")."""

    def __init__(self, path, queue, size, f, n, lost=False):
        self.size = size
        self.f = f
        self.n = n
        nb = (n + 7) // 8
        self.mask = bytearray(nb)  # fragments held; also at the start of the rows file
        self.values = []  # per kept row's slot in the rows file: its pivot, or -1 (free: its bits all 0)
        self.rec = nb + f
        self.buf = bytearray(f)
        self.item = bytearray(nb)  # a row's bits read back
        if not lost:
            with open(path, "wb") as img:  # the image file at its size: fragments are written in place
                z = bytes(256)
                left = size
                while left:
                    left -= img.write(z if left >= 256 else z[:left])
            with open(queue, "wb") as q:
                q.write(self.mask)
        # (OSError: no files, no session)
        self.target = open(path, "r+b")  # the image
        self.queue = q = open(queue, "r+b")  # the rows
        if q.readinto(self.mask) != nb:
            raise OSError("no session state")
        self.missing = n - sum(bin(b).count("1") for b in self.mask)
        d = bytearray(f)
        while q.readinto(self.item) == nb and q.readinto(d) == f:
            self.values.append(_first(self.item))
        for k, p in enumerate(self.values):
            if p >= 0 and self.mask[p >> 3] & (1 << (p & 7)):
                self.drop(k)  # its pivot came in before the cut: reduce it again

    def close(self):
        self.target.close()
        self.queue.close()

    def put(self, k, data):
        # fragment k into the image (the last one trimmed of its padding)
        self.target.seek(k * self.f)
        self.target.write(data[: self.size - k * self.f] if k == self.n - 1 else data)
        self.mask[k >> 3] |= 1 << (k & 7)
        self.missing -= 1
        self.queue.seek(k >> 3)  # after the data: a cut in between only makes it come again
        self.queue.write(self.mask[k >> 3 : (k >> 3) + 1])

    def take(self, item, data):
        # XOR every fragment the node has out of a row (item, data)
        mask, buf, f = self.mask, self.buf, self.f
        for k in range(len(item)):
            m = item[k] & mask[k]
            if m:
                for j in range(8):
                    if m & (1 << j):
                        self.target.seek((8 * k + j) * f)
                        got = self.target.readinto(buf) or 0
                        for i in range(f):  # the last fragment's padding is zeros
                            data[i] ^= buf[i] if i < got else 0
                item[k] &= ~m

    def _read(self, pos, item, data):
        self.queue.seek(len(self.item) + pos * self.rec)
        self.queue.readinto(item)
        self.queue.readinto(data)

    def add(self, k, data):
        """Take fragment `k` (F bytes); True when the image is complete."""
        if len(data) != self.f:
            raise ValueError("fragment of %d B, the session's are %d B" % (len(data), self.f))
        n = self.n
        vals = self.values
        if not self.missing:
            return True
        if k < n:
            if self.mask[k >> 3] & (1 << (k & 7)):
                return False  # a repeat
            self.put(k, data)
            if k in vals:  # a kept row lost its pivot: reduce it again
                self.drop(vals.index(k))
        else:
            item = bytearray(len(self.item))
            line(k - n + 1, n, item)
            self.check(item, bytearray(data))
        if self.missing and len(vals) - vals.count(-1) == self.missing:
            # the rows cover every missing fragment: solve from the highest pivot down (each row
            # then names only its pivot among the fragments still missing)
            item, d = self.item, bytearray(self.f)
            for p in sorted([p for p in vals if p >= 0], reverse=True):
                self._read(vals.index(p), item, d)
                item[p >> 3] &= ~(1 << (p & 7))
                self.take(item, d)  # every other fragment it names is had by now
                self.put(p, d)
        # on flash at once (littlefs commits a file on flush): a reset or a deep sleep loses
        # nothing taken, and the complete image is readable through another handle
        self.target.flush()
        self.queue.flush()
        return not self.missing

    def drop(self, pos):
        # take a kept row out (its pivot came in) and reduce it again
        item, d = bytearray(len(self.item)), bytearray(self.f)
        self._read(pos, item, d)
        self.values[pos] = -1
        self.queue.seek(len(self.item) + pos * self.rec)
        self.queue.write(bytes(len(item)))  # free on the file too
        self.check(item, d)

    def check(self, item, data):
        # reduce a row against the kept ones (each keyed by its pivot in `values`); keep it with
        # a new pivot unless it told nothing new
        row, d2, vals = self.item, bytearray(self.f), self.values
        while True:
            self.take(item, data)
            p = _first(item)
            if p < 0:
                return  # nothing new
            if p not in vals:
                break
            self._read(vals.index(p), row, d2)
            for i in range(len(item)):
                item[i] ^= row[i]
            for i in range(len(data)):
                data[i] ^= d2[i]
        if -1 in vals:
            pos = vals.index(-1)
            vals[pos] = p
        else:
            pos = len(vals)
            vals.append(p)
        self.queue.seek(len(self.item) + pos * self.rec)
        self.queue.write(item)
        self.queue.write(data)
