"""Co-adaptive agent: learner maths (E17–E19), learning in the simulated loop, the agent log."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest

from runtime.config import AgentConfig, load_config, parse_config
from stimulus.agent import (
    AgentLog,
    QLearner,
    SimulatedEnvironment,
    ThompsonLearner,
    agent_columns,
    compute_reward,
    fraction_optimal,
    make_learner,
    simulate_run,
)

N_SEEDS = 100


def test_reward_e17():
    assert compute_reward(0.8) == pytest.approx(0.2)
    assert compute_reward(0.2, "likelihood") == pytest.approx(0.8)
    assert compute_reward(0.3, "binary") == 1.0
    assert compute_reward(0.7, "binary") == 0.0
    assert compute_reward(1.7) == 0.0  # clipped probability
    with pytest.raises(ValueError):
        compute_reward(float("nan"))


def test_q_update_e18_and_softmax_e19():
    q = QLearner(2, learning_rate=0.25, inverse_temperature=4.0, initial_value=0.5, seed=1)
    pe = q.update(0, 1.0)
    assert pe == pytest.approx(0.5)
    assert q.values == pytest.approx([0.625, 0.5])
    pe = q.update(0, 0.0)
    assert pe == pytest.approx(-0.625)
    assert q.values[0] == pytest.approx(0.625 - 0.25 * 0.625)
    p = q.probabilities()
    expected = np.exp(4 * q.values) / np.exp(4 * q.values).sum()
    assert p == pytest.approx(expected)
    with pytest.raises(ValueError):
        q.update(2, 0.5)


def test_egreedy_probabilities():
    q = QLearner(3, policy="egreedy", epsilon=0.3, seed=0)
    q.update(1, 1.0)
    assert q.probabilities() == pytest.approx([0.1, 0.8, 0.1])


def test_thompson_update_and_probabilities():
    t = ThompsonLearner(2, discount=1.0, seed=3)
    for _ in range(20):
        t.update(1, 1.0)
        t.update(0, 0.0)
    assert t.values[1] > 0.9 and t.values[0] < 0.1
    _, p = t.choose()
    assert p.sum() == pytest.approx(1.0)
    assert p[1] > 0.99


def test_same_seed_same_choices_and_probability_estimates_do_not_change_choices():
    def actions(seed):
        learner = ThompsonLearner(2, seed=seed)
        env = SimulatedEnvironment([0.8, 0.2], seed=seed)
        return [t.action for t in simulate_run(learner, env, 30, 0.1, seed=seed)]

    assert actions(5) == actions(5)
    assert actions(5) != actions(6)
    a = ThompsonLearner(2, seed=9, n_prob_samples=10)
    b = ThompsonLearner(2, seed=9, n_prob_samples=5000)
    assert [a.choose()[0] for _ in range(50)] == [b.choose()[0] for _ in range(50)]


def _second_half(learner_cfg: AgentConfig, seed: int, noise: float) -> float:
    learner = make_learner(learner_cfg, seed=seed)
    env = SimulatedEnvironment([0.8, 0.2], seed=seed + 10_000)
    trials = simulate_run(learner, env, 30, noise_sd=noise, seed=seed + 20_000)
    return fraction_optimal(trials, 16, 30)


@pytest.mark.parametrize("learner", ["q", "thompson"])
def test_agent_learns_less_painful_option_fixed_seed(learner):
    cfg = AgentConfig(learner=learner)
    assert _second_half(cfg, seed=0, noise=0.0) >= 0.7


@pytest.mark.parametrize("learner", ["q", "thompson"])
@pytest.mark.parametrize("noise", [0.0, 0.1])
def test_agent_learns_on_average_over_seeds(learner, noise):
    cfg = AgentConfig(learner=learner)
    mean = np.mean([_second_half(cfg, s, noise) for s in range(N_SEEDS)])
    assert mean >= 0.7


def test_non_learning_agent_fails_the_same_criterion():
    """The criterion can fail: an agent that ignores its values (β = 0) stays at chance."""
    cfg = AgentConfig(learner="q", inverse_temperature=0.0)
    mean = np.mean([_second_half(cfg, s, 0.1) for s in range(N_SEEDS)])
    assert 0.35 < mean < 0.65


@pytest.mark.parametrize("learner", ["q", "thompson"])
def test_agent_readapts_after_reversal(learner):
    cfg = AgentConfig(learner=learner)
    just_after, late = [], []
    for s in range(N_SEEDS):
        env = SimulatedEnvironment([0.8, 0.2], reversal_trial=21, seed=s + 10_000)
        assert env.optimal_action(20) == 1 and env.optimal_action(21) == 0
        trials = simulate_run(make_learner(cfg, seed=s), env, 45, noise_sd=0.1, seed=s + 20_000)
        just_after.append(fraction_optimal(trials, 21, 25))
        late.append(fraction_optimal(trials, 36, 45))
    assert np.mean(late) >= 0.65
    assert np.mean(late) > np.mean(just_after) + 0.15


def test_pain_config_agent_is_robust_across_seeds_and_re_adapts_after_a_reversal():
    """configs/pain_coadaptive.toml's agent (tuned by benchmarks/agent_tuning.py): on 30-trial runs,
    nearly every seed reaches >= 70 % optimal in the second half, and after a reversal at trial 16
    nearly every seed is back to >= 6/8 optimal in the last 8 trials; the METHOD.md-centre setting
    it replaced does measurably worse on the same seeds (so the criterion can fail)."""
    pain = load_config(Path(__file__).resolve().parents[1] / "configs" / "pain_coadaptive.toml").agent

    def rates(cfg: AgentConfig, p_high) -> tuple[float, float]:
        stat, rev = [], []
        for s in range(N_SEEDS):
            env = SimulatedEnvironment(p_high, seed=s + 10_000)
            stat.append(fraction_optimal(simulate_run(make_learner(cfg, seed=s), env, 30, 0.1, cfg.reward, s), 16, 30))
            env = SimulatedEnvironment(p_high, reversal_trial=16, seed=s + 10_000)
            rev.append(fraction_optimal(simulate_run(make_learner(cfg, seed=s), env, 30, 0.1, cfg.reward, s), 23, 30))
        return float(np.mean(np.array(stat) >= 0.7)), float(np.mean(np.array(rev) >= 0.75))

    stationary, reversal = rates(pain, pain.p_high)
    assert stationary >= 0.97 and reversal >= 0.93, (stationary, reversal)
    old = AgentConfig(learning_rate=0.3, inverse_temperature=5.0, initial_value=0.5, reward="likelihood")
    old_stationary, old_reversal = rates(old, [0.8, 0.2])
    assert old_stationary < stationary and old_reversal < reversal - 0.1


def test_environment_draws_follow_hidden_probabilities():
    env = SimulatedEnvironment([0.8, 0.2], seed=4)
    highs = [env.draw(0, t) for t in range(1, 2001)]
    assert np.mean(highs) == pytest.approx(0.8, abs=0.03)
    with pytest.raises(ValueError):
        SimulatedEnvironment([1.5, 0.2])


def test_make_learner_from_toml_config():
    cfg = parse_config('[agent]\nlearner = "thompson"\nthompson_discount = 0.8\nseed = 7\n')
    learner = make_learner(cfg.agent)
    assert isinstance(learner, ThompsonLearner) and learner.discount == 0.8
    q = make_learner(parse_config('[agent]\npolicy = "egreedy"\nepsilon = 0.2\n').agent)
    assert isinstance(q, QLearner) and q.policy == "egreedy" and q.epsilon == 0.2


def test_agent_log_rows_flushed_and_consistent(tmp_path):
    path = tmp_path / "sub-01_task-pain_run-1_agent.tsv"
    learner = QLearner(2, seed=0)
    env = SimulatedEnvironment([0.8, 0.2], seed=0)
    log = AgentLog(path, 2)
    trials = simulate_run(learner, env, 5, seed=0)
    for t in trials:
        log.write(t.trial, t.action, t.values, t.probabilities, t.reward, t.prediction_error,
                  46.0 if t.high else 40.0, "ok simulated", t.optimal_action)
    log.write(6, 1, [0.5, 0.5], [0.5, 0.5], None, None, 40.0, "", None)  # real participant row
    # Read while still open: rows must already be on disk.
    rows = list(csv.DictReader(path.open(), delimiter="\t"))
    assert list(rows[0]) == agent_columns(2)
    assert len(rows) == 6
    for row, t in zip(rows, trials, strict=False):
        a = int(row["action"])
        assert float(row["prediction_error"]) == pytest.approx(float(row["reward"]) - float(row[f"value_{a}"]), abs=1e-5)
        assert float(row["prob_0"]) + float(row["prob_1"]) == pytest.approx(1.0, abs=1e-5)
        assert int(row["optimal_action"]) == t.optimal_action
    assert rows[-1]["optimal_action"] == "" and rows[-1]["reward"] == ""
    log.close()
