"""Medoc PATHWAY / TSA-2 Main Station emulator: loopback TCP server, one command per connection.

Speaks the external-control framing (METHOD.md §6.2) and the state machine:
system IDLE --SELECT_TP--> READY --START--> TEST (test RUNNING during a pre-test phase, then
READY = waiting for a trigger) --TRIGGER (only when test READY; otherwise "illegal test
state" and the trigger is lost)--> stimulus (test RUNNING) --> READY again. STOP returns the
system to READY, ABORT to IDLE. Programs above the emulated hardware limiter give a safety
error (16384) and the system drops to IDLE, like the real per-program temperature limiter.

The length prefix may be big- or little-endian (the public sources disagree): `byte_order`
"auto" (default) detects it per request from the plausible length and answers in kind.
Every request is recorded with its detected byte order, for assertions.
"""

from __future__ import annotations

import socket
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

IDLE, READY, TEST = 0, 1, 2
T_IDLE, T_RUNNING, T_PAUSED, T_READY = 0, 1, 2, 3
STATUS, SELECT_TP, START, PAUSE, TRIGGER, STOP, ABORT = 0, 1, 2, 3, 4, 5, 6
WITH_PARAM = {1, 9, 10, 11}
OK, ILLEGAL_ARG, ILLEGAL_STATE, ILLEGAL_TEST_STATE = 0, 1, 2, 3
SAFETY_ERROR = 16384


@dataclass(frozen=True)
class MedocProgram:
    temperature_c: float
    plateau_s: float = 2.0
    ramp_c_s: float = 8.0
    return_c_s: float = 8.0
    baseline_c: float = 32.0


@dataclass
class MedocRequest:
    time: float
    command: int
    param: int | None
    byte_order: str
    timestamp: int
    result: int = 0


@dataclass
class MedocStimulus:
    onset: float
    program: int
    spec: MedocProgram
    aborted_at: float | None = None

    def points(self) -> list[tuple[float, float]]:
        p = self.spec
        up = abs(p.temperature_c - p.baseline_c) / p.ramp_c_s
        pts = [(0.0, p.baseline_c), (up, p.temperature_c), (up + p.plateau_s, p.temperature_c)]
        pts.append((pts[-1][0] + abs(p.temperature_c - p.baseline_c) / p.return_c_s, p.baseline_c))
        if self.aborted_at is not None:
            cut = self.aborted_at - self.onset
            y = _interp(pts, cut)
            pts = [q for q in pts if q[0] < cut] + [(cut, y), (cut + abs(y - p.baseline_c) / p.return_c_s, p.baseline_c)]
        return pts

    @property
    def end(self) -> float:
        return self.onset + self.points()[-1][0]

    @property
    def peak_c(self) -> float:
        return max(y for _, y in self.points())


def _interp(pts: list[tuple[float, float]], t: float) -> float:
    if t <= pts[0][0]:
        return pts[0][1]
    for (t0, y0), (t1, y1) in zip(pts[:-1], pts[1:], strict=False):
        if t <= t1:
            return y0 if t1 == t0 else y0 + (y1 - y0) * (t - t0) / (t1 - t0)
    return pts[-1][1]


