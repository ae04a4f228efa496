"""firmware.store: SPEC §4 counter reservation, downlink window and command memory, totals."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from firmware import store as st_mod
from firmware.store import CounterExhausted, StorageError, Store
from protocol.frame import ACCEPT, DUPLICATE, MAX_COUNTER, STALE
from simulator.hal_sim import SimHAL, StepClock


class Flash:
    """A SimHAL storage dict plus what a board would see: the order of writes."""

    def __init__(self):
        self.clock = StepClock()
        self.storage: dict[str, bytes] = {}

    def boot(self) -> tuple[SimHAL, Store]:
        hal = SimHAL(self.clock, storage=self.storage)
        s = Store(hal)
        s.open()
        return hal, s

    def reserved(self) -> int:
        return int.from_bytes(self.storage["fc"][:-4], "big")


def test_reserve_before_first_use_and_write_rarely():
    f = Flash()
    hal, s = f.boot()
    assert f.reserved() == 256 and hal.writes == {"fc": 1}
    used = []
    for _ in range(1000):
        c = s.next_uplink()
        assert c < f.reserved()  # every counter used is below a value already on flash
        used.append(c)
    assert used == list(range(1000))
    assert hal.writes["fc"] == 4  # 256, 512, 768, 1024: one write per 256 frames


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(0, 700), min_size=1, max_size=12))
def test_reboots_at_any_point_never_reuse_a_counter(sends_per_boot):
    f = Flash()
    used: list[int] = []
    for n in sends_per_boot:
        _, s = f.boot()
        for _ in range(n):
            c = s.next_uplink()
            assert c < f.reserved()
            used.append(c)
    assert len(used) == len(set(used))
    assert used == sorted(used)
    # at most R-1 skipped per reboot
    assert f.reserved() <= sum(sends_per_boot) + 256 * len(sends_per_boot) + 256


def test_failed_reservation_stops_sending_instead_of_risking_reuse():
    f = Flash()
    hal, s = f.boot()
    for _ in range(256):
        s.next_uplink()
    hal.fail_saves = 1
    with pytest.raises(StorageError):
        s.next_uplink()
    assert f.reserved() == 256
    assert s.next_uplink() == 256  # the retry reserves and goes on
    assert f.reserved() == 512


def test_write_that_does_not_read_back_is_an_error():
    f = Flash()
    hal, s = f.boot()
    real_load = hal.load
    hal.load = lambda key: b"\x00" * 12 if key == "fc" else real_load(key)  # a stuck flash page
    for _ in range(256):
        s.next_uplink()
    with pytest.raises(StorageError, match="read back"):
        s.next_uplink()


def test_first_boot_cannot_send_when_flash_refuses_writes():
    clock = StepClock()
    hal = SimHAL(clock)
    hal.fail_saves = 10
    s = Store(hal)
    with pytest.raises(StorageError):
        s.open()
    with pytest.raises(StorageError):
        s.next_uplink()


def test_corrupted_counter_record_is_not_trusted():
    f = Flash()
    f.boot()
    rec = bytearray(f.storage["fc"])
    rec[3] ^= 0x01
    f.storage["fc"] = bytes(rec)
    with pytest.raises(StorageError, match="corrupted"):
        f.boot()


def test_counter_exhaustion():
    f = Flash()
    f.storage["fc"] = st_mod._seal((MAX_COUNTER - 1).to_bytes(8, "big"))
    _, s = f.boot()
    assert f.reserved() == MAX_COUNTER + 1  # capped
    assert s.next_uplink() == MAX_COUNTER - 1
    assert s.next_uplink() == MAX_COUNTER
    with pytest.raises(CounterExhausted):
        s.next_uplink()
    with pytest.raises(CounterExhausted):
        f.boot()[1].next_uplink()


def test_downlink_window_after_reboot_is_stricter_never_looser():
    f = Flash()
    _, s = f.boot()
    assert s.window.check(0) == ACCEPT
    for c in (5, 9, 7):
        s.accept_downlink(c)
    assert s.window.check(6) == ACCEPT  # inside the window, not seen yet
    _, s2 = f.boot()
    assert s2.window.top == 9
    assert s2.window.check(6) == DUPLICATE  # every bit counts as seen after a reboot
    assert s2.window.check(9) == DUPLICATE
    assert s2.window.check(10) == ACCEPT
    s2.accept_downlink(100)
    assert f.boot()[1].window.check(60) == STALE


def test_command_results_survive_a_reboot_and_are_bounded():
    f = Flash()
    _, s = f.boot()
    s.accept_downlink(1)
    for cid in range(10, 16):
        s.record_command(cid, 0, cid * -7)
    _, s2 = f.boot()
    assert s2.command_result(15) == (0, -105)
    assert s2.command_result(12) == (0, -84)
    assert s2.command_result(11) is None  # only the last _CMD_MEMORY are kept
    assert s2.window.top == 1


def test_corrupted_side_records_are_dropped_and_counted():
    f = Flash()
    hal, s = f.boot()
    s.accept_downlink(3)
    s.put("wh", 10)
    s.flush(force=True)
    for key in ("dl", "tot"):
        f.storage[key] = b"garbage!"
    _, s2 = f.boot()
    assert s2.faults == 2
    assert s2.get("wh") == 0 and s2.window.top == -1
    assert s2.next_uplink() == 256  # the counter is unaffected


def test_totals_written_at_most_hourly_unless_forced():
    async def main():
        f = Flash()
        hal, s = f.boot()
        s.put("wh", 5)
        assert s.add("wh", 3) == 8
        assert not s.flush()
        await f.clock.run_for(st_mod.TOTALS_FLUSH_MS - 1)
        assert not s.flush() and "tot" not in f.storage
        await f.clock.run_for(1)
        assert s.flush()
        assert not s.flush()  # nothing changed since
        s.add("vol", 7)
        assert s.flush(force=True)
        assert json.loads(f.storage["tot"][:-4]) == {"wh": 8, "vol": 7}
        _, s2 = f.boot()
        assert s2.get("wh") == 8 and s2.get("vol") == 7 and s2.get("bh", 42) == 42

    import asyncio

    asyncio.run(main())


def test_settings_over_the_air_persist():
    f = Flash()
    _, s = f.boot()
    s.set_setting(0, 300)
    s.set_setting(1, 3600)
    s.set_setting(0, 600)
    assert sorted(f.boot()[1].settings()) == [(0, 600), (1, 3600)]


def test_repr_is_short_and_safe():
    _, s = Flash().boot()
    assert repr(s) == "Store(next=0, reserved=256, downlink top=-1)"


# -- issue 20: counters never restart under a key; windows persisted before acting -----------------

KEY_A = b"\xaa" * 8  # config.key_id of two root keys
KEY_B = b"\xbb" * 8


class FlakyHAL(SimHAL):
    """A SimHAL whose next reads of some keys fail with an I/O error (not "no such record")."""

    def __init__(self, *a, fail_loads=(), **kw):
        super().__init__(*a, **kw)
        self.fail_loads = set(fail_loads)

    def load(self, key):
        if key in self.fail_loads:
            raise OSError(5, "EIO")
        return super().load(key)


def test_an_io_error_reading_the_counter_never_restarts_it_at_0():
    f = Flash()
    _, s = f.boot()
    for _ in range(300):
        s.next_uplink()
    hal = FlakyHAL(f.clock, storage=f.storage, fail_loads=("fc",))
    s2 = Store(hal)
    with pytest.raises(StorageError):
        s2.open()
    assert not s2.opened and s2.faults == 1 and f.reserved() == 512  # nothing written
    with pytest.raises(StorageError):
        s2.next_uplink()
    with pytest.raises(StorageError):  # and no downlink either (SPEC §4)
        s2.accept_downlink(1)
    hal.fail_loads.clear()  # the flash recovers: the counter goes on
    s2.open()
    assert s2.next_uplink() == 512


def test_counter_state_is_tied_to_the_key():
    f = Flash()
    hal = SimHAL(f.clock, storage=f.storage)
    s = Store(hal, key_id=KEY_A, fresh=True)
    s.open()
    for _ in range(300):
        s.next_uplink()
    s.accept_downlink(40)
    assert f.storage["fc"][8:16] == KEY_A  # the key's id, beside the counter (never the key)
    # the same key, no longer marked fresh: continues
    s2 = Store(SimHAL(f.clock, storage=f.storage), key_id=KEY_A, fresh=False)
    s2.open()
    assert s2.next_uplink() == 512 and s2.window.top == 40
    # another key's state is no state for this one: not fresh -> refuses, writes nothing
    before = dict(f.storage)
    s3 = Store(SimHAL(f.clock, storage=f.storage), key_id=KEY_B, fresh=False)
    with pytest.raises(st_mod.NeedsRekey):
        s3.open()
    assert f.storage == before and not s3.opened
    # a fresh key over it: starts at 0, without the old key's downlink window
    s4 = Store(SimHAL(f.clock, storage=f.storage), key_id=KEY_B, fresh=True)
    s4.open()
    assert s4.next_uplink() == 0 and s4.window.top == -1 and s4.window.check(0) == ACCEPT


def test_erased_state_for_a_used_key_needs_a_rekey():
    # `flash --erase`, or config.json moved to a replacement board: no state at all
    s = Store(SimHAL(StepClock(), storage={}), key_id=KEY_A, fresh=False)
    with pytest.raises(st_mod.NeedsRekey):
        s.open()
    with pytest.raises(StorageError):
        s.next_uplink()


def test_a_counter_record_from_before_the_key_id_is_adopted():
    f = Flash()
    _, s = f.boot()  # Store(hal): 8-byte record, the format of before
    for _ in range(10):
        s.next_uplink()
    s2 = Store(SimHAL(f.clock, storage=f.storage), key_id=KEY_A, fresh=False)
    s2.open()
    assert s2.next_uplink() == 256 and f.storage["fc"][8:16] == KEY_A


def test_a_failed_window_write_changes_nothing_in_ram():
    f = Flash()
    hal, s = f.boot()
    s.accept_downlink(5, 3)
    hal.fail_saves = 1
    with pytest.raises(StorageError):
        s.accept_downlink(6, 4)
    assert s.window.check(6) == ACCEPT and s.cmd_mark == 3  # not consumed: the retry is taken
    s.accept_downlink(6, 4)
    assert s.window.top == 6 and s.cmd_mark == 4


def test_command_id_mark_persists_and_refuses_forgotten_old_ids():
    f = Flash()
    _, s = f.boot()
    for n, cid in enumerate(range(1, 6)):
        s.accept_downlink(n, cid)
        s.record_command(cid, 0, cid)
    assert s.cmd_mark == 5
    assert s.command_result(1) is None and s.stale_command(1)  # forgotten, older than the mark
    assert not s.stale_command(5) and s.command_result(5) == (0, 5)  # remembered: answered again
    assert not s.stale_command(6)
    _, s2 = f.boot()
    assert s2.cmd_mark == 5 and s2.stale_command(1) and not s2.stale_command(6)


def test_an_io_error_reading_the_window_is_not_an_empty_window():
    f = Flash()
    _, s = f.boot()
    s.accept_downlink(40)
    hal = FlakyHAL(f.clock, storage=f.storage, fail_loads=("dl",))
    s2 = Store(hal)
    with pytest.raises(StorageError):
        s2.open()
    assert not s2.opened  # no downlink accepted against an empty window
    hal.fail_loads.clear()
    s2.open()
    assert s2.window.top == 40 and s2.window.check(30) != ACCEPT
