"""What the experimenter at the scanner console watches during a run.

The engine already writes every number to the session outputs; this turns its message stream
(telemetry per volume, scores, gap and fault events, and optionally the display's and agent's
events) into one line per volume and per trial, alarms an operator must act on, and a run
summary. Pure: `RunMonitor.handle()` takes a decoded header and returns lines; the sockets live in
`decnef monitor`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from runtime.messages import ControlHeader, EventHeader, ScoreHeader, TelemetryHeader

ALARM = "!!"
"""Prefix of every line that asks the operator to act (easy to grep in a saved log)."""


@dataclass
class MonitorLimits:
    """When to raise an alarm. FD and correlation thresholds are the engine's NG gates."""

    fd_threshold_mm: float = 0.5
    corr_threshold: float = 0.7
    tr_s: float = 2.0
    ng_run: int = 3
    """Consecutive NG scans that raise an alarm (one NG scan is routine; a run of them is not)."""
    drift_mm: float = 2.0
    """Largest translation from the template that raises an alarm (once, until it comes back)."""
    stall_trs: float = 2.0
    """No volume for this many TRs after the first one: the scanner stopped or ingest stalled."""


@dataclass
class _Tally:
    volumes: int = 0
    ng: int = 0
    missing: list[int] = field(default_factory=list)
    faults: int = 0
    fd: list[float] = field(default_factory=list)
    engine_ms: list[float] = field(default_factory=list)
    scores: dict[int, float | None] = field(default_factory=dict)
    score_latency_ms: list[float] = field(default_factory=list)
    alarms: int = 0
    triggers: int = 0
    missed_triggers: int = 0
    agent_actions: int = 0


