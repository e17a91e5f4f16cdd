"""`decnef demo` as a user runs it: a subprocess on a fresh output folder, no shared data.

It must finish, score every trial, and its scores must track the hidden state the simulated
participant was in (AUC >= 0.8 over the 12 trials), and it must print the latency summary."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import numpy as np
from sklearn.metrics import roc_auc_score


def test_demo_end_to_end(tmp_path):
    env_out = tmp_path / "demo"
    p = subprocess.run([sys.executable, "-m", "runtime.cli.main", "demo", "--output", str(env_out), "--no-display"],
                       capture_output=True, text=True, timeout=600)
    out = p.stdout
    assert p.returncode == 0, out[-4000:] + p.stderr[-2000:]
    # the printed summary
    m = re.search(r"scores vs hidden state: AUC ([0-9.]+), point-biserial r ([-0-9.]+) \((\d+)/(\d+) trials scored", out)
    assert m, out[-3000:]
    assert float(m.group(1)) >= 0.8 and m.group(3) == m.group(4) == "12"
    assert re.search(r"latency file complete -> score published: median [0-9.]+ ms, p99 [0-9.]+ ms", out)
    assert "received -> processed (engine)" in out and "stage realign_ms" in out
    assert "display: skipped (--no-display)" in out
    # and the files behind it agree: scores.tsv vs the phantom's hidden states
    truth = json.loads((env_out / "nf_truth.json").read_text())["trials"]
    scores = next(env_out.rglob("*_scores.tsv")).read_text().splitlines()
    head = scores[0].split("\t")
    rows = [dict(zip(head, ln.split("\t"), strict=True)) for ln in scores[1:]]
    lik = {int(r["trial"]): float(r["likelihood"]) for r in rows}
    states = np.array([t["state"] for t in truth])
    auc = roc_auc_score(states, [lik[t["trial"]] for t in truth])
    assert auc >= 0.8
    report = json.loads((env_out / "decoder" / "report.json").read_text())
    assert report["cv_auc"] >= 0.8


def test_builtin_demo_config_equals_configs_demo_toml():
    """A pip install without configs/ runs the built-in copy; it must be the same session."""
    from runtime.cli.cmd_demo import _BUILTIN, DEFAULT_CONFIG
    from runtime.config import load_config, parse_config, resolved_toml

    assert resolved_toml(parse_config(_BUILTIN)) == resolved_toml(load_config(DEFAULT_CONFIG))
