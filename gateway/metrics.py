"""Prometheus text exposition (version 0.0.4) for the local API's /metrics.

The format and its helpers; which families the gateway exports is
gateway/api.py's `Api.render_metrics` (pipeline, store, downlinks,
transports) and `upstream_families` here (the upstream's stats()).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any


class Metrics:
    """Prometheus text exposition, built fresh for each scrape."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def family(self, name: str, kind: str, help_: str, samples: Iterable[tuple[dict[str, str], float]]) -> None:
        self.lines.append(f"# HELP {name} {help_}")
        self.lines.append(f"# TYPE {name} {kind}")
        for labels, value in samples:
            suffix = labels.pop("__suffix", "") if labels else ""  # summary/histogram sample names
            if suffix:
                self.lines.append(f"{name}{suffix} {num(value)}")
            elif labels:
                lab = ",".join(f'{k}="{escape(str(v))}"' for k, v in labels.items())
                self.lines.append(f"{name}{{{lab}}} {num(value)}")
            else:
                self.lines.append(f"{name} {num(value)}")

    def text(self) -> str:
        return "\n".join(self.lines) + "\n"


def snake(name: str) -> str:
    """CamelCase -> snake_case (a transport's class name as a label value)."""
    return "".join("_" + c.lower() if c.isupper() else c for c in name).lstrip("_")


def escape(s: str) -> str:
    """A label value escaped as the text format requires."""
    return s.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def num(v: float) -> str:
    """A sample value in the text format (integers exact, NaN and infinities by name)."""
    if isinstance(v, bool):
        return "1" if v else "0"
    if isinstance(v, int):
        return str(v)
    if math.isnan(v):
        return "NaN"
    if math.isinf(v):
        return "+Inf" if v > 0 else "-Inf"
    return repr(float(v))


def upstream_families(x: Metrics, st: dict[str, Any]) -> None:
    """The upstream's families, from its stats() (gateway/upstream.py)."""
    x.family(
        "lumeau_upstream_records_sent_total",
        "counter",
        "Records the upstream acknowledged (2xx).",
        [({}, st.get("records_sent", 0))],
    )
    x.family("lumeau_upstream_requests_total", "counter", "Requests made upstream.", [({}, st.get("requests", 0))])
    x.family(
        "lumeau_upstream_responses_total",
        "counter",
        "Upstream answers by HTTP status (0: no answer).",
        [({"status": str(k)}, v) for k, v in sorted(st.get("responses", {}).items(), key=lambda kv: str(kv[0]))],
    )
    x.family(
        "lumeau_upstream_retries_total", "counter", "Batches retried after a failure.", [({}, st.get("retries", 0))]
    )
    x.family(
        "lumeau_upstream_quarantined_batches_total",
        "counter",
        "Refused batches moved to the quarantine.",
        [({}, st.get("quarantined_batches", 0))],
    )
    x.family(
        "lumeau_upstream_consecutive_failures",
        "gauge",
        "Failed attempts since the last success.",
        [({}, st.get("consecutive_failures", 0))],
    )
    x.family(
        "lumeau_upstream_batch_latency_seconds",
        "summary",
        "From a batch's first attempt to its settlement (delivered or quarantined).",
        [
            ({"__suffix": "_sum"}, st.get("batch_latency_seconds_sum", 0.0)),
            ({"__suffix": "_count"}, st.get("batches", 0)),
        ],
    )
    x.family(
        "lumeau_upstream_batch_latency_last_seconds",
        "gauge",
        "The last batch's latency.",
        [({}, st.get("batch_latency_seconds_last", 0.0))],
    )
    if "connected" in st:  # the MQTT upstream (gateway/upstream_mqtt.py): responses are puback|error|refused
        x.family("lumeau_upstream_connected", "gauge", "1 while connected to the MQTT broker.", [({}, st["connected"])])
        x.family(
            "lumeau_upstream_connections_total",
            "counter",
            "Connections made to the MQTT broker.",
            [({}, st.get("connections", 0))],
        )
        x.family(
            "lumeau_upstream_commands_total",
            "counter",
            "Commands received over MQTT (RPCs, command messages) by outcome.",
            [
                ({"outcome": "received"}, st.get("commands_in", 0)),
                ({"outcome": "refused"}, st.get("commands_refused", 0)),
                ({"outcome": "dropped"}, st.get("commands_dropped", 0)),
            ],
        )


def calendar_families(x: Metrics, sync: Any) -> None:
    """The calendars' families (gateway/calendar_sync.py CalendarSync), when [calendars] is on."""
    x.family(
        "lumeau_calendar_nodes",
        "gauge",
        "Nodes with a calendar assigned, by state: in_step (holds it), pending (being sent, or its "
        "answer awaited), failed (every round went unconfirmed: left until its next boot).",
        [({"state": k}, v) for k, v in sync.states().items()],
    )
    x.family(
        "lumeau_calendar_fragments_total",
        "counter",
        "Calendar CONFIG fragments since start: queued, and sent (handed to a radio or a wire).",
        [({"outcome": "queued"}, sync.counts["fragments"]), ({"outcome": "sent"}, sync.fragments_sent())],
    )
    x.family(
        "lumeau_calendar_events_total",
        "counter",
        "Calendar outcomes since start: applied (a node confirmed the calendar sent to it), already_held "
        "(it had it: the rest of the round cancelled), rounds (a round sent again), refused (a fragment "
        "the downlink queue did not take).",
        [({"outcome": k}, sync.counts[k]) for k in ("applied", "already_held", "rounds", "refused")],
    )
