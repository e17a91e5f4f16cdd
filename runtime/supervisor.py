"""Process supervisor for `decnef run`: every role a child process, restarted if it crashes.

Why processes (DESIGN.md): a crash in one role (a bad DICOM in the streamer, a display driver)
must not take the others down, and each role recovers on restart from its own outputs and
journals, so the supervisor only has to notice a non-zero exit and start the same command again.

Children are `sys.executable -m runtime.cli.main <role> ...` in their own session (a terminal
Ctrl-C reaches only the supervisor, which then stops them in a known way: SIGINT, wait, kill).
Their output is prefixed with the role name, echoed and written to `<log_dir>/<role>.log`.
The session ends when the primary role (the engine) exits 0.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import msgspec

from runtime.config import EndpointsConfig, SessionConfig


@dataclass
class Role:
    name: str
    args: list[str]
    """Arguments after `decnef` (the sub-command first)."""
    restart: bool = True
    """Start the same command again after a non-zero exit (not while stopping)."""
    primary: bool = False
    """The session is over when this role exits 0."""
    wait_for: tuple[str, str] | None = None
    """(role, text): start only once that role printed a line containing text."""
    wait_timeout: float = 120.0


@dataclass
class _Child:
    role: Role
    proc: subprocess.Popen | None = None
    restarts: int = 0
    started: float = 0.0
    reader: threading.Thread | None = None
    exit_code: int | None = None
    done: bool = False
    seen: list[str] = field(default_factory=list)


class Supervisor:
    """Start, watch, restart and stop a set of roles."""

    def __init__(self, roles: list[Role], *, log: Callable[[str], None] = print, log_dir: Path | None = None,
                 max_restarts: int = 3, stop_timeout: float = 10.0, env: dict[str, str] | None = None,
                 echo: bool | Callable[[str, str], bool] = True) -> None:
        self.children = {r.name: _Child(r) for r in roles}
        self.log = log
        self.log_dir = Path(log_dir) if log_dir else None
        self.max_restarts = max_restarts
        self.stop_timeout = stop_timeout
        self.env = dict(os.environ if env is None else env)
        self.env.setdefault("PYTHONUNBUFFERED", "1")
        self.echo = echo
        self._stop = threading.Event()
        self._stop_reason = ""
        self._lock = threading.Lock()
        self._t0 = time.monotonic()
        self.events: list[tuple[float, str, str]] = []
        """(seconds since start, role, what happened): started / finished / crashed / restarted / killed."""

    # -- public -----------------------------------------------------------------------------
    def request_stop(self, reason: str = "stop requested") -> None:
        if not self._stop.is_set():
            self._stop_reason = reason
            self._stop.set()

    def seen(self, role: str, text: str) -> bool:
        with self._lock:
            return any(text in line for line in self.children[role].seen)

    def pid(self, role: str) -> int | None:
        p = self.children[role].proc
        return p.pid if p is not None and p.poll() is None else None

    def run(self, timeout: float | None = None) -> int:
        """Supervise until the primary role finishes, a stop is requested or `timeout` s pass.
        Returns 0 (primary finished), 130 (interrupted / stopped) or 1 (a role failed for good)."""
        handlers = self._install_signals()
        status = 0
        try:
            while True:
                if self._stop.is_set():
                    status = 130
                    break
                if timeout is not None and time.monotonic() - self._t0 > timeout:
                    self.log(f"supervisor: time limit of {timeout:g} s reached; stopping")
                    status = 1
                    break
                self._start_ready()
                outcome = self._poll()
                if outcome is not None:
                    status = outcome
                    break
                time.sleep(0.05)
        finally:
            self._stop_all()
            self._restore_signals(handlers)
        return status

    # -- internals ------------------------------------------------------------------------
    def _note(self, role: str, what: str, msg: str) -> None:
        self.events.append((time.monotonic() - self._t0, role, what))
        self.log(f"supervisor: {msg}")

    def _install_signals(self):
        if threading.current_thread() is not threading.main_thread():
            return None
        old = {}
        for sig in (signal.SIGINT, signal.SIGTERM):
            old[sig] = signal.signal(sig, lambda s, _f: self.request_stop(f"{signal.Signals(s).name} received"))
        return old

    @staticmethod
    def _restore_signals(old) -> None:
        if old:
            for sig, h in old.items():
                signal.signal(sig, h)

    def _start_ready(self) -> None:
        for ch in self.children.values():
            if ch.proc is not None or ch.done:
                continue
            w = ch.role.wait_for
            if w is not None:
                other = self.children.get(w[0])
                ready = other is None or other.done or self.seen(w[0], w[1])
                if not ready and time.monotonic() - self._t0 < ch.role.wait_timeout:
                    continue
                if not ready:
                    self.log(f"supervisor: {w[0]} did not print {w[1]!r} within {ch.role.wait_timeout:g} s; starting {ch.role.name} anyway")
            self._spawn(ch)

    def _spawn(self, ch: _Child) -> None:
        cmd = [sys.executable, "-m", "runtime.cli.main", *ch.role.args]
        ch.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                   env=self.env, start_new_session=True, text=True, bufsize=1,
                                   preexec_fn=_die_with_parent if sys.platform.startswith("linux") else None)
        ch.started = time.monotonic()
        ch.exit_code = None
        what = "restarted" if ch.restarts else "started"
        self._note(ch.role.name, what, f"{ch.role.name} {what} (pid {ch.proc.pid}): decnef {' '.join(ch.role.args)}")
        ch.reader = threading.Thread(target=self._pump, args=(ch, ch.proc), name=f"pump-{ch.role.name}", daemon=True)
        ch.reader.start()

    def _pump(self, ch: _Child, proc: subprocess.Popen) -> None:
        fh = None
        if self.log_dir is not None:
            self.log_dir.mkdir(parents=True, exist_ok=True)
            fh = open(self.log_dir / f"{ch.role.name}.log", "a", encoding="utf-8")  # noqa: SIM115
        try:
            assert proc.stdout is not None
            for line in proc.stdout:
                line = line.rstrip("\n")
                with self._lock:
                    ch.seen.append(line)
                    if len(ch.seen) > 2000:
                        del ch.seen[:1000]
                if fh:
                    fh.write(line + "\n")
                    fh.flush()
                if self.echo is True or (callable(self.echo) and self.echo(ch.role.name, line)):
                    self.log(f"[{ch.role.name}] {line}")
        except (OSError, ValueError):
            pass
        finally:
            if fh:
                fh.close()

    def _poll(self) -> int | None:
        for ch in self.children.values():
            if ch.proc is None or ch.done:
                continue
            rc = ch.proc.poll()
            if rc is None:
                continue
            if ch.reader is not None:
                ch.reader.join(timeout=2.0)
            ch.exit_code = rc
            if rc == 0:
                ch.done = True
                self._note(ch.role.name, "finished", f"{ch.role.name} finished")
                if ch.role.primary:
                    return 0
                continue
            if ch.role.restart and ch.restarts < self.max_restarts and not self._stop.is_set():
                ch.restarts += 1
                self._note(ch.role.name, "crashed", f"{ch.role.name} crashed (exit {rc}); restarting ({ch.restarts}/{self.max_restarts})")
                self._spawn(ch)
                continue
            ch.done = True
            self._note(ch.role.name, "failed", f"{ch.role.name} exited with status {rc}" + ("" if ch.role.restart else " (not restarted)"))
            if ch.role.primary or ch.role.restart:
                return 1
        return None

    def _stop_all(self) -> None:
        live = [ch for ch in self.children.values() if ch.proc is not None and ch.proc.poll() is None]
        if not live:
            return
        reason = f" ({self._stop_reason})" if self._stop_reason else ""
        self.log(f"supervisor: stopping {', '.join(ch.role.name for ch in live)}{reason}")
        for ch in live:
            with contextlib.suppress(ProcessLookupError):
                ch.proc.send_signal(signal.SIGINT)  # type: ignore[union-attr]
        deadline = time.monotonic() + self.stop_timeout
        for ch in live:
            assert ch.proc is not None
            try:
                ch.proc.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    ch.proc.kill()
                ch.proc.wait(timeout=5.0)
                self._note(ch.role.name, "killed", f"{ch.role.name} did not stop within {self.stop_timeout:g} s; killed")
            ch.exit_code = ch.proc.returncode
            ch.done = True
            if ch.reader is not None:
                ch.reader.join(timeout=2.0)


def _die_with_parent() -> None:
    """Linux: the child gets SIGTERM if the supervisor dies without stopping it (kill -9), so a
    crashed supervisor never leaves orphaned roles holding the session's ports."""
    import ctypes

    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, int(signal.SIGTERM))  # PR_SET_PDEATHSIG


