"""QST.Lab TCS II emulator on a pseudo-terminal.

`TCS2Emulator().start()` opens a pty pair; a driver opens `emulator.port` (the slave path) with
pyserial as if it were the USB serial device. The emulator parses the firmware command set
byte by byte with the real fixed field widths (no terminator), enforces its own `Om` maximum
like the device does, simulates probe temperature, answers `E`/`Oe`/`Q`/`?`/`P`/`B`/`H`, and
streams temperatures at 1 Hz until `F` (quiet). Every received command is recorded – including
malformed ones – so tests can assert on what bytes actually reached the "device".

Deliberately independent of the driver code: it is the check on the driver.
"""

from __future__ import annotations

import os
import select
import termios
import threading
import time
import tty
from collections.abc import Callable
from dataclasses import dataclass, field

POWER_ON_OM_C = 60.0
NEUTRAL_RANGE = (200, 400)
TEMP_RANGE = (100, 600)


@dataclass
class Received:
    time: float
    text: str
    valid: bool
    error: str = ""


@dataclass
class EmulatedStimulus:
    """One `L`: heat at `speed` for `duration_ms` toward `target`, then return at `ret`."""

    onset: float
    neutral_c: float
    requested_c: float
    target_c: float  # after the Om clamp
    speed_c_s: float
    return_c_s: float
    duration_ms: int
    aborted_at: float | None = None

    def points(self) -> list[tuple[float, float]]:
        """(t, temp) break points relative to onset, honouring an abort."""
        n, c = self.neutral_c, self.target_c
        d = self.duration_ms / 1000.0
        end = d if self.aborted_at is None else min(d, self.aborted_at - self.onset)
        t_reach = abs(c - n) / self.speed_c_s
        sign = 1.0 if c >= n else -1.0
        pts = [(0.0, n)]
        if t_reach < end:
            pts += [(t_reach, c), (end, c)]
        else:
            pts.append((end, n + sign * self.speed_c_s * end))
        t_end, y_end = pts[-1]
        pts.append((t_end + abs(y_end - n) / self.return_c_s, n))
        return pts

    def temperature(self, t: float) -> float:
        pts = self.points()
        if t <= 0:
            return pts[0][1]
        for (t0, y0), (t1, y1) in zip(pts[:-1], pts[1:], strict=False):
            if t <= t1:
                return y0 if t1 == t0 else y0 + (y1 - y0) * (t - t0) / (t1 - t0)
        return pts[-1][1]

    @property
    def peak_c(self) -> float:
        return max(y for _, y in self.points())

    def seconds_above(self, threshold_c: float) -> float:
        total = 0.0
        pts = self.points()
        for (t0, y0), (t1, y1) in zip(pts[:-1], pts[1:], strict=False):
            lo, hi = min(y0, y1), max(y0, y1)
            if t1 <= t0 or hi <= threshold_c:
                continue
            total += (t1 - t0) if lo >= threshold_c else (t1 - t0) * (hi - threshold_c) / (hi - lo)
        return total

    def plateau_s(self) -> float:
        """Time held at the target (0 if never reached)."""
        pts = self.points()
        return pts[2][0] - pts[1][0] if len(pts) == 4 else 0.0


@dataclass
class _Settings:
    neutral: int = 320
    zones: str = "11111"
    target: list[int] = field(default_factory=lambda: [300] * 5)
    speed: list[int] = field(default_factory=lambda: [100] * 5)
    ret: list[int] = field(default_factory=lambda: [100] * 5)
    duration: list[int] = field(default_factory=lambda: [1000] * 5)
    om: int = int(POWER_ON_OM_C * 10)


def _expected_length(buf: str) -> int | None:
    """Total length of the command starting `buf` (None: need more bytes; 0: unknown)."""
    c = buf[0]
    fixed = {"N": 4, "S": 6, "C": 5, "V": 6, "R": 6, "D": 7, "T": 7, "Y": 5, "I": 2, "Z": 7,
             "L": 1, "A": 1, "F": 1, "E": 1, "Q": 1, "B": 1, "P": 1, "H": 1, "?": 1, "K": 1, "G": 1}
    if c in fixed:
        return fixed[c]
    if c in "OXU":
        if len(buf) < 2:
            return None
        sub = buf[1]
        table = {
            "O": {"a": 2, "b": 2, "c": 2, "d": 2, "e": 2, "o": 2, "l": 2, "g": 2, "m": 5, "v": 8, "r": 8,
                  "t": 7, "s": 3, "i": 3, "f": 3},
            "X": {"r": 2, "w": 14},
            "U": {"r": 2, "e": 7},
        }[c]
        return table.get(sub, 0)
    return 0


