"""SafetyGuard: the only object the agent talks to.

It wraps any driver and, for every command:
- refuses (raises `SafetyViolation`, logs, returns the device to baseline) anything that would
  break a limit: non-finite or out-of-range temperature, plateau too long (above 48 °C: 2 s),
  ISI too short (onset to onset) or previous stimulus still running, per-run budget exhausted;
- logs every command, every raw device exchange and every acknowledgement with timestamps to a
  TSV device log (flushed per row, so a crash loses nothing);
- aborts on any device error and *latches*: after an abort (device fault, watchdog, panic) no
  stimulus is delivered until the operator calls `rearm()`.

Budget and ISI are charged when a command is accepted, before it is sent: a delivery that then
fails still counts (conservative).
"""

from __future__ import annotations

import math
import numbers
import threading
import time
from collections.abc import Callable
from pathlib import Path

from stimulus.devices import thermal
from stimulus.devices.base import Ack, DeviceError, DeviceStatus, StimulationAborted, Stimulator
from stimulus.devices.limits import (
    MAX_PLATEAU_ABOVE_BOUND_S,
    PLATEAU_BOUND_C,
    READBACK_TOLERANCE_C,
    SafetyLimits,
    SafetyViolation,
)

LOG_COLUMNS = ("time_unix", "time_mono", "event", "level_c", "duration_s", "detail")


class DeviceLog:
    """Append-only TSV of everything said to and by the device."""

    def __init__(self, path: str | Path | None):
        self._lock = threading.Lock()
        self._fh = None
        if path is not None:
            p = Path(path)
            p.parent.mkdir(parents=True, exist_ok=True)
            new = not p.exists() or p.stat().st_size == 0
            self._fh = open(p, "a", encoding="utf-8")  # noqa: SIM115 - kept open for the run
            if new:
                self._fh.write("\t".join(LOG_COLUMNS) + "\n")
                self._fh.flush()
        self.rows: list[tuple[str, ...]] = []

    def write(self, event: str, level_c: float | None = None, duration_s: float | None = None, detail: str = "") -> None:
        row = (
            f"{time.time():.6f}",
            f"{time.monotonic():.6f}",
            event,
            "" if level_c is None else repr(float(level_c)),
            "" if duration_s is None else repr(float(duration_s)),
            detail.replace("\t", " ").replace("\r", "\\r").replace("\n", "\\n"),
        )
        with self._lock:
            self.rows.append(row)
            if self._fh is not None:
                self._fh.write("\t".join(row) + "\n")
                self._fh.flush()

    def close(self) -> None:
        with self._lock:
            if self._fh is not None:
                self._fh.close()
                self._fh = None


