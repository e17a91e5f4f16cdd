"""Sparse multinomial logistic regression (SMLR; smlr_learning.m, METHOD.md 1.3, E2).

One ARD precision per (feature, class). Each outer iteration:
1. W-step: Newton maximisation of log-likelihood - 1/2 sum(alpha w^2) over the active entries,
   warm-started, at most `max_newton_iter` steps, with backtracking so every step increases the
   (concave) objective.
2. S = inverse of the negative Hessian at the optimum -> gamma = 1 - alpha S_dd.
3. MacKay alpha update and pruning at `prune_threshold`, as in binary SLR.

The exact Hessian couples classes, giving a (sum of active entries)^2 matrix. That is used
while it is small (`full_hessian_max` entries); above that (e.g. the first iterations on 20k
voxels x several classes) the per-class diagonal blocks X^T diag(p_c(1-p_c)) X + diag(alpha_c)
approximate S (Woodbury form when features > samples) and precondition conjugate gradients
on exact matrix-free Hessian products, so the Newton direction itself stays exact. Once
pruning has shrunk the active set the exact Hessian takes over again.
"""

from __future__ import annotations

import numpy as np
from scipy import linalg

from .ard import Posterior, _cholesky, blas_threads, posterior, update_alpha
from .slr import _SparseARDClassifier


def _softmax(a: np.ndarray) -> np.ndarray:
    a = a - a.max(axis=1, keepdims=True)
    e = np.exp(a)
    return e / e.sum(axis=1, keepdims=True)


def _objective(x: np.ndarray, t: np.ndarray, w: np.ndarray, alpha: np.ndarray, mask) -> float:
    a = x @ w
    amax = a.max(axis=1, keepdims=True)
    logz = (amax + np.log(np.exp(a - amax).sum(axis=1, keepdims=True)))[:, 0]
    ll = float(np.sum(t * a) - np.sum(logz))
    wm = np.where(mask, w, 0.0)
    am = np.where(mask, alpha, 0.0)  # alpha = inf on pruned entries
    return ll - 0.5 * float(np.sum(am * wm * wm))


class _FullHessian:
    """Exact negative Hessian over the active entries (column-major over classes)."""

    def __init__(self, x, p, alpha, mask):
        self.cols = [np.flatnonzero(mask[:, c]) for c in range(mask.shape[1])]
        sizes = [c.size for c in self.cols]
        self.offsets = np.concatenate([[0], np.cumsum(sizes)])
        n_cls = len(self.cols)
        h = np.zeros((self.offsets[-1], self.offsets[-1]))
        xs = [x[:, cols] for cols in self.cols]
        for c in range(n_cls):
            sc = slice(self.offsets[c], self.offsets[c + 1])
            for k in range(c, n_cls):
                sk = slice(self.offsets[k], self.offsets[k + 1])
                r = p[:, c] * ((c == k) - p[:, k])
                blk = xs[c].T @ (r[:, None] * xs[k])
                h[sc, sk] = blk
                if k != c:
                    h[sk, sc] = blk.T
        diag_alpha = np.concatenate([alpha[cols, c] for c, cols in enumerate(self.cols)])
        h[np.diag_indices_from(h)] += diag_alpha
        self.alpha = diag_alpha
        self.chol = _cholesky(h)

    def solve(self, g: np.ndarray) -> np.ndarray:
        flat = np.concatenate([g[cols, c] for c, cols in enumerate(self.cols)])
        sol = linalg.cho_solve((self.chol, True), flat, check_finite=False)
        out = np.zeros_like(g)
        for c, cols in enumerate(self.cols):
            out[cols, c] = sol[self.offsets[c] : self.offsets[c + 1]]
        return out

    def gamma(self, shape) -> np.ndarray:
        inv = linalg.cho_solve((self.chol, True), np.eye(self.chol.shape[0]), check_finite=False)
        flat = np.clip(1.0 - self.alpha * np.diag(inv), 0.0, 1.0)
        out = np.zeros(shape)
        for c, cols in enumerate(self.cols):
            out[cols, c] = flat[self.offsets[c] : self.offsets[c + 1]]
        return out


class _BlockHessian:
    """Per-class diagonal blocks of the negative Hessian (cross-class terms ignored)."""

    def __init__(self, x, p, alpha, mask, woodbury):
        self.cols = [np.flatnonzero(mask[:, c]) for c in range(mask.shape[1])]
        self.posts: list[Posterior | None] = []
        for c, cols in enumerate(self.cols):
            if cols.size == 0:
                self.posts.append(None)
                continue
            r = p[:, c] * (1.0 - p[:, c])
            self.posts.append(posterior(x[:, cols], alpha[cols, c], r, woodbury))

    def solve(self, g: np.ndarray) -> np.ndarray:
        out = np.zeros_like(g)
        for c, (cols, post) in enumerate(zip(self.cols, self.posts, strict=True)):
            if post is not None:
                out[cols, c] = post.solve(g[cols, c])
        return out

    def gamma(self, shape) -> np.ndarray:
        out = np.zeros(shape)
        for c, (cols, post) in enumerate(zip(self.cols, self.posts, strict=True)):
            if post is not None:
                out[cols, c] = post.gamma
        return out


def _hess_vec(x, p, a0, mask, v):
    """Exact negative-Hessian times V (D, C), matrix free: X^T [P o (A - rowsum(P o A))] + alpha V."""
    a = x @ v
    pa = p * a
    out = x.T @ (pa - p * pa.sum(axis=1, keepdims=True)) + a0 * v
    return np.where(mask, out, 0.0)


