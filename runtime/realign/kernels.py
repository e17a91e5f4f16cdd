"""numba kernels for realignment and reslicing (the only per-volume hot loops).

All kernels work on float32 C-contiguous (i, j, k) volumes and take the voxel-to-voxel map as a
3x4 float64 matrix `Q` (row-major affine: out voxel (i, j, k, 1) -> moving voxel coordinates),
so one kernel serves any pair of grids. `cache=True` keeps compiled code on disk; `warmup()`
in `runtime.realign` calls every kernel once on tiny arrays so the first volume is not slower
than the hundredth.

Trilinear sampling treats a point as inside the volume when 0 <= x <= n-1 on every axis
(a point exactly on the last plane is sampled from the last cell); outside points are invalid.
"""

from __future__ import annotations

import numba as nb
import numpy as np

# Layout of the (N, 10) float32 point table used by `gn_sums`:
# columns 0..2 = reference voxel (i, j, k); 3 = reference value f; 4..9 = Jacobian row J (6).
PT_COLS = 10
# Layout of the float64 accumulator vector returned by `gn_sums`.
ACC_JG = 0  # 6: sum over valid points of J * g
ACC_JF_OUT = 6  # 6: sum over INVALID points of J * f (subtract from the precomputed total)
ACC_H_OUT = 12  # 21: upper triangle of sum over INVALID points of J J^T
ACC_SG = 33
ACC_SF = 34
ACC_SGG = 35
ACC_SFG = 36
ACC_SFF = 37
ACC_N = 38
ACC_LEN = 39


@nb.njit(cache=True, fastmath=True, nogil=True)
def smooth3(src, dst, tmp, w0, w1, w2):
    """Separable convolution with 1-D kernels `w0, w1, w2` (odd lengths), edges clamped.

    `src` may be any real dtype (read once); `dst` and `tmp` are float32 scratch of the same
    shape. Kernels of length 1 (weight 1) skip nothing but cost one copy pass.
    """
    nx, ny, nz = src.shape
    r0 = w0.shape[0] // 2
    r1 = w1.shape[0] // 2
    r2 = w2.shape[0] // 2
    # axis 2 (contiguous): src -> dst
    for i in range(nx):
        for j in range(ny):
            for k in range(nz):
                acc = 0.0
                for t in range(-r2, r2 + 1):
                    kk = k + t
                    if kk < 0:
                        kk = 0
                    elif kk >= nz:
                        kk = nz - 1
                    acc += w2[t + r2] * src[i, j, kk]
                dst[i, j, k] = acc
    # axis 1: dst -> tmp (inner loop over k vectorises)
    for i in range(nx):
        for j in range(ny):
            for k in range(nz):
                tmp[i, j, k] = 0.0
            for t in range(-r1, r1 + 1):
                jj = j + t
                if jj < 0:
                    jj = 0
                elif jj >= ny:
                    jj = ny - 1
                wt = w1[t + r1]
                for k in range(nz):
                    tmp[i, j, k] += wt * dst[i, jj, k]
    # axis 0: tmp -> dst
    for i in range(nx):
        for j in range(ny):
            for k in range(nz):
                dst[i, j, k] = 0.0
        for t in range(-r0, r0 + 1):
            ii = i + t
            if ii < 0:
                ii = 0
            elif ii >= nx:
                ii = nx - 1
            wt = w0[t + r0]
            for j in range(ny):
                for k in range(nz):
                    dst[i, j, k] += wt * tmp[ii, j, k]


@nb.njit(cache=True, fastmath=True, nogil=True)
def _trilinear(flat, nx, ny, nz, x, y, z):
    """Trilinear value at continuous voxel (x, y, z); caller guarantees 0 <= x <= n-1."""
    x0 = int(x)
    y0 = int(y)
    z0 = int(z)
    if x0 > nx - 2:
        x0 = nx - 2
    if y0 > ny - 2:
        y0 = ny - 2
    if z0 > nz - 2:
        z0 = nz - 2
    fx = x - x0
    fy = y - y0
    fz = z - z0
    sy = nz
    sx = ny * nz
    b = x0 * sx + y0 * sy + z0
    c000 = flat[b]
    c001 = flat[b + 1]
    c010 = flat[b + sy]
    c011 = flat[b + sy + 1]
    c100 = flat[b + sx]
    c101 = flat[b + sx + 1]
    c110 = flat[b + sx + sy]
    c111 = flat[b + sx + sy + 1]
    c00 = c000 + fz * (c001 - c000)
    c01 = c010 + fz * (c011 - c010)
    c10 = c100 + fz * (c101 - c100)
    c11 = c110 + fz * (c111 - c110)
    c0 = c00 + fy * (c01 - c00)
    c1 = c10 + fy * (c11 - c10)
    return c0 + fx * (c1 - c0)


