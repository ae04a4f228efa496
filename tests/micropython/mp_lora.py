# Time on air, EU868 limits and the duty-cycle accountant, inside real MicroPython.
# Hand-computed values: see tests/test_lora.py for the arithmetic.
from protocol import lora


def _raises(fn, *args, **kwargs):
    try:
        fn(*args, **kwargs)
    except ValueError:
        return True
    return False


def test_airtime_published_values():
    # Exact integers in us: no float drift even where floats are 32-bit.
    assert lora.airtime_us(51, 12) == 2465792  # Semtech calculator: 2465.79 ms
    assert lora.airtime_us(51, 7) == 102656
    assert lora.airtime_us(64, 7) == 118016  # TTN calculator, 51 B + 13 B LoRaWAN
    assert abs(lora.airtime_ms(51, 12) - 2465.792) < 0.01
    assert abs(lora.airtime_ms(51, 7) - 102.656) < 0.001


def test_ldro_and_arguments():
    assert lora.airtime_us(51, 11) == lora.airtime_us(51, 11, ldro=True)
    assert lora.airtime_us(51, 10) == lora.airtime_us(51, 10, ldro=False)
    assert lora.airtime_us(10, 6, explicit_header=False) == 20608
    assert _raises(lora.airtime_ms, 10, 6)
    assert _raises(lora.airtime_ms, 10, 13)
    assert _raises(lora.airtime_ms, 256, 7)
    assert _raises(lora.airtime_ms, 10, 7, 62500)
    assert _raises(lora.airtime_ms, 10, 7, 125000, 9)


def test_eu868():
    assert lora.band_name(lora.band_for(868100000)) == "g1"
    assert lora.band_name(lora.band_for(lora.RX2_FREQ_HZ)) == "g3"
    assert _raises(lora.band_for, 869650000)
    assert _raises(lora.band_for, 868650000)
    assert [lora.max_payload(sf) for sf in range(7, 13)] == [222, 222, 115, 51, 51, 51]


def test_duty_cycle():
    dc = lora.DutyCycle()
    dc.record(0, 1000, 868100000)
    assert dc.wait_ms(1000, 868300000) == 99000
    assert dc.wait_ms(100000, 2) == 0
    dc.record(0, 1000, lora.RX2_FREQ_HZ)
    assert dc.wait_ms(1000, 4) == 9000
    assert dc.wait_ms(1000, 3) == 0
    assert not dc.may_send(0, 52, 12, 3)
    assert dc.may_send(0, 51, 12, 3)
    # an obedient sender on g1 over a simulated day stays within 1 %
    dc = lora.DutyCycle()
    t = lora.airtime_ms(51, 12)
    now = 0
    while now < 86400000:
        now += dc.wait_ms(now, 2)
        dc.record(now, t, 2)
        now += 1
    assert dc.used_ms(2) <= 0.01 * (now + 100 * t)
    assert dc.used_ms(2) >= 0.0099 * 86400000
