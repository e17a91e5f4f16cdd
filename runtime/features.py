"""The DecNef feature path: progressive detrend → baseline z-score → window average.

These are the *only* functions that turn realigned ROI voxel values into decoder features; the
online engine calls them scan by scan and `decnef train` calls them, in the same order, on
localizer runs, so there is no train/serve skew (DESIGN.md "One feature path").

Progressive detrend (ATR DecNef02, METHOD.md §1.4 item 4): at scan t, a straight line is fitted to
each voxel over the valid scans received so far, and ŷ_s = y_s − b_t (s − s̄_t) (the fitted line
removed, the mean kept). The fit is kept as running sums, so each scan costs O(voxels) no matter
how long the run is. Baseline μ, σ (item 5) are taken once, from the detrended baseline scans as
the fit stood at the end of the baseline. A trial's feature (items 6–7, E9–E10) is the mean over
its window's valid scans of (ŷ − μ)/σ, with ŷ from the fit as it stands at the score scan.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np


class RunningTrend:
    """Per-voxel least-squares line over the scans added so far (running sums, float64)."""

    def __init__(self, n_voxels: int) -> None:
        self.n = 0
        self.st = 0.0
        self.stt = 0.0
        self.sy = np.zeros(n_voxels, dtype=np.float64)
        self.sty = np.zeros(n_voxels, dtype=np.float64)

    def add(self, scan: int, values: np.ndarray) -> None:
        v = np.asarray(values, dtype=np.float64)
        self.n += 1
        self.st += scan
        self.stt += scan * scan
        self.sy += v
        self.sty += scan * v

    def slope(self) -> tuple[np.ndarray, float]:
        """(slope per voxel, mean scan number). Slope 0 until two scans are in."""
        if self.n == 0:
            return np.zeros_like(self.sy), 0.0
        tbar = self.st / self.n
        var_t = self.stt - self.n * tbar * tbar
        if self.n < 2 or var_t <= 0:
            return np.zeros_like(self.sy), tbar
        cov = self.sty - tbar * self.sy
        return cov / var_t, tbar

    def detrend(self, scans: Sequence[int] | np.ndarray, values: np.ndarray) -> np.ndarray:
        """ŷ for rows `values` (n_scans, n_voxels) at `scans`, with the fit as it stands now."""
        b, tbar = self.slope()
        s = np.asarray(scans, dtype=np.float64)[:, None]
        return np.asarray(values, dtype=np.float64) - b[None, :] * (s - tbar)


def baseline_stats(detrended: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-voxel mean and SD (ddof=1, as MATLAB's std) of the detrended baseline scans; SD 0 → NaN."""
    x = np.asarray(detrended, dtype=np.float64)
    if x.shape[0] < 2:
        raise ValueError("a baseline needs at least two valid scans")
    mu = x.mean(axis=0)
    sd = x.std(axis=0, ddof=1)
    sd[sd <= 1e-12 * np.maximum(1.0, np.abs(mu))] = np.nan
    return mu, sd


def zscore(detrended: np.ndarray, mu: np.ndarray, sd: np.ndarray) -> np.ndarray:
    """E9: (ŷ − μ)/σ; voxels with σ = NaN stay NaN (dropped later with their weights)."""
    return (np.asarray(detrended, dtype=np.float64) - mu) / sd


MIN_RESIDUAL_DOF = 5
"""Scans a regression must leave over after its columns; fewer would fit the data perfectly."""

_blas_controller = None


def _one_blas_thread():
    """A context that keeps BLAS on one thread. REGRESS's products are tiny (window × columns ×
    voxels), but at some shapes (e.g. the 19 columns of E8's full set × 2000 voxels) OpenBLAS
    splits them across threads, and on a busy 2-core machine waking those threads costs 10-30 ms
    per product instead of 0.05 ms. One thread gives the same numbers (no K split) at once."""
    global _blas_controller
    import contextlib

    if _blas_controller is None:
        try:
            from threadpoolctl import ThreadpoolController  # installed with scikit-learn

            _blas_controller = ThreadpoolController()
        except Exception:  # noqa: BLE001 - no threadpoolctl: run as BLAS likes
            _blas_controller = False
    if not _blas_controller:
        return contextlib.nullcontext()
    return _blas_controller.limit(limits=1, user_api="blas")


