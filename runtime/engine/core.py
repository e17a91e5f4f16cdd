"""The engine's per-volume state machine, free of sockets and files (so it is testable alone).

For every volume, in index order (the streamer has already ordered them; gaps are declared in
`gap_before` or seen as index jumps):

    discard? → realign to the reference → reslice only the decoder voxels (+ global-signal, WM
    and CSF samples for REGRESS, runtime.nuisance) → quality gates (FD, template correlation,
    NaN) → FeatureState → at a trial's calc scan: window feature → bundle.likelihood → Scorer →
    score

and it returns what the process around it must publish and write (`VolumeResult`). A trial
whose calc scan never arrives is scored *before* the next volume is added (flag "late"), which
is exactly what the offline `runtime.features.run_features` computes for a run with that scan
missing: online and offline cannot drift apart. Missing volumes never raise; they become
"missing" motion rows and gap events.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from runtime import qc
from runtime.config import SessionConfig
from runtime.features import FC_MIN_SCANS, ConnectivityState, FeatureState
from runtime.messages import EventHeader, ScoreHeader, TelemetryHeader
from runtime.protocol import ProtocolTable, Trial, build_table
from runtime.realign import Realigner, params_to_matrix, reslice
from runtime.realign import warmup as realign_warmup
from runtime.volume import Volume

from .scoring import Scorer

MAX_GS_VOXELS = 4096
"""Global-signal sample size for REGRESS: a fixed, evenly thinned subset of the brain mask keeps
the per-volume cost at a few microseconds while its mean tracks the full-mask mean closely."""

PARAM_NAMES = ("trans_x", "trans_y", "trans_z", "rot_x", "rot_y", "rot_z")


def brain_voxels(template: np.ndarray, max_voxels: int = MAX_GS_VOXELS) -> np.ndarray:
    """(N, 3) ijk of the template's brain mask, evenly thinned to at most `max_voxels`."""
    from runtime.realign.mask import head_mask

    ijk = np.argwhere(head_mask(np.asarray(template, np.float32), dilate=0))
    if len(ijk) > max_voxels:
        ijk = ijk[:: int(math.ceil(len(ijk) / max_voxels))]
    return np.ascontiguousarray(ijk, dtype=np.int64)


def tissue_mean(values: np.ndarray) -> float:
    """Mean (float64) of a tissue's resliced values that stayed in the field of view; NaN if none."""
    v = np.asarray(values, dtype=np.float64)
    ok = np.isfinite(v)
    return float(v[ok].mean()) if ok.any() else float("nan")


def sample_roi(data: np.ndarray, affine: np.ndarray, matrix: np.ndarray, grid_shape: tuple[int, ...],
               grid_affine: np.ndarray, voxels: np.ndarray, *, order: int = 1) -> np.ndarray:
    """Values of a volume at template-grid voxels after realignment (float64).

    `runtime.realign.reslice`, plus one rule for voxels at the edge of the field of view: a point
    that a small head movement pushed less than one voxel outside the acquired slab takes the
    value at the nearest point inside it (otherwise a 0.01 mm shift would make every scan of a
    decoder with voxels in the first or last slice NaN, i.e. NG). Points further out stay NaN
    (→ the scan is NG, METHOD.md §1.4 item 3). `decnef train` should sample through this same
    function so that online and offline features agree at the edges too.
    """
    vals = reslice(data, affine, matrix, grid_shape, grid_affine, voxels=voxels, order=order).astype(np.float64)
    bad = ~np.isfinite(vals)
    if bad.any():
        from scipy import ndimage

        q = np.linalg.inv(np.asarray(affine, np.float64)) @ np.linalg.inv(np.asarray(matrix, np.float64)) \
            @ np.asarray(grid_affine, np.float64)
        ijk = np.asarray(voxels, np.float64)[bad]
        c = ijk @ q[:3, :3].T + q[:3, 3]
        hi = np.asarray(data.shape[:3], np.float64) - 1
        near = ((c >= -1) & (c <= hi + 1)).all(axis=1)
        if near.any():
            cc = np.clip(c[near], 0, hi)
            v = ndimage.map_coordinates(np.asarray(data, np.float32), cc.T, order=1, mode="nearest")
            idx = np.flatnonzero(bad)[near]
            vals[idx] = v
    return vals


