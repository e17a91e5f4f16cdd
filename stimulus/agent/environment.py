"""Simulated task environment and decoder, for testing the agent without a participant.

Options have hidden probabilities of delivering a *high* (painful) stimulus; at
`reversal_trial` the probabilities are reversed. Trials are numbered from 1 (so
`reversal_trial = 0` means "never", as in the config). The simulated decoder reads a noisy
P(high) from the (simulated) brain response to the stimulus that was delivered.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from stimulus.agent.learners import Learner, compute_reward


class SimulatedEnvironment:
    def __init__(self, p_high: Sequence[float], reversal_trial: int = 0, seed: int | np.random.Generator | None = 0):
        p = np.asarray(p_high, dtype=float)
        if p.ndim != 1 or len(p) < 2 or np.any((p < 0) | (p > 1)):
            raise ValueError(f"p_high must be >= 2 probabilities in [0, 1], got {p_high!r}")
        self.p_high = p
        self.reversal_trial = int(reversal_trial)
        self.rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)

    @property
    def n_options(self) -> int:
        return len(self.p_high)

    def p_high_at(self, trial: int) -> np.ndarray:
        """Hidden P(high) per option at `trial` (1-based)."""
        if self.reversal_trial and trial >= self.reversal_trial:
            return self.p_high[::-1].copy()
        return self.p_high.copy()

    def optimal_action(self, trial: int) -> int:
        """The less painful option at `trial` (lowest P(high))."""
        return int(np.argmin(self.p_high_at(trial)))

    def draw(self, action: int, trial: int) -> bool:
        """True if `action` delivers a high stimulus at `trial`."""
        return bool(self.rng.random() < self.p_high_at(trial)[action])


def simulate_decoder(high: bool, rng: np.random.Generator, noise_sd: float = 0.0,
                     p_if_high: float = 0.8, p_if_low: float = 0.2) -> float:
    """Decoded P(high): `p_if_high`/`p_if_low` plus Gaussian noise, clipped to [0, 1]."""
    p = (p_if_high if high else p_if_low) + (rng.normal(0.0, noise_sd) if noise_sd > 0 else 0.0)
    return float(min(max(p, 0.0), 1.0))


@dataclass(frozen=True)
class SimulatedTrial:
    trial: int
    action: int
    values: np.ndarray
    probabilities: np.ndarray
    high: bool
    p_high_decoded: float
    reward: float
    prediction_error: float
    optimal_action: int


def simulate_run(learner: Learner, env: SimulatedEnvironment, n_trials: int, noise_sd: float = 0.0,
                 reward_kind: str = "likelihood", seed: int | None = 0) -> list[SimulatedTrial]:
    """Run the closed loop choose → stimulus → decode → reward → update for `n_trials`."""
    rng = np.random.default_rng(seed)
    out = []
    for trial in range(1, n_trials + 1):
        values = learner.values
        action, probs = learner.choose()
        high = env.draw(action, trial)
        p_dec = simulate_decoder(high, rng, noise_sd)
        reward = compute_reward(p_dec, reward_kind)  # type: ignore[arg-type]
        pe = learner.update(action, reward)
        out.append(SimulatedTrial(trial, action, values, probs, high, p_dec, reward, pe, env.optimal_action(trial)))
    return out


def fraction_optimal(trials: Sequence[SimulatedTrial], first: int = 1, last: int | None = None) -> float:
    """Share of trials in [first, last] (1-based, inclusive) where the optimal option was chosen."""
    sel = [t for t in trials if t.trial >= first and (last is None or t.trial <= last)]
    return sum(t.action == t.optimal_action for t in sel) / len(sel) if sel else float("nan")
