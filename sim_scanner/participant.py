"""Virtual participant of the co-adaptive pain loop: a head in a scanner with a thermode on the arm.

What stands in for the human (and the scanner) in `decnef run configs/pain_coadaptive.toml
--simulate`: it owns the emulated TCS II (`TCS2Emulator` on a pseudo-terminal, whose port the
agent's driver opens), learns what was delivered from what the thermode really did (the
emulator's `stimuli`: onset, peak, time above threshold, aborts included), and writes one EPI
volume per TR as DICOM into the scanner's export folder, in closed loop.

Model (all seeded; documented here because the test figures depend on it):

- **Perceived pain** of stimulus k from the thermode's real peak temperature T_k:
  π_k = logistic((T_k − pain_threshold_c) / pain_slope_c)  (43 °C, 1.5 °C: 46 °C → 0.88,
  40 °C → 0.12).
- **Engagement** e ∈ [0, 1] follows the relief the participant experiences: after each
  stimulus e ← e + engagement_rate · ((1 − π_k) − e). A participant whose agent "helps"
  (delivers low stimuli) becomes more engaged. Per Zhang et al. 2020 (attentional modulation of
  pain; insula decodability unchanged or degraded with learning), engagement weakens how
  strongly pain is encoded in the ROI: the pain amplitude of stimulus k is
  π_k · (1 − engagement_modulation · e_k) · g_k, with g_k ~ N(1, response_sd²) (clipped ≥ 0.2),
  using the engagement *before* the stimulus. The rating (VAS 0–10) of the trial is the same
  modulated pain ×10 plus N(0, 0.5²), rounded.
- **Pain ROI BOLD.** Two fixed spatial patterns of the phantom's posterior ROI
  (`HeadPhantom.patterns`): pattern 0 = pain, scaled by the pain amplitude × `pain_effect`;
  pattern 1 = intensity-independent touch/heat, scaled by g_k × `touch_effect`. The neural input
  of a stimulus is a boxcar over the seconds the thermode spent above baseline + 2 °C, convolved
  with the SPM double-gamma HRF (haemodynamic delay: peak ≈ 5–6 s after onset), sampled at the
  middle of each volume's acquisition.
- **Scanner.** `sim_scanner.phantom`: analytic head, coil bias, slow drift, smooth random head
  motion (`motion_mm`), AR(1) physiological noise and Rician thermal noise (`noise`).

Day 1 (`simulate_day1`): the sham decoder-construction run — the same model with stimuli that
are *not* decoder-driven (half high, half low, random order) at each trial's induction onset,
written as DICOM with a BIDS events.tsv (high/low) and the ROI mask, then `decnef train`
(`prepare_session`) builds the high-vs-low decoder bundle used on day 2.

Time: `speed` > 1 runs scanner, thermode emulator (and, in the agent, guard and watchdog) on a
scaled clock `time.monotonic() × speed`; the agent refuses a scaled clock with a real device.
"""

from __future__ import annotations

import contextlib
import csv
import json
import math
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec
import numpy as np

from runtime.config import SessionConfig
from runtime.errors import UserError
from runtime.protocol import build_table
from runtime.volume import Volume
from sim_scanner.phantom import (
    HeadPhantom,
    NoiseModel,
    double_gamma_hrf,
    motion_walk,
    rigid_matrix,
    write_mask,
)

Log = Callable[[str], None]
SUPRA_MARGIN_C = 2.0
"""Seconds above baseline + this count as the stimulus's neural input (as the guard's budget)."""


# -- the participant's response model ------------------------------------------------------------
@dataclass
class Stimulus:
    """One stimulus as the participant felt it, in seconds from the start of scan 0."""

    onset_s: float
    peak_c: float
    hot_s: float
    pain: float
    engagement: float
    """Engagement before this stimulus (it sets how strongly the pain is encoded)."""
    gain: float
    pain_amplitude: float
    rating: int


