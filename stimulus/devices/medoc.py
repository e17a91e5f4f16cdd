"""Medoc PATHWAY / TSA-2 external control over TCP (METHOD.md §6.2).

The Medoc Main Station (MMS) is the server; we open one connection per command.
Request:  length (4) | timestamp (4, LE, Unix s) | command (1) [| parameter (4, LE)]
Response: length (4) | timestamp (4, echo) | command (1) | system state (1) | test state (1) |
          result (2, LE) | test time (4, LE, ms) [| temperature (int16 LE, 1/100 °C) | CoVAS (1) |
          yes (1) | no (1) | TTL (1) | message (rest)]
`length` counts the bytes after the length field.

Byte order of the length prefix: the two public sources disagree (pymedoc: little-endian; the
vendor's TSA2 sample: big-endian). It is a constructor option; the default is **big-endian**
(the vendor sample, network order). Verify against your MMS licence documentation; the
emulator accepts both.

Temperatures are not sent over this interface: each level is a test program defined on the MMS
and selected by its code. `programs` maps level (°C) → program code; a level without a program
is refused. The guard checks the *measured* temperature against the ceiling, which catches a
program defined hotter than its configured level.
"""

from __future__ import annotations

import logging
import math
import socket
import struct
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

from stimulus.devices.base import Ack, DeviceError, DeviceStatus, Stimulator
from stimulus.devices.limits import SafetyLimits

STATUS, SELECT_TP, START, PAUSE, TRIGGER, STOP, ABORT = 0, 1, 2, 3, 4, 5, 6
YES, NO, COVAS, VAS, SPECIFY_NEXT, T_UP, T_DOWN, KEYUP = 7, 8, 9, 10, 11, 12, 13, 14
COMMAND_NAMES = {0: "STATUS", 1: "SELECT_TP", 2: "START", 3: "PAUSE", 4: "TRIGGER", 5: "STOP",
                 6: "ABORT", 7: "YES", 8: "NO", 9: "COVAS", 10: "VAS", 11: "SPECIFY_NEXT",
                 12: "T_UP", 13: "T_DOWN", 14: "KEYUP"}
WITH_PARAM = {SELECT_TP, COVAS, VAS, SPECIFY_NEXT}

SYSTEM_IDLE, SYSTEM_READY, SYSTEM_TEST = 0, 1, 2
TEST_IDLE, TEST_RUNNING, TEST_PAUSED, TEST_READY = 0, 1, 2, 3
SYSTEM_NAMES = {0: "IDLE", 1: "READY", 2: "TEST"}
TEST_NAMES = {0: "IDLE", 1: "RUNNING", 2: "PAUSED", 3: "READY"}

RESULT_OK = 0
RESULT_ILLEGAL_ARG = 1
RESULT_ILLEGAL_STATE = 2
RESULT_ILLEGAL_TEST_STATE = 3
RESULT_DEVICE_COMM_ERROR = 4096
RESULT_SAFETY_WARNING = 8192
RESULT_SAFETY_ERROR = 16384
RESULT_NAMES = {0: "OK", 1: "illegal argument", 2: "illegal state", 3: "illegal test state",
                4096: "device communication error", 8192: "safety warning", 16384: "safety error"}

ByteOrder = Literal["big", "little"]
DEFAULT_BYTE_ORDER: ByteOrder = "big"


def _prefix_fmt(byte_order: str) -> str:
    if byte_order not in ("big", "little"):
        raise ValueError(f"byte_order must be 'big' or 'little', got {byte_order!r}")
    return ">I" if byte_order == "big" else "<I"


def encode_request(command: int, param: int | None = None, byte_order: str = DEFAULT_BYTE_ORDER,
                   timestamp: int | None = None) -> bytes:
    ts = int(time.time()) if timestamp is None else timestamp
    body = struct.pack("<IB", ts & 0xFFFFFFFF, command)
    if param is not None:
        body += struct.pack("<I", param & 0xFFFFFFFF)
    return struct.pack(_prefix_fmt(byte_order), len(body)) + body