# -- config helpers used by `decnef run` / `decnef demo` ---------------------------------------
def absolute_paths(cfg: SessionConfig) -> SessionConfig:
    """The same config with every relative path resolved (so it can be written elsewhere)."""

    def a(p: str) -> str:
        return str(cfg.path(p).resolve()) if p else p

    s = msgspec.structs.replace
    runs = [s(r, source=a(r.source), events=a(r.events)) for r in cfg.train.runs]
    return s(
        cfg,
        scanner=s(cfg.scanner, watch_dir=a(cfg.scanner.watch_dir)),
        decoder=s(cfg.decoder, bundle=a(cfg.decoder.bundle), yoked_scores=a(cfg.decoder.yoked_scores),
                  percentile_reference=a(cfg.decoder.percentile_reference)),
        endpoints=s(cfg.endpoints, curve_keys=a(cfg.endpoints.curve_keys)),
        output=s(cfg.output, root=a(cfg.output.root)),
        denoise=s(cfg.denoise, wm_mask=a(cfg.denoise.wm_mask), csf_mask=a(cfg.denoise.csf_mask)),
        train=s(cfg.train, runs=runs, roi_mask=a(cfg.train.roi_mask), roi_atlas=a(cfg.train.roi_atlas),
                wm_mask=a(cfg.train.wm_mask), csf_mask=a(cfg.train.csf_mask)),
    )


def free_loopback_ports(n: int) -> list[int]:
    """n distinct free TCP ports on 127.0.0.1 (bound together, then released)."""
    socks = []
    try:
        for _ in range(n):
            sk = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sk.bind(("127.0.0.1", 0))
            socks.append(sk)
        return [sk.getsockname()[1] for sk in socks]
    finally:
        for sk in socks:
            sk.close()


def with_free_endpoints(cfg: SessionConfig) -> SessionConfig:
    """Replace the six endpoints by free loopback ports (demos and tests never clash)."""
    names = ("volumes", "volumes_replay", "scores", "scores_replay", "events", "events_replay")
    ports = free_loopback_ports(len(names))
    eps = {n: f"tcp://127.0.0.1:{p}" for n, p in zip(names, ports, strict=True)}
    return msgspec.structs.replace(cfg, endpoints=EndpointsConfig(curve_keys=cfg.endpoints.curve_keys, **eps))


def write_config(cfg: SessionConfig, path: Path) -> Path:
    """Write `cfg` (paths made absolute) as TOML that `load_config` reads back identically."""
    from runtime.config import resolved_toml

    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(resolved_toml(absolute_paths(cfg)), encoding="utf-8")
    return path
