"""`decnef engine` with real ZeroMQ sockets on 127.0.0.1: outputs written as they happen, a
display-like subscriber gets every score once, and a `kill -9` mid-run followed by a restart
ends with exactly one score row per trial and one motion row per volume."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from test_engine import make_bundle, run_core, scores_of
from test_engine_data import PROTOCOL, endpoints_toml

from runtime.config import config_sha256, load_config, parse_config
from runtime.engine.process import run_engine
from runtime.messages import (
    TOPIC_EVENT,
    TOPIC_SCORE,
    TOPIC_TELEMETRY,
    ControlHeader,
    EventHeader,
    volume_header,
    volume_payload,
)
from runtime.outputs import RunFiles, read_tsv
from runtime.transport import ReliablePublisher, ReliableSubscriber
from runtime.volume import Volume

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def bundle_file(forrest, tmp_path_factory):
    from decoders.bundle import save_bundle

    data, affine = forrest
    path = tmp_path_factory.mktemp("bundle") / "forrest_stim.npz"
    save_bundle(make_bundle(data, affine), path)
    return path


def write_config(tmp_path: Path, bundle: Path, extra: str = "") -> Path:
    text = PROTOCOL + endpoints_toml() + f'[decoder]\nbundle = "{bundle}"\n[output]\nroot = "out"\n' + extra
    p = tmp_path / "session.toml"
    p.write_text(text)
    return p


class Streamer:
    """Stands where `decnef stream` stands: publishes the run's volumes on the volume stream."""

    def __init__(self, cfg, journal_dir: Path, data: np.ndarray, affine: np.ndarray) -> None:
        self.pub = ReliablePublisher(cfg.endpoints.volumes, cfg.endpoints.volumes_replay, journal_dir, stream="volumes")
        self.data, self.affine = data, affine
        self.sent = 0

    def send(self, i: int) -> None:
        v = Volume(data=self.data[i], affine=self.affine, index=i, tr=2.0, manufacturer="Philips")
        self.pub.publish(volume_header(v, t_file_complete=time.time()), volume_payload(v))
        self.sent += 1

    def play(self, indices, interval: float, stop: threading.Event | None = None) -> threading.Thread:
        def go():
            for i in indices:
                if stop is not None and stop.is_set():
                    return
                self.send(i)
                time.sleep(interval)

        th = threading.Thread(target=go, daemon=True)
        th.start()
        return th


class Collector:
    """Display-like subscriber to the score stream (runs until closed)."""

    def __init__(self, cfg) -> None:
        self.items: list = []
        self._stop = threading.Event()
        self._sub = ReliableSubscriber(cfg.endpoints.scores, cfg.endpoints.scores_replay)
        self._th = threading.Thread(target=self._run, daemon=True)
        self._th.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            item = self._sub.recv_with_topic(100)
            if item is not None:
                self.items.append(item)

    def of(self, topic: bytes) -> list:
        return [h for t, h, _ in list(self.items) if t == topic]

    def wait_for(self, pred, timeout: float = 30.0) -> bool:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if pred(self):
                return True
            time.sleep(0.05)
        return False

    def close(self) -> None:
        self._stop.set()
        self._th.join(5)
        self._sub.close()