@nb.njit(cache=True, fastmath=True, nogil=True)
def _bspline3(flat, ny, nz, x, y, z):
    """Cubic B-spline quasi-interpolation (no prefilter) at (x, y, z).

    Why not trilinear: trilinear interpolation blurs by a variance d(1-d) that depends on the
    sub-voxel offset d, which biases intensity-based registration towards the grid (0.03-0.07
    mm here). The cubic B-spline's discrete moments up to order 3 do not depend on the offset,
    so sampling with it equals a shift-invariant blur (variance 1/3 voxel^2 per axis, no skew):
    the reference blurred with the same spline at integer offsets (1/6, 4/6, 1/6) then matches
    without grid bias. Caller guarantees 1 <= x < n-2 on every axis.
    """
    ix = int(x)
    iy = int(y)
    iz = int(z)
    # weights in float32: the volume is float32, so this keeps the 4-tap dot products in
    # single-precision SIMD lanes (the sums over points stay float64)
    tx = np.float32(x - ix)
    ty = np.float32(y - iy)
    tz = np.float32(z - iz)
    one = np.float32(1.0)
    s6 = np.float32(1.0 / 6.0)
    h = np.float32(0.5)
    f4 = np.float32(4.0 / 6.0)
    ux = one - tx
    uy = one - ty
    uz = one - tz
    wx0 = s6 * ux * ux * ux
    wx3 = s6 * tx * tx * tx
    wx1 = h * tx * tx * tx - tx * tx + f4
    wx2 = one - wx0 - wx1 - wx3
    wy0 = s6 * uy * uy * uy
    wy3 = s6 * ty * ty * ty
    wy1 = h * ty * ty * ty - ty * ty + f4
    wy2 = one - wy0 - wy1 - wy3
    wz0 = s6 * uz * uz * uz
    wz3 = s6 * tz * tz * tz
    wz1 = h * tz * tz * tz - tz * tz + f4
    wz2 = one - wz0 - wz1 - wz3
    sy = nz
    sx = ny * nz
    p = (ix - 1) * sx + (iy - 1) * sy + iz - 1
    # 16 rows of 4 contiguous z-samples, weighted by wx*wy, accumulated lane-wise
    c0 = np.float32(0.0)
    c1 = np.float32(0.0)
    c2 = np.float32(0.0)
    c3 = np.float32(0.0)
    wa = wx0
    w = wa * wy0
    r = p
    c0 += w * flat[r]
    c1 += w * flat[r + 1]
    c2 += w * flat[r + 2]
    c3 += w * flat[r + 3]
    w = wa * wy1
    r = p + 0 * sx + 1 * sy
    c0 += w * flat[r]
    c1 += w * flat[r + 1]
    c2 += w * flat[r + 2]
    c3 += w * flat[r + 3]
    w = wa * wy2
    r = p + 0 * sx + 2 * sy
    c0 += w * flat[r]
    c1 += w * flat[r + 1]
    c2 += w * flat[r + 2]
    c3 += w * flat[r + 3]
    w = wa * wy3
    r = p + 0 * sx + 3 * sy
    c0 += w * flat[r]
    c1 += w * flat[r + 1]
    c2 += w * flat[r + 2]
    c3 += w * flat[r + 3]
    wa = wx1
    w = wa * wy0
    r = p + 1 * sx + 0 * sy
    c0 += w * flat[r]
    c1 += w * flat[r + 1]
    c2 += w * flat[r + 2]
    c3 += w * flat[r + 3]
    w = wa * wy1
    r = p + 1 * sx + 1 * sy
    c0 += w * flat[r]
    c1 += w * flat[r + 1]
    c2 += w * flat[r + 2]
    c3 += w * flat[r + 3]
    w = wa * wy2
    r = p + 1 * sx + 2 * sy
    c0 += w * flat[r]
    c1 += w * flat[r + 1]
    c2 += w * flat[r + 2]
    c3 += w * flat[r + 3]
    w = wa * wy3
    r = p + 1 * sx + 3 * sy
    c0 += w * flat[r]
    c1 += w * flat[r + 1]
    c2 += w * flat[r + 2]
    c3 += w * flat[r + 3]
    wa = wx2
    w = wa * wy0
    r = p + 2 * sx + 0 * sy
    c0 += w * flat[r]
    c1 += w * flat[r + 1]
    c2 += w * flat[r + 2]
    c3 += w * flat[r + 3]
    w = wa * wy1
    r = p + 2 * sx + 1 * sy
    c0 += w * flat[r]
    c1 += w * flat[r + 1]
    c2 += w * flat[r + 2]
    c3 += w * flat[r + 3]
    w = wa * wy2
    r = p + 2 * sx + 2 * sy
    c0 += w * flat[r]
    c1 += w * flat[r + 1]
    c2 += w * flat[r + 2]
    c3 += w * flat[r + 3]
    w = wa * wy3
    r = p + 2 * sx + 3 * sy
    c0 += w * flat[r]
    c1 += w * flat[r + 1]
    c2 += w * flat[r + 2]
    c3 += w * flat[r + 3]
    wa = wx3
    w = wa * wy0
    r = p + 3 * sx + 0 * sy
    c0 += w * flat[r]
    c1 += w * flat[r + 1]
    c2 += w * flat[r + 2]
    c3 += w * flat[r + 3]
    w = wa * wy1
    r = p + 3 * sx + 1 * sy
    c0 += w * flat[r]
    c1 += w * flat[r + 1]
    c2 += w * flat[r + 2]
    c3 += w * flat[r + 3]
    w = wa * wy2
    r = p + 3 * sx + 2 * sy
    c0 += w * flat[r]
    c1 += w * flat[r + 1]
    c2 += w * flat[r + 2]
    c3 += w * flat[r + 3]
    w = wa * wy3
    r = p + 3 * sx + 3 * sy
    c0 += w * flat[r]
    c1 += w * flat[r + 1]
    c2 += w * flat[r + 2]
    c3 += w * flat[r + 3]
    return wz0 * c0 + wz1 * c1 + wz2 * c2 + wz3 * c3


