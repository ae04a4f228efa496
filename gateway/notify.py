"""Alarm notifications: the I/O side (the decisions are gateway/notify_rules.py's, pure).

`Notifier(cfg, store, registry, gateway_id)`, `await start()`, `await stop()`;
the service calls `wake()` after each commit (pipeline listener). Two tasks,
one deciding (1-3), one sending (4), so a hanging server delays no decision:

1. decides each journalled alarm event (gateway/store/notifications.py: the
   journal is written with the record that raised or cleared the alarm) into
   the outbox, a batch of events per transaction (`Notifications.apply_many`);
2. escalates the cycles not acknowledged (`ack`, the API's POST
   /alarms/{node}/{code}/ack) nor cleared in time;
3. closes the digests whose window ended;
4. sends what is due: e-mail through SMTP (stdlib smtplib, in a thread:
   STARTTLS, implicit TLS or none; login when configured), webhooks as a JSON
   POST signed with HMAC-SHA256; marks each row sent once the channel
   accepted it (SMTP: the server's 250 after DATA; HTTP: a 2xx).

Failures: a server down, a timeout, SMTP 4xx, HTTP 408/425/429/5xx, and
anything unforeseen are retried with exponential backoff and jitter
(`retry_initial_s` doubling to `retry_max_s`), forever: nothing is dropped.
An SMTP 5xx refusing the recipient or the message, and any other HTTP status
(3xx: redirects are not followed; 4xx), are final: the row is `failed`,
logged, kept. Each recipient's messages go in order.

Delivery guarantee, exactly: a message is handed to its channel until one
attempt is accepted, and never again after the "sent" mark is committed. A
crash after the channel accepted and before that commit (a few
milliseconds: one SQLite transaction) sends it once more after the restart;
that copy carries the same idempotency key -- `X-Lumeau-Delivery` header and
`id` field of the webhook, `Message-ID` and `X-Lumeau-Delivery` of the
e-mail -- so a receiver can drop it. So: at least once, and exactly once
for a receiver that de-duplicates by that key.

Webhook signature: `X-Lumeau-Timestamp: <Unix seconds>` and
`X-Lumeau-Signature: sha256=<hex HMAC-SHA256(secret, timestamp + "." + body)>`;
a receiver recomputes it over the raw body and refuses a timestamp older
than a few minutes (a replay). Secrets and webhook URLs' paths (they often
hold tokens) never reach the log.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import random
import smtplib
import ssl
import time
from collections.abc import Awaitable, Callable
from email.message import EmailMessage
from email.utils import formatdate
from typing import Any
from urllib.parse import urlsplit

import aiohttp

from gateway import notify_rules as nr
from gateway.logs import RateLimiter
from gateway.notify_config import NotifyConfig, SmtpConfig
from gateway.registry import Registry
from gateway.store import Store
from gateway.store.notifications import Decider, JournalEvent, NewMessage, OutboxRow, Outcome
from protocol import messages as m
from protocol.expand import ENUMS

log = logging.getLogger("lumeau.gateway.notify")

POLL_S = 1.0  # at most this long between looks at the outbox without a wake-up
SEND_CONCURRENCY = 8  # recipients being sent to at once
STOP_GRACE_S = 3.0  # at a stop, sends under way may finish for this long (within the service's 15 s)
USER_AGENT = "lumeau-gateway-notify/1"
RETENTION_S = 30 * 86400.0  # settled messages and cleared cycles are kept this long (GET /notifications)
PRUNE_EVERY_S = 3600.0
EVENTS_PER_READ = 256  # journal rows read at once (each decided in its own transaction)

_CODES: dict[int, str] = ENUMS[(m.EVENT, m.E_CODE)]
_SEVERITIES: dict[int, str] = ENUMS[(m.EVENT, m.E_SEVERITY)]


class Permanent(Exception):
    """The channel refused the message for good: retrying cannot help."""


def sign(secret: bytes, timestamp: str, body: bytes) -> str:
    """The `X-Lumeau-Signature` value for a webhook body (module docstring)."""
    return "sha256=" + hmac.new(secret, timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()


def redact(target: nr.Target) -> str:
    """A recipient as the log shows it: a webhook's scheme and host only."""
    if target.channel == "webhook":
        u = urlsplit(target.address)
        return f"{u.scheme}://{u.hostname}" + (f":{u.port}" if u.port else "")
    return target.address


