"""Session outputs: layout, row-by-row flushing that survives kill -9, spools, provenance."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import tomllib

from runtime.config import config_sha256, parse_config, resolved_toml
from runtime.outputs import (
    RoiSpool,
    RunFiles,
    TsvWriter,
    VolumeSpool,
    read_roi_spool,
    read_tsv,
    run_file,
    session_dir,
    update_provenance,
    write_config_and_provenance,
)


def _cfg(tmp_path: Path, run: int = 1):
    text = f'[session]\nsubject = "07"\nsession = "2"\ntask = "nf"\nrun = {run}\n[output]\nroot = "out"\n'
    return parse_config(text, origin="t.toml", base_dir=str(tmp_path))


def test_layout_is_bids_like_and_relative_to_the_config(tmp_path):
    cfg = _cfg(tmp_path)
    p = run_file(cfg, "events.tsv")
    assert p == tmp_path / "out" / "sub-07" / "ses-2" / "func" / "sub-07_ses-2_task-nf_run-1_events.tsv"
    assert p.parent.is_dir()
    assert run_file(cfg, "agent") == p.with_name("sub-07_ses-2_task-nf_run-1_agent.tsv")
    assert run_file(cfg, "scores.tsv", root=tmp_path / "elsewhere").is_relative_to(tmp_path / "elsewhere")
    files = RunFiles.for_run(cfg)
    assert files.bold.name == "sub-07_ses-2_task-nf_run-1_bold.nii.gz"
    assert files.bold_json.name == "sub-07_ses-2_task-nf_run-1_bold.json"
    assert session_dir(cfg) == tmp_path / "out" / "sub-07" / "ses-2"


def test_tsv_rows_are_visible_before_close_and_na_for_missing(tmp_path):
    w = TsvWriter(tmp_path / "a.tsv", ["volume", "x", "flag", "note"])
    w.write({"volume": 1, "x": 0.5, "flag": True, "note": "a\tb"})
    w.write({"volume": 2, "x": float("nan"), "flag": False})
    rows = read_tsv(tmp_path / "a.tsv")  # another reader, writer still open
    assert rows == [{"volume": "1", "x": "0.5", "flag": "1", "note": "a b"},
                    {"volume": "2", "x": "n/a", "flag": "0", "note": "n/a"}]
    w.close()


def test_tsv_reopen_appends_and_drops_a_cut_line(tmp_path):
    path = tmp_path / "a.tsv"
    w = TsvWriter(path, ["volume", "x"])
    w.write({"volume": 0, "x": 1.0})
    w.close()
    with open(path, "a") as fh:
        fh.write("1\t2.")  # a kill in the middle of a write
    assert len(read_tsv(path)) == 1
    w = TsvWriter(path, ["volume", "x"])
    w.write({"volume": 1, "x": 2.0})
    w.close()
    assert [r["volume"] for r in read_tsv(path)] == ["0", "1"]
    assert path.read_text().count("volume") == 1
    with pytest.raises(ValueError, match="columns"):
        TsvWriter(path, ["volume", "y"])


def test_rows_survive_kill_9(tmp_path):
    """A writer killed with SIGKILL right after writing loses no row (flush per row)."""
    path = tmp_path / "k.tsv"
    code = textwrap.dedent(f"""
        import sys, time
        from runtime.outputs import TsvWriter
        w = TsvWriter({str(path)!r}, ["volume", "x"])
        for i in range(50):
            w.write({{"volume": i, "x": i * 0.5}})
        print("written", flush=True)
        time.sleep(60)
    """)
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "written"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()
    rows = read_tsv(path)
    assert [int(r["volume"]) for r in rows] == list(range(50))


def test_roi_spool_roundtrip_truncation_and_last_record_wins(tmp_path):
    path = tmp_path / "roi.bin"
    s = RoiSpool(path, n_values=5, n_nuisance=2)
    s.append(3, True, np.arange(5.0), np.array([1.0, 2.0]))
    s.append(4, False, np.arange(5.0) + 10, None)
    s.append(3, False, np.arange(5.0) * 2, np.array([3.0, 4.0]))
    s.close()
    with open(path, "ab") as fh:
        fh.write(b"\x00" * 20)  # half a record
    got = read_roi_spool(path)
    assert sorted(got) == [3, 4]
    valid, values, nuis = got[3]
    assert not valid and np.array_equal(values, np.arange(5.0) * 2) and np.array_equal(nuis, [3.0, 4.0])
    assert np.isnan(got[4][2]).all()
    s = RoiSpool(path, n_values=5, n_nuisance=2)  # reopen: truncates the half record, appends
    s.append(5, True, np.ones(5), None)
    s.close()
    assert sorted(read_roi_spool(path)) == [3, 4, 5]
    with pytest.raises(ValueError, match="voxel count"):
        RoiSpool(path, n_values=6, n_nuisance=2)


def test_volume_spool_is_atomic(tmp_path):
    sp = VolumeSpool(tmp_path / "v")
    data = np.random.default_rng(0).normal(size=(4, 5, 6)).astype(np.float32)
    sp.put(2, data, {"affine": np.eye(4).ravel().tolist(), "tr": np.float64(2.0)})
    (tmp_path / "v" / "vol-00003.tmp").write_bytes(b"partial")  # killed mid-write
    assert sp.indices() == [2]
    got, meta = sp.get(2)
    assert np.array_equal(got, data) and meta["tr"] == 2.0


def test_config_and_provenance(tmp_path):
    cfg = _cfg(tmp_path)
    entry = write_config_and_provenance(cfg, bundle_path=tmp_path / "b.npz", bundle_sha256="ab" * 32)
    sdir = session_dir(cfg)
    text = (sdir / "sub-07_ses-2_config.toml").read_text()
    assert text == resolved_toml(cfg)
    assert tomllib.loads(text)["session"]["subject"] == "07"
    assert run_file(cfg, "config.toml").read_text() == text
    prov = json.loads((sdir / "sub-07_ses-2_provenance.json").read_text())
    assert prov["config_sha256"] == config_sha256(cfg) == entry["config_sha256"]
    assert prov["decoder_sha256"] == "ab" * 32
    assert {"numpy", "numba", "pyzmq"} <= set(prov["runs"][0]["packages"])
    update_provenance(cfg, None, finished="now", volumes=3)
    cfg2 = _cfg(tmp_path, run=2)
    write_config_and_provenance(cfg2)
    prov = json.loads((sdir / "sub-07_ses-2_provenance.json").read_text())
    assert [r["run"] for r in prov["runs"]] == [1, 2]
    assert prov["runs"][0]["finished"] == "now" and prov["runs"][0]["volumes"] == 3
    blob = json.dumps(prov).lower()
    for word in ("patientname", "patientid", "birth"):
        assert word not in blob
