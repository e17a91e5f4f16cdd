"""Localizer runs → realigned ROI voxel values, through the engine's own per-volume code.

Why through `EngineCore`: the DESIGN rule is one feature path. Rather than re-implementing
"realign to the template → reslice only the decoder voxels → FD / template-correlation gates →
nuisance sample", training drives the engine core itself (template mode, no trials) and keeps
what it would feed its `FeatureState` (`VolumeResult.roi`). Train and serve cannot drift.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import msgspec
import numpy as np

from runtime.config import DecoderConfig, SessionConfig
from runtime.errors import UserError
from runtime.protocol import ProtocolTable
from runtime.volume import Volume


@dataclass
class RunValues:
    values: np.ndarray
    """(n_scans, n_voxels) realigned ROI values; NaN rows for missing/discarded scans."""
    valid: np.ndarray
    """(n_scans,) scans the engine would use (not NG, not missing, not discarded)."""
    nuisance: np.ndarray | None
    """(n_scans, 7 + tissues) motion params, global signal, WM/CSF means if given (denoise = regress only)."""
    params: np.ndarray
    """(n_scans, 6) realignment parameters (NaN where not processed)."""
    fd: np.ndarray
    corr: np.ndarray


def valid_for_voxels(cfg: SessionConfig, rv: RunValues, cols: np.ndarray, template_roi: np.ndarray,
                     first_scan: int) -> np.ndarray:
    """The engine's NG decision for a bundle that holds only the voxels `cols` of the mask.

    Online the template-correlation gate sees the bundle's voxels, not the candidate mask, so
    the final decoder is trained on the validity the engine will compute for it."""
    from runtime import qc

    n = rv.values.shape[0]
    out = np.zeros(n, dtype=bool)
    for s in range(first_scan, n):
        if not np.isfinite(rv.fd[s]):
            continue  # never processed (missing)
        vals = rv.values[s, cols]
        corr = qc.template_correlation(vals, template_roi)
        ng = qc.is_ng(float(rv.fd[s]), corr, fd_threshold_mm=cfg.quality.fd_threshold_mm,
                      corr_threshold=cfg.quality.corr_threshold)
        out[s] = not ng and bool(np.isfinite(vals).all())
    return out


def load_volumes(path: Path, origin: str) -> list[Volume]:
    """A run from a DICOM folder (read_series) or a 3D/4D NIfTI (load_4d), in index order."""
    if not path.exists():
        raise UserError(f"{origin}: {path} not found (expected a DICOM folder or a 4D NIfTI)")
    if path.is_dir():
        from runtime.dicom import read_series

        vols = read_series(path)
    elif path.name.endswith((".nii", ".nii.gz")):
        from runtime.nifti_io import load_4d

        try:
            vols = load_4d(path)
        except (ValueError, OSError) as exc:
            raise UserError(f"{origin}: cannot read {path}: {exc}") from None
    else:
        raise UserError(f"{origin}: {path} is neither a folder of DICOM files nor a .nii/.nii.gz file")
    if not vols:
        raise UserError(f"{origin}: {path} holds no volumes")
    return sorted(vols, key=lambda v: v.index)


def resample_mask(path: Path, grid_shape: tuple[int, int, int], grid_affine: np.ndarray, *,
                  threshold: float = 0.5, what: str = "ROI mask", key: str = "train.roi_mask") -> np.ndarray:
    """A NIfTI mask on any grid → boolean mask on the template grid (nearest neighbour): a
    template voxel is in the mask when the source voxel nearest to its centre is > `threshold`
    (0.5 for binary masks; tissue probability maps use a stricter one, runtime.nuisance)."""
    import nibabel as nib

    if not path.is_file():
        raise UserError(f"{path}: {what} not found (key '{key}')")
    try:
        img = nib.load(str(path))
        m = np.asarray(img.dataobj)
    except Exception as exc:  # nibabel raises many types for a bad file
        raise UserError(f"{path}: cannot read {what} as NIfTI: {exc} (key '{key}')") from None
    if m.ndim == 4 and m.shape[3] == 1:
        m = m[..., 0]
    if m.ndim != 3:
        raise UserError(f"{path}: {what} must be 3-D, got shape {m.shape} (key '{key}')")
    ijk = np.indices(grid_shape, dtype=np.float64).reshape(3, -1)
    vox = np.linalg.inv(img.affine) @ np.asarray(grid_affine, np.float64)
    src = np.rint(vox[:3, :3] @ ijk + vox[:3, 3:4]).astype(np.int64)
    inside = np.all((src >= 0) & (src < np.array(m.shape)[:, None]), axis=0)
    out = np.zeros(ijk.shape[1], dtype=bool)
    sel = src[:, inside]
    out[inside] = np.nan_to_num(m[sel[0], sel[1], sel[2]].astype(np.float64)) > threshold
    mask = out.reshape(grid_shape)
    if not mask.any():
        raise UserError(f"{path}: {what} has no voxel inside the template grid with a value > {threshold:g} (check its affine and values; key '{key}')")
    return mask


def brain_mask(template: np.ndarray) -> np.ndarray:
    """Automatic mask when no ROI is given: the head mask of the template, eroded by one voxel
    (drops the scalp/skull rim whose signal is mostly motion)."""
    from scipy import ndimage

    from runtime.realign.mask import head_mask

    m = head_mask(np.asarray(template, np.float32), dilate=0)
    eroded = ndimage.binary_erosion(m, iterations=1)
    return eroded if eroded.any() else m


def training_config(cfg: SessionConfig, discard: int) -> SessionConfig:
    """The engine settings for extraction: realign to the bundle template, given discard count."""
    realign = msgspec.structs.replace(cfg.realign, reference="template")
    protocol = msgspec.structs.replace(cfg.protocol, discard_scans=discard)
    return msgspec.structs.replace(cfg, realign=realign, protocol=protocol, decoder=DecoderConfig())


def extract_run(
    cfg: SessionConfig,
    volumes: list[Volume],
    *,
    template: np.ndarray,
    grid_affine: np.ndarray,
    voxels: np.ndarray,
    baseline: range,
    tr: float,
    log: Callable[[str], None] | None = None,
    extra: dict | None = None,
) -> RunValues:
    """Feed a run through a fresh `EngineCore` (as the online engine would see it, volume by
    volume) and collect what it hands its feature state. `extra`: the bundle's extra entries the
    engine reads besides the voxels (REGRESS's WM/CSF voxel lists, runtime.nuisance)."""
    from runtime.engine.core import EngineCore
    from runtime.engine.scoring import Scorer

    bundle = SimpleNamespace(
        voxels=np.ascontiguousarray(voxels, dtype=np.int64),
        grid_shape=tuple(int(n) for n in template.shape),
        grid_affine=np.asarray(grid_affine, np.float64),
        template=np.ascontiguousarray(template, np.float32),
        likelihood=lambda feat: 0.5,
        extra=dict(extra or {}),
    )
    table = ProtocolTable(rows=(), trials=(), baseline=baseline, tr=tr)
    core = EngineCore(training_config(cfg, baseline.start), bundle, table=table, scorer=Scorer(DecoderConfig()))
    core.warmup()
    n = int(volumes[-1].index) + 1
    v = len(voxels)
    values = np.full((n, v), np.nan)
    valid = np.zeros(n, dtype=bool)
    nuis = np.full((n, core.n_nuisance), np.nan) if core.n_nuisance else None
    params = np.full((n, 6), np.nan)
    fd = np.full(n, np.nan)
    corr = np.full(n, np.nan)
    t0 = time.perf_counter()
    for vol in volumes:
        for res in core.process(vol):
            if res.roi is not None:
                vals, ok, nu = res.roi
                values[res.volume] = vals
                valid[res.volume] = ok
                if nuis is not None and nu is not None:
                    nuis[res.volume] = nu
            if res.telemetry is not None:
                t = res.telemetry
                params[res.volume] = (t.trans_x, t.trans_y, t.trans_z, t.rot_x, t.rot_y, t.rot_z)
                fd[res.volume] = t.framewise_displacement
                corr[res.volume] = np.nan if t.template_corr is None else t.template_corr
    if log:
        ms = (time.perf_counter() - t0) * 1e3 / max(len(volumes), 1)
        n_ng = int(np.sum(~valid[baseline.start:]))
        log(f"realigned {len(volumes)} volumes, {v} voxels resliced ({ms:.0f} ms/volume); "
            f"FD max {np.nanmax(fd) if np.isfinite(fd).any() else 0:.2f} mm, {n_ng} NG/missing scans")
    return RunValues(values, valid, nuis, params, fd, corr)