def _tls(cfg: SmtpConfig) -> ssl.SSLContext:
    """Certificate and host name checked, against `ca_file` when given (a private CA)."""
    return ssl.create_default_context(cafile=str(cfg.ca_file) if cfg.ca_file is not None else None)


def smtp_send(cfg: SmtpConfig, msg: EmailMessage) -> None:
    """Hand one message to the SMTP server (blocking: run in a thread); raises Permanent for a 5xx refusal."""
    try:
        if cfg.security == "tls":
            client: smtplib.SMTP = smtplib.SMTP_SSL(cfg.host, cfg.port, timeout=cfg.timeout_s, context=_tls(cfg))
        else:
            client = smtplib.SMTP(cfg.host, cfg.port, timeout=cfg.timeout_s)
        with client:
            if cfg.security == "starttls":
                client.starttls(context=_tls(cfg))
            if cfg.username and cfg.password is not None:
                client.login(cfg.username, cfg.password.reveal())
            client.send_message(msg)
    except smtplib.SMTPRecipientsRefused as e:
        codes = [c for c, _ in e.recipients.values()]
        if codes and all(c >= 500 for c in codes):
            raise Permanent(f"recipient refused: {codes}") from None
        raise
    except (smtplib.SMTPSenderRefused, smtplib.SMTPDataError) as e:
        if e.smtp_code >= 500:
            raise Permanent(f"SMTP {e.smtp_code}: {e.smtp_error!r}") from None
        raise


