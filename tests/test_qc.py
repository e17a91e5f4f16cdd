"""Quality gates: FD (Power 2012, E21), template correlation (E7), NG decision."""

from __future__ import annotations

import math

import numpy as np
import pytest

from runtime.qc import framewise_displacement, is_ng, template_correlation
from runtime.realign import Realigner, reslice
from runtime.realign.mask import head_mask
from runtime.realign.synth import forrest_volumes


def test_fd_by_hand():
    prev = np.array([0.10, -0.20, 0.30, 0.001, -0.002, 0.003])
    cur = np.array([0.40, -0.10, 0.10, -0.001, 0.002, 0.000])
    # |0.3| + |0.1| + |0.2| + 50 * (0.002 + 0.004 + 0.003) = 0.6 + 0.45
    assert framewise_displacement(prev, cur) == pytest.approx(1.05, abs=1e-12)
    assert framewise_displacement(prev, cur, radius_mm=80.0) == pytest.approx(0.6 + 80 * 0.009, abs=1e-12)
    assert framewise_displacement(None, cur) == 0.0
    assert framewise_displacement(cur, cur) == 0.0


def test_template_correlation():
    rng = np.random.default_rng(0)
    t = rng.normal(size=500)
    assert template_correlation(t, t) == pytest.approx(1.0)
    assert template_correlation(-2 * t + 5, t) == pytest.approx(-1.0)
    y = t + rng.normal(scale=0.5, size=500)
    assert template_correlation(y, t) == pytest.approx(np.corrcoef(y, t)[0, 1])
    y_nan = y.copy()
    y_nan[:50] = np.nan
    assert template_correlation(y_nan, t) == pytest.approx(np.corrcoef(y[50:], t[50:])[0, 1])
    assert math.isnan(template_correlation(np.full(10, np.nan), t[:10]))
    assert math.isnan(template_correlation(np.ones(10), t[:10]))
    with pytest.raises(ValueError):
        template_correlation(t[:10], t[:11])


def test_is_ng_thresholds_and_disable():
    assert not is_ng(0.2, 0.9)
    assert is_ng(0.6, 0.9)
    assert is_ng(0.2, 0.5)
    assert is_ng(math.nan, 0.9)
    assert is_ng(0.2, math.nan)
    assert not is_ng(0.5, 0.7)  # thresholds are strict: FD > t, corr < t
    # disabled gates ignore their measure, including NaN
    assert not is_ng(5.0, 0.9, fd_threshold_mm=0)
    assert not is_ng(math.nan, 0.9, fd_threshold_mm=-1)
    assert not is_ng(0.1, -0.5, corr_threshold=-1)
    assert not is_ng(0.1, math.nan, corr_threshold=-1.5)
    assert is_ng(0.1, 0.5, corr_threshold=0.6, fd_threshold_mm=0)


def test_gates_on_real_volumes(studyforrest_dir):
    """Real consecutive volumes pass; a volume with a dropped-out slab fails the correlation gate."""
    vols = forrest_volumes(studyforrest_dir, 3)
    ref, aff = vols[0].data, vols[0].affine
    roi = np.argwhere(head_mask(ref, dilate=0))[::5]
    template = ref[tuple(roi.T)]
    r = Realigner(ref, aff)
    prev = None
    for v in vols[1:]:
        res = r.estimate(v.data, v.affine)
        y = reslice(v.data, v.affine, res.matrix, ref.shape, aff, voxels=roi)
        fd = framewise_displacement(prev, res.params)
        prev = res.params
        corr = template_correlation(y, template)
        assert corr > 0.95
        assert not is_ng(fd, corr)
    broken = vols[2].data.copy()
    broken[:, :, 10:25] = 0.0  # slab dropout
    res = r.estimate(broken, aff)
    y = reslice(broken, aff, res.matrix, ref.shape, aff, voxels=roi)
    corr = template_correlation(y, template)
    assert corr < 0.7
    assert is_ng(framewise_displacement(prev, res.params), corr)
