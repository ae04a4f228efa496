# Message catalogue round trips and validation inside real MicroPython.
from protocol import messages as m

BODIES = (
    (m.HELLO, {0: "0.1.0", 1: m.KIND_IRRIGATION, 3: b"\x01\x02\x03\x04", 4: m.RST_WATCHDOG}),
    (m.LIGHT, {0: 100, 1: 2500, 2: 25000000, 3: 0x7F, 4: 100000, 5: 5000, 6: 2000}),
    (m.IRRIGATION, {0: b"\xc8\xc8\xff\x10", 1: 0x8F, 2: 16667, 3: 100000000, 4: 3, 5: 30000, 6: 0x1F}),
    (m.EVENT, {0: m.EV_LEAK, 1: m.SEV_ALARM, 2: -7, 3: 1800000000, 4: 1, 5: 3}),
    (m.STATUS, {0: 0xFFFFFFFF, 1: 0xFFFFFFFF, 2: -137, 3: -80, 4: 30000, 5: -40, 6: 262144, 7: 255, 8: 13}),
    (m.CMD_ACK, {0: 77, 1: m.RES_OK, 2: 15}),
    (m.COMMAND, {0: 77, 1: m.OP_OPEN_ZONE, 2: [2, 15], 3: 0}),
    (m.CONFIG, {0: {m.CFG_REPORT_INTERVAL: 900}}),
    (m.TIME, {0: 1800000000, 1: 999}),
    (m.ACK, {0: 4294967295, 1: 0}),
)


def test_round_trip_every_type():
    for mtype, body in BODIES:
        assert m.decode(mtype, m.encode(mtype, body)) == body, mtype


def test_periodic_reports_fit_51_bytes():
    for mtype, body in BODIES[1:3] + BODIES[4:5]:
        assert len(m.encode(mtype, body)) + 13 <= 51, mtype


def test_unknown_keys_ignored_known_keys_checked():
    from protocol import cbor

    assert m.decode(m.LIGHT, cbor.dumps({0: 5, 20: "future"})) == {0: 5}
    for mtype, body in (
        (m.LIGHT, {0: 101}),
        (m.LIGHT, {0: True}),
        (m.HELLO, {0: "1"}),
        (m.IRRIGATION, {0: b"\xc9"}),
        (m.COMMAND, {0: 1, 1: 1, 2: "x"}),
    ):
        try:
            m.validate(mtype, body)
            assert False, "accepted %r" % (body,)
        except m.MessageError:
            pass


def test_malformed_cbor_is_a_message_error():
    for data in (b"", b"\xa1\x00", b"\xff", b"\xa1\x00\x01\x00"):
        try:
            m.decode(m.LIGHT, data)
            assert False, "accepted %r" % (data,)
        except m.MessageError:
            pass
