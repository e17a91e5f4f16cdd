"""Resample a moving volume onto the reference grid using a realignment matrix.

Only what the next stage reads needs resampling (DESIGN.md): pass `voxels` (the decoder's and
nuisance masks' (i, j, k) in the reference grid) to sample just those, at the same values the
full reslice would give there.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from runtime.realign import kernels as K


def _voxel_map(affine: np.ndarray, matrix: np.ndarray, out_affine: np.ndarray) -> np.ndarray:
    """Out-grid voxel -> moving voxel: inv(A_moving) @ inv(matrix) @ A_out (3x4)."""
    q = np.linalg.inv(np.asarray(affine, np.float64)) @ np.linalg.inv(np.asarray(matrix, np.float64)) @ np.asarray(out_affine, np.float64)
    return np.ascontiguousarray(q[:3])


def reslice(data: np.ndarray, affine: np.ndarray, matrix: np.ndarray, out_shape: tuple[int, ...],
            out_affine: np.ndarray, *, voxels: np.ndarray | None = None, order: int = 1,
            fill: float = np.nan) -> np.ndarray:
    """Sample the moving volume (`data`, `affine`) at the out grid's voxels.

    `matrix` maps the moving world onto the out (reference) world, as `RealignResult.matrix`.
    Returns float32 of `out_shape[:3]`, or (N,) when `voxels` (N, 3) integer (i, j, k) of the out
    grid is given. `order` 1 = trilinear (numba), 3 = cubic B-spline (scipy, prefiltered).
    Points outside the moving volume get `fill` (NaN by default, so downstream quality gates
    see that a voxel left the field of view).
    """
    vol = np.ascontiguousarray(data, dtype=np.float32)
    if vol.ndim != 3:
        raise ValueError(f"volume must be 3-D, got shape {vol.shape}")
    q = _voxel_map(affine, matrix, out_affine)
    shape = tuple(int(n) for n in out_shape[:3])
    if order == 1:
        if voxels is None:
            out = np.empty(shape, np.float32)
            K.sample_grid(vol, q, out, np.float32(fill))
            return out
        ijk = np.ascontiguousarray(voxels, dtype=np.int64).reshape(-1, 3)
        out = np.empty(len(ijk), np.float32)
        K.sample_points(vol, q, ijk, out, np.float32(fill))
        return out
    if order != 3:
        raise ValueError(f"order must be 1 (trilinear) or 3 (cubic B-spline), got {order}")
    if voxels is None:
        ijk = np.indices(shape, dtype=np.float64).reshape(3, -1)
    else:
        ijk = np.asarray(voxels, dtype=np.float64).reshape(-1, 3).T
    coords = q[:, :3] @ ijk + q[:, 3:4]
    vals = ndimage.map_coordinates(vol, coords, order=3, mode="nearest", prefilter=True).astype(np.float32)
    tol = 1e-4
    hi = np.array(vol.shape, np.float64)[:, None] - 1
    outside = ((coords < -tol) | (coords > hi + tol)).any(axis=0)
    vals[outside] = fill
    return vals if voxels is not None else vals.reshape(shape)
