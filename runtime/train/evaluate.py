"""Cross-validation, class balancing, voxel selection and the permutation test.

Everything a fold learns (balancing draw, top-k voxels, weights) comes from its training samples
only, so the held-out figures are honest. Labels are permuted at the level of blocks within each
run, which keeps the temporal autocorrelation of neighbouring samples intact (permuting single
volumes would make the null distribution too narrow).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from runtime.errors import UserError


@dataclass
class SampleSet:
    X: np.ndarray
    """(n, V) features."""
    y: np.ndarray
    """(n,) class names."""
    run: np.ndarray
    block: np.ndarray
    """(n,) block id unique over runs."""
    start: np.ndarray
    """(n,) first scan of each sample's window."""
    stop: np.ndarray
    """(n,) one past its last scan."""


Fold = tuple[np.ndarray, np.ndarray]


def balance(idx: np.ndarray, y: np.ndarray, run: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Randomly subsample the larger classes to the smallest one, within each run (Zhang)."""
    keep = []
    for r in np.unique(run[idx]):
        ir = idx[run[idx] == r]
        labels, counts = np.unique(y[ir], return_counts=True)
        if len(labels) < 2:
            keep.append(ir)
            continue
        m = counts.min()
        for lab in labels:
            il = ir[y[ir] == lab]
            keep.append(il if len(il) == m else np.sort(rng.choice(il, size=m, replace=False)))
    return np.sort(np.concatenate(keep)) if keep else idx


def select_voxels(X: np.ndarray, y: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k voxels with the largest ANOVA F across classes (all when k = 0)."""
    if k <= 0 or k >= X.shape[1]:
        return np.arange(X.shape[1])
    from sklearn.feature_selection import f_classif

    with np.errstate(divide="ignore", invalid="ignore"):
        f, _ = f_classif(X, y)
    f = np.nan_to_num(f, nan=0.0, posinf=0.0)
    return np.sort(np.argpartition(-f, k - 1)[:k])


def make_folds(s: SampleSet, split: str, *, n_runs: int, cuts: dict[int, int], max_folds: int) -> list[Fold]:
    """runs: leave one run out; halves: train before each run's cut scan, test after it;
    blocks: blocks dealt round-robin in time order into at most `max_folds` folds."""
    n = len(s.y)
    all_idx = np.arange(n)
    if split == "runs":
        if n_runs < 2:
            raise UserError("key 'train.split': 'runs' (leave-one-run-out) needs at least 2 runs; use 'halves' or 'blocks' with one run")
        return [(all_idx[s.run != r], all_idx[s.run == r]) for r in np.unique(s.run)]
    if split == "halves":
        cut = np.array([cuts[int(r)] for r in s.run])
        train = all_idx[s.stop <= cut]
        test = all_idx[s.start >= cut]
        return [(train, test)]
    blocks = []
    for b in s.block:
        if b not in blocks:
            blocks.append(b)
    blocks.sort(key=lambda b: (s.run[s.block == b][0], s.start[s.block == b].min()))
    k = min(max_folds, len(blocks))
    fold_of = {b: i % k for i, b in enumerate(blocks)}
    f = np.array([fold_of[b] for b in s.block])
    return [(all_idx[f != i], all_idx[f == i]) for i in range(k)]


def permute_blocks(s: SampleSet, rng: np.random.Generator) -> np.ndarray:
    """Labels shuffled between blocks within each run (a block keeps one label)."""
    y = s.y.copy()
    for r in np.unique(s.run):
        ids = np.unique(s.block[s.run == r])
        labels = np.array([s.y[s.block == b][0] for b in ids])
        perm = rng.permutation(labels)
        for b, lab in zip(ids, perm, strict=True):
            y[s.block == b] = lab
    return y


@dataclass
class FoldOutput:
    test: np.ndarray
    proba: np.ndarray
    """(n_test, n_classes) in `classes` order."""
    n_voxels: int


def run_folds(s: SampleSet, folds: list[Fold], classes: list[str], factory: Callable[[], object], *, k: int,
              seed: int, y_train: np.ndarray | None = None) -> list[FoldOutput]:
    """Fit on each fold's (balanced, top-k) training samples; predict its test samples."""
    yt = s.y if y_train is None else y_train
    out = []
    for i, (tr, te) in enumerate(folds):
        if len(te) == 0:
            continue
        rng = np.random.default_rng([seed & 0xFFFFFFFF, i])
        tr = balance(tr, yt, s.run, rng)
        if len(np.unique(yt[tr])) < 2:
            raise UserError(f"cross-validation fold {i + 1}: its training samples hold only one class ({sorted(set(yt[tr]))}); "
                            "check train.classes / train.split")
        est, sel = fit_model(s.X[tr], yt[tr], factory, k)
        out.append(FoldOutput(te, predict_proba(est, s.X[te][:, sel], classes), n_nonzero(est, len(sel))))
    return out


def fit_model(X: np.ndarray, y: np.ndarray, factory: Callable[[], object], k: int):
    sel = select_voxels(X, y, k)
    est = factory()
    est.fit(X[:, sel], y)  # type: ignore[attr-defined]
    return est, sel


def predict_proba(est, X: np.ndarray, classes: list[str]) -> np.ndarray:
    p = np.asarray(est.predict_proba(X), dtype=np.float64)
    order = [list(est.classes_).index(c) if c in list(est.classes_) else -1 for c in classes]
    out = np.zeros((X.shape[0], len(classes)))
    for j, o in enumerate(order):
        if o >= 0:
            out[:, j] = p[:, o]
    return out


def n_nonzero(est, n_features: int) -> int:
    """Voxels with a non-zero weight (sparse decoders prune); all voxels otherwise."""
    n = getattr(est, "n_selected_features_", None)
    if n is not None:
        return int(n)
    coef = getattr(est, "coef_", None)
    if coef is not None:
        return int(np.any(np.atleast_2d(coef) != 0, axis=0).sum())
    return n_features


def metrics(y: np.ndarray, proba: np.ndarray, classes: list[str]) -> dict:
    """Accuracy, balanced accuracy, AUC (binary: of classes[0]; else macro one-vs-rest) and the
    confusion matrix (rows = true, columns = predicted, `classes` order)."""
    from sklearn.metrics import roc_auc_score

    pred = np.array(classes)[np.argmax(proba, axis=1)]
    conf = np.array([[int(np.sum((y == a) & (pred == b))) for b in classes] for a in classes])
    with np.errstate(invalid="ignore", divide="ignore"):
        recall = np.diag(conf) / conf.sum(axis=1)
    auc = float("nan")
    try:
        if len(classes) == 2:
            auc = float(roc_auc_score(y == classes[0], proba[:, 0]))
        else:
            auc = float(roc_auc_score(y, proba, multi_class="ovr", labels=classes))
    except ValueError:  # one class only in this fold's test set: AUC is undefined, stays NaN
        pass
    return {
        "accuracy": float(np.mean(pred == y)) if len(y) else float("nan"),
        "balanced_accuracy": float(np.nanmean(recall)) if np.isfinite(recall).any() else float("nan"),
        "auc": auc,
        "confusion": conf.tolist(),
        "n_samples": int(len(y)),
    }


def pooled(s: SampleSet, outs: list[FoldOutput], classes: list[str], y: np.ndarray | None = None) -> dict:
    test = np.concatenate([o.test for o in outs])
    proba = np.vstack([o.proba for o in outs])
    yy = s.y if y is None else y
    return metrics(yy[test], proba, classes)


def stat_of(m: dict, n_classes: int) -> float:
    """The permutation statistic: AUC for two classes, accuracy otherwise."""
    return m["auc"] if n_classes == 2 else m["accuracy"]
