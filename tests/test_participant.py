"""Virtual participant: pain/engagement model, the day-1 sham run as real DICOM, and the closed
loop: a TCS II driver on the participant's emulated thermode (real pty) drives what the
participant writes into the watch folder, with the haemodynamic delay."""

from __future__ import annotations

import csv
import threading
import time
from pathlib import Path

import msgspec
import nibabel as nib
import numpy as np
import pytest

from runtime.config import load_config
from runtime.dicom import read_series
from runtime.outputs import read_tsv, run_file
from runtime.protocol import build_table
from sim_scanner.participant import (
    PainModel,
    ideal_hot_seconds,
    run_participant,
    simulate_day1,
    train_config,
)
from stimulus.devices import SafetyLimits
from stimulus.devices.tcs2 import TCS2Stimulator

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "configs" / "pain_coadaptive.toml"


def small_cfg(n_trials: int = 6, day1_trials: int = 10):
    cfg = load_config(CONFIG)
    p = msgspec.structs.replace(cfg.protocol, n_trials=n_trials)
    sim = msgspec.structs.replace(cfg.simulation, participant=msgspec.structs.replace(
        cfg.simulation.participant, day1_trials=day1_trials))
    return msgspec.structs.replace(cfg, protocol=p, simulation=sim)


def on_reader_grid(arr: np.ndarray, phantom_affine: np.ndarray, vol) -> np.ndarray:
    """A phantom-grid array on the grid the DICOM reader returns (same voxels, maybe flipped axes)."""
    m = np.linalg.inv(phantom_affine) @ vol.affine
    ijk = np.indices(vol.data.shape).reshape(3, -1)
    src = np.rint(m[:3, :3] @ ijk + m[:3, 3:4]).astype(int)
    return arr[tuple(src)].reshape(vol.data.shape)


def roi_pain_projection(vols, ph, baseline: range) -> np.ndarray:
    """Per scan: ROI signal (fraction of the baseline mean) projected on the phantom's pain pattern."""
    mask = on_reader_grid(ph.roi_mask, ph.affine, vols[0])
    pattern = on_reader_grid(ph.patterns[0], ph.affine, vols[0])
    y = np.stack([v.data[mask] for v in vols]).astype(float)
    y = y / y[baseline.start:baseline.stop].mean(axis=0) - 1.0
    w = pattern[mask]
    return y @ (w / np.dot(w, w))


def test_pain_model_pain_engagement_and_hrf_delay():
    p = load_config(CONFIG).simulation.participant
    m = PainModel(p, 32.0, seed=1)
    assert m.pain(46.0) == pytest.approx(0.881, abs=1e-3) and m.pain(40.0) == pytest.approx(0.119, abs=1e-3)
    hot = ideal_hot_seconds(32.0, 46.0, 30.0, 30.0, 2.0)
    assert hot == pytest.approx(2.0 + 12.0 / 30.0 * 2)  # plateau + the ramps above 34 °C
    e0 = m.engagement
    s = m.add(10.0, 46.0, hot)  # a painful stimulus lowers engagement
    assert s.engagement == e0 and m.engagement == pytest.approx(e0 + p.engagement_rate * ((1 - s.pain) - e0))
    e1 = m.engagement
    m.add(22.0, 40.0, ideal_hot_seconds(32.0, 40.0, 30.0, 30.0, 2.0))  # relief raises it
    assert m.engagement > e1
    t = np.arange(0.0, 22.0, 0.5)
    pain = np.array([m.amplitudes(x)[0] for x in t])
    assert pain[t < 10.0].max() == 0.0  # causal
    peak = t[np.argmax(pain)]
    assert 14.0 <= peak <= 17.5  # ~5-6 s haemodynamic delay after the 10-s onset
    # engagement weakens the encoding of the same pain
    hi = PainModel(msgspec.structs.replace(p, response_sd=0.0, engagement_initial=1.0), 32.0)
    lo = PainModel(msgspec.structs.replace(p, response_sd=0.0, engagement_initial=0.0), 32.0)
    assert hi.add(0, 46.0, hot).pain_amplitude == pytest.approx(lo.add(0, 46.0, hot).pain_amplitude * (1 - p.engagement_modulation))


