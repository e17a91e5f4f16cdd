"""DICOM patient geometry <-> NIfTI-style voxel-to-RAS affine.

The reader's array convention is dcm2niix's (so `decnef convert` output matches dcm2niix
voxel for voxel): i runs along a row (DICOM column index), j runs along a column but
*reversed* (last DICOM row first), k runs along the slice normal cross(row, col) in ascending
position. The affine is built from ImageOrientationPatient, PixelSpacing and the first and last
slice positions (LPS), then flipped to RAS. `dicom_geometry` is the exact inverse used by the
writer, so a volume in this convention round-trips unchanged.
"""

from __future__ import annotations

import numpy as np

LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


def slice_normal(iop: np.ndarray) -> np.ndarray:
    n = np.cross(iop[:3], iop[3:])
    norm = np.linalg.norm(n)
    return n / norm if norm > 0 else n


def volume_affine(
    iop: np.ndarray,
    pixel_spacing: tuple[float, float],
    first_pos: np.ndarray,
    last_pos: np.ndarray,
    n_slices: int,
    n_rows: int,
    slice_spacing: float | None,
) -> np.ndarray:
    """4x4 voxel (i, j, k) -> RAS mm for slices sorted ascending along cross(row, col).

    pixel_spacing is DICOM's (row spacing, column spacing). With one slice the k column is the
    normal times `slice_spacing` (SpacingBetweenSlices, else SliceThickness, else 1).
    """
    row, col = np.asarray(iop[:3], float), np.asarray(iop[3:], float)
    a = np.eye(4)
    a[:3, 0] = row * pixel_spacing[1]
    a[:3, 1] = col * pixel_spacing[0]
    if n_slices > 1:
        a[:3, 2] = (np.asarray(last_pos, float) - np.asarray(first_pos, float)) / (n_slices - 1)
    else:
        a[:3, 2] = slice_normal(np.asarray(iop, float)) * (slice_spacing or 1.0)
    a[:3, 3] = first_pos
    flip_j = np.eye(4)
    flip_j[1, 1] = -1.0
    flip_j[1, 3] = n_rows - 1
    return LPS_TO_RAS @ a @ flip_j


def dicom_geometry(affine: np.ndarray, shape: tuple[int, int, int]):
    """Inverse of `volume_affine` for a writer.

    Returns (iop[6], pixel_spacing (row, col), positions[k, 3] LPS, slice_spacing, slice_step_lps).
    The image for slice k is `data[:, ::-1, k].T` (rows, cols). Raises ValueError for a sheared
    in-plane grid, which DICOM cannot describe.
    """
    ni, nj, nk = shape
    a = LPS_TO_RAS @ np.asarray(affine, float)  # LPS_TO_RAS is its own inverse
    cs = np.linalg.norm(a[:3, 0])
    rs = np.linalg.norm(a[:3, 1])
    if cs == 0 or rs == 0:
        raise ValueError("affine has a zero voxel size")
    row = a[:3, 0] / cs
    col = -a[:3, 1] / rs
    if abs(float(row @ col)) > 1e-4:
        raise ValueError("affine has a sheared in-plane grid; DICOM cannot describe it")
    step = a[:3, 2]
    ks = np.arange(nk, dtype=float)
    origin = a[:3, 3] + a[:3, 1] * (nj - 1)  # voxel (0, nj-1, 0): first DICOM row
    positions = origin[None, :] + ks[:, None] * step[None, :]
    iop = np.concatenate([row, col])
    return iop, (float(rs), float(cs)), positions, float(np.linalg.norm(step)), step


def dicom_pixels(data: np.ndarray, k: int) -> np.ndarray:
    """The DICOM image (rows, cols) of slice k of an (i, j, k) array in the reader's convention."""
    return data[:, ::-1, k].T


def same_handedness_as_reader(affine: np.ndarray) -> bool:
    """True when k runs along cross(row, col), i.e. a reader would return the same array order."""
    a = LPS_TO_RAS @ np.asarray(affine, float)
    row = a[:3, 0]
    col = -a[:3, 1]
    return float(np.cross(row, col) @ a[:3, 2]) > 0
