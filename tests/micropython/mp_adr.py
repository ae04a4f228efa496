# ADR's node side under real MicroPython (SPEC §5 "ADR", firmware/runtime.py): a CONFIG that
# changes SF / TX power is on trial until a downlink is heard; after 6 uplinks without one the
# node steps back by itself, and a reboot on trial comes back to what worked. Node code from .mpy.
import mpnode
from protocol import messages as m

MPY = True
S = 1000


async def _changed(clock, node, gw, settings):
    gw.pending.append((m.CONFIG, {0: settings}))
    for _ in range(3600):
        if node.radio.sf == settings[m.CFG_SF]:
            return node.tx
        await clock.run_for(S)
    raise AssertionError("the CONFIG was never applied")


async def test_steps_back_after_six_uplinks_without_a_downlink():
    clock = mpnode.new_clock()
    storage = {}
    hal, node, gw, tasks, _ = mpnode.start_node(clock, "lighting", storage=storage)
    await clock.run_for(60 * S)
    tx0 = await _changed(clock, node, gw, {m.CFG_REPORT_INTERVAL: 60, m.CFG_SF: 7, m.CFG_TX_POWER: 8})
    assert (node.radio.sf, node.radio.tx_power) == (7, 8)
    for _ in range(3600):
        if node.radio.sf != 7:
            break
        await clock.run_for(S)
    assert (node.radio.sf, node.radio.tx_power) == (9, 14), (node.radio.sf, node.radio.tx_power)
    assert node.tx - tx0 == 6, node.tx - tx0
    mpnode.stop(hal, tasks)
    hal, node, gw, tasks, _ = mpnode.start_node(clock, "lighting", storage=storage)
    await clock.run_for(S)
    assert node.radio.sf == 9
    mpnode.stop(hal, tasks)


async def test_a_downlink_heard_keeps_the_change_across_a_reboot():
    clock = mpnode.new_clock()
    storage = {}
    hal, node, gw, tasks, _ = mpnode.start_node(clock, "lighting", storage=storage)
    await clock.run_for(60 * S)
    await _changed(clock, node, gw, {m.CFG_REPORT_INTERVAL: 60, m.CFG_SF: 8})
    gw.pending.append((m.CONFIG, {0: {m.CFG_STATUS_INTERVAL: 3600}}))  # any downlink confirms
    await clock.run_for(15 * 60 * S)
    assert node.radio.sf == 8
    mpnode.stop(hal, tasks)
    hal, node, gw, tasks, _ = mpnode.start_node(clock, "lighting", storage=storage)
    await clock.run_for(S)
    assert node.radio.sf == 8
    mpnode.stop(hal, tasks)