@nb.njit(cache=True, fastmath=True, nogil=True)
def gn_sums(vol, Q, pts, acc):
    """One Gauss-Newton pass: sample the moving volume at Q @ (i, j, k, 1) for every point.

    Accumulates in `acc` (float64, ACC_LEN, zeroed here) everything the inverse-compositional
    step needs, so the points are read once per iteration: J^T g over valid points, and the
    J^T f and J J^T contributions of points that fell outside the moving volume (subtracted
    from the per-reference totals, which keeps the Hessian exact for the overlap).
    Sampling is cubic B-spline quasi-interpolation (`_bspline3`).
    """
    for a in range(ACC_LEN):
        acc[a] = 0.0
    nx, ny, nz = vol.shape
    if nx < 3 or ny < 3 or nz < 3:
        return
    flat = vol.ravel()
    lo = 1.0
    xmax = nx - 2.0
    ymax = ny - 2.0
    zmax = nz - 2.0
    q00, q01, q02, q03 = Q[0, 0], Q[0, 1], Q[0, 2], Q[0, 3]
    q10, q11, q12, q13 = Q[1, 0], Q[1, 1], Q[1, 2], Q[1, 3]
    q20, q21, q22, q23 = Q[2, 0], Q[2, 1], Q[2, 2], Q[2, 3]
    jg0 = 0.0
    jg1 = 0.0
    jg2 = 0.0
    jg3 = 0.0
    jg4 = 0.0
    jg5 = 0.0
    sg = 0.0
    sf = 0.0
    sgg = 0.0
    sfg = 0.0
    sff = 0.0
    n = 0.0
    for p in range(pts.shape[0]):
        i = pts[p, 0]
        j = pts[p, 1]
        k = pts[p, 2]
        x = q00 * i + q01 * j + q02 * k + q03
        y = q10 * i + q11 * j + q12 * k + q13
        z = q20 * i + q21 * j + q22 * k + q23
        f = pts[p, 3]
        if x < lo or y < lo or z < lo or x >= xmax or y >= ymax or z >= zmax:
            u = 0
            for a in range(6):
                ja = pts[p, 4 + a]
                acc[ACC_JF_OUT + a] += ja * f
                for b in range(a, 6):
                    acc[ACC_H_OUT + u] += ja * pts[p, 4 + b]
                    u += 1
            continue
        g = _bspline3(flat, ny, nz, x, y, z)
        jg0 += pts[p, 4] * g
        jg1 += pts[p, 5] * g
        jg2 += pts[p, 6] * g
        jg3 += pts[p, 7] * g
        jg4 += pts[p, 8] * g
        jg5 += pts[p, 9] * g
        sg += g
        sf += f
        sgg += g * g
        sfg += f * g
        sff += f * f
        n += 1.0
    acc[0] = jg0
    acc[1] = jg1
    acc[2] = jg2
    acc[3] = jg3
    acc[4] = jg4
    acc[5] = jg5
    acc[ACC_SG] = sg
    acc[ACC_SF] = sf
    acc[ACC_SGG] = sgg
    acc[ACC_SFG] = sfg
    acc[ACC_SFF] = sff
    acc[ACC_N] = n


