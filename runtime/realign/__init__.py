"""Online rigid realignment: estimate (Gauss-Newton, inverse compositional), reslice, warm-up.

    r = Realigner(ref_data, ref_affine)          # once per reference (template)
    res = r.estimate(vol.data, vol.affine)       # per volume; warm-started from the last one
    y = reslice(vol.data, vol.affine, res.matrix, ref.shape, ref_affine, voxels=roi_ijk)
"""

from __future__ import annotations

import numpy as np

from runtime.realign.estimate import Realigner, RealignResult
from runtime.realign.params import matrix_to_params, params_to_matrix
from runtime.realign.reslice import reslice

__all__ = ["Realigner", "RealignResult", "reslice", "warmup", "matrix_to_params", "params_to_matrix"]


def warmup() -> None:
    """Compile (or load from the numba cache) every kernel on tiny arrays, once per process."""
    from runtime.realign import kernels as K

    vol = np.arange(4 * 5 * 6, dtype=np.float32).reshape(4, 5, 6)
    dst = np.empty_like(vol)
    tmp = np.empty_like(vol)
    w = K.gaussian_kernel(1.0)
    K.smooth3(vol, dst, tmp, w, w, w)
    q = np.ascontiguousarray(np.eye(4)[:3])
    pts = np.zeros((3, K.PT_COLS), np.float32)
    acc = np.zeros(K.ACC_LEN, np.float64)
    K.gn_sums(vol, q, pts, acc)
    eye = np.eye(4)
    h = np.eye(6)
    jf = np.zeros(6)
    corners = np.zeros((8, 3))
    K.gn_level(vol, eye, eye.copy(), eye, pts, h, jf, 1, h, jf, np.zeros(3), corners,
               2, 0.002, 0.05, 0.3, 0.7, acc)
    ijk = np.zeros((2, 3), np.int64)
    out = np.empty(2, np.float32)
    K.sample_points(vol, q, ijk, out, np.float32(np.nan))
    K.sample_grid(vol, q, dst, np.float32(np.nan))