def test_engine_in_process_end_to_end(forrest, bundle_file, tmp_path):
    data, affine = forrest
    cfg = load_config(write_config(tmp_path, bundle_file))
    streamer = Streamer(cfg, tmp_path / "stream", data, affine)
    collector = Collector(cfg)
    ready = threading.Event()
    lines: list[str] = []
    out: dict = {}
    stop = threading.Event()
    th = threading.Thread(target=lambda: out.setdefault("s", run_engine(cfg, ready=lambda e: ready.set(), stop_event=stop,
                                                                       log=lines.append, end_grace_s=0.5)))
    th.start()
    try:
        assert ready.wait(60)
        files = RunFiles.for_run(cfg)
        streamer.play(range(30), 0.01).join()
        # rows are on disk while the run goes on (flushed per row, before the run ends)
        assert collector.wait_for(lambda c: len(c.of(TOPIC_TELEMETRY)) >= 29)  # volume 0 is discarded
        time.sleep(0.2)
        assert [int(r["volume"]) for r in read_tsv(files.motion)] == list(range(30))
        assert [int(r["trial"]) for r in read_tsv(files.scores)] == [1, 2]  # calc scans 15, 27
        streamer.play(range(30, 100), 0.01).join()
        th.join(60)
        assert not th.is_alive()
    finally:
        collector.wait_for(lambda c: any(h.name == "engine_end" for h in c.of(TOPIC_EVENT)), 10)
        stop.set()
        th.join(30)
        collector.close()
        streamer.pub.close()
    summary = out["s"]
    assert summary.ended_by == "last scan of the protocol" and summary.volumes == 100
    scores = read_tsv(files.scores)
    assert [int(r["trial"]) for r in scores] == list(range(1, 8))
    # what the display got: every trial once, same as the file
    got = collector.of(TOPIC_SCORE)
    assert [h.trial for h in got] == list(range(1, 8))
    assert [h.score for h in got] == [float(r["score"]) for r in scores]
    assert [h.volume for h in collector.of(TOPIC_TELEMETRY)] == list(range(1, 100))
    # same scores as the pure core on the same volumes
    from runtime.engine.process import load_decoder

    b, _ = load_decoder(cfg)
    _, results, end = run_core(cfg, b, data, affine)
    ref = scores_of(results, end)
    assert [h.score for h in got] == [ref[k].score for k in range(1, 8)]
    motion = read_tsv(files.motion)
    assert [int(r["volume"]) for r in motion] == list(range(100))
    assert list(motion[0])[:7] == ["volume", "trans_x", "trans_y", "trans_z", "rot_x", "rot_y", "rot_z"]
    timing = read_tsv(files.timing)
    assert [int(r["volume"]) for r in timing] == list(range(100))
    for r in timing[1:]:
        t = [float(r[k]) for k in ("t_file_complete", "t_published", "t_received", "t_realigned", "t_processed")]
        assert t == sorted(t)
    img = nib.load(files.bold)
    assert img.shape == (80, 80, 35, 100)
    assert np.allclose(np.asarray(img.dataobj[..., 57]), data[57])
    assert json.loads(files.bold_json.read_text())["RepetitionTime"] == 2.0
    assert not files.volumes.exists()  # spool removed once the NIfTI is written
    prov = json.loads(next(files.func.parent.glob("*_provenance.json")).read_text())
    assert prov["config_sha256"] == config_sha256(cfg)
    from runtime.outputs import file_sha256

    assert prov["decoder_sha256"] in (b.sha256, file_sha256(bundle_file))
    assert prov["runs"][-1]["ended_by"] == "last scan of the protocol"
    assert sum(line.startswith("trial ") for line in lines) == 7
    assert any(line.startswith("run end") for line in lines)


def test_stop_event_ends_the_run_and_keeps_what_was_received(forrest, bundle_file, tmp_path):
    data, affine = forrest
    cfg = load_config(write_config(tmp_path, bundle_file))
    streamer = Streamer(cfg, tmp_path / "stream", data, affine)
    stop = threading.Event()
    ready = threading.Event()
    out: dict = {}
    th = threading.Thread(target=lambda: out.setdefault("s", run_engine(cfg, ready=lambda e: ready.set(), stop_event=stop,
                                                                       log=lambda s: None, end_grace_s=0)))
    th.start()
    try:
        assert ready.wait(60)
        streamer.play([0, 1, 2, 3, 5, 6, 7], 0.01).join()  # 4 never comes
        files = RunFiles.for_run(cfg)
        end = time.monotonic() + 20
        while len(read_tsv(files.motion)) < 8 and time.monotonic() < end:
            time.sleep(0.05)
    finally:
        stop.set()
        th.join(30)
        streamer.pub.close()
    assert out["s"].ended_by == "stopped"
    assert read_tsv(files.scores) == []  # an operator stop does not invent scores
    motion = read_tsv(files.motion)
    assert [(int(r["volume"]), r["status"]) for r in motion][3:6] == [(3, "ok"), (4, "missing"), (5, "ok")]
    img = nib.load(files.bold)
    assert img.shape[3] == 8
    assert not np.asarray(img.dataobj[..., 4]).any()  # the missing volume is zeros ...
    assert json.loads(files.bold_json.read_text())["MissingVolumes"] == [4]  # ... and said so
    assert files.volumes.is_dir()  # a stopped run keeps its spool for a restart


def _start_engine(cfg_path: Path, lines: list[str]) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-m", "runtime.cli.main", "engine", "--config", str(cfg_path), "--grace", "2"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=REPO)

    def read():
        for line in proc.stdout:
            lines.append(line.rstrip("\n"))

    threading.Thread(target=read, daemon=True).start()
    return proc


def _wait(pred, timeout: float) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if pred():
            return True
        time.sleep(0.05)
    return False


