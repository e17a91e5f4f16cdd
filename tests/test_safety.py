"""Safety: try to break every limit and check, at the emulated device, that none was exceeded.

Each test drives the real driver over a real pseudo-terminal (TCS II) or loopback TCP (Medoc)
into an emulator that records the bytes it received; assertions are on what reached the device,
not on the driver's return value. Time is a fake clock shared by guard and emulator, so ISI,
budget and watchdog timeouts are exact and no test sleeps on them.
"""

from __future__ import annotations

import csv
import math
import re
import threading
import time

import pytest

from runtime.config import StimulatorConfig, parse_config
from runtime.errors import ConfigError
from sim_scanner.emulators import MedocEmulator, MedocProgram, TCS2Emulator
from stimulus.devices import (
    DeviceError,
    SafetyGuard,
    SafetyLimits,
    SafetyViolation,
    StimulationAborted,
    Watchdog,
    build_guard,
)
from stimulus.devices import limits as L
from stimulus.devices.medoc import MedocStimulator
from stimulus.devices.tcs2 import TCS2Stimulator

WELL_FORMED = re.compile(r"^(F|L|A|Q|E|Om\d{3}|N\d{3}|S[01]{5}|V0\d{4}|R0\d{4}|D0\d{5}|C0\d{3})$")


class FakeClock:
    def __init__(self, t: float = 1000.0):
        self.t = t

    def __call__(self) -> float:
        return self.t

    def advance(self, s: float) -> None:
        self.t += s


@pytest.fixture
def clock():
    return FakeClock()


@pytest.fixture
def tcs(tmp_path, clock):
    """Guard → TCS II driver → pty → emulator; default limits (ceiling 50 °C)."""
    with TCS2Emulator(clock=clock) as emu:
        driver = TCS2Stimulator(emu.port, char_delay_s=0)
        guard = SafetyGuard(driver, SafetyLimits(), tmp_path / "device.tsv", clock=clock)
        guard.connect()
        yield guard, emu
        guard.close()


def _settle(emu: TCS2Emulator, n: int) -> None:
    """Wait until the emulator has parsed at least n commands (bytes are asynchronous)."""
    deadline = time.monotonic() + 5
    while len(emu.received) < n and time.monotonic() < deadline:
        time.sleep(0.002)


def _sync(driver: TCS2Stimulator, emu: TCS2Emulator) -> None:
    """Wait until every byte the driver wrote has been parsed by the emulator."""
    assert emu.wait_parsed(sum(len(c) for c in driver.sent))


def _assert_device_never_exceeded(emu: TCS2Emulator, ceiling: float = L.DEFAULT_MAX_C) -> None:
    assert emu.malformed() == [], "malformed command reached the device"
    assert all(WELL_FORMED.match(c) for c in emu.commands()), emu.commands()
    for c in emu.commands():
        if c.startswith("C0"):
            assert int(c[2:]) <= ceiling * 10
    assert emu.om_c <= ceiling
    for s in emu.stimuli:
        assert s.target_c <= ceiling and s.peak_c <= ceiling
        if s.target_c > L.PLATEAU_BOUND_C:
            assert s.plateau_s() <= L.MAX_PLATEAU_ABOVE_BOUND_S + 1e-9


HOSTILE_LEVELS = [50.05, 50.1, 52.0, 55.0, 60.0, 60.5, 99.9, 300.0, 3000.0, 1e9, 1e308, math.inf,
                  -math.inf, math.nan, -1e9, -5.0, 9.9, "46", None, True]


@pytest.mark.parametrize("level", HOSTILE_LEVELS, ids=repr)
def test_guard_refuses_hostile_temperature_and_nothing_is_started(tcs, level):
    guard, emu = tcs
    n_before = len(emu.commands(valid_only=False))
    with pytest.raises(SafetyViolation):
        guard.deliver(level, 1.0)
    _sync(guard.driver, emu)
    sent = emu.commands(valid_only=False)[n_before:]
    assert not any(c.startswith("C") or c == "L" for c in sent)
    assert "N320" in sent  # refusal re-asserts the baseline
    assert emu.stimuli == []
    assert [r[2] for r in guard.log.rows].count("refused") == 1
    _assert_device_never_exceeded(emu)