def regress_nuisance(values: np.ndarray, nuisance: np.ndarray | None, spikes: Iterable[int] = ()) -> np.ndarray:
    """E8 (ATR REGRESS): ŷ = y − X·pinv(X)·y + mean(y) over a window of scans.

    `values` (K, V); `nuisance` (K, p) columns (motion, their differences, WM/CSF/global means,
    their differences) are mean-centred here; one spike column per row index in `spikes`
    (NG scans) and a constant are added. A window too short for all of that (early in a run,
    e.g. at the end of the baseline) would be fitted exactly and lose all its variance, so it
    falls back to a constant and a linear trend (plus the spikes it has room for), keeping at
    least MIN_RESIDUAL_DOF scans of residual.
    """
    y = np.asarray(values, dtype=np.float64)
    k = y.shape[0]
    spikes = list(spikes)
    room = k - MIN_RESIDUAL_DOF
    cols = [np.ones((k, 1))]
    if nuisance is not None and nuisance.size and 1 + nuisance.shape[1] + len(spikes) <= room:
        x = np.asarray(nuisance, dtype=np.float64)
        cols.append(x - x.mean(axis=0))
    elif room >= 2:
        t = np.arange(k, dtype=np.float64)
        cols.append((t - t.mean())[:, None])
    for s in spikes[: max(0, room - sum(c.shape[1] for c in cols))]:
        col = np.zeros((k, 1))
        col[s] = 1.0
        cols.append(col)
    design = np.hstack(cols)
    with _one_blas_thread():
        beta = np.linalg.pinv(design) @ y
        return y - design @ beta + y.mean(axis=0)


@dataclass
class TrialWindow:
    """What a trial's feature is computed from (mirrors runtime.protocol.Trial)."""

    window: range
    calc_scan: int


