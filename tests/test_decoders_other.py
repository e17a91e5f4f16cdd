"""ROI-mean and connectivity (FCNef) decoders."""

from __future__ import annotations

import numpy as np
import pytest

from decoders import (
    ConnectivityDecoder,
    RoiMeanDecoder,
    all_pairs,
    connectivity_features,
    fisher_z,
    make_decoder,
    percent_signal_change,
    window_correlation,
)
from decoders.roi_mean import roi_mean

# -- window correlation (E15) ----------------------------------------------------------------


def test_window_correlation_matches_numpy():
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((2, 15))
    assert window_correlation(a, b) == pytest.approx(np.corrcoef(a, b)[0, 1], abs=1e-12)
    assert window_correlation(a, 3 * a + 1) == pytest.approx(1.0)
    assert window_correlation(a, -a) == pytest.approx(-1.0)


def test_window_correlation_drops_censored_scans_pairwise():
    rng = np.random.default_rng(1)
    a, b = rng.standard_normal((2, 12))
    a[3] = np.nan
    b[7] = np.nan
    keep = np.ones(12, bool)
    keep[[3, 7]] = False
    assert window_correlation(a, b) == pytest.approx(np.corrcoef(a[keep], b[keep])[0, 1], abs=1e-12)


def test_window_correlation_undefined_cases_are_nan():
    assert np.isnan(window_correlation([1.0, 2.0], [2.0, 1.0]))  # < 3 scans
    assert np.isnan(window_correlation([1.0, 1.0, 1.0, 1.0], [1.0, 2.0, 3.0, 5.0]))  # constant
    assert np.isnan(window_correlation([1.0, np.nan, np.nan, 4.0], [1.0, 2.0, 3.0, 5.0]))


def test_window_correlation_broadcasts_over_batches():
    rng = np.random.default_rng(2)
    a, b = rng.standard_normal((2, 5, 20))
    r = window_correlation(a, b)
    assert r.shape == (5,)
    np.testing.assert_allclose(r, [np.corrcoef(a[i], b[i])[0, 1] for i in range(5)], atol=1e-12)


def test_fisher_z_and_pairs():
    assert fisher_z(np.array([0.0]))[0] == 0.0
    assert np.isfinite(fisher_z(np.array([1.0, -1.0]))).all()
    assert all_pairs(4).tolist() == [[0, 1], [0, 2], [0, 3], [1, 2], [1, 3], [2, 3]]


# -- connectivity decoder --------------------------------------------------------------------

def fc_windows(n_per_class=40, n_rois=4, n_time=20, seed=3):
    """ROI time courses where ROIs 0 and 1 correlate (r ~ +0.6) in 'up' and anti-correlate
    (r ~ -0.3) in 'down'; every other pair is independent noise in both classes."""
    rng = np.random.default_rng(seed)
    xs, ys = [], []
    for label, rho in (("up", 0.6), ("down", -0.3)):
        for _ in range(n_per_class):
            tc = rng.standard_normal((n_rois, n_time))
            tc[1] = rho * tc[0] + np.sqrt(1 - rho**2) * tc[1]
            xs.append(tc)
            ys.append(label)
    return np.array(xs), np.array(ys)


def test_connectivity_decoder_learns_a_correlation_difference():
    x, y = fc_windows()
    xt, yt = fc_windows(seed=4)
    est = make_decoder("connectivity").fit(x, y)
    assert est.pairs_.shape == (6, 2)
    assert est.score(xt, yt) > 0.85
    # the (0, 1) pair carries the weight, with P(up) rising with its correlation
    up = list(est.classes_).index("up")
    w = est.coef_[0] * (1 if up == 1 else -1)
    assert np.argmax(np.abs(w)) == 0 and w[0] > 0
    feats = est.transform(xt[:3])
    np.testing.assert_allclose(feats[:, 0], np.arctanh([np.corrcoef(t[0], t[1])[0, 1] for t in xt[:3]]))


def test_connectivity_decoder_with_chosen_pairs_and_nan_scans():
    x, y = fc_windows(n_rois=3)
    x[:, :, 5] = np.nan  # one censored scan in every window
    est = ConnectivityDecoder(pairs=[[0, 1]], fisher_z=False).fit(x, y)
    assert est.coef_.shape == (1, 1)
    assert connectivity_features(x[0], est.pairs_, fisher=False).shape == (1,)
    with pytest.raises(ValueError, match="samples, rois, time"):
        ConnectivityDecoder().fit(x[:, 0], y)


# -- ROI mean --------------------------------------------------------------------------------

def test_percent_signal_change_and_nan_mean():
    np.testing.assert_allclose(percent_signal_change([101.0, 99.0], [100.0, 100.0]), [1.0, -1.0])
    assert np.isnan(percent_signal_change([1.0], [0.0])[0])
    assert roi_mean(np.array([[1.0, np.nan, 3.0]]))[0] == 2.0
    assert np.isnan(roi_mean(np.array([[np.nan, np.nan]]))[0])


def test_roi_mean_decoder_calibrates_the_mean_signal():
    rng = np.random.default_rng(5)
    n, v = 100, 50
    y = np.repeat(["rest", "task"], n // 2)
    x = rng.normal(0.0, 1.0, (n, v)) + np.where(y == "task", 0.5, 0.0)[:, None]  # +0.5 % PSC
    est = RoiMeanDecoder().fit(x, y)
    assert est.score(x, y) > 0.9
    # equal voxel weights, and exactly a logistic function of the ROI mean
    assert np.allclose(est.coef_, est.coef_[0, 0]) and est.coef_[0, 0] > 0
    m = x.mean(axis=1)
    p = 1 / (1 + np.exp(-(est.slope_[0] * m + est.intercept_[0])))
    np.testing.assert_allclose(est.predict_proba(x)[:, 1], p, rtol=1e-10)
    # missing voxels are left out of the mean, not counted as zero
    xn = x[:1].copy()
    xn[0, :10] = np.nan
    expected = 1 / (1 + np.exp(-(est.slope_[0] * np.nanmean(xn) + est.intercept_[0])))
    assert est.predict_proba(xn)[0, 1] == pytest.approx(expected)