@pytest.mark.parametrize("duration", [math.nan, math.inf, -1.0, 0.0, 31.0, 1e12])
def test_guard_refuses_hostile_duration(tcs, duration):
    guard, emu = tcs
    with pytest.raises(SafetyViolation):
        guard.deliver(45.0, duration)
    assert emu.stimuli == []


@pytest.mark.parametrize("level", [55.0, 60.5, 99.9, 300.0, 1e9, 1e308, -1e9, -5.0, 0.0])
def test_driver_alone_clamps_every_field_at_the_device(level):
    """Even bypassing the guard, the driver cannot send a value above the ceiling or malformed."""
    with TCS2Emulator() as emu:
        d = TCS2Stimulator(emu.port, SafetyLimits(), char_delay_s=0)
        d.connect()
        ack = d.deliver(level, 1.0)
        d.close()
        _sync(d, emu)
    assert L.ABSOLUTE_MIN_C <= ack.level_c <= L.DEFAULT_MAX_C
    _assert_device_never_exceeded(emu)
    assert emu.stimuli[-1].requested_c <= L.DEFAULT_MAX_C  # clamped by us, not only by Om


@pytest.mark.parametrize("level", [math.nan, math.inf, -math.inf])
def test_driver_alone_refuses_non_finite_without_sending(level):
    with TCS2Emulator() as emu:
        d = TCS2Stimulator(emu.port, char_delay_s=0)
        d.connect()
        n = len(emu.received)
        with pytest.raises(DeviceError):
            d.deliver(level, 1.0)
        with pytest.raises(DeviceError):
            d.deliver(45.0, level)
        _sync(d, emu)
        assert emu.commands()[n:] == [] and emu.stimuli == []
        d.close()


def test_malformed_field_cannot_be_formatted():
    """The public MATLAB bug (>60 °C mapped to 300 → `C03000`) cannot happen here."""
    d = TCS2Stimulator("/dev/null")
    for level in [60.0, 60.5, 99.9, 299.9, 300.0, 1e6, -1e6, 0.05]:
        for dur in [0.001, 1.0, 2.0, 29.9, 30.0, 1e6, 0.0, -3.0]:
            cmds, lvl, plateau = d.commands_for(level, dur)
            assert all(WELL_FORMED.match(c) for c in cmds), cmds
            assert lvl <= d.limits.max_temperature_c
            if lvl > L.PLATEAU_BOUND_C:
                assert plateau <= L.MAX_PLATEAU_ABOVE_BOUND_S


def test_emulator_detects_the_malformed_matlab_field():
    """The device-side check can fail: `C03000` is seen as malformed by the emulator."""
    import serial

    with TCS2Emulator() as emu:
        ser = serial.Serial(emu.port, 115200, timeout=0.2)
        ser.write(b"C03000")
        _settle(emu, 2)
        ser.close()
        assert [r.text for r in emu.malformed()] == ["0"]
        with pytest.raises(AssertionError):
            _assert_device_never_exceeded(emu, ceiling=60)  # the stray byte is caught


def test_om_is_sent_on_every_connect(tcs):
    guard, emu = tcs
    assert emu.commands()[:3] == ["F", "Om500", "N320"]
    emu.power_cycle()  # device forgot everything: Om back to 60 °C
    assert emu.om_c == 60.0
    guard.connect()
    _sync(guard.driver, emu)
    assert emu.om_c == 50.0
    assert emu.commands()[-4:] == ["F", "Om500", "N320", "Q"]


