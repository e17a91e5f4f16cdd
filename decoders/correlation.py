"""Window correlation features for connectivity neurofeedback (METHOD.md 2, E15).

Pure numpy, no scikit-learn: the online engine scores connectivity bundles with these and
should not pay scikit-learn's import time for it.
"""

from __future__ import annotations

import numpy as np

_R_CLIP = 1.0 - 1e-7  # keeps atanh finite for (numerically) perfect correlations


def window_correlation(a: np.ndarray, b: np.ndarray) -> np.ndarray | float:
    """(E15) Pearson r of a and b along the last axis; censored (NaN) scans dropped pairwise.

    Fewer than 3 common valid scans, or a constant series, gives NaN (no defined correlation).
    Broadcasts over leading axes; returns a float for 1-D input.
    """
    a = np.asarray(a, dtype=float)
    b = np.asarray(b, dtype=float)
    a, b = np.broadcast_arrays(a, b)
    valid = np.isfinite(a) & np.isfinite(b)
    n = valid.sum(axis=-1)
    a0 = np.where(valid, a, 0.0)
    b0 = np.where(valid, b, 0.0)
    nn = np.maximum(n, 1)[..., None]
    da = np.where(valid, a0 - a0.sum(axis=-1, keepdims=True) / nn, 0.0)
    db = np.where(valid, b0 - b0.sum(axis=-1, keepdims=True) / nn, 0.0)
    saa = np.einsum("...t,...t->...", da, da)
    sbb = np.einsum("...t,...t->...", db, db)
    sab = np.einsum("...t,...t->...", da, db)
    denom = np.sqrt(saa * sbb)
    ok = (n >= 3) & (denom > 1e-12 * np.maximum(saa + sbb, 1e-300))
    with np.errstate(invalid="ignore", divide="ignore"):
        r = np.where(ok, np.clip(sab / np.where(ok, denom, 1.0), -1.0, 1.0), np.nan)
    return float(r) if r.ndim == 0 else r


def fisher_z(r: np.ndarray) -> np.ndarray:
    """atanh(r), with |r| clipped just below 1."""
    return np.arctanh(np.clip(r, -_R_CLIP, _R_CLIP))


def all_pairs(n_rois: int) -> np.ndarray:
    """All ROI pairs i < j as an (n_pairs, 2) int array."""
    i, j = np.triu_indices(n_rois, k=1)
    return np.column_stack([i, j]).astype(np.int64)


def connectivity_features(
    timecourses: np.ndarray, pairs: np.ndarray, fisher: bool = True
) -> np.ndarray:
    """Pair features from ROI time courses: (n_rois, n_time) -> (n_pairs,), or
    (n_samples, n_rois, n_time) -> (n_samples, n_pairs)."""
    tc = np.asarray(timecourses, dtype=float)
    pairs = np.asarray(pairs, dtype=np.int64)
    if tc.ndim not in (2, 3):
        raise ValueError(f"time courses must be (n_rois, n_time) or (samples, n_rois, n_time), got shape {tc.shape}")
    if pairs.size and (pairs.min() < 0 or pairs.max() >= tc.shape[-2]):
        raise ValueError(f"ROI pair index out of range for {tc.shape[-2]} ROIs")
    r = window_correlation(tc[..., pairs[:, 0], :], tc[..., pairs[:, 1], :])
    r = np.asarray(r)
    return fisher_z(r) if fisher else r
