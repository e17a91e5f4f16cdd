"""The feature path equals a direct (non-incremental) computation of ATR's definition."""

from __future__ import annotations

import numpy as np

from runtime.features import FeatureState, TrialWindow, regress_nuisance, run_features


def _direct(y: np.ndarray, valid: np.ndarray, baseline: range, window: range, calc: int) -> np.ndarray:
    def detrend_upto(last: int) -> np.ndarray:
        s = np.arange(last + 1)
        ok = valid[: last + 1]
        slope, icpt = np.polyfit(s[ok], y[: last + 1][ok], 1)
        return y[: last + 1] - (np.outer(s, slope) + icpt) + y[: last + 1][ok].mean(0)

    yb = detrend_upto(baseline.stop - 1)[list(baseline)]
    mu, sd = yb.mean(0), yb.std(0, ddof=1)
    yh = detrend_upto(calc)
    rows = [s for s in window if valid[s]]
    return ((yh[rows] - mu) / sd).mean(0)


def test_progressive_detrend_matches_direct_fit() -> None:
    rng = np.random.default_rng(1)
    t, v = 80, 7
    y = rng.normal(size=(t, v)) + np.linspace(0, 5, t)[:, None] + 100
    valid = np.ones(t, bool)
    valid[[33, 51]] = False
    trials = [TrialWindow(range(20, 24), 27), TrialWindow(range(31, 35), 38), TrialWindow(range(50, 53), 60)]
    feats, n_valid = run_features(y, valid, range(0, 12), trials)
    for i, tr in enumerate(trials):
        np.testing.assert_allclose(feats[i], _direct(y, valid, range(0, 12), tr.window, tr.calc_scan), rtol=1e-10)
    assert list(n_valid) == [4, 3, 2]


def test_trial_without_valid_scan_has_no_feature() -> None:
    state = FeatureState(3, range(0, 5))
    for s in range(10):
        state.add_scan(s, np.array([s + np.sin(s), 2.0 * s + np.cos(s), 1.0]), valid=s not in (7, 8))
    feat, used = state.trial_feature(range(7, 9))
    assert feat is None and used == []
    feat, used = state.trial_feature(range(6, 9))
    assert used == [6] and feat is not None
    assert np.isnan(feat[2])  # constant voxel: SD 0 -> dropped


def test_regression_removes_nuisance_and_keeps_mean() -> None:
    rng = np.random.default_rng(2)
    k = 20
    motion = rng.normal(size=(k, 6))
    signal = rng.normal(size=(k, 4))
    y = signal + motion @ rng.normal(size=(6, 4)) + 50
    out = regress_nuisance(y, motion)
    np.testing.assert_allclose(out.mean(0), y.mean(0))
    centred = motion - motion.mean(0)
    assert np.abs(centred.T @ (out - out.mean(0))).max() < 1e-8


def test_short_regression_window_keeps_its_variance() -> None:
    # 10 baseline scans against 12 motion columns + constant would be fitted exactly (all
    # residuals 0, so every z-score NaN); the short window falls back to a linear trend.
    rng = np.random.default_rng(3)
    y = rng.normal(size=(10, 4)) + 100
    out = regress_nuisance(y, rng.normal(size=(10, 12)), spikes=[2])
    assert np.all(out.std(axis=0) > 0.1)
    state = FeatureState(4, range(0, 10), method="regress", regress_scans=20)
    for s in range(16):
        state.add_scan(s, rng.normal(size=4) + 100, valid=True, nuisance=rng.normal(size=6))
    feat, used = state.trial_feature(range(12, 15))
    assert used == [12, 13, 14] and feat is not None and np.all(np.isfinite(feat))