def test_day1_sham_run_is_real_dicom_with_balanced_decodable_stimuli(tmp_path):
    cfg = small_cfg(day1_trials=12)
    day1 = simulate_day1(cfg, tmp_path / "day1", seed=5, log=lambda m: None)
    vols = sorted(read_series(sorted(day1.dicom.glob("*.dcm"))), key=lambda v: v.index)
    table = build_table(msgspec.structs.replace(cfg.protocol, n_trials=12))
    assert len(vols) == table.n_scans == 3 + 5 + 12 * 6
    assert vols[0].data.shape == tuple(cfg.simulation.shape) and vols[0].tr == pytest.approx(2.0)
    with day1.events.open() as fh:
        ev = list(csv.DictReader(fh, delimiter="\t"))
    assert sorted(e["trial_type"] for e in ev) == ["high"] * 6 + ["low"] * 6
    assert [float(e["onset"]) for e in ev] == [t.induction.start * 2.0 for t in table.trials]
    mask = nib.load(str(day1.roi_mask)).get_fdata() > 0
    from sim_scanner.participant import _phantom

    ph, _ = _phantom(cfg)
    assert np.array_equal(mask, ph.roi_mask)
    proj = roi_pain_projection(vols, ph, table.baseline)
    win = {e["trial_type"]: [] for e in ev}
    for t, e in zip(table.trials, ev, strict=True):
        win[e["trial_type"]].append(proj[list(t.window)].mean())
    # the decoder's window (onset+3..onset+4) sees more pain pattern after high stimuli
    assert np.mean(win["high"]) > np.mean(win["low"]) + 0.006  # expected ~0.013
    # the train config reads exactly this run, with the online window
    tc = train_config(cfg, day1, tmp_path / "b.npz")
    assert tc.train.runs[0].source == str(day1.dicom) and tc.train.classes == ["high", "low"]
    assert round(tc.train.hrf_delay_s / tc.protocol.tr) == cfg.protocol.window_start
    assert tc.train.window_scans == len(table.trials[0].window) and tc.decoder.target_class == "high"


def test_closed_loop_volumes_follow_what_the_thermode_did(tmp_path):
    speed = 8.0
    cfg = small_cfg(n_trials=4)
    table = build_table(cfg.protocol)
    watch, port_file = tmp_path / "export", tmp_path / "thermode.port"
    stop = threading.Event()
    res: dict = {}

    def participant():
        res["s"] = run_participant(cfg, watch, speed=speed, port_file=port_file, output_root=tmp_path / "out",
                                   stop_event=stop, log=lambda m: None, linger_s=30)

    th = threading.Thread(target=participant, daemon=True)
    th.start()
    deadline = time.monotonic() + 30
    while not port_file.exists() and time.monotonic() < deadline:
        time.sleep(0.02)
    time.sleep(0.3)
    assert not list(watch.glob("*.dcm")), "no scan before the thermode is configured"
    dev = TCS2Stimulator(port_file.read_text().strip(), SafetyLimits())
    dev.connect()  # F, Om500, N320: the participant starts scanning
    t0 = time.monotonic()
    levels = [46.0, 40.0, 46.0, 40.0]
    try:
        for trial, level in zip(table.trials, levels, strict=True):
            wake = t0 + trial.induction.start * 2.0 / speed
            time.sleep(max(0.0, wake - time.monotonic()))
            dev.deliver(level, 2.0)
        deadline = time.monotonic() + 60
        while len(list(watch.glob("*.dcm"))) < table.n_scans and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        stop.set()
        th.join(20)
        dev.close()
    s = res["s"]
    assert s.scans == table.n_scans and s.ended_by == "all scans written"
    assert [round(x.peak_c, 1) for x in s.stimuli] == levels  # what the thermode did, not what was asked
    assert s.malformed == [] and s.max_peak_c <= 50.0
    rows = read_tsv(run_file(cfg, "participant.tsv", tmp_path / "out"))
    assert [int(r["trial"]) for r in rows] == [1, 2, 3, 4] and [int(r["rating"]) >= 5 for r in rows] == [True, False, True, False]
    vols = sorted(read_series(sorted(watch.glob("*.dcm"))), key=lambda v: v.index)
    assert [v.index for v in vols] == list(range(table.n_scans))
    from sim_scanner.participant import _phantom

    ph, _ = _phantom(cfg)
    proj = roi_pain_projection(vols, ph, table.baseline)
    onset = table.trials[0].induction.start
    # response to the first (high) stimulus: nothing at onset, up 2-3 scans (4-6 s) later
    assert proj[onset + 2: onset + 4].mean() > proj[onset - 1: onset + 1].mean() + 0.007  # expected ~0.015
    high = np.mean([proj[list(table.trials[k].window)].mean() for k in (0, 2)])
    low = np.mean([proj[list(table.trials[k].window)].mean() for k in (1, 3)])
    assert high > low


def test_cli_day1_mode_and_one_line_errors(tmp_path):
    import subprocess
    import sys

    cfg_text = CONFIG.read_text().replace("day1_trials = 30", "day1_trials = 4")
    cfg_path = tmp_path / "pain.toml"
    cfg_path.write_text(cfg_text)
    run = lambda *a: subprocess.run([sys.executable, "-m", "runtime.cli.main", *a], capture_output=True, text=True,  # noqa: E731
                                    timeout=120)
    ok = run("participant", "--config", str(cfg_path), "--day1", str(tmp_path / "d1"))
    assert ok.returncode == 0, ok.stderr
    assert len(list((tmp_path / "d1" / "dicom").glob("*.dcm"))) == 3 + 5 + 4 * 6
    assert (tmp_path / "d1" / "events.tsv").read_text().count("\n") == 5
    bad = run("participant", "--config", str(cfg_path))
    assert bad.returncode == 2 and "--watch" in bad.stderr and "Traceback" not in bad.stderr
    nodev = run("agent", "--config", str(cfg_path), "--port", str(tmp_path / "no-such-tty"), "--output", str(tmp_path))
    assert nodev.returncode == 2 and "Traceback" not in nodev.stderr
    assert len(nodev.stderr.strip().splitlines()) == 1 and "cannot open serial port" in nodev.stderr
