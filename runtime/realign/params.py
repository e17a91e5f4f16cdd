"""Rigid 4x4 world matrices <-> the six motion parameters reported in `*_motion.tsv`.

Convention (exact, so any other convention can be derived from the stored matrix):

* The matrix `T` maps a point in the moving volume's world (RAS+ mm) onto the same anatomical
  point in the reference's world, i.e. it is the transform that *realigns* the volume (the
  direction of FSL/MCFLIRT and fMRIPrep's head-motion transforms).
* `T = Translate(trans_x, trans_y, trans_z) @ Rx(rot_x) @ Ry(rot_y) @ Rz(rot_z)`, rotations in
  radians, right-handed about the RAS axes through the world origin (scanner isocentre), with
  `Rx(a) = [[1, 0, 0], [0, cos a, -sin a], [0, sin a, cos a]]` and likewise for y and z
  (`scipy.spatial.transform.Rotation.from_euler("XYZ", rot)`). Hence trans_* = T[:3, 3] (where
  the world origin goes) and rot_* are the intrinsic X-Y-Z Euler angles of T[:3, :3].
* Column names and units (mm, rad) are fMRIPrep's confounds names (trans_x ... rot_z).
  Framewise displacement (Power 2012) is computed from these parameters with r = 50 mm.
"""

from __future__ import annotations

import numpy as np


def _rx(a: float) -> np.ndarray:
    c, s = np.cos(a), np.sin(a)
    return np.array([[1.0, 0.0, 0.0], [0.0, c, -s], [0.0, s, c]])


def _ry(a: float) -> np.ndarray:
    c, s = np.cos(a), np.sin(a)
    return np.array([[c, 0.0, s], [0.0, 1.0, 0.0], [-s, 0.0, c]])


def _rz(a: float) -> np.ndarray:
    c, s = np.cos(a), np.sin(a)
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


def params_to_matrix(params: np.ndarray) -> np.ndarray:
    """(trans_x, trans_y, trans_z, rot_x, rot_y, rot_z) -> 4x4 rigid matrix (see module doc)."""
    p = np.asarray(params, dtype=np.float64).reshape(6)
    m = np.eye(4)
    m[:3, :3] = _rx(p[3]) @ _ry(p[4]) @ _rz(p[5])
    m[:3, 3] = p[:3]
    return m


def matrix_to_params(matrix: np.ndarray) -> np.ndarray:
    """Inverse of `params_to_matrix` for a rigid matrix (rotation part orthonormalised first)."""
    m = np.asarray(matrix, dtype=np.float64)
    u, _, vt = np.linalg.svd(m[:3, :3])
    r = u @ vt
    # R = Rx Ry Rz  =>  R[0,2] = sin(b); R[1,2] = -sin(a) cos(b); R[2,2] = cos(a) cos(b);
    #                   R[0,1] = -cos(b) sin(c); R[0,0] = cos(b) cos(c)
    b = np.arcsin(np.clip(r[0, 2], -1.0, 1.0))
    if abs(abs(r[0, 2]) - 1.0) < 1e-12:  # gimbal lock: put everything in rot_x
        a = np.arctan2(r[2, 1], r[1, 1])
        c = 0.0
    else:
        a = np.arctan2(-r[1, 2], r[2, 2])
        c = np.arctan2(-r[0, 1], r[0, 0])
    return np.array([m[0, 3], m[1, 3], m[2, 3], a, b, c])


def rotation_vector_matrix(omega: np.ndarray) -> np.ndarray:
    """Rotation matrix exp([omega]_x) (Rodrigues) for a rotation vector in radians."""
    w = np.asarray(omega, dtype=np.float64)
    theta = float(np.sqrt(w @ w))
    k = np.array([[0.0, -w[2], w[1]], [w[2], 0.0, -w[0]], [-w[1], w[0], 0.0]])
    if theta < 1e-12:
        return np.eye(3) + k
    a = np.sin(theta) / theta
    b = (1.0 - np.cos(theta)) / (theta * theta)
    return np.eye(3) + a * k + b * (k @ k)


def small_rigid(delta: np.ndarray, centre: np.ndarray) -> np.ndarray:
    """4x4 rigid map X -> R(omega) (X - c) + c + t for delta = (t (3), omega (3)).

    This is the parametrisation whose Jacobian at delta = 0 the estimator precomputes:
    dX/dt = I, dX/domega = -[X - c]_x; rotating about the brain centre decorrelates
    rotations from translations, which makes Gauss-Newton converge in fewer steps.
    """
    r = rotation_vector_matrix(delta[3:])
    m = np.eye(4)
    m[:3, :3] = r
    m[:3, 3] = centre + delta[:3] - r @ centre
    return m
