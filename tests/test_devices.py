"""Stimulator drivers: simulated thermode model, TCS II over a pty, Medoc over loopback TCP."""

from __future__ import annotations

import os
import struct
import time

import pytest

from runtime.config import parse_config
from runtime.errors import ConfigError
from sim_scanner.emulators import MedocEmulator, MedocProgram, TCS2Emulator
from stimulus.devices import DeviceError, SafetyGuard, SafetyLimits, build_stimulator
from stimulus.devices import medoc as M
from stimulus.devices.medoc import MedocStimulator, decode_response, encode_request
from stimulus.devices.simulated import SimulatedStimulator
from stimulus.devices.tcs2 import TCS2Stimulator, format_field


class FakeClock:
    def __init__(self, t: float = 50.0):
        self.t = t

    def __call__(self) -> float:
        return self.t

    def advance(self, s: float) -> None:
        self.t += s


# -- simulated -------------------------------------------------------------------------------

def test_simulated_models_ramp_plateau_return():
    clock = FakeClock()
    sim = SimulatedStimulator(SafetyLimits(rise_rate_c_s=10.0, return_rate_c_s=5.0), clock=clock)
    sim.connect()
    sim.deliver(46.0, 2.0)  # 1.4 s up, 2 s plateau, 2.8 s down
    samples = {}
    for t in (0.0, 0.7, 1.4, 3.0, 3.4, 4.8, 6.2, 7.0):
        samples[t] = sim.temperature(clock.t + t)
    assert samples[0.0] == 32.0 and samples[0.7] == pytest.approx(39.0)
    assert samples[1.4] == pytest.approx(46.0) and samples[3.0] == pytest.approx(46.0)
    assert samples[4.8] == pytest.approx(39.0) and samples[6.2] == pytest.approx(32.0)
    assert samples[7.0] == 32.0
    clock.advance(2.0)
    assert sim.status().state == "stimulating" and sim.status().temperatures_c == (46.0,)
    sim.abort()
    clock.advance(1.0)
    assert sim.temperature() == pytest.approx(41.0)  # returning at 5 °C/s from the abort
    clock.advance(10)
    assert sim.temperature() == 32.0 and sim.status().state == "idle"
    assert sim.peak_c() == pytest.approx(46.0)


def test_simulated_error_injection_reports_and_refuses():
    sim = SimulatedStimulator()
    sim.connect()
    sim.inject_error("probe disconnected")
    st = sim.status()
    assert not st.ok and "probe" in st.error
    with pytest.raises(DeviceError):
        sim.deliver(40.0, 1.0)


# -- TCS II ----------------------------------------------------------------------------------

def test_format_field():
    assert format_field(460, 100, 600, 3) == "460"
    assert format_field(3000, 100, 600, 3) == "600"
    assert format_field(5, 100, 600, 3) == "100"
    assert format_field(1467.4, 1, 99999, 5) == "01467"
    with pytest.raises(DeviceError):
        format_field(float("nan"), 1, 9, 1)
    with pytest.raises(ValueError):
        format_field(1, 1, 1000, 3)


def test_tcs2_connect_and_deliver_exact_protocol():
    clock = FakeClock()
    with TCS2Emulator(clock=clock) as emu:
        d = TCS2Stimulator(emu.port, SafetyLimits(), char_delay_s=0.001)
        assert d.char_delay_s == 0.001  # ~1 ms per character by default, as every driver does
        d.connect()
        assert emu.commands() == ["F", "Om500", "N320", "Q"]
        ack = d.deliver(46.0, 2.0)
        assert emu.commands()[4:] == ["Q", "S11111", "V00300", "R00300", "D002466", "C0460", "L", "Q"]
        assert ack.level_c == 46.0 and not ack.clamped and "C0460" in ack.detail
        s = emu.stimuli[-1]
        assert (s.target_c, s.speed_c_s, s.return_c_s, s.neutral_c) == (46.0, 30.0, 30.0, 32.0)
        assert 1.999 <= s.plateau_s() <= 2.0  # D includes the rise; hold time = requested plateau
        clock.advance(1.0)
        st = d.status()
        assert st.ok and st.temperatures_c[0] == 32.0 and st.temperatures_c[1:] == (46.0,) * 5
        d.close()
        deadline = time.monotonic() + 5  # bytes written at close are parsed asynchronously
        while emu.commands()[-2:] != ["A", "N320"] and time.monotonic() < deadline:
            time.sleep(0.005)
        assert emu.commands()[-2:] == ["A", "N320"]