class FeatureState:
    """Online state of the feature path for one run: fed one scan at a time.

    `add_scan(scan, values, valid)` takes the ROI values of every received scan (NG scans are
    stored but neither fitted nor averaged; missing scans are simply never added).
    `trial_feature(window)` gives the E10 window mean at the current scan, or None when the window
    has no valid scan. The engine and `decnef train` both drive this class.
    """

    def __init__(self, n_voxels: int, baseline: range, method: str = "detrend", regress_scans: int = 20) -> None:
        if method not in ("detrend", "none", "regress"):
            raise ValueError(f"unknown denoise method {method!r}")
        self.method = method
        self.regress_scans = regress_scans
        if method == "regress":
            _one_blas_thread()  # find the BLAS libraries now, not at the first score
        self.baseline = baseline
        self.trend = RunningTrend(n_voxels)
        self.values: dict[int, np.ndarray] = {}
        self.valid: dict[int, bool] = {}
        self.nuisance: dict[int, np.ndarray] = {}
        self.mu: np.ndarray | None = None
        self.sd: np.ndarray | None = None
        self.first_scan = baseline.start

    @property
    def baseline_ready(self) -> bool:
        return self.mu is not None

    def add_scan(self, scan: int, values: np.ndarray, valid: bool, nuisance: np.ndarray | None = None) -> None:
        if scan < self.first_scan or scan in self.values:
            return
        v = np.asarray(values, dtype=np.float64)
        self.values[scan] = v
        ok = bool(valid) and bool(np.all(np.isfinite(v)))
        self.valid[scan] = ok
        if nuisance is not None:
            self.nuisance[scan] = np.asarray(nuisance, dtype=np.float64)
        if ok and self.method == "detrend":
            self.trend.add(scan, v)
        if self.mu is None and scan >= self.baseline.stop - 1:
            self._finish_baseline()

    def _denoised(self, scans: list[int]) -> np.ndarray:
        rows = np.stack([self.values[s] for s in scans])
        if self.method == "detrend":
            return self.trend.detrend(scans, rows)
        if self.method == "none":
            return rows
        # regress: over the last K received scans up to the last requested one
        last = max(scans)
        hist = sorted(s for s in self.values if s <= last)[-max(self.regress_scans, len(scans)):]
        y = np.stack([self.values[s] for s in hist])
        x = np.stack([self.nuisance[s] for s in hist]) if all(s in self.nuisance for s in hist) and self.nuisance else None
        if x is not None:
            x = np.hstack([x, np.vstack([np.zeros((1, x.shape[1])), np.diff(x, axis=0)])])
        spikes = [i for i, s in enumerate(hist) if not self.valid[s]]
        yhat = regress_nuisance(y, x, spikes)
        idx = {s: i for i, s in enumerate(hist)}
        return yhat[[idx[s] for s in scans]]

    def _finish_baseline(self) -> None:
        scans = [s for s in self.baseline if self.valid.get(s)]
        if len(scans) < 2:
            return  # retried at the next scan; the engine reports "no baseline" trials as no feedback
        self.mu, self.sd = baseline_stats(self._denoised(scans))

    def trial_feature(self, window: Iterable[int]) -> tuple[np.ndarray | None, list[int]]:
        """(E10 mean z over the window's valid scans, the scans used); (None, []) if none valid."""
        if self.mu is None:
            self._finish_baseline()
        if self.mu is None:
            return None, []
        scans = [s for s in window if self.valid.get(s)]
        if not scans:
            return None, []
        z = zscore(self._denoised(scans), self.mu, self.sd)
        return z.mean(axis=0), scans