@dataclass
class ScoreRecord:
    header: ScoreHeader
    trial: Trial

    def row(self) -> dict[str, Any]:
        h = self.header
        return {
            "trial": h.trial, "condition": h.condition, "label": h.label, "score": h.score,
            "likelihood": h.likelihood, "n_valid_scans": h.n_valid_scans, "flags": h.flags,
            "volume": h.volume, "t_file_complete": h.t_file_complete or None,
            "t_published": h.t_sent or None,
        }  # fmt: skip


@dataclass
class VolumeResult:
    """Everything one volume caused, in the order it must be published/written."""

    volume: int
    status: str
    """ok / ng / discard / error (could not be processed) / stale (a duplicate or older than a
    volume already handled) / gap (no volume: missing ones declared by the streamer)."""
    scores: list[ScoreRecord] = field(default_factory=list)
    telemetry: TelemetryHeader | None = None
    events: list[EventHeader] = field(default_factory=list)
    motion_rows: list[dict[str, Any]] = field(default_factory=list)
    """Rows for volumes declared missing before this one, then this volume's row."""
    timings: dict[str, float] = field(default_factory=dict)
    """Per-stage milliseconds (realign_ms, reslice_ms, qc_ms, features_ms, score_ms)."""
    t_realigned: float = 0.0
    roi: tuple[np.ndarray, bool, np.ndarray | None] | None = None
    """(values, valid, nuisance) fed to the feature state (what the ROI spool stores)."""
    is_reference: bool = False
    source: Volume | None = None
    """The volume itself (for the volume spool)."""


@dataclass
class RestoredVolume:
    """What recovery knows of a volume handled before a crash."""

    index: int
    status: str
    params: np.ndarray | None = None
    values: np.ndarray | None = None
    valid: bool = False
    nuisance: np.ndarray | None = None