def _newton_direction(x, p, a0, mask, grad, hess, max_cg: int = 50):
    """Exact Newton step H^-1 g.

    With the full Hessian this is one Cholesky solve. With the block-diagonal approximation,
    preconditioned conjugate gradients on matrix-free exact Hessian products: the per-class
    blocks capture most of the curvature, so a few CG steps recover the cross-class coupling
    and the outer Newton iteration stays quadratically convergent.
    """
    if isinstance(hess, _FullHessian):
        return hess.solve(grad)
    sol = np.zeros_like(grad)
    res = grad.copy()
    z = hess.solve(res)
    d = z.copy()
    rz = float(np.sum(res * z))
    g_norm = float(np.sqrt(np.sum(grad * grad)))
    # truncated-Newton forcing term: loose far from the optimum, tight near it
    rtol = min(0.1, np.sqrt(g_norm))
    for _ in range(max_cg):
        hd = _hess_vec(x, p, a0, mask, d)
        dhd = float(np.sum(d * hd))
        if not dhd > 0:
            break
        step = rz / dhd
        sol += step * d
        res -= step * hd
        if np.sqrt(np.sum(res * res)) <= rtol * g_norm:
            break
        z = hess.solve(res)
        rz_new = float(np.sum(res * z))
        d = z + (rz_new / rz) * d
        rz = rz_new
    return sol


def _hessian(x, p, alpha, mask, woodbury, full_hessian_max):
    if int(mask.sum()) <= full_hessian_max:
        return _FullHessian(x, p, alpha, mask)
    return _BlockHessian(x, p, alpha, mask, woodbury)


def _w_step(xa, t, wa, aa, ma, woodbury, full_hessian_max, max_newton_iter, newton_tol):
    """Newton maximisation of log-likelihood - 1/2 sum(alpha w^2) over the active entries."""
    a0 = np.where(ma, aa, 0.0)  # pruned entries (alpha = inf, w = 0) contribute nothing
    f = _objective(xa, t, wa, aa, ma)
    hess = None
    for _ in range(max(1, max_newton_iter)):
        p = _softmax(xa @ wa)
        grad = np.where(ma, xa.T @ (t - p) - a0 * wa, 0.0)
        # The exact Hessian is rebuilt every step (cheap when small); the block
        # approximation is factorised once per outer iteration (at the warm start) and
        # reused as CG preconditioner and for S: it is approximate either way.
        if hess is None or isinstance(hess, _FullHessian):
            hess = _hessian(xa, p, aa, ma, woodbury, full_hessian_max)
        step = _newton_direction(xa, p, a0, ma, grad, hess)
        # squared Newton decrement: predicted objective gain x2; stop when negligible
        gain = float(np.sum(grad * step))
        if not gain > newton_tol:
            break
        size = 1.0
        for _ in range(30):
            cand = wa + size * step
            fc = _objective(xa, t, cand, aa, ma)
            if fc >= f:
                break
            size *= 0.5
        else:
            break
        wa, f = cand, fc
    return wa, hess


def fit_smlr(
    x: np.ndarray,
    y_idx: np.ndarray,
    n_classes: int,
    *,
    n_iter: int = 300,
    prune_threshold: float = 1e8,
    woodbury: str | bool = "auto",
    tol: float = 0.0,
    max_newton_iter: int = 50,
    full_hessian_max: int = 1500,
    newton_tol: float = 1e-8,
) -> tuple[np.ndarray, np.ndarray, int]:
    """SMLR on a design `x` (N, D) (bias column appended), integer labels 0..C-1.

    Returns (W (D, C), alpha (D, C), iterations run); pruned entries have W = 0, alpha = inf.
    """
    n, d = x.shape
    t = np.zeros((n, n_classes))
    t[np.arange(n), y_idx] = 1.0
    w = np.zeros((d, n_classes))
    alpha = np.ones((d, n_classes))
    mask = np.ones((d, n_classes), dtype=bool)
    # Only rows (features) still active in some class are kept in the working design.
    rows = np.arange(d)
    xa = np.ascontiguousarray(x)
    it = 0
    for it in range(1, n_iter + 1):  # noqa: B007 - `it` is returned
        wa, aa, ma = w[rows], alpha[rows], mask[rows]
        with blas_threads(n, int(ma.sum())):
            wa, hess = _w_step(xa, t, wa, aa, ma, woodbury, full_hessian_max,
                               max_newton_iter, newton_tol)
            gamma = hess.gamma(wa.shape)
        new_alpha = np.where(ma, update_alpha(aa, gamma, wa), np.inf)
        keep = ma & (new_alpha < prune_threshold)
        with np.errstate(divide="ignore", invalid="ignore"):
            moved = np.max(np.abs(np.log(new_alpha[keep]) - np.log(aa[keep])), initial=0.0)
        changed = bool(np.any(keep != ma))
        w[rows] = np.where(keep, wa, 0.0)
        alpha[rows] = np.where(keep, new_alpha, np.inf)
        mask[rows] = keep
        if changed:
            live = keep.any(axis=1)
            if not live.all():
                rows = rows[live]
                xa = np.ascontiguousarray(xa[:, live])
        elif tol > 0 and moved < tol:
            break
        if rows.size == 0:
            break
    return w, alpha, it


class SparseMultinomialLogisticRegression(_SparseARDClassifier):
    """SMLR for any number of classes (binary data gets two weight rows, softmax link).

    Same parameters as SparseLogisticRegression (`max_newton_iter`: inner W-step iterations).
    """

    _always_multinomial = True
