"""`decnef train` for connectivity (FCNef) decoders: atlas ROIs → window correlations → bundle.

Why a module of its own: the linear path's samples are window-mean voxel z-scores, an FC sample
is a set of ROI-pair correlations over a window. Both come from the engine's own per-volume code
(`extract_run`) and the shared feature module (`runtime.features.run_connectivity` drives the very
`ConnectivityState` the engine scores with), so the bundle is trained on exactly the features the
engine computes online (METHOD.md §2 "Online FC score"; DESIGN.md "One feature path").

ROIs come from one integer label image (`train.roi_atlas`, any grid, resampled nearest-neighbour
to the template grid), as a lab would export from an atlas or a hand-drawn ROI set; `roi_labels`
picks and orders the labels, `fc_pairs` the label pairs (default all). `train.roi_mask`, if also
given, restricts every ROI to it (e.g. a grey-matter mask).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from runtime.config import SessionConfig
from runtime.errors import UserError
from runtime.features import FC_MIN_SCANS, run_connectivity

FC_C = 1.0
"""Inverse L2 strength of the logistic layer (decoders.ConnectivityDecoder's default)."""


@dataclass
class FcRois:
    voxels: np.ndarray
    """(n_voxels, 3) template-grid ijk of every ROI voxel, ROI by ROI."""
    voxel_roi: np.ndarray
    """(n_voxels,) ROI index (0-based, in `labels` order) of each voxel."""
    labels: list[int]
    """Atlas label of each ROI."""
    pairs: np.ndarray
    """(n_pairs, 2) ROI index pairs."""

    @property
    def n_rois(self) -> int:
        return len(self.labels)


def resample_labels(path: Path, grid_shape: tuple[int, ...], grid_affine: np.ndarray) -> np.ndarray:
    """An integer label NIfTI on any grid → labels on the template grid (nearest neighbour, 0 outside)."""
    import nibabel as nib

    if not path.is_file():
        raise UserError(f"{path}: ROI atlas not found (key 'train.roi_atlas')")
    try:
        img = nib.load(str(path))
        m = np.asarray(img.dataobj)
    except Exception as exc:  # noqa: BLE001 - nibabel raises many types for a bad file
        raise UserError(f"{path}: cannot read ROI atlas as NIfTI: {exc}") from None
    if m.ndim == 4 and m.shape[3] == 1:
        m = m[..., 0]
    if m.ndim != 3:
        raise UserError(f"{path}: ROI atlas must be 3-D, got shape {m.shape} (key 'train.roi_atlas')")
    m = np.nan_to_num(np.asarray(m, dtype=np.float64))
    if np.any(m != np.rint(m)):
        raise UserError(f"{path}: ROI atlas must hold integer labels (key 'train.roi_atlas')")
    ijk = np.indices(grid_shape, dtype=np.float64).reshape(3, -1)
    vox = np.linalg.inv(img.affine) @ np.asarray(grid_affine, np.float64)
    src = np.rint(vox[:3, :3] @ ijk + vox[:3, 3:4]).astype(np.int64)
    inside = np.all((src >= 0) & (src < np.array(m.shape)[:, None]), axis=0)
    out = np.zeros(ijk.shape[1], dtype=np.int64)
    sel = src[:, inside]
    out[inside] = np.rint(m[sel[0], sel[1], sel[2]]).astype(np.int64)
    return out.reshape(grid_shape)


def atlas_rois(cfg: SessionConfig, grid_shape: tuple[int, ...], grid_affine: np.ndarray,
               mask: np.ndarray | None = None) -> FcRois:
    """The ROIs, their voxels and pairs from `train.roi_atlas` / `roi_labels` / `fc_pairs`."""
    t = cfg.train
    if not t.roi_atlas:
        raise UserError("key 'train.roi_atlas': estimator = \"connectivity\" needs a label NIfTI whose labels are the ROIs")
    path = cfg.path(t.roi_atlas)
    lab = resample_labels(path, grid_shape, grid_affine)
    if mask is not None:
        lab = np.where(mask, lab, 0)
    present = sorted(int(v) for v in np.unique(lab) if v > 0)
    labels = [int(v) for v in t.roi_labels] if t.roi_labels else present
    if len(set(labels)) != len(labels):
        raise UserError(f"key 'train.roi_labels': a label is listed twice in {labels}")
    missing = [v for v in labels if v not in present]
    if missing:
        raise UserError(f"{path}: label {missing[0]} has no voxel on the template grid (keys 'train.roi_atlas'/'roi_labels')")
    if len(labels) < 2:
        raise UserError(f"{path}: connectivity needs >= 2 ROIs, the atlas gives {len(labels)} (keys 'train.roi_atlas'/'roi_labels')")
    index = {v: i for i, v in enumerate(labels)}
    if t.fc_pairs:
        bad = [p for p in t.fc_pairs if p[0] not in index or p[1] not in index or p[0] == p[1]]
        if bad:
            raise UserError(f"key 'train.fc_pairs': pair {list(bad[0])} is not two different ROI labels of {labels}")
        pairs = np.array([[index[a], index[b]] for a, b in t.fc_pairs], dtype=np.int64)
    else:
        i, j = np.triu_indices(len(labels), k=1)
        pairs = np.column_stack([i, j]).astype(np.int64)
    vox, roi = [], []
    for k, v in enumerate(labels):
        ijk = np.argwhere(lab == v)
        vox.append(ijk)
        roi.append(np.full(len(ijk), k, dtype=np.int64))
    return FcRois(np.concatenate(vox).astype(np.int64), np.concatenate(roi), labels, pairs)


def run_windows(cfg: SessionConfig, values: np.ndarray, valid: np.ndarray, nuisance: np.ndarray | None,
                baseline: range, trials: list, rois: FcRois) -> tuple[list[np.ndarray | None], np.ndarray, np.ndarray]:
    """Per sample: the ROI time-course window the engine would score (None: < 3 valid scans),
    its pair features (NaN row when undefined) and its number of valid scans."""
    from decoders.correlation import connectivity_features

    windows, n_valid = run_connectivity(values, valid, rois.voxel_roi, rois.n_rois, baseline, trials,
                                        method=cfg.denoise.method, regress_scans=cfg.denoise.regress_scans,
                                        nuisance=nuisance, first_scan=baseline.start)
    feats = np.full((len(trials), len(rois.pairs)), np.nan)
    for k, tc in enumerate(windows):
        if tc is not None:
            feats[k] = connectivity_features(tc, rois.pairs, cfg.train.fisher_z)
    return windows, feats, n_valid


def pad_windows(windows: list[np.ndarray]) -> np.ndarray:
    """(n, n_rois, longest) with NaN after shorter windows (NaN scans are dropped by E15)."""
    longest = max(w.shape[1] for w in windows)
    out = np.full((len(windows), windows[0].shape[0], longest), np.nan)
    for k, w in enumerate(windows):
        out[k, :, : w.shape[1]] = w
    return out


def pair_factory() -> object:
    """The CV estimator on precomputed pair features: ConnectivityDecoder's own logistic layer."""
    from sklearn.linear_model import LogisticRegression

    return LogisticRegression(C=FC_C, max_iter=1000)


def fit_final(windows: np.ndarray, y: np.ndarray, rois: FcRois, fisher: bool):
    from decoders.connectivity import ConnectivityDecoder

    return ConnectivityDecoder(pairs=rois.pairs, fisher_z=fisher, C=FC_C).fit(windows, y)


def bundle_extra(rois: FcRois) -> dict:
    return {"voxel_roi": rois.voxel_roi, "roi_labels": list(rois.labels), "n_rois": rois.n_rois,
            "min_valid_scans": FC_MIN_SCANS}
