"""Sparse logistic regression (ours, SLR-VAR) vs scikit-learn L1 logistic regression.

    python benchmarks/decoders.py [--repeats 3] [--quick] [--no-haxby]

Synthetic problems: D features (voxels) x N training samples, 10 informative features with
weights +-1, labels y = [x.w + noise > 0] with noise sd = 0.3 |w| (Bayes accuracy ~0.9),
1000 held-out samples, one fresh draw per repeat. Peers, same data, same process:
- slr:    decoders.SparseLogisticRegression() defaults (300 ARD iterations, no tuning needed)
- l1:     LogisticRegression(l1_ratio=1, solver="liblinear") at C chosen by 3-fold inner CV
          over C in {0.03, 0.1, 0.3, 1}; `l1_fit_s` = the final fit alone, `l1_total_s` = CV + fit
Plus the real Haxby 2001 face-vs-house slice (530 voxels, train chunks 0-5, test 6-11).

Prints a table, then one JSON line per configuration: medians (and p95) over repeats of wall
and CPU time, held-out accuracy, selected features, recall of the informative features, and
ratios slr/l1.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GridSearchCV, StratifiedKFold

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from decoders import SparseLogisticRegression  # noqa: E402

SHARED = Path(os.environ.get("DECNEF_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
C_GRID = [0.03, 0.1, 0.3, 1.0]
N_INFORMATIVE = 10


def synthetic(d: int, n: int, seed: int, n_test: int = 1000):
    rng = np.random.default_rng(seed)
    w = np.zeros(d)
    idx = rng.choice(d, N_INFORMATIVE, replace=False)
    w[idx] = rng.choice([-1.0, 1.0], N_INFORMATIVE)
    x = rng.standard_normal((n + n_test, d))
    y = (x @ w + 0.3 * np.sqrt(N_INFORMATIVE) * rng.standard_normal(n + n_test) > 0).astype(int)
    return x[:n], y[:n], x[n:], y[n:], set(idx.tolist())


def timed(fn):
    w0, c0 = time.perf_counter(), time.process_time()
    out = fn()
    return out, time.perf_counter() - w0, time.process_time() - c0


def run_pair(xtr, ytr, xte, yte, informative: set | None) -> dict:
    slr, slr_s, slr_cpu = timed(lambda: SparseLogisticRegression().fit(xtr, ytr))
    base = LogisticRegression(l1_ratio=1.0, solver="liblinear", max_iter=1000)
    cv = StratifiedKFold(3, shuffle=True, random_state=0)
    search, cv_s, cv_cpu = timed(lambda: GridSearchCV(base, {"C": C_GRID}, cv=cv, refit=False).fit(xtr, ytr))
    c_best = search.best_params_["C"]
    l1, l1_s, l1_cpu = timed(lambda: LogisticRegression(l1_ratio=1.0, solver="liblinear", C=c_best, max_iter=1000).fit(xtr, ytr))
    out = {
        "slr_s": slr_s, "slr_cpu_s": slr_cpu, "slr_acc": slr.score(xte, yte),
        "slr_selected": slr.n_selected_features_, "slr_iter": slr.n_iter_,
        "l1_fit_s": l1_s, "l1_total_s": cv_s + l1_s, "l1_total_cpu_s": cv_cpu + l1_cpu,
        "l1_acc": l1.score(xte, yte), "l1_selected": int(np.count_nonzero(l1.coef_)),
        "l1_C": c_best,
    }
    if informative is not None:
        out["slr_recall"] = len(informative & set(slr.selected_.tolist())) / len(informative)
        out["l1_recall"] = len(informative & set(np.flatnonzero(l1.coef_[0]).tolist())) / len(informative)
    return out


def summarise(name: str, runs: list[dict]) -> dict:
    keys = runs[0].keys()
    med = {k: float(np.median([r[k] for r in runs])) for k in keys}
    row = {"config": name, "repeats": len(runs)}
    for k, v in med.items():
        row[k if k.endswith(("acc", "selected", "recall", "C", "iter")) else f"median_{k}"] = v
    for k in ("slr_s", "l1_total_s"):
        row[f"p95_{k}"] = float(np.percentile([r[k] for r in runs], 95))
    row["ratio_slr_vs_l1_fit"] = med["slr_s"] / med["l1_fit_s"]
    row["ratio_slr_vs_l1_total"] = med["slr_s"] / med["l1_total_s"]
    row["ratio_slr_vs_l1_cpu"] = med["slr_cpu_s"] / med["l1_total_cpu_s"]
    row["acc_diff_slr_minus_l1"] = med["slr_acc"] - med["l1_acc"]
    return row


def haxby() -> tuple | None:
    d = SHARED / "task_bold" / "haxby2001_pymvpa_1slice"
    if not d.is_dir():
        return None
    import nibabel as nib
    from scipy.signal import detrend

    bold = np.asanyarray(nib.load(d / "bold.nii.gz").dataobj).astype(np.float64)
    mask = np.asanyarray(nib.load(d / "mask.nii.gz").dataobj) > 0
    attrs = np.loadtxt(d / "attributes_literal.txt", dtype=str)
    labels, chunks = attrs[:, 0], attrs[:, 1].astype(int)
    x = bold[mask].T
    for c in np.unique(chunks):  # per-run linear detrend + z-score (as tests/test_decoders.py)
        s = chunks == c
        z = detrend(x[s], axis=0)
        x[s] = (z - z.mean(0)) / z.std(0)
    sel = np.isin(labels, ["face", "house"])
    tr, te = sel & (chunks < 6), sel & (chunks >= 6)
    return x[tr], labels[tr], x[te], labels[te]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--quick", action="store_true", help="small configurations only")
    ap.add_argument("--no-haxby", action="store_true")
    args = ap.parse_args()
    configs = [(1000, 100), (1000, 500), (5000, 200), (20000, 100), (20000, 500)]
    if args.quick:
        configs = [(1000, 100), (5000, 200)]
    rows = []
    for d, n in configs:
        runs = [run_pair(*synthetic(d, n, seed)) for seed in range(args.repeats)]
        rows.append(summarise(f"synthetic D={d} N={n}", runs))
        print(json.dumps(rows[-1]), file=sys.stderr, flush=True)  # progress
    if not args.no_haxby:
        data = haxby()
        if data is not None:
            runs = [run_pair(*data, None) for _ in range(args.repeats)]
            rows.append(summarise("haxby face/house D=530 N=108", runs))
    hdr = (f"{'config':32s} {'slr s':>7s} {'l1 fit':>7s} {'l1+cv':>7s} {'slr/l1cv':>8s} "
           f"{'slr acc':>7s} {'l1 acc':>7s} {'slr sel':>7s} {'l1 sel':>7s} {'slr rec':>7s} {'l1 rec':>7s}")
    print(hdr)
    print("-" * len(hdr))
    for r in rows:
        print(f"{r['config']:32s} {r['median_slr_s']:7.2f} {r['median_l1_fit_s']:7.2f} "
              f"{r['median_l1_total_s']:7.2f} {r['ratio_slr_vs_l1_total']:8.2f} "
              f"{r['slr_acc']:7.3f} {r['l1_acc']:7.3f} {r['slr_selected']:7.0f} {r['l1_selected']:7.0f} "
              f"{r.get('slr_recall', float('nan')):7.2f} {r.get('l1_recall', float('nan')):7.2f}")
    print()
    for r in rows:
        print(json.dumps(r))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