def test_tcs2_zone_selection_and_bad_zones():
    with TCS2Emulator() as emu:
        d = TCS2Stimulator(emu.port, zones="10100", char_delay_s=0)
        d.connect()
        d.deliver(40.0, 1.0)
        assert "S10100" in emu.commands()
        st = d.status()
        assert st.temperatures_c[2] == 32.0 and st.temperatures_c[4] == 32.0
        d.close()
    with pytest.raises(ValueError):
        TCS2Stimulator("x", zones="00000")


def test_tcs2_connect_while_device_streams_temperatures():
    """Before `F` the device streams temperatures; queries must still find their answer."""
    with TCS2Emulator(stream_period_s=0.005) as emu:
        time.sleep(0.05)  # let the stream run before we connect
        d = TCS2Stimulator(emu.port, char_delay_s=0)
        d.connect()
        assert emu.quiet
        assert d.status().ok
        d.close()


def test_tcs2_silent_device_is_an_error():
    master, slave = os.openpty()
    try:
        d = TCS2Stimulator(os.ttyname(slave), char_delay_s=0, timeout_s=0.2)
        with pytest.raises(DeviceError, match="no valid answer"):
            d.connect()
    finally:
        os.close(master)
        os.close(slave)


def test_tcs2_missing_port_is_an_error():
    with pytest.raises(DeviceError, match="cannot open"):
        TCS2Stimulator("/dev/does-not-exist-tcs2").connect()


# -- Medoc -----------------------------------------------------------------------------------

def test_medoc_request_layout_both_byte_orders():
    big = encode_request(M.SELECT_TP, 5, "big", timestamp=0x01020304)
    assert big == b"\x00\x00\x00\x09" + b"\x04\x03\x02\x01" + b"\x01" + b"\x05\x00\x00\x00"
    little = encode_request(M.STATUS, None, "little", timestamp=7)
    assert little == b"\x05\x00\x00\x00" + b"\x07\x00\x00\x00" + b"\x00"
    with pytest.raises(ValueError):
        encode_request(M.STATUS, None, "middle")


def test_medoc_response_decoding():
    body = struct.pack("<IBBBHI", 9, M.STATUS, 2, 3, 0, 1500) + struct.pack("<hBBBB", 4612, 1, 0, 1, 0) + b"hi"
    r = decode_response(body)
    assert (r.system_state, r.test_state, r.test_time_ms, r.temperature_c, r.message) == (2, 3, 1500, 46.12, "hi")
    short = decode_response(struct.pack("<IBBBHI", 9, M.STATUS, 0, 0, 0, 0))
    assert short.temperature_c is None
    with pytest.raises(DeviceError):
        decode_response(b"\x00" * 12)


PROGRAMS = {1: MedocProgram(46.0, 2.0, 8.0, 8.0), 2: MedocProgram(40.0, 2.0, 8.0, 8.0)}


