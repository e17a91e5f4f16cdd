"""Gaussian posterior pieces shared by SLR and SMLR (automatic relevance determination).

Both estimators need, for the active features A, the posterior of a Gaussian with precision

    H = diag(alpha_A) + X_A^T diag(r) X_A

(r = per-sample data precision: 2*lambda for the Jaakkola-Jordan bound, p(1-p) for a softmax
class block). They need H^-1 v, gamma_d = 1 - alpha_d * (H^-1)_dd (the MacKay "well-determined"
factor) and diag(X H^-1 X^T). With many more features than samples the D x D inverse is
neither affordable nor needed: the Woodbury form works with an N x N Cholesky factor only, so
memory stays O(N*D) and time O(N^2 D) per call.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import numpy as np
from scipy import linalg

# Below this many flops per posterior, multi-threaded BLAS loses: thread wake-up and spinning
# cost more than the work, badly so on a shared 2-core machine (measured: SLR on 1000 x 500
# took 6.8 s with 2 OpenBLAS threads, 0.56 s with 1).
SINGLE_THREAD_FLOPS = 2e9
_controller = None


def blas_threads(n: int, d: int):
    """Context limiting BLAS to one thread when a posterior on (n, d) is small work."""
    global _controller
    work = float(n) * n * d if d > n else float(n) * d * d + float(d) ** 3
    if work >= SINGLE_THREAD_FLOPS:
        return contextlib.nullcontext()
    if _controller is None:
        from threadpoolctl import ThreadpoolController  # a scikit-learn dependency

        _controller = ThreadpoolController()
    return _controller.limit(limits=1, user_api="blas")


@dataclass
class Posterior:
    """Factorised posterior; `solve(v)` applies H^-1 to one vector."""

    gamma: np.ndarray  # (D,) 1 - alpha_d S_dd, in [0, 1]
    diag_xsx: np.ndarray  # (N,) x_n^T S x_n
    _solve: object

    def solve(self, v: np.ndarray) -> np.ndarray:
        return self._solve(v)


def _cholesky(a: np.ndarray) -> np.ndarray:
    """Lower Cholesky factor; adds a tiny ridge only if rounding made `a` indefinite.

    numpy's potrf, not scipy's: on a loaded 2-core machine scipy's threaded OpenBLAS potrf was
    measured ~50x slower (0.5 s vs 0.01 s for 432 x 432).
    """
    try:
        return np.linalg.cholesky(a)
    except np.linalg.LinAlgError:
        jitter = 1e-10 * max(float(np.mean(np.diag(a))), 1e-300)
        for _ in range(8):
            try:
                return np.linalg.cholesky(a + jitter * np.eye(a.shape[0]))
            except np.linalg.LinAlgError:
                jitter *= 100.0
        raise


def posterior_direct(x: np.ndarray, alpha: np.ndarray, r: np.ndarray) -> Posterior:
    """D x D form; used when the active set is not larger than the number of samples."""
    h = x.T @ (r[:, None] * x)
    h[np.diag_indices_from(h)] += alpha
    chol = _cholesky(h)
    s = linalg.cho_solve((chol, True), np.eye(h.shape[0]), check_finite=False)
    gamma = np.clip(1.0 - alpha * np.diag(s), 0.0, 1.0)
    diag_xsx = np.einsum("nd,nd->n", x @ s, x)
    return Posterior(gamma, diag_xsx, lambda v: s @ v)


def posterior_woodbury(x: np.ndarray, alpha: np.ndarray, r: np.ndarray) -> Posterior:
    """N x N (Woodbury) form: H^-1 = B - B X^T R^1/2 M^-1 R^1/2 X B, M = I + R^1/2 X B X^T R^1/2.

    The symmetric R^1/2 scaling keeps M well conditioned even when some r_n are ~0 (samples the
    model already classifies confidently), where the textbook R^-1 + X B X^T form would blow up.
    """
    b = 1.0 / alpha
    sr = np.sqrt(r)
    xs = sr[:, None] * x  # (N, D)
    k = (x * b) @ x.T  # X B X^T, (N, N)
    m = (sr[:, None] * k) * sr[None, :]
    m[np.diag_indices_from(m)] += 1.0
    chol = _cholesky(m)
    # q_d = (R^1/2 x_d)^T M^-1 (R^1/2 x_d); gamma_d = 1 - alpha_d S_dd = b_d q_d exactly (no
    # cancellation, unlike computing S_dd = b_d - b_d^2 q_d first).
    li_xs = linalg.solve_triangular(chol, xs, lower=True, check_finite=False)
    q = np.einsum("nd,nd->d", li_xs, li_xs)
    gamma = np.clip(b * q, 0.0, 1.0)
    # X S X^T = K - K R^1/2 M^-1 R^1/2 K
    rk = sr[:, None] * k
    li_rk = linalg.solve_triangular(chol, rk, lower=True, check_finite=False)
    diag_xsx = np.diag(k) - np.einsum("nm,nm->m", li_rk, li_rk)

    def solve(v: np.ndarray) -> np.ndarray:
        bv = b * v
        u = sr * (x @ bv)
        u = linalg.cho_solve((chol, True), u, check_finite=False)
        return bv - b * (x.T @ (sr * u))

    return Posterior(gamma, np.maximum(diag_xsx, 0.0), solve)


def posterior(x: np.ndarray, alpha: np.ndarray, r: np.ndarray, woodbury: str | bool) -> Posterior:
    """Pick the cheaper form: Woodbury when features outnumber samples (or when forced)."""
    use_wb = (x.shape[1] > x.shape[0]) if woodbury == "auto" else bool(woodbury)
    return posterior_woodbury(x, alpha, r) if use_wb else posterior_direct(x, alpha, r)


def update_alpha(alpha: np.ndarray, gamma: np.ndarray, w: np.ndarray) -> np.ndarray:
    """MacKay fixed point (METHOD.md E5): alpha_d <- (1 - alpha_d S_dd) / w_d^2.

    A weight that is exactly zero gets an infinite precision, i.e. it is pruned.
    """
    w2 = w * w
    with np.errstate(divide="ignore", invalid="ignore"):
        new = np.where(w2 > 0.0, gamma / w2, np.inf)
    # gamma == 0 (feature fully determined by the prior) also means "irrelevant"
    new = np.where(gamma > 0.0, new, np.inf)
    return np.maximum(new, np.finfo(float).tiny)