@nb.njit(cache=True, fastmath=True, nogil=True)
def sample_points(vol, Q, ijk, out, fill):
    """Trilinear samples of `vol` at Q @ (i, j, k, 1) for integer out-grid voxels `ijk` (N, 3)."""
    nx, ny, nz = vol.shape
    flat = vol.ravel()
    xmax = nx - 1.0
    ymax = ny - 1.0
    zmax = nz - 1.0
    for p in range(ijk.shape[0]):
        i = float(ijk[p, 0])
        j = float(ijk[p, 1])
        k = float(ijk[p, 2])
        x = Q[0, 0] * i + Q[0, 1] * j + Q[0, 2] * k + Q[0, 3]
        y = Q[1, 0] * i + Q[1, 1] * j + Q[1, 2] * k + Q[1, 3]
        z = Q[2, 0] * i + Q[2, 1] * j + Q[2, 2] * k + Q[2, 3]
        # tolerate rounding on the boundary (identity transform lands exactly on n-1)
        if x < -1e-4 or y < -1e-4 or z < -1e-4 or x > xmax + 1e-4 or y > ymax + 1e-4 or z > zmax + 1e-4:
            out[p] = fill
            continue
        x = min(max(x, 0.0), xmax)
        y = min(max(y, 0.0), ymax)
        z = min(max(z, 0.0), zmax)
        if nx < 2 or ny < 2 or nz < 2:
            out[p] = flat[int(x + 0.5) * ny * nz + int(y + 0.5) * nz + int(z + 0.5)]
            continue
        out[p] = _trilinear(flat, nx, ny, nz, x, y, z)


@nb.njit(cache=True, fastmath=True, nogil=True)
def _inside_range(b, q, lo, hi, n):
    """Integer k-range [k0, k1) where lo <= b + q k <= hi, for k in [0, n)."""
    if abs(q) < 1e-12:
        if lo <= b <= hi:
            return 0, n
        return 0, 0
    t0 = (lo - b) / q
    t1 = (hi - b) / q
    if t0 > t1:
        t0, t1 = t1, t0
    # clamp in float first: t0/t1 can be huge for a nearly parallel row
    k0 = int(np.ceil(min(max(t0, 0.0), float(n))))
    k1 = int(np.floor(min(max(t1, -1.0), float(n)))) + 1
    k1 = min(k1, n)
    if k1 < k0:
        k1 = k0
    return k0, k1


