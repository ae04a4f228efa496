"""`[notify]` of gateway.toml: alarm notifications by e-mail and signed webhook (gateway/notify.py).

Its own module (gateway/config.py calls `parse_notify` and prints
`example_notify()`), because rules are a list of tables with lists inside,
which the flat sections of config.py do not describe. Errors are
`NotifyConfigError` naming the key (`notify.rule[1].quiet_hours: ...`);
config.py prefixes the file. Secrets (the SMTP password, the webhook
signing secret) come from files of mode 0600 and are `Secret`: never in a
repr or a log line.
"""

from __future__ import annotations

import difflib
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from gateway.notify_rules import QUIET_MODES, SEVERITIES, Rule, Target, parse_hours
from gateway.secret import Secret
from protocol import messages as m
from protocol.expand import ENUMS

SECRET_MIN_LEN = 16  # a webhook signing secret shorter than this is guessable
CODES = tuple(ENUMS[(m.EVENT, m.E_CODE)].values())


class NotifyConfigError(ValueError):
    """`[notify]` cannot be used; the message names the key and why."""


@dataclass(frozen=True)
class SmtpConfig:
    host: str = "127.0.0.1"
    port: int = 25
    security: str = "starttls"  # starttls | tls | none
    username: str = ""
    password: Secret | None = None
    sender: str = "lumeau-gateway@localhost"
    timeout_s: float = 30.0
    ca_file: Path | None = None  # None: the system's CAs


@dataclass(frozen=True)
class WebhookConfig:
    secret: Secret | None = None
    timeout_s: float = 10.0


@dataclass(frozen=True)
class NotifyConfig:
    enabled: bool = False
    timezone: str = "UTC"
    storm_threshold: int = 10
    storm_window_s: float = 300.0
    retry_initial_s: float = 5.0
    retry_max_s: float = 900.0
    smtp: SmtpConfig = field(default_factory=SmtpConfig)
    webhook: WebhookConfig = field(default_factory=WebhookConfig)
    rules: tuple[Rule, ...] = ()

    @property
    def tz(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)


# key: (default, help); the defaults shown by the example are these
_TOP = {
    "enabled": (False, "send alarm notifications (rules in [[notify.rule]])"),
    "timezone": ("UTC", "IANA zone of quiet hours and of times in messages, e.g. Europe/Paris"),
    "storm_threshold": (
        10,
        "a recipient given this many messages within storm_window_s gets the next ones as one digest",
    ),
    "storm_window_s": (300.0, "the storm window; a digest is sent when it has been open this long"),
    "retry_initial_s": (5.0, "first retry when SMTP or a webhook fails; doubled per failure, with jitter"),
    "retry_max_s": (900.0, "retry delay at most (messages are kept until delivered)"),
}
_SMTP = {
    "host": ("127.0.0.1", "the mail server (the city's relay)"),
    "port": (25, "587 for STARTTLS submission, 465 for tls"),
    "security": ("starttls", "starttls | tls (implicit, port 465) | none (a local relay only)"),
    "username": ("", "log in with this user (empty: no login)"),
    "password_file": ("", "file holding the SMTP password (mode 0600)"),
    "sender": ("lumeau-gateway@localhost", "the From address"),
    "timeout_s": (30.0, "a connection or reply taking longer is retried"),
    "ca_file": ("", "PEM file of the CA that signed the server's certificate (a private CA); empty: the system's"),
}
_WEBHOOK = {
    "secret_file": ("", "file holding the HMAC-SHA256 signing secret (mode 0600; required for webhooks)"),
    "timeout_s": (10.0, "a request taking longer is retried"),
}
_RULE = {
    "name": ("", "a name for logs (default: rule-N)"),
    "severities": (["alarm", "critical"], "which severities: info, warning, alarm, critical"),
    "codes": ([], 'which alarms, e.g. ["leak", "burst"]; empty: all'),
    "groups": ([], "nodes of these registry groups only; empty: every node"),
    "email": ([], "e-mail recipients"),
    "webhooks": ([], "webhook URLs (JSON POST, signed)"),
    "quiet_hours": ("", 'local time, e.g. "22:00-07:00"; empty: none'),
    "quiet": ("defer", "in quiet hours: defer (sent at their end) | skip (not sent)"),
    "quiet_bypass": (["critical"], "severities sent even in quiet hours"),
    "on_clear": (True, "tell the recipients when the alarm clears"),
    "escalate_after_min": (0.0, "not acknowledged (POST /alarms/{node}/{code}/ack) within this: escalate; 0: never"),
    "escalate_email": ([], "e-mail recipients of the escalation"),
    "escalate_webhooks": ([], "webhook URLs of the escalation"),
}


