"""The `decnef agent` role: scores in, thermal stimuli out, inside hard safety limits.

Per trial k (METHOD.md §3, E17–E19):
  choose option a_k (E19) → the task's hidden contingency (`SimulatedEnvironment`: option a has
  P(high) = p_high[a], optionally reversed) gives high/low → the stimulus is delivered through
  the `SafetyGuard` at the trial's induction onset → the engine scores the post-stimulus window
  → reward r_k = 1 − P̂(high) or binary (E17) → update (E18) → choose a_{k+1}.

Why the parts are where they are:
- **Timing from the scan stream.** The onset of trial k is scan `s_k` of the protocol table
  (its induction start). Volume v's file is complete when scan v+1 starts, so the engine's
  telemetry for volume s_k − 1 arriving *live* marks the start of scan s_k: the stimulus is
  delivered then. Messages replayed after a restart are history (their `t_sent` is old):
  they rebuild state but never trigger a stimulus.
- **Watchdog.** Fed by every message from the engine (and the display); it aborts and returns
  the thermode to baseline after 2 TR of silence (engine dead or stalled), on a display
  "panic" event, on a device error (polled) — then the guard latches until an operator rearms.
- **Crash/restart.** `*_agent.tsv` (one row per trial) is the learner's memory: a restarted
  agent replays it (same seed → same random draws) to rebuild values and RNG states. The
  device log (`*_device.tsv`) holds a `trial` marker before every delivery, the per-run budget
  and the last onset, so a restart neither repeats a stimulus nor loosens the ISI or budget.
  The first thing a (re)started agent does is connect and command baseline; a fresh run then
  calls `start_run`, a resumed one `resume` with what the log says was used.
- **Scaled clock.** For fast simulations the guard, watchdog (and the participant's emulated
  thermode) may run on `time.monotonic() × scale` — a pure function, so all processes and
  restarts agree. Allowed only with a simulated or emulated (pseudo-terminal) device.
"""

from __future__ import annotations

import contextlib
import math
import os
import signal
import stat
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec
import numpy as np

from runtime.config import SessionConfig
from runtime.errors import ConfigError, UserError
from runtime.messages import (
    TOPIC_EVENT,
    TOPIC_SCORE,
    TOPIC_TELEMETRY,
    EventHeader,
    ScoreHeader,
    TelemetryHeader,
)
from runtime.outputs import read_tsv, run_file
from runtime.protocol import build_table
from stimulus.agent.environment import SimulatedEnvironment
from stimulus.agent.learners import compute_reward, make_learner
from stimulus.agent.log import AgentLog, agent_columns

Log = Callable[[str], None]

CLEAN_STOPS = ("agent stopped", "end of run")
"""Abort reasons of a clean shutdown: a restart after them is not latched."""


# -- clock and device checks ------------------------------------------------------------------
def scaled_clock(scale: float) -> Callable[[], float]:
    """`time.monotonic() × scale`: simulated seconds, identical in every process and restart."""
    if scale == 1.0:
        return time.monotonic
    return lambda: time.monotonic() * scale


def is_pseudo_terminal(port: str) -> bool:
    """True for a pseudo-terminal (an emulator), which can never be a USB serial device."""
    if not port:
        return False
    real = os.path.realpath(port)
    if real.startswith("/dev/pts/"):
        return True
    try:
        st = os.stat(real)
    except OSError:
        return False
    return stat.S_ISCHR(st.st_mode) and 136 <= os.major(st.st_rdev) <= 143  # Unix98 pty slaves


def is_emulated(stim: Any) -> bool:
    """The stimulator is simulated in memory or an emulator on a pseudo-terminal."""
    if stim.kind == "simulated":
        return True
    return stim.kind == "tcs2" and is_pseudo_terminal(stim.port)


def check_time_scale(stim: Any, scale: float) -> None:
    if not (math.isfinite(scale) and scale >= 1.0):
        raise UserError(f"--time-scale: expected a number >= 1, got {scale!r}")
    if scale != 1.0 and not is_emulated(stim):
        where = f" on {stim.port}" if stim.port else ""
        raise UserError(f"--time-scale {scale:g}: a scaled clock is only allowed with a simulated or emulated "
                        f"stimulator, not stimulator.kind = {stim.kind!r}{where} (a real device runs in real time)")


