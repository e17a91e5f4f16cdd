"""Co-adaptive agent tuning, offline: how robust is each learner setting across seeds and reversals?

    python benchmarks/agent_tuning.py [--seeds 200] [--top 25] [--quick] [--decoder loop|noisy]

Pure simulation (no scanner, no processes): the `stimulus.agent` learners choose between two
options whose hidden P(high stimulus) differs (METHOD.md §3); a simulated decoder returns P(high)
like the real closed loop does on the virtual participant (≈0.93–1.0 after a high, 0.0–0.3 after a
low stimulus; `--decoder noisy` = 0.8/0.2 ± 0.1, as in tests/test_agent.py; `biased` = 0.99/0.75 ±
0.2, a day-2 decoder that calls most responses "high", as the real loop's seed 3 does). Seeds follow the real
loop (`decnef run --simulate --seed N`): learner seed N, contingency stream default_rng([N, 17]),
so with a near-binary decoder the offline choices are those of the real run.

Two scenarios of 30 trials (the pain_coadaptive protocol), per setting, over `--seeds` seeds:
- stationary: share of seeds with >= 70 % optimal choices in the second half (trials 16–30), the
  acceptance criterion, and the median/mean second-half rate;
- reversal at trial 16: optimal rate in the 8 trials from the reversal (16–23) and in the last 8
  (23–30); share of seeds with >= 75 % (6/8) optimal in the last 8.
Robustness = min(stationary pass share, reversal last-8 pass share). Prints a table (best first),
then the REFERENCE settings (METHOD.md's recommendation, the configs' choice) on both decoders,
then one JSON line per evaluated setting.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from stimulus.agent import QLearner, SimulatedEnvironment, ThompsonLearner, compute_reward  # noqa: E402

N_TRIALS = 30
REVERSAL = 16
DECODERS = {  # name: (mean P(high) after high, after low, noise sd)
    "loop": (0.96, 0.12, 0.08),   # what the real loop's day-1 decoder reads on the virtual participant
    "noisy": (0.8, 0.2, 0.1),     # tests/test_agent.py's simulated decoder
    "biased": (0.99, 0.75, 0.2),  # a day-2 decoder biased toward "high" (real loop, seed 3: 0.65-0.99 after lows)
}


@dataclass(frozen=True)
class Setting:
    learner: str            # "q" | "thompson"
    policy: str = "softmax"  # q only
    learning_rate: float = 0.0
    inverse_temperature: float = 0.0
    epsilon: float = 0.0
    initial_value: float = 0.5
    discount: float = 1.0    # thompson only
    reward: str = "likelihood"
    p_high: tuple[float, float] = (0.8, 0.2)

    def label(self) -> str:
        if self.learner == "thompson":
            core = f"thompson d={self.discount:g}"
        elif self.policy == "softmax":
            core = f"q-softmax η={self.learning_rate:g} β={self.inverse_temperature:g} q0={self.initial_value:g}"
        else:
            core = f"q-egreedy η={self.learning_rate:g} ε={self.epsilon:g} q0={self.initial_value:g}"
        return f"{core} {self.reward[:3]} p={self.p_high[0]:g}/{self.p_high[1]:g}"

    def make(self, seed: int) -> QLearner | ThompsonLearner:
        if self.learner == "thompson":
            t = ThompsonLearner(2, self.discount, seed=seed, n_prob_samples=1)  # estimates unused here
            return t
        return QLearner(2, self.learning_rate, self.policy, self.inverse_temperature, self.epsilon,
                        self.initial_value, seed=seed)


REFERENCES = {
    "method": Setting("q", "softmax", 0.3, 5.0, 0.0, 0.5, 1.0, "likelihood", (0.8, 0.2)),  # the previous config
    "defaults": Setting("q", "softmax", 0.25, 4.0, 0.0, 0.5, 1.0, "likelihood", (0.8, 0.2)),  # AgentConfig()
    "thompson": Setting("thompson", discount=0.9, reward="likelihood", p_high=(0.8, 0.2)),
    "chosen": Setting("q", "softmax", 0.3, 15.0, 0.0, 1.0, 1.0, "likelihood", (0.9, 0.1)),  # pain_coadaptive.toml
    "chosen-0.8/0.2": Setting("q", "softmax", 0.3, 15.0, 0.0, 1.0, 1.0, "likelihood", (0.8, 0.2)),  # AgentConfig()
    "chosen-binary": Setting("q", "softmax", 0.3, 15.0, 0.0, 1.0, 1.0, "binary", (0.9, 0.1)),
}


def run_one(s: Setting, seed: int, reversal: int, decoder: str) -> np.ndarray:
    """1/0 per trial: optimal option chosen."""
    learner = s.make(seed)
    env = SimulatedEnvironment(s.p_high, reversal, seed=np.random.default_rng([seed & 0xFFFFFFFF, 17]))
    dec_rng = np.random.default_rng([seed, 23])
    hi, lo, sd = DECODERS[decoder]
    opt = np.zeros(N_TRIALS, dtype=bool)
    for k in range(1, N_TRIALS + 1):
        action, _ = learner.choose()
        high = env.draw(action, k)
        p = (hi if high else lo) + dec_rng.normal(0.0, sd)
        learner.update(action, compute_reward(min(max(p, 0.0), 1.0), s.reward))  # type: ignore[arg-type]
        opt[k - 1] = action == env.optimal_action(k)
    return opt


def evaluate(s: Setting, seeds: range, decoder: str) -> dict:
    stat = np.array([run_one(s, n, 0, decoder) for n in seeds])
    rev = np.array([run_one(s, n, REVERSAL, decoder) for n in seeds])
    second = stat[:, N_TRIALS // 2:].mean(axis=1)
    after8 = rev[:, REVERSAL - 1: REVERSAL + 7].mean(axis=1)
    last8 = rev[:, N_TRIALS - 8:].mean(axis=1)
    before8 = rev[:, REVERSAL - 9: REVERSAL - 1].mean(axis=1)
    pass_stat = float(np.mean(second >= 0.7 - 1e-9))
    pass_rev = float(np.mean(last8 >= 0.75 - 1e-9))
    return {**asdict(s), "label": s.label(), "decoder": decoder, "n_seeds": len(seeds),
            "stationary_pass": round(pass_stat, 3), "second_half_median": round(float(np.median(second)), 3),
            "second_half_mean": round(float(second.mean()), 3),
            "failing_seeds_first10": [int(n) for n, v in zip(seeds, second, strict=True) if v < 0.7 - 1e-9][:10],
            "rev_before8_mean": round(float(before8.mean()), 3),
            "rev_after8_median": round(float(np.median(after8)), 3), "rev_after8_mean": round(float(after8.mean()), 3),
            "rev_last8_median": round(float(np.median(last8)), 3), "rev_last8_mean": round(float(last8.mean()), 3),
            "rev_last8_pass": round(pass_rev, 3), "robustness": round(min(pass_stat, pass_rev), 3)}


def grid(quick: bool) -> list[Setting]:
    rewards = ["likelihood", "binary"]
    phs = [(0.8, 0.2), (0.9, 0.1)]
    etas = [0.3, 0.5] if quick else [0.2, 0.3, 0.4, 0.5, 0.6, 0.8]
    betas = [5.0, 8.0] if quick else [3.0, 4.0, 5.0, 6.0, 8.0, 10.0, 15.0]
    q0s = [0.5] if quick else [0.0, 0.5, 1.0]
    out = [Setting("q", "softmax", e, b, 0.0, q0, 1.0, r, ph)
           for e, b, q0, r, ph in itertools.product(etas, betas, q0s, rewards, phs)]
    out += [Setting("q", "egreedy", e, 0.0, eps, q0, 1.0, r, ph)
            for e, eps, q0, r, ph in itertools.product(etas, [0.05, 0.1, 0.2], q0s, rewards, phs)]
    out += [Setting("thompson", discount=d, reward=r, p_high=ph)
            for d, r, ph in itertools.product([0.6, 0.7, 0.8, 0.9, 1.0] if not quick else [0.8, 0.9], rewards, phs)]
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, default=200)
    ap.add_argument("--top", type=int, default=25, help="rows of the table (all settings go to JSON)")
    ap.add_argument("--quick", action="store_true", help="a small grid")
    ap.add_argument("--decoder", choices=sorted(DECODERS), default="loop")
    args = ap.parse_args()
    seeds = range(args.seeds)
    t0 = time.perf_counter()
    results = [evaluate(s, seeds, args.decoder) for s in grid(args.quick)]
    references = [evaluate(s, seeds, dec) | {"reference": name} for name, s in REFERENCES.items() for dec in DECODERS]
    elapsed = time.perf_counter() - t0
    results.sort(key=lambda r: (-r["robustness"], -(r["stationary_pass"] + r["rev_last8_pass"]),
                                -r["rev_after8_mean"]))
    print(f"{len(results)} settings x {args.seeds} seeds x 2 scenarios ({args.decoder} decoder) in {elapsed:.0f} s; "
          f"robust = min(P[2nd half >= .7 | stationary], P[last 8 >= .75 | reversal at {REVERSAL}])")
    head = f"{'setting':<60} {'dec':>5} {'robust':>6} {'P2>=.7':>6} {'2nd med':>7} {'2nd avg':>7} " \
           f"{'rev pre8':>8} {'post8 md':>8} {'post8 avg':>9} {'last8 md':>8} {'last8 avg':>9} {'P8>=.75':>7}"
    print(head)
    for r in results[:args.top]:
        _row(r)
    print("reference settings:")
    for r in references:
        _row(r, f"[{r['reference']}] ")
    for r in results + references:
        print(json.dumps(r, ensure_ascii=False))
    return 0


def _row(r: dict, prefix: str = "") -> None:
    print(f"{prefix + r['label']:<60} {r['decoder']:>5} {r['robustness']:>6.3f} {r['stationary_pass']:>6.3f} "
          f"{r['second_half_median']:>7.3f} {r['second_half_mean']:>7.3f} {r['rev_before8_mean']:>8.3f} "
          f"{r['rev_after8_median']:>8.3f} {r['rev_after8_mean']:>9.3f} {r['rev_last8_median']:>8.3f} "
          f"{r['rev_last8_mean']:>9.3f} {r['rev_last8_pass']:>7.3f}")


if __name__ == "__main__":
    sys.exit(main())
