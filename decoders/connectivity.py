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

from .correlation import all_pairs, connectivity_features, fisher_z, window_correlation

__all__ = ["ConnectivityDecoder", "all_pairs", "connectivity_features", "fisher_z",
           "window_correlation"]

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
