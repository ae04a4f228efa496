"""Fragmented image delivery (SPEC §13 "Over LoRa"): the host encoder and the node's decoder."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocol import fragments as fz
from protocol import nodefrag


def _decode(tmp: Path, image: bytes, f: int, order: list[int]) -> tuple[nodefrag.Decoder, bool]:
    enc = fz.Encoder(image, f)
    dec = nodefrag.Decoder(str(tmp / "img"), str(tmp / "rows"), len(image), f, enc.n)
    done = False
    for i in order:
        done = dec.add(i, enc.fragment(i))
    dec.close()
    return dec, done


def test_no_loss_gives_the_image(tmp_path: Path) -> None:
    image = bytes(random.Random(1).randbytes(1000))
    dec, done = _decode(tmp_path, image, 34, list(range(30)))
    assert done and (tmp_path / "img").read_bytes() == image


@settings(max_examples=60, deadline=None)
@given(
    size=st.integers(1, 700),
    f=st.sampled_from([1, 7, 34, 98]),
    seed=st.integers(0, 2**32 - 1),
    loss=st.floats(0, 0.5),
)
def test_any_loss_up_to_the_redundancy_recovers(tmp_path_factory, size: int, f: int, seed: int, loss: float) -> None:
    tmp = tmp_path_factory.mktemp("d")
    rnd = random.Random(seed)
    image = rnd.randbytes(size)
    n = -(-size // f)
    lost = set(rnd.sample(range(n), int(n * loss)))
    # TS004's lines are not a code that repairs any L losses with L coded fragments: how many it
    # takes depends on their rank over the lost fragments (for n = 17 up to 22 more than the
    # losses; 1-2 more is typical, SPEC §13 "Over LoRa"). So the oracle is the rank, reckoned
    # apart over GF(2): the decoder is complete exactly when the rows seen span the losses.
    order = [i for i in range(n) if i not in lost]
    enc = fz.Encoder(image, f)
    dec = nodefrag.Decoder(str(tmp / "img"), str(tmp / "rows"), size, f, n)
    for i in order:
        assert not dec.add(i, enc.fragment(i)) or not lost
    cols = sorted(lost)
    basis: dict[int, int] = {}  # pivot bit -> row over the lost fragments, in echelon form
    extra = 0
    while len(basis) < len(cols):
        line = bytearray((n + 7) // 8)
        nodefrag.line(extra + 1, n, line)
        v = sum(1 << j for j, i in enumerate(cols) if line[i >> 3] >> (i & 7) & 1)
        for p in sorted(basis, reverse=True):
            if v >> p & 1:
                v ^= basis[p]
        if v:
            basis[v.bit_length() - 1] = v
        done = dec.add(n + extra, enc.fragment(n + extra))
        extra += 1
        assert done == (len(basis) == len(cols)), f"decoder complete={done} at rank {len(basis)} of {len(cols)}"
        assert dec.missing == (0 if done else len(lost)), "no fragment is solved before all are"
        assert extra <= 64 * n + 64, "TS004's lines never span these losses"
    assert extra >= len(lost)  # fewer coded fragments than losses can never do
    done = not dec.missing
    dec.close()
    assert done and (tmp / "img").read_bytes() == image


def test_too_much_loss_leaves_fragments_missing(tmp_path: Path) -> None:
    image = bytes(range(256)) * 4
    enc = fz.Encoder(image, 34)
    dec = nodefrag.Decoder(str(tmp_path / "img"), str(tmp_path / "rows"), len(image), 34, enc.n)
    for i in range(0, enc.n, 2):
        dec.add(i, enc.fragment(i))
    for k in range(3):
        dec.add(enc.n + k, enc.fragment(enc.n + k))
    assert not (not dec.missing) and dec.missing == enc.n // 2  # what the node reports: a repair asks for these
    dec.close()


def test_setup_round_trip_and_refusals() -> None:
    b = fz.setup_body(7, bytes(range(32)), 2758, 98, 29, 6)
    assert len(b) == fz.SETUP_LEN == 14
    assert fz.setup(b) == (7, bytes(range(4)), 2758, 98, 29, 6)
    with pytest.raises(ValueError):
        fz.setup(b[:-1])
    bad = bytearray(b)
    bad[11] = 40  # N disagrees with size / F
    with pytest.raises(ValueError):
        fz.setup(bytes(bad))
    with pytest.raises(ValueError):
        fz.setup_body(7, bytes(4), 2758, 98, 20, 6)


def test_sizes_fit_sf12() -> None:
    assert fz.fragment_size(51) == 34 and fz.OVERHEAD == 17
    assert len(fz.data_body(1, 5, bytes(34))) + 13 == 51


@settings(max_examples=200, deadline=None)
@given(body=st.binary(max_size=40))
def test_any_setup_body_is_taken_or_refused_with_value_error(body: bytes) -> None:
    try:
        sid, b, size, f, n, r = fz.setup(body)
    except ValueError:
        return
    assert len(body) == fz.SETUP_LEN and 0 < n <= fz.N_MAX and (n - 1) * f < size <= n * f


@settings(max_examples=40, deadline=None)
@given(frames=st.lists(st.tuples(st.integers(0, 0xFFFF), st.binary(max_size=40)), max_size=30))
def test_any_fragment_is_taken_or_refused_and_never_breaks_the_decoder(tmp_path_factory, frames) -> None:
    tmp = tmp_path_factory.mktemp("z")
    image = bytes(range(200))
    enc = fz.Encoder(image, 34)
    dec = nodefrag.Decoder(str(tmp / "img"), str(tmp / "rows"), len(image), 34, enc.n)
    for idx, data in frames:  # forged-looking but sealed: the decoder trusts content, checks shape
        try:
            dec.add(idx, data)
        except ValueError:
            assert len(data) != 34
    assert 0 <= dec.missing <= enc.n
    dec.close()


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), cut=st.floats(0, 1), size=st.integers(1, 600))
def test_a_session_cut_by_a_reboot_resumes_from_its_files(tmp_path_factory, seed: int, cut: float, size: int) -> None:
    """The decoder's state lives in its files: reopened with lost=True it goes on where it was."""
    tmp = tmp_path_factory.mktemp("r")
    rnd = random.Random(seed)
    image = rnd.randbytes(size)
    enc = fz.Encoder(image, 17)
    order = [i for i in range(enc.n) if rnd.random() > 0.3] + list(range(enc.n, enc.n + enc.n + 20))
    k = int(len(order) * cut)
    paths = (str(tmp / "img"), str(tmp / "rows"))
    dec = nodefrag.Decoder(*paths, size, 17, enc.n)
    done = False
    for i in order[:k]:
        done = dec.add(i, enc.fragment(i)) or done
    missing = dec.missing
    dec.close()  # the reboot: nothing of the decoder's heap survives
    dec = nodefrag.Decoder(*paths, size, 17, enc.n, lost=True)
    assert dec.missing == missing
    for i in order[k:]:
        if not dec.missing:
            break
        dec.add(i, enc.fragment(i))
    assert not dec.missing, "resumed session did not complete"
    dec.close()
    assert (tmp / "img").read_bytes() == image


def test_resume_without_files_is_an_os_error(tmp_path: Path) -> None:
    with pytest.raises(OSError):
        nodefrag.Decoder(str(tmp_path / "img"), str(tmp_path / "rows"), 100, 10, 10, lost=True)