@nb.njit(cache=True, fastmath=True, nogil=True)
def sample_grid(vol, Q, out, fill):
    """Trilinear reslice of `vol` onto every voxel of the out grid (shape of `out`).

    Per output row the inside k-range is solved analytically, so the inner loop has no bounds
    checks (points within 1e-4 voxel of the edge count as inside and are clamped)."""
    nx, ny, nz = vol.shape
    flat = vol.ravel()
    eps = 1e-4
    xmax = nx - 1.0
    ymax = ny - 1.0
    zmax = nz - 1.0
    mx, my, mz = out.shape
    tiny = nx < 2 or ny < 2 or nz < 2
    for i in range(mx):
        for j in range(my):
            bx = Q[0, 0] * i + Q[0, 1] * j + Q[0, 3]
            by = Q[1, 0] * i + Q[1, 1] * j + Q[1, 3]
            bz = Q[2, 0] * i + Q[2, 1] * j + Q[2, 3]
            a0, a1 = _inside_range(bx, Q[0, 2], -eps, xmax + eps, mz)
            b0, b1 = _inside_range(by, Q[1, 2], -eps, ymax + eps, mz)
            c0, c1 = _inside_range(bz, Q[2, 2], -eps, zmax + eps, mz)
            k0 = min(max(a0, max(b0, c0)), mz)
            k1 = min(a1, min(b1, c1))
            if k1 < k0:
                k1 = k0
            for k in range(0, k0):
                out[i, j, k] = fill
            for k in range(k1, mz):
                out[i, j, k] = fill
            for k in range(k0, k1):
                x = min(max(bx + Q[0, 2] * k, 0.0), xmax)
                y = min(max(by + Q[1, 2] * k, 0.0), ymax)
                z = min(max(bz + Q[2, 2] * k, 0.0), zmax)
                if tiny:
                    out[i, j, k] = flat[int(x + 0.5) * ny * nz + int(y + 0.5) * nz + int(z + 0.5)]
                else:
                    out[i, j, k] = _trilinear(flat, nx, ny, nz, x, y, z)


BSPLINE3_AT_INTEGERS = np.array([1 / 6, 4 / 6, 1 / 6], dtype=np.float32)
CENTRAL_DIFFERENCE = np.array([-0.5, 0.0, 0.5], dtype=np.float32)


def gaussian_kernel(sigma_vox: float) -> np.ndarray:
    """Normalised 1-D Gaussian truncated at 2.5 sigma (length 1 when sigma is negligible)."""
    if sigma_vox < 0.2:
        return np.ones(1, dtype=np.float32)
    r = max(1, int(np.ceil(2.5 * sigma_vox)))
    x = np.arange(-r, r + 1, dtype=np.float64)
    w = np.exp(-0.5 * (x / sigma_vox) ** 2)
    return (w / w.sum()).astype(np.float32)


# Status codes returned by `gn_level`.
GN_CONVERGED = 0
GN_MAX_ITER = 1
GN_NO_OVERLAP = 2
GN_SINGULAR = 3
GN_STALLED = 4


@nb.njit(cache=True, fastmath=False, nogil=True)
def _solve6(h, b, out):
    """Solve the symmetric 6x6 system h x = b (Gaussian elimination, partial pivoting).
    Returns False when singular. Small and branchy: not worth a LAPACK call per iteration."""
    a = np.empty((6, 7))
    for i in range(6):
        for j in range(6):
            a[i, j] = h[i, j]
        a[i, 6] = b[i]
    for c in range(6):
        piv = c
        best = abs(a[c, c])
        for r in range(c + 1, 6):
            if abs(a[r, c]) > best:
                best = abs(a[r, c])
                piv = r
        if best < 1e-300:
            return False
        if piv != c:
            for j in range(7):
                tmp = a[c, j]
                a[c, j] = a[piv, j]
                a[piv, j] = tmp
        for r in range(c + 1, 6):
            f = a[r, c] / a[c, c]
            for j in range(c, 7):
                a[r, j] -= f * a[c, j]
    for r in range(5, -1, -1):
        s = a[r, 6]
        for j in range(r + 1, 6):
            s -= a[r, j] * out[j]
        out[r] = s / a[r, r]
    return True


@nb.njit(cache=True, fastmath=False, nogil=True)
def _small_rigid(delta, centre, w):
    """4x4 map X -> R(omega)(X - c) + c + t into `w` (same as params.small_rigid)."""
    ox, oy, oz = delta[3], delta[4], delta[5]
    theta = np.sqrt(ox * ox + oy * oy + oz * oz)
    if theta < 1e-12:
        a = 1.0
        b = 0.5
    else:
        a = np.sin(theta) / theta
        b = (1.0 - np.cos(theta)) / (theta * theta)
    k = np.array([[0.0, -oz, oy], [oz, 0.0, -ox], [-oy, ox, 0.0]])
    for i in range(3):
        for j in range(3):
            kk = 0.0
            for t in range(3):
                kk += k[i, t] * k[t, j]
            w[i, j] = (1.0 if i == j else 0.0) + a * k[i, j] + b * kk
    for i in range(3):
        w[i, 3] = centre[i] + delta[i] - (w[i, 0] * centre[0] + w[i, 1] * centre[1] + w[i, 2] * centre[2])
        w[3, i] = 0.0
    w[3, 3] = 1.0