class Notifier:
    """See the module docstring. `clock` is the wall clock (a seam for quiet-hour tests)."""

    def __init__(
        self,
        cfg: NotifyConfig,
        store: Store,
        registry: Registry,
        gateway_id: str,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.cfg = cfg
        self.store = store
        self.table = store.notifications
        self.registry = registry
        self.gateway_id = gateway_id
        self.clock = clock
        self.tz = cfg.tz
        self._wake = asyncio.Event()  # the decide loop's
        self._send_wake = asyncio.Event()
        self._tasks: list[asyncio.Task] = []
        self._sending: dict[tuple[str, str], asyncio.Task] = {}  # per recipient, its send under way
        self._sem = asyncio.Semaphore(SEND_CONCURRENCY)
        self._session: aiohttp.ClientSession | None = None
        self._secret = cfg.webhook.secret.reveal().encode() if cfg.webhook.secret is not None else b""
        self._pruned = 0.0
        self._log_limit = RateLimiter()  # a storm's decisions: 20 lines, then 1/s
        self.turn_started = 0.0  # when the latest turn began (tests wait for a turn after an instant)
        self.counts = {"sent": 0, "retried": 0, "failed": 0, "decided": 0, "escalated": 0}

    # ------------------------------------------------------------ lifecycle

    async def start(self, run: bool = True) -> None:
        """Open the HTTP client and run the tasks (`run=False`: the caller drives `run_once`, as tests do)."""
        self._session = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=self.cfg.webhook.timeout_s), headers={"User-Agent": USER_AGENT}
        )
        if run:
            # two loops: a mail server that hangs until its timeout must not hold back the
            # decisions (nor, through them, the webhooks of the next alarms)
            self._tasks = [
                asyncio.create_task(self._loop(self._decide_turn, self._wake), name="lumeau-notify-decide"),
                asyncio.create_task(self._loop(self._send_turn, self._send_wake), name="lumeau-notify-send"),
            ]

    async def stop(self) -> None:
        """Stop the loops; the sends under way get STOP_GRACE_S to finish (one cut off later is
        sent again at the next start: an e-mail handed over in that instant goes twice)."""
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []
        sending = list(self._sending.values())
        if sending:
            await asyncio.wait(sending, timeout=STOP_GRACE_S)
            for t in sending:
                t.cancel()
            await asyncio.gather(*sending, return_exceptions=True)
        self._sending.clear()
        if self._session is not None:
            await self._session.close()
            self._session = None

    def wake(self) -> None:
        """Something was committed: look at the journal now (cheap: called after every commit)."""
        self._wake.set()

    async def _loop(self, turn: Callable[[], Awaitable[int]], event: asyncio.Event) -> None:
        while True:
            event.clear()  # before the turn: a wake-up during it is not lost
            try:
                await turn()
            except Exception:  # a bad turn must not end notifications; the rows wait in the store
                log.exception("notification turn failed")
            nxt = self.table.next_wake()
            delay = POLL_S if nxt is None else min(POLL_S, max(0.0, nxt - self.clock()))
            try:
                await asyncio.wait_for(event.wait(), delay)
            except TimeoutError:
                pass

    async def _decide_turn(self) -> int:
        """Decide journalled events, escalate, close digests, prune; wake the sender if anything changed."""
        self.turn_started = self.clock()
        n = await self.decide_events() + await self.escalate()
        now = self.clock()
        n += await self.table.seal_digests(now)
        if now - self._pruned >= PRUNE_EVERY_S:
            self._pruned = now
            await self.table.prune(now - RETENTION_S, now - self.cfg.storm_window_s)
        if n:
            self._send_wake.set()
        return n

    async def run_once(self) -> int:
        """One turn of both loops: decide journalled events, escalate, close digests, send what is due.
        Returns the messages sent."""
        await self._decide_turn()
        return await self.send_due()

    # ------------------------------------------------------------ deciding

    def _groups(self) -> dict[int, frozenset[str]]:
        by_node: dict[int, set[str]] = {}
        for g in self.registry.groups():
            for n in g.members:
                by_node.setdefault(n, set()).add(g.name)
        return {n: frozenset(s) for n, s in by_node.items()}

    def alarm_event(self, je: JournalEvent) -> nr.AlarmEvent:
        entry = self.registry.get(je.node_id)
        return nr.AlarmEvent(
            cycle=je.cycle,
            event=je.event,
            node_id=je.node_id,
            code=_CODES.get(je.code, str(je.code)),
            zone=je.zone,
            severity=_SEVERITIES.get(je.severity, str(je.severity)),
            value=je.value,
            at=je.at,
            since=je.since,
            closed_by=je.closed_by,
            node_name=(entry.name if entry is not None else "") or "",
        )

    async def decide_events(self) -> int:
        """Decide every journalled event, oldest first, a batch per transaction. An event whose
        decision failed (a bug) stays in the journal, tried again next turn, logged."""
        done, after = 0, 0
        while events := self.table.events(EVENTS_PER_READ, after=after):
            after = events[-1].id
            done += await self._decide(events)
        return done

    async def _decide(self, events: list[JournalEvent]) -> int:
        groups = self._groups()
        cfg = self.cfg
        now = self.clock()
        evs = [self.alarm_event(je) for je in events]
        items = [
            (je.id, ev.cycle, self.decider(ev, groups.get(ev.node_id, frozenset()), now)) for je, ev in zip(events, evs)
        ]
        results = await self.table.apply_many(items, now, cfg.storm_window_s, now + cfg.storm_window_s)
        decided = 0
        for ev, out in zip(evs, results):
            if isinstance(out, Exception):
                log.error("alarm event not decided (kept, tried again): %r", out, extra={"cycle": ev.cycle})
                continue
            decided += 1
            for msg in out.messages:
                state = "skipped" if msg.skipped else "digest" if msg.digest else "queued"
                allowed, suppressed = self._log_limit.allow("decided")
                if allowed:
                    log.info(
                        "alarm notification %s",
                        state,
                        extra={
                            "node": f"{ev.node_id:08x}",
                            "code": ev.code,
                            "event": ev.event,
                            "channel": msg.channel,
                            "to": redact(nr.Target(msg.channel, msg.recipient)),
                            "due_in_s": round(msg.due - now, 1),
                            **({"suppressed": suppressed} if suppressed else {}),
                        },
                    )
        self.counts["decided"] += decided
        return decided

    def decider(self, ev: nr.AlarmEvent, node_groups: frozenset[str], now: float) -> Decider:
        """What `Notifications.apply` runs, inside its transaction, with the outbox's view."""
        cfg = self.cfg

        def decide(told: frozenset[tuple[str, str]], recent: Callable[[str, str], int]) -> Outcome:
            d = nr.decide(
                ev,
                cfg.rules,
                node_groups,
                now,
                self.tz,
                lambda t: recent(t.channel, t.address),
                cfg.storm_threshold,
                frozenset(nr.Target(*t) for t in told),
            )
            out = Outcome(messages=[self._new(msg, now) for msg in d.messages])
            if ev.event in ("raise", "report") and d.messages:
                out.cycle_row = {
                    "node_id": ev.node_id,
                    "code": ev.code,
                    "zone": ev.zone,
                    "severity": ev.severity,
                    "item": nr.item(ev),
                    "raised": ev.since,
                }
            if d.escalate_at is not None:
                out.escalate_at = d.escalate_at
                out.escalate_to = [[t.channel, t.address] for t in d.escalate_to]
            if ev.event == "clear" or ev.event == "report":  # a one-shot is over once told
                out.cleared = ev.at
            return out

        return decide

    def _new(self, msg: nr.Message, now: float) -> NewMessage:
        return NewMessage(
            key=msg.key,
            kind=msg.kind,
            channel=msg.target.channel,
            recipient=msg.target.address,
            cycle=msg.cycle,
            item=msg.item,
            due=msg.due,
            skipped=msg.skipped is not None,
            digest=msg.digest,
            digest_key=nr.digest_key(msg.target, now),
        )

    async def escalate(self) -> int:
        """Escalate the cycles past their time, neither acknowledged nor cleared (checked again in
        the transaction: an acknowledgement that comes first wins)."""
        now = self.clock()
        due = self.table.escalations_due(now)
        if not due:
            return 0
        items = [(None, cycle, self.escalator(cycle, raised, targets, now)) for cycle, raised, targets in due]
        results = await self.table.apply_many(items, now, self.cfg.storm_window_s, now + self.cfg.storm_window_s)
        done = 0
        for (_c, raised, targets), out in zip(due, results):
            if isinstance(out, Exception):
                log.error("escalation not decided (tried again): %r", out)
            elif out.messages:
                done += 1
                log.warning(
                    "alarm not acknowledged: escalated",
                    extra={"node": raised.get("node"), "code": raised.get("code"), "to": len(targets)},
                )
        self.counts["escalated"] += done
        return done

    def escalator(self, cycle: str, raised: dict[str, Any], targets: list[list[str]], now: float) -> Decider:
        """What `Notifications.apply_many` runs for an escalation: a message to each target."""
        it = {**raised, "event": "escalation", "at": now}

        def decide(told: frozenset[tuple[str, str]], recent: Callable[[str, str], int]) -> Outcome:
            msgs = [
                nr.escalation_message(cycle, it, nr.Target(ch, addr), now, recent(ch, addr), self.cfg.storm_threshold)
                for ch, addr in targets
            ]
            return Outcome(messages=[self._new(x, now) for x in msgs])

        return decide

    async def ack(self, node_id: int, code: str, zone: int | None = None, by: str = "api") -> list[str]:
        """Acknowledge a node's open alarm cycles of `code` (every zone unless `zone`): no escalation follows."""
        cycles = await self.table.ack(node_id, code, zone, by, self.clock())
        if cycles:
            log.info("alarm acknowledged", extra={"node": f"{node_id:08x}", "code": code, "cycles": len(cycles)})
        return cycles

    # ------------------------------------------------------------ sending

    def _queues(self, now: float) -> dict[tuple[str, str], list[OutboxRow]]:
        """What is due, per recipient, oldest first."""
        queues: dict[tuple[str, str], list[OutboxRow]] = {}
        for row in self.table.due(now, limit=1024):
            queues.setdefault((row.channel, row.recipient), []).append(row)
        return queues

    async def _in_order(self, queue: list[OutboxRow], now: float) -> int:
        """One recipient's messages in order (an alarm before its clear); a message waiting for
        its retry, or failing now, holds back the later ones."""
        n = 0
        async with self._sem:
            for row in queue:
                if row.next_try > now:
                    break
                outcome = await self._deliver(row)
                if outcome == "retry":
                    break
                n += outcome == "sent"
        return n

    async def send_due(self) -> int:
        """Send what is due, recipients in parallel, and wait for it all (tests' turns)."""
        now = self.clock()
        return sum(await asyncio.gather(*(self._in_order(q, now) for q in self._queues(now).values())))

    async def _send_turn(self) -> int:
        """The send loop's turn: a task per recipient with something due and none under way, not
        awaited, so a server that hangs holds back its own recipient only."""
        now = self.clock()
        started = 0
        for target, queue in self._queues(now).items():
            if target in self._sending:
                continue
            task = asyncio.create_task(self._in_order(queue, now), name="lumeau-notify-recipient")
            self._sending[target] = task

            def done(t: asyncio.Task, target: tuple[str, str] = target) -> None:
                self._sending.pop(target, None)
                if not t.cancelled() and t.exception() is not None:
                    log.error("sending to a recipient failed: %r", t.exception())
                self._send_wake.set()  # its later rows, or another recipient's

            task.add_done_callback(done)
            started += 1
        return started

    async def _deliver(self, row: OutboxRow) -> str:
        """Try once: "sent", "failed" (for good) or "retry"."""
        target = nr.Target(row.channel, row.recipient)
        try:
            if row.channel == "email":
                await asyncio.to_thread(smtp_send, self.cfg.smtp, self.email(row))
            else:
                await self._post(row)
        except Permanent as e:
            await self.table.give_up(row.id, str(e))
            self.counts["failed"] += 1
            log.error(
                "alarm notification refused for good",
                extra={"id": row.id, "kind": row.kind, "channel": row.channel, "to": redact(target), "why": str(e)},
            )
            return "failed"
        except Exception as e:  # down, timeout, 4xx/5xx to retry; and anything unforeseen: kept, backed off
            if not isinstance(e, (OSError, smtplib.SMTPException, aiohttp.ClientError, TimeoutError)):
                log.exception("alarm notification attempt failed unexpectedly", extra={"id": row.id})
            delay = min(self.cfg.retry_max_s, self.cfg.retry_initial_s * 2 ** min(row.attempts, 30))
            delay *= random.uniform(0.5, 1.0)
            why = _why(e, target)
            await self.table.retry(row.id, self.clock() + delay, why)
            self.counts["retried"] += 1
            log.warning(
                "alarm notification not delivered, will retry",
                extra={
                    "id": row.id,
                    "channel": row.channel,
                    "to": redact(target),
                    "attempt": row.attempts + 1,
                    "retry_in_s": round(delay, 1),
                    "why": why,
                },
            )
            return "retry"
        await self.table.sent(row.id, self.clock())
        self.counts["sent"] += 1
        log.info(
            "alarm notification sent",
            extra={
                "id": row.id,
                "kind": row.kind,
                "channel": row.channel,
                "to": redact(target),
                "items": len(row.items),
            },
        )
        return "sent"

    def email(self, row: OutboxRow) -> EmailMessage:
        subject, text = nr.email_text(row.kind, row.items, self.gateway_id, self.tz)
        msg = EmailMessage()
        msg["From"] = self.cfg.smtp.sender
        msg["To"] = row.recipient
        msg["Subject"] = subject
        msg["Date"] = formatdate(self.clock(), localtime=False)
        msg["Message-ID"] = f"<{row.key}@lumeau.{_domain(self.cfg.smtp.sender)}>"
        msg["X-Lumeau-Delivery"] = row.key
        msg.set_content(text)
        return msg

    async def _post(self, row: OutboxRow) -> None:
        assert self._session is not None, "start() first"
        doc = nr.webhook_body(row.kind, row.key, row.items, self.gateway_id, row.created)
        body = json.dumps(doc, separators=(",", ":"), sort_keys=True).encode()
        ts = str(int(self.clock()))
        headers = {
            "Content-Type": "application/json",
            "X-Lumeau-Timestamp": ts,
            "X-Lumeau-Signature": sign(self._secret, ts, body),
            "X-Lumeau-Delivery": row.key,
        }
        async with self._session.post(row.recipient, data=body, headers=headers, allow_redirects=False) as resp:
            await resp.read()
            if 200 <= resp.status < 300:
                return
            if resp.status in (408, 425, 429) or resp.status >= 500:
                raise aiohttp.ClientResponseError(resp.request_info, (), status=resp.status, message=resp.reason or "")
            raise Permanent(f"HTTP {resp.status}")

    def stats(self) -> dict[str, int]:
        return {**self.counts, **{f"outbox_{k}": v for k, v in self.table.counts().items()}}


def _why(e: BaseException, target: nr.Target) -> str:
    """Why an attempt failed, for the log and the outbox: never a webhook URL's path."""
    if isinstance(e, aiohttp.ClientResponseError):
        return f"HTTP {e.status}"
    text = f"{type(e).__name__}: {e}"
    if target.channel == "webhook":
        text = text.replace(target.address, redact(target))
        u = urlsplit(target.address)
        if u.path and len(u.path) > 1:
            text = text.replace(u.path, "/...")
    return text[:200]


def _domain(addr: str) -> str:
    return addr.rpartition("@")[2] or "localhost"
