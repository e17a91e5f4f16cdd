"""Adapters that run peer realignment tools with the same inputs/outputs as `Realigner`.

Used only by the accuracy tests and `benchmarks/realign.py` (never online); the peers are
imported lazily and live in the `bench` extra. Every adapter returns, per volume, the 4x4
matrix mapping the moving world (RAS mm) onto the reference world, like `RealignResult.matrix`.
"""

from __future__ import annotations

import numpy as np


def _spm_mat(affine: np.ndarray) -> np.ndarray:
    """SPM's voxel-to-world matrix: 1-based voxel indices."""
    shift = np.eye(4)
    shift[:3, 3] = -1.0
    return np.asarray(affine, np.float64) @ shift


class RtspmRealigner:
    """python-rtspm (OpenNFT's real-time SPM realign, pybind11 C++) with OpenNFT's settings.

    Flags as OpenNFT's preprocessing: quality 0.9, fwhm 5 mm, sep 4 mm, 4th-degree B-spline,
    no wrap, lkp 1:6; `spm_realign_rt` stops at a relative SSD decrease < 0.01 (+2 more
    iterations) or 10 iterations, with A^T A of the reference computed once at the first volume
    (which is why the first call is slow). The moving volume always starts from its own header
    (OpenNFT does not warm-start).
    """

    FLAGS = {"quality": 0.9, "fwhm": 5, "sep": 4, "interp": 4, "rtm": 0, "PW": ""}

    def __init__(self, ref_data: np.ndarray, ref_affine: np.ndarray) -> None:
        import rtspm  # noqa: F401  (fail early if the bench extra is missing)

        self.r = [
            {"mat": _spm_mat(ref_affine), "dim": np.array(ref_data.shape[:3]),
             "Vol": np.asfortranarray(ref_data, dtype=np.float64)},
            {},
        ]
        self.state: tuple | None = None
        self.iterations = 0

    def estimate(self, data: np.ndarray, affine: np.ndarray) -> np.ndarray:
        from rtspm import spm_realign_rt

        flags = dict(self.FLAGS, wrap=np.zeros((3, 1)), lkp=np.arange(6))
        mat0 = _spm_mat(affine)
        self.r[1] = {"mat": mat0.copy(), "dim": np.array(data.shape[:3]),
                     "Vol": np.asfortranarray(data, dtype=np.float64)}
        if self.state is None:
            ind_vol, state = 1, (None,) * 6
        else:
            ind_vol, state = 2, self.state
        r, a0, x1, x2, x3, deg, b, nr_iter = spm_realign_rt(self.r, flags, ind_vol, 1, *state)
        self.r = r
        self.state = (a0, x1, x2, x3, deg, b)
        self.iterations = int(nr_iter)
        return r[1]["mat"] @ np.linalg.inv(mat0)


class SitkRealigner:
    """SimpleITK rigid registration (Euler3DTransform about the reference centre, mean squares,
    regular-step gradient descent, 2-level pyramid, linear interpolation, 20% random sampling),
    warm-started from the previous volume's transform like ours."""

    def __init__(self, ref_data: np.ndarray, ref_affine: np.ndarray) -> None:
        import SimpleITK as sitk

        self.sitk = sitk
        self.fixed = self._image(ref_data, ref_affine)
        self.last: np.ndarray | None = None
        self.iterations = 0

    def _image(self, data: np.ndarray, affine: np.ndarray):
        """numpy (i, j, k) + RAS affine -> SimpleITK image in LPS physical space."""
        sitk = self.sitk
        img = sitk.GetImageFromArray(np.ascontiguousarray(np.transpose(data, (2, 1, 0)), dtype=np.float32))
        lps = np.diag([-1.0, -1.0, 1.0, 1.0]) @ np.asarray(affine, np.float64)
        zooms = np.sqrt((lps[:3, :3] ** 2).sum(axis=0))
        img.SetSpacing(tuple(float(z) for z in zooms))
        img.SetOrigin(tuple(float(o) for o in lps[:3, 3]))
        img.SetDirection(tuple(float(d) for d in (lps[:3, :3] / zooms).ravel()))
        return img

    def estimate(self, data: np.ndarray, affine: np.ndarray) -> np.ndarray:
        sitk = self.sitk
        moving = self._image(data, affine)
        flip = np.diag([-1.0, -1.0, 1.0, 1.0])
        tx = sitk.Euler3DTransform()
        tx.SetCenter(self.fixed.TransformContinuousIndexToPhysicalPoint(
            [(n - 1) / 2.0 for n in self.fixed.GetSize()]))
        if self.last is not None:
            # ITK's transform maps fixed (reference) points to moving points: inverse of ours, in LPS
            m = flip @ np.linalg.inv(self.last) @ flip
            c = np.array(tx.GetCenter())
            tx.SetMatrix(tuple(m[:3, :3].ravel()))
            tx.SetTranslation(tuple(m[:3, :3] @ c + m[:3, 3] - c))
        reg = sitk.ImageRegistrationMethod()
        reg.SetMetricAsMeanSquares()
        reg.SetMetricSamplingStrategy(reg.RANDOM)
        reg.SetMetricSamplingPercentage(0.2, seed=1)
        reg.SetInterpolator(sitk.sitkLinear)
        reg.SetOptimizerAsRegularStepGradientDescent(learningRate=1.0, minStep=1e-4, numberOfIterations=100,
                                                     gradientMagnitudeTolerance=1e-8)
        reg.SetOptimizerScalesFromPhysicalShift()
        reg.SetShrinkFactorsPerLevel([2, 1])
        reg.SetSmoothingSigmasPerLevel([1.0, 0.0])
        reg.SmoothingSigmasAreSpecifiedInPhysicalUnitsOff()
        reg.SetInitialTransform(tx, inPlace=True)
        reg.Execute(self.fixed, moving)
        self.iterations = int(reg.GetOptimizerIteration())
        m = np.eye(4)
        m[:3, :3] = np.array(tx.GetMatrix()).reshape(3, 3)
        c = np.array(tx.GetCenter())
        m[:3, 3] = np.array(tx.GetTranslation()) + c - m[:3, :3] @ c
        # m maps reference (fixed) LPS points to moving LPS points; ours is moving RAS -> ref RAS
        out = np.linalg.inv(flip @ m @ flip)
        self.last = out
        return out
