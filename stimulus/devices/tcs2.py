"""QST.Lab TCS II driver over serial (METHOD.md §6.1).

115200 8N1, ASCII commands without terminator, characters sent ~1 ms apart. On every connect:
`F` (quiet: stop the temperature stream), `Om<ceiling>` (the device's own maximum = our
effective ceiling, so the device refuses what we would refuse), `N<baseline>`. A delivery is
`S11111`, `V0xxxx`, `R0xxxx`, `D0xxxxx`, `C0xxx`, `L`, checked with `Q` before and after; any
fault sends `A`.

`D` on the TCS II is the stimulation time *including the rise* (the return follows), so
D = rise time + plateau. Every field is formatted by `format_field`, which clamps to the
field's legal range and asserts the width: a public MATLAB driver mapped >60 °C to 300 and
sent the malformed `C03000`; here such a value cannot be formatted.
"""

from __future__ import annotations

import logging
import math
import re
import time
from collections.abc import Callable
from typing import Any

from stimulus.devices.base import Ack, DeviceError, DeviceStatus, Stimulator
from stimulus.devices.limits import (
    ABSOLUTE_MAX_C,
    ABSOLUTE_MAX_RAMP_C_S,
    BASELINE_MAX_C,
    BASELINE_MIN_C,
    MAX_PLATEAU_ABOVE_BOUND_S,
    PLATEAU_BOUND_C,
    SafetyLimits,
)

BAUDRATE = 115200
ZONES_ALL = "11111"
# Legal field ranges from the firmware help text, in field units.
TEMP_FIELD = (100, 600)      # C, 0.1 °C
NEUTRAL_FIELD = (200, 400)   # N, 0.1 °C
SPEED_FIELD = (1, 9999)      # V/R, 0.1 °C/s
DURATION_FIELD = (1, 99999)  # D, ms
OM_FIELD = (100, 600)        # Om, 0.1 °C


def format_field(value: float, lo: int, hi: int, width: int) -> str:
    """Zero-padded decimal of `value` clamped to [lo, hi]; always exactly `width` digits.

    Non-finite values raise instead of being formatted: there is no safe number for NaN.
    """
    if not math.isfinite(value):
        raise DeviceError(f"tcs2: refusing to format non-finite value {value!r}")
    if len(str(hi)) > width:
        raise ValueError(f"field range {lo}..{hi} does not fit {width} digits")
    clamped = int(round(min(max(float(value), lo), hi)))  # clamp first: huge floats overflow int()
    text = f"{clamped:0{width}d}"
    assert len(text) == width and text.isdigit(), text
    return text


def tenths_ceiling(celsius: float) -> int:
    """Largest 0.1 °C step not above `celsius` (never rounds up past a limit)."""
    return int(math.floor(celsius * 10 + 1e-6))