def test_device_enforces_its_own_om_even_if_driver_limits_were_bypassed(clock):
    """Defence in depth: with Om set, even a C field above it is held at Om by the device."""
    import serial

    with TCS2Emulator(clock=clock) as emu:
        d = TCS2Stimulator(emu.port, SafetyLimits(max_temperature_c=45.0), char_delay_s=0)
        d.connect()
        d.close()
        ser = serial.Serial(emu.port, 115200, timeout=0.2)
        ser.write(b"C0500L")
        _settle(emu, 9)
        ser.close()
        assert emu.stimuli[-1].requested_c == 50.0 and emu.stimuli[-1].target_c == 45.0


def test_plateau_above_48_bounded(tcs, clock):
    guard, emu = tcs
    with pytest.raises(SafetyViolation, match="48"):
        guard.deliver(49.0, 2.5)
    assert emu.stimuli == []
    guard.deliver(49.0, 2.0)
    s = emu.stimuli[-1]
    assert s.target_c == 49.0 and 1.99 <= s.plateau_s() <= 2.0
    # Without the guard the driver still holds above 48 °C for at most 2 s.
    clock.advance(20)
    guard.driver.deliver(49.0, 25.0)
    assert emu.stimuli[-1].plateau_s() <= 2.0
    _assert_device_never_exceeded(emu)


def test_isi_too_short_refused(tcs, clock):
    guard, emu = tcs
    t0 = clock.t
    guard.deliver(46.0, 2.0)
    for dt in (3.0, 5.0, 9.99):
        clock.t = t0 + dt
        with pytest.raises(SafetyViolation, match="ISI"):
            guard.deliver(40.0, 2.0)
    clock.t = t0 + 10.0
    guard.deliver(40.0, 2.0)
    onsets = [s.onset for s in emu.stimuli]
    assert len(onsets) == 2 and onsets[1] - onsets[0] >= 10.0


def test_new_stimulus_refused_while_previous_still_running(tcs, clock):
    guard, emu = tcs
    guard.deliver(45.0, 20.0)  # ends after ~20.9 s
    clock.advance(12.0)  # ISI satisfied, stimulus not finished
    with pytest.raises(SafetyViolation, match="still running"):
        guard.deliver(40.0, 1.0)
    assert len([c for c in emu.commands() if c == "L"]) == 1


def test_budget_exhausted(tmp_path, clock):
    with TCS2Emulator(clock=clock) as emu:
        limits = SafetyLimits(budget_s=10.0)
        guard = SafetyGuard(TCS2Stimulator(emu.port, char_delay_s=0), limits, tmp_path / "d.tsv", clock=clock)
        guard.connect()
        delivered = 0
        with pytest.raises(SafetyViolation, match="budget"):
            for _ in range(10):
                guard.deliver(46.0, 2.0)
                delivered += 1
                clock.advance(15)
        assert delivered == 3  # each costs 0.4 + 2 + 0.4 s above 34 °C
        used_at_device = sum(s.seconds_above(limits.suprathreshold_c) for s in emu.stimuli)
        assert used_at_device <= limits.budget_s
        assert used_at_device == pytest.approx(guard.budget_used_s, abs=0.01)
        guard.start_run()  # a new run has a new budget
        guard.deliver(46.0, 2.0)
        guard.close()


@pytest.mark.parametrize("toml,key", [
    ("max_temperature_c = 55.0", "stimulator.max_temperature_c"),
    ("max_temperature_c = 52.1", "stimulator.max_temperature_c"),
    ("min_isi_s = 2.0", "stimulator.min_isi_s"),
    ("budget_s = 1000.0", "stimulator.budget_s"),
    ("high_c = 53.0", "stimulator.high_c"),
    ("high_c = 49.0\nmax_temperature_c = 48.0", "stimulator.high_c"),
    ("rise_rate_c_s = 500.0", "stimulator.rise_rate_c_s"),
    ("plateau_s = 60.0", "stimulator.plateau_s"),
    ("high_c = 49.0\nplateau_s = 3.0", "stimulator.plateau_s"),
    ("baseline_c = 45.0", "stimulator.baseline_c"),
])
def test_config_cannot_raise_a_limit(toml, key):
    with pytest.raises(ConfigError) as err:
        parse_config(f"[stimulator]\n{toml}\n", origin="s.toml")
    msg = str(err.value)
    assert "\n" not in msg and key in msg and msg.startswith("s.toml")