def wait_for_port_file(path: Path, timeout_s: float = 60.0) -> str:
    """The serial port written into `path` by the process that owns an emulated device."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError):
            text = path.read_text(encoding="utf-8").strip()
            if text:
                return text
        time.sleep(0.05)
    raise UserError(f"--port-file {path}: no port written within {timeout_s:g} s")


# -- restart state ----------------------------------------------------------------------------
def _float(value: str | None) -> float | None:
    if value in (None, "", "n/a"):
        return None
    try:
        v = float(value)  # type: ignore[arg-type]
    except ValueError:
        return None
    return v if math.isfinite(v) else None


def _detail(detail: str) -> dict[str, str]:
    out = {}
    for part in detail.split():
        k, sep, v = part.partition("=")
        if sep:
            out[k] = v
    return out


@dataclass
class DeviceHistory:
    """What the device log says about the current run (after its last `start_run`)."""

    started: bool = False
    budget_used_s: float = 0.0
    last_command: tuple[float, float, float] | None = None
    """(time_mono, level_c, duration_s) of the last accepted command."""
    trials: dict[int, dict[str, str]] = field(default_factory=dict)
    """trial -> marker fields (action, level, high) and the outcome ('ack', 'refused', ...)."""
    latched: str | None = None
    """Reason of an abort not followed by a rearm (None: armed or cleanly stopped)."""


def read_device_history(path: Path) -> DeviceHistory:
    rows = read_tsv(path)
    start = max((i for i, r in enumerate(rows) if r.get("event") == "start_run"), default=None)
    h = DeviceHistory(started=start is not None)
    if start is None:
        return h
    trial: int | None = None
    for r in rows[start + 1:]:
        ev, detail = r.get("event", ""), r.get("detail", "") or ""
        if ev == "trial":
            d = _detail(detail)
            with contextlib.suppress(KeyError, ValueError):
                trial = int(d["trial"])
                h.trials[trial] = dict(d, outcome="marked")
        elif ev == "command":
            used = _float(_detail(detail).get("budget_used_s"))
            if used is not None:
                h.budget_used_s = max(h.budget_used_s, used)
            t, lvl, dur = _float(r.get("time_mono")), _float(r.get("level_c")), _float(r.get("duration_s"))
            if t is not None and lvl is not None and dur is not None:
                h.last_command = (t, lvl, dur)
            if trial in h.trials:
                h.trials[trial]["outcome"] = "command"
        elif ev in ("ack", "refused", "interrupted", "device_error") and trial in h.trials:
            h.trials[trial]["outcome"] = ev
            h.trials[trial]["ack"] = detail
        elif ev == "abort":
            h.latched = None if detail in CLEAN_STOPS else detail
        elif ev == "rearm":
            h.latched = None
    return h


def read_agent_rows(path: Path) -> list[dict[str, str]]:
    """Complete rows of an existing agent.tsv (a line cut short by a kill is dropped)."""
    return [r for r in read_tsv(path) if r.get("trial") and r.get("action") not in (None, "")]


class _AppendingAgentLog(AgentLog):
    """`AgentLog` that keeps the rows of an earlier incarnation (restart) instead of truncating."""

    def __init__(self, path: str | Path, n_options: int):  # noqa: D107 - same as AgentLog
        self.path = Path(path)
        self.n_options = n_options
        self.columns = agent_columns(n_options)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        text = self.path.read_text(encoding="utf-8") if self.path.exists() else ""
        if text and not text.endswith("\n"):  # drop a row cut short by a kill
            self.path.write_text(text[: text.rfind("\n") + 1], encoding="utf-8")
            text = text[: text.rfind("\n") + 1]
        if text and text.split("\n", 1)[0].split("\t") != self.columns:
            raise ConfigError(f"{self.path}: existing agent log has other columns (agent.n_options changed?)")
        self._fh = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 - open for the run
        if not text:
            self._fh.write("\t".join(self.columns) + "\n")
            self._fh.flush()


# -- per-trial state ----------------------------------------------------------------------------
@dataclass
class Trial:
    number: int
    onset_scan: int
    action: int
    values: np.ndarray
    probs: np.ndarray
    high: bool
    level_c: float
    optimal: int
    state: str = "planned"
    """planned → delivered | refused | failed | missed; then closed when its row is written."""
    delivered_level: float | None = None
    ack: str = ""
    closed: bool = False


@dataclass
class AgentSummary:
    trials: int = 0
    delivered: int = 0
    rewarded: int = 0
    resumed_after: int = 0
    trips: list[str] = field(default_factory=list)
    ended_by: str = ""
    agent_tsv: Path | None = None
    device_tsv: Path | None = None
    actions: list[int] = field(default_factory=list)
    optimal: list[int] = field(default_factory=list)

    def fraction_optimal(self, first: int = 1, last: int | None = None) -> float:
        pairs = list(zip(self.actions, self.optimal, strict=True))[first - 1: last]
        return sum(a == o for a, o in pairs) / len(pairs) if pairs else float("nan")


# -- the role --------------------------------------------------------------------------------------
class Agent:
    """One run of the co-adaptive agent with its sockets, device and files (see `run_agent`)."""

    def __init__(self, cfg: SessionConfig, *, output_root: str | Path | None = None, time_scale: float = 1.0,
                 port: str | None = None, log: Log = print, device_poll_s: float | None = None) -> None:
        from stimulus.devices import SafetyGuard, SafetyLimits, Watchdog, build_stimulator

        if port:
            cfg = msgspec.structs.replace(cfg, stimulator=msgspec.structs.replace(cfg.stimulator, port=port))
        if not cfg.agent.enabled:
            raise ConfigError("key 'agent.enabled': false; set it to true to run the agent")
        if cfg.stimulator.kind == "none":
            raise ConfigError("key 'stimulator.kind': 'none'; the agent needs simulated, tcs2 or medoc")
        check_time_scale(cfg.stimulator, time_scale)
        self.cfg = cfg
        self.log = log
        self.scale = float(time_scale)
        self.clock = scaled_clock(self.scale)
        self.table = build_table(cfg.protocol)
        if not self.table.trials:
            raise ConfigError("key 'protocol.n_trials': the agent needs at least one trial")
        self.tr_wall = cfg.protocol.tr / self.scale
        self.session_id = f"sub-{cfg.session.subject}_ses-{cfg.session.session}"
        a = cfg.agent
        self.agent_path = run_file(cfg, "agent.tsv", output_root)
        self.device_path = run_file(cfg, "device.tsv", output_root)
        self.summary = AgentSummary(agent_tsv=self.agent_path, device_tsv=self.device_path)

        # learner + task contingency, rebuilt from agent.tsv (same seeds -> same random streams)
        self.learner = make_learner(a)
        self.env = SimulatedEnvironment(a.p_high, a.reversal_trial, seed=np.random.default_rng([a.seed & 0xFFFFFFFF, 17]))
        old_rows = read_agent_rows(self.agent_path)
        history = read_device_history(self.device_path)
        self.done: set[int] = set()
        for r in old_rows:
            k, act = int(r["trial"]), int(r["action"])
            self.learner.choose()
            self.env.draw(act, k)
            reward = _float(r.get("reward"))
            if reward is not None:
                self.learner.update(act, reward)
            self.done.add(k)
            self.summary.actions.append(act)
            self.summary.optimal.append(self.env.optimal_action(k))
        self.summary.resumed_after = max(self.done, default=0)
        resumed = bool(old_rows) or history.started

        # device: connect and command baseline first, whatever happened before
        kw: dict[str, Any] = {"clock": self.clock} if cfg.stimulator.kind == "simulated" else {}
        limits = SafetyLimits.from_config(cfg.stimulator)
        self.guard = SafetyGuard(build_stimulator(cfg.stimulator, **kw), limits, self.device_path, clock=self.clock)
        from stimulus.devices import DeviceError

        try:
            self.guard.connect()
            self.guard.baseline()
        except DeviceError as exc:
            self.guard.close()
            raise UserError(f"stimulator ({cfg.stimulator.kind}): {exc}") from None
        if resumed:
            last = history.last_command
            onset = busy = None
            if last is not None:
                from stimulus.devices import thermal

                onset = last[0] * self.scale
                busy = onset + thermal.duration(self.guard.predicted_profile(last[1], last[2]))
            self.guard.resume(history.budget_used_s, onset, busy)
            if history.latched:
                self.guard.abort(f"still latched after restart: {history.latched}")
        else:
            self.guard.start_run()
        self._history = history
        self.agent_log = _AppendingAgentLog(self.agent_path, a.n_options)

        self._tripped: list[str] = []
        self._trip_lock = threading.Lock()
        self.watchdog = Watchdog(self.guard, cfg.stimulator.watchdog_tr * cfg.protocol.tr,
                                 device_poll_s=cfg.protocol.tr if device_poll_s is None else device_poll_s,
                                 clock=self.clock, on_trip=self._on_trip)
        self.publisher = self._make_publisher(output_root)
        self.current: Trial | None = None
        self.scan = -1
        self.finished = False
        self._announced: set[int] = set()

    # -- sockets ------------------------------------------------------------------------------------
    def _keys(self, role: str):
        from runtime.transport import load_keys

        ep = self.cfg.endpoints
        return load_keys(self.cfg.path(ep.curve_keys) if ep.curve_keys else None, role)

    def _make_publisher(self, output_root):
        from runtime.transport import ReliablePublisher

        a, ep = self.cfg.agent, self.cfg.endpoints
        if a.events:
            pub, rep = a.events, a.events_replay
        elif not self.cfg.display.enabled:
            pub, rep = ep.events, ep.events_replay
        else:
            self.log("agent: display publishes on endpoints.events and agent.events is empty: agent events go to the logs only")
            return None
        if not rep:
            raise ConfigError("key 'agent.events_replay': expected a replay endpoint with agent.events")
        try:
            return ReliablePublisher(pub, rep, run_file(self.cfg, "journal", output_root), stream="agent_events",
                                     curve=self._keys("server"))
        except OSError as exc:
            raise UserError(f"agent events: {exc}") from None

    def subscribe(self):
        """Engine stream (scores, telemetry, events) from seq 0: a restart catches up on all of it."""
        from runtime.transport import ReliableSubscriber

        ep = self.cfg.endpoints
        main = ReliableSubscriber(ep.scores, ep.scores_replay, topics=[TOPIC_SCORE, TOPIC_TELEMETRY, TOPIC_EVENT],
                                  start_seq=0, curve=self._keys("client"))
        display = None
        if self.cfg.display.enabled:
            display = ReliableSubscriber(ep.events, ep.events_replay, topics=[TOPIC_EVENT], start_seq=0,
                                         curve=self._keys("client"))
        return main, display

    def publish(self, name: str, data: dict[str, Any]) -> None:
        if self.publisher is not None:
            self.publisher.publish(EventHeader(session=self.session_id, run=self.cfg.session.run, name=name, data=data))

    # -- watchdog -------------------------------------------------------------------------------------
    def _on_trip(self, reason: str) -> None:  # watchdog thread: hand over to the main loop
        with self._trip_lock:
            self._tripped.append(reason)

    def _drain_trips(self) -> None:
        with self._trip_lock:
            trips, self._tripped = self._tripped, []
        for reason in trips:
            self.summary.trips.append(reason)
            self.log(f"agent: WATCHDOG TRIPPED: {reason}; thermode at baseline, stimulation latched off")
            self.publish("watchdog_trip", {"reason": reason, "scan": self.scan})

    def panic(self, reason: str = "display panic") -> None:
        self.watchdog.panic(reason)

    # -- trials ---------------------------------------------------------------------------------------
    def _onset(self, k: int) -> int:
        return self.table.trials[k - 1].induction.start

    def _open(self, k: int) -> None:
        """Choose the option of trial k (E19) and draw its stimulus level from the contingency."""
        values = self.learner.values
        action, probs = self.learner.choose()
        high = self.env.draw(action, k)
        st = self.cfg.stimulator
        t = Trial(k, self._onset(k), action, values, np.asarray(probs, float), high, st.high_c if high else st.low_c,
                  self.env.optimal_action(k))
        marker = self._history.trials.get(k)
        if marker is not None:  # delivered (or tried) by the previous incarnation: never again
            t.action = int(marker.get("action", action))
            t.high = marker.get("high", "1" if high else "0") == "1"
            t.level_c = float(marker.get("level", t.level_c))
            outcome = marker.get("outcome", "marked")
            t.state = "delivered" if outcome in ("ack", "command") else "failed"
            t.delivered_level = t.level_c if outcome in ("ack", "command") else None
            t.ack = marker.get("ack", f"{outcome} before restart")
        self.current = t
        self.publish("agent_action", {"trial": k, "action": t.action, "level_c": t.level_c, "high": t.high,
                                      "values": [float(v) for v in values], "probs": [float(p) for p in probs],
                                      "onset_scan": t.onset_scan, "resumed": marker is not None})

    def _deliver(self, t: Trial, late: bool) -> None:
        from stimulus.devices import DeviceError, SafetyViolation

        plateau = self.cfg.stimulator.plateau_s
        self.guard.log.write("trial", t.level_c, plateau,
                             f"trial={t.number} action={t.action} level={t.level_c} high={int(t.high)} scan={self.scan}")
        self.publish("device_command", {"trial": t.number, "level_c": t.level_c, "duration_s": plateau,
                                        "scan": self.scan, "late": late})
        try:
            ack = self.guard.deliver(t.level_c, plateau)
        except SafetyViolation as exc:
            t.state, t.ack = "refused", f"refused: {exc}"
        except DeviceError as exc:
            t.state, t.ack = "failed", f"device error: {exc}"
        else:
            t.state, t.ack, t.delivered_level = "delivered", ack.summary(), ack.level_c
            self.summary.delivered += 1
        self.publish("device_ack", {"trial": t.number, "state": t.state, "detail": t.ack,
                                    "level_c": t.delivered_level})
        self.log(f"agent: trial {t.number:3d} option {t.action} {'HIGH' if t.high else 'low '} {t.level_c:.1f} C "
                 f"at scan {self.scan + 1}{' (late)' if late else ''}: {t.state}" + ("" if t.state == "delivered" else f" ({t.ack})"))

    def _close(self, t: Trial, likelihood: float | None, score: float | None) -> None:
        reward = pe = None
        if likelihood is not None and math.isfinite(likelihood) and t.state == "delivered":
            reward = compute_reward(likelihood, self.cfg.agent.reward)
            pe = self.learner.update(t.action, reward)
            self.summary.rewarded += 1
        self.agent_log.write(t.number, t.action, t.values, t.probs, reward, pe, t.delivered_level, t.ack, t.optimal)
        t.closed = True
        self.done.add(t.number)
        self.summary.trials += 1
        self.summary.actions.append(t.action)
        self.summary.optimal.append(t.optimal)
        self.publish("agent_reward", {"trial": t.number, "likelihood": likelihood, "score": score, "reward": reward,
                                      "prediction_error": pe, "values": [float(v) for v in self.learner.values]})
        lik = "  n/a" if likelihood is None else f"{likelihood:5.2f}"
        self.log(f"agent: trial {t.number:3d} P(high) {lik} reward {'n/a' if reward is None else f'{reward:.2f}'}  "
                 f"Q {np.array2string(self.learner.values, precision=2)}  optimal {t.optimal}")

    def _next_open(self) -> None:
        """Open the first trial not yet logged (after the current one)."""
        start = self.current.number + 1 if self.current is not None else 1
        for k in range(start, len(self.table.trials) + 1):
            if k in self.done:
                continue
            self._open(k)
            return
        self.current = None
        self.finished = True
        self.summary.ended_by = self.summary.ended_by or "all trials done"

    def on_score(self, h: ScoreHeader) -> None:
        t = self.current
        if t is None or h.trial != t.number or t.closed:
            return  # a trial already logged (catch-up after restart) or a late duplicate
        if t.state == "planned":  # its onset never came (volumes lost); nothing was delivered
            t.state, t.ack = "missed", "missed onset: no scan seen before the score"
        lik = h.likelihood if h.likelihood is not None and math.isfinite(h.likelihood) else None
        self._close(t, lik, h.score)
        self._next_open()

    def on_scan(self, v: int, live: bool) -> None:
        """A scan index seen on the stream (telemetry or a gap): deliver at the trial onset."""
        self.scan = max(self.scan, v)
        while self.current is not None:
            t = self.current
            if t.state == "planned":
                if v < t.onset_scan - 1:
                    return
                if v <= t.onset_scan and live:
                    self._deliver(t, late=v >= t.onset_scan)
                else:
                    t.state, t.ack = "missed", "missed onset (agent not running at the trial's onset)"
                    self.log(f"agent: trial {t.number:3d} {t.ack}")
                return
            # delivered (or not) and waiting for its score: give up when the next onset is due
            nxt = t.number + 1
            if nxt <= len(self.table.trials) and v >= self._onset(nxt) - 1:
                self._close(t, None, None)
                self._next_open()
                continue
            return

    def handle(self, header: Any, live: bool) -> None:
        if isinstance(header, ScoreHeader):
            self.on_score(header)
        elif isinstance(header, TelemetryHeader):
            self.on_scan(header.volume, live)
        elif isinstance(header, EventHeader):
            if header.name == "gap":
                before = header.data.get("before")
                if isinstance(before, int):
                    self.on_scan(before - 1, live)
            elif header.name == "engine_end":
                t = self.current
                if t is not None and not t.closed and t.state != "planned":
                    self._close(t, None, None)
                self.finished = True
                self.summary.ended_by = f"engine ended ({header.data.get('reason', '?')})"
            elif header.name == "panic":
                self.panic(f"display panic (scan {header.data.get('scan', '?')})")

    # -- main loop ------------------------------------------------------------------------------------
    def run(self, stop: threading.Event | None = None) -> AgentSummary:
        stop = stop or threading.Event()
        main, display = self.subscribe()
        n = len(self.table.trials)
        try:
            if self.done and len(self.done) >= n:
                self.finished = True
                self.summary.ended_by = "already complete"
            else:
                self._next_open()
            self.watchdog.start()
            self.log(f"agent ready: {self.cfg.agent.learner}/{self.cfg.agent.policy} on {n} trials, "
                     f"{self.guard.driver.name} stimulator, time scale {self.scale:g}"
                     + (f"; resumed after trial {self.summary.resumed_after}" if self.summary.resumed_after else ""))
            while not self.finished:
                if stop.is_set():
                    self.summary.ended_by = "stopped"
                    break
                msg = main.recv(20)
                if msg is not None:
                    header, _ = msg
                    live = time.time() - header.t_sent <= max(self.tr_wall, 0.25)
                    self.watchdog.feed(type(header).__name__)
                    self.handle(header, live)
                if display is not None:
                    dmsg = display.recv(0)
                    if dmsg is not None:
                        self.watchdog.feed("display")
                        self.handle(dmsg[0], live=True)
                self._drain_trips()
        finally:
            self.watchdog.stop()
            self._drain_trips()
            main.close()
            if display is not None:
                display.close()
        return self.summary

    def close(self) -> None:
        reason = "end of run" if self.finished else "agent stopped"
        with contextlib.suppress(Exception):
            self.guard.abort(reason)  # stop anything in flight, baseline; a clean reason does not latch a restart
        with contextlib.suppress(Exception):
            self.guard.close()
        self.agent_log.close()
        if self.publisher is not None:
            time.sleep(0.5)  # keep the replay server up a moment: late subscribers catch the last events
            self.publisher.close()


def run_agent(cfg: SessionConfig, *, output_root: str | Path | None = None, time_scale: float = 1.0,
              port: str | None = None, stop_event: threading.Event | None = None, log: Log = print,
              ready: Callable[[Agent], None] | None = None) -> AgentSummary:
    """Run the agent until the run ends (engine end, all trials, SIGTERM/Ctrl-C or `stop_event`)."""
    stop = stop_event or threading.Event()
    agent = Agent(cfg, output_root=output_root, time_scale=time_scale, port=port, log=log)
    old = None
    if threading.current_thread() is threading.main_thread():
        old = signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        if ready is not None:
            ready(agent)
        try:
            summary = agent.run(stop)
        except KeyboardInterrupt:
            agent.summary.ended_by = "interrupted"
            summary = agent.summary
    finally:
        agent.close()
        if old is not None:
            signal.signal(signal.SIGTERM, old)
    s = summary
    half = len(s.actions) // 2
    log(f"agent end ({s.ended_by}): {s.trials} trials logged this process, {s.delivered} stimuli delivered, "
        f"{s.rewarded} rewarded; optimal choices {s.fraction_optimal():.2f} overall, "
        f"{s.fraction_optimal(half + 1):.2f} in the second half" + (f"; watchdog trips: {len(s.trips)}" if s.trips else ""))
    log(f"outputs: {s.agent_tsv}  {s.device_tsv}")
    return summary
