"""Linear decoders from scikit-learn, and `make_decoder`, the one way to build a decoder by name.

Every decoder here reduces online to arrays a bundle can store: `coef_` (rows, features) and
`intercept_` (rows,), plus `link_` when the probability is not the plain logistic/softmax.
"""

from __future__ import annotations

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.calibration import CalibratedClassifierCV
from sklearn.linear_model import LogisticRegression
from sklearn.svm import LinearSVC
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_is_fitted, validate_data


def _sigmoid(a: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * a))


class CalibratedLinearSVC(ClassifierMixin, BaseEstimator):
    """LinearSVC with Platt (sigmoid) calibration, folded into one linear function.

    `CalibratedClassifierCV(..., ensemble=False)` fits the SVM on all data and the sigmoid
    P = 1/(1 + exp(a f + b)) on cross-validated decision values f = w.x + c. Folding gives
    coef_ = -a w, intercept_ = -(a c + b): for two classes P(classes_[1]) = sigmoid(coef_.x +
    intercept_) exactly. With more classes the calibrated one-vs-rest sigmoids are normalised
    to sum to 1 (`link_ = "ovr"`), again exactly what sklearn computes.
    """

    def __init__(self, C: float = 1.0, cv: int = 3, max_iter: int = 10000, random_state: int = 0):
        self.C = C
        self.cv = cv
        self.max_iter = max_iter
        self.random_state = random_state

    def fit(self, X, y):
        X, y = validate_data(self, X, y, dtype=np.float64)
        check_classification_targets(y)
        self.classes_ = np.unique(y)
        if self.classes_.size < 2:
            raise ValueError("CalibratedLinearSVC needs samples of at least 2 classes; got 1 class")
        svc = LinearSVC(C=self.C, max_iter=self.max_iter, random_state=self.random_state)
        cal = CalibratedClassifierCV(svc, method="sigmoid", cv=self.cv, ensemble=False).fit(X, y)
        inner = cal.calibrated_classifiers_[0]
        base = inner.estimator
        a = np.array([c.a_ for c in inner.calibrators], dtype=float)
        b = np.array([c.b_ for c in inner.calibrators], dtype=float)
        self.coef_ = -a[:, None] * base.coef_
        self.intercept_ = -(a * base.intercept_ + b)
        self.n_iter_ = base.n_iter_
        self.link_ = "logistic" if self.classes_.size == 2 else "ovr"
        return self

    def decision_function(self, X):
        check_is_fitted(self)
        X = validate_data(self, X, dtype=np.float64, reset=False)
        scores = X @ self.coef_.T + self.intercept_
        return scores.ravel() if scores.shape[1] == 1 else scores

    def predict_proba(self, X):
        scores = self.decision_function(X)
        if scores.ndim == 1:
            p1 = _sigmoid(scores)
            return np.column_stack([1.0 - p1, p1])
        p = _sigmoid(scores)
        total = p.sum(axis=1, keepdims=True)
        return np.where(total > 0, p / np.where(total > 0, total, 1.0), 1.0 / p.shape[1])

    def predict(self, X):
        proba = self.predict_proba(X)
        return self.classes_[np.argmax(proba, axis=1)]


DECODERS = ("slr", "smlr", "l1", "l2", "svm", "roi_mean", "connectivity")


def make_decoder(name: str, **params) -> BaseEstimator:
    """Build a decoder by name: slr, smlr, l1, l2, svm, roi_mean, connectivity.

    `params` go to the estimator's constructor (they override the defaults shown here).
    """
    key = name.lower().strip()
    if key == "slr":
        from .slr import SparseLogisticRegression

        return SparseLogisticRegression(**params)
    if key == "smlr":
        from .smlr import SparseMultinomialLogisticRegression

        return SparseMultinomialLogisticRegression(**params)
    if key == "l1":
        # liblinear: fast and exact for binary L1 (the usual DecNef case); it refuses > 2
        # classes, for which pass solver="saga".
        opts = {"C": 1.0, "l1_ratio": 1.0, "solver": "liblinear", "max_iter": 1000}
        return LogisticRegression(**{**opts, **params})
    if key == "l2":
        return LogisticRegression(**{"C": 1.0, "max_iter": 1000, **params})
    if key == "svm":
        return CalibratedLinearSVC(**params)
    if key == "roi_mean":
        from .roi_mean import RoiMeanDecoder

        return RoiMeanDecoder(**params)
    if key in ("connectivity", "fc", "fcnef"):
        from .connectivity import ConnectivityDecoder

        return ConnectivityDecoder(**params)
    raise ValueError(f"unknown decoder {name!r}; expected one of {', '.join(DECODERS)}")
