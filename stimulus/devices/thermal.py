"""Piecewise-linear thermode temperature profile: ramp, plateau, return.

Shared by the guard (to predict what a command will do before it is sent: budget, end time)
and by the simulated driver (to report temperatures). Pure functions.
"""

from __future__ import annotations

import numpy as np


def ramp_profile(baseline_c: float, target_c: float, rise_c_s: float, return_c_s: float,
                 plateau_s: float) -> np.ndarray:
    """(time_s, temp_c) break points of one stimulus starting at t = 0 from baseline."""
    delta = abs(target_c - baseline_c)
    t_up = delta / rise_c_s
    t_down = delta / return_c_s
    return np.array([
        [0.0, baseline_c],
        [t_up, target_c],
        [t_up + plateau_s, target_c],
        [t_up + plateau_s + t_down, baseline_c],
    ])


def duration(profile: np.ndarray) -> float:
    return float(profile[-1, 0])


def temperature_at(profile: np.ndarray, t: float) -> float:
    """Temperature at time t after onset (baseline before and after)."""
    return float(np.interp(t, profile[:, 0], profile[:, 1]))


def time_above(profile: np.ndarray, threshold_c: float) -> float:
    """Seconds the profile spends strictly above `threshold_c` (exact for linear segments)."""
    total = 0.0
    for (t0, y0), (t1, y1) in zip(profile[:-1], profile[1:], strict=False):
        dt = t1 - t0
        if dt <= 0:
            continue
        lo, hi = min(y0, y1), max(y0, y1)
        if lo >= threshold_c and hi > threshold_c:
            total += dt
        elif hi > threshold_c:
            total += dt * (hi - threshold_c) / (hi - lo)
    return total
