"""Sparse logistic regression with variational ARD (Yamashita et al. 2008; METHOD.md 1.3).

Binary SLR-VAR follows the toolbox's slr_learning_var2.m: a Jaakkola-Jordan lower bound makes
the likelihood Gaussian in w, the weights get an ARD prior with one precision alpha_d per feature
(bias included, as the toolbox appends a column of ones), alpha follows MacKay's fixed point and
any feature whose alpha passes `prune_threshold` is removed from the active set for good (its
weight is exactly 0). With more features than samples the posterior is computed in Woodbury
form, so 20k voxels x 500 samples never builds a 20k x 20k matrix; as features are pruned the
active set (and the cost) shrinks. More than two classes dispatch to SMLR (decoders.smlr).
"""

from __future__ import annotations

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_is_fitted, validate_data

from .ard import blas_threads, posterior, update_alpha

_NORMALIZE = ("none", "each")


def _lambda(xi: np.ndarray) -> np.ndarray:
    """(E3) lambda(xi) = tanh(xi/2) / (4 xi), with its limit 1/8 at xi = 0."""
    xi = np.abs(xi)
    out = np.full_like(xi, 0.125)
    nz = xi > 1e-8
    out[nz] = np.tanh(xi[nz] / 2.0) / (4.0 * xi[nz])
    return out


def fit_slr_var(
    x: np.ndarray,
    t: np.ndarray,
    *,
    n_iter: int = 300,
    prune_threshold: float = 1e8,
    woodbury: str | bool = "auto",
    tol: float = 0.0,
) -> tuple[np.ndarray, np.ndarray, int]:
    """Binary SLR-VAR on a design `x` (N, D) (bias column already appended), labels t in {0,1}.

    Returns (w, alpha, iterations run); pruned features have w = 0 and alpha = inf.
    Stops early when the active set is empty, or when it did not change and no active
    log(alpha) moved by more than `tol` (tol=0 runs all `n_iter` iterations, as the toolbox).
    """
    n, d = x.shape
    s = np.asarray(t, dtype=float) - 0.5  # (2t - 1) / 2
    alpha = np.ones(d)
    w = np.zeros(d)
    xi = np.full(n, 2.0)
    active = np.arange(d)
    xa = np.ascontiguousarray(x)
    it = 0
    for it in range(1, n_iter + 1):  # noqa: B007 - `it` is returned
        with blas_threads(*xa.shape):
            post = posterior(xa, alpha[active], 2.0 * _lambda(xi), woodbury)  # (E4)
            wa = post.solve(xa.T @ s)
            xi = np.sqrt((xa @ wa) ** 2 + post.diag_xsx)  # (E6)
        new_alpha = update_alpha(alpha[active], post.gamma, wa)  # (E5)
        keep = new_alpha < prune_threshold
        with np.errstate(divide="ignore", invalid="ignore"):
            moved = np.max(np.abs(np.log(new_alpha[keep]) - np.log(alpha[active][keep])), initial=0.0)
        w[:] = 0.0
        w[active[keep]] = wa[keep]
        alpha[active] = np.where(keep, new_alpha, np.inf)
        if not keep.all():
            active = active[keep]
            xa = np.ascontiguousarray(xa[:, keep])
        elif tol > 0 and moved < tol:
            break
        if active.size == 0:
            break
    return w, alpha, it


def _normalization(x: np.ndarray, mode: str) -> tuple[np.ndarray, np.ndarray]:
    """Toolbox 'each' mode: subtract each feature's mean, divide by its max |x - mean|."""
    if mode == "none":
        return np.zeros(x.shape[1]), np.ones(x.shape[1])
    if mode == "each":
        mean = x.mean(axis=0)
        scale = np.max(np.abs(x - mean), axis=0)
        scale[~(scale > 0)] = 1.0
        return mean, scale
    raise ValueError(f"normalize must be one of {_NORMALIZE}, got {mode!r}")