@pytest.mark.parametrize("order", ["big", "little"])
def test_medoc_workflow_select_start_pretest_trigger(order):
    clock = FakeClock()
    with MedocEmulator(PROGRAMS, pretest_s=1.0, clock=clock) as emu:
        d = MedocStimulator("127.0.0.1", emu.port, {46.0: 1, 40.0: 2}, byte_order=order, poll_s=0.001,
                            ready_timeout_s=5.0)
        d.connect()
        # Pre-test lasts 1 s of emulator time; advance it from the polling loop.
        real_command = d.command

        def command(cmd, param=None):
            r = real_command(cmd, param)
            if cmd == M.STATUS:
                clock.advance(0.3)
            return r

        d.command = command
        ack = d.deliver(46.0, 2.0)
        names = emu.command_names()
        assert names[:4] == ["STATUS", "STATUS", "SELECT_TP", "START"]
        assert names[-1] == "TRIGGER" and names.count("TRIGGER") == 1
        assert names[4:-1] == ["STATUS"] * (len(names) - 5) and len(names) - 5 >= 3  # polled through pre-test
        assert {r.byte_order for r in emu.requests} == {order}
        assert ack.level_c == 46.0 and "program=1" in ack.detail
        assert emu.stimuli[-1].program == 1
        clock.advance(1.0)
        st = d.status()
        assert st.temperatures_c == (pytest.approx(40.0),) and st.state == "TEST/RUNNING"
        # Same program again after the stimulus: no re-selection, just wait for READY and trigger.
        clock.advance(10)
        n = len(emu.requests)
        d.deliver(46.0, 2.0)
        assert "SELECT_TP" not in emu.command_names()[n:]
        # Another program: STOP, SELECT_TP, START.
        clock.advance(10)
        n = len(emu.requests)
        d.deliver(40.0, 2.0)
        assert [c for c in emu.command_names()[n:] if c != "STATUS"] == ["STOP", "SELECT_TP", "START", "TRIGGER"]
        assert emu.requests[-1].command == M.TRIGGER and emu.stimuli[-1].program == 2


def test_medoc_trigger_before_ready_is_rejected_not_lost_silently():
    clock = FakeClock()
    with MedocEmulator(PROGRAMS, pretest_s=5.0, clock=clock) as emu:
        d = MedocStimulator("127.0.0.1", emu.port, {46.0: 1})
        d.command(M.SELECT_TP, 1)
        d.command(M.START)
        with pytest.raises(DeviceError, match="illegal test state") as err:
            d.command(M.TRIGGER)
        assert err.value.code == 3 and emu.stimuli == []


def test_medoc_byte_order_mismatch_is_detected():
    with MedocEmulator(PROGRAMS, byte_order="big") as emu:
        d = MedocStimulator("127.0.0.1", emu.port, {46.0: 1}, byte_order="little", timeout_s=0.5)
        with pytest.raises(DeviceError):
            d.connect()
        assert emu.requests == [] and emu.rejected_frames >= 1


def test_medoc_unreachable_is_an_error():
    with MedocEmulator(PROGRAMS) as emu:
        port = emu.port
    with pytest.raises(DeviceError):
        MedocStimulator("127.0.0.1", port, {46.0: 1}, timeout_s=0.5).connect()


def test_medoc_safety_warning_is_logged_not_fatal():
    with MedocEmulator(PROGRAMS) as emu:
        d = MedocStimulator("127.0.0.1", emu.port, {46.0: 1})
        emu.inject_result(M.RESULT_SAFETY_WARNING)
        d.command(M.STATUS)
        assert d.warnings and "8192" in d.warnings[0]


# -- build_stimulator ------------------------------------------------------------------------

def test_build_stimulator_from_config(tmp_path):
    sim = build_stimulator(parse_config("[stimulator]\nkind = 'simulated'\nmax_temperature_c = 48.0\n").stimulator)
    assert isinstance(sim, SimulatedStimulator) and sim.limits.max_temperature_c == 48.0
    med = build_stimulator(parse_config(
        "[stimulator]\nkind = 'medoc'\ntcp_port = 5000\nmedoc_byte_order = 'little'\nmedoc_program_high = 7\n").stimulator)
    assert isinstance(med, MedocStimulator) and med.byte_order == "little" and med.programs == {46.0: 7, 40.0: 2}
    tcs = build_stimulator(parse_config("[stimulator]\nkind = 'tcs2'\nport = '/dev/ttyACM0'\n").stimulator)
    assert isinstance(tcs, TCS2Stimulator) and tcs.port == "/dev/ttyACM0"
    with pytest.raises(ConfigError, match="stimulator.kind"):
        build_stimulator(parse_config("").stimulator)
    with pytest.raises(ConfigError, match="stimulator.port"):
        build_stimulator(parse_config("[stimulator]\nkind = 'tcs2'\n").stimulator)


def test_guard_imposes_its_limits_on_the_driver():
    d = SimulatedStimulator(SafetyLimits(max_temperature_c=52.0))
    g = SafetyGuard(d, SafetyLimits(max_temperature_c=47.0))
    assert d.limits.max_temperature_c == 47.0 and g.limits is d.limits