class TCS2Emulator:
    def __init__(self, clock: Callable[[], float] = time.monotonic, stream_period_s: float = 1.0):
        self.clock = clock
        self.stream_period_s = stream_period_s
        self.received: list[Received] = []
        self.raw = bytearray()
        self._replies: list[str] | None = None
        self.stimuli: list[EmulatedStimulus] = []
        self.quiet = False
        self.zone_errors = "000000"
        self.resets = 0
        self.s = _Settings()
        self._lock = threading.RLock()
        self._buf = ""
        self._master: int | None = None
        self._slave: int | None = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self.port = ""

    # -- lifecycle -------------------------------------------------------------------------
    def start(self) -> TCS2Emulator:
        self._master, self._slave = os.openpty()
        tty.setraw(self._slave, termios.TCSANOW)
        self.port = os.ttyname(self._slave)
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="tcs2-emulator", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        for fd in (self._master, self._slave):
            if fd is not None:
                try:
                    os.close(fd)
                except OSError:
                    pass
        self._master = self._slave = None

    def __enter__(self) -> TCS2Emulator:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- inspection ------------------------------------------------------------------------
    @property
    def om_c(self) -> float:
        return self.s.om / 10.0

    @property
    def neutral_c(self) -> float:
        return self.s.neutral / 10.0

    def wait_parsed(self, n_bytes: int, timeout_s: float = 5.0) -> bool:
        """Wait until `n_bytes` bytes have arrived and every one of them has been acted on.

        A byte is counted and executed under one lock, so taking the lock after the count is
        reached means the command it completed has been recorded.
        """
        deadline = time.monotonic() + timeout_s
        while len(self.raw) < n_bytes:
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.001)
        with self._lock:
            return True

    def commands(self, valid_only: bool = True) -> list[str]:
        with self._lock:
            return [r.text for r in self.received if r.valid or not valid_only]

    def malformed(self) -> list[Received]:
        with self._lock:
            return [r for r in self.received if not r.valid]

    def temperature(self, now: float | None = None) -> float:
        now = self.clock() if now is None else now
        with self._lock:
            if not self.stimuli:
                return self.neutral_c
            s = self.stimuli[-1]
            return s.temperature(now - s.onset)

    def inject_zone_error(self, zone: int, code: int = 2) -> None:
        """Make `Q` report an error for zone 0 (neutral) … 5."""
        with self._lock:
            e = list(self.zone_errors)
            e[zone] = str(code)[0]
            self.zone_errors = "".join(e)

    def power_cycle(self) -> None:
        """Lose all settings (Om back to the power-on value), as after unplugging the device."""
        with self._lock:
            self.s = _Settings()
            self.quiet = False
            self.resets += 1

    # -- I/O -------------------------------------------------------------------------------
    def _write(self, text: str) -> None:
        if self._replies is not None:  # a command is executing: answer once it is recorded
            self._replies.append(text)
            return
        if self._master is not None:
            try:
                os.write(self._master, text.encode("ascii"))
            except OSError:
                pass

    def _run(self) -> None:
        next_stream = self.clock() + self.stream_period_s
        while not self._stop.is_set():
            try:
                ready, _, _ = select.select([self._master], [], [], 0.02)
            except (OSError, ValueError):
                return
            if ready:
                try:
                    data = os.read(self._master, 4096)
                except OSError:
                    data = b""
                for byte in data:
                    self._feed(byte)
            if not self.quiet and self.clock() >= next_stream:
                next_stream = self.clock() + self.stream_period_s
                self._write(self._temps_line(10) + "\r\n")

    def _feed(self, byte: int) -> None:
        with self._lock:
            self.raw.append(byte)
            ch = chr(byte) if byte < 128 else "\ufffd"
            self._buf += ch
            need = _expected_length(self._buf)
            if need == 0:
                self._record(self._buf, False, "unknown command")
                self._buf = ""
            elif need is not None and len(self._buf) >= need:
                cmd, self._buf = self._buf, ""
                # Record before answering: a driver that has its answer may look at `received`.
                self._replies = []
                try:
                    self._execute(cmd)
                finally:
                    replies, self._replies = self._replies, None
                for text in replies:
                    self._write(text)

    def _record(self, text: str, valid: bool, error: str = "") -> None:
        self.received.append(Received(self.clock(), text, valid, error))

    # -- command semantics -----------------------------------------------------------------
    def _execute(self, cmd: str) -> None:
        c = cmd[0]
        try:
            if c in "CVRD":
                zone, digits = cmd[1], cmd[2:]
                if zone not in "012345" or not digits.isdigit():
                    raise ValueError("bad zone or digits")
                value = int(digits)
                lo, hi = {"C": TEMP_RANGE, "V": (1, 9999), "R": (1, 9999), "D": (1, 99999)}[c]
                if not lo <= value <= hi:
                    raise ValueError(f"value {value} outside {lo}..{hi}")
                attr = {"C": "target", "V": "speed", "R": "ret", "D": "duration"}[c]
                arr = getattr(self.s, attr)
                for z in range(5) if zone == "0" else [int(zone) - 1]:
                    arr[z] = value
            elif c == "N":
                value = int(cmd[1:]) if cmd[1:].isdigit() else -1
                if not NEUTRAL_RANGE[0] <= value <= NEUTRAL_RANGE[1]:
                    raise ValueError(f"neutral {cmd[1:]!r} outside 200..400")
                self.s.neutral = value
            elif c == "S":
                if set(cmd[1:]) - {"0", "1"}:
                    raise ValueError("zones must be 0/1")
                self.s.zones = cmd[1:]
            elif c == "L":
                self._start()
            elif c == "A":
                self._abort()
            elif c == "F":
                self.quiet = True
            elif c == "E":
                self._write(self._temps_line(10) + "\r\n")
            elif c == "Q":
                self._write(self.zone_errors + "\r\n")
            elif c == "?":
                self._write("TCS\r\n")
            elif c == "B":
                self._write("4.10V 90%\r\n")
            elif c in "PH":
                self._write(f"N={self.s.neutral} C={self.s.target} V={self.s.speed} R={self.s.ret} D={self.s.duration} Om={self.s.om}\r\n")
            elif c == "O":
                self._execute_o(cmd)
            elif c in "TYIZKGXU":
                if not cmd[1:].replace("r", "").replace("w", "").replace("e", "").isdigit() and len(cmd) > 2:
                    raise ValueError("bad digits")
            else:
                raise ValueError("unknown command")
        except ValueError as exc:
            self._record(cmd, False, str(exc))
            return
        self._record(cmd, True)

    def _execute_o(self, cmd: str) -> None:
        sub = cmd[1]
        if sub == "m":
            if not cmd[2:].isdigit() or not TEMP_RANGE[0] <= int(cmd[2:]) <= TEMP_RANGE[1]:
                raise ValueError(f"Om {cmd[2:]!r} outside 100..600")
            self.s.om = int(cmd[2:])
        elif sub == "c":
            self.power_cycle()
        elif sub == "e":
            self._write(self._temps_line(100) + "\r\n")
        elif sub in "vrt":
            if cmd[2] not in "012345" or not cmd[3:].isdigit():
                raise ValueError("bad zone or digits")
            if sub == "t":  # 0.01 °C target: subject to Om as well
                value = min(int(cmd[3:]), self.s.om * 10) // 10
                for z in range(5) if cmd[2] == "0" else [int(cmd[2]) - 1]:
                    self.s.target[z] = value
        # Oa, Ob, Od, Oo, Ol, Og, Os?, Oi?, Of?: accepted, not simulated

    def _start(self) -> None:
        now = self.clock()
        self._stop_current(now)
        zone = self.s.zones.find("1")
        if zone < 0:
            return
        requested = max(self.s.target[z] for z in range(5) if self.s.zones[z] == "1")
        effective = min(requested, self.s.om)  # the device limits C to Om
        self.stimuli.append(EmulatedStimulus(
            onset=now, neutral_c=self.neutral_c, requested_c=requested / 10.0, target_c=effective / 10.0,
            speed_c_s=self.s.speed[zone] / 10.0, return_c_s=self.s.ret[zone] / 10.0,
            duration_ms=self.s.duration[zone]))

    def _stop_current(self, now: float) -> None:
        if self.stimuli and self.stimuli[-1].aborted_at is None:
            s = self.stimuli[-1]
            if now - s.onset < s.duration_ms / 1000.0:
                s.aborted_at = now

    def _abort(self) -> None:
        self._stop_current(self.clock())

    def _temps_line(self, scale: int) -> str:
        t = self.temperature()
        width = 3 if scale == 10 else 4
        values = [self.neutral_c] + [t if self.s.zones[z] == "1" else self.neutral_c for z in range(5)]
        return "+".join(f"{int(round(v * scale)):0{width}d}" for v in values)
