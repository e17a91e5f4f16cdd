"""The one interface every stimulator driver implements.

Drivers translate `deliver(level, duration)` into a device's protocol and nothing more: safety
policy (limits, ISI, budget, latching after faults) lives in `SafetyGuard`, which is the only
object the agent talks to. Drivers still clamp every field they format, so that even a driver
used without the guard can never send a malformed or out-of-range value.

Abort must win any race with a delivery in progress: `abort()` bumps a generation counter and
the guard installs an interlock; a driver checks both (under its I/O lock) before sending each
command of a delivery, so no command of a stimulus can follow an abort.
"""

from __future__ import annotations

import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field

from stimulus.devices.limits import SafetyLimits


class DeviceError(Exception):
    """The device reported an error, did not answer, or answered nonsense."""

    def __init__(self, message: str, *, safety: bool = False, code: int = 0):
        super().__init__(message)
        self.safety = safety
        self.code = code


class StimulationAborted(DeviceError):
    """A delivery was interrupted by abort() (panic, watchdog, device fault)."""


@dataclass(frozen=True)
class Ack:
    """What a driver did for one `deliver` call."""

    device: str
    requested_level_c: float
    level_c: float
    """Level actually sent (after clamping to the field range and limits)."""
    duration_s: float
    onset_unix: float
    ok: bool = True
    detail: str = ""
    """Device-specific record, e.g. the exact commands sent."""

    @property
    def clamped(self) -> bool:
        return self.level_c != self.requested_level_c

    def summary(self) -> str:
        flag = "ok" if self.ok else "fail"
        return f"{flag} {self.device} {self.level_c:.1f}C {self.duration_s:.2f}s {self.detail}".strip()


@dataclass(frozen=True)
class DeviceStatus:
    """Measured state of the device."""

    temperatures_c: tuple[float, ...] = ()
    """TCS II: neutral then zones 1–5; Medoc / simulated: the thermode."""
    error: str = ""
    """Empty when the device reports no error."""
    error_code: int = 0
    state: str = ""
    time_unix: float = field(default_factory=time.time)

    @property
    def ok(self) -> bool:
        return not self.error

    @property
    def max_temperature_c(self) -> float:
        return max(self.temperatures_c) if self.temperatures_c else float("nan")


IoLogger = Callable[[str, str], None]
"""(direction 'tx'|'rx', text) -> None: receives every raw exchange with the device."""


class Stimulator(ABC):
    """Driver interface: connect, baseline, deliver, abort, status, close."""

    name = "stimulator"

    def __init__(self, limits: SafetyLimits | None = None):
        self.limits = limits or SafetyLimits()
        self._io_lock = threading.RLock()
        self._abort_gen = 0
        self._interlock: Callable[[], bool] | None = None
        self._io_log: IoLogger | None = None

    # -- hooks used by SafetyGuard ---------------------------------------------------------
    def set_io_logger(self, fn: IoLogger | None) -> None:
        self._io_log = fn

    def set_interlock(self, fn: Callable[[], bool] | None) -> None:
        """`fn()` must return True for any delivery command to be sent."""
        self._interlock = fn

    def _log(self, direction: str, text: str) -> None:
        if self._io_log is not None:
            self._io_log(direction, text)

    def _begin_delivery(self) -> int:
        return self._abort_gen

    def _check_go(self, gen: int) -> None:
        """Call under the I/O lock before each delivery command."""
        if gen != self._abort_gen or (self._interlock is not None and not self._interlock()):
            raise StimulationAborted(f"{self.name}: delivery interrupted by abort")

    def _mark_abort(self) -> None:
        self._abort_gen += 1

    # -- the interface ---------------------------------------------------------------------
    @abstractmethod
    def connect(self) -> None:
        """Open the device and (re)apply the ceiling and baseline; idempotent."""

    @abstractmethod
    def baseline(self) -> None:
        """Stop any stimulation and hold the baseline temperature."""

    @abstractmethod
    def deliver(self, level_c: float, duration_s: float) -> Ack:
        """Start one stimulus: ramp to `level_c`, hold it `duration_s` (plateau), return."""

    @abstractmethod
    def abort(self) -> None:
        """Stop at once and return to baseline. Must be safe to call from any thread, any time."""

    @abstractmethod
    def status(self) -> DeviceStatus:
        """Measured temperatures and error state."""

    @abstractmethod
    def close(self) -> None:
        """Return to baseline (best effort) and release the device."""

    def __enter__(self) -> Stimulator:
        self.connect()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
