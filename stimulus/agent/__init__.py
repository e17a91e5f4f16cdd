"""Co-adaptive agent: learners, simulated environment, per-trial log (METHOD.md §3)."""

from stimulus.agent.environment import (
    SimulatedEnvironment,
    fraction_optimal,
    simulate_decoder,
    simulate_run,
)
from stimulus.agent.learners import QLearner, ThompsonLearner, compute_reward, make_learner
from stimulus.agent.log import AgentLog, agent_columns

__all__ = [
    "AgentLog", "QLearner", "SimulatedEnvironment", "ThompsonLearner", "agent_columns",
    "compute_reward", "fraction_optimal", "make_learner", "simulate_decoder", "simulate_run",
]
