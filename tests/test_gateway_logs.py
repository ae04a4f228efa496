"""gateway/logs.py: JSON lines, secrets redacted by name, bytes never printed, the rate limiter."""

from __future__ import annotations

import io
import json
import logging

import pytest

from gateway import logs


@pytest.fixture
def captured():
    buf = io.StringIO()
    handler = logs.setup("debug", stream=buf)
    yield buf
    root = logging.getLogger("lumeau")
    root.removeHandler(handler)
    root.propagate = True
    root.setLevel(logging.NOTSET)


def test_lines_are_json_with_the_fields_given(captured):
    logging.getLogger("lumeau.test").info("node %s seen", "00a1b2c3", extra={"node": "00a1b2c3", "rssi": -80.5})
    doc = json.loads(captured.getvalue())
    assert doc["msg"] == "node 00a1b2c3 seen" and doc["level"] == "info" and doc["logger"] == "lumeau.test"
    assert doc["node"] == "00a1b2c3" and doc["rssi"] == -80.5 and doc["time"] > 0


def test_secrets_and_bytes_never_reach_the_log(captured):
    key = bytes(range(16))
    logging.getLogger("lumeau.test").warning(
        "provisioned",
        extra={
            "root_key": key.hex(),
            "api_token": "tok-123456789012345",
            "Authorization": "Bearer x",
            "payload": key,
            "nested": {"upstream_token": "abc", "ok": 1},
            "items": [key],
        },
    )
    text = captured.getvalue()
    doc = json.loads(text)
    assert key.hex() not in text and "tok-123456789012345" not in text and "Bearer x" not in text
    assert doc["root_key"] == doc["api_token"] == doc["Authorization"] == "<redacted>"
    assert doc["payload"] == "<16 bytes>" and doc["items"] == ["<16 bytes>"]
    assert doc["nested"] == {"upstream_token": "<redacted>", "ok": 1}


def test_exceptions_are_kept(captured):
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        logging.getLogger("lumeau.test").exception("failed")
    assert "RuntimeError: boom" in json.loads(captured.getvalue())["exc"]


def test_rate_limiter_bursts_then_trickles_and_reports_what_it_hid():
    now = [0.0]
    rl = logs.RateLimiter(burst=3, rate=1.0, clock=lambda: now[0])
    assert [rl.allow("bad_mic")[0] for _ in range(5)] == [True, True, True, False, False]
    assert rl.allow("replay") == (True, 0)  # each reason has its own budget
    now[0] += 1.0
    assert rl.allow("bad_mic") == (True, 2)  # one more token; two lines were suppressed meanwhile
    assert rl.allow("bad_mic") == (False, 0)


# ---------------------------------------------------------------- gateway/service.py NodeLog (issue 17)


def _lines(buf: io.StringIO) -> list[dict]:
    return [json.loads(ln) for ln in buf.getvalue().splitlines()]


def test_a_node_first_heard_and_its_alarms_are_logged_at_info(captured):
    from gateway_helpers import reception, record

    from gateway.service import NodeLog
    from protocol import messages as m

    nl = NodeLog()
    rx = reception(b"", rssi=-97.0)
    nl.on_uplink(record(0xA1B2C3, 1, m.HELLO, {0: "0.1.0", 1: m.KIND_LIGHTING}), rx)
    nl.on_uplink(record(0xA1B2C3, 2), rx)  # heard again: no line
    nl.on_uplink(record(0xA1B2C3, 3, m.EVENT, {0: m.EV_LAMP_FAILURE, 1: m.SEV_ALARM, 4: 1}), rx)
    nl.on_uplink(record(0xA1B2C3, 4, m.EVENT, {0: m.EV_LAMP_FAILURE, 1: m.SEV_ALARM, 4: 0}), rx)
    nl.on_uplink(record(0xA1B2C3, 5, m.EVENT, {0: m.EV_WATCHDOG_RESET, 1: m.SEV_WARNING}), rx)  # a report
    got = [(d["level"], d["msg"], d["node"], d.get("code"), d.get("kind")) for d in _lines(captured)]
    assert got == [
        ("info", "node heard (first time since the gateway started)", "00a1b2c3", None, "hello"),
        ("info", "alarm raised", "00a1b2c3", "lamp_failure", None),
        ("info", "alarm cleared", "00a1b2c3", "lamp_failure", None),
    ]
    assert _lines(captured)[0]["rssi"] == -97.0


def test_node_log_lines_are_rate_limited_and_say_what_they_left_out(captured):
    from gateway_helpers import reception, record

    from gateway.service import NodeLog

    now = [0.0]
    nl = NodeLog(logs.RateLimiter(burst=3, rate=1.0, clock=lambda: now[0]))
    rx = reception(b"")
    for n in range(10):  # a district restarting at once
        nl.on_uplink(record(n + 1, 1), rx)
    assert len(_lines(captured)) == 3
    now[0] = 1.0
    nl.on_uplink(record(99, 1), rx)
    last = _lines(captured)[-1]
    assert last["node"] == "00000063" and last["suppressed"] == 7