class PainModel:
    """Perceived pain, engagement and the HRF-convolved ROI amplitudes (see module docstring)."""

    def __init__(self, p: Any, baseline_c: float, seed: int | np.random.Generator = 0, dt: float = 0.05) -> None:
        self.p = p
        self.baseline_c = float(baseline_c)
        self.rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
        self.engagement = float(p.engagement_initial)
        self.stimuli: list[Stimulus] = []
        h = double_gamma_hrf(dt)
        self._dt = dt
        self._cum = np.concatenate([[0.0], np.cumsum(h) * dt]) / (h.sum() * dt)  # unit step -> 1

    def pain(self, peak_c: float) -> float:
        return float(1.0 / (1.0 + math.exp(-(peak_c - self.p.pain_threshold_c) / self.p.pain_slope_c)))

    def add(self, onset_s: float, peak_c: float, hot_s: float) -> Stimulus:
        """A stimulus the thermode delivered: encode it, rate it, then update engagement."""
        pain = self.pain(peak_c) if hot_s > 0 else 0.0
        e = self.engagement
        gain = float(max(self.rng.normal(1.0, self.p.response_sd), 0.2))
        felt = pain * (1.0 - self.p.engagement_modulation * e)
        rating = int(np.clip(round(10.0 * felt + self.rng.normal(0.0, 0.5)), 0, 10))
        s = Stimulus(float(onset_s), float(peak_c), float(hot_s), pain, e, gain, felt * gain, rating)
        self.stimuli.append(s)
        self.engagement = float(np.clip(e + self.p.engagement_rate * ((1.0 - pain) - e), 0.0, 1.0))
        return s

    def _step(self, x: np.ndarray) -> np.ndarray:
        """Integral of the unit-area HRF from 0 to x (0 before onset, 1 long after)."""
        idx = np.clip(x / self._dt, 0, len(self._cum) - 1)
        return np.interp(idx, np.arange(len(self._cum)), self._cum)

    def amplitudes(self, t_s: float) -> tuple[float, float]:
        """(pain, touch) fractional signal changes at time t_s (before the effect sizes)."""
        if not self.stimuli:
            return 0.0, 0.0
        on = np.array([s.onset_s for s in self.stimuli])
        dur = np.array([s.hot_s for s in self.stimuli])
        resp = self._step(t_s - on) - self._step(t_s - on - dur)
        pain = float(np.dot(resp, [s.pain_amplitude for s in self.stimuli]))
        touch = float(np.dot(resp, [s.gain if s.hot_s > 0 else 0.0 for s in self.stimuli]))
        return pain, touch


def ideal_hot_seconds(baseline_c: float, level_c: float, rise_c_s: float, return_c_s: float, plateau_s: float) -> float:
    """Seconds above baseline + 2 °C of a ramp–plateau–return stimulus (day-1 sham stimuli)."""
    thr = baseline_c + SUPRA_MARGIN_C
    if level_c <= thr:
        return 0.0
    frac = (level_c - thr) / (level_c - baseline_c)
    return plateau_s + frac * (level_c - baseline_c) * (1.0 / rise_c_s + 1.0 / return_c_s)