def test_kill_9_mid_run_and_restart(forrest, bundle_file, tmp_path):
    data, affine = forrest
    cfg_path = write_config(tmp_path, bundle_file)
    cfg = load_config(cfg_path)
    files = RunFiles.for_run(cfg)
    streamer = Streamer(cfg, tmp_path / "stream", data, affine)
    collector = Collector(cfg)
    procs: list[subprocess.Popen] = []
    lines1: list[str] = []
    lines2: list[str] = []
    try:
        procs.append(_start_engine(cfg_path, lines1))
        assert _wait(lambda: any("engine ready" in s for s in lines1), 90), lines1
        stop_stream = threading.Event()
        player = streamer.play(range(100), 0.04, stop_stream)  # keeps streaming while the engine is down
        # kill mid-run: after trial 3 was scored, while volumes keep coming
        assert _wait(lambda: len(read_tsv(files.scores)) >= 3, 60)
        os.kill(procs[0].pid, signal.SIGKILL)
        procs[0].wait(10)
        n_before = len(read_tsv(files.motion))
        assert 0 < n_before < 100
        time.sleep(0.5)  # more volumes arrive while no engine runs
        procs.append(_start_engine(cfg_path, lines2))
        assert procs[1].wait(120) == 0, "\n".join(lines2)
        player.join(10)
        assert collector.wait_for(lambda c: len(c.of(TOPIC_SCORE)) >= 7, 10)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
        collector.close()
        streamer.pub.close()
    assert any("resumed after volume" in s for s in lines2), lines2
    scores = read_tsv(files.scores)
    assert [int(r["trial"]) for r in scores] == list(range(1, 8))
    motion = read_tsv(files.motion)
    assert [int(r["volume"]) for r in motion] == list(range(100))
    assert all(r["status"] in ("ok", "discard") for r in motion)
    # the display saw each trial exactly once across the crash
    assert sorted(h.trial for h in collector.of(TOPIC_SCORE)) == list(range(1, 8))
    # and the scores are those of an uninterrupted run
    from runtime.engine.process import load_decoder

    b, _ = load_decoder(cfg)
    _, results, end = run_core(parse_config(cfg_path.read_text()), b, data, affine)
    ref = scores_of(results, end)
    for r in scores:
        h = ref[int(r["trial"])]
        assert float(r["score"]) == h.score
        assert float(r["likelihood"]) == pytest.approx(h.likelihood, abs=1e-6)
    assert nib.load(files.bold).shape == (80, 80, 35, 100)


def test_sigterm_stops_cleanly_and_a_restart_completes_the_run(forrest, bundle_file, tmp_path):
    data, affine = forrest
    cfg_path = write_config(tmp_path, bundle_file)
    cfg = load_config(cfg_path)
    files = RunFiles.for_run(cfg)
    streamer = Streamer(cfg, tmp_path / "stream", data, affine)
    lines1: list[str] = []
    lines2: list[str] = []
    procs: list[subprocess.Popen] = []
    try:
        procs.append(_start_engine(cfg_path, lines1))
        assert _wait(lambda: any("engine ready" in s for s in lines1), 90), lines1
        streamer.play(range(50), 0.01).join()
        assert _wait(lambda: len(read_tsv(files.motion)) == 50, 60)
        procs[0].send_signal(signal.SIGTERM)
        assert procs[0].wait(60) == 0
        assert any(s.startswith("run end (stopped)") for s in lines1), lines1
        assert nib.load(files.bold).shape[3] == 50
        procs.append(_start_engine(cfg_path, lines2))
        assert _wait(lambda: any("engine ready" in s for s in lines2), 90), lines2
        streamer.play(range(50, 100), 0.01).join()
        assert procs[1].wait(120) == 0, "\n".join(lines2)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
        streamer.pub.close()
    assert [int(r["trial"]) for r in read_tsv(files.scores)] == list(range(1, 8))
    assert [int(r["volume"]) for r in read_tsv(files.motion)] == list(range(100))
    img = nib.load(files.bold)
    assert img.shape[3] == 100 and np.allclose(np.asarray(img.dataobj[..., 10]), data[10])
    assert not files.volumes.exists()


def test_bad_bundle_is_one_line(tmp_path):
    cfg_path = write_config(tmp_path, tmp_path / "missing.npz")
    r = subprocess.run([sys.executable, "-m", "runtime.cli.main", "engine", "--config", str(cfg_path)],
                       capture_output=True, text=True, cwd=REPO, timeout=60)
    assert r.returncode == 2
    err = r.stderr.strip().splitlines()
    assert len(err) == 1 and "missing.npz" in err[0] and "not found" in err[0]
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"PK\x03\x04 not really a bundle")
    cfg_path = write_config(tmp_path, bad)
    r = subprocess.run([sys.executable, "-m", "runtime.cli.main", "engine", "--config", str(cfg_path)],
                       capture_output=True, text=True, cwd=REPO, timeout=60)
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1 and "bad.npz" in r.stderr


