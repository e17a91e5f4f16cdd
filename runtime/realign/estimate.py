"""Rigid (6-DOF) realignment of one volume to a fixed reference, fast enough for every TR.

Method (METHOD.md §4.1, E20, solved inverse-compositionally): minimise
    sum_i [ f(W(x_i; dp)) - s * g(M x_i) ]^2
over a small rigid update dp of the current estimate M (reference world -> moving world), where
x_i are the most informative voxels of an automatic head mask of the reference (<= 10k), g is
the moving volume sampled by cubic B-spline *quasi*-interpolation (no prefilter: a blur whose
moments up to order 3 do not depend on the sub-voxel offset, so no bias towards the grid, unlike
trilinear), f the reference blurred by the same spline at integer offsets, and
s = sum f / sum g the intensity scale (as SPM's). Because the linearisation is taken on the
*reference* (inverse compositional, Baker & Matthews 2004), the Jacobian J_i = grad f(x_i) dW/dp
(rotations about the mask's centre) and the Gauss-Newton Hessian J^T J are computed once per
reference; each iteration is one pass over the points plus a 6x6 solve, M <- M W(dp)^-1, all in
one compiled loop (`kernels.gn_level`). Early iterations use a quarter of the points.

Points that leave the moving field of view are dropped from the sums and their Hessian terms
subtracted, so partial overlap stays exact. Convergence: the 8 corners of the mask's bounding
box move less than `tolerance_mm` in one iteration. Coarse levels (Gaussian 12 and 8 mm FWHM,
every 4th / 2nd voxel) start a cold start and rescue a fine-level failure (no convergence
within `max_iterations`, a stall, or too little overlap): they recover 10 mm / 10 degrees.
A moving volume whose voxel size differs from the reference's gets, once per grid, the
reference resampled onto its grid (everything is in world coordinates).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from runtime.realign import kernels as K
from runtime.realign.mask import head_mask
from runtime.realign.params import matrix_to_params

# Gaussian pre-smoothing (FWHM, mm) of the fine level: none (the B-spline sampling blur is
# matched exactly on the reference side). Coarse levels: (FWHM mm, decimation factor).
FINE_FWHM_MM = 0.0
COARSE_LEVELS = ((8.0, 2), (12.0, 4))
# Fraction of the points that must overlap the moving volume for a step to be trusted.
MIN_OVERLAP = 0.3
# Number of fine-level points (the most informative mask voxels are kept): an eighth of the
# mask, at least 10k, at most 40k. Time per iteration is linear in it, the noise-limited error
# about 1/sqrt of it, so fine grids (more voxels per mm) get more points.
MIN_FINE_POINTS = 10000
FINE_POINTS_FRACTION = 1 / 8
MAX_FINE_POINTS = 40000
# A coarse level only has to land inside the fine level's basin.
COARSE_TOLERANCE_MM = 0.05
# Give up on a level (fall back to coarse) when a step shrinks by less than this.
STALL_RATIO = 0.7
# Early iterations use every SUBSET_STEP-th point until a step is below SUBSET_SWITCH_MM.
SUBSET_STEP = 4
SUBSET_SWITCH_MM = 0.05
_FWHM_TO_SIGMA = 1.0 / np.sqrt(8.0 * np.log(2.0))


@dataclass
class RealignResult:
    matrix: np.ndarray
    """4x4: maps a point in the moving volume's world (RAS mm) onto the same anatomical point
    in the reference's world."""
    params: np.ndarray
    """(6,) trans_x, trans_y, trans_z (mm), rot_x, rot_y, rot_z (rad) of `matrix`:
    matrix = Translate(trans) @ Rx(rot_x) @ Ry(rot_y) @ Rz(rot_z) (runtime.realign.params)."""
    iterations: int
    """Gauss-Newton iterations over all levels used for this volume."""
    converged: bool
    elapsed_ms: float


def _zooms(affine: np.ndarray) -> np.ndarray:
    return np.sqrt((np.asarray(affine)[:3, :3] ** 2).sum(axis=0))