def _unknown(data: dict[str, Any], known: dict[str, Any], where: str, extra: tuple[str, ...] = ()) -> None:
    names = [*known, *extra]
    for key in data:
        if key not in names:
            close = difflib.get_close_matches(key, names, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else f" (known: {', '.join(names)})"
            raise NotifyConfigError(f"{where}.{key}: unknown key{hint}")


def _typed(data: dict[str, Any], spec: dict[str, tuple[Any, str]], where: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, (default, _help) in spec.items():
        v = data.get(key, default)
        want = type(default)
        if want is float and isinstance(v, int) and not isinstance(v, bool):
            v = float(v)
        if want is list:
            if not isinstance(v, list) or not all(isinstance(x, str) for x in v):
                raise NotifyConfigError(f"{where}.{key}: must be a list of text, got {v!r}")
        elif type(v) is not want:
            kind = {bool: "true or false", int: "an integer", float: "a number", str: "text"}[want]
            raise NotifyConfigError(f"{where}.{key}: must be {kind}, got {v!r}")
        if want in (int, float) and v < 0:
            raise NotifyConfigError(f"{where}.{key}: {v} must not be negative")
        out[key] = v
    return out


def _secret(value: str, base: Path, where: str) -> Secret:
    p = Path(value).expanduser()
    p = p if p.is_absolute() else base / p
    try:
        st = p.stat()
    except FileNotFoundError:
        raise NotifyConfigError(f"{where}: {p} does not exist") from None
    if st.st_mode & 0o077:
        raise NotifyConfigError(
            f"{where}: {p} holds a secret but is accessible to group or others "
            f"(mode {stat.S_IMODE(st.st_mode):04o}); run: chmod 600 {p}"
        )
    try:
        text = p.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as e:
        raise NotifyConfigError(f"{where}: cannot read {p}: {e}") from None
    if not text:
        raise NotifyConfigError(f"{where}: {p} is empty")
    return Secret(text)


def _email(v: str, where: str) -> Target:
    local, _, domain = v.partition("@")
    if not local or not domain or any(c in v for c in " \t\r\n<>,;"):
        raise NotifyConfigError(f"{where}: {v!r} is not an e-mail address")
    return Target("email", v)


def _webhook(v: str, where: str) -> Target:
    if not (v.startswith("https://") or v.startswith("http://")) or any(c in v for c in " \t\r\n"):
        raise NotifyConfigError(f"{where}: {v!r} must be an http:// or https:// URL")
    return Target("webhook", v)


def _names(values: list[str], allowed: tuple[str, ...], where: str) -> frozenset[str]:
    for v in values:
        if v not in allowed:
            raise NotifyConfigError(f"{where}: {v!r} is not one of {', '.join(allowed)}")
    return frozenset(values)


def _rule(data: Any, i: int) -> Rule:
    where = f"notify.rule[{i}]"
    if not isinstance(data, dict):
        raise NotifyConfigError(f"{where}: must be a table ([[notify.rule]])")
    _unknown(data, _RULE, where)
    v = _typed(data, _RULE, where)
    targets = tuple(_email(x, f"{where}.email") for x in v["email"]) + tuple(
        _webhook(x, f"{where}.webhooks") for x in v["webhooks"]
    )
    if not targets:
        raise NotifyConfigError(f"{where}: names no recipient (set email or webhooks)")
    escalate = tuple(_email(x, f"{where}.escalate_email") for x in v["escalate_email"]) + tuple(
        _webhook(x, f"{where}.escalate_webhooks") for x in v["escalate_webhooks"]
    )
    if v["escalate_after_min"] > 0 and not escalate:
        raise NotifyConfigError(f"{where}.escalate_after_min: set, but no escalate_email or escalate_webhooks")
    if escalate and not v["escalate_after_min"] > 0:
        raise NotifyConfigError(f"{where}.escalate_after_min: escalation recipients given, but no delay (> 0)")
    quiet = None
    if v["quiet_hours"]:
        try:
            quiet = parse_hours(v["quiet_hours"])
        except ValueError as e:
            raise NotifyConfigError(f"{where}.quiet_hours: {e}") from None
    if v["quiet"] not in QUIET_MODES:
        raise NotifyConfigError(f"{where}.quiet: {v['quiet']!r} is not one of {', '.join(QUIET_MODES)}")
    severities = _names(v["severities"], SEVERITIES, f"{where}.severities")
    if not severities:
        raise NotifyConfigError(f"{where}.severities: empty: the rule would match nothing")
    return Rule(
        name=v["name"] or f"rule-{i}",
        targets=targets,
        severities=severities,
        codes=_names(v["codes"], CODES, f"{where}.codes"),
        groups=frozenset(v["groups"]),
        quiet=quiet,
        quiet_mode=v["quiet"],
        quiet_bypass=_names(v["quiet_bypass"], SEVERITIES, f"{where}.quiet_bypass"),
        on_clear=v["on_clear"],
        escalate_after_s=v["escalate_after_min"] * 60.0,
        escalate_to=escalate,
    )


def parse_notify(data: Any, base: Path) -> NotifyConfig:
    """`[notify]` (with `[notify.smtp]`, `[notify.webhook]`, `[[notify.rule]]`) checked; `base` anchors paths."""
    if not isinstance(data, dict):
        raise NotifyConfigError("notify: must be a table")
    _unknown(data, _TOP, "notify", ("smtp", "webhook", "rule"))
    top = _typed(data, _TOP, "notify")
    try:
        ZoneInfo(top["timezone"])
    except (ZoneInfoNotFoundError, ValueError):
        raise NotifyConfigError(f"notify.timezone: {top['timezone']!r} is not a known IANA time zone") from None
    if top["storm_threshold"] < 1:
        raise NotifyConfigError("notify.storm_threshold: must be at least 1")
    for k in ("storm_window_s", "retry_initial_s", "retry_max_s"):
        if not top[k] > 0:
            raise NotifyConfigError(f"notify.{k}: must be positive")
    if top["retry_initial_s"] > top["retry_max_s"]:
        raise NotifyConfigError("notify.retry_initial_s: larger than retry_max_s")
    smtp_data = data.get("smtp", {})
    if not isinstance(smtp_data, dict):
        raise NotifyConfigError("notify.smtp: must be a table")
    _unknown(smtp_data, _SMTP, "notify.smtp")
    s = _typed(smtp_data, _SMTP, "notify.smtp")
    if not 1 <= s["port"] <= 65535:
        raise NotifyConfigError(f"notify.smtp.port: {s['port']} is not a port number (1..65535)")
    if s["security"] not in ("starttls", "tls", "none"):
        raise NotifyConfigError(f"notify.smtp.security: {s['security']!r} is not one of starttls, tls, none")
    if not s["timeout_s"] > 0:
        raise NotifyConfigError("notify.smtp.timeout_s: must be positive")
    password = _secret(s["password_file"], base, "notify.smtp.password_file") if s["password_file"] else None
    if s["username"] and password is None:
        raise NotifyConfigError("notify.smtp.password_file: required when username is set")
    if password is not None and not s["username"]:
        raise NotifyConfigError("notify.smtp.username: required when password_file is set")
    if password is not None and s["security"] == "none":
        raise NotifyConfigError("notify.smtp.security: none would send the password in clear; use starttls or tls")
    _email(s["sender"], "notify.smtp.sender")
    ca_file = None
    if s["ca_file"]:
        ca_file = Path(s["ca_file"]).expanduser()
        ca_file = ca_file if ca_file.is_absolute() else base / ca_file
        if not ca_file.is_file():
            raise NotifyConfigError(f"notify.smtp.ca_file: {ca_file} is not a file")
        if s["security"] == "none":
            raise NotifyConfigError("notify.smtp.ca_file: given, but security = none uses no TLS")
    smtp = SmtpConfig(
        host=s["host"],
        port=s["port"],
        security=s["security"],
        username=s["username"],
        password=password,
        sender=s["sender"],
        timeout_s=s["timeout_s"],
        ca_file=ca_file,
    )
    wh_data = data.get("webhook", {})
    if not isinstance(wh_data, dict):
        raise NotifyConfigError("notify.webhook: must be a table")
    _unknown(wh_data, _WEBHOOK, "notify.webhook")
    w = _typed(wh_data, _WEBHOOK, "notify.webhook")
    if not w["timeout_s"] > 0:
        raise NotifyConfigError("notify.webhook.timeout_s: must be positive")
    secret = _secret(w["secret_file"], base, "notify.webhook.secret_file") if w["secret_file"] else None
    if secret is not None and len(secret.reveal()) < SECRET_MIN_LEN:
        raise NotifyConfigError(f"notify.webhook.secret_file: the secret is shorter than {SECRET_MIN_LEN} characters")
    rules_data = data.get("rule", [])
    if not isinstance(rules_data, list):
        raise NotifyConfigError("notify.rule: must be an array of tables ([[notify.rule]])")
    rules = tuple(_rule(r, i) for i, r in enumerate(rules_data))
    if top["enabled"] and not rules:
        raise NotifyConfigError("notify.enabled: true, but no [[notify.rule]] says who is told")
    if (
        top["enabled"]
        and secret is None
        and any(t.channel == "webhook" for r in rules for t in (*r.targets, *r.escalate_to))
    ):
        raise NotifyConfigError("notify.webhook.secret_file: required: a rule names a webhook (requests are signed)")
    return NotifyConfig(
        enabled=top["enabled"],
        timezone=top["timezone"],
        storm_threshold=top["storm_threshold"],
        storm_window_s=top["storm_window_s"],
        retry_initial_s=top["retry_initial_s"],
        retry_max_s=top["retry_max_s"],
        smtp=smtp,
        webhook=WebhookConfig(secret=secret, timeout_s=w["timeout_s"]),
        rules=rules,
    )


def _toml(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, str):
        return f'"{v}"'
    if isinstance(v, list):
        return "[" + ", ".join(f'"{x}"' for x in v) + "]"
    return repr(v)


def _lines(header: str, spec: dict[str, tuple[Any, str]], overrides: dict[str, Any], comment: bool) -> list[str]:
    out = [("# " if comment else "") + header]
    for key, (default, help_) in spec.items():
        line = f"{key} = {_toml(overrides.get(key, default))}".ljust(42) + f"  # {help_}"
        out.append(("# " if comment else "") + line)
    return out + [""]


def example_notify() -> str:
    """The `[notify]` part of `lumeau gateway --example-config`: every key, off, loads as is."""
    out = ["# Alarm notifications (gateway/README.md, 'Alarm notifications'): e-mail and signed webhooks."]
    out += _lines("[notify]", _TOP, {}, False)
    out += _lines("[notify.smtp]", _SMTP, {}, False)
    out += _lines("[notify.webhook]", _WEBHOOK, {}, False)
    out += ["# One [[notify.rule]] per set of recipients; uncomment, and set notify.enabled = true:"]
    out += _lines(
        "[[notify.rule]]",
        _RULE,
        {
            "name": "night-crew",
            "email": ["ops@city.example"],
            "webhooks": ["https://ops.city.example/hooks/lumeau"],
            "quiet_hours": "22:00-07:00",
            "escalate_after_min": 30.0,
            "escalate_email": ["duty-manager@city.example"],
        },
        True,
    )
    return "\n".join(out).rstrip() + "\n"


__all__ = [
    "NotifyConfig",
    "NotifyConfigError",
    "SmtpConfig",
    "WebhookConfig",
    "example_notify",
    "parse_notify",
]
