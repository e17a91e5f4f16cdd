"""White-matter and CSF voxels for ATR REGRESS (METHOD.md §1.4 item 4, E8).

E8's nuisance set is X = [p (6), Δp (6), mean WM, GS, CSF signals, their first differences] +
spikes + constant. Motion and the global signal (a thinned brain mask of the template) come from
the engine itself; WM and CSF need the lab's anatomical segmentation (SPM c2/c3, FSL FAST pve_2 /
pve_0, FreeSurfer-derived masks), given as NIfTI probability or binary images on any grid:

* `[train] wm_mask` / `csf_mask`: `decnef train` turns them into template-grid voxel lists and
  stores them in the bundle (`extra["nuisance_wm_voxels"]`, `extra["nuisance_csf_voxels"]`);
* `[denoise] wm_mask` / `csf_mask`: for a bundle built elsewhere (e.g. an ATR text import), the
  session supplies them; they take precedence over the bundle's lists.

The rule (one place, so train and serve agree): the image is sampled nearest-neighbour at each
template voxel centre and kept where the value is > 0.9 (`TISSUE_THRESHOLD`; a binary 0/1 mask
passes unchanged), then the WM mask is eroded by one voxel on the template grid (the usual guard
against partial volume with grey matter at functional resolution; CSF, i.e. mostly ventricles,
is too thin to erode). The engine evenly thins each list to at most `MAX_TISSUE_VOXELS`
(deterministic), reslices only those voxels per volume and takes their mean.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from decoders.bundle import NUISANCE_KEYS

TISSUES = ("wm", "csf")
"""Order of the tissue columns after motion (6) and the global signal in the nuisance vector."""
TISSUE_THRESHOLD = 0.9
"""Probability (or binary value) above which a template voxel belongs to the tissue."""
WM_EROSION = 1
"""Voxels of erosion applied to the WM mask on the template grid."""
MAX_TISSUE_VOXELS = 4096
"""Per-tissue sample size online (as the global signal's): the mean of an evenly thinned subset."""
EXTRA_KEYS = NUISANCE_KEYS
"""Bundle `extra` keys holding the (n, 3) template-grid voxel lists (validated on load by
decoders.bundle)."""


def thin_voxels(ijk: np.ndarray, max_voxels: int = MAX_TISSUE_VOXELS) -> np.ndarray:
    """Every ceil(n / max_voxels)-th row of `ijk` (in its stored order): deterministic, even."""
    ijk = np.asarray(ijk, dtype=np.int64).reshape(-1, 3)
    if len(ijk) > max_voxels:
        ijk = ijk[:: int(math.ceil(len(ijk) / max_voxels))]
    return np.ascontiguousarray(ijk)


def tissue_voxels(path: Path, tissue: str, grid_shape: tuple[int, ...], grid_affine: np.ndarray,
                  key: str) -> np.ndarray:
    """(n, 3) int64 template-grid voxels of a WM or CSF mask file (threshold, WM erosion; see the
    module docstring). One-line UserError for a missing/unreadable file or an empty result."""
    from scipy import ndimage

    from runtime.errors import UserError
    from runtime.train.extract import resample_mask

    what = f"{tissue.upper()} mask"
    shape = tuple(int(n) for n in grid_shape[:3])
    mask = resample_mask(Path(path), shape, grid_affine, threshold=TISSUE_THRESHOLD, what=what, key=key)  # type: ignore[arg-type]
    if tissue == "wm" and WM_EROSION:
        mask = ndimage.binary_erosion(mask, iterations=WM_EROSION)
        if not mask.any():
            raise UserError(f"{path}: {what} has no voxel left after thresholding at {TISSUE_THRESHOLD:g} and "
                            f"eroding {WM_EROSION} voxel on the template grid (key '{key}')")
    return np.ascontiguousarray(np.argwhere(mask), dtype=np.int64)


def config_tissue_voxels(cfg: Any, section: str, grid_shape: tuple[int, ...], grid_affine: np.ndarray) -> dict[str, np.ndarray]:
    """{tissue: voxels} for the masks named in `[section] wm_mask` / `csf_mask` (empty ones skipped)."""
    sec = getattr(cfg, section)
    out = {}
    for t in TISSUES:
        p = getattr(sec, f"{t}_mask", "")
        if p:
            out[t] = tissue_voxels(cfg.path(p), t, grid_shape, grid_affine, key=f"{section}.{t}_mask")
    return out


def bundle_extra(tissues: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The bundle `extra` entries for these voxel lists."""
    return {EXTRA_KEYS[t]: np.asarray(v, dtype=np.int64) for t, v in tissues.items()}


def engine_tissue_voxels(cfg: Any, bundle: Any, grid_shape: tuple[int, ...], grid_affine: np.ndarray) -> dict[str, np.ndarray]:
    """What the engine samples per volume: `[denoise]` masks if given, else the bundle's lists,
    each thinned to MAX_TISSUE_VOXELS; ordered as TISSUES."""
    from_cfg = config_tissue_voxels(cfg, "denoise", grid_shape, grid_affine)
    extra = getattr(bundle, "extra", None) or {}
    out = {}
    for t in TISSUES:
        if t in from_cfg:
            out[t] = thin_voxels(from_cfg[t])
        elif EXTRA_KEYS[t] in extra:
            out[t] = thin_voxels(extra[EXTRA_KEYS[t]])
    return out


def session_tissue_voxels(cfg: Any, bundle: Any, grid_shape: tuple[int, ...], grid_affine: np.ndarray) -> dict[str, np.ndarray]:
    """`engine_tissue_voxels` for a REGRESS session (empty otherwise), refusing a window too short
    for the columns they add (the regression would always fall back to a trend): ConfigError."""
    if cfg.denoise.method != "regress":
        return {}
    from runtime.errors import ConfigError

    tissues = engine_tissue_voxels(cfg, bundle, grid_shape, grid_affine)
    need = min_regress_scans(7 + len(tissues))
    if tissues and cfg.denoise.regress_scans < need:
        raise ConfigError(f"key 'denoise.regress_scans': {cfg.denoise.regress_scans} scans cannot hold motion, GS, "
                          f"{' and '.join(t.upper() for t in tissues)} with their differences; need >= {need}")
    return tissues


def min_regress_scans(n_columns: int) -> int:
    """Scans a REGRESS window needs to use `n_columns` nuisance columns (each with its first
    difference) plus the constant and still keep MIN_RESIDUAL_DOF scans of residual."""
    from runtime.features import MIN_RESIDUAL_DOF

    return 2 * n_columns + 1 + MIN_RESIDUAL_DOF