class TCS2Stimulator(Stimulator):
    """TCS II on `port` (e.g. /dev/ttyACM0, COM3, or an emulator's pseudo-terminal)."""

    name = "tcs2"

    def __init__(self, port: str, limits: SafetyLimits | None = None, zones: str = ZONES_ALL,
                 char_delay_s: float = 0.001, timeout_s: float = 0.5,
                 serial_factory: Callable[..., Any] | None = None):
        super().__init__(limits)
        if len(zones) != 5 or set(zones) - {"0", "1"} or "1" not in zones:
            raise ValueError(f"zones must be 5 characters of 0/1 with at least one 1, got {zones!r}")
        self.port = port
        self.zones = zones
        self.char_delay_s = char_delay_s
        self.timeout_s = timeout_s
        self._serial_factory = serial_factory
        self._ser: Any = None
        self.sent: list[str] = []

    # -- low level -------------------------------------------------------------------------
    def _send(self, cmd: str) -> None:
        if self._ser is None:
            raise DeviceError("tcs2: not connected")
        self.sent.append(cmd)
        self._log("tx", cmd)
        try:
            for ch in cmd.encode("ascii"):
                self._ser.write(bytes((ch,)))
                if self.char_delay_s:
                    time.sleep(self.char_delay_s)
            self._ser.flush()
        except Exception as exc:  # serial.SerialException, OSError
            raise DeviceError(f"tcs2: write failed on {self.port}: {exc}") from exc

    def _query(self, cmd: str, pattern: str) -> re.Match:
        """Send `cmd` and read lines until one matches `pattern` (or time out)."""
        try:
            self._ser.reset_input_buffer()
        except Exception as exc:
            raise DeviceError(f"tcs2: cannot use {self.port}: {exc}") from exc
        self._send(cmd)
        deadline = time.monotonic() + self.timeout_s
        seen = []
        while time.monotonic() < deadline:
            try:
                line = self._ser.readline().decode("ascii", "replace").strip()
            except Exception as exc:
                raise DeviceError(f"tcs2: read failed on {self.port}: {exc}") from exc
            if line:
                self._log("rx", line)
                seen.append(line)
                m = re.search(pattern, line)
                if m:
                    return m
        raise DeviceError(f"tcs2: no valid answer to {cmd!r} within {self.timeout_s} s (got {seen!r})")

    def _errors(self) -> str:
        m = self._query("Q", r"(?<!\d)(\d{6})(?!\d)")
        return m.group(1)

    def _temperatures(self) -> tuple[float, ...]:
        m = self._query("E", r"([+-]?\d{3,4}(?:\s*[+,;\s]\s*[+-]?\d{3,4}){5})")
        values = re.findall(r"[+-]?\d{3,4}", m.group(1))
        return tuple(int(v) / 10.0 for v in values[-6:])

    # -- interface -------------------------------------------------------------------------
    def connect(self) -> None:
        with self._io_lock:
            self._close_port()
            factory = self._serial_factory
            if factory is None:
                import serial  # pyserial; imported here so other drivers do not need it

                factory = serial.Serial
            try:
                self._ser = factory(self.port, baudrate=BAUDRATE, bytesize=8, parity="N", stopbits=1,
                                    timeout=min(self.timeout_s, 0.1), write_timeout=self.timeout_s)
            except Exception as exc:
                raise DeviceError(f"tcs2: cannot open serial port {self.port!r}: {exc}") from exc
            self._send("F")
            time.sleep(0.02)  # let a line of the idle stream finish before flushing it
            self._send("Om" + format_field(tenths_ceiling(min(self.limits.max_temperature_c, ABSOLUTE_MAX_C)), *OM_FIELD, 3))
            self._send("N" + self._neutral_field())
            errors = self._errors()
            if errors.strip("0"):
                self._send("A")
                raise DeviceError(f"tcs2: device reports error state {errors} at connect", code=int(errors))

    def _neutral_field(self) -> str:
        b = min(max(self.limits.baseline_c, BASELINE_MIN_C), BASELINE_MAX_C)
        return format_field(b * 10, *NEUTRAL_FIELD, 3)

    def commands_for(self, level_c: float, duration_s: float) -> tuple[list[str], float, float]:
        """The exact command list for one stimulus, the level and plateau actually used.

        Clamps to every field's range and to the limits (ceiling, floor, plateau bounds).
        """
        lim = self.limits
        if not (math.isfinite(level_c) and math.isfinite(duration_s)):
            raise DeviceError(f"tcs2: refusing non-finite stimulus ({level_c!r} °C, {duration_s!r} s)")
        ceiling = tenths_ceiling(min(lim.max_temperature_c, ABSOLUTE_MAX_C))
        floor_ = max(int(math.ceil(lim.min_temperature_c * 10 - 1e-6)), TEMP_FIELD[0])
        c_field = format_field(min(max(level_c * 10, floor_), ceiling), *TEMP_FIELD, 3)
        level = int(c_field) / 10.0
        plateau = min(max(duration_s, 0.0), lim.max_plateau_s)
        if level > PLATEAU_BOUND_C:
            plateau = min(plateau, MAX_PLATEAU_ABOVE_BOUND_S)
        max_speed = ABSOLUTE_MAX_RAMP_C_S * 10
        v_field = format_field(min(lim.rise_rate_c_s * 10, max_speed), *SPEED_FIELD, 4)
        r_field = format_field(min(lim.return_rate_c_s * 10, max_speed), *SPEED_FIELD, 4)
        rise_s = abs(level - lim.baseline_c) / (int(v_field) / 10.0)
        # Round down: the hold time (D - rise) never exceeds the plateau that was checked.
        d_ms = int(math.floor((rise_s + plateau) * 1000))
        d_field = format_field(d_ms, *DURATION_FIELD, 5)
        cmds = ["S" + self.zones, "V0" + v_field, "R0" + r_field, "D0" + d_field, "C0" + c_field, "L"]
        return cmds, level, plateau

    def deliver(self, level_c: float, duration_s: float) -> Ack:
        gen = self._begin_delivery()
        cmds, level, plateau = self.commands_for(level_c, duration_s)
        onset = time.time()
        with self._io_lock:
            self._check_go(gen)
            errors = self._errors()
            if errors.strip("0"):
                self._send("A")
                raise DeviceError(f"tcs2: error state {errors} before stimulus", code=int(errors))
        for cmd in cmds:
            with self._io_lock:
                self._check_go(gen)
                if cmd == "L":
                    onset = time.time()
                self._send(cmd)
        with self._io_lock:
            errors = self._errors()
            if errors.strip("0"):
                self._send("A")
                raise DeviceError(f"tcs2: error state {errors} after start; aborted", code=int(errors))
        return Ack(self.name, float(level_c), level, plateau, onset, True, " ".join(cmds))

    def abort(self) -> None:
        self._mark_abort()
        with self._io_lock:
            if self._ser is not None:
                self._send("A")

    def baseline(self) -> None:
        with self._io_lock:
            self._send("A")
            self._send("N" + self._neutral_field())

    def status(self) -> DeviceStatus:
        with self._io_lock:
            temps = self._temperatures()
            errors = self._errors()
        bad = errors.strip("0")
        return DeviceStatus(temps, f"zone error state {errors}" if bad else "", int(errors), "")

    def _close_port(self) -> None:
        if self._ser is not None:
            try:
                self._ser.close()
            finally:
                self._ser = None

    def close(self) -> None:
        with self._io_lock:
            try:
                if self._ser is not None:
                    self._send("A")
                    self._send("N" + self._neutral_field())
            except DeviceError as exc:  # closing anyway; say that the device may not be at neutral
                logging.getLogger(__name__).warning("TCS II: abort/neutral on close failed: %s", exc)
            finally:
                self._close_port()
