"""In-memory thermode: models ramp, plateau and return over (injectable) time.

Used by `decnef run --simulate` and by tests that exercise the guard without I/O. It keeps a
record of every stimulus and can be told to fail, so fault handling is testable.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from stimulus.devices import thermal
from stimulus.devices.base import Ack, DeviceError, DeviceStatus, Stimulator
from stimulus.devices.limits import SafetyLimits


@dataclass
class SimulatedStimulus:
    onset: float
    level_c: float
    duration_s: float
    profile: np.ndarray
    aborted_at: float | None = None


class SimulatedStimulator(Stimulator):
    name = "simulated"

    def __init__(self, limits: SafetyLimits | None = None, clock: Callable[[], float] = time.monotonic):
        super().__init__(limits)
        self.clock = clock
        self.connected = False
        self.stimuli: list[SimulatedStimulus] = []
        self.commands: list[str] = []
        self._error = ""
        self._abort_temp: tuple[float, float] | None = None  # (time, temp) of last abort

    def inject_error(self, message: str = "simulated device fault") -> None:
        """Make the device report an error (and refuse stimuli) until cleared."""
        self._error = message

    def clear_error(self) -> None:
        self._error = ""

    def connect(self) -> None:
        self.connected = True
        self.commands.append(f"connect ceiling={self.limits.max_temperature_c}")
        self._log("tx", self.commands[-1])
        self.baseline()

    def baseline(self) -> None:
        with self._io_lock:
            self._stop_current()
            self.commands.append(f"baseline {self.limits.baseline_c}")
            self._log("tx", self.commands[-1])

    def deliver(self, level_c: float, duration_s: float) -> Ack:
        gen = self._begin_delivery()
        if not (math.isfinite(level_c) and math.isfinite(duration_s)) or duration_s <= 0:
            raise DeviceError(f"simulated: refusing non-finite or non-positive value ({level_c!r}, {duration_s!r})")
        lim = self.limits
        level = min(max(level_c, lim.min_temperature_c), lim.max_temperature_c)
        with self._io_lock:
            self._check_go(gen)
            if not self.connected:
                raise DeviceError("simulated: not connected")
            if self._error:
                raise DeviceError(f"simulated: {self._error}")
            self._stop_current()
            profile = thermal.ramp_profile(lim.baseline_c, level, lim.rise_rate_c_s, lim.return_rate_c_s, duration_s)
            self.stimuli.append(SimulatedStimulus(self.clock(), level, duration_s, profile))
            self.commands.append(f"deliver {level:.1f} {duration_s:.3f}")
            self._log("tx", self.commands[-1])
        return Ack(self.name, level_c, level, duration_s, time.time(), True, self.commands[-1])

    def abort(self) -> None:
        self._mark_abort()
        with self._io_lock:
            self._stop_current()
            self.commands.append("abort")
            self._log("tx", "abort")

    def _stop_current(self) -> None:
        now = self.clock()
        if self.stimuli and self.stimuli[-1].aborted_at is None:
            s = self.stimuli[-1]
            if now - s.onset < thermal.duration(s.profile):
                s.aborted_at = now
                self._abort_temp = (now, thermal.temperature_at(s.profile, now - s.onset))

    def temperature(self, now: float | None = None) -> float:
        now = self.clock() if now is None else now
        lim = self.limits
        if not self.stimuli:
            return lim.baseline_c
        s = self.stimuli[-1]
        if s.aborted_at is not None and now >= s.aborted_at and self._abort_temp is not None:
            t0, y0 = self._abort_temp
            rate = lim.return_rate_c_s if y0 >= lim.baseline_c else lim.rise_rate_c_s
            step = rate * (now - t0)
            return max(y0 - step, lim.baseline_c) if y0 >= lim.baseline_c else min(y0 + step, lim.baseline_c)
        return thermal.temperature_at(s.profile, now - s.onset)

    def peak_c(self) -> float:
        """Hottest temperature any stimulus reached (aborts taken into account)."""
        peaks = [self.limits.baseline_c]
        for s in self.stimuli:
            end = thermal.duration(s.profile) if s.aborted_at is None else s.aborted_at - s.onset
            ts = np.append(s.profile[:, 0][s.profile[:, 0] < end], end)
            peaks.append(max(thermal.temperature_at(s.profile, t) for t in ts))
        return max(peaks)

    def status(self) -> DeviceStatus:
        with self._io_lock:
            stim = bool(self.stimuli) and self.stimuli[-1].aborted_at is None and (
                self.clock() - self.stimuli[-1].onset < thermal.duration(self.stimuli[-1].profile))
            return DeviceStatus((self.temperature(),), self._error, 1 if self._error else 0,
                                "stimulating" if stim else "idle")

    def close(self) -> None:
        if self.connected:
            self.baseline()
        self.connected = False