@dataclass(frozen=True)
class MedocResponse:
    timestamp: int
    command: int
    system_state: int
    test_state: int
    result: int
    test_time_ms: int
    temperature_c: float | None = None
    covas: int | None = None
    yes: int | None = None
    no: int | None = None
    message: str = ""

    def describe(self) -> str:
        temp = "" if self.temperature_c is None else f" T={self.temperature_c:.2f}"
        return (f"{COMMAND_NAMES.get(self.command, self.command)} system={SYSTEM_NAMES.get(self.system_state, self.system_state)}"
                f" test={TEST_NAMES.get(self.test_state, self.test_state)} result={self.result}"
                f" time={self.test_time_ms}{temp}")


def decode_response(body: bytes) -> MedocResponse:
    """Decode the bytes after the length prefix."""
    if len(body) < 13:
        raise DeviceError(f"medoc: response too short ({len(body)} bytes)")
    ts, cmd, sys_state, test_state, result, test_time = struct.unpack_from("<IBBBHI", body, 0)
    temp = covas = yes = no = None
    message = ""
    if len(body) >= 15:
        temp = struct.unpack_from("<h", body, 13)[0] / 100.0
    if len(body) >= 18:
        covas, yes, no = body[15], body[16], body[17]
    if len(body) > 19:
        message = body[19:].decode("ascii", "replace")
    return MedocResponse(ts, cmd, sys_state, test_state, result, test_time, temp, covas, yes, no, message)


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise DeviceError(f"medoc: connection closed after {len(buf)} of {n} bytes")
        buf += chunk
    return bytes(buf)


