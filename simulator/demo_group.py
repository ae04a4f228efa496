"""The demo's group command (issue 11): one street told "100 % for 2 h" through the live gateway.

`lumeau demo` (simulator/demo.py) adds a `GroupProbe` to its live link (simulator/live.py
polls it from its API thread): an hour into the run it creates the group of the scenario's
first street through the gateway's API (which gives the lamps the group key by join_group,
gateway/multicast.py), and at GROUP_COMMAND_AT_H it sends the group command. From then on it
reads the command's progress and notes, in simulated time, when 95 % and 100 % of the lamps
had applied it (their CMD_ACK stored by the gateway; sampled every poll, so a few simulated
seconds late at most at the demo's speed). The results carry it as `group_command_live`,
with the delivery the gateway chose and why, and the report shows it.

The delivery is the real gateway's choice: once the lamps hold the key, a multicast through
the district's packet forwarder (simulator/live_radio.py passes a transmission sent at once
to the simulated air, simulator/air.py `multicast`: a copy for every lamp, heard by those
that listen all the time -- the members). Lamps the multicast missed get the unicast repair.
Unicast against multicast on a 60-lamp street, many draws: `lumeau sim run` on
simulator/scenarios/street_group.toml (section `group_command`).
"""

from __future__ import annotations

import math
from typing import Any

GROUP_AT_H = 1.0  # the group is made (and keyed) an hour in: after the boot's HELLOs and TIMEs
GROUP_COMMAND_AT_H = 8.0  # district.toml starts at 12:00 UTC: 20:00 UTC, 22:00 in Lyon, after dusk
ARGS = [100, 7200]  # set_level: 100 % for 2 h


class GroupProbe:
    def __init__(self, name: str, title: str, members: list[int], start_unix: float) -> None:
        self.name = name
        self.title = title
        self.members = members
        self.group_at = start_unix + GROUP_AT_H * 3600
        self.command_at = start_unix + GROUP_COMMAND_AT_H * 3600
        self.made = False
        self.sent_at: float | None = None
        self.id: int | None = None
        self.delivery: dict[str, Any] | None = None
        self.progress: dict[str, int] = {}
        self.t95: float | None = None
        self.t100: float | None = None
        self.error: str | None = None
        self.repaired = 0  # members the multicast missed (or whose answer was lost): sent it again by unicast

    @classmethod
    def for_scenario(cls, scenario: Any) -> GroupProbe | None:
        if not scenario.streets:
            return None
        street = scenario.streets[0]
        lamps = [n.node_id for n in scenario.lamps if n.street == street.id]
        if len(lamps) < 2:
            return None
        return cls(f"street-{street.id}", getattr(street, "name", street.id), lamps, scenario.start_unix)

    def poll(self, api: Any, now_unix: float) -> None:
        """From the live link's API thread; raises OSError / ValueError like its other calls."""
        if not self.made:
            if now_unix < self.group_at:
                return
            doc = {
                "name": self.name,
                "kind": "street",
                "title": self.title[:80],
                "members": [f"{n:08x}" for n in self.members],
            }
            api.post("/groups", doc)
            self.made = True
            return
        if self.sent_at is None:
            if now_unix < self.command_at:
                return
            out = api.post(f"/groups/{self.name}/commands", {"op": "set_level", "args": ARGS})
            self.sent_at, self.id, self.delivery = now_unix, out["id"], out["delivery"]
            return
        if self.t100 is not None:
            return
        doc = api.json(f"/groups/{self.name}/commands/{self.id}")
        self.progress = doc["progress"]
        self.repaired = sum(1 for x in doc["members"] if "command" in x and x.get("via") == "multicast")
        # when each lamp answered, on the gateway's reception clock (simulated time): exact; else the poll's
        at = sorted(x.get("answered_at", now_unix) for x in doc["members"] if x["state"] == "applied")
        k95 = math.ceil(0.95 * len(self.members))
        if self.t95 is None and len(at) >= k95:
            self.t95 = max(0.0, at[k95 - 1] - self.sent_at)
        if len(at) >= len(self.members):
            self.t100 = max(0.0, at[-1] - self.sent_at)

    def section(self) -> dict[str, Any]:
        return {
            "group": self.name,
            "street": self.title,
            "members": len(self.members),
            "op": {"op": "set_level", "args": ARGS},
            "sent_at_h": None if self.sent_at is None else GROUP_COMMAND_AT_H,
            "delivery": self.delivery,
            "progress": self.progress,
            "repaired_by_unicast": self.repaired,
            "applied_95_s": None if self.t95 is None else round(self.t95, 1),
            "applied_100_s": None if self.t100 is None else round(self.t100, 1),
        }

    def summary(self) -> str:
        s = self.section()
        if s["delivery"] is None:
            return f"  group command: not sent (the run ended before {GROUP_COMMAND_AT_H:g} h)"

        def t(v: float | None) -> str:
            return "not reached" if v is None else f"{v / 60:.1f} min"

        return (
            f"  group command: {s['street']} ({s['members']} lamps) set_level 100 % for 2 h at "
            f"{GROUP_COMMAND_AT_H:g} h by {s['delivery']['mode']} ({s['delivery']['reason']}); 95 % applied after "
            f"{t(s['applied_95_s'])}, 100 % after {t(s['applied_100_s'])}"
            + (f" ({s['repaired_by_unicast']} by the unicast repair)" if s["repaired_by_unicast"] else "")
        )
