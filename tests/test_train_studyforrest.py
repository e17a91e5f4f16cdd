"""Real data: a stimulation-vs-rest decoder from the first half of the studyforrest run.

`decnef train` (configs/studyforrest_train.toml) trains on the first half; the saved bundle must
predict the held-out second half, checked three ways: the training report, the engine core fed
the volumes one by one (one trial per second-half volume), and the complete online pipeline
(`decnef run configs/studyforrest_replay.toml --simulate <dicoms>`: replay -> stream -> engine as
processes) whose scores.tsv must rank the second half's stimulation blocks above its rest blocks.
The 5,460 DICOM files are read once per module (~14 s).
"""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import msgspec
import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

REPO = Path(__file__).resolve().parents[1]
TRAIN_CFG = REPO / "configs" / "studyforrest_train.toml"
REPLAY_CFG = REPO / "configs" / "studyforrest_replay.toml"


@pytest.fixture(scope="module")
def forrest(studyforrest_dir, tmp_path_factory):
    from runtime.config import load_config
    from runtime.dicom import read_series
    from runtime.train import train

    cfg = load_config(TRAIN_CFG)
    src = cfg.path(cfg.train.runs[0].source)
    assert src.resolve() == (studyforrest_dir / "dicoms").resolve()  # the config points at the shared data
    vols = read_series(src)
    # fewer permutations than the config's 20 to keep the module fast; the figure is in the report
    cfg = msgspec.structs.replace(cfg, train=msgspec.structs.replace(cfg.train, n_permutations=3))
    out = tmp_path_factory.mktemp("forrest")
    lines: list[str] = []
    res = train(cfg, out / "stim_vs_rest.npz", log=lines.append, preloaded={src: vols})
    return cfg, vols, res, out, lines


def test_heldout_half_in_report(forrest):
    _, _, res, _, lines = forrest
    rep = res.report
    assert rep["split"] == "halves"
    assert rep["heldout"]["auc"] >= 0.9, rep["heldout"]
    assert rep["heldout"]["accuracy"] >= 0.8
    assert rep["n_mask_voxels"] > 20000 and rep["n_bundle_voxels"] == 1000
    assert 1 <= rep["n_selected_voxels"] <= 1000
    assert rep["runs"][0]["baseline"] == [0, 5]  # the six scans before the first block at 12 s
    assert any("156 volumes" in ln for ln in lines)


def _events(studyforrest_dir: Path):
    rows = list(csv.DictReader((studyforrest_dir / "events.tsv").open(), delimiter="\t"))
    return [(float(r["onset"]), float(r["duration"])) for r in rows]


def test_bundle_predicts_second_half_volumes_online(forrest, studyforrest_dir):
    """The saved bundle, through the engine core, one trial per second-half volume."""
    from decoders.bundle import load_bundle
    from runtime.config import DecoderConfig
    from runtime.engine.core import EngineCore
    from runtime.engine.scoring import Scorer
    from runtime.protocol import ProtocolTable, ScanRow, Trial

    cfg, vols, res, _, _ = forrest
    bundle = load_bundle(res.bundle_path)
    ev = _events(studyforrest_dir)
    stim = np.zeros(156, bool)
    for on, du in ev:  # label = stimulus on 4 s (2 scans) before the scan
        stim[int(round(on / 2.0)) + 2: int(round((on + du) / 2.0)) + 2 + 1] = True
    scans = list(range(78, 156))
    trials = tuple(Trial(k + 1, "stim" if stim[s] else "rest", range(s, s + 1), range(s, s + 1), s, range(s + 1, s + 1))
                   for k, s in enumerate(scans))
    table = ProtocolTable(rows=tuple(ScanRow(i, "rest", 0) for i in range(156)), trials=trials, baseline=range(0, 6), tr=2.0)
    core = EngineCore(cfg, bundle, table=table, scorer=Scorer(DecoderConfig(target_class="stim")))
    lik = {}
    for v in vols:
        for r in core.process(v):
            for sc in r.scores:
                lik[sc.trial.calc_scan] = sc.header.likelihood
    y = [stim[s] for s in scans]
    auc = roc_auc_score(y, [lik[s] for s in scans])
    assert auc >= 0.9, auc


def test_replay_pipeline_scores_stim_above_rest(forrest, studyforrest_dir, tmp_path):
    """`decnef run` with the replay config: real processes, real files, scores.tsv."""
    _, _, res, _, _ = forrest
    text = REPLAY_CFG.read_text()
    text = text.replace('bundle = "../derivatives/studyforrest/stim_vs_rest.npz"', f'bundle = "{res.bundle_path}"')
    assert str(res.bundle_path) in text
    cfg = tmp_path / "replay.toml"
    cfg.write_text(text)
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "runtime.cli.main", "run", str(cfg), "--simulate", str(studyforrest_dir / "dicoms"),
           "--speed", "20", "--output", str(out), "--free-ports", "--timeout", "400"]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=500)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    scores = next(out.rglob("*_scores.tsv"))
    rows = list(csv.DictReader(scores.open(), delimiter="\t"))
    assert [int(r["trial"]) for r in rows] == list(range(1, 25))
    assert all(r["n_valid_scans"] == "3" for r in rows)
    second = [r for r in rows if int(r["trial"]) >= 13]  # calc scans 85..150: the held-out half
    y = [r["label"] == "stim" for r in second]
    auc_score = roc_auc_score(y, [float(r["score"]) for r in second])
    auc_lik = roc_auc_score(y, [float(r["likelihood"]) for r in second])
    assert auc_score >= 0.9 and auc_lik >= 0.9, (auc_score, auc_lik)
    assert "run end" in p.stdout and "supervisor: engine finished" in p.stdout
