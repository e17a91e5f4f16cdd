"""`decnef train`: localizer runs → cross-validated decoder bundle + report.json.

Steps (METHOD.md §1.2): read runs → template = volume `reference_index` of the first run →
ROI (NIfTI mask resampled to the template grid, or an automatic brain mask) → every volume
through the engine's own per-volume code (realign, ROI reslice, quality gates) → the shared
feature path (`run_features`: progressive detrend, baseline z-score, window mean) → per-run
class balancing → cross-validation with a block permutation test → final decoder on all
training samples → bundle (+ report.json beside it).
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from runtime.config import SessionConfig
from runtime.errors import UserError
from runtime.features import run_features
from runtime.train import evaluate as ev
from runtime.train import fc as fcm
from runtime.train.extract import (
    RunValues,
    brain_mask,
    extract_run,
    load_volumes,
    resample_mask,
    valid_for_voxels,
)
from runtime.train.samples import (
    Sample,
    baseline_range,
    blocks_from_events,
    parse_classes,
    read_events,
    samples_from_blocks,
)

Log = Callable[[str], None]


@dataclass
class TrainResult:
    bundle_path: Path
    report_path: Path
    report: dict
    bundle: object
    samples: list[Sample]
    """Every sample with a valid scan, in the row order of `features`."""
    features: np.ndarray
    """(n_samples, n_bundle_voxels): the features the final decoder was trained on (for its
    training rows) - what the engine computes online for the same scans."""


@dataclass
class RunData:
    number: int
    source: Path
    n_scans: int
    tr: float
    baseline: range
    samples: list[Sample]
    features: np.ndarray
    n_valid: np.ndarray
    values: RunValues
    windows: list | None = None
    """Connectivity: per sample, the ROI time-course window the engine would score (or None)."""


def _estimator_factory(cfg: SessionConfig) -> Callable[[], object]:
    try:
        from decoders import make_decoder
    except ImportError:  # older layouts export it from decoders.linear only
        from decoders.linear import make_decoder

    t = cfg.train
    params: dict = {}
    if t.estimator in ("slr", "smlr"):
        params["n_iter"] = t.n_iter
    try:
        make_decoder(t.estimator, **params)
    except (TypeError, ValueError) as exc:
        raise UserError(f"key 'train.estimator': cannot build {t.estimator!r}: {exc}") from None
    return lambda: make_decoder(t.estimator, **params)


def _feature_definition(cfg: SessionConfig, runs: list[RunData], delay: int) -> dict:
    t = cfg.train
    return {
        "source": "decnef train",
        "tr": runs[0].tr,
        "hrf_delay_s": t.hrf_delay_s,
        "hrf_delay_scans": delay,
        "window_start": delay,
        "window_end": delay,
        "window_scans": t.window_scans,
        "discard_scans": t.discard_scans,
        "baseline": "explicit" if t.baseline_scans else "before_first_event",
        "baseline_scans": [len(r.baseline) for r in runs],
        "zscore": "run_baseline",
        "denoise": cfg.denoise.method,
        "regress_scans": cfg.denoise.regress_scans,
        "realign": "template" if cfg.realign.enabled else "none",
        "interp": cfg.realign.interp,
        "fd_threshold_mm": cfg.quality.fd_threshold_mm,
        "corr_threshold": cfg.quality.corr_threshold,
    } | ({"features": "connectivity", "roi": "mean of the ROI's voxels per scan", "zscore": "none (correlation)",
          "fisher_z": t.fisher_z, "min_valid_scans": fcm.FC_MIN_SCANS} if t.estimator == "connectivity" else {})


def _json_safe(x):
    if isinstance(x, dict):
        return {k: _json_safe(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_json_safe(v) for v in x]
    if isinstance(x, (np.integer,)):
        return int(x)
    if isinstance(x, (float, np.floating)):
        return None if not math.isfinite(float(x)) else float(x)
    return x


def output_path(cfg: SessionConfig, output: str | Path | None) -> Path:
    if output:
        return Path(output)
    if cfg.decoder.bundle:
        return cfg.path(cfg.decoder.bundle).resolve()
    raise UserError("no output path: give --output BUNDLE or set decoder.bundle in the config")


def train(cfg: SessionConfig, output: str | Path | None = None, *, log: Log = print,
          preloaded: dict[Path, list] | None = None) -> TrainResult:
    """Build, evaluate and save a decoder from `cfg.train`; returns paths and the report.

    `preloaded` maps a run's resolved source path to its volumes (already read), so a caller
    that holds them (tests, the demo) does not read the files twice."""
    t = cfg.train
    t_start = time.perf_counter()
    if not t.runs:
        raise UserError("key 'train.runs': expected at least one [[train.runs]] with source and events")
    out_path = output_path(cfg, output)
    classes_spec = parse_classes(list(t.classes), t.rest_class)
    classes = [c.name for c in classes_spec] + ([t.rest_class] if t.rest_class else [])
    fc = t.estimator == "connectivity"
    if fc and t.n_voxels:
        raise UserError("key 'train.n_voxels': not used with estimator = \"connectivity\" (choose ROI pairs with train.fc_pairs)")
    factory = fcm.pair_factory if fc else _estimator_factory(cfg)
    k_sel = 0 if fc else t.n_voxels

    # 1. read runs and events
    raw = []
    for i, r in enumerate(t.runs):
        origin = f"train.runs[{i}]"
        t0 = time.perf_counter()
        src = cfg.path(r.source)
        vols = preloaded[src] if preloaded and src in preloaded else load_volumes(src, f"key '{origin}.source'")
        events = read_events(cfg.path(r.events))
        tr = float(vols[0].tr) if vols[0].tr else cfg.protocol.tr
        log(f"run {i + 1}/{len(t.runs)}: {len(vols)} volumes {vols[0].shape} TR {tr:g} s, {len(events)} events "
            f"({time.perf_counter() - t0:.1f} s)")
        raw.append((vols, events, tr))
    vols0 = raw[0][0]
    if t.reference_index >= len(vols0):
        raise UserError(f"key 'train.reference_index': {t.reference_index} but the first run has {len(vols0)} volumes")
    ref = vols0[t.reference_index]
    template = np.ascontiguousarray(ref.data, np.float32)
    grid_affine = np.asarray(ref.affine, np.float64)

    # 2. mask
    rois = None
    if fc:
        fmask = resample_mask(cfg.path(t.roi_mask), template.shape, grid_affine) if t.roi_mask else None
        rois = fcm.atlas_rois(cfg, template.shape, grid_affine, fmask)
        voxels = rois.voxels
        sizes = np.bincount(rois.voxel_roi, minlength=rois.n_rois).tolist()
        log(f"ROI atlas {t.roi_atlas}: {rois.n_rois} ROIs (labels {rois.labels}, voxels {sizes}), {len(rois.pairs)} pair(s)")
    elif t.roi_mask:
        mask = resample_mask(cfg.path(t.roi_mask), template.shape, grid_affine)
        log(f"ROI mask {t.roi_mask}: {int(mask.sum())} voxels on the template grid")
    else:
        mask = brain_mask(template)
        log(f"automatic brain mask: {int(mask.sum())} voxels" + (f" (top {t.n_voxels} kept per fold)" if t.n_voxels else ""))
    if rois is None:
        voxels = np.argwhere(mask).astype(np.int64)
    tissue_extra = _tissue_extra(cfg, template.shape, grid_affine, log)

    # 3. realign + features, per run
    runs: list[RunData] = []
    delay = 0
    for i, (vols, events, tr) in enumerate(raw):
        delay = int(round(t.hrf_delay_s / tr))
        n_scans = int(vols[-1].index) + 1
        base = baseline_range(events, tr, t.discard_scans, t.baseline_scans, f"{cfg.path(t.runs[i].events)}")
        if base.stop > n_scans:
            raise UserError(f"train.runs[{i}]: baseline {base.start}-{base.stop - 1} runs past the last scan {n_scans - 1}")
        known = {ty for c in classes_spec for ty in c.trial_types}
        if not any(e.trial_type in known for e in events):
            raise UserError(f"{cfg.path(t.runs[i].events)}: no event of the classes {sorted(known)} (key 'train.classes')")
        blocks = blocks_from_events(events, classes_spec, t.rest_class, tr, delay, n_scans)
        samples = [s for s in samples_from_blocks(blocks, i, t.window_scans, base.stop) if s.calc_scan < n_scans]
        rv = extract_run(cfg, vols, template=template, grid_affine=grid_affine, voxels=voxels, baseline=base, tr=tr,
                         log=lambda m, i=i: log(f"run {i + 1}: {m}"), extra=tissue_extra)
        t0 = time.perf_counter()
        windows = None
        if rois is not None:  # FC: the engine's ConnectivityState; a sample needs a defined correlation
            windows, feats, n_valid = fcm.run_windows(cfg, rv.values, rv.valid, rv.nuisance, base,
                                                      [s.trial_window for s in samples], rois)
            n_valid = np.where(np.isfinite(feats).all(axis=1), n_valid, 0)
        else:
            feats, n_valid = run_features(rv.values, rv.valid, base, [s.trial_window for s in samples],
                                          method=cfg.denoise.method, regress_scans=cfg.denoise.regress_scans,
                                          nuisance=rv.nuisance, first_scan=base.start)
        counts = {c: sum(s.label == c for s in samples) for c in classes}
        log(f"run {i + 1}: {len(samples)} samples {counts}, baseline scans {base.start}-{base.stop - 1}, "
            f"window {t.window_scans} scan(s) shifted {delay} ({time.perf_counter() - t0:.1f} s)")
        runs.append(RunData(i, cfg.path(t.runs[i].source), n_scans, tr, base, samples, feats, n_valid, rv, windows))

    # 4. sample set
    keep = [(r, j) for r in runs for j, _ in enumerate(r.samples) if r.n_valid[j] > 0]
    dropped = sum(len(r.samples) for r in runs) - len(keep)
    if not keep:
        raise UserError("no training sample has a valid scan (all NG or outside the runs); check events, TR and hrf_delay_s")
    X = np.vstack([r.features[j] for r, j in keep])
    X = np.nan_to_num(X, nan=0.0, posinf=0.0, neginf=0.0)  # zero-SD voxels: dropped with their weights online
    sset = ev.SampleSet(
        X=X,
        y=np.array([r.samples[j].label for r, j in keep]),
        run=np.array([r.number for r, j in keep]),
        block=np.array([r.number * 100000 + r.samples[j].block for r, j in keep]),
        start=np.array([r.samples[j].window.start for r, j in keep]),
        stop=np.array([r.samples[j].window.stop for r, j in keep]),
    )
    for c in classes:
        if not np.any(sset.y == c):
            raise UserError(f"key 'train.classes': class {c!r} has no sample (check trial_type names and the run length)")
    cuts = {r.number: int(round(t.train_fraction * r.n_scans)) for r in runs}
    folds = ev.make_folds(sset, t.split, n_runs=len(runs), cuts=cuts, max_folds=t.max_folds)
    if any(len(tr_) == 0 or len(te) == 0 for tr_, te in folds):
        raise UserError(f"key 'train.split': split {t.split!r} leaves a fold without training or test samples")

    # 5. cross-validation
    t0 = time.perf_counter()
    outs = ev.run_folds(sset, folds, classes, factory, k=k_sel, seed=t.seed)
    cv = ev.pooled(sset, outs, classes)
    n_vox_cv = [o.n_voxels for o in outs]
    n_train = len(folds[0][0]) if t.split == "halves" else len(sset.y)
    log(f"cross-validation ({t.split}, {len(folds)} fold(s), {len(sset.y)} samples"
        + (f": {n_train} before scan {min(cuts.values())} train, {cv['n_samples']} after it held out" if t.split == "halves" else "")
        + (f", {dropped} {'with < 3 valid scans' if fc else 'without valid scans'} dropped" if dropped else "")
        + f"): accuracy {cv['accuracy']:.3f}, AUC {cv['auc']:.3f}, {'pairs' if fc else 'voxels'} kept {np.median(n_vox_cv):.0f} "
        f"({time.perf_counter() - t0:.1f} s)")

    # 6. permutation test
    null: list[float] = []
    p_value = None
    if t.n_permutations:
        t0 = time.perf_counter()
        rng = np.random.default_rng([t.seed & 0xFFFFFFFF, 7919])
        stat = ev.stat_of(cv, len(classes))
        for _ in range(t.n_permutations):
            yp = ev.permute_blocks(sset, rng)
            try:
                po = ev.run_folds(sset, folds, classes, factory, k=k_sel, seed=t.seed, y_train=yp)
                null.append(ev.stat_of(ev.pooled(sset, po, classes), len(classes)))
            except UserError:  # a permutation that leaves a fold with one class: not a valid draw
                continue
        arr = np.array([v for v in null if np.isfinite(v)])
        p_value = float((1 + np.sum(arr >= stat)) / (1 + len(arr))) if len(arr) else None
        log(f"permutation test: {len(arr)} permutations of block labels within runs, p = {p_value if p_value is not None else 'n/a'} "
            f"(null median {np.median(arr) if len(arr) else float('nan'):.3f}; {time.perf_counter() - t0:.1f} s)")

    # 7. final decoder
    final_idx = folds[0][0] if t.split == "halves" else np.arange(len(sset.y))
    rng = np.random.default_rng([t.seed & 0xFFFFFFFF, 104729])
    final_idx = ev.balance(final_idx, sset.y, sset.run, rng)
    est, sel = ev.fit_model(sset.X[final_idx], sset.y[final_idx], factory, k_sel)
    if rois is not None:  # the same logistic fit, as a ConnectivityDecoder on the windows themselves
        wins = fcm.pad_windows([r.windows[j] for r, j in keep])  # type: ignore[index]
        est = fcm.fit_final(wins[final_idx], sset.y[final_idx], rois, t.fisher_z)
    refit = None if rois is not None else _features_for_bundle(cfg, runs, keep, sel, voxels, template)
    bundle_features = sset.X[:, sel] if refit is None else refit
    if refit is not None:
        est.fit(refit[final_idx], sset.y[final_idx])  # type: ignore[attr-defined]
        log("final decoder refitted: the quality gate on the bundle's voxels flags other scans than on the whole mask")
    n_kept = ev.n_nonzero(est, len(sel))
    what = "ROI pairs" if fc else "voxels"
    log(f"final decoder ({t.estimator}) on {len(final_idx)} balanced samples: {len(sel)} {what} in, {n_kept} with non-zero weight")

    report = {
        "cv_accuracy": cv["accuracy"],
        "cv_balanced_accuracy": cv["balanced_accuracy"],
        "cv_auc": cv["auc"],
        "n_selected_voxels": n_kept,
        "n_bundle_voxels": int(len(voxels) if fc else len(sel)),
        "n_mask_voxels": int(len(voxels)),
        "permutation_p": p_value,
        "n_permutations": len(null),
        "permutation_null_median": float(np.median(null)) if null else None,
        "confusion": cv["confusion"],
        "classes": classes,
        "positive_class": classes[0],
        "split": t.split,
        "n_folds": len(folds),
        "fold_voxels_kept": n_vox_cv,
        "n_samples": int(len(sset.y)),
        "n_samples_per_class": {c: int(np.sum(sset.y == c)) for c in classes},
        "n_final_samples": int(len(final_idx)),
        "estimator": t.estimator,
        "runs": [{"source": str(r.source), "n_scans": r.n_scans, "tr": r.tr, "baseline": [r.baseline.start, r.baseline.stop - 1],
                  "n_samples": len(r.samples)} for r in runs],
    }
    if rois is not None:
        report |= {"n_selected_voxels": int(len(voxels)), "n_pairs_nonzero": n_kept,  # every ROI voxel is used
                   "n_rois": rois.n_rois, "roi_labels": rois.labels, "n_pairs": int(len(rois.pairs)),
                   "pairs_labels": [[rois.labels[a], rois.labels[b]] for a, b in rois.pairs]}
    if t.split == "halves":
        report["heldout"] = {"accuracy": cv["accuracy"], "balanced_accuracy": cv["balanced_accuracy"], "auc": cv["auc"],
                             "confusion": cv["confusion"], "n_samples": cv["n_samples"],
                             "first_test_scan": {str(k): v for k, v in cuts.items()}}
    feature = _feature_definition(cfg, runs, delay)
    if tissue_extra:
        from runtime.nuisance import EXTRA_KEYS, TISSUE_THRESHOLD, TISSUES, WM_EROSION

        feature["nuisance"] = ["motion6", "gs"] + [t for t in TISSUES if EXTRA_KEYS[t] in tissue_extra]  # + differences
        feature["nuisance_masks"] = {"threshold": TISSUE_THRESHOLD, "wm_erosion_voxels": WM_EROSION}
    if rois is not None:
        bundle = _make_bundle(est, voxels, template, grid_affine, feature, report, classes[0],
                              extra=fcm.bundle_extra(rois) | tissue_extra)
    else:
        bundle = _make_bundle(est, voxels[sel], template, grid_affine, feature, report, classes[0], extra=tissue_extra or None)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    from decoders.bundle import save_bundle

    sha = save_bundle(bundle, out_path)
    report["bundle"] = str(out_path)
    report["bundle_sha256"] = sha
    report["elapsed_s"] = round(time.perf_counter() - t_start, 1)
    report_path = out_path.parent / "report.json"
    report_path.write_text(json.dumps(_json_safe(report), indent=2) + "\n")
    log(f"wrote {out_path} (sha256 {sha[:12]}) and {report_path} in {report['elapsed_s']} s")
    return TrainResult(out_path, report_path, report, bundle, [r.samples[j] for r, j in keep], bundle_features)


def _tissue_extra(cfg: SessionConfig, grid_shape: tuple[int, ...], grid_affine: np.ndarray, log: Log) -> dict:
    """`[train] wm_mask` / `csf_mask` → the bundle's WM/CSF voxel lists (runtime.nuisance): the
    engine's REGRESS uses them for this training's features and, from the bundle, online."""
    from runtime.nuisance import bundle_extra, config_tissue_voxels

    for t in ("wm", "csf"):
        if getattr(cfg.train, f"{t}_mask") and getattr(cfg.denoise, f"{t}_mask"):
            raise UserError(f"keys 'train.{t}_mask' and 'denoise.{t}_mask': give the {t.upper()} mask once "
                            f"(train.{t}_mask is stored in the bundle)")
    tissues = config_tissue_voxels(cfg, "train", grid_shape, grid_affine)
    for t, v in tissues.items():
        log(f"{t.upper()} mask {getattr(cfg.train, f'{t}_mask')}: {len(v)} voxels on the template grid"
            + ("" if cfg.denoise.method == "regress" else " (stored; used when denoise.method = \"regress\")"))
    return bundle_extra(tissues)


def _features_for_bundle(cfg: SessionConfig, runs: list[RunData], keep: list, sel: np.ndarray, voxels: np.ndarray,
                         template: np.ndarray) -> np.ndarray | None:
    """Features of the kept samples recomputed with the engine's NG decisions for the bundle's
    voxels; None when those decisions equal the whole-mask ones (features unchanged)."""
    if len(sel) == len(voxels):
        return None
    ijk = voxels[sel]
    template_roi = template[tuple(ijk.T)].astype(np.float64)
    per_run: dict[int, np.ndarray] = {}
    changed = False
    for r in runs:
        valid = valid_for_voxels(cfg, r.values, sel, template_roi, r.baseline.start)
        if np.array_equal(valid, r.values.valid):
            per_run[r.number] = r.features[:, sel]
            continue
        changed = True
        feats, _ = run_features(r.values.values[:, sel], valid, r.baseline, [s.trial_window for s in r.samples],
                                method=cfg.denoise.method, regress_scans=cfg.denoise.regress_scans,
                                nuisance=r.values.nuisance, first_scan=r.baseline.start)
        per_run[r.number] = feats
    if not changed:
        return None
    X = np.vstack([per_run[r.number][j] for r, j in keep])
    return np.nan_to_num(X, nan=0.0, posinf=0.0, neginf=0.0)


def _make_bundle(est, voxels: np.ndarray, template: np.ndarray, grid_affine: np.ndarray, feature: dict, report: dict,
                 target: str, extra: dict | None = None):
    from decoders.bundle import bundle_from_estimator

    metrics = {k: report[k] for k in ("cv_accuracy", "cv_auc", "n_selected_voxels", "permutation_p", "split", "n_samples")}
    return bundle_from_estimator(
        est, voxels=voxels, grid_shape=tuple(template.shape), grid_affine=grid_affine, template=template,
        feature=feature, metrics=_json_safe(metrics), target_class=target,
        voxel_means=template[tuple(np.asarray(voxels).T)].astype(np.float64), extra=extra,
    )
