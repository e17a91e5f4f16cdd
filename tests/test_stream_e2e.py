"""End to end with real processes: `decnef replay` (with every fault type) writes real scanner
DICOM into a folder, `decnef stream` watches it and publishes, `decnef listen` records what it
receives — with the listener and the streamer killed (SIGKILL) and restarted mid-run.

The final RECEIVED.tsv must hold every published volume exactly once, in temporal order, with
the sha1 of the same volume read offline from the source by `read_series`; lost volumes
(dropped / truncated / corrupt) are reported as gaps, duplicates are not republished.
"""

from __future__ import annotations

import csv
import hashlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from runtime.dicom import read_series
from runtime.messages import EventHeader, VolumeHeader, decode_header, volume_payload
from runtime.transport import Journal, journal_path
from sim_scanner.replay import load_dicom_source

pytestmark = pytest.mark.slow

ENV = dict(os.environ, PYTHONUNBUFFERED="1")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def decnef(*args: str, log: Path) -> subprocess.Popen:
    fh = open(log, "ab")  # noqa: SIM115 - closed with the process
    return subprocess.Popen([sys.executable, "-m", "runtime.cli.main", *args], stdout=fh, stderr=subprocess.STDOUT, env=ENV)


def wait_for(cond, timeout: float, what: str, procs=()) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def tsv_rows(path: Path) -> list[dict]:
    if not path.exists():
        return []
    with open(path, newline="") as fh:
        return [r for r in csv.DictReader(fh, delimiter="\t") if r.get("sha1")]


def count_lines(path: Path, prefix: str) -> int:
    if not path.exists():
        return 0
    return sum(1 for line in path.read_text(errors="replace").splitlines() if line.startswith(prefix))


def sha1_of(vol) -> str:
    return hashlib.sha1(volume_payload(vol).tobytes()).hexdigest()


def journal_contents(jdir: Path) -> tuple[list[int], list[int]]:
    """(volume indices published, gap indices declared) in journal order."""
    j = Journal(journal_path(jdir, "volumes"))
    vols, gaps = [], []
    for _seq, _t, raw, _p in j.iter_from(0):
        h = decode_header(raw)
        if isinstance(h, VolumeHeader):
            vols.append(h.index)
        elif isinstance(h, EventHeader) and h.name == "gap":
            gaps += h.data["indices"]
    j.close()
    return vols, gaps


def fault_rows(path: Path) -> list[dict]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh, delimiter="\t"))


def check_received(rows: list[dict], expected_sha: dict[int, str], lost: set[int]) -> None:
    indices = [int(r["index"]) for r in rows]
    assert indices == sorted(set(expected_sha) - lost), "every kept volume exactly once, in order"
    seqs = [int(r["seq"]) for r in rows]
    assert seqs == sorted(set(seqs))
    for r in rows:
        assert r["sha1"] == expected_sha[int(r["index"])], f"volume {r['index']} differs from read_series"
    for r in rows:
        gb = {int(x) for x in r["gap_before"].split(",") if x}
        i = int(r["index"])
        before = set()
        k = i - 1
        while k in lost:
            before.add(k)
            k -= 1
        assert gb == before, f"volume {i}: gap_before {gb}, expected {before}"


@pytest.fixture(scope="module")
def forrest20(studyforrest_dir: Path, tmp_path_factory) -> tuple[Path, dict[int, str]]:
    """The first 20 volumes (700 per-slice files) of the studyforrest run, and their sha1s."""
    src = load_dicom_source(studyforrest_dir / "dicoms")
    out = tmp_path_factory.mktemp("forrest20")
    for v in src.volumes[:20]:
        for f in v.files:
            shutil.copyfile(f.path, out / f.name)
    vols = read_series(out)
    assert [v.index for v in vols] == list(range(20))
    return out, {v.index: sha1_of(v) for v in vols}


