"""Device emulators, driven with raw bytes (not through our drivers): parsing, state, physics."""

from __future__ import annotations

import socket
import struct
import time

import pytest
import serial

from sim_scanner.emulators import MedocEmulator, MedocProgram, TCS2Emulator
from sim_scanner.emulators.tcs2_emulator import EmulatedStimulus


class FakeClock:
    def __init__(self, t: float = 10.0):
        self.t = t

    def __call__(self) -> float:
        return self.t


def _wait(cond, timeout=5.0):
    deadline = time.monotonic() + timeout
    while not cond() and time.monotonic() < deadline:
        time.sleep(0.002)
    return cond()


@pytest.fixture
def tcs_raw():
    clock = FakeClock()
    with TCS2Emulator(clock=clock) as emu:
        ser = serial.Serial(emu.port, 115200, timeout=0.5)
        yield emu, ser, clock
        ser.close()


def test_tcs2_emulator_parses_unterminated_fixed_width_commands(tcs_raw):
    emu, ser, _ = tcs_raw
    ser.write(b"FN300S10000C0455V01000R00500D002000Ose")
    assert _wait(lambda: len(emu.received) == 8)
    assert emu.commands() == ["F", "N300", "S10000", "C0455", "V01000", "R00500", "D002000", "Ose"]
    assert emu.malformed() == [] and emu.quiet and emu.neutral_c == 30.0
    assert emu.s.target[0] == 455 and emu.s.speed[0] == 1000 and emu.s.duration[0] == 2000


def test_tcs2_emulator_answers_queries(tcs_raw):
    emu, ser, _ = tcs_raw
    ser.write(b"F")
    assert _wait(lambda: emu.quiet)
    ser.reset_input_buffer()
    ser.write(b"E")
    assert ser.readline() == b"320+320+320+320+320+320\r\n"
    ser.write(b"Oe")
    assert ser.readline() == b"3200+3200+3200+3200+3200+3200\r\n"
    ser.write(b"Q")
    assert ser.readline() == b"000000\r\n"
    emu.inject_zone_error(4)
    ser.write(b"Q")
    assert ser.readline() == b"000020\r\n"
    ser.write(b"?")
    assert ser.readline() == b"TCS\r\n"


def test_tcs2_emulator_records_a_query_before_answering_it(tcs_raw):
    """A reader holding the answer must find the command already recorded (was a CI race)."""
    emu, ser, _ = tcs_raw
    ser.write(b"F")
    assert _wait(lambda: emu.quiet)
    ser.reset_input_buffer()
    for i in range(200):
        ser.write(b"Q")
        assert ser.readline() == b"000000\r\n"
        assert len(emu.received) == i + 2, f"query {i} answered before it was recorded"


def test_tcs2_emulator_streams_until_quiet():
    with TCS2Emulator(stream_period_s=0.01) as emu:
        ser = serial.Serial(emu.port, 115200, timeout=0.5)
        assert ser.readline().endswith(b"\r\n")
        ser.write(b"F")
        assert _wait(lambda: emu.quiet)
        time.sleep(0.05)
        ser.reset_input_buffer()
        time.sleep(0.05)
        assert ser.in_waiting == 0
        ser.close()


@pytest.mark.parametrize("raw,bad", [
    (b"C03000", ["0"]),        # the MATLAB driver bug: a 4-digit temperature
    (b"C0700", ["C0700"]),     # outside 100..600
    (b"N500", ["N500"]),       # neutral outside 200..400
    (b"C9450", ["C9450"]),     # no zone 9
    (b"V0abcd", ["V0abcd"]),
    (b"S12000", ["S12000"]),
    (b"W", ["W"]),             # unknown command
    (b"Om999", ["Om999"]),
])
def test_tcs2_emulator_flags_malformed_commands(tcs_raw, raw, bad):
    emu, ser, _ = tcs_raw
    ser.write(raw)
    assert _wait(lambda: len(emu.malformed()) == len(bad))
    time.sleep(0.02)
    assert [r.text for r in emu.malformed()] == bad
    assert emu.stimuli == [] and emu.s.om == 600 and emu.s.neutral == 320


def test_tcs2_emulator_enforces_om_and_resets_on_oc(tcs_raw):
    emu, ser, _ = tcs_raw
    assert emu.om_c == 60.0  # power-on maximum
    ser.write(b"Om420C0500L")
    assert _wait(lambda: len(emu.stimuli) == 1)
    assert emu.stimuli[0].requested_c == 50.0 and emu.stimuli[0].target_c == 42.0
    ser.write(b"Oc")
    assert _wait(lambda: emu.resets == 1)
    assert emu.om_c == 60.0 and not emu.quiet


