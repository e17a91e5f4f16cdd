"""Learners of the co-adaptive agent (METHOD.md §3, E17–E19).

Each trial the agent chooses one of `n_options` stimulus options; the reward is computed from
the decoded state of the brain response to the previous stimulus (E17):
r = 1 − P̂(high) ("likelihood") or r = 1 if decoded low else 0 ("binary").

- `QLearner`: Rescorla–Wagner / Q update (E18) Q(a) ← Q(a) + η (r − Q(a)); policy softmax
  (E19) P(a) ∝ exp(β Q(a)) or ε-greedy.
- `ThompsonLearner`: Beta posterior per option on "reward" (fractional rewards update α by r
  and β by 1 − r), sampled each trial; a discount < 1 forgets old evidence so that the agent
  re-adapts after a reversal.

All randomness comes from a seeded numpy Generator; same seed, same choices.
"""

from __future__ import annotations

import math
from typing import Any, Literal, Protocol

import numpy as np


def compute_reward(p_high: float, kind: Literal["likelihood", "binary"] = "likelihood") -> float:
    """E17: reward from the decoder's P(high) of the last stimulus's brain response."""
    if not math.isfinite(p_high):
        raise ValueError(f"P(high) must be finite, got {p_high!r}")
    p = min(max(float(p_high), 0.0), 1.0)
    if kind == "likelihood":
        return 1.0 - p
    if kind == "binary":
        return 1.0 if p < 0.5 else 0.0
    raise ValueError(f"reward kind must be 'likelihood' or 'binary', got {kind!r}")


class Learner(Protocol):
    n_options: int

    @property
    def values(self) -> np.ndarray: ...

    def choose(self) -> tuple[int, np.ndarray]: ...

    def update(self, action: int, reward: float) -> float: ...


def softmax(values: np.ndarray, beta: float) -> np.ndarray:
    z = beta * (values - values.max())
    e = np.exp(z)
    return e / e.sum()


class QLearner:
    """Rescorla–Wagner values with softmax or ε-greedy choice."""

    def __init__(self, n_options: int, learning_rate: float = 0.25, policy: str = "softmax",
                 inverse_temperature: float = 4.0, epsilon: float = 0.1, initial_value: float = 0.5,
                 seed: int | np.random.Generator | None = 0):
        if n_options < 2:
            raise ValueError("need at least 2 options")
        if not 0 < learning_rate <= 1:
            raise ValueError(f"learning rate must be in (0, 1], got {learning_rate}")
        if policy not in ("softmax", "egreedy"):
            raise ValueError(f"policy must be softmax or egreedy, got {policy!r}")
        self.n_options = n_options
        self.learning_rate = learning_rate
        self.policy = policy
        self.beta = inverse_temperature
        self.epsilon = epsilon
        self.rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
        self._q = np.full(n_options, float(initial_value))

    @property
    def values(self) -> np.ndarray:
        return self._q.copy()

    def probabilities(self) -> np.ndarray:
        if self.policy == "softmax":
            return softmax(self._q, self.beta)
        best = np.flatnonzero(self._q == self._q.max())
        p = np.full(self.n_options, self.epsilon / self.n_options)
        p[best] += (1.0 - self.epsilon) / len(best)
        return p

    def choose(self) -> tuple[int, np.ndarray]:
        p = self.probabilities()
        return int(self.rng.choice(self.n_options, p=p)), p

    def update(self, action: int, reward: float) -> float:
        """E18; returns the prediction error r − Q(a)."""
        _check(action, reward, self.n_options)
        pe = float(reward) - self._q[action]
        self._q[action] += self.learning_rate * pe
        return float(pe)


class ThompsonLearner:
    """Beta–Bernoulli Thompson sampling with optional forgetting (discount)."""

    def __init__(self, n_options: int, discount: float = 0.9, prior_alpha: float = 1.0,
                 prior_beta: float = 1.0, seed: int | np.random.Generator | None = 0,
                 n_prob_samples: int = 2000):
        if n_options < 2:
            raise ValueError("need at least 2 options")
        if not 0 < discount <= 1:
            raise ValueError(f"discount must be in (0, 1], got {discount}")
        self.n_options = n_options
        self.discount = discount
        self.prior = np.array([prior_alpha, prior_beta], dtype=float)
        self.alpha = np.full(n_options, float(prior_alpha))
        self.beta = np.full(n_options, float(prior_beta))
        base = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
        # Separate streams: estimating choice probabilities must not change the choices.
        self.rng, self._prob_rng = base.spawn(2)
        self.n_prob_samples = n_prob_samples

    @property
    def values(self) -> np.ndarray:
        """Posterior mean reward per option."""
        return self.alpha / (self.alpha + self.beta)

    def probabilities(self) -> np.ndarray:
        """P(option is the argmax of a posterior draw), by Monte Carlo."""
        draws = self._prob_rng.beta(self.alpha, self.beta, size=(self.n_prob_samples, self.n_options))
        counts = np.bincount(draws.argmax(axis=1), minlength=self.n_options)
        return counts / counts.sum()

    def choose(self) -> tuple[int, np.ndarray]:
        p = self.probabilities()
        sample = self.rng.beta(self.alpha, self.beta)
        return int(sample.argmax()), p

    def update(self, action: int, reward: float) -> float:
        """Forget (all options, toward the prior), then add the evidence; returns r − mean."""
        _check(action, reward, self.n_options)
        r = min(max(float(reward), 0.0), 1.0)
        pe = r - float(self.values[action])
        self.alpha = self.prior[0] + self.discount * (self.alpha - self.prior[0])
        self.beta = self.prior[1] + self.discount * (self.beta - self.prior[1])
        self.alpha[action] += r
        self.beta[action] += 1.0 - r
        return pe


def _check(action: int, reward: float, n: int) -> None:
    if not 0 <= int(action) < n:
        raise ValueError(f"action {action} outside 0..{n - 1}")
    if not math.isfinite(reward):
        raise ValueError(f"reward must be finite, got {reward!r}")


def make_learner(cfg: Any, seed: int | None = None) -> QLearner | ThompsonLearner:
    """Learner described by an `AgentConfig` (seed overrides cfg.seed)."""
    s = cfg.seed if seed is None else seed
    if cfg.learner == "q":
        return QLearner(cfg.n_options, cfg.learning_rate, cfg.policy, cfg.inverse_temperature,
                        cfg.epsilon, getattr(cfg, "initial_value", 0.5), seed=s)
    if cfg.learner == "thompson":
        return ThompsonLearner(cfg.n_options, getattr(cfg, "thompson_discount", 0.9), seed=s)
    raise ValueError(f"agent.learner: unknown learner {cfg.learner!r}")
