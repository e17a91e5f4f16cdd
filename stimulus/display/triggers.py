"""Scanner trigger input and the scan counter.

The display knows where it is in the run only by counting scanner triggers: keyboard key
(fibre-optic trigger boxes usually type `5`), a serial TTL line (one byte per trigger), or an
internal clock for headless runs. Every source gives trigger timestamps on the same clock as
the window's flips; `TriggerCounter` turns them into 0-based scan indices and infers triggers
that never arrived from the interval between the ones that did (an interval of about k·TR
means k - 1 were missed), so one lost pulse does not shift the rest of the run by a scan.
"""

from __future__ import annotations

import math
import queue
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from runtime.errors import UserError

Clock = Callable[[], float]


@dataclass(frozen=True)
class Tick:
    """One trigger as counted."""

    scan: int
    t: float
    missed: tuple[int, ...] = ()
    """Scans whose trigger was inferred missing just before this one."""
    resumed: tuple[int, ...] = ()
    """Scans that passed while the display was not running (restart); not counted as missed."""


@dataclass
class TriggerCounter:
    """Scan index from trigger times.

    `origin`: time of scan 0's trigger when it is already known (a restarted display reads it
    from its own events sidecar); the first trigger seen is then placed at
    round((t - origin) / tr). Triggers closer than `min_fraction`·TR to the previous one are
    rejected as spurious (contact bounce, a doubled pulse); `register` returns None for them.
    """

    tr: float
    factor: float = 1.5
    min_fraction: float = 0.5
    origin: float | None = None
    last_scan: int = -1
    last_t: float | None = None
    n_received: int = 0
    n_missed: int = 0
    n_rejected: int = 0

    def register(self, t: float) -> Tick | None:
        if self.last_t is not None and t - self.last_t < self.min_fraction * self.tr:
            self.n_rejected += 1
            return None
        self.n_received += 1
        missed: tuple[int, ...] = ()
        resumed: tuple[int, ...] = ()
        if self.last_t is None:
            if self.origin is None:
                self.origin = t
                scan = 0
            else:
                scan = max(self.last_scan + 1, int(round((t - self.origin) / self.tr)))
                resumed = tuple(range(self.last_scan + 1, scan))
        else:
            interval = t - self.last_t
            steps = int(round(interval / self.tr)) if interval > self.factor * self.tr else 1
            scan = self.last_scan + max(1, steps)
            missed = tuple(range(self.last_scan + 1, scan))
            self.n_missed += len(missed)
        self.last_scan, self.last_t = scan, t
        return Tick(scan=scan, t=t, missed=missed, resumed=resumed)


class KeyTriggers:
    """Triggers typed as a key; the app feeds it every key press it reads from the window."""

    def __init__(self, key: str) -> None:
        self.key = key
        self._pending: list[float] = []

    def offer(self, name: str, t: float) -> bool:
        """Take the key press if it is the trigger key; True when taken."""
        if name != self.key:
            return False
        self._pending.append(t)
        return True

    def poll(self) -> list[float]:
        out, self._pending = self._pending, []
        return out

    def close(self) -> None:
        pass


class SimulatedTriggers:
    """An internal scanner: a trigger every `tr` seconds from `lead` seconds after creation.

    Timestamps are the scheduled times (what a real scanner's pulse would carry), not the
    moment the frame loop looked, so frame-rate jitter does not leak into the scan clock.
    `drop` lists scan indices whose trigger is withheld, to exercise missed-trigger inference.
    """

    def __init__(
        self,
        tr: float,
        clock: Clock,
        *,
        lead: float | None = None,
        start: float | None = None,
        drop: Iterable[int] = (),
    ) -> None:
        if tr <= 0:
            raise UserError(f"--simulate-triggers: expected a TR in seconds > 0, got {tr}")
        self.tr = tr
        self.clock = clock
        self.lead = tr if lead is None else lead
        self.t0: float | None = start
        """Time of scan 0: `start` (a scanner already running), else first poll + lead."""
        self.k = -1
        self.drop = frozenset(drop)

    def poll(self) -> list[float]:
        """Triggers due by now; the clock starts at the first poll (the loop is running)."""
        now = self.clock()
        if self.t0 is None:
            self.t0 = now + self.lead
        if self.k < 0:  # joining a running scanner: only triggers from now on
            self.k = max(0, math.ceil((now - self.t0) / self.tr))
        out: list[float] = []
        while self.t0 + self.k * self.tr <= now:
            if self.k not in self.drop:
                out.append(self.t0 + self.k * self.tr)
            self.k += 1
        return out

    def close(self) -> None:
        pass


@dataclass
class SerialTriggers:
    """TTL triggers on a serial line (USB trigger interfaces send one byte per pulse).

    A reader thread timestamps each byte as it arrives, so the timing does not depend on the
    frame rate; the frame loop only drains the queue.
    """

    port: str
    clock: Clock
    baudrate: int = 115200
    _queue: queue.SimpleQueue = field(default_factory=queue.SimpleQueue, init=False)
    _stop: threading.Event = field(default_factory=threading.Event, init=False)

    def __post_init__(self) -> None:
        import serial  # pyserial; imported here so keyboard/simulated runs never need it

        try:
            self._serial = serial.Serial(self.port, self.baudrate, timeout=0.02)
        except (serial.SerialException, OSError, ValueError) as exc:
            raise UserError(
                f"display.trigger_serial: cannot open serial port {self.port!r}: {exc}"
            ) from None
        self._thread = threading.Thread(target=self._read, name="serial-triggers", daemon=True)
        self._thread.start()

    def _read(self) -> None:
        ser = self._serial
        while not self._stop.is_set():
            try:
                data = ser.read(max(1, ser.in_waiting))
            except Exception:  # port gone (unplugged): stop reading, the run goes on by keys
                if not self._stop.is_set():
                    time.sleep(0.05)
                    continue
                return
            if data:
                t = self.clock()
                for _ in data:
                    self._queue.put(t)

    def poll(self) -> list[float]:
        out: list[float] = []
        while True:
            try:
                out.append(self._queue.get_nowait())
            except queue.Empty:
                return out

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=1.0)
        self._serial.close()