class _SparseARDClassifier(ClassifierMixin, BaseEstimator):
    """Shared fit/predict plumbing; subclasses choose binary SLR-VAR or SMLR."""

    _always_multinomial = False

    # One signature for both estimators (sklearn reads the parameters from __init__).
    def __init__(
        self,
        n_iter: int = 300,
        prune_threshold: float = 1e8,
        fit_intercept: bool = True,
        normalize: str = "none",
        tol: float = 1e-6,
        woodbury: str | bool = "auto",
        max_newton_iter: int = 50,
    ):
        self.n_iter = n_iter
        self.prune_threshold = prune_threshold
        self.fit_intercept = fit_intercept
        self.normalize = normalize
        self.tol = tol
        self.woodbury = woodbury
        self.max_newton_iter = max_newton_iter

    def _fit_design(self, x: np.ndarray, y_idx: np.ndarray, n_classes: int):
        raise NotImplementedError

    def fit(self, X, y):
        X, y = validate_data(self, X, y, dtype=np.float64)
        check_classification_targets(y)
        self.classes_, y_idx = np.unique(y, return_inverse=True)
        if self.classes_.size < 2:
            raise ValueError(
                f"{type(self).__name__} needs samples of at least 2 classes; got 1 class"
            )
        if self.normalize not in _NORMALIZE:
            raise ValueError(f"normalize must be one of {_NORMALIZE}, got {self.normalize!r}")
        mean, scale = _normalization(X, self.normalize)
        xn = (X - mean) / scale
        d = X.shape[1]
        if self.fit_intercept:
            xn = np.hstack([xn, np.ones((X.shape[0], 1))])
        multinomial = self._always_multinomial or self.classes_.size > 2
        if multinomial:
            from .smlr import fit_smlr

            wmat, alpha, self.n_iter_ = fit_smlr(
                xn,
                y_idx,
                self.classes_.size,
                n_iter=self.n_iter,
                prune_threshold=self.prune_threshold,
                woodbury=self.woodbury,
                tol=self.tol,
                max_newton_iter=getattr(self, "max_newton_iter", 50),
            )
            coef_n = wmat[:d].T.copy()  # (C, D)
            icpt = wmat[d].copy() if self.fit_intercept else np.zeros(self.classes_.size)
            self.alpha_ = alpha.T.copy()
        else:
            w, alpha, self.n_iter_ = fit_slr_var(
                xn,
                y_idx,
                n_iter=self.n_iter,
                prune_threshold=self.prune_threshold,
                woodbury=self.woodbury,
                tol=self.tol,
            )
            coef_n = w[None, :d].copy()
            icpt = np.array([w[d] if self.fit_intercept else 0.0])
            self.alpha_ = alpha[None, :].copy()
        self.feature_mean_ = mean
        self.feature_scale_ = scale
        # coef_/intercept_ act on raw X (the sklearn convention); bundles re-derive the
        # normalised weights from these plus feature_mean_/feature_scale_.
        self.coef_ = coef_n / scale
        self.intercept_ = icpt - self.coef_ @ mean
        self.selected_ = np.flatnonzero(np.any(self.coef_ != 0.0, axis=0))
        self.n_selected_features_ = int(self.selected_.size)
        return self

    def decision_function(self, X):
        check_is_fitted(self)
        X = validate_data(self, X, dtype=np.float64, reset=False)
        scores = X @ self.coef_.T + self.intercept_
        if self.classes_.size == 2:
            # sklearn convention for binary: one score, > 0 means classes_[1]; a two-row
            # (softmax) SMLR model gives the same probabilities through the score difference.
            return scores[:, -1] - scores[:, 0] if scores.shape[1] == 2 else scores.ravel()
        return scores

    def predict_proba(self, X):
        scores = self.decision_function(X)
        if scores.ndim == 1:
            p1 = 0.5 * (1.0 + np.tanh(0.5 * scores))  # overflow-free sigmoid
            return np.column_stack([1.0 - p1, p1])
        scores = scores - scores.max(axis=1, keepdims=True)
        e = np.exp(scores)
        return e / e.sum(axis=1, keepdims=True)

    def predict_log_proba(self, X):
        with np.errstate(divide="ignore"):
            return np.log(self.predict_proba(X))

    def predict(self, X):
        scores = self.decision_function(X)
        idx = (scores > 0).astype(int) if scores.ndim == 1 else np.argmax(scores, axis=1)
        return self.classes_[idx]


class SparseLogisticRegression(_SparseARDClassifier):
    """SLR-VAR for two classes; SMLR (one ARD precision per feature x class) for more.

    Parameters
    ----------
    n_iter : ARD iterations (toolbox default 1000 for biclsfy_slrvar; 300 as in Zhang et al.).
    prune_threshold : alpha above which a feature is removed (weight set to 0).
    fit_intercept : append a bias column (itself under ARD, as in the toolbox).
    normalize : "none" (features already z-scores) or "each" (centre, divide by max |x|).
    tol : early stop when the active set is stable and no log(alpha) moves more than tol;
        0 runs all iterations.
    woodbury : "auto" (N x N form when active features > samples), True or False.
    max_newton_iter : inner Newton iterations of the SMLR W-step (multiclass only).
    """