def _decimation(shape: tuple[int, ...], factor: int) -> tuple[int, int, int]:
    # never decimate an axis into fewer than 8 samples (thin slabs keep their slices)
    return tuple(factor if n // factor >= 8 else 1 for n in shape[:3])  # type: ignore[return-value]


def _smoothing_kernels(affine: np.ndarray, fwhm_mm: float) -> tuple[np.ndarray, ...]:
    sig = fwhm_mm * _FWHM_TO_SIGMA / _zooms(affine)
    return tuple(K.gaussian_kernel(float(s)) for s in sig)


def _rigid_inverse(m: np.ndarray) -> np.ndarray:
    out = np.eye(4)
    rt = m[:3, :3].T
    out[:3, :3] = rt
    out[:3, 3] = -rt @ m[:3, 3]
    return out


class _Level:
    """Everything about the reference at one pyramid level, computed once."""

    def __init__(self, ref: np.ndarray, affine: np.ndarray, mask: np.ndarray, fwhm_mm: float,
                 factor: int, centre: np.ndarray, max_points: int | None) -> None:
        self.fwhm_mm = fwhm_mm
        self.factor = factor
        dec = _decimation(ref.shape, factor)
        base = _smooth(np.ascontiguousarray(ref, np.float32), _smoothing_kernels(affine, fwhm_mm))
        sl = tuple(slice(None, None, d) for d in dec)
        base = np.ascontiguousarray(base[sl])
        m = mask[sl]
        self.affine = affine @ np.diag([dec[0], dec[1], dec[2], 1.0])
        # f and its exact gradient under cubic B-spline sampling (see kernels._bspline3)
        b, d = K.BSPLINE3_AT_INTEGERS, K.CENTRAL_DIFFERENCE
        f = _smooth(base, (b, b, b))
        grads = [_smooth(base, ks) for ks in ((d, b, b), (b, d, b), (b, b, d))]
        ijk = np.argwhere(m)
        idx = tuple(ijk.T)
        gvox = np.stack([g[idx] for g in grads], axis=1).astype(np.float64)
        gworld = gvox @ np.linalg.inv(self.affine[:3, :3])  # row form of inv(A)^T @ grad
        xw = ijk @ self.affine[:3, :3].T + self.affine[:3, 3]
        jac = np.hstack([gworld, np.cross(xw - centre, gworld)])
        if max_points is not None and len(ijk) > max_points:
            # keep the most informative points (largest leverage J_i H^-1 J_i^T), in the spirit
            # of SPM's `quality`: they carry most of the Fisher information about the 6 params
            lev = np.einsum("ij,jk,ik->i", jac, np.linalg.inv(jac.T @ jac), jac)
            keep = np.sort(np.argsort(lev)[-max_points:])
            ijk, jac = ijk[keep], jac[keep]
            idx = tuple(ijk.T)
        # order: a uniform subset (every SUBSET_STEP-th point) first, then the rest, each in
        # raster order (cache-friendly gathers); early iterations run on the subset only
        n = len(ijk)
        order = np.arange(n)
        if n >= 4 * SUBSET_STEP * 100:
            sub = order[::SUBSET_STEP]
            order = np.concatenate([sub, np.setdiff1d(order, sub)])
            self.n_sub = len(sub)
        else:
            self.n_sub = 0
        self.n_points = n
        self.pts = np.empty((n, K.PT_COLS), np.float32)
        self.pts[:, :3] = ijk[order]
        self.pts[:, 3] = f[idx][order]
        self.pts[:, 4:] = jac[order]
        j32 = self.pts[:, 4:].astype(np.float64)  # what the kernel will actually read
        f32 = self.pts[:, 3].astype(np.float64)
        self.hess = j32.T @ j32
        self.jf = j32.T @ f32
        ns = max(self.n_sub, 1)
        self.hess_sub = j32[:ns].T @ j32[:ns]
        self.jf_sub = j32[:ns].T @ f32[:ns]
        self._scratch: dict[tuple, tuple[np.ndarray, np.ndarray]] = {}
        self._kern: tuple[np.ndarray, ...] = ()

    def moving(self, vol: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The moving volume smoothed (FWHM in mm) and decimated like this level's reference."""
        if self.fwhm_mm <= 0 and self.factor == 1:
            return vol, affine
        key = (vol.shape, tuple(np.round(_zooms(affine), 6)))
        if key not in self._scratch:
            self._scratch.clear()
            self._scratch[key] = (np.empty(vol.shape, np.float32), np.empty(vol.shape, np.float32))
            self._kern = _smoothing_kernels(affine, self.fwhm_mm)
        dst, tmp = self._scratch[key]
        K.smooth3(vol, dst, tmp, *self._kern)
        dec = _decimation(vol.shape, self.factor)
        if dec == (1, 1, 1):
            return dst, affine
        out = np.ascontiguousarray(dst[:: dec[0], :: dec[1], :: dec[2]])
        return out, affine @ np.diag([dec[0], dec[1], dec[2], 1.0])


def _fine_points(mask: np.ndarray) -> int:
    n = int(mask.sum() * FINE_POINTS_FRACTION)
    return min(max(n, MIN_FINE_POINTS), MAX_FINE_POINTS)


def _smooth(vol: np.ndarray, kernels: tuple[np.ndarray, ...]) -> np.ndarray:
    dst = np.empty(vol.shape, np.float32)
    tmp = np.empty(vol.shape, np.float32)
    K.smooth3(vol, dst, tmp, *kernels)
    return dst


class Realigner:
    """Realigns volumes to one reference; construct once per reference, call `estimate` per TR."""

    def __init__(self, ref_data: np.ndarray, ref_affine: np.ndarray, *, mask: np.ndarray | None = None,
                 max_iterations: int = 20, tolerance_mm: float = 0.002, coarse_to_fine: bool = True) -> None:
        ref = np.asarray(ref_data)
        if ref.ndim != 3:
            raise ValueError(f"reference must be 3-D, got shape {ref.shape}")
        ref = np.nan_to_num(np.ascontiguousarray(ref, np.float32))
        self.ref_affine = np.asarray(ref_affine, dtype=np.float64)
        if mask is None:
            mask = head_mask(ref)
        mask = np.asarray(mask, dtype=bool)
        if mask.shape != ref.shape:
            raise ValueError(f"mask shape {mask.shape} != reference shape {ref.shape}")
        if mask.sum() < 64:
            raise ValueError("mask has fewer than 64 voxels; cannot realign")
        self.mask = mask
        self.max_iterations = int(max_iterations)
        self.tolerance_mm = float(tolerance_mm)
        self.coarse_to_fine = bool(coarse_to_fine)
        ijk = np.argwhere(mask)
        world = ijk @ self.ref_affine[:3, :3].T + self.ref_affine[:3, 3]
        self.centre = world.mean(axis=0)
        lo, hi = ijk.min(axis=0), ijk.max(axis=0)
        corners = np.array([[a, b, c] for a in (lo[0], hi[0]) for b in (lo[1], hi[1]) for c in (lo[2], hi[2])], float)
        self.corners = corners @ self.ref_affine[:3, :3].T + self.ref_affine[:3, 3]
        self.fine = _Level(ref, self.ref_affine, mask, FINE_FWHM_MM, 1, self.centre, _fine_points(mask))
        self.coarse = [_Level(ref, self.ref_affine, mask, fw, fac, self.centre, None) for fw, fac in COARSE_LEVELS]
        self._ref = ref
        self._cross: dict[tuple, _Level] = {}
        self._acc = np.zeros(K.ACC_LEN, np.float64)
        self._last: np.ndarray | None = None

    def _fine_for(self, shape: tuple[int, ...], affine: np.ndarray) -> _Level:
        """Fine level for a moving grid: the precomputed one when the voxel size matches;
        otherwise (once per new grid) the reference resampled onto the moving grid by cubic
        B-spline, so the per-volume work stays free of smoothing."""
        if np.allclose(_zooms(affine), _zooms(self.ref_affine), rtol=0.01):
            return self.fine
        key = (tuple(shape[:3]), tuple(np.round(affine, 4).ravel()))
        if key not in self._cross:
            if len(self._cross) > 4:
                self._cross.clear()
            q = np.linalg.inv(self.ref_affine) @ affine  # moving voxel -> reference voxel
            grid = np.indices(shape[:3], dtype=np.float64).reshape(3, -1)
            coords = q[:3, :3] @ grid + q[:3, 3:4]
            ref = ndimage.map_coordinates(self._ref, coords, order=3, mode="nearest").reshape(shape[:3])
            mask = ndimage.map_coordinates(self.mask.astype(np.float32), coords, order=1, cval=0.0).reshape(shape[:3]) > 0.5
            if mask.sum() < 64:
                return self.fine
            self._cross[key] = _Level(ref.astype(np.float32), affine, mask, 0.0, 1, self.centre, _fine_points(mask))
        return self._cross[key]

    def prepare(self, shape: tuple[int, ...], affine: np.ndarray) -> None:
        """Precompute for an expected moving grid (only matters when its voxel size differs from
        the reference's; otherwise a no-op), so the first volume of the run is not slower."""
        self._fine_for(tuple(shape), np.asarray(affine, np.float64))

    def reset(self) -> None:
        """Forget the warm start (next volume is a cold start)."""
        self._last = None

    def _iterate(self, level: _Level, vol: np.ndarray, vol_affine: np.ndarray, m: np.ndarray,
                 max_iter: int, tol: float) -> tuple[np.ndarray, int, bool, bool]:
        """Gauss-Newton at one level (kernels.gn_level). Returns (M, iterations, converged, ok).

        ok=False when the step cannot be trusted (too little overlap, singular system) or the
        iteration stalls far from a solution (a bad warm start): the caller then falls back to
        the coarse levels.
        """
        m = np.array(m, dtype=np.float64, order="C")
        it, status = K.gn_level(vol, np.linalg.inv(vol_affine), m, level.affine, level.pts, level.hess,
                                level.jf, level.n_sub, level.hess_sub, level.jf_sub, self.centre,
                                self.corners, int(max_iter), float(tol), SUBSET_SWITCH_MM, MIN_OVERLAP,
                                STALL_RATIO, self._acc)
        ok = status in (K.GN_CONVERGED, K.GN_MAX_ITER)
        return m, int(it), status == K.GN_CONVERGED, ok

    def estimate(self, data: np.ndarray, affine: np.ndarray, init: np.ndarray | None = None) -> RealignResult:
        """Matrix mapping `data`'s world onto the reference's world (see RealignResult).

        Starts from `init` (a previous result's matrix), else from the last successful result,
        else (cold start) from identity through the coarse levels.
        """
        t0 = time.perf_counter()
        vol = np.ascontiguousarray(data, dtype=np.float32)
        if vol.ndim != 3:
            raise ValueError(f"volume must be 3-D, got shape {vol.shape}")
        if not np.isfinite(vol).all():
            vol = np.nan_to_num(vol)
        affine = np.asarray(affine, dtype=np.float64)
        start = init if init is not None else self._last
        cold = start is None
        m0 = np.eye(4) if cold else _rigid_inverse(np.asarray(start, dtype=np.float64))
        total = 0
        converged = ok = False
        m = m0
        fine = self._fine_for(vol.shape, affine)
        if not cold or not self.coarse_to_fine:
            fvol, faff = fine.moving(vol, affine)
            m, it, converged, ok = self._iterate(fine, fvol, faff, m0, self.max_iterations, self.tolerance_mm)
            total += it
        if self.coarse_to_fine and not converged:
            m = m0
            for level in reversed(self.coarse):
                cvol, caff = level.moving(vol, affine)
                m_try, it, _, ok_c = self._iterate(level, cvol, caff, m, self.max_iterations,
                                                   COARSE_TOLERANCE_MM * level.factor)
                total += it
                if ok_c:
                    m = m_try
            fvol, faff = fine.moving(vol, affine)
            m, it, converged, ok = self._iterate(fine, fvol, faff, m, self.max_iterations, self.tolerance_mm)
            total += it
        matrix = _rigid_inverse(m)
        if ok:
            self._last = matrix
        return RealignResult(matrix=matrix, params=matrix_to_params(matrix), iterations=total,
                             converged=bool(converged and ok), elapsed_ms=(time.perf_counter() - t0) * 1e3)
