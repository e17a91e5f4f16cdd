"""`*_agent.tsv` writer: one row per trial, flushed as it is written (a crash loses nothing).

Columns: trial, action, value_0.., prob_0.., reward, prediction_error, stimulus_level,
device_ack, optimal_action. `value_k` are the values the choice was made from (before this
trial's update), so that prediction_error = reward − value_{action}. `optimal_action` is empty
with a real participant (it is only known in simulation); so are reward/prediction_error on a
trial whose score never arrived.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path


def agent_columns(n_options: int) -> list[str]:
    return (["trial", "action"] + [f"value_{k}" for k in range(n_options)]
            + [f"prob_{k}" for k in range(n_options)]
            + ["reward", "prediction_error", "stimulus_level", "device_ack", "optimal_action"])


def _fmt(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return "" if math.isnan(value) else f"{value:.6g}"
    return str(value).replace("\t", " ").replace("\n", " ")


class AgentLog:
    def __init__(self, path: str | Path, n_options: int):
        self.path = Path(path)
        self.n_options = n_options
        self.columns = agent_columns(n_options)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fh = open(self.path, "w", encoding="utf-8")  # noqa: SIM115 - open for the run
        self._fh.write("\t".join(self.columns) + "\n")
        self._fh.flush()

    def write(self, trial: int, action: int, values: Sequence[float], probabilities: Sequence[float],
              reward: float | None, prediction_error: float | None, stimulus_level: float | None,
              device_ack: str = "", optimal_action: int | None = None) -> None:
        if len(values) != self.n_options or len(probabilities) != self.n_options:
            raise ValueError(f"expected {self.n_options} values and probabilities")
        row = ([trial, action] + [float(v) for v in values] + [float(p) for p in probabilities]
               + [reward, prediction_error, stimulus_level, device_ack, optimal_action])
        self._fh.write("\t".join(_fmt(v) for v in row) + "\n")
        self._fh.flush()

    def close(self) -> None:
        if not self._fh.closed:
            self._fh.close()

    def __enter__(self) -> AgentLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
