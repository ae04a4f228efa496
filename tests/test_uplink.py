"""firmware.uplink: priorities, coalescing, bound, confirmed resends."""

from __future__ import annotations

from firmware import uplink
from firmware.uplink import PRIO_ALARM, PRIO_EVENT, PRIO_HELLO, PRIO_REPORT, PRIO_STATUS, UplinkQueue


def test_priority_then_arrival_order():
    q = UplinkQueue()
    q.put(2, b"r1", PRIO_REPORT, key="report")
    q.put(5, b"s", PRIO_STATUS)
    q.put(4, b"e1", PRIO_EVENT)
    q.put(4, b"a", PRIO_ALARM, confirmed=True)
    q.put(4, b"e2", PRIO_EVENT)
    q.put(1, b"h", PRIO_HELLO)
    order = []
    while len(q):
        it = q.next(0)
        order.append(it.body)
        q.sent(it, len(order), 0)
        if it.confirmed:
            q.ack(len(order))
    assert order == [b"h", b"a", b"e1", b"e2", b"r1", b"s"]


def test_reports_coalesce_until_sent():
    q = UplinkQueue()
    a = q.put(2, b"old", PRIO_REPORT, key="report")
    b = q.put(2, b"new", PRIO_REPORT, key="report")
    assert a is b and len(q) == 1 and q.next(0).body == b"new"
    q.sent(a, 1, 0)
    q.put(2, b"next", PRIO_REPORT, key="report")
    assert len(q) == 1 and q.next(0).body == b"next"


def test_bound_drops_the_least_important_oldest_first():
    q = UplinkQueue()
    for i in range(uplink._QUEUE_MAX - 2):
        q.put(4, bytes([i]), PRIO_ALARM, confirmed=True)
    q.put(5, b"s1", PRIO_STATUS)
    q.put(5, b"s2", PRIO_STATUS)
    assert len(q) == uplink._QUEUE_MAX
    q.put(4, b"alarm", PRIO_ALARM)  # pushes out the oldest STATUS
    assert [it.body for it in q.items if it.prio == PRIO_STATUS] == [b"s2"]
    q.put(5, b"s3", PRIO_STATUS)  # same priority: the newer replaces the older
    assert [it.body for it in q.items if it.prio == PRIO_STATUS] == [b"s3"]
    q.put(4, b"alarm2", PRIO_ALARM)
    assert q.put(5, b"s4", PRIO_STATUS) is None  # less important than everything queued: dropped itself
    assert q.dropped == 4 and len(q) == uplink._QUEUE_MAX
    assert all(it.prio == PRIO_ALARM for it in q.items)


def test_confirmed_resends_with_growing_backoff_and_late_ack_of_any_attempt():
    q = UplinkQueue(rand=lambda n: n - 1)  # worst-case jitter
    it = q.put(4, b"burst", PRIO_ALARM, confirmed=True)
    now = 0
    dues = []
    for c in range(3):
        assert q.next(now) is it
        q.sent(it, 100 + c, now)
        dues.append(it.due - now)
        assert q.next(now) is None and q.next_due() == it.due
        now = it.due
    assert dues[0] == uplink._BACKOFF_MS + uplink._BACKOFF_MS // uplink._JITTER
    assert dues[1] > dues[0] and dues[2] > dues[1]
    assert not q.ack(99)
    assert q.ack(100)  # an ACK naming the first attempt still counts
    assert len(q) == 0 and q.acked == 1


def test_gives_up_after_the_maximum_sends():
    q = UplinkQueue()
    it = q.put(4, b"x", PRIO_ALARM, confirmed=True)
    for c in range(uplink._CONFIRM_MAX_SENDS):
        assert q.next(10**9) is it
        q.sent(it, c, 0)
    assert len(q) == 0 and q.unconfirmed == 1
    assert max((uplink._BACKOFF_MS << 10), 0) > uplink._BACKOFF_MAX_MS  # the cap is reached within 8 sends


def test_failed_send_backs_off_without_losing_the_item():
    q = UplinkQueue()
    it = q.put(2, b"r", PRIO_REPORT)
    q.failed(it, 1000)
    assert q.next(1000) is None and it.due == 1000 + uplink._BACKOFF_MS
    assert q.next(it.due) is it