def test_end_of_run_message(forrest, bundle_file, tmp_path):
    data, affine = forrest
    cfg = load_config(write_config(tmp_path, bundle_file))
    streamer = Streamer(cfg, tmp_path / "stream", data, affine)
    ready = threading.Event()
    stop = threading.Event()
    out: dict = {}
    th = threading.Thread(target=lambda: out.setdefault("s", run_engine(cfg, ready=lambda e: ready.set(), stop_event=stop,
                                                                       log=lambda s: None, end_grace_s=0)))
    th.start()
    try:
        assert ready.wait(60)
        streamer.play(range(39), 0.005).join()
        files = RunFiles.for_run(cfg)
        assert _wait(lambda: len(read_tsv(files.scores)) == 2, 30)
        streamer.pub.publish(EventHeader(name="gap", data={"indices": [39], "reason": "test"}))  # trial 3's calc scan
        assert _wait(lambda: len(read_tsv(files.scores)) == 3, 30)  # scored without a later volume
        streamer.pub.publish(ControlHeader(command="end_of_run", data={"next_index": 45}))
        th.join(30)
    finally:
        stop.set()
        th.join(30)
        streamer.pub.close()
    assert out["s"].ended_by == "end_of_run"
    rows = read_tsv(files.scores)
    assert [int(r["trial"]) for r in rows] == list(range(1, 8))  # one row per trial, always
    assert rows[2]["score"] != "n/a" and "late" in rows[2]["flags"] and rows[2]["volume"] == "39"
    assert all(r["score"] == "n/a" and "no_feedback" in r["flags"] for r in rows[3:])  # never acquired
    motion = read_tsv(files.motion)
    assert [int(r["volume"]) for r in motion] == list(range(45))  # the declared tail is written off
    assert [r["status"] for r in motion[39:]] == ["missing"] * 6


def test_recovery_restores_a_published_score_the_crash_kept_out_of_the_file(forrest, bundle_file, tmp_path):
    """Crash after a score was published (journaled) but before its row was written, and before
    the calc volume's motion row: the restart writes the row from the journal, reprocesses the
    volume without scoring the trial again, and every file ends with one row per item."""
    from runtime.engine.process import Engine
    from runtime.outputs import SCORE_COLUMNS, TsvWriter

    data, affine = forrest
    cfg = load_config(write_config(tmp_path, bundle_file))
    files = RunFiles.for_run(cfg)

    def feed(engine, indices):
        for i in indices:
            v = Volume(data=data[i], affine=affine, index=i, tr=2.0)
            h = volume_header(v, t_file_complete=time.time())
            h.seq = i
            engine.handle(h, volume_payload(v).tobytes())

    e1 = Engine(cfg, log=lambda s: None)
    feed(e1, range(28))  # trial 2 scored at volume 27
    e1.close()
    # what a kill between "score published" and "rows written" leaves behind
    rows = read_tsv(files.scores)
    assert [int(r["trial"]) for r in rows] == [1, 2]
    files.scores.unlink()
    w = TsvWriter(files.scores, SCORE_COLUMNS)
    w.write(rows[0])
    w.close()
    motion = files.motion.read_text().splitlines(keepends=True)
    files.motion.write_text("".join(motion[:-1]))  # volume 27's row never written
    timing = files.timing.read_text().splitlines(keepends=True)
    files.timing.write_text("".join(timing[:-1]))

    e2 = Engine(cfg, log=lambda s: None)
    assert e2.recovered.appended_scores == 1 and e2.recovered.scored == {1, 2}
    assert e2.core.last_index == 26 and e2.recovered.last_seq == 26
    assert [int(r["trial"]) for r in read_tsv(files.scores)] == [1, 2]
    assert read_tsv(files.scores)[1]["score"] == rows[1]["score"]
    feed(e2, range(27, 100))
    e2.close()
    assert e2.finished
    assert [int(r["trial"]) for r in read_tsv(files.scores)] == list(range(1, 8))
    assert [int(r["volume"]) for r in read_tsv(files.motion)] == list(range(100))
    from runtime.engine.recovery import journal_scores
    from runtime.transport import Journal, journal_path

    j = Journal(journal_path(files.journal, "scores"))
    assert sorted(h.trial for h in journal_scores(j)) == list(range(1, 8))  # trial 2 published once
    j.close()