class SafetyGuard:
    """Enforces `limits` on `driver`; logs to `log_path` (TSV; None = in memory only)."""

    def __init__(self, driver: Stimulator, limits: SafetyLimits, log_path: str | Path | None = None,
                 clock: Callable[[], float] = time.monotonic):
        self.driver = driver
        self.limits = limits
        self.clock = clock
        self.log = DeviceLog(log_path)
        # The guard's limits are the driver's limits: a TCS II gets `Om` = our ceiling.
        driver.limits = limits
        driver.set_io_logger(lambda direction, text: self.log.write(direction, detail=text))
        driver.set_interlock(lambda: self._tripped is None)
        self._lock = threading.RLock()
        self._deliver_lock = threading.Lock()
        self._tripped: str | None = None
        self._last_onset: float | None = None
        self._busy_until = -math.inf
        self.budget_used_s = 0.0
        self.n_delivered = 0

    # -- state -----------------------------------------------------------------------------
    @property
    def tripped(self) -> str | None:
        """Reason of the last abort while latched; None when armed."""
        return self._tripped

    @property
    def budget_remaining_s(self) -> float:
        return max(self.limits.budget_s - self.budget_used_s, 0.0)

    def start_run(self) -> None:
        """Reset the per-run budget (the ISI clock keeps running across runs)."""
        with self._lock:
            self.budget_used_s = 0.0
            self.n_delivered = 0
            self.log.write("start_run", detail=f"budget_s={self.limits.budget_s}")

    def resume(self, budget_used_s: float, last_onset: float | None, busy_until: float | None = None) -> None:
        """Continue a run after the controlling process restarted: carry over the budget used
        and the last onset / predicted end (guard clock), so a restart never loosens the ISI,
        the overlap check or the per-run budget."""
        with self._lock:
            self.budget_used_s = max(self.budget_used_s, float(budget_used_s))
            if last_onset is not None:
                self._last_onset = last_onset if self._last_onset is None else max(self._last_onset, last_onset)
            if busy_until is not None:
                self._busy_until = max(self._busy_until, busy_until)
            self.log.write("resume", detail=f"budget_used_s={self.budget_used_s:.3f} last_onset={last_onset}")

    def rearm(self, reason: str = "operator") -> None:
        """Clear the latch after an abort (an operator decision, logged)."""
        with self._lock:
            self.log.write("rearm", detail=f"{reason}; was: {self._tripped}")
            self._tripped = None

    # -- commands --------------------------------------------------------------------------
    def connect(self) -> None:
        self.log.write("connect", detail=f"{self.driver.name} limits={self.limits}")
        try:
            self.driver.connect()
        except DeviceError as exc:
            self._fault(f"connect failed: {exc}")
            raise

    def baseline(self) -> None:
        self.log.write("baseline", self.limits.baseline_c)
        self.driver.baseline()

    def predicted_profile(self, level_c: float, duration_s: float):
        lim = self.limits
        return thermal.ramp_profile(lim.baseline_c, level_c, lim.rise_rate_c_s, lim.return_rate_c_s, duration_s)

    def check(self, level_c: float, duration_s: float, now: float | None = None) -> float:
        """Raise SafetyViolation if the command is not allowed; return its budget cost (s)."""
        lim = self.limits
        now = self.clock() if now is None else now
        if self._tripped is not None:
            raise SafetyViolation(f"stimulation latched off after abort ({self._tripped}); rearm() required")
        if not isinstance(level_c, numbers.Real) or not isinstance(duration_s, numbers.Real) or isinstance(level_c, bool):
            raise SafetyViolation(f"level/duration must be numbers, got {level_c!r}, {duration_s!r}")
        level_c, duration_s = float(level_c), float(duration_s)
        if not math.isfinite(level_c):
            raise SafetyViolation(f"temperature {level_c!r} is not a finite number")
        if not math.isfinite(duration_s) or duration_s <= 0:
            raise SafetyViolation(f"duration {duration_s!r} s is not a positive finite number")
        if level_c > lim.max_temperature_c:
            raise SafetyViolation(f"temperature {level_c} °C above the ceiling {lim.max_temperature_c} °C")
        if level_c < lim.min_temperature_c:
            raise SafetyViolation(f"temperature {level_c} °C below the floor {lim.min_temperature_c} °C")
        if duration_s > lim.max_plateau_s:
            raise SafetyViolation(f"plateau {duration_s} s longer than {lim.max_plateau_s} s")
        if level_c > PLATEAU_BOUND_C and duration_s > MAX_PLATEAU_ABOVE_BOUND_S:
            raise SafetyViolation(
                f"plateau {duration_s} s at {level_c} °C: above {PLATEAU_BOUND_C} °C at most {MAX_PLATEAU_ABOVE_BOUND_S} s")
        if now < self._busy_until:
            raise SafetyViolation(f"previous stimulus still running for {self._busy_until - now:.2f} s")
        if self._last_onset is not None and now - self._last_onset < lim.min_isi_s:
            raise SafetyViolation(f"ISI {now - self._last_onset:.2f} s shorter than {lim.min_isi_s} s")
        cost = thermal.time_above(self.predicted_profile(level_c, duration_s), lim.suprathreshold_c)
        if self.budget_used_s + cost > lim.budget_s + 1e-9:
            raise SafetyViolation(
                f"per-run budget exhausted: {self.budget_used_s:.1f} s used + {cost:.1f} s > {lim.budget_s} s")
        return cost

    def deliver(self, level_c: float, duration_s: float) -> Ack:
        """Deliver one stimulus if every limit allows it; else raise SafetyViolation."""
        with self._deliver_lock:
            with self._lock:
                now = self.clock()
                try:
                    cost = self.check(level_c, duration_s, now)
                except SafetyViolation as exc:
                    self.log.write("refused", _num(level_c), _num(duration_s), str(exc))
                    self._safe_baseline()
                    raise
                self._last_onset = now
                self._busy_until = now + thermal.duration(self.predicted_profile(level_c, duration_s))
                self.budget_used_s += cost
                self.log.write("command", level_c, duration_s, f"budget_used_s={self.budget_used_s:.3f}")
            try:
                ack = self.driver.deliver(float(level_c), float(duration_s))
            except StimulationAborted as exc:
                self.log.write("interrupted", level_c, duration_s, str(exc))
                raise
            except DeviceError as exc:
                self._fault(f"device error during delivery: {exc}")
                raise
            except Exception as exc:  # a driver bug must not leave the thermode hot
                self._fault(f"driver failure during delivery: {exc!r}")
                raise DeviceError(f"driver failure: {exc!r}") from exc
            self.n_delivered += 1
            self.log.write("ack", ack.level_c, ack.duration_s, ack.summary())
            return ack

    def abort(self, reason: str = "abort") -> None:
        """Stop now, return to baseline, latch. Never waits for a delivery in progress."""
        self._tripped = reason  # set first: the interlock stops any in-flight delivery
        self.log.write("abort", detail=reason)
        errors = []
        for step in (self.driver.abort, self.driver.baseline):
            try:
                step()
            except Exception as exc:  # keep trying the next step
                errors.append(repr(exc))
        if errors:
            self.log.write("abort_error", detail="; ".join(errors))

    def panic(self) -> None:
        self.abort("panic")

    def status(self) -> DeviceStatus:
        """Read the device; abort on a reported error or a temperature above the ceiling."""
        try:
            st = self.driver.status()
        except DeviceError as exc:
            self._fault(f"status failed: {exc}")
            raise
        temps = ",".join(f"{t:.2f}" for t in st.temperatures_c)
        self.log.write("status", detail=f"state={st.state} temps={temps} error={st.error or '-'}")
        if not st.ok:
            self._fault(f"device error: {st.error} (code {st.error_code})")
        elif st.temperatures_c and st.max_temperature_c > self.limits.max_temperature_c + READBACK_TOLERANCE_C:
            self._fault(f"measured {st.max_temperature_c:.2f} °C above the ceiling {self.limits.max_temperature_c} °C")
        return st

    def close(self) -> None:
        try:
            self.driver.close()
        finally:
            self.log.write("close")
            self.log.close()

    def __enter__(self) -> SafetyGuard:
        self.connect()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- internals -------------------------------------------------------------------------
    def _fault(self, reason: str) -> None:
        self.log.write("device_error", detail=reason)
        self.abort(reason)

    def _safe_baseline(self) -> None:
        try:
            self.driver.baseline()
        except Exception as exc:
            self._fault(f"baseline after refusal failed: {exc!r}")


def _num(value: object) -> float | None:
    try:
        return float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
