"""Likelihood -> the score the participant sees (METHOD.md E12), including sham modes; or, with
decoder.score = "percentile", the decoder's linear term -> E13 (runtime/percentile.py).

Why a separate module: the score rule is what a clinical-trial protocol names (direction of
the group, sham control), so it is kept in one small place, deterministic and restart-safe:
a random sham score depends only on (seed, trial), never on how many trials a restarted engine
has drawn before.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from runtime.config import DecoderConfig
from runtime.errors import ConfigError
from runtime.percentile import PercentileReference, percentile_score

SHAM_MEAN = 50.0
SHAM_SD = 30.3


def score_from_likelihood(likelihood: float, direction: str = "up") -> int:
    """E12: round(100·L) in [0, 100]; a "down" group gets 100 − that."""
    s = int(np.clip(round(100.0 * float(likelihood)), 0, 100))
    return 100 - s if direction == "down" else s


def sham_random_score(seed: int, trial: int) -> int:
    """SHAM_RAND_SCORE: N(50, 30.3²) clipped to [0, 100], drawn from (seed, trial) only."""
    rng = np.random.default_rng([int(seed) & 0xFFFFFFFF, int(trial)])
    return int(np.clip(round(rng.normal(SHAM_MEAN, SHAM_SD)), 0, 100))


def read_yoked_scores(path: Path) -> dict[int, int | None]:
    """trial -> score from another session's `*_scores.tsv` (None where it had no feedback)."""
    from runtime.outputs import read_tsv

    if not path.exists():
        raise ConfigError(f"{path}: yoked scores file not found (key 'decoder.yoked_scores')")
    rows = read_tsv(path)
    if not rows or "trial" not in rows[0] or "score" not in rows[0]:
        raise ConfigError(f"{path}: expected a scores.tsv with 'trial' and 'score' columns (key 'decoder.yoked_scores')")
    out: dict[int, int | None] = {}
    try:
        for r in rows:
            s = r["score"]
            out[int(r["trial"])] = None if s in ("", "n/a") else int(round(float(s)))
    except ValueError as exc:
        raise ConfigError(f"{path}: bad row in yoked scores file: {exc}") from None
    return out


@dataclass(frozen=True)
class ScoreOutcome:
    score: int | None
    flags: tuple[str, ...]


class Scorer:
    """Turns a trial's likelihood (or its absence) into the displayed score and flags."""

    def __init__(self, cfg: DecoderConfig, *, yoked_path: Path | None = None,
                 reference: PercentileReference | None = None) -> None:
        self.direction = cfg.direction
        self.reference = reference if cfg.score == "percentile" else None
        """Percentile scoring (E13) when set; the engine loads it checked against its bundle."""
        if cfg.score == "percentile" and reference is None:
            raise ConfigError("key 'decoder.percentile_reference': decoder.score = 'percentile' needs a calibrated reference")
        self.lo, self.hi = (float(v) for v in cfg.percentile_range)
        self.sham = cfg.sham
        self.seed = cfg.seed
        self.yoked: dict[int, int | None] = {}
        if self.sham == "yoked":
            if yoked_path is None:
                raise ConfigError("key 'decoder.yoked_scores': expected a scores.tsv path when decoder.sham = 'yoked'")
            self.yoked = read_yoked_scores(yoked_path)

    @property
    def percentile(self) -> bool:
        return self.reference is not None

    def score(self, trial: int, likelihood: float | None, linear: float | None = None) -> ScoreOutcome:
        """`likelihood` None = no valid scan / no baseline: no feedback (also in sham modes, so
        a participant's motion has the same consequence in every arm). `linear` = the decoder's
        linear term u, used (instead of the likelihood) in percentile mode."""
        if likelihood is None or not math.isfinite(likelihood):
            if self.sham == "yoked":
                return ScoreOutcome(None, ("no_feedback", "sham_yoked"))
            return ScoreOutcome(None, ("no_feedback",))
        if self.sham == "random":
            return ScoreOutcome(sham_random_score(self.seed, trial), ("sham_random",))
        if self.sham == "yoked":
            s = self.yoked.get(trial)
            if s is None:
                return ScoreOutcome(None, ("no_feedback", "sham_yoked"))
            return ScoreOutcome(int(np.clip(s, 0, 100)), ("sham_yoked",))
        if self.reference is not None:
            if linear is None or not math.isfinite(linear):
                return ScoreOutcome(None, ("no_feedback",))
            r = self.reference
            return ScoreOutcome(percentile_score(linear, r.m, r.s, self.lo, self.hi, self.direction), ("percentile",))
        return ScoreOutcome(score_from_likelihood(likelihood, self.direction), ())
