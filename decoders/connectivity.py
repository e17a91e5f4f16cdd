"""Functional-connectivity decoder (FCNef, METHOD.md 2).

Input per sample: ROI mean time courses over one window, shape (n_rois, n_time) (nuisance
regression, E8, happens upstream). Feature per ROI pair: the window correlation (E15), Fisher
z-transformed by default. A logistic regression on the pair features gives P(class); online it
reduces to pair indices + weights + intercept, which a bundle stores (kind "connectivity").
"""

from __future__ import annotations

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.linear_model import LogisticRegression
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_is_fitted

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


class ConnectivityDecoder(ClassifierMixin, BaseEstimator):
    """Logistic regression on ROI-pair window correlations.

    X: (n_samples, n_rois, n_time) ROI time courses. `pairs`: (n_pairs, 2) ROI indices, or None
    for all pairs. `C`: inverse L2 strength of the logistic fit.
    """

    def __init__(self, pairs=None, fisher_z: bool = True, C: float = 1.0):
        self.pairs = pairs
        self.fisher_z = fisher_z
        self.C = C

    def transform(self, X) -> np.ndarray:
        """Pair features of a batch of windows (what the logistic layer sees)."""
        check_is_fitted(self)
        X = np.asarray(X, dtype=float)
        if X.ndim != 3 or X.shape[1] != self.n_rois_:
            raise ValueError(f"expected windows of shape (samples, {self.n_rois_}, time), got {X.shape}")
        return connectivity_features(X, self.pairs_, self.fisher_z)

    def fit(self, X, y):
        X = np.asarray(X, dtype=float)
        if X.ndim != 3:
            raise ValueError(f"ConnectivityDecoder expects (samples, rois, time), got shape {X.shape}")
        y = np.asarray(y)
        check_classification_targets(y)
        self.n_rois_ = X.shape[1]
        self.pairs_ = all_pairs(self.n_rois_) if self.pairs is None else np.asarray(self.pairs, dtype=np.int64).reshape(-1, 2)
        feats = connectivity_features(X, self.pairs_, self.fisher_z)
        if not np.all(np.isfinite(feats)):
            raise ValueError("ConnectivityDecoder: a training window has an undefined correlation (too few valid scans or a constant ROI series)")
        self.logistic_ = LogisticRegression(C=self.C, max_iter=1000).fit(feats, y)
        self.classes_ = self.logistic_.classes_
        self.coef_ = self.logistic_.coef_.copy()
        self.intercept_ = self.logistic_.intercept_.copy()
        self.n_features_in_ = self.pairs_.shape[0]
        return self

    def decision_function(self, X):
        return self.logistic_.decision_function(self.transform(X))

    def predict_proba(self, X):
        return self.logistic_.predict_proba(self.transform(X))

    def predict(self, X):
        return self.logistic_.predict(self.transform(X))