def _pct(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else math.nan


def _ms(v: float) -> str:
    return "  n/a" if not math.isfinite(v) else f"{v:5.1f}"


class RunMonitor:
    """Fold a run's messages into operator lines; `summary()` at any time, `ended` after engine_end."""

    def __init__(self, limits: MonitorLimits | None = None, *, show_volumes: bool = True) -> None:
        self.limits = limits or MonitorLimits()
        self.show_volumes = show_volumes
        self.tally = _Tally()
        self.ended: str | None = None
        self._ng_streak: list[int] = []
        self._drifted = False
        self._last_volume_at: float | None = None
        self._stall_reported = False

    # -- messages ----------------------------------------------------------------------------------
    def handle(self, header: Any, now: float) -> list[str]:
        if isinstance(header, TelemetryHeader):
            return self._telemetry(header, now)
        if isinstance(header, ScoreHeader):
            return self._score(header)
        if isinstance(header, EventHeader):
            return self._event(header)
        if isinstance(header, ControlHeader) and header.command in ("stop", "abort"):
            return [self._alarm(f"run {header.command} requested")]
        return []

    def idle(self, now: float) -> list[str]:
        """Call when nothing arrived: reports a stalled stream once per stall."""
        lim = self.limits
        if self.ended or self._last_volume_at is None or self._stall_reported:
            return []
        waited = now - self._last_volume_at
        if waited <= lim.stall_trs * lim.tr_s:
            return []
        self._stall_reported = True
        return [self._alarm(f"no volume for {waited:.1f} s (TR {lim.tr_s:g} s): scanner stopped or ingest stalled")]

    def _alarm(self, text: str) -> str:
        self.tally.alarms += 1
        return f"{ALARM} {text}"

    def _telemetry(self, h: TelemetryHeader, now: float) -> list[str]:
        t, lim, out = self.tally, self.limits, []
        t.volumes += 1
        self._last_volume_at, self._stall_reported = now, False
        fd = float(h.framewise_displacement)
        if math.isfinite(fd):
            t.fd.append(fd)
        engine_ms = float(sum(v for v in h.timings.values() if isinstance(v, int | float)))
        t.engine_ms.append(engine_ms)
        why = []
        if h.ng:
            t.ng += 1
            if lim.fd_threshold_mm > 0 and fd > lim.fd_threshold_mm:
                why.append(f"FD>{lim.fd_threshold_mm:g}")
            if h.template_corr is not None and h.template_corr < lim.corr_threshold:
                why.append(f"corr<{lim.corr_threshold:g}")
            self._ng_streak.append(h.volume)
        else:
            self._ng_streak = []
        if self.show_volumes:
            corr = "  n/a" if h.template_corr is None else f"{h.template_corr:5.3f}"
            trans = " ".join(f"{v:+5.2f}" for v in (h.trans_x, h.trans_y, h.trans_z))
            rot = " ".join(f"{math.degrees(v):+5.2f}" for v in (h.rot_x, h.rot_y, h.rot_z))
            flag = f"  NG ({', '.join(why) or 'gate'})" if h.ng else ""
            out.append(f"vol {h.volume:4d}  FD {fd:5.2f} mm  corr {corr}  trans {trans} mm  rot {rot} deg"
                       f"  it {h.iterations:2d}  {_ms(engine_ms)} ms{flag}")
        if len(self._ng_streak) == lim.ng_run:
            out.append(self._alarm(f"{lim.ng_run} NG scans in a row (volumes {self._ng_streak[0]}-{self._ng_streak[-1]}):"
                                   " check the participant's head position"))
        drift = max(abs(h.trans_x), abs(h.trans_y), abs(h.trans_z))
        if drift > lim.drift_mm and not self._drifted:
            self._drifted = True
            out.append(self._alarm(f"head is {drift:.1f} mm from the template at volume {h.volume}"))
        elif drift <= lim.drift_mm:
            self._drifted = False
        return out

    def _score(self, h: ScoreHeader) -> list[str]:
        t = self.tally
        t.scores[h.trial] = h.score
        if h.t_file_complete and h.t_sent:
            t.score_latency_ms.append((h.t_sent - h.t_file_complete) * 1e3)
        label = f" {h.label}" if h.label else ""
        flags = f"  [{h.flags}]" if h.flags else ""
        if h.score is None:
            return [f"trial {h.trial:3d}{label}  NO FEEDBACK  valid scans {h.n_valid_scans}  vol {h.volume}{flags}"]
        lik = "n/a" if h.likelihood is None else f"{h.likelihood:.3f}"
        return [f"trial {h.trial:3d}{label}  score {h.score:5.1f}  likelihood {lik}  valid scans {h.n_valid_scans}"
                f"  vol {h.volume}{flags}"]

    def _event(self, h: EventHeader) -> list[str]:
        t, d = self.tally, h.data
        if h.name == "gap":
            missing = [int(m) for m in d.get("missing", [])]
            t.missing.extend(missing)
            return [self._alarm(f"volumes {', '.join(map(str, missing))} missing (declared before volume {d.get('before')})")]
        if h.name == "fault":
            t.faults += 1
            return [self._alarm(f"fault at volume {d.get('volume')}: {d.get('error')}")]
        if h.name == "engine_end":
            self.ended = str(d.get("reason", "ended"))
            return [f"engine ended: {self.ended}"]
        if h.name == "trigger":
            t.triggers += 1
            missed = d.get("missed") or []
            t.missed_triggers += len(missed)
            return [self._alarm(f"display missed triggers for scans {missed}")] if missed else []
        if h.name == "panic":
            return [self._alarm(f"PANIC pressed on the display at scan {d.get('scan')}")]
        if h.name == "watchdog_trip":
            return [self._alarm(f"STIMULATOR WATCHDOG TRIPPED: {d.get('reason')}")]
        if h.name == "agent_action":
            t.agent_actions += 1
            return [f"agent trial {d.get('trial')}: action {d.get('action')} level {d.get('level_c')} °C"]
        if h.name == "device_ack" and d.get("state") != "delivered":
            return [self._alarm(f"stimulator trial {d.get('trial')}: {d.get('state')} {d.get('detail', '')}".rstrip())]
        return []

    # -- summary -----------------------------------------------------------------------------------
    def figures(self) -> dict[str, Any]:
        t = self.tally
        scored = [s for s in t.scores.values() if s is not None]
        return {
            "volumes": t.volumes, "ng": t.ng, "missing": len(t.missing), "faults": t.faults,
            "fd_mean_mm": float(np.mean(t.fd)) if t.fd else math.nan, "fd_max_mm": max(t.fd, default=math.nan),
            "trials": len(t.scores), "no_feedback": len(t.scores) - len(scored),
            "score_mean": float(np.mean(scored)) if scored else math.nan,
            "score_latency_p50_ms": _pct(t.score_latency_ms, 50), "score_latency_p99_ms": _pct(t.score_latency_ms, 99),
            "engine_p50_ms": _pct(t.engine_ms, 50), "engine_p99_ms": _pct(t.engine_ms, 99),
            "alarms": t.alarms, "triggers": t.triggers, "missed_triggers": t.missed_triggers,
            "agent_actions": t.agent_actions, "ended": self.ended,
        }  # fmt: skip

    def summary(self) -> list[str]:
        f = self.figures()
        ng_pct = 100.0 * f["ng"] / f["volumes"] if f["volumes"] else 0.0
        lines = [
            f"volumes {f['volumes']}  NG {f['ng']} ({ng_pct:.0f} %)  missing {f['missing']}  faults {f['faults']}",
            f"FD mean {f['fd_mean_mm']:.2f} mm  max {f['fd_max_mm']:.2f} mm",
            f"trials {f['trials']}  no feedback {f['no_feedback']}  mean score {f['score_mean']:.1f}",
            f"file complete -> score published p50 {_ms(f['score_latency_p50_ms'])} ms  p99 {_ms(f['score_latency_p99_ms'])} ms;"
            f"  engine per volume p50 {_ms(f['engine_p50_ms'])} ms  p99 {_ms(f['engine_p99_ms'])} ms",
            f"alarms {f['alarms']}",
        ]
        if f["triggers"] or f["agent_actions"]:
            lines.append(f"display triggers {f['triggers']} (missed {f['missed_triggers']})  agent actions {f['agent_actions']}")
        return lines
