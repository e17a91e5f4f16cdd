"""Per-volume quality gates (METHOD.md §1.4 step 3, §4.2): FD, template correlation, NG flag.

A scan is "NG" (excluded from the score window, never a crash) when it moved too much since
the previous one, when its ROI pattern no longer looks like the template's (a slice dropout,
a spike, a ghost), or when either measure could not be computed.
"""

from __future__ import annotations

import math

import numpy as np

FD_RADIUS_MM = 50.0


def framewise_displacement(prev_params: np.ndarray | None, params: np.ndarray,
                           radius_mm: float = FD_RADIUS_MM) -> float:
    """Power et al. 2012 (E21): |dx|+|dy|+|dz| + r(|drot_x|+|drot_y|+|drot_z|), rotations in rad.

    Parameters are (trans_x, trans_y, trans_z, rot_x, rot_y, rot_z) as in `*_motion.tsv`.
    The first volume of a run (no previous parameters) has FD 0.
    """
    p = np.asarray(params, dtype=np.float64).reshape(6)
    if prev_params is None:
        return 0.0
    q = np.asarray(prev_params, dtype=np.float64).reshape(6)
    d = np.abs(p - q)
    return float(d[:3].sum() + radius_mm * d[3:].sum())


def template_correlation(values: np.ndarray, template_values: np.ndarray) -> float:
    """Pearson correlation between a volume's ROI values and the template's, over entries finite
    in both (NaN when fewer than 3 such entries or either side is constant)."""
    x = np.asarray(values, dtype=np.float64).ravel()
    y = np.asarray(template_values, dtype=np.float64).ravel()
    if x.shape != y.shape:
        raise ValueError(f"values ({x.size}) and template ({y.size}) differ in length")
    ok = np.isfinite(x) & np.isfinite(y)
    if ok.sum() < 3:
        return math.nan
    x = x[ok] - x[ok].mean()
    y = y[ok] - y[ok].mean()
    den = math.sqrt(float(x @ x) * float(y @ y))
    if den == 0.0:
        return math.nan
    return float(x @ y) / den


def is_ng(fd: float, corr: float, *, fd_threshold_mm: float = 0.5, corr_threshold: float = 0.7) -> bool:
    """True when the scan must be excluded.

    FD gate: fd > fd_threshold_mm (a threshold <= 0 or NaN disables it). Correlation gate:
    corr < corr_threshold (a threshold <= -1 disables it, as in the ATR program). A NaN in a
    measure whose gate is enabled makes the scan NG.
    """
    fd_on = fd_threshold_mm is not None and not math.isnan(fd_threshold_mm) and fd_threshold_mm > 0
    corr_on = corr_threshold is not None and not math.isnan(corr_threshold) and corr_threshold > -1
    if fd_on and (fd is None or math.isnan(fd) or fd > fd_threshold_mm):
        return True
    if corr_on and (corr is None or math.isnan(corr) or corr < corr_threshold):
        return True
    return False