@nb.njit(cache=True, fastmath=False, nogil=True)
def gn_level(vol, inv_mov, m, lvl_affine, pts, hess, jf, n_sub, hess_sub, jf_sub, centre, corners,
             max_iter, tol, switch_mm, min_overlap, stall_ratio, acc):
    """Inverse-compositional Gauss-Newton at one level, entirely in compiled code.

    `m` (4x4, reference world -> moving world) is updated in place: m <- m W(dp)^-1 each step.
    The first iterations use only the first `n_sub` points (a spatially uniform subset, with
    its own precomputed Hessian) until a step moves the corners less than `switch_mm`; then all
    points. Convergence: a full-set step that moves every corner less than `tol` mm.
    Returns (iterations, status) with status one of GN_*.
    """
    w = np.empty((4, 4))
    delta = np.empty(6)
    rhs = np.empty(6)
    h = np.empty((6, 6))
    q = np.empty((3, 4))
    tmp = np.empty((4, 4))
    use_sub = 0 < n_sub < pts.shape[0]
    prev = np.inf
    for it in range(1, max_iter + 1):
        # q = (inv_mov @ m @ lvl_affine)[:3]
        for i in range(4):
            for j in range(4):
                s = 0.0
                for t in range(4):
                    s += m[i, t] * lvl_affine[t, j]
                tmp[i, j] = s
        for i in range(3):
            for j in range(4):
                s = 0.0
                for t in range(4):
                    s += inv_mov[i, t] * tmp[t, j]
                q[i, j] = s
        if use_sub:
            gn_sums(vol, q, pts[:n_sub], acc)
            npts = n_sub
            h0 = hess_sub
            f0 = jf_sub
        else:
            gn_sums(vol, q, pts, acc)
            npts = pts.shape[0]
            h0 = hess
            f0 = jf
        if acc[ACC_N] < min_overlap * npts or acc[ACC_SG] <= 0.0:
            return it, GN_NO_OVERLAP
        sc = acc[ACC_SF] / acc[ACC_SG]
        u = 0
        for a in range(6):
            for b in range(a, 6):
                h[a, b] = h0[a, b] - acc[ACC_H_OUT + u]
                h[b, a] = h[a, b]
                u += 1
            rhs[a] = sc * acc[ACC_JG + a] - (f0[a] - acc[ACC_JF_OUT + a])
        if not _solve6(h, rhs, delta):
            return it, GN_SINGULAR
        for a in range(6):
            if not np.isfinite(delta[a]):
                return it, GN_SINGULAR
        _small_rigid(delta, centre, w)
        # m <- m @ inv(w); inv(w) = [R^T, -R^T t]
        for i in range(4):
            r0 = m[i, 0]
            r1 = m[i, 1]
            r2 = m[i, 2]
            r3 = m[i, 3]
            for j in range(3):
                tmp[i, j] = r0 * w[j, 0] + r1 * w[j, 1] + r2 * w[j, 2]
            tmp[i, 3] = r3 - (tmp[i, 0] * w[0, 3] + tmp[i, 1] * w[1, 3] + tmp[i, 2] * w[2, 3])
        for i in range(4):
            for j in range(4):
                m[i, j] = tmp[i, j]
        disp = 0.0
        for c in range(corners.shape[0]):
            d2 = 0.0
            for i in range(3):
                d = w[i, 0] * corners[c, 0] + w[i, 1] * corners[c, 1] + w[i, 2] * corners[c, 2] + w[i, 3] - corners[c, i]
                d2 += d * d
            if d2 > disp:
                disp = d2
        disp = np.sqrt(disp)
        if use_sub:
            if disp < switch_mm:
                use_sub = False
                prev = np.inf
                continue
            if it >= 3 and disp > stall_ratio * prev:
                return it, GN_STALLED
            prev = disp
            continue
        if disp < tol:
            return it, GN_CONVERGED
        if it >= 3 and disp > stall_ratio * prev and disp > 10.0 * tol:
            return it, GN_STALLED
        prev = disp
    return max_iter, GN_MAX_ITER