# -- the scanner side: one volume at a time ----------------------------------------------------
class ScanRenderer:
    """`sim_scanner.phantom.simulate`, one volume at a time (the signal is known only as it happens)."""

    def __init__(self, phantom: HeadPhantom, noise: NoiseModel, n_scans: int, tr: float, *, seed: int = 0,
                 series_number: int = 5, description: str = "pain_coadaptive") -> None:
        self.ph = phantom
        self.noise = noise
        self.tr = float(tr)
        self.rng = np.random.default_rng(seed)
        self.motion = motion_walk(n_scans, noise.motion_mm, self.rng)
        self.sigma = noise.noise * phantom.brain_mean()
        x, y, _ = phantom._world.reshape(3, *phantom.shape)
        self._spatial = 1.0 + 0.5 * x / 90.0 + 0.3 * y / 100.0
        self._phase = self.rng.uniform(0, 2 * np.pi)
        self._ar = np.zeros(phantom.shape)
        self.series_number = series_number
        self.description = description
        self.series_uid = f"1.2.826.0.1.3680043.9.7433.{seed}.{series_number}"

    def volume(self, t: int, amplitudes: tuple[float, float]) -> Volume:
        n = self.noise
        trend = n.drift * (t / 100.0) * self._spatial + 0.3 * n.drift * math.sin(2 * np.pi * t / 60.0 + self._phase)
        clean = self.ph.render(rigid_matrix(self.motion[min(t, len(self.motion) - 1)]), list(amplitudes), trend)
        rho = 0.5
        self._ar = rho * self._ar + math.sqrt(1 - rho * rho) * self.rng.normal(size=self.ph.shape)
        re = clean + n.physio * n.noise * clean * self._ar + self.rng.normal(0.0, self.sigma, size=self.ph.shape)
        im = self.rng.normal(0.0, self.sigma, size=self.ph.shape)
        data = np.sqrt(re * re + im * im).astype(np.float32)
        return Volume(data=np.ascontiguousarray(data), affine=self.ph.affine.copy(), index=t, tr=self.tr,
                      acquisition_time=36000.0 + t * self.tr, series_uid=self.series_uid,
                      series_number=self.series_number, series_description=self.description,
                      manufacturer="SIEMENS", source=f"participant:{t}", meta={"EchoTime": 0.03, "FlipAngle": 77.0})


class DicomSink:
    """Writes each volume as DICOM into a folder, atomically (temporary name, then rename)."""

    def __init__(self, folder: Path, layout: str, tr: float, n_volumes: int, series_number: int, description: str) -> None:
        from runtime.dicom.write import SeriesSpec

        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.layout = layout
        self.spec = SeriesSpec(layout=layout, series_number=series_number, series_description=description,
                               tr=tr, n_volumes=n_volumes)
        self._resolved = None

    def write(self, vol: Volume) -> list[Path]:
        from runtime.dicom.write import file_name, volume_to_datasets, write_dataset

        if self._resolved is None:
            self._resolved = self.spec.resolved(vol)
        return [write_dataset(ds, self.folder / file_name(ds, self.layout), atomic=True)
                for ds in volume_to_datasets(vol, self._resolved)]


def _phantom(cfg: SessionConfig) -> tuple[HeadPhantom, NoiseModel]:
    sim = cfg.simulation
    ph = HeadPhantom(shape=tuple(sim.shape), voxel_size=tuple(sim.voxel_size_mm), seed=sim.seed)
    return ph, NoiseModel(noise=sim.noise, drift=sim.drift, motion_mm=sim.motion_mm)


def _effects(cfg: SessionConfig, pain: float, touch: float) -> tuple[float, float]:
    p = cfg.simulation.participant
    return p.pain_effect * pain, p.touch_effect * touch


STIM_COLUMNS = ["trial", "onset", "scan", "peak_c", "hot_s", "pain", "engagement", "pain_amplitude", "rating"]