def test_mosaic_all_faults_listener_killed_and_restarted(dicom_dir: Path, tmp_path: Path) -> None:
    """24 mosaic volumes (the 6-volume Prisma series looped 4x, renumbered), chunked writes,
    every fault type, listener SIGKILLed mid-run and restarted."""
    src = dicom_dir / "siemens_mosaic_prisma_ep2d_asc"
    source_sha = {v.index: sha1_of(v) for v in read_series(src)}
    expected = {i: source_sha[i % 6] for i in range(24)}
    pub, rep = f"tcp://127.0.0.1:{free_port()}", f"tcp://127.0.0.1:{free_port()}"
    watch, out, flog = tmp_path / "incoming", tmp_path / "received.tsv", tmp_path / "faults.tsv"
    faults = "drop:3,duplicate:5,9,reorder:7,delay:12,truncate:15,corrupt:18,junk:4,10"
    streamer = decnef("stream", "--watch", str(watch), "--endpoint", pub, "--replay-endpoint", rep,
                      "--journal", str(tmp_path / "journal"), "--count", "24", "--gap-timeout", "2.5",
                      log=tmp_path / "stream.log")
    listener = decnef("listen", "--endpoint", pub, "--replay-endpoint", rep, "--out", str(out), "--timeout", "60",
                      log=tmp_path / "listen1.log")
    replayer = decnef("replay", str(src), "--to", str(watch), "--tr", "0.25", "--write", "chunked",
                      "--repeat", "4", "--faults", faults, "--fault-log", str(flog), "--seed", "1",
                      log=tmp_path / "replay.log")
    procs = [streamer, listener, replayer]
    try:
        wait_for(lambda: len(tsv_rows(out)) >= 6, 40, "listener to record 6 volumes")
        listener.send_signal(signal.SIGKILL)
        listener.wait()
        n_before = len(tsv_rows(out))
        time.sleep(1.0)  # volumes go by while nobody listens
        listener = decnef("listen", "--endpoint", pub, "--replay-endpoint", rep, "--out", str(out), "--timeout", "60",
                          log=tmp_path / "listen2.log")
        procs.append(listener)
        assert replayer.wait(60) == 0
        assert streamer.wait(60) == 0, (tmp_path / "stream.log").read_text()
        assert listener.wait(60) == 0
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    rows = tsv_rows(out)
    lost = {3, 15, 18}
    check_received(rows, expected, lost)
    assert n_before < len(rows)
    assert "end of run" in (tmp_path / "listen2.log").read_text()
    # the fault log accounts for every injected fault
    kinds = sorted((int(r["volume"]), r["fault"]) for r in fault_rows(flog))
    assert (3, "drop") in kinds and (7, "reorder") in kinds and (12, "delay") in kinds
    assert (15, "truncate") in kinds and (18, "corrupt") in kinds
    assert [k for k in kinds if k[1] == "duplicate"] == [(5, "duplicate"), (9, "duplicate")]
    assert [k for k in kinds if k[1] == "junk"] == [(4, "junk"), (10, "junk")]
    vols, gaps = journal_contents(tmp_path / "journal")
    assert sorted(gaps) == sorted(lost)
    assert vols == sorted(set(vols)) and len(vols) == 21  # duplicates never republished
    log = (tmp_path / "stream.log").read_text()
    assert "duplicates dropped 2" in log and "non-DICOM files ignored 3" in log  # 2 junk + 1 corrupt


def test_perslice_streamer_killed_and_restarted_polling_only(forrest20, tmp_path: Path) -> None:
    """20 Philips per-slice volumes (35 files each) with every fault type, file events off
    (network-share mode), streamer SIGKILLed mid-run and restarted from its journal."""
    src, expected = forrest20
    pub, rep = f"tcp://127.0.0.1:{free_port()}", f"tcp://127.0.0.1:{free_port()}"
    watch, out, flog, jdir = tmp_path / "incoming", tmp_path / "received.tsv", tmp_path / "faults.tsv", tmp_path / "journal"
    faults = "drop:2,duplicate:4,reorder:6,delay:9,truncate:12,corrupt:15,junk:5"
    stream_args = ["stream", "--watch", str(watch), "--endpoint", pub, "--replay-endpoint", rep, "--journal", str(jdir),
                   "--count", "20", "--gap-timeout", "3", "--no-events", "--poll-interval", "0.05"]
    slog = tmp_path / "stream.log"
    streamer = decnef(*stream_args, log=slog)
    listener = decnef("listen", "--endpoint", pub, "--replay-endpoint", rep, "--out", str(out), "--timeout", "90",
                      log=tmp_path / "listen.log")
    replayer = decnef("replay", str(src), "--to", str(watch), "--tr", "0.4", "--write", "rename",
                      "--faults", faults, "--fault-log", str(flog), log=tmp_path / "replay.log")
    procs = [streamer, listener, replayer]
    try:
        wait_for(lambda: count_lines(slog, "volume ") >= 5, 60, "streamer to publish 5 volumes")
        streamer.send_signal(signal.SIGKILL)
        streamer.wait()
        time.sleep(0.8)  # files keep arriving while the streamer is down
        streamer = decnef(*stream_args, log=slog)
        procs.append(streamer)
        assert replayer.wait(90) == 0
        assert streamer.wait(90) == 0, slog.read_text()
        assert listener.wait(90) == 0, (tmp_path / "listen.log").read_text()
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    lost = {2, 12, 15}
    check_received(tsv_rows(out), expected, lost)
    vols, gaps = journal_contents(jdir)
    assert vols == sorted(set(vols)) == sorted(set(range(20)) - lost)  # nothing lost or republished
    assert sorted(gaps) == sorted(lost)
    text = slog.read_text()
    assert "restored from journal" in text
    assert "file events off" in text
