"""Config decoding: typed structs, unknown keys rejected, one-line errors naming key and value."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from runtime.config import SessionConfig, config_sha256, load_config, parse_config, resolved_toml
from runtime.errors import ConfigError
from runtime.protocol import build_table

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize(
    "text, expected",
    [
        ("[protocol]\ntr = 'fast'\n", "key 'protocol.tr': got 'fast'; expected `float`"),
        ("[protocol]\ntrr = 2\n", "unknown key 'protocol.trr'"),
        ("[protocol]\ntr = -1.0\n", "key 'protocol.tr': got -1.0; expected `float` > 0.0"),
        ("[protocol.trial]\nrest_scans = -1\n", "key 'protocol.trial.rest_scans': got -1"),
        ("[nonsense]\n", "unknown key 'nonsense'"),
        ("[agent]\np_high = [0.5]\n", "key 'agent.p_high'"),
        ("[decoder]\nsham = 'yoked'\n", "key 'decoder.yoked_scores'"),
        ("a = [", "not valid TOML"),
    ],
)
def test_bad_values_give_one_line_naming_key(text: str, expected: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_config(text, origin="s.toml")
    msg = str(err.value)
    assert msg.startswith("s.toml: ")
    assert expected in msg
    assert "\n" not in msg


def test_resolved_config_round_trips_and_hash_is_stable() -> None:
    cfg = parse_config("[protocol]\ntr = 1.5\nn_trials = 4\n")
    text = resolved_toml(cfg)
    again = parse_config(text)
    assert again == cfg
    assert config_sha256(again) == config_sha256(cfg)
    assert config_sha256(cfg) != config_sha256(SessionConfig())


def test_every_shipped_config_is_valid() -> None:
    configs = sorted((REPO / "configs").glob("*.toml"))
    assert configs, "configs/ must hold at least the commented example"
    for path in configs:
        cfg = load_config(path)
        build_table(cfg.protocol, origin=str(path))


def test_missing_config_file_is_one_line() -> None:
    with pytest.raises(ConfigError, match="config file not found"):
        load_config("/nonexistent/session.toml")


def test_relative_paths_resolve_against_config_folder(tmp_path: Path) -> None:
    cfg_file = tmp_path / "s.toml"
    cfg_file.write_text("[decoder]\nbundle = 'dec.npz'\n")
    cfg = load_config(cfg_file)
    assert cfg.path(cfg.decoder.bundle) == tmp_path / "dec.npz"


def test_cli_reports_bad_argument_without_traceback(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[protocol]\ntr = 'x'\n")
    proc = subprocess.run([sys.executable, "-m", "runtime.cli.main", "nonsense"], capture_output=True, text=True)
    assert proc.returncode == 2
    assert "unknown command 'nonsense'" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_protocol_window_follows_atr_layout() -> None:
    # ATR example: induction scans 70-80, window shifted +2 / +1 -> 72-81.
    cfg = parse_config(
        "[protocol]\ndiscard_scans = 0\nbaseline_scans = 10\nn_trials = 1\ntrial_onsets = [70]\n"
        "window_start = 2\nwindow_end = 1\n[protocol.trial]\ninduction_scans = 11\ndelay_scans = 2\n"
    )
    table = build_table(cfg.protocol)
    (trial,) = table.trials
    assert list(trial.induction) == list(range(70, 81))
    assert (trial.window.start, trial.window.stop - 1) == (72, 81)
    assert trial.calc_scan == 83
    assert table.condition(69) == "rest" and table.condition(5) == "baseline"


def test_protocol_rejects_window_after_score_scan() -> None:
    cfg = parse_config("[protocol]\nwindow_end = 5\n[protocol.trial]\ndelay_scans = 1\n")
    with pytest.raises(ConfigError, match="window_end"):
        build_table(cfg.protocol)
