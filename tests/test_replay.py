"""The replay simulator: fault specs, fault plans, and what it really writes (read back with the
DICOM reader), for real DICOM and NIfTI sources."""

from __future__ import annotations

import csv
import hashlib
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from runtime.dicom import parse_file, read_series
from runtime.errors import DicomError, IncompleteFile, UserError
from runtime.messages import volume_payload
from sim_scanner.faults import parse_fault_spec, plan_faults
from sim_scanner.replay import expected_fate, load_dicom_source, load_source, replay


def sha1_of(v) -> str:
    return hashlib.sha1(volume_payload(v).tobytes()).hexdigest()


def test_fault_spec_forms() -> None:
    s = parse_fault_spec("drop=0.05,duplicate=0.05,reorder=0.05,delay=0.05,truncate=0.02,corrupt=0.02,junk=0.1")
    assert s.probabilities["truncate"] == 0.02 and s.probabilities["junk"] == 0.1 and not s.explicit
    s = parse_fault_spec("drop:12,37;delay:5,corrupt=0.1")
    assert s.explicit == {"drop": [12, 37], "delay": [5]} and s.probabilities == {"corrupt": 0.1}
    for bad, why in [("explode=0.1", "unknown fault"), ("drop=2", r"in \[0, 1\]"), ("12,drop:3", "not attached"),
                     ("drop=0.6,delay=0.6", "add up"), ("drop:x", "volume index")]:
        with pytest.raises(UserError, match=why):
            parse_fault_spec(bad)


def test_fault_plan_one_fault_per_volume_and_reproducible() -> None:
    spec = parse_fault_spec("drop=0.1,duplicate=0.1,reorder=0.1,delay=0.1,truncate=0.1,corrupt=0.1,junk=0.2,drop:3")
    idx = list(range(200))
    plan, junk = plan_faults(spec, idx, seed=7)
    assert plan_faults(spec, idx, seed=7) == (plan, junk)
    assert plan_faults(spec, idx, seed=8) != (plan, junk)
    assert plan[3] == "drop"
    kinds = set(plan.values())
    assert {"drop", "duplicate", "reorder", "delay", "truncate", "corrupt", "_reorder_partner"} <= kinds
    for i, f in plan.items():
        if f == "reorder":
            assert plan[i + 1] == "_reorder_partner"
    assert 10 < len(junk) < 80
    assert 0.5 < sum(1 for f in plan.values() if f != "_reorder_partner") / 200 < 0.75


def test_replay_mosaic_with_faults_writes_what_the_log_says(dicom_dir: Path, tmp_path: Path) -> None:
    src = dicom_dir / "siemens_mosaic_prisma_ep2d_asc"
    source = {v.index: v for v in read_series(src)}
    out = tmp_path / "out"
    flog = tmp_path / "faults.tsv"
    spec = parse_fault_spec("drop:1,duplicate:2,truncate:3,corrupt:4,junk:0")
    log = replay(load_source(src), out, tr=0.01, write="chunked", faults=spec, fault_log=flog, seed=3)
    with open(flog, newline="") as fh:
        rows = list(csv.DictReader(fh, delimiter="\t"))
    assert [(r["volume"], r["fault"]) for r in rows] == [("0", "junk"), ("1", "drop"), ("2", "duplicate"),
                                                           ("3", "truncate"), ("4", "corrupt")]
    assert expected_fate(log.rows) == {1: "gap", 2: "duplicate", 3: "gap", 4: "gap"}
    files = {p.name: p for p in out.iterdir()}
    assert len(files) == 7  # volumes 0, 2, dup of 2, 3 (cut short), 4 (garbage), 5 and the junk file; 1 dropped
    junk = files.pop("junk_00000.txt")
    with pytest.raises(DicomError):
        parse_file(junk)
    truncated = out / rows[3]["file"]
    with pytest.raises(IncompleteFile):
        parse_file(truncated)
    corrupt = out / rows[4]["file"]
    with pytest.raises(DicomError) as exc:
        parse_file(corrupt)
    assert not isinstance(exc.value, IncompleteFile)
    dup = parse_file(out / rows[2]["file"])
    assert dup.volume_indices == [2] and dup.sop_uid == parse_file(src / rows[2]["file"][4:]).sop_uid
    readable = read_series(out)
    assert [v.index for v in readable] == [0, 2, 5]
    for v in readable:
        assert sha1_of(v) == sha1_of(source[v.index])  # byte-for-byte copies of the source


