"""The whole co-adaptive pain loop, headless, as a user runs it:

    decnef run configs/pain_coadaptive.toml --simulate --seed 0 --output DIR

day 1 (sham run → decnef train → bundle), then day 2: virtual participant → DICOM → streamer →
engine → decoder → agent → emulated TCS II (pty) → virtual participant, every role its own
process under the supervisor, on the config's scaled clock (emulated devices only)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from runtime.config import load_config
from runtime.outputs import read_tsv, run_file
from runtime.protocol import build_table
from stimulus.agent import compute_reward

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "configs" / "pain_coadaptive.toml"
SEED = 0


@pytest.fixture(scope="module")
def session(tmp_path_factory):
    out = tmp_path_factory.mktemp("pain_loop")
    proc = subprocess.run([sys.executable, "-m", "runtime.cli.main", "run", str(CONFIG), "--simulate", "--seed", str(SEED),
                           "--output", str(out), "--free-ports", "--timeout", "600"],
                          capture_output=True, text=True, timeout=900, cwd=REPO)
    cfg = load_config(CONFIG)
    return proc, out, cfg


@pytest.mark.slow
def test_run_finishes_and_every_trial_is_logged(session):
    proc, out, cfg = session
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert "participant: day-1 decoder" in proc.stdout
    rows = read_tsv(run_file(cfg, "agent.tsv", out))
    assert [int(r["trial"]) for r in rows] == list(range(1, cfg.protocol.n_trials + 1))
    scores = read_tsv(run_file(cfg, "scores.tsv", out))
    assert len(scores) == cfg.protocol.n_trials
    assert sum(r["device_ack"].startswith("ok tcs2") for r in rows) >= cfg.protocol.n_trials - 1
    assert "WATCHDOG" not in proc.stdout


@pytest.mark.slow
def test_agent_learns_the_less_painful_option(session):
    proc, out, cfg = session
    rows = read_tsv(run_file(cfg, "agent.tsv", out))
    second = [r for r in rows if int(r["trial"]) > cfg.protocol.n_trials // 2]
    rate = sum(r["action"] == r["optimal_action"] for r in second) / len(second)
    assert rate >= 0.7, f"optimal choices in the second half: {rate:.2f}"
    # the decoder really read the participant: decoded P(high) (scores.tsv likelihood; the reward may
    # be its binary threshold, E17) is higher after high stimuli
    lik = {int(r["trial"]): float(r["likelihood"]) for r in read_tsv(run_file(cfg, "scores.tsv", out))
           if r["likelihood"] not in ("", "n/a")}
    level = {int(r["trial"]): float(r["stimulus_level"]) for r in rows if r["stimulus_level"] not in ("", "n/a")}
    hi = [p for k, p in lik.items() if level.get(k) == cfg.stimulator.high_c]
    lo = [p for k, p in lik.items() if level.get(k) == cfg.stimulator.low_c]
    assert hi and lo and sum(hi) / len(hi) > sum(lo) / len(lo) + 0.2
    # the agent's reward is E17 of that P(high)
    for r in rows:
        if r["reward"] not in ("", "n/a") and int(r["trial"]) in lik:
            expected = compute_reward(lik[int(r["trial"])], cfg.agent.reward)
            assert float(r["reward"]) == pytest.approx(expected, abs=1e-3)


@pytest.mark.slow
def test_no_command_outside_the_safety_limits(session):
    proc, out, cfg = session
    st = cfg.stimulator
    dev = read_tsv(run_file(cfg, "device.tsv", out))
    commands = [r for r in dev if r["event"] == "command"]
    assert len(commands) >= cfg.protocol.n_trials - 1
    assert not [r for r in dev if r["event"] in ("refused", "device_error", "interrupted")]
    for r in commands:
        assert float(r["level_c"]) in (st.high_c, st.low_c) and float(r["level_c"]) <= st.max_temperature_c
        assert float(r["duration_s"]) <= st.plateau_s
    # what reached the (emulated) thermode: ceiling set first, every field well-formed and in range
    part = json.loads(run_file(cfg, "participant.json", out).read_text())
    sent = part["thermode_commands"]
    assert part["malformed_commands"] == []
    assert sent[:3] == ["F", f"Om{int(st.max_temperature_c * 10)}", f"N{int(st.baseline_c * 10)}"]
    temps = [int(c[2:]) for c in sent if c.startswith("C")]
    assert temps and set(temps) <= {int(st.high_c * 10), int(st.low_c * 10)}
    durations = [int(c[2:]) for c in sent if c.startswith("D")]
    assert max(durations) <= (st.plateau_s + (st.high_c - st.baseline_c) / st.rise_rate_c_s) * 1000
    assert part["max_peak_c"] <= st.max_temperature_c
    # onsets (in the participant's scan time) never closer than the minimum ISI
    stim = read_tsv(run_file(cfg, "participant.tsv", out))
    onsets = [float(r["onset"]) for r in stim]
    assert all(b - a >= st.min_isi_s for a, b in zip(onsets, onsets[1:], strict=False))
    table = build_table(cfg.protocol)
    assert len(onsets) == len(commands) and onsets[0] >= table.trials[0].induction.start * cfg.protocol.tr