def test_config_boundaries_match_hard_constants():
    cfg = parse_config(f"[stimulator]\nmax_temperature_c = {L.ABSOLUTE_MAX_C}\nmin_isi_s = {L.HARD_MIN_ISI_S}\n"
                       f"budget_s = {L.ABSOLUTE_MAX_BUDGET_S}\nrise_rate_c_s = {L.ABSOLUTE_MAX_RAMP_C_S}\n")
    lim = SafetyLimits.from_config(cfg.stimulator)
    assert lim.max_temperature_c == L.ABSOLUTE_MAX_C and lim.min_isi_s == L.HARD_MIN_ISI_S
    assert SafetyLimits.from_config(StimulatorConfig()) == SafetyLimits()


@pytest.mark.parametrize("field,value", [
    ("max_temperature_c", 55.0), ("max_temperature_c", math.nan), ("max_temperature_c", math.inf),
    ("min_isi_s", 1.0), ("budget_s", 301.0), ("baseline_c", 41.0), ("rise_rate_c_s", 0.0),
    ("return_rate_c_s", 1000.0),
])
def test_limits_from_a_config_built_in_code_are_still_checked(field, value):
    """msgspec does not validate constructors: from_config must re-check everything."""
    cfg = StimulatorConfig(**{field: value})
    with pytest.raises(ConfigError) as err:
        SafetyLimits.from_config(cfg)
    assert f"stimulator.{field}" in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(ConfigError):
        SafetyLimits(**{field: value})


def test_lowered_ceiling_is_respected_everywhere(tmp_path, clock):
    with TCS2Emulator(clock=clock) as emu:
        cfg = parse_config(f"[stimulator]\nkind = 'tcs2'\nport = '{emu.port}'\nmax_temperature_c = 45.0\n"
                           "high_c = 44.0\n").stimulator
        guard = build_guard(cfg, tmp_path / "d.tsv", char_delay_s=0)
        guard.clock = clock
        guard.connect()
        assert emu.om_c == 45.0
        with pytest.raises(SafetyViolation):
            guard.deliver(46.0, 1.0)
        guard.deliver(45.0, 1.0)
        guard.close()
        _assert_device_never_exceeded(emu, ceiling=45.0)


def test_device_error_aborts_and_latches(tcs, clock):
    guard, emu = tcs
    emu.inject_zone_error(3)
    with pytest.raises(DeviceError):
        guard.deliver(46.0, 2.0)
    _sync(guard.driver, emu)
    assert "A" in emu.commands()[4:]
    assert emu.stimuli == []
    assert guard.tripped and "error" in guard.tripped
    emu.zone_errors = "000000"
    clock.advance(60)
    with pytest.raises(SafetyViolation, match="latched"):
        guard.deliver(40.0, 1.0)
    guard.rearm("test")
    guard.deliver(40.0, 1.0)
    assert len(emu.stimuli) == 1


def test_error_reported_after_start_aborts_the_running_stimulus(tcs):
    guard, emu = tcs
    original = emu._start

    def start_then_fail():
        original()
        emu.inject_zone_error(1)

    emu._start = start_then_fail
    with pytest.raises(DeviceError):
        guard.deliver(46.0, 2.0)
    _sync(guard.driver, emu)
    cmds = emu.commands()
    assert cmds.index("A", cmds.index("L")) > cmds.index("L")
    assert emu.stimuli[-1].aborted_at is not None