def _write_stimuli(path: Path, stimuli: list[Stimulus], tr: float, table) -> None:
    onsets = {t.induction.start: t.number for t in table.trials}
    with path.open("w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh, delimiter="\t", lineterminator="\n")
        w.writerow(STIM_COLUMNS)
        for s in stimuli:
            scan = int(s.onset_s // tr)
            w.writerow([onsets.get(scan, onsets.get(scan - 1, "n/a")), f"{s.onset_s:.3f}", scan, f"{s.peak_c:.2f}",
                        f"{s.hot_s:.3f}", f"{s.pain:.4f}", f"{s.engagement:.4f}", f"{s.pain_amplitude:.4f}", s.rating])


# -- day 1: sham run for decoder construction ----------------------------------------------------
def day1_config(cfg: SessionConfig) -> SessionConfig:
    """The day-1 protocol: the day-2 trial layout with `participant.day1_trials` trials."""
    p = msgspec.structs.replace(cfg.protocol, n_trials=cfg.simulation.participant.day1_trials,
                                trial_labels=[], trial_onsets=[])
    return msgspec.structs.replace(cfg, protocol=p)


@dataclass
class Day1:
    folder: Path
    dicom: Path
    events: Path
    roi_mask: Path
    labels: list[str]


def simulate_day1(cfg: SessionConfig, out: Path, *, seed: int | None = None, log: Log = print) -> Day1:
    """Write the sham decoder-construction run (DICOM, events.tsv, ROI mask, stimuli.tsv)."""
    seed = cfg.simulation.seed if seed is None else seed
    c1 = day1_config(cfg)
    table = build_table(c1.protocol)
    tr = c1.protocol.tr
    rng = np.random.default_rng([seed & 0xFFFFFFFF, 1])
    n = len(table.trials)
    labels = np.array(["high"] * (n // 2) + ["low"] * (n - n // 2))
    rng.shuffle(labels)
    st = cfg.stimulator
    ph, noise = _phantom(cfg)
    model = PainModel(cfg.simulation.participant, st.baseline_c, np.random.default_rng([seed & 0xFFFFFFFF, 2]))
    for trial, lab in zip(table.trials, labels, strict=True):
        level = st.high_c if lab == "high" else st.low_c
        onset = trial.induction.start * tr + float(rng.uniform(0.02, 0.3))  # pipeline latency, as on day 2
        model.add(onset, level, ideal_hot_seconds(st.baseline_c, level, st.rise_rate_c_s, st.return_rate_c_s, st.plateau_s))
    out = Path(out)
    dicom = out / "dicom"
    renderer = ScanRenderer(ph, noise, table.n_scans, tr, seed=seed + 1000, series_number=3, description="pain_day1_sham")
    sink = DicomSink(dicom, cfg.simulation.participant.layout, tr, table.n_scans, 3, "pain_day1_sham")
    t0 = time.perf_counter()
    for t in range(table.n_scans):
        sink.write(renderer.volume(t, _effects(cfg, *model.amplitudes((t + 0.5) * tr))))
    events = out / "events.tsv"
    with events.open("w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh, delimiter="\t", lineterminator="\n")
        w.writerow(["onset", "duration", "trial_type"])
        for trial, lab in zip(table.trials, labels, strict=True):
            w.writerow([f"{trial.induction.start * tr:.3f}", f"{len(trial.induction) * tr:.3f}", lab])
    mask = write_mask(ph, out / "roi_mask.nii.gz", "roi")
    _write_stimuli(out / "stimuli.tsv", model.stimuli, tr, table)
    log(f"participant: day-1 sham run: {table.n_scans} volumes, {n} stimuli ({int((labels == 'high').sum())} high) "
        f"-> {dicom} ({time.perf_counter() - t0:.1f} s)")
    return Day1(out, dicom, events, mask, list(labels))


def train_config(cfg: SessionConfig, day1: Day1, bundle: Path) -> SessionConfig:
    """`cfg` whose [train] reads the day-1 run (high vs low, the [train] options of the config)."""
    from runtime.config import TrainRun

    t = cfg.train
    classes = list(t.classes) or ["high", "low"]
    train = msgspec.structs.replace(t, runs=[TrainRun(source=str(day1.dicom), events=str(day1.events))],
                                    roi_mask=t.roi_mask or str(day1.roi_mask), classes=classes)
    dec = msgspec.structs.replace(cfg.decoder, bundle=str(bundle), target_class=cfg.decoder.target_class or classes[0])
    return msgspec.structs.replace(day1_config(cfg), train=train, decoder=dec)


def prepare_session(cfg: SessionConfig, out: Path, *, log: Log = print) -> SessionConfig:
    """Day 1 for `decnef run --simulate`: sham run → `decnef train` → bundle; returns `cfg` with
    decoder.bundle set to it (reused when this seed's bundle already exists)."""
    from runtime.train import train

    if cfg.stimulator.kind != "tcs2":
        raise UserError(f"key 'stimulator.kind': got {cfg.stimulator.kind!r}; the virtual participant's thermode is an "
                        "emulated TCS II: expected 'tcs2' with simulation.kind = 'participant'")
    seed = cfg.simulation.seed
    folder = Path(out) / f"day1-seed{seed}"
    bundle = folder / "decoder" / "pain_high_vs_low.npz"
    if not bundle.exists():
        day1 = simulate_day1(cfg, folder, seed=seed, log=log)
        t0 = time.perf_counter()
        res = train(train_config(cfg, day1, bundle), bundle, log=lambda m: log(f"train: {m}"))
        r = res.report
        log(f"participant: day-1 decoder: cv accuracy {r['cv_accuracy']:.2f}, AUC {r['cv_auc']:.2f}, "
            f"{r['n_selected_voxels']} voxels -> {res.bundle_path} ({time.perf_counter() - t0:.1f} s)")
        bundle = res.bundle_path
    else:
        log(f"participant: reusing the day-1 decoder {bundle}")
    classes = list(cfg.train.classes) or ["high", "low"]
    dec = msgspec.structs.replace(cfg.decoder, bundle=str(bundle), target_class=cfg.decoder.target_class or classes[0])
    return msgspec.structs.replace(cfg, decoder=dec)


# -- day 2: the closed loop --------------------------------------------------------------------------
@dataclass
class ParticipantSummary:
    scans: int = 0
    stimuli: list[Stimulus] = field(default_factory=list)
    received: list[str] = field(default_factory=list)
    """Every command the emulated thermode received (valid or not), in order."""
    malformed: list[str] = field(default_factory=list)
    max_peak_c: float = float("nan")
    late_scans: int = 0
    ended_by: str = ""


def _write_port_file(path: Path, port: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(port + "\n", encoding="utf-8")
    os.replace(tmp, path)


def run_participant(cfg: SessionConfig, watch_dir: str | Path, *, speed: float | None = None,
                    port_file: str | Path | None = None, output_root: str | Path | None = None,
                    stop_event: threading.Event | None = None, log: Log = print, linger_s: float = 30.0,
                    emulator: Any = None) -> ParticipantSummary:
    """Scan the virtual participant in closed loop: one DICOM volume per TR into `watch_dir`,
    stimuli taken from the emulated thermode whose pty is written to `port_file`.

    Waits (up to `participant.start_timeout_s`) for the agent to configure the thermode (`Om`)
    before the first scan; after the last scan keeps the thermode alive until stopped (or
    `linger_s`), so the agent can finish cleanly.
    """
    from runtime.outputs import run_file
    from sim_scanner.emulators import TCS2Emulator

    pc = cfg.simulation.participant
    speed = float(pc.time_scale if speed is None else speed)
    if not (math.isfinite(speed) and speed >= 1.0):
        raise UserError(f"--speed: expected a factor >= 1, got {speed!r}")
    stop = stop_event or threading.Event()
    clock = (lambda: time.monotonic() * speed) if speed != 1.0 else time.monotonic
    table = build_table(cfg.protocol)
    tr = cfg.protocol.tr
    seed = cfg.simulation.seed
    ph, noise = _phantom(cfg)
    model = PainModel(pc, cfg.stimulator.baseline_c, np.random.default_rng([seed & 0xFFFFFFFF, 3]))
    renderer = ScanRenderer(ph, noise, table.n_scans, tr, seed=seed + 2000, series_number=5, description="pain_coadaptive")
    sink = DicomSink(Path(watch_dir), pc.layout, tr, table.n_scans, 5, "pain_coadaptive")
    ph.render(rigid_matrix([0.01, 0, 0, 0, 0, 0]), [0.0, 0.0])  # spline coefficients, before the clock starts
    own = emulator is None
    emu = TCS2Emulator(clock=clock).start() if own else emulator
    summary = ParticipantSummary()
    try:
        if port_file is not None:
            _write_port_file(Path(port_file), emu.port)
        log(f"participant: thermode (emulated TCS II) on {emu.port}; waiting for the agent to configure it")
        deadline = time.monotonic() + pc.start_timeout_s
        while not any(c.startswith("Om") for c in emu.commands()) and time.monotonic() < deadline and not stop.is_set():
            time.sleep(0.02)
        if not any(c.startswith("Om") for c in emu.commands()):
            log("participant: WARNING: the thermode was never configured (no agent?); scanning without stimuli")
        t0_scaled = clock()
        t0_wall = time.monotonic()
        seen = 0
        log(f"participant: scanning {table.n_scans} volumes, TR {tr:g} s, speed {speed:g} -> {watch_dir}")
        for t in range(table.n_scans):
            wake = t0_wall + (t + 1) * tr / speed
            while not stop.is_set() and time.monotonic() < wake:
                time.sleep(min(0.01, max(wake - time.monotonic(), 0.0)))
            if stop.is_set():
                summary.ended_by = "stopped"
                break
            if time.monotonic() - wake > 0.5 * tr / speed:
                summary.late_scans += 1
            new = list(emu.stimuli[seen:])  # the emulator's own record of what the thermode did
            for s in new:
                onset = s.onset - t0_scaled
                if onset > (t + 1) * tr:
                    break
                model.add(onset, s.peak_c, s.seconds_above(cfg.stimulator.baseline_c + SUPRA_MARGIN_C))
                seen += 1
            vol = renderer.volume(t, _effects(cfg, *model.amplitudes((t + 0.5) * tr)))
            sink.write(vol)
            summary.scans += 1
        else:
            summary.ended_by = "all scans written"
        log(f"participant: {summary.scans} volumes written, {len(model.stimuli)} stimuli felt "
            f"(mean rating {np.mean([s.rating for s in model.stimuli]) if model.stimuli else float('nan'):.1f}), "
            f"engagement {model.engagement:.2f}" + (f", {summary.late_scans} scans late" if summary.late_scans else ""))
        linger_end = time.monotonic() + linger_s
        while own and not stop.is_set() and time.monotonic() < linger_end:
            time.sleep(0.05)
    finally:
        summary.stimuli = list(model.stimuli)
        summary.received = emu.commands(valid_only=False)
        summary.malformed = [r.text for r in emu.malformed()]
        peaks = [s.peak_c for s in list(emu.stimuli)]
        summary.max_peak_c = max(peaks) if peaks else float("nan")
        with contextlib.suppress(OSError):
            _write_stimuli(run_file(cfg, "participant.tsv", output_root), model.stimuli, tr, table)
            run_file(cfg, "participant.json", output_root).write_text(json.dumps({
                "scans": summary.scans, "stimuli": len(model.stimuli), "engagement_final": model.engagement,
                "thermode_commands": summary.received, "malformed_commands": summary.malformed,
                "max_peak_c": None if not peaks else summary.max_peak_c, "late_scans": summary.late_scans,
                "speed": speed, "ended_by": summary.ended_by}, indent=1) + "\n")
        if own:
            emu.stop()
    return summary


# -- wiring into `decnef run --simulate` ---------------------------------------------------------------
def with_seed(cfg: SessionConfig, seed: int) -> SessionConfig:
    """`decnef run --seed N`: one seed for the simulated participant, the agent and training."""
    r = msgspec.structs.replace
    return r(cfg, simulation=r(cfg.simulation, seed=seed), agent=r(cfg.agent, seed=seed),
             train=r(cfg.train, seed=seed), decoder=r(cfg.decoder, seed=seed))


def session_speed(cfg: SessionConfig, speed_arg: float) -> float:
    """`--speed` if given (not 1), else `simulation.participant.time_scale`."""
    return float(speed_arg) if speed_arg != 1.0 else float(cfg.simulation.participant.time_scale)


def participant_role(cfg: SessionConfig, child_cfg: Path, work: Path, speed: float, role_cls: Any) -> tuple[list[str], Any]:
    """(extra `decnef agent` arguments, the participant Role) for a supervised closed-loop run:
    the participant writes its thermode's pty into `work/thermode.port`, the agent reads it."""
    port_file = Path(work) / "thermode.port"
    agent_args = ["--time-scale", f"{speed:g}", "--port-file", str(port_file)]
    role = role_cls("participant", ["participant", "--config", str(child_cfg), "--watch", cfg.scanner.watch_dir,
                                    "--speed", f"{speed:g}", "--port-file", str(port_file), "--output", cfg.output.root],
                    restart=False, wait_for=("engine", "engine ready"))
    return agent_args, role
