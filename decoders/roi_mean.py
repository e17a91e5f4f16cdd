"""ROI-mean decoder: the classic univariate neurofeedback signal, calibrated to a probability.

The feature is the mean over the ROI voxels of a per-voxel activation measure (percent signal
change against a baseline, see `percent_signal_change`, or baseline z-scores); a 1-D logistic
regression maps it to P(class). Online it is a linear model with equal weights slope/n_voxels,
except that missing voxels are left out of the *mean* (kind "roi_mean" in a bundle).
"""

from __future__ import annotations

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.linear_model import LogisticRegression
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_is_fitted, validate_data


def percent_signal_change(y: np.ndarray, baseline: np.ndarray) -> np.ndarray:
    """100 (y - baseline) / baseline per voxel; voxels with baseline <= 0 give NaN."""
    y = np.asarray(y, dtype=float)
    base = np.asarray(baseline, dtype=float)
    with np.errstate(divide="ignore", invalid="ignore"):
        out = 100.0 * (y - base) / base
    return np.where(base > 0, out, np.nan)


def roi_mean(x: np.ndarray) -> np.ndarray:
    """Mean over the last axis ignoring NaN; all-NaN rows give NaN (without a warning)."""
    x = np.asarray(x, dtype=float)
    valid = np.isfinite(x)
    n = valid.sum(axis=-1)
    total = np.where(valid, x, 0.0).sum(axis=-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(n > 0, total / np.maximum(n, 1), np.nan)


class RoiMeanDecoder(ClassifierMixin, BaseEstimator):
    """Logistic calibration of the ROI mean. X: (samples, voxels), NaN allowed (ignored).

    `C` is the inverse L2 strength of the 1-D logistic fit (large = nearly unregularised).
    """

    def __init__(self, C: float = 1e4):
        self.C = C

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.allow_nan = True  # missing voxels are left out of the mean
        return tags

    def _means(self, X, reset: bool) -> np.ndarray:
        X = validate_data(self, X, dtype=np.float64, reset=reset, ensure_all_finite="allow-nan")
        m = roi_mean(X)
        if not np.all(np.isfinite(m)):
            raise ValueError("RoiMeanDecoder: a sample has no finite voxel value")
        return m[:, None]

    def fit(self, X, y):
        X, y = validate_data(self, X, y, dtype=np.float64, ensure_all_finite="allow-nan")
        check_classification_targets(y)
        m = self._means(X, reset=False)
        self.logistic_ = LogisticRegression(C=self.C, max_iter=1000).fit(m, y)
        self.classes_ = self.logistic_.classes_
        slope = self.logistic_.coef_[:, 0]  # (rows,)
        n_vox = X.shape[1]
        self.slope_ = slope
        self.coef_ = np.repeat(slope[:, None] / n_vox, n_vox, axis=1)
        self.intercept_ = self.logistic_.intercept_.copy()
        return self

    def decision_function(self, X):
        check_is_fitted(self)
        return self.logistic_.decision_function(self._means(X, reset=False))

    def predict_proba(self, X):
        check_is_fitted(self)
        return self.logistic_.predict_proba(self._means(X, reset=False))

    def predict(self, X):
        check_is_fitted(self)
        return self.logistic_.predict(self._means(X, reset=False))