def test_abort_wins_against_a_delivery_in_flight(tmp_path):
    with TCS2Emulator() as emu:
        guard = SafetyGuard(TCS2Stimulator(emu.port, char_delay_s=0.004), SafetyLimits(), tmp_path / "d.tsv")
        guard.connect()
        outcome = []

        def run():
            try:
                outcome.append(guard.deliver(46.0, 2.0))
            except StimulationAborted as exc:
                outcome.append(exc)

        t = threading.Thread(target=run)
        t.start()
        deadline = time.monotonic() + 5
        while "S11111" not in emu.commands() and time.monotonic() < deadline:
            time.sleep(0.001)
        guard.panic()
        t.join(5)
        _sync(guard.driver, emu)
        cmds = emu.commands()
        last_abort = len(cmds) - 1 - cmds[::-1].index("A")
        assert "L" not in cmds[last_abort:], "a stimulus was started after the abort"
        assert outcome and guard.tripped == "panic"
        with pytest.raises(SafetyViolation):
            guard.deliver(40.0, 1.0)
        guard.close()


def test_every_command_and_ack_is_logged_with_timestamps(tcs, tmp_path):
    guard, emu = tcs
    guard.deliver(46.0, 2.0)
    with pytest.raises(SafetyViolation):
        guard.deliver(60.0, 2.0)
    guard.status()
    guard.close()
    _sync(guard.driver, emu)
    rows = list(csv.DictReader((tmp_path / "device.tsv").open(), delimiter="\t"))
    events = [r["event"] for r in rows]
    for ev in ("connect", "command", "tx", "rx", "ack", "refused", "status", "close"):
        assert ev in events, ev
    assert all(float(r["time_unix"]) > 1e9 and float(r["time_mono"]) > 0 for r in rows)
    tx = [r["detail"] for r in rows if r["event"] == "tx"]
    assert tx == emu.commands()  # every byte sequence that reached the device is in the log
    ack = next(r for r in rows if r["event"] == "ack")
    assert "C0460" in ack["detail"] and float(ack["level_c"]) == 46.0


# -- watchdog --------------------------------------------------------------------------------

def test_watchdog_trips_on_stall_only_after_2tr(tcs, clock):
    guard, emu = tcs
    dog = Watchdog(guard, timeout_s=4.0, clock=clock, device_poll_s=1e9)
    clock.advance(100)
    assert dog.check() is None  # not armed before the first feed (waiting for the scanner)
    dog.feed("trigger")
    clock.advance(3.9)
    assert dog.check() is None
    dog.feed("volume")
    clock.advance(3.9)
    assert dog.check() is None
    n = len(emu.received)
    clock.advance(0.2)
    reason = dog.check()
    assert reason and "stalled" in reason and "volume" in reason
    _sync(guard.driver, emu)
    assert emu.commands()[n:][:3] == ["A", "A", "N320"]  # abort, then baseline
    assert guard.tripped and "watchdog" in guard.tripped
    with pytest.raises(SafetyViolation):
        guard.deliver(40.0, 1.0)


def test_watchdog_trips_on_engine_or_display_death(clock):
    from stimulus.devices.simulated import SimulatedStimulator

    for kwargs, expected in (({"engine_alive": lambda: False}, "engine"),
                             ({"display_alive": lambda: 1 / 0}, "display")):
        sim = SimulatedStimulator(clock=clock)
        guard = SafetyGuard(sim, SafetyLimits(), None, clock=clock)
        guard.connect()
        dog = Watchdog(guard, 4.0, clock=clock, **kwargs)
        assert expected in dog.check()
        assert "abort" in sim.commands[-3:] and sim.commands[-1] == "baseline 32.0"
        assert guard.tripped


def test_watchdog_trips_on_device_error(tcs, clock):
    guard, emu = tcs
    dog = Watchdog(guard, 4.0, clock=clock, device_poll_s=1.0)
    assert dog.check() is None
    emu.inject_zone_error(2)
    clock.advance(1.0)
    assert "error" in dog.check()
    assert guard.tripped


