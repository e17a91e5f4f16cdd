"""`decnef run`: config/bundle/protocol check, supervised roles as real processes, recovery of
a crashed engine (SIGKILL mid-run), clean stop on SIGTERM, simulated phantom scanner."""

from __future__ import annotations

import csv
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from runtime.config import load_config
from runtime.protocol import build_table
from sim_scanner import phantom as P

SESSION = """
[session]
subject = "sup"
task = "nf"
[scanner]
poll_interval = 0.01
gap_timeout = 5.0
[protocol]
tr = 2.0
discard_scans = 2
baseline_scans = 6
n_trials = {n_trials}
window_start = 2
window_end = 2
end_scans = 1
[protocol.trial]
rest_scans = 2
induction_scans = 3
delay_scans = 2
calc_scans = 1
feedback_scans = 1
[decoder]
bundle = "decoder/b.npz"
target_class = "target"
[output]
root = "out"
save_volumes = false
[train]
runs = [{{ source = "loc/dicom", events = "loc/events.tsv" }}]
roi_mask = "loc/roi.nii.gz"
classes = ["target", "other"]
split = "blocks"
max_folds = 3
n_permutations = 0
[simulation]
seed = 5
"""


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """A phantom decoder bundle and session configs next to it."""
    from runtime.train import train

    d = tmp_path_factory.mktemp("run")
    ph = P.HeadPhantom(seed=5)
    loc = P.localizer_run(ph, seed=5, n_blocks_per_class=3, block_scans=6, rest_scans=4, lead_scans=8)
    loc.write_dicom(d / "loc" / "dicom", layout="mosaic")
    loc.write_events(d / "loc" / "events.tsv")
    P.write_mask(ph, d / "loc" / "roi.nii.gz")
    for n in (6, 12):
        (d / f"session{n}.toml").write_text(SESSION.format(n_trials=n))
    cfg = load_config(d / "session6.toml")
    train(cfg, log=lambda m: None)
    return d, ph


def _decnef(*args, **kw):
    return subprocess.run([sys.executable, "-m", "runtime.cli.main", *map(str, args)], capture_output=True, text=True,
                          timeout=kw.pop("timeout", 300), **kw)


def test_check_validates_config_bundle_and_protocol(base, tmp_path):
    d, _ = base
    p = _decnef("run", d / "session6.toml", "--check")
    assert p.returncode == 0, p.stderr
    assert "protocol OK: 63 scans" in p.stdout and "6 trials" in p.stdout
    assert "bundle OK" in p.stdout and "classes" in p.stdout
    bad = tmp_path / "bad.toml"
    bad.write_text(SESSION.format(n_trials=6).replace('bundle = "decoder/b.npz"', 'bundle = "nowhere.npz"'))
    p = _decnef("run", bad, "--check")
    assert p.returncode == 2
    assert "nowhere.npz" in p.stderr and len(p.stderr.strip().splitlines()) == 1
    bad.write_text(SESSION.format(n_trials=6).replace("window_end = 2", "window_end = 5"))
    p = _decnef("run", bad, "--check")
    assert p.returncode == 2 and "window_end" in p.stderr


def test_engine_killed_mid_run_is_restarted_and_the_run_completes(base, tmp_path):
    """SIGKILL the engine after its second score: the supervisor restarts it, the engine
    recovers from its outputs and the streamer's replay, every trial is scored exactly once."""
    from runtime.cli.cmd_run import session_roles
    from runtime.outputs import run_file
    from runtime.supervisor import Supervisor, absolute_paths, with_free_endpoints

    d, ph = base
    import msgspec

    cfg = load_config(d / "session6.toml")
    cfg = msgspec.structs.replace(cfg, output=msgspec.structs.replace(cfg.output, root=str(tmp_path / "out")))
    cfg = with_free_endpoints(absolute_paths(cfg))
    table = build_table(cfg.protocol)
    nf = P.nf_run(ph, table, seed=9)
    src = nf.write_dicom(tmp_path / "src", layout="mosaic")
    cfg, roles = session_roles(cfg, table, tmp_path / "work", replay_src=src, speed=8.0)
    lines: list[str] = []
    sup = Supervisor(roles, log=lines.append, log_dir=tmp_path / "logs", max_restarts=2)
    killed: list[int] = []

    def killer():
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if sup.seen("engine", "trial   2"):
                pid = sup.pid("engine")
                if pid:
                    os.kill(pid, signal.SIGKILL)
                    killed.append(pid)
                return
            time.sleep(0.02)

    t = threading.Thread(target=killer, daemon=True)
    t.start()
    status = sup.run(timeout=240)
    t.join(timeout=5)
    assert killed, "the engine never scored trial 2"
    assert status == 0, "\n".join(lines[-40:])
    what = [(role, ev) for _, role, ev in sup.events]
    assert ("engine", "crashed") in what and ("engine", "restarted") in what
    assert what[-1] == ("engine", "finished") or ("engine", "finished") in what
    rows = list(csv.DictReader(run_file(cfg, "scores.tsv").open(), delimiter="\t"))
    assert sorted(int(r["trial"]) for r in rows) == list(range(1, 7))
    assert all(r["score"] not in ("", "n/a") for r in rows)
    assert (tmp_path / "logs" / "engine.log").read_text().count("engine ready") == 2