def run_features(
    values: np.ndarray,
    valid: np.ndarray,
    baseline: range,
    trials: Sequence[TrialWindow],
    *,
    method: str = "detrend",
    regress_scans: int = 20,
    nuisance: np.ndarray | None = None,
    first_scan: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Offline: replay a whole run (scans × voxels) through `FeatureState` exactly as online.

    Returns (features (n_trials, V) with NaN rows for trials without a valid scan, number of
    valid scans per trial). Scan s of `values` is volume index s; rows before `first_scan`
    (default: baseline start) are ignored, as the engine ignores discarded scans.
    """
    state = FeatureState(values.shape[1], baseline, method=method, regress_scans=regress_scans)
    out = np.full((len(trials), values.shape[1]), np.nan)
    n_valid = np.zeros(len(trials), dtype=int)
    for i, feat, used in _replay(state, values, valid, trials, nuisance, first_scan):
        if feat is not None:
            out[i] = feat
            n_valid[i] = len(used)
    return out, n_valid


def _replay(state: FeatureState, values: np.ndarray, valid: np.ndarray, trials: Sequence[TrialWindow],
            nuisance: np.ndarray | None, first_scan: int | None):
    """Feed a run scan by scan into `state`; yield (trial index, feature, scans used) at each
    trial's calc scan, exactly when the engine would compute it."""
    if first_scan is not None:
        state.first_scan = first_scan
    by_calc: dict[int, list[int]] = {}
    for i, t in enumerate(trials):
        by_calc.setdefault(t.calc_scan, []).append(i)
    for scan in range(values.shape[0]):
        state.add_scan(scan, values[scan], bool(valid[scan]), None if nuisance is None else nuisance[scan])
        for i in by_calc.get(scan, ()):
            feat, used = state.trial_feature(trials[i].window)
            yield i, feat, used


# -- functional connectivity (FCNef, METHOD.md §2) -------------------------------------------------

FC_MIN_SCANS = 3
"""Fewest valid scans a trial window needs for an FC score: a Pearson correlation over fewer than
3 points is undefined (2 points always give ±1), so such a trial gets no feedback."""


def roi_means(values: np.ndarray, voxel_roi: np.ndarray, n_rois: int) -> np.ndarray:
    """(n_rois,) mean of one scan's voxel values per ROI (a NaN voxel makes its ROI NaN)."""
    v = np.asarray(values, dtype=np.float64)
    counts = np.bincount(voxel_roi, minlength=n_rois).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.bincount(voxel_roi, weights=v, minlength=n_rois) / counts


class ConnectivityState(FeatureState):
    """Online FC feature state (METHOD.md §2 "Online FC score", E15, E8), fed like `FeatureState`.

    `add_scan` takes the bundle's realigned *voxel* values (what the engine spools, so crash
    recovery replays them unchanged) and keeps their per-ROI means; the denoising (progressive
    detrend, sliding-window REGRESS with spikes for NG scans, or none) is `FeatureState`'s own,
    applied to the ROI series. `trial_feature(window)` returns the denoised ROI time courses over
    the window, (n_rois, len(window)) with NaN at NG/missing scans (E15 drops them), with the
    denoising as it stands at the calc scan; the bundle turns them into pair correlations. No
    baseline z-score: a correlation does not change under a per-ROI affine rescaling, so FC
    trials need no baseline (the baseline scans only mark where the run's state starts).
    """

    def __init__(self, voxel_roi: np.ndarray, n_rois: int, baseline: range, method: str = "detrend",
                 regress_scans: int = 20, min_scans: int = FC_MIN_SCANS) -> None:
        super().__init__(int(n_rois), baseline, method=method, regress_scans=regress_scans)
        self.voxel_roi = np.asarray(voxel_roi, dtype=np.int64)
        self.n_rois = int(n_rois)
        self.min_scans = max(int(min_scans), FC_MIN_SCANS)

    @property
    def baseline_ready(self) -> bool:
        return True

    def _finish_baseline(self) -> None:
        return None

    def add_scan(self, scan: int, values: np.ndarray, valid: bool, nuisance: np.ndarray | None = None) -> None:
        super().add_scan(scan, roi_means(values, self.voxel_roi, self.n_rois), valid, nuisance)

    def trial_feature(self, window: Iterable[int]) -> tuple[np.ndarray | None, list[int]]:
        """(ROI time courses (n_rois, len(window)), valid scans used); (None, used) when fewer
        than `min_scans` scans of the window are valid (no defined correlation: no feedback)."""
        window = list(window)
        scans = [s for s in window if self.valid.get(s)]
        if len(scans) < self.min_scans:
            return None, scans
        den = self._denoised(scans)
        tc = np.full((self.n_rois, len(window)), np.nan)
        pos = {s: i for i, s in enumerate(window)}
        tc[:, [pos[s] for s in scans]] = den.T
        return tc, scans


def run_connectivity(
    values: np.ndarray,
    valid: np.ndarray,
    voxel_roi: np.ndarray,
    n_rois: int,
    baseline: range,
    trials: Sequence[TrialWindow],
    *,
    method: str = "detrend",
    regress_scans: int = 20,
    nuisance: np.ndarray | None = None,
    first_scan: int | None = None,
    min_scans: int = FC_MIN_SCANS,
) -> tuple[list[np.ndarray | None], np.ndarray]:
    """Offline FC twin of `run_features`: replay a run's voxel values (scans × voxels) through
    `ConnectivityState` exactly as the engine does. Returns (per trial the ROI time-course window
    the engine would score, or None without enough valid scans; valid scans per trial)."""
    state = ConnectivityState(voxel_roi, n_rois, baseline, method=method, regress_scans=regress_scans,
                              min_scans=min_scans)
    out: list[np.ndarray | None] = [None] * len(trials)
    n_valid = np.zeros(len(trials), dtype=int)
    for i, tc, used in _replay(state, values, valid, trials, nuisance, first_scan):
        out[i] = tc
        n_valid[i] = len(used)
    return out, n_valid
