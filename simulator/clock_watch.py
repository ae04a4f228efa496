"""The nodes' wall clocks over a simulated run: the `clock` section of the results (simulator/metrics.py)."""

from __future__ import annotations

from typing import Any


class ClockWatch:
    """The nodes' wall clocks over a run (the `clock` section): fed by SimHAL.on_time_set and the reboots."""

    def __init__(self, now_s: Any, drift_ppm: dict[str, float]) -> None:
        self.now_s = now_s  # seconds since the run's start
        self.drift_ppm = drift_ppm  # node -> its crystal's drift (drawn per node)
        self.synced: set[str] = set()  # nodes whose clock a TIME has set
        self.max_error_ms = 0
        self.worst: str | None = None
        self.sets = 0
        self.lost: dict[str, float] = {}  # node -> when a reboot lost its clock (not set since)
        self.restores: list[dict[str, Any]] = []

    def _error(self, name: str, err_ms: int | None) -> None:
        if err_ms is not None and name in self.synced and abs(err_ms) > self.max_error_ms:
            self.max_error_ms = abs(err_ms)
            self.worst = name

    def time_set(self, name: str, before_ms: int | None, after_ms: int, uplinks: int, tick_s: float) -> None:
        """A node took a TIME: errors just before and after; a reboot's clock back after `uplinks` uplinks."""
        self.sets += 1
        self._error(name, before_ms)
        self.synced.add(name)
        self._error(name, after_ms)
        t = self.lost.pop(name, None)
        if t is not None:
            now = self.now_s()
            self.restores.append(
                {
                    "node": name,
                    "at_h": round(t / 3600.0, 6),
                    "to_time_s": round(now - t, 3),
                    "to_profile_s": round(now - t + tick_s, 3),
                    "uplinks": uplinks,
                }
            )

    def reboot(self, name: str, err_ms: int | None, lost: bool) -> None:
        """A node reset with its clock reading err_ms; `lost`: the reset stopped its RTC."""
        self._error(name, err_ms)
        if lost:
            self.lost[name] = self.now_s()

    def end(self, errors: dict[str, int | None]) -> None:
        for name, err in errors.items():
            self._error(name, err)

    def section(self, gateway: dict[str, Any]) -> dict[str, Any]:
        ppm = sorted(self.drift_ppm.values())
        to_profile = [r["to_profile_s"] for r in self.restores]
        return {
            "drift_ppm": {"min": round(ppm[0], 3), "max": round(ppm[-1], 3)} if ppm else None,
            "max_error_s": round(self.max_error_ms / 1000.0, 3),
            "worst_node": self.worst,
            "nodes_synced": len(self.synced),
            "reboots_losing_clock": len(self.restores) + len(self.lost),
            "reboot_to_profile_s": max(to_profile) if to_profile else None,
            "restores": self.restores,
            "never_restored": sorted(self.lost),
            "time_downlinks_sent": gateway.get("downlinks_time_auto", 0),
            "time_taken": self.sets,
        }
