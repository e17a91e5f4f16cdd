"""Watchdog: returns the stimulator to baseline when the closed loop stalls.

The loop calls `feed(source)` on every scanner trigger, score and volume. The watchdog trips
(calls `abort(reason)` then `baseline()` on its target, normally the SafetyGuard, which then
latches) when:
- nothing was fed for `timeout_s` (2 TR by default) – counted from the first feed, so waiting
  for the scanner to start is not a stall;
- `engine_alive()` or `display_alive()` returns False or raises;
- the device reports an error or cannot be read (polled every `device_poll_s`);
- `panic()` is called (the display's panic key): aborts at once, from the caller's thread.

`check()` performs one evaluation synchronously (with an injectable clock), so the logic is
testable without sleeping; the thread only calls it periodically.
"""

from __future__ import annotations

import inspect
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

log = logging.getLogger(__name__)

Alive = Callable[[], bool]


class Watchdog:
    def __init__(self, target: Any, timeout_s: float, *, engine_alive: Alive | None = None,
                 display_alive: Alive | None = None, device_poll_s: float = 1.0,
                 check_interval_s: float | None = None, on_trip: Callable[[str], None] | None = None,
                 clock: Callable[[], float] = time.monotonic):
        if not timeout_s > 0:
            raise ValueError(f"watchdog timeout must be positive, got {timeout_s!r}")
        self.target = target
        self.timeout_s = float(timeout_s)
        self.engine_alive = engine_alive
        self.display_alive = display_alive
        self.device_poll_s = device_poll_s
        self.check_interval_s = check_interval_s or min(0.1, self.timeout_s / 4)
        self.on_trip = on_trip
        self.clock = clock
        self._lock = threading.Lock()
        self._last_feed: float | None = None
        self._last_source = ""
        self._last_device_poll = -float("inf")
        self.tripped: str | None = None
        self.trips: list[tuple[float, str]] = []
        self.feeds = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.tripped_event = threading.Event()

    @classmethod
    def from_config(cls, cfg: Any, target: Any, **kw: Any) -> Watchdog:
        """Timeout = `stimulator.watchdog_tr` × `protocol.tr` of a SessionConfig."""
        return cls(target, cfg.stimulator.watchdog_tr * cfg.protocol.tr, **kw)

    # -- inputs ----------------------------------------------------------------------------
    def feed(self, source: str = "") -> None:
        with self._lock:
            self._last_feed = self.clock()
            self._last_source = source
            self.feeds += 1

    def panic(self, reason: str = "panic button") -> None:
        """Abort immediately, whatever the state (also while already tripped)."""
        self._trip(reason, force=True)

    def rearm(self) -> None:
        """Forget a trip (the guard has its own latch, re-armed separately); restart the clock."""
        with self._lock:
            self.tripped = None
            self.tripped_event.clear()
            self._last_feed = None

    # -- evaluation ------------------------------------------------------------------------
    def check(self, now: float | None = None) -> str | None:
        """Evaluate every condition once; trip and return the reason, or None."""
        now = self.clock() if now is None else now
        reason = self._reason(now)
        if reason:
            self._trip(reason)
        return reason

    def _reason(self, now: float) -> str | None:
        with self._lock:
            last, source = self._last_feed, self._last_source
        if last is not None and now - last > self.timeout_s:
            return f"loop stalled: nothing for {now - last:.2f} s (> {self.timeout_s:.2f} s; last: {source or '-'})"
        for name, fn in (("engine", self.engine_alive), ("display", self.display_alive)):
            if fn is None:
                continue
            try:
                alive = bool(fn())
            except Exception as exc:
                return f"{name} liveness check failed: {exc!r}"
            if not alive:
                return f"{name} not alive"
        if now - self._last_device_poll >= self.device_poll_s and hasattr(self.target, "status"):
            self._last_device_poll = now
            try:
                st = self.target.status()
            except Exception as exc:
                return f"device status failed: {exc}"
            if not st.ok:
                return f"device error: {st.error}"
        return None

    def _trip(self, reason: str, force: bool = False) -> None:
        with self._lock:
            if self.tripped is not None and not force:
                return
            self.tripped = reason
            self.trips.append((self.clock(), reason))
        log.error("watchdog: %s -> abort + baseline", reason)
        try:
            if inspect.signature(self.target.abort).parameters:  # SafetyGuard.abort(reason)
                self.target.abort(f"watchdog: {reason}")
            else:  # a bare Stimulator
                self.target.abort()
        except Exception as exc:
            log.error("watchdog: abort failed: %r", exc)
        try:
            self.target.baseline()
        except Exception as exc:
            log.error("watchdog: baseline failed: %r", exc)
        self.tripped_event.set()
        if self.on_trip is not None:
            try:
                self.on_trip(reason)
            except Exception as exc:
                log.error("watchdog: on_trip callback failed: %r", exc)

    # -- thread ----------------------------------------------------------------------------
    def start(self) -> Watchdog:
        if self._thread is None or not self._thread.is_alive():
            self._stop.clear()
            self._thread = threading.Thread(target=self._run, name="stimulator-watchdog", daemon=True)
            self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(self.check_interval_s):
            if self.tripped is None:
                try:
                    self.check()
                except Exception as exc:  # never let the watchdog die silently
                    self._trip(f"watchdog check failed: {exc!r}")

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self) -> Watchdog:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