def test_sigterm_stops_every_child(base, tmp_path):
    d, _ = base
    cmd = [sys.executable, "-m", "runtime.cli.main", "run", str(d / "session12.toml"), "--simulate", "--speed", "1",
           "--free-ports", "--output", str(tmp_path / "out")]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    pids: list[int] = []
    out: list[str] = []
    try:
        assert proc.stdout is not None
        deadline = time.monotonic() + 180
        for line in proc.stdout:
            out.append(line)
            m = re.search(r"started \(pid (\d+)\)", line)
            if m:
                pids.append(int(m.group(1)))
            if "replay started" in line or time.monotonic() > deadline:
                break
        assert len(pids) == 3, "".join(out)  # engine, stream, replay
        time.sleep(1.0)
        proc.send_signal(signal.SIGTERM)
        rest, _ = proc.communicate(timeout=60)
        out.append(rest)
    finally:
        if proc.poll() is None:
            proc.kill()
    text = "".join(out)
    assert proc.returncode == 130, text[-2000:]
    assert "stopping" in text and "SIGTERM" in text
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
    # the phantom source the simulation wrote, with its hidden states
    assert list((tmp_path / "out").rglob("truth.json"))


def _alive(pid: int) -> bool:
    """Running (not gone, not a zombie waiting for a reaper)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="parent-death signal is Linux only")
def test_killed_supervisor_leaves_no_orphans(base, tmp_path):
    d, _ = base
    cmd = [sys.executable, "-m", "runtime.cli.main", "run", str(d / "session12.toml"), "--simulate", "--speed", "1",
           "--free-ports", "--output", str(tmp_path / "out")]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    pids: list[int] = []
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            m = re.search(r"started \(pid (\d+)\)", line)
            if m:
                pids.append(int(m.group(1)))
            if "replay started" in line:
                break
        assert len(pids) == 3
        proc.kill()
        proc.wait(timeout=10)
        deadline = time.monotonic() + 30
        while any(_alive(p) for p in pids) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not [p for p in pids if _alive(p)]
    finally:
        for p in pids:
            if _alive(p):
                os.kill(p, signal.SIGKILL)


def test_absolute_paths_resolves_every_file_key(tmp_path):
    """`decnef run` writes the config elsewhere for its children: every relative file must still resolve."""
    from runtime.config import parse_config
    from runtime.supervisor import absolute_paths

    text = """
[scanner]
watch_dir = "in"
[decoder]
bundle = "b.npz"
sham = "yoked"
yoked_scores = "y.tsv"
score = "percentile"
percentile_reference = "ref.json"
[endpoints]
curve_keys = "keys"
[output]
root = "out"
[denoise]
wm_mask = "dw.nii.gz"
csf_mask = "dc.nii.gz"
[train]
roi_mask = "m.nii.gz"
roi_atlas = "a.nii.gz"
wm_mask = "tw.nii.gz"
csf_mask = "tc.nii.gz"
[[train.runs]]
source = "run1"
events = "run1.tsv"
"""
    cfg = absolute_paths(parse_config(text, origin="s.toml", base_dir=str(tmp_path)))
    got = [cfg.scanner.watch_dir, cfg.decoder.bundle, cfg.decoder.yoked_scores, cfg.decoder.percentile_reference,
           cfg.endpoints.curve_keys, cfg.output.root, cfg.train.roi_mask, cfg.train.roi_atlas, cfg.train.runs[0].source,
           cfg.train.runs[0].events, cfg.denoise.wm_mask, cfg.denoise.csf_mask, cfg.train.wm_mask, cfg.train.csf_mask]
    assert got == [str((tmp_path / p).resolve()) for p in ("in", "b.npz", "y.tsv", "ref.json", "keys", "out", "m.nii.gz",
                                                           "a.nii.gz", "run1", "run1.tsv", "dw.nii.gz", "dc.nii.gz",
                                                           "tw.nii.gz", "tc.nii.gz")]