class MedocStimulator(Stimulator):
    name = "medoc"

    def __init__(self, host: str, port: int = 20121, programs: Mapping[float, int] | None = None,
                 byte_order: ByteOrder = DEFAULT_BYTE_ORDER, limits: SafetyLimits | None = None,
                 timeout_s: float = 2.0, ready_timeout_s: float = 15.0, poll_s: float = 0.05,
                 level_tolerance_c: float = 0.05):
        super().__init__(limits)
        _prefix_fmt(byte_order)
        self.host = host
        self.port = port
        self.programs = {float(k): int(v) for k, v in (programs or {}).items()}
        for code in self.programs.values():
            if not 0 <= code <= 255:
                raise ValueError(f"medoc program codes are 8-bit (0–255), got {code}")
        self.byte_order = byte_order
        self.timeout_s = timeout_s
        self.ready_timeout_s = ready_timeout_s
        self.poll_s = poll_s
        self.level_tolerance_c = level_tolerance_c
        self._selected: int | None = None
        self.warnings: list[str] = []

    # -- low level -------------------------------------------------------------------------
    def command(self, command: int, param: int | None = None) -> MedocResponse:
        """One request/response on a fresh connection; raises DeviceError on a bad result."""
        if command in WITH_PARAM and param is None:
            param = 0
        request = encode_request(command, param, self.byte_order)
        name = COMMAND_NAMES.get(command, str(command))
        self._log("tx", f"{name}" + ("" if param is None else f" {param}") + f" [{request.hex()}]")
        try:
            with socket.create_connection((self.host, self.port), timeout=self.timeout_s) as sock:
                sock.sendall(request)
                (length,) = struct.unpack(_prefix_fmt(self.byte_order), _recv_exact(sock, 4))
                if not 13 <= length <= 4096:
                    raise DeviceError(f"medoc: implausible response length {length} "
                                      f"(length-prefix byte order {self.byte_order!r} wrong?)")
                resp = decode_response(_recv_exact(sock, length))
        except OSError as exc:
            raise DeviceError(f"medoc: {name} to {self.host}:{self.port} failed: {exc}") from exc
        self._log("rx", resp.describe())
        self._check_result(resp, name)
        return resp

    def _check_result(self, resp: MedocResponse, name: str) -> None:
        r = resp.result
        if r == RESULT_OK:
            return
        if r & RESULT_SAFETY_ERROR:
            raise DeviceError(f"medoc: safety error (16384) after {name}; device went to IDLE",
                              safety=True, code=r)
        if r & RESULT_DEVICE_COMM_ERROR:
            raise DeviceError(f"medoc: device communication error (4096) after {name}", code=r)
        if r & RESULT_SAFETY_WARNING:
            self.warnings.append(f"{name}: safety warning (8192)")
            self._log("rx", f"warning: safety warning (8192) after {name}")
            return
        raise DeviceError(f"medoc: {name} rejected: {RESULT_NAMES.get(r, r)} ({r}) in "
                          f"system state {SYSTEM_NAMES.get(resp.system_state, resp.system_state)}", code=r)

    def program_for(self, level_c: float) -> int:
        if not math.isfinite(level_c):
            raise DeviceError(f"medoc: refusing non-finite level {level_c!r}")
        for level, code in self.programs.items():
            if abs(level - level_c) <= self.level_tolerance_c:
                if level > self.limits.max_temperature_c:
                    raise DeviceError(f"medoc: program {code} is for {level} °C, above the ceiling")
                return code
        raise DeviceError(f"medoc: no test program configured for {level_c} °C "
                          f"(configured: {sorted(self.programs)})")

    # -- interface -------------------------------------------------------------------------
    def connect(self) -> None:
        resp = self.command(STATUS)
        self._selected = None
        if resp.system_state == SYSTEM_TEST:
            self.command(STOP)

    def deliver(self, level_c: float, duration_s: float) -> Ack:
        gen = self._begin_delivery()
        code = self.program_for(level_c)
        level = next(lv for lv, c in self.programs.items() if c == code and abs(lv - level_c) <= self.level_tolerance_c)
        sent = []

        def do(cmd: int, param: int | None = None) -> MedocResponse:
            with self._io_lock:
                self._check_go(gen)
                sent.append(COMMAND_NAMES[cmd] + ("" if param is None else f"({param})"))
                return self.command(cmd, param)

        st = do(STATUS)
        if st.system_state != SYSTEM_TEST or self._selected != code:
            if st.system_state == SYSTEM_TEST:
                do(STOP)
            do(SELECT_TP, code)
            self._selected = code
            do(START)
        deadline = time.monotonic() + self.ready_timeout_s
        while True:  # pre-test phase: a trigger sent before READY is lost
            st = do(STATUS)
            if st.system_state == SYSTEM_TEST and st.test_state == TEST_READY:
                break
            if st.system_state != SYSTEM_TEST:
                raise DeviceError(f"medoc: test program {code} left TEST before the trigger ({st.describe()})")
            if time.monotonic() > deadline:
                raise DeviceError(f"medoc: program {code} not ready for a trigger within {self.ready_timeout_s} s")
            time.sleep(self.poll_s)
        onset = time.time()
        do(TRIGGER)
        return Ack(self.name, float(level_c), level, float(duration_s), onset, True,
                   f"program={code} " + " ".join(sent))

    def abort(self) -> None:
        self._mark_abort()
        self._selected = None
        with self._io_lock:
            self.command(ABORT)

    def baseline(self) -> None:
        with self._io_lock:
            st = self.command(STATUS)
            if st.system_state == SYSTEM_TEST and st.test_state != TEST_READY:
                self.command(STOP)
                self._selected = None

    def status(self) -> DeviceStatus:
        with self._io_lock:
            try:
                resp = self.command(STATUS)
            except DeviceError as exc:
                if exc.code:
                    return DeviceStatus((), str(exc), exc.code, "")
                raise
        temps = () if resp.temperature_c is None else (resp.temperature_c,)
        return DeviceStatus(temps, "", 0, f"{SYSTEM_NAMES.get(resp.system_state)}/{TEST_NAMES.get(resp.test_state)}")

    def close(self) -> None:
        try:
            self.baseline()
        except DeviceError as exc:  # closing anyway; say that the device may not be at baseline
            logging.getLogger(__name__).warning("Medoc: return to baseline on close failed: %s", exc)