def test_replay_perslice_subset_and_reorder_delay_order(studyforrest_dir: Path, tmp_path: Path) -> None:
    source = load_dicom_source(studyforrest_dir / "dicoms")
    assert len(source.volumes) == 156 and all(len(v.files) == 35 for v in source.volumes)
    assert source.tr == pytest.approx(2.0, abs=1e-3)
    out = tmp_path / "out"
    written: list[int] = []
    replay(source, out, tr=0.02, start=10, count=6, write="rename",
           faults=parse_fault_spec("reorder:11,delay:13"), delay_trs=2,
           on_volume=lambda i, paths, t: written.append(i))
    assert written == [10, 12, 11, 14, 15, 13]  # arrival order the streamer will have to fix
    vols = read_series(out)
    assert [v.index for v in vols] == list(range(10, 16)) and vols[0].shape == (80, 80, 35)
    assert not any(p.name.endswith(".part") for p in out.iterdir())


def test_replay_repeat_renumbers_into_a_longer_run(dicom_dir: Path, tmp_path: Path) -> None:
    src = dicom_dir / "siemens_mosaic_prisma_ep2d_asc"
    source = {v.index: sha1_of(v) for v in read_series(src)}
    replay(load_source(src), tmp_path, tr=0.001, repeat=3)
    vols = read_series(tmp_path)
    assert [v.index for v in vols] == list(range(18))
    assert [sha1_of(v) for v in vols] == [source[i % 6] for i in range(18)]
    assert len({v.series_uid for v in vols}) == 1 and vols[0].series_uid != read_series(src)[0].series_uid


def test_replay_repeat_renumbers_enhanced_frames(dicom_dir: Path, tmp_path: Path) -> None:
    # Enhanced files carry the volume index per frame (TemporalPositionIndex): it must move too.
    src = dicom_dir / "siemens_enhanced_xa30_bold"
    source = {v.index: sha1_of(v) for v in read_series(src)}
    replay(load_source(src), tmp_path, tr=0.001, count=3, repeat=2)
    vols = read_series(tmp_path)
    assert [v.index for v in vols] == list(range(6))
    assert [sha1_of(v) for v in vols] == [source[i % 3] for i in range(6)]


def test_replay_nifti_source_as_mosaic_dicom(dicom_dir: Path, tmp_path: Path) -> None:
    from runtime.nifti_io import save_4d

    vols = read_series(dicom_dir / "siemens_mosaic_prisma_ep2d_asc")[:3]
    nii = tmp_path / "run.nii.gz"
    save_4d(vols, nii)
    out = tmp_path / "out"
    r = subprocess.run([sys.executable, "-m", "runtime.cli.main", "replay", str(nii), "--to", str(out), "--tr", "0.01",
                        "--layout", "mosaic", "--quiet"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    back = read_series(out)
    assert [v.index for v in back] == [0, 1, 2]
    for a, b in zip(vols, back, strict=True):
        assert b.shape == a.shape
        assert np.corrcoef(a.data.ravel(), b.data.ravel())[0, 1] > 0.999


def test_replay_cli_rejects_bad_input_in_one_line(tmp_path: Path) -> None:
    r = subprocess.run([sys.executable, "-m", "runtime.cli.main", "replay", str(tmp_path / "nope"), "--to", str(tmp_path)],
                       capture_output=True, text=True)
    assert r.returncode == 2 and "no such file or folder" in r.stderr and "Traceback" not in r.stderr
    r = subprocess.run([sys.executable, "-m", "runtime.cli.main", "replay", str(tmp_path), "--to", str(tmp_path / "o"),
                        "--faults", "explode=1"], capture_output=True, text=True)
    assert r.returncode == 2 and "unknown fault 'explode'" in r.stderr and len(r.stderr.strip().splitlines()) == 1
