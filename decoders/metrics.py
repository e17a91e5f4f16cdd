"""Training metrics for a decoder (stored in the bundle's `metrics` dict, plain JSON types)."""

from __future__ import annotations

import numpy as np
from sklearn.base import clone
from sklearn.metrics import balanced_accuracy_score, log_loss, roc_auc_score


def classification_metrics(y_true, proba: np.ndarray, classes) -> dict:
    """Accuracy, balanced accuracy, log loss, confusion counts (and ROC AUC for two classes).

    `proba` is (n, n_classes) with columns in the order of `classes`.
    """
    y_true = np.asarray(y_true)
    classes = np.asarray(classes)
    proba = np.asarray(proba, dtype=float)
    pred = classes[np.argmax(proba, axis=1)]
    out: dict = {
        "n": int(y_true.size),
        "accuracy": float(np.mean(pred == y_true)),
        "balanced_accuracy": float(balanced_accuracy_score(y_true, pred)),
        "log_loss": float(log_loss(y_true, np.clip(proba, 1e-15, 1.0), labels=classes)),
        "classes": [str(c) for c in classes],
        "confusion": [[int(np.sum((y_true == a) & (pred == b))) for b in classes] for a in classes],
    }
    if classes.size == 2 and np.unique(y_true).size == 2:
        out["roc_auc"] = float(roc_auc_score(y_true == classes[1], proba[:, 1]))
    return out


def cross_validate(estimator, X, y, groups) -> dict:
    """Leave-one-group-out (e.g. leave-one-run-out, METHOD.md 1.2 item 4) pooled metrics.

    Returns the pooled `classification_metrics` plus per-fold accuracy and, for sparse
    decoders, the number of selected features per fold.
    """
    X = np.asarray(X)
    y = np.asarray(y)
    groups = np.asarray(groups)
    classes = np.unique(y)
    proba = np.zeros((y.size, classes.size))
    folds = []
    for g in np.unique(groups):
        test = groups == g
        est = clone(estimator).fit(X[~test], y[~test])
        cols = np.searchsorted(classes, est.classes_)
        proba[np.ix_(test, cols)] = est.predict_proba(X[test])
        fold = {"group": str(g), "n": int(test.sum()),
                "accuracy": float(np.mean(est.predict(X[test]) == y[test]))}
        if hasattr(est, "n_selected_features_"):
            fold["n_selected_features"] = int(est.n_selected_features_)
        folds.append(fold)
    out = classification_metrics(y, proba, classes)
    out["folds"] = folds
    return out
