"""Who is told what about an alarm, and when: pure functions, no I/O (gateway/notify.py sends).

An *alarm event* is a change of one alarm cycle of one node, as the store
journals it with the record that made it (gateway/store/notifications.py):
`raise` (a cycle opens, or its severity changes), `clear` (it closes: the
node's EVENT, a HELLO, a STATUS with no open alarm) or `report` (a one-shot
EVENT: nothing opens or closes). A `Rule` (from `[[notify.rule]]`) matches
events by severity, code and node group, and names recipients: e-mail
addresses and webhook URLs, each a `Target` (channel, address).

What `decide` answers for one event, per target of every matching rule:

- one message (`Message`), due now; in a rule's quiet hours (local time) due
  at their end (`quiet = "defer"`) or not at all (`"skip"`), except for the
  severities in `quiet_bypass`;
- a clear goes to the targets that were told of the raise (and of its
  escalation), and only to them;
- a storm: when a target already had `storm_threshold` messages within
  `storm_window_s`, the event joins that target's digest (one message listing
  them, due at the end of the window) instead of a message of its own.

`escalation_due` says when an unacknowledged, uncleared cycle goes to the
rule's second list. Idempotency keys (`message_key`) are one per (alarm
cycle, event, channel, recipient): the outbox refuses a second row with the
same key, so deciding twice never sends twice.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from zoneinfo import ZoneInfo

SEVERITIES = ("info", "warning", "alarm", "critical")
CHANNELS = ("email", "webhook")
EVENTS = ("raise", "clear", "report")
QUIET_MODES = ("defer", "skip")


@dataclass(frozen=True)
class Target:
    channel: str  # "email" | "webhook"
    address: str  # an e-mail address or a URL


@dataclass(frozen=True)
class Rule:
    """One `[[notify.rule]]`: which alarms (all of the given filters) go to whom."""

    name: str
    targets: tuple[Target, ...]
    severities: frozenset[str] = frozenset(("alarm", "critical"))
    codes: frozenset[str] = frozenset()  # empty: every code
    groups: frozenset[str] = frozenset()  # empty: every node
    quiet: tuple[int, int] | None = None  # (start, end) minutes of the local day; end < start spans midnight
    quiet_mode: str = "defer"
    quiet_bypass: frozenset[str] = frozenset(("critical",))
    on_clear: bool = True
    escalate_after_s: float = 0.0  # 0: no escalation
    escalate_to: tuple[Target, ...] = ()

    def matches(self, severity: str, code: str, node_groups: frozenset[str]) -> bool:
        return (
            severity in self.severities
            and (not self.codes or code in self.codes)
            and (not self.groups or bool(self.groups & node_groups))
        )


@dataclass(frozen=True)
class AlarmEvent:
    """A change of an alarm cycle (see the module docstring)."""

    cycle: str  # the cycle's identity: node, code, zone, counter and time of its raise
    event: str  # raise | clear | report
    node_id: int
    code: str  # the EVENT code's name ("leak"), or its number as text when unknown
    zone: int
    severity: str
    value: Any
    at: float  # when the gateway received the record (Unix s)
    since: float  # when the cycle was raised (received)
    closed_by: str | None = None  # clear: "event", "hello" or "status"
    node_name: str = ""


@dataclass
class Message:
    """One message for one target (`kind`: alarm, clear, report, escalation)."""

    key: str
    kind: str
    target: Target
    due: float
    cycle: str
    item: dict[str, Any]  # what it says (see `item`)
    skipped: str | None = None  # why it is not sent (quiet hours): kept for the record
    digest: bool = False  # joins the target's digest instead of going alone


@dataclass
class Decision:
    messages: list[Message] = field(default_factory=list)
    # escalation: when, and to whom, if the cycle is neither acknowledged nor cleared by then
    escalate_at: float | None = None
    escalate_to: tuple[Target, ...] = ()


def message_key(cycle: str, event: str, target: Target) -> str:
    """The idempotency key of one message: (alarm cycle, event, channel, recipient), hashed to a fixed size."""
    raw = f"{cycle}|{event}|{target.channel}|{target.address}"
    return hashlib.sha256(raw.encode()).hexdigest()[:32]


def digest_key(target: Target, opened: float) -> str:
    raw = f"digest|{target.channel}|{target.address}|{opened:.3f}"
    return hashlib.sha256(raw.encode()).hexdigest()[:32]


def parse_hours(text: str) -> tuple[int, int]:
    """'22:00-07:00' -> (1320, 420) minutes; ValueError saying what is wrong."""
    try:
        a, b = text.split("-")
        start, end = (_minutes(x) for x in (a, b))
    except ValueError:
        raise ValueError(f"{text!r} is not HH:MM-HH:MM (local time, e.g. 22:00-07:00)") from None
    if start == end:
        raise ValueError(f"{text!r}: start and end are the same")
    return start, end


def _minutes(hhmm: str) -> int:
    h, m = hhmm.strip().split(":")
    if not (h.isascii() and h.isdigit() and m.isascii() and m.isdigit() and len(m) == 2):
        raise ValueError(hhmm)
    hi, mi = int(h), int(m)
    if not (0 <= hi <= 23 and 0 <= mi <= 59):
        raise ValueError(hhmm)
    return hi * 60 + mi


def quiet_end(quiet: tuple[int, int] | None, t: float, tz: ZoneInfo) -> float | None:
    """The end of the quiet period `t` falls in (Unix s), or None when `t` is not in one.

    Local wall-clock times: a period spanning midnight (22:00-07:00) ends the next day;
    across a DST change the end is the first instant the local clock shows it."""
    if quiet is None:
        return None
    start, end = quiet
    local = dt.datetime.fromtimestamp(t, tz)
    now_min = local.hour * 60 + local.minute
    inside = start <= now_min < end if start < end else (now_min >= start or now_min < end)
    if not inside:
        return None
    day = local.date()
    if start > end and now_min >= start:  # evening part of a period spanning midnight
        day = day + dt.timedelta(days=1)
    naive = dt.datetime(day.year, day.month, day.day, end // 60, end % 60)
    return naive.replace(tzinfo=tz).timestamp()


def item(ev: AlarmEvent) -> dict[str, Any]:
    """What a message says of one event: plain JSON values (the webhook's `alarms[]` entries)."""
    return {
        "event": ev.event,
        "node": f"{ev.node_id:08x}",
        "node_name": ev.node_name,
        "code": ev.code,
        "zone": ev.zone,
        "severity": ev.severity,
        "value": ev.value,
        "at": ev.at,
        "since": ev.since,
        "closed_by": ev.closed_by,
        "cycle": ev.cycle,
    }


def decide(
    ev: AlarmEvent,
    rules: tuple[Rule, ...],
    node_groups: frozenset[str],
    now: float,
    tz: ZoneInfo,
    recent: Callable[[Target], int],
    storm_threshold: int,
    told: frozenset[Target] = frozenset(),
) -> Decision:
    """The messages for one event (module docstring).

    `recent(target)`: messages the target was given within the storm window (individual
    ones and digest entries); `told`: for a clear, the targets told of the raise.
    Each target gets at most one message per event, from the first rule that names it.
    """
    out = Decision()
    seen: set[Target] = set()
    if ev.event == "clear":
        # the people told of the raise, whatever the rules say now (a severity may have changed)
        by_target = _rule_of_targets(ev, rules, node_groups, told)
        for target in sorted(told, key=lambda t: (t.channel, t.address)):
            rule = by_target.get(target)
            if rule is not None and not rule.on_clear:
                continue
            out.messages.append(_message(ev, "clear", target, rule, now, tz, recent, storm_threshold))
        return out
    for rule in rules:
        if not rule.matches(ev.severity, ev.code, node_groups):
            continue
        for target in rule.targets:
            if target in seen:
                continue
            seen.add(target)
            kind = "alarm" if ev.event == "raise" else "report"
            out.messages.append(_message(ev, kind, target, rule, now, tz, recent, storm_threshold))
        if ev.event == "raise" and rule.escalate_after_s > 0 and rule.escalate_to and out.escalate_at is None:
            first_due = min((m.due for m in out.messages if m.skipped is None), default=now)
            out.escalate_at = max(first_due, ev.since) + rule.escalate_after_s
            out.escalate_to = rule.escalate_to
    return out


def _rule_of_targets(
    ev: AlarmEvent, rules: tuple[Rule, ...], node_groups: frozenset[str], targets: frozenset[Target]
) -> dict[Target, Rule]:
    """For each target, the first rule naming it (matching the event if one does)."""
    found: dict[Target, Rule] = {}
    for matching in (True, False):
        for rule in rules:
            if matching and not rule.matches(ev.severity, ev.code, node_groups):
                continue
            for t in (*rule.targets, *rule.escalate_to):
                if t in targets and t not in found:
                    found[t] = rule
    return found


def _message(
    ev: AlarmEvent,
    kind: str,
    target: Target,
    rule: Rule | None,
    now: float,
    tz: ZoneInfo,
    recent: Callable[[Target], int],
    storm_threshold: int,
) -> Message:
    due = now
    skipped = None
    if rule is not None and ev.severity not in rule.quiet_bypass:
        end = quiet_end(rule.quiet, now, tz)
        if end is not None:
            if rule.quiet_mode == "skip":
                skipped = f"quiet hours of rule {rule.name}"
            else:
                due = end
    msg = Message(
        key=message_key(ev.cycle, ev.event, target),
        kind=kind,
        target=target,
        due=due,
        cycle=ev.cycle,
        item=item(ev),
        skipped=skipped,
    )
    if skipped is None and recent(target) >= storm_threshold:
        msg.digest = True
    return msg


def escalation_message(
    cycle: str, raised: dict[str, Any], target: Target, now: float, recent: int, storm_threshold: int
) -> Message:
    """The message telling `target` that a cycle was not acknowledged in time (quiet hours do not
    hold it: an escalation exists because nobody answered); a digest entry in a storm."""
    return Message(
        key=message_key(cycle, "escalation", target),
        kind="escalation",
        target=target,
        due=now,
        cycle=cycle,
        item=raised,
        digest=recent >= storm_threshold,
    )


# ---------------------------------------------------------------- what people read


def _when(t: float, tz: ZoneInfo) -> str:
    return dt.datetime.fromtimestamp(t, tz).strftime("%Y-%m-%d %H:%M:%S %Z")


def _line(it: dict[str, Any], tz: ZoneInfo) -> str:
    who = it["node"] + (f" ({it['node_name']})" if it.get("node_name") else "")
    zone = f" zone {it['zone']}" if it.get("zone") else ""
    what = {
        "alarm": "RAISED",
        "raise": "RAISED",
        "clear": "CLEARED",
        "report": "REPORTED",
        "escalation": "NOT ACKNOWLEDGED",
    }.get(it["event"], it["event"])
    text = f"{what}: {it['severity']} {it['code']}{zone} on node {who}, value {it['value']}"
    text += f", raised {_when(it['since'], tz)}"
    if it["event"] == "clear":
        text += f", cleared {_when(it['at'], tz)} (by {it.get('closed_by') or 'event'})"
    return text


def email_text(kind: str, items: list[dict[str, Any]], gateway_id: str, tz: ZoneInfo) -> tuple[str, str]:
    """(subject, plain-text body) of a message of `kind` about `items` (one, or a digest's)."""
    if kind == "digest":
        raised = sum(1 for i in items if i["event"] in ("raise", "report", "escalation"))
        subject = f"[Lumeau {gateway_id}] {len(items)} alarm events ({raised} raised)"
    else:
        it = items[0]
        label = {"alarm": "ALARM", "clear": "CLEARED", "report": "REPORT", "escalation": "ESCALATED"}[kind]
        subject = f"[Lumeau {gateway_id}] {label} {it['severity']} {it['code']} on {it['node']}"
    lines = [_line(i, tz) for i in items]
    if kind in ("alarm", "escalation"):
        it = items[0]
        lines += ["", f"Acknowledge: POST /alarms/{it['node']}/{it['code']}/ack on the gateway's API."]
    return subject, "\n".join(lines) + "\n"


def webhook_body(kind: str, key: str, items: list[dict[str, Any]], gateway_id: str, created: float) -> dict[str, Any]:
    """The webhook's JSON document (schema `lumeau.alarm-notification/1`, gateway/README.md)."""
    return {
        "schema": "lumeau.alarm-notification/1",
        "id": key,
        "kind": kind,
        "gateway": gateway_id,
        "created": created,
        "alarms": items,
    }