def test_tcs2_emulator_temperature_and_abort(tcs_raw):
    emu, ser, clock = tcs_raw
    ser.write(b"C0460V00100R00050D003000L")  # 10 °C/s up for 3 s total, 5 °C/s back
    assert _wait(lambda: len(emu.stimuli) == 1)
    s = emu.stimuli[0]
    assert s.temperature(0.7) == pytest.approx(39.0)
    assert s.temperature(1.4) == pytest.approx(46.0) and s.temperature(3.0) == pytest.approx(46.0)
    assert s.temperature(3.0 + 2.8) == pytest.approx(32.0)
    assert s.plateau_s() == pytest.approx(1.6) and s.peak_c == 46.0
    assert s.seconds_above(39.0) == pytest.approx(0.7 + 1.6 + 1.4)
    clock.t += 1.0
    ser.write(b"A")
    assert _wait(lambda: s.aborted_at is not None)
    assert s.peak_c == pytest.approx(42.0) and s.plateau_s() == 0.0
    assert emu.temperature(clock.t + 2.0) == pytest.approx(32.0)


def test_emulated_stimulus_short_duration_never_reaches_target():
    s = EmulatedStimulus(0.0, 32.0, 50.0, 50.0, 10.0, 10.0, 1000)
    assert s.peak_c == pytest.approx(42.0) and s.plateau_s() == 0.0


# -- Medoc -----------------------------------------------------------------------------------

def _request(port: int, cmd: int, param: int | None = None, order: str = ">") -> tuple:
    body = struct.pack("<IB", 1234, cmd) + (b"" if param is None else struct.pack("<I", param))
    with socket.create_connection(("127.0.0.1", port), timeout=2) as s:
        s.sendall(struct.pack(order + "I", len(body)) + body)
        head = s.recv(4, socket.MSG_WAITALL)
        (length,) = struct.unpack(order + "I", head)
        data = s.recv(length, socket.MSG_WAITALL)
    ts, c, system, test, result, test_time = struct.unpack_from("<IBBBHI", data)
    temp = struct.unpack_from("<h", data, 13)[0] / 100
    assert ts == 1234 and c == cmd
    return system, test, result, test_time, temp


PROGRAMS = {1: MedocProgram(46.0, 2.0, 8.0, 8.0), 9: MedocProgram(56.0, 1.0)}


@pytest.mark.parametrize("order", [">", "<"])
def test_medoc_emulator_state_machine(order):
    clock = FakeClock()
    with MedocEmulator(PROGRAMS, pretest_s=2.0, clock=clock) as emu:
        p = emu.port
        assert _request(p, 0, order=order)[:3] == (0, 0, 0)      # IDLE
        assert _request(p, 4, order=order)[2] == 2                # TRIGGER in IDLE: illegal state
        assert _request(p, 2, order=order)[2] == 2                # START without a program
        assert _request(p, 1, 77, order=order)[2] == 1            # unknown program: illegal arg
        assert _request(p, 1, 1, order=order)[:3] == (1, 0, 0)    # READY
        assert _request(p, 2, order=order)[:3] == (2, 1, 0)       # TEST, pre-test RUNNING
        assert _request(p, 4, order=order)[2] == 3                # trigger during pre-test: lost
        assert emu.stimuli == []
        clock.t += 2.0
        assert _request(p, 0, order=order)[:2] == (2, 3)          # test READY
        assert _request(p, 4, order=order)[:3] == (2, 1, 0)       # TRIGGER accepted
        clock.t += 1.5                                            # 32 + 8 * 1.5 = 44 °C
        system, test, result, test_time, temp = _request(p, 0, order=order)
        assert temp == pytest.approx(44.0) and test_time == 3500
        clock.t += 10.0
        assert _request(p, 0, order=order)[:2] == (2, 3)          # back to READY after the stimulus
        assert _request(p, 5, order=order)[:3] == (1, 0, 0)       # STOP -> READY
        assert _request(p, 6, order=order)[:3] == (0, 0, 0)       # ABORT -> IDLE
        expected = "big" if order == ">" else "little"
        assert {r.byte_order for r in emu.requests} == {expected}


def test_medoc_emulator_limiter_gives_safety_error():
    with MedocEmulator(PROGRAMS, limiter_max_c=55.0) as emu:
        _request(emu.port, 1, 9)
        system, test, result, _, _ = _request(emu.port, 2)
        assert result == 16384 and (system, test) == (0, 0)
        assert emu.stimuli == []


def test_medoc_emulator_rejects_wrong_byte_order_when_fixed():
    with MedocEmulator(PROGRAMS, byte_order="little") as emu:
        with pytest.raises((OSError, struct.error)):
            _request(emu.port, 0, order=">")
        assert _wait(lambda: emu.rejected_frames == 1)
        assert emu.requests == []
