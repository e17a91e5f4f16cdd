"""Moved-volume scenarios on real EPI with known motion (realignment tests and benchmark).

A real volume is the "world". The reference is that volume cropped by a few slices at each
end (no interpolation), and each moved volume is the world resampled (cubic B-spline,
scipy.ndimage.map_coordinates with prefilter) on the same cropped grid after a known rigid
transform, plus Rician noise. Cropping means the moved volumes' edge slices hold real anatomy
(as in a real scan), instead of zeros or copies invented by a boundary rule.
"""

from __future__ import annotations

import glob
import os
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from runtime.realign.mask import head_mask
from runtime.realign.params import params_to_matrix

NOISE = 0.025  # Rician noise SD as a fraction of the mean brain intensity


@dataclass
class Scenario:
    ref: np.ndarray
    affine: np.ndarray
    brain_world: np.ndarray  # (N, 3) world coordinates of the reference's brain voxels
    coef: np.ndarray  # cubic spline coefficients of the world volume
    world_affine: np.ndarray
    noise_sd: float

    def move(self, matrix: np.ndarray, rng: np.random.Generator, *, shape=None, affine=None) -> np.ndarray:
        """Volume on (shape, affine) (default: the reference grid) whose world maps onto the
        reference world by `matrix` (moving world -> reference world), with Rician noise."""
        shape = self.ref.shape if shape is None else shape
        affine = self.affine if affine is None else affine
        q = np.linalg.inv(self.world_affine) @ matrix @ affine
        grid = np.indices(shape, dtype=np.float64).reshape(3, -1)
        coords = q[:3, :3] @ grid + q[:3, 3:4]
        out = ndimage.map_coordinates(self.coef, coords, order=3, mode="nearest", prefilter=False).reshape(shape)
        sd = self.noise_sd
        out = np.sqrt((out + rng.normal(0, sd, out.shape)) ** 2 + rng.normal(0, sd, out.shape) ** 2)
        return out.astype(np.float32)

    def error_mm(self, true: np.ndarray, est: np.ndarray) -> float:
        """Mean distance over brain voxels between where the two transforms put each voxel."""
        a = self.brain_world @ true[:3, :3].T + true[:3, 3]
        b = self.brain_world @ est[:3, :3].T + est[:3, 3]
        return float(np.sqrt(((a - b) ** 2).sum(axis=1)).mean())


def scenario(world: np.ndarray, world_affine: np.ndarray, crop: int = 4, noise: float = NOISE) -> Scenario:
    world = np.asarray(world, np.float32)
    shift = np.eye(4)
    shift[2, 3] = crop
    ref = np.ascontiguousarray(world[..., crop:world.shape[2] - crop])
    affine = np.asarray(world_affine, np.float64) @ shift
    brain = head_mask(ref, dilate=0)
    bw = np.argwhere(brain) @ affine[:3, :3].T + affine[:3, 3]
    return Scenario(ref=ref, affine=affine, brain_world=bw, coef=ndimage.spline_filter(world, order=3),
                    world_affine=np.asarray(world_affine, np.float64), noise_sd=noise * float(ref[brain].mean()))


def random_motion(rng: np.random.Generator, max_mm: float = 5.0, max_deg: float = 5.0) -> np.ndarray:
    p = np.r_[rng.uniform(-max_mm, max_mm, 3), np.deg2rad(rng.uniform(-max_deg, max_deg, 3))]
    return params_to_matrix(p)


def mosaic_volume(dicom_dir) -> tuple[np.ndarray, np.ndarray]:
    """First volume of the Siemens Prisma mosaic reference NIfTI (64x64x36, dcm2niix)."""
    import nibabel as nib

    path = glob.glob(os.path.join(str(dicom_dir), "siemens_mosaic_prisma_ep2d_asc", "ref", "*.nii"))[0]
    img = nib.load(path)
    return np.asarray(img.dataobj[..., 0], np.float32), np.asarray(img.affine, np.float64)


def forrest_volumes(studyforrest_dir, n: int = 3):
    """The first `n` complete volumes of the studyforrest run (80x80x35), read from only the
    files needed (sorted names happen to group volumes; read_series re-groups by temporal index
    and keeps complete volumes only, so a different order would just give fewer volumes)."""
    from runtime.dicom import read_series

    folder = os.path.join(str(studyforrest_dir), "dicoms")
    files = sorted(os.path.join(folder, f) for f in os.listdir(folder))[: 35 * n]
    return read_series(files)
