"""Pure functions from scores to what is drawn and paid (METHOD.md §1.4 items 10-11, E14).

Kept apart from PsychoPy so the numbers a participant sees can be checked without a window.
"""

from __future__ import annotations

import math
from collections.abc import Iterable


def clip_score(score: float) -> float:
    """Scores are 0-100 by contract; clip anything outside rather than draw a huge disc."""
    if math.isnan(score):
        raise ValueError("score is NaN; use None for 'no feedback'")
    return min(100.0, max(0.0, float(score)))


def disc_radius(score: float, max_radius: int) -> int:
    """(E14) R = round(score / 100 · R_max), in pixels."""
    return int(round(clip_score(score) / 100.0 * max_radius))


def bar_height(score: float, max_height: int) -> int:
    """Thermometer fill height, proportional to the score like the disc radius."""
    return int(round(clip_score(score) / 100.0 * max_height))


def mean_score(scores: Iterable[float | None]) -> float | None:
    """Mean of the scores actually shown; None when no trial had feedback."""
    shown = [float(s) for s in scores if s is not None]
    return sum(shown) / len(shown) if shown else None


def reward(mean: float | None, per_point: float) -> float:
    """Bonus proportional to the mean score (METHOD.md §1.4 item 11); 0 without feedback."""
    return 0.0 if mean is None else round(mean * per_point, 2)


def step_rating(value: int, delta: int, lo: int = 0, hi: int = 10) -> int:
    """Move a rating cursor by `delta` steps, staying on the scale."""
    return min(hi, max(lo, value + delta))


def rating_x(value: int, width: int, lo: int = 0, hi: int = 10) -> float:
    """Horizontal pixel offset (from the centre) of a rating value on a scale `width` px wide."""
    return (value - lo) / (hi - lo) * width - width / 2.0