def test_panic_aborts_at_once_even_when_already_tripped(clock):
    from stimulus.devices.simulated import SimulatedStimulator

    sim = SimulatedStimulator(clock=clock)
    guard = SafetyGuard(sim, SafetyLimits(), None, clock=clock)
    guard.connect()
    guard.deliver(46.0, 2.0)
    clock.advance(0.5)
    assert sim.temperature() > 40
    dog = Watchdog(guard, 4.0, clock=clock)
    dog.panic()
    assert sim.stimuli[-1].aborted_at == clock.t and guard.tripped == "watchdog: panic button"
    n = sim.commands.count("abort")
    dog.panic()
    assert sim.commands.count("abort") == n + 1


def test_watchdog_thread_returns_device_to_baseline_when_loop_stalls(tmp_path):
    with TCS2Emulator() as emu:
        guard = SafetyGuard(TCS2Stimulator(emu.port, char_delay_s=0), SafetyLimits(), tmp_path / "d.tsv")
        guard.connect()
        with Watchdog(guard, timeout_s=0.2, device_poll_s=0.05) as dog:
            dog.feed("trigger")
            assert dog.tripped_event.wait(10)
        _sync(guard.driver, emu)
        assert "A" in emu.commands()[4:]
        assert "stalled" in guard.tripped
        guard.close()


# -- Medoc -----------------------------------------------------------------------------------

@pytest.fixture
def medoc(tmp_path, clock):
    programs = {1: MedocProgram(46.0, 2.0, 8.0, 8.0), 2: MedocProgram(40.0, 2.0, 8.0, 8.0),
                3: MedocProgram(51.5, 2.0, 8.0, 8.0)}  # 3: defined hotter than it is configured
    with MedocEmulator(programs, pretest_s=0.0, clock=clock) as emu:
        driver = MedocStimulator("127.0.0.1", emu.port, {46.0: 1, 40.0: 2, 45.0: 3}, poll_s=0.001)
        guard = SafetyGuard(driver, SafetyLimits(), tmp_path / "medoc.tsv", clock=clock)
        guard.connect()
        yield guard, emu
        guard.close()


@pytest.mark.parametrize("level", [50.5, 55.0, 1e9, math.nan, -math.inf, 9.0])
def test_medoc_hostile_levels_never_trigger(medoc, level):
    guard, emu = medoc
    with pytest.raises(SafetyViolation):
        guard.deliver(level, 2.0)
    assert "TRIGGER" not in emu.command_names() and "SELECT_TP" not in emu.command_names()


def test_medoc_level_without_program_is_refused_before_any_command(medoc):
    guard, emu = medoc
    n = len(emu.requests)
    with pytest.raises(DeviceError, match="no test program"):
        guard.deliver(43.0, 2.0)
    assert "SELECT_TP" not in emu.command_names()[n:]
    assert "ABORT" in emu.command_names()[n:]  # the guard treats it as a fault


def test_medoc_program_hotter_than_configured_is_caught_by_readback(medoc, clock):
    guard, emu = medoc
    guard.deliver(45.0, 2.0)  # program 3 really heats to 51.5 °C
    clock.advance(2.3)  # 32 + 8 * 2.3 = 50.4 °C: within tolerance
    guard.status()
    assert guard.tripped is None
    clock.advance(0.1)  # 51.2 °C > 50 + 1
    guard.status()
    assert guard.tripped and "above the ceiling" in guard.tripped
    assert emu.command_names()[-1] in ("ABORT", "STATUS") and "ABORT" in emu.command_names()
    assert emu.stimuli[-1].aborted_at is not None and emu.stimuli[-1].peak_c < 51.5


def test_medoc_safety_error_aborts_and_watchdog_sees_it(medoc, clock):
    guard, emu = medoc
    emu.inject_result(16384)  # the next response: safety error, MMS drops to IDLE
    with pytest.raises(DeviceError) as err:
        guard.deliver(46.0, 2.0)
    assert err.value.safety
    assert "ABORT" in emu.command_names() and guard.tripped
    guard.rearm()
    emu.inject_result(16384, persistent=True)
    dog = Watchdog(guard, 4.0, clock=clock, device_poll_s=0)
    reason = dog.check()
    assert reason and "16384" in reason
    assert guard.tripped and "16384" in guard.tripped
