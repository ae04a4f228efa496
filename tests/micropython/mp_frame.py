# Frame seal/open, MIC, replay window and the SPEC examples, inside real MicroPython.
from protocol import frame, keys
from protocol import messages as m

ROOT = bytes(range(16))
NODE = 0x00A1B2C3


def _keys():
    return keys.NodeKeys(NODE, ROOT)


def test_key_derivation_matches_spec():
    k = _keys()
    assert k.mic_up.key.hex() == "51fba61c28e5a2c19d8d90c0fbe2b75f8ce4d05dec24e4c3d0b702bb5af33065"
    assert k.mic_down.key.hex() == "71cf8a1060133104df06fca7c7997e2a6e8c70521fc576cac3f3660034638cb5"
    assert k.enc.hex() == "be12bd5c3760a96a765d7de939517de9"


def test_spec_light_frame_byte_exact():
    body = m.encode(m.LIGHT, {0: 40, 1: 452, 2: 123456, 3: 0x21})
    raw = frame.seal(_keys(), m.LIGHT, 42, body)
    assert raw.hex() == "2200a1b2c30000002aa4001828011901c4021a0001e240031821323ebdce"


def test_seal_unseal_and_replay_window():
    k = _keys()
    w = frame.ReplayWindow()
    body = m.encode(m.IRRIGATION, {0: b"\x3e\x47", 1: 0x81, 3: 982311})
    raws = [frame.seal(k, m.IRRIGATION, c, body) for c in (10, 9, 50)]
    f, plain = frame.unseal(k, raws[0], w)
    assert f.counter == 10 and m.decode(f.mtype, plain)[3] == 982311
    frame.unseal(k, raws[1], w)
    try:
        frame.unseal(k, raws[1], w)
        assert False, "duplicate accepted"
    except frame.ReplayedFrame as e:
        assert e.verdict == frame.DUPLICATE
    frame.unseal(k, raws[2], w)
    try:
        frame.unseal(k, raws[0], w)
        assert False, "stale accepted"
    except frame.ReplayedFrame as e:
        assert e.verdict == frame.STALE


def test_tampering_is_detected():
    k = _keys()
    raw = frame.seal(k, m.ACK, 8, m.encode(m.ACK, {0: 42}))
    assert raw.hex() == "2b00a1b2c300000008a100182ae21c8980"
    for i in range(len(raw)):
        bad = bytearray(raw)
        bad[i] ^= 0x40
        try:
            frame.unseal(k, bytes(bad))
            assert False, "tampered byte %d accepted" % i
        except frame.FrameError:
            pass


def test_encryption_is_unavailable_here_with_a_clear_error():
    # This port has no cryptolib: the encrypted path must fail loudly, not send clear text.
    try:
        frame.seal(_keys(), m.LIGHT, 1, b"\xa0", encrypt=True)
        assert False, "sealed without a cipher"
    except NotImplementedError as e:
        assert "cryptolib" in str(e)


def test_downlink_uses_its_own_key():
    k = _keys()
    raw = frame.seal(k, m.COMMAND, 7, m.encode(m.COMMAND, {0: 1001, 1: m.OP_SET_LEVEL, 2: [100, 600]}))
    assert raw.hex() == "2800a1b2c300000007a3001903e901010282186419025806878c4b"