class EngineCore:
    """Per-run online state; `process(volume)` per received volume, `finish()` at run end."""

    def __init__(self, cfg: SessionConfig, bundle: Any, *, table: ProtocolTable | None = None,
                 scorer: Scorer | None = None, session_id: str = "") -> None:
        self.cfg = cfg
        self.bundle = bundle
        self.table = table if table is not None else build_table(cfg.protocol)
        yoked = cfg.path(cfg.decoder.yoked_scores) if cfg.decoder.yoked_scores else None
        if scorer is None:
            from runtime.percentile import load_reference

            scorer = Scorer(cfg.decoder, yoked_path=yoked, reference=load_reference(cfg, bundle))
        self.scorer = scorer
        self.trial_linear: dict[int, float] = {}
        """Percentile scoring: the decoder's linear term u each trial was scored from."""
        self.session_id = session_id or f"sub-{cfg.session.subject}_ses-{cfg.session.session}"
        self.run = cfg.session.run
        self.voxels = np.ascontiguousarray(np.asarray(bundle.voxels).reshape(-1, 3), dtype=np.int64)
        self.grid_shape = tuple(int(n) for n in bundle.grid_shape)
        self.grid_affine = np.asarray(bundle.grid_affine, dtype=np.float64).reshape(4, 4)
        self.template = np.ascontiguousarray(bundle.template, dtype=np.float32)
        self.template_roi = self.template[tuple(self.voxels.T)].astype(np.float64)
        self.order = 3 if cfg.realign.interp == "cubic" else 1
        self.regress = cfg.denoise.method == "regress"
        self.gs_voxels = brain_voxels(self.template) if self.regress else None
        self.tissue_voxels: dict[str, np.ndarray] = {}
        """REGRESS: WM/CSF template-grid voxels (runtime.nuisance; config masks, else the bundle's)."""
        if self.regress:
            from runtime.nuisance import session_tissue_voxels

            self.tissue_voxels = session_tissue_voxels(cfg, bundle, self.grid_shape, self.grid_affine)
        self.n_nuisance = 7 + len(self.tissue_voxels) if self.regress else 0
        """Nuisance values per volume: 6 motion params, global signal, then WM, CSF if known (E8;
        FeatureState adds their first differences)."""
        self._nuis_voxels = None if self.gs_voxels is None else np.ascontiguousarray(
            np.concatenate([self.gs_voxels, *self.tissue_voxels.values()]), dtype=np.int64)
        self._nuis_split = np.cumsum([len(self.gs_voxels) if self.gs_voxels is not None else 0]
                                     + [len(v) for v in self.tissue_voxels.values()])[:-1]
        self.fc = getattr(bundle, "kind", "linear") == "connectivity"
        """Connectivity bundle (FCNef): voxel values → ROI means → window correlations."""
        self.features: FeatureState
        if self.fc:
            extra = bundle.extra
            self.features = ConnectivityState(extra["voxel_roi"], bundle.n_rois, self.table.baseline,
                                              method=cfg.denoise.method, regress_scans=cfg.denoise.regress_scans,
                                              min_scans=int(extra.get("min_valid_scans", FC_MIN_SCANS)))
        else:
            self.features = FeatureState(len(self.voxels), self.table.baseline, method=cfg.denoise.method,
                                         regress_scans=cfg.denoise.regress_scans)
        self.trial_features: dict[int, np.ndarray] = {}
        """Connectivity bundles: the pair features (r or Fisher z) each trial was scored from."""
        self._calc: dict[int, list[Trial]] = {}
        for t in self.table.trials:
            self._calc.setdefault(t.calc_scan, []).append(t)
        self.first_kept = self.table.baseline.start
        # realignment: the template realigner exists from the start (built before volume 1)
        rc = cfg.realign
        self._tmpl_realigner: Realigner | None = None
        if rc.enabled:
            self._tmpl_realigner = Realigner(self.template, self.grid_affine, max_iterations=rc.max_iterations,
                                             tolerance_mm=rc.tolerance_mm)
        self.ref_mode = rc.reference if rc.enabled else "none"
        self.ref_index: int | None = None
        """Index of the run's reference volume (first/index modes) once known."""
        self._run_realigner: Realigner | None = None
        self._ref_to_template = np.eye(4)
        self._init: np.ndarray | None = np.eye(4)
        """Warm start of the next estimate: identity for the first volume (the head is near the
        reference; the realigner falls back to coarse-to-fine by itself if not), then the
        realigner's own last result."""
        self._buffer: list[tuple[Volume, dict[str, Any]]] = []
        # run state
        self.last_index = -1
        self.handled: dict[int, str] = {}
        self.prev_params: np.ndarray | None = None
        self.scored: set[int] = set()
        self.n_volumes = 0

    # -- start-up ---------------------------------------------------------------------------
    def warmup(self) -> float:
        """Compile/load every numba kernel and exercise the template realigner and the ROI
        reslice once, so volume 1 costs what volume 100 costs. Returns elapsed ms."""
        t0 = time.perf_counter()
        realign_warmup()
        data, aff = self.template, self.grid_affine
        if self._tmpl_realigner is not None:
            self._tmpl_realigner.estimate(data, aff)
            self._tmpl_realigner.reset()
        reslice(data, aff, np.eye(4), self.grid_shape, self.grid_affine, voxels=self.voxels, order=self.order)
        if self.gs_voxels is not None:
            reslice(data, aff, np.eye(4), self.grid_shape, self.grid_affine, voxels=self.gs_voxels, order=self.order)
        return (time.perf_counter() - t0) * 1e3

    # -- per volume -----------------------------------------------------------------------------
    def process(self, vol: Volume, *, gap_before: Iterable[int] = (), t_file_complete: float = 0.0) -> list[VolumeResult]:
        """Handle one received volume; returns one result per volume actually processed (usually
        one; none while waiting for an `index` reference, several when it arrives)."""
        idx = int(vol.index)
        if idx in self.handled or idx <= self.last_index or any(b.index == idx for b, _ in self._buffer):
            return [VolumeResult(volume=idx, status="stale")]
        gaps = [int(g) for g in gap_before]
        if self.ref_mode == "index" and self._run_realigner is None and self.first_kept <= idx < self.cfg.realign.reference_index:
            self._buffer.append((vol, {"gaps": gaps, "t_file_complete": t_file_complete}))
            return []  # processed when the reference arrives
        out: list[VolumeResult] = []
        try:
            became_ref = self._ensure_reference(vol, force=bool(self._buffer))
        except Exception:  # noqa: BLE001 - a bad volume must not stop the run; _process_one reports it
            became_ref = False
        for bvol, bmeta in self._buffer:
            out.append(self._process_one(bvol, bmeta["gaps"], bmeta["t_file_complete"]))
        self._buffer.clear()
        res = self._process_one(vol, gaps, t_file_complete)
        res.is_reference = res.is_reference or became_ref
        out.append(res)
        return out

    def declare_missing(self, indices: Iterable[int]) -> VolumeResult | None:
        """The streamer declared volumes missing (gap event, end of run) before any later volume
        arrived: write them off now and score the trials whose calc scan was among them, rather
        than waiting for the next volume (same state, hence same score, only earlier)."""
        wanted = sorted(int(i) for i in indices if int(i) > self.last_index)
        if not wanted or self._buffer:
            return None
        upto = wanted[-1]
        res = VolumeResult(volume=upto, status="gap")
        missing = [m for m in range(self.last_index + 1, upto + 1) if m not in self.handled]
        res.scores.extend(self._score_pending(upto + 1))
        for sc in res.scores:
            sc.header.volume = upto  # triggered by the declaration of this (missing) volume
        for m in missing:
            self.handled[m] = "missing"
            res.motion_rows.append(self._missing_row(m))
        self.last_index = upto
        res.events.append(EventHeader(session=self.session_id, run=self.run, name="gap",
                                      data={"missing": missing, "before": upto + 1}))
        return res

    def _missing_row(self, m: int) -> dict[str, Any]:
        return {"volume": m, "ng": True, "status": "missing", "condition": self.table.condition(m)}

    def _process_one(self, vol: Volume, gap_before: Sequence[int], t_file_complete: float) -> VolumeResult:
        idx = int(vol.index)
        res = VolumeResult(volume=idx, status="ok", source=vol)
        missing = sorted({g for g in gap_before if self.last_index < g < idx} | set(range(self.last_index + 1, idx)))
        for m in missing:
            if m in self.handled:
                continue
            self.handled[m] = "missing"
            res.motion_rows.append(self._missing_row(m))
        if missing:
            res.events.append(EventHeader(session=self.session_id, run=self.run, name="gap",
                                          data={"missing": list(missing), "before": idx}))
        # trials whose calc scan is gone: score them now, before this volume enters the state
        res.scores.extend(self._score_pending(idx, t_file_complete))
        self.last_index = idx
        self.n_volumes += 1
        condition = self.table.condition(idx)
        if idx < self.first_kept and not (self.ref_mode == "index" and idx == self.cfg.realign.reference_index):
            self.handled[idx] = "discard"
            res.status = "discard"
            res.motion_rows.append({"volume": idx, "ng": True, "status": "discard", "condition": condition})
            return res
        try:
            t0 = time.perf_counter()
            res.is_reference = self._ensure_reference(vol)
            matrix, params, iterations, converged = self._realign(vol)
            t1 = time.perf_counter()
            values = sample_roi(vol.data, vol.affine, matrix, self.grid_shape, self.grid_affine, self.voxels,
                                order=self.order)
            nuisance = None
            if self._nuis_voxels is not None:
                sampled = reslice(vol.data, vol.affine, matrix, self.grid_shape, self.grid_affine,
                                  voxels=self._nuis_voxels, order=self.order)
                gs, *tissues = np.split(sampled, self._nuis_split)
                nuisance = np.concatenate([params, [float(np.nanmean(gs)) if np.isfinite(gs).any() else np.nan],
                                           [tissue_mean(v) for v in tissues]])
            t2 = time.perf_counter()
            res.t_realigned = time.time()
            fd = 0.0 if self.prev_params is None else float(qc.framewise_displacement(self.prev_params, params))
            corr = float(qc.template_correlation(values, self.template_roi))
        except Exception as exc:  # noqa: BLE001 - a volume that cannot be processed is NG, never a crash
            return self._error_result(res, idx, condition, exc, t_file_complete)
        finite = bool(np.isfinite(values).all())
        ng = bool(qc.is_ng(fd, corr, fd_threshold_mm=self.cfg.quality.fd_threshold_mm,
                           corr_threshold=self.cfg.quality.corr_threshold)) or not finite
        self.prev_params = params
        t3 = time.perf_counter()
        if idx < self.first_kept:  # an `index` reference among the discarded scans
            self.handled[idx] = "discard"
            res.status = "discard"
        else:
            self.features.add_scan(idx, values, not ng, nuisance)
            self.handled[idx] = "ng" if ng else "ok"
            res.status = "ng" if ng else "ok"
            res.roi = (values, not ng, nuisance)
        t4 = time.perf_counter()
        for trial in self._calc.get(idx, ()):
            if trial.number not in self.scored:
                res.scores.append(self._score(trial, idx, late=False, t_file_complete=t_file_complete))
        if idx % 50 == 0:
            self._prune()
        t5 = time.perf_counter()
        res.timings = {"realign_ms": (t1 - t0) * 1e3, "reslice_ms": (t2 - t1) * 1e3, "qc_ms": (t3 - t2) * 1e3,
                       "features_ms": (t4 - t3) * 1e3, "score_ms": (t5 - t4) * 1e3}
        p = {n: float(v) for n, v in zip(PARAM_NAMES, params, strict=True)}
        res.telemetry = TelemetryHeader(session=self.session_id, run=self.run, volume=idx, **p,
                                        framewise_displacement=fd, template_corr=corr if math.isfinite(corr) else None, ng=ng,
                                        iterations=int(iterations), timings=dict(res.timings))
        res.motion_rows.append({"volume": idx, **p, "framewise_displacement": fd, "template_corr": corr,
                                "ng": ng, "iterations": int(iterations), "status": res.status,
                                "condition": condition, "converged": converged})
        return res

    def _error_result(self, res: VolumeResult, idx: int, condition: str, exc: Exception,
                      t_file_complete: float) -> VolumeResult:
        """A volume that could not be realigned or sampled (corrupt data, wrong geometry): NG,
        reported as a fault event, and the run goes on."""
        self.handled[idx] = "error"
        res.status = "error"
        res.roi = None
        res.events.append(EventHeader(session=self.session_id, run=self.run, name="fault",
                                      data={"volume": idx, "error": f"{type(exc).__name__}: {exc}"[:300]}))
        res.motion_rows.append({"volume": idx, "ng": True, "status": "error", "condition": condition})
        for trial in self._calc.get(idx, ()):
            if trial.number not in self.scored:
                res.scores.append(self._score(trial, idx, late=False, t_file_complete=t_file_complete))
        return res

    # -- realignment ----------------------------------------------------------------------------
    def _ensure_reference(self, vol: Volume, *, force: bool = False) -> bool:
        """first/index modes: make `vol` the run's reference if none yet (the configured one, or
        the next received when that one is missing). True if it became it."""
        if self.ref_mode not in ("first", "index") or self._run_realigner is not None:
            return False
        if not force and vol.index < (self.first_kept if self.ref_mode == "first" else self.cfg.realign.reference_index):
            return False
        self.set_reference(vol.data, vol.affine, int(vol.index))
        return True

    def set_reference(self, data: np.ndarray, affine: np.ndarray, index: int) -> None:
        """Realign the run's reference volume to the template once; later volumes are realigned
        to the reference and mapped on to the template grid through it."""
        rc = self.cfg.realign
        assert self._tmpl_realigner is not None
        r0 = self._tmpl_realigner.estimate(data, affine)
        self._ref_to_template = r0.matrix
        self._run_realigner = Realigner(np.asarray(data, np.float32), np.asarray(affine, np.float64),
                                        max_iterations=rc.max_iterations, tolerance_mm=rc.tolerance_mm)
        self.ref_index = index
        self._init = np.eye(4)
        self.reference_data = (np.asarray(data), np.asarray(affine, np.float64))

    def _realign(self, vol: Volume) -> tuple[np.ndarray, np.ndarray, int, bool]:
        """(matrix moving world → template world, params (6,), iterations, converged)."""
        if self.ref_mode == "none":
            return np.eye(4), np.zeros(6), 0, True
        realigner = self._tmpl_realigner if self.ref_mode == "template" else self._run_realigner
        assert realigner is not None
        init, self._init = self._init, None
        r = realigner.estimate(vol.data, vol.affine, init=init)
        matrix = r.matrix if self.ref_mode == "template" else self._ref_to_template @ r.matrix
        return matrix, np.asarray(r.params, dtype=np.float64), int(r.iterations), bool(r.converged)

    # -- scores -----------------------------------------------------------------------------------
    def _score_pending(self, before: int, t_file_complete: float = 0.0) -> list[ScoreRecord]:
        out = []
        for trial in self.table.trials:
            if trial.calc_scan < before and trial.number not in self.scored:
                out.append(self._score(trial, before, late=True, t_file_complete=t_file_complete))
        return out

    def _score(self, trial: Trial, volume: int, *, late: bool, t_file_complete: float = 0.0) -> ScoreRecord:
        feat, used = self.features.trial_feature(trial.window)
        if feat is not None and self.fc:  # ROI time courses → pair correlations (E15), the bundle's own path
            feat = np.asarray(self.bundle.features_from_timecourses(feat), dtype=np.float64)
            self.trial_features[trial.number] = feat
        likelihood = None if feat is None else float(self.bundle.likelihood(feat))
        if likelihood is not None and not math.isfinite(likelihood):
            likelihood = None  # every feature NaN (e.g. zero baseline variance): no feedback
            flags_extra = ["nan_features"]
        else:
            flags_extra = []
        linear = None
        if likelihood is not None and self.scorer.percentile:
            from runtime.percentile import linear_term

            linear = linear_term(self.bundle, feat)
            self.trial_linear[trial.number] = linear
        outcome = self.scorer.score(trial.number, likelihood, linear)
        flags = list(outcome.flags)
        if feat is None and not self.features.baseline_ready:
            flags.append("no_baseline")
        if used and len(used) < len(trial.window):
            flags.append("partial")
        if feat is None and self.fc and len(used) < getattr(self.features, "min_scans", FC_MIN_SCANS):
            flags.append("few_valid_scans")  # a correlation needs >= min_scans valid scans
        if late:
            flags.append("late")
        flags += flags_extra
        self.scored.add(trial.number)
        header = ScoreHeader(session=self.session_id, run=self.run, trial=trial.number,
                             condition=self.table.condition(trial.calc_scan), label=trial.label,
                             score=None if outcome.score is None else float(outcome.score),
                             likelihood=likelihood, n_valid_scans=len(used), volume=volume,
                             flags=",".join(flags), t_file_complete=t_file_complete)
        return ScoreRecord(header=header, trial=trial)

    def _prune(self) -> None:
        """Forget ROI values no pending trial window (nor REGRESS's history) can use, so memory
        stays flat over long runs. Detrending lives in running sums and is unaffected; what is
        kept is exactly what `FeatureState` reads, so scores do not change."""
        fs = self.features
        if not fs.baseline_ready:
            return
        starts = [t.window.start for t in self.table.trials if t.number not in self.scored]
        longest = max((len(t.window) for t in self.table.trials), default=0)
        keep_from = min(starts + [self.last_index + 1, self.last_index - fs.regress_scans - longest - 2])
        for s in [s for s in fs.values if s < keep_from]:
            del fs.values[s]
            fs.valid.pop(s, None)
            fs.nuisance.pop(s, None)

    def finish(self, *, score_remaining: bool = True) -> list[ScoreRecord]:
        """Run end: score every trial not scored yet (flag "late"; "no_feedback" when its window
        was never acquired), so the scores file has one row per trial."""
        if not score_remaining:
            return []
        out = []
        for trial in self.table.trials:
            if trial.number not in self.scored:
                out.append(self._score(trial, self.last_index, late=True))
        return out

    @property
    def done(self) -> bool:
        """The last scan of the protocol table has been handled (received or declared missing)."""
        return self.last_index >= self.table.n_scans - 1

    # -- recovery ---------------------------------------------------------------------------------
    def restore(self, volumes: Sequence[RestoredVolume], scored: Iterable[int],
                reference: tuple[np.ndarray, np.ndarray, int] | None = None) -> None:
        """Rebuild the state from what a previous engine process wrote (runtime.engine.recovery):
        the volumes it handled (in index order) and the trials it scored."""
        if reference is not None and self.ref_mode in ("first", "index"):
            self.set_reference(*reference)
        for rv in sorted(volumes, key=lambda v: v.index):
            self.handled[rv.index] = rv.status
            self.last_index = max(self.last_index, rv.index)
            if rv.status == "missing":
                continue
            self.n_volumes += 1
            if rv.params is not None and np.all(np.isfinite(rv.params)):
                self.prev_params = np.asarray(rv.params, dtype=np.float64)
            if rv.values is not None and rv.index >= self.first_kept:
                self.features.add_scan(rv.index, rv.values, rv.valid, rv.nuisance)
        self.scored |= set(int(t) for t in scored)
        if self.prev_params is not None and self.ref_mode != "none":
            self._init = params_to_matrix(self.prev_params)  # warm start where the head was