class MedocEmulator:
    def __init__(self, programs: dict[int, MedocProgram], byte_order: str = "auto",
                 pretest_s: float = 0.2, limiter_max_c: float = 55.0, baseline_c: float = 32.0,
                 clock: Callable[[], float] = time.monotonic, extended: bool = True):
        if byte_order not in ("auto", "big", "little"):
            raise ValueError(f"byte_order must be auto, big or little, got {byte_order!r}")
        self.programs = dict(programs)
        self.byte_order = byte_order
        self.pretest_s = pretest_s
        self.limiter_max_c = limiter_max_c
        self.baseline_c = baseline_c
        self.clock = clock
        self.extended = extended
        self.system = IDLE
        self.test = T_IDLE
        self.selected: int | None = None
        self.requests: list[MedocRequest] = []
        self.stimuli: list[MedocStimulus] = []
        self.rejected_frames = 0
        self._start_time = 0.0
        self._pretest_until = 0.0
        self._inject: int | None = None
        self._inject_persistent = False
        self._lock = threading.RLock()
        self._sock: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self.host = "127.0.0.1"
        self.port = 0

    # -- lifecycle -------------------------------------------------------------------------
    def start(self) -> MedocEmulator:
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen(8)
        self._sock.settimeout(0.05)
        self.port = self._sock.getsockname()[1]
        self._stop.clear()
        self._thread = threading.Thread(target=self._serve, name="medoc-emulator", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def __enter__(self) -> MedocEmulator:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- test hooks ------------------------------------------------------------------------
    def inject_result(self, code: int, persistent: bool = False) -> None:
        """Make the next response (or all, if persistent) carry `code`; 16384 also drops to IDLE."""
        with self._lock:
            self._inject, self._inject_persistent = code, persistent

    def clear_injection(self) -> None:
        with self._lock:
            self._inject, self._inject_persistent = None, False

    def command_names(self) -> list[str]:
        names = {0: "STATUS", 1: "SELECT_TP", 2: "START", 3: "PAUSE", 4: "TRIGGER", 5: "STOP", 6: "ABORT"}
        with self._lock:
            return [names.get(r.command, str(r.command)) for r in self.requests]

    def temperature(self, now: float | None = None) -> float:
        now = self.clock() if now is None else now
        with self._lock:
            if not self.stimuli:
                return self.baseline_c
            s = self.stimuli[-1]
            return _interp(s.points(), now - s.onset)

    # -- server ----------------------------------------------------------------------------
    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            with conn:
                conn.settimeout(2.0)
                try:
                    self._handle(conn)
                except (OSError, ValueError):
                    self.rejected_frames += 1

    @staticmethod
    def _recv(conn: socket.socket, n: int) -> bytes:
        buf = b""
        while len(buf) < n:
            chunk = conn.recv(n - len(buf))
            if not chunk:
                raise ValueError("short frame")
            buf += chunk
        return buf

    def _handle(self, conn: socket.socket) -> None:
        prefix = self._recv(conn, 4)
        big, little = struct.unpack(">I", prefix)[0], struct.unpack("<I", prefix)[0]
        if self.byte_order == "big":
            order, length = "big", big
        elif self.byte_order == "little":
            order, length = "little", little
        else:
            order, length = ("big", big) if big in (5, 9) else ("little", little)
        if length not in (5, 9):
            raise ValueError(f"implausible request length {length}")
        body = self._recv(conn, length)
        ts, cmd = struct.unpack_from("<IB", body)
        param = struct.unpack_from("<I", body, 5)[0] if length == 9 else None
        if (cmd in WITH_PARAM) != (param is not None):
            raise ValueError("parameter presence does not match the command")
        with self._lock:
            req = MedocRequest(self.clock(), cmd, param, order, ts)
            self.requests.append(req)
            result = self._apply(cmd, param)
            if self._inject is not None:
                result = self._inject
                if result & SAFETY_ERROR:
                    self._to_idle()
                if not self._inject_persistent:
                    self._inject = None
            req.result = result
            reply = self._reply(ts, cmd, result)
        fmt = ">I" if order == "big" else "<I"
        conn.sendall(struct.pack(fmt, len(reply)) + reply)

    def _reply(self, ts: int, cmd: int, result: int) -> bytes:
        self._advance()
        test_time = int(max(self.clock() - self._start_time, 0) * 1000) if self.system == TEST else 0
        out = struct.pack("<IBBBHI", ts, cmd, self.system, self.test, result, test_time)
        if self.extended:
            out += struct.pack("<hBBBB", int(round(self.temperature() * 100)), 0, 0, 0, 0)
            out += b"emulator"
        return out

    # -- state machine ---------------------------------------------------------------------
    def _advance(self) -> None:
        now = self.clock()
        if self.system == TEST and self.test == T_RUNNING:
            if self.stimuli and self.stimuli[-1].aborted_at is None and self.stimuli[-1].onset >= self._start_time:
                if now >= self.stimuli[-1].end:
                    self.test = T_READY
            elif now >= self._pretest_until:
                self.test = T_READY

    def _to_idle(self) -> None:
        self._cut_stimulus()
        self.system, self.test, self.selected = IDLE, T_IDLE, None

    def _cut_stimulus(self) -> None:
        now = self.clock()
        if self.stimuli and self.stimuli[-1].aborted_at is None and now < self.stimuli[-1].end:
            self.stimuli[-1].aborted_at = now

    def _apply(self, cmd: int, param: int | None) -> int:
        self._advance()
        if cmd == STATUS:
            return OK
        if cmd == SELECT_TP:
            if self.system == TEST:
                return ILLEGAL_STATE
            if param not in self.programs:
                return ILLEGAL_ARG
            self.selected, self.system, self.test = param, READY, T_IDLE
            return OK
        if cmd == START:
            if self.system != READY or self.selected is None:
                return ILLEGAL_STATE
            if self.programs[self.selected].temperature_c > self.limiter_max_c:
                self._to_idle()
                return SAFETY_ERROR
            now = self.clock()
            self.system, self.test = TEST, T_RUNNING
            self._start_time, self._pretest_until = now, now + self.pretest_s
            return OK
        if cmd == TRIGGER:
            if self.system != TEST:
                return ILLEGAL_STATE
            if self.test != T_READY:
                return ILLEGAL_TEST_STATE  # the trigger is lost, as on the real MMS
            self.stimuli.append(MedocStimulus(self.clock(), self.selected, self.programs[self.selected]))
            self.test = T_RUNNING
            return OK
        if cmd == STOP:
            if self.system != TEST:
                return ILLEGAL_STATE
            self._cut_stimulus()
            self.system, self.test = READY, T_IDLE
            return OK
        if cmd == ABORT:
            self._to_idle()
            return OK
        if cmd == PAUSE:
            if self.system != TEST or self.test != T_RUNNING:
                return ILLEGAL_TEST_STATE
            self.test = T_PAUSED
            return OK
        return OK  # YES/NO/COVAS/VAS/...: accepted, not simulated
