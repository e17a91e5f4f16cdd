"""Operator monitor: alarms from the message stream, and `decnef monitor` as a real process
reading the engine stream of the real studyforrest run (with a gap and injected head motion)."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import numpy as np
import pytest
from test_engine import config, make_bundle, run_core
from test_engine_data import PROTOCOL, endpoints_toml

from runtime.messages import EventHeader, ScoreHeader, TelemetryHeader
from runtime.monitor import ALARM, MonitorLimits, RunMonitor


def _tel(volume: int, fd: float = 0.05, corr: float | None = 0.95, ng: bool = False, tx: float = 0.0) -> TelemetryHeader:
    return TelemetryHeader(volume=volume, framewise_displacement=fd, template_corr=corr, ng=ng, trans_x=tx,
                           timings={"realign_ms": 2.0, "reslice_ms": 0.5})


def _alarms(lines: list[str]) -> list[str]:
    return [ln for ln in lines if ln.startswith(ALARM)]


def test_ng_run_alarm_fires_once_at_the_configured_length():
    m = RunMonitor(MonitorLimits(ng_run=3))
    out = []
    for v in range(10):
        out += m.handle(_tel(v, fd=0.9, ng=3 <= v <= 7), now=float(v))
    alarms = _alarms(out)
    assert alarms == [f"{ALARM} 3 NG scans in a row (volumes 3-5): check the participant's head position"]
    assert [ln for ln in out if "NG (FD>0.5)" in ln] == [ln for ln in out if ln.startswith("vol") and "NG" in ln]
    assert m.figures()["ng"] == 5


def test_drift_alarm_once_until_the_head_comes_back():
    m = RunMonitor(MonitorLimits(drift_mm=2.0), show_volumes=False)
    out = []
    for v, tx in enumerate([0.0, 2.5, 3.0, 1.0, 2.6]):
        out += m.handle(_tel(v, tx=tx), now=float(v))
    assert out == [f"{ALARM} head is 2.5 mm from the template at volume 1", f"{ALARM} head is 2.6 mm from the template at volume 4"]


def test_stall_is_reported_once_per_stall_and_not_before_the_first_volume():
    m = RunMonitor(MonitorLimits(tr_s=2.0, stall_trs=2.0))
    assert m.idle(100.0) == []  # waiting for the scanner is not a stall
    m.handle(_tel(0), now=0.0)
    assert m.idle(3.9) == []
    assert len(_alarms(m.idle(4.1))) == 1 and m.idle(9.0) == []
    m.handle(_tel(1), now=10.0)
    assert len(_alarms(m.idle(15.0))) == 1


def test_scores_gaps_and_summary():
    m = RunMonitor()
    lines = m.handle(ScoreHeader(trial=1, score=80.0, likelihood=0.8, n_valid_scans=6, volume=9,
                                 t_file_complete=100.0, t_sent=100.004), now=0.0)
    assert lines == ["trial   1  score  80.0  likelihood 0.800  valid scans 6  vol 9"]
    lines = m.handle(ScoreHeader(trial=2, score=None, n_valid_scans=0, volume=19, flags="no_valid_scans"), now=0.0)
    assert lines[0].startswith("trial   2  NO FEEDBACK")
    assert m.handle(EventHeader(name="gap", data={"missing": [12, 13], "before": 14}), now=0.0) == [
        f"{ALARM} volumes 12, 13 missing (declared before volume 14)"]
    f = m.figures()
    assert (f["trials"], f["no_feedback"], f["score_mean"], f["missing"], f["alarms"]) == (2, 1, 80.0, 2, 1)
    assert f["score_latency_p50_ms"] == pytest.approx(4.0, abs=1e-3)


def test_display_and_agent_events():
    m = RunMonitor()
    assert m.handle(EventHeader(name="trigger", data={"scan": 4, "missed": []}), now=0.0) == []
    assert _alarms(m.handle(EventHeader(name="trigger", data={"scan": 7, "missed": [5, 6]}), now=0.0))
    assert "WATCHDOG" in m.handle(EventHeader(name="watchdog_trip", data={"reason": "stalled"}), now=0.0)[0]
    assert m.handle(EventHeader(name="device_ack", data={"trial": 1, "state": "delivered"}), now=0.0) == []
    assert _alarms(m.handle(EventHeader(name="device_ack", data={"trial": 2, "state": "refused", "detail": "ISI"}), now=0.0))
    f = m.figures()
    assert (f["triggers"], f["missed_triggers"]) == (2, 2)


def _wait_for(proc: subprocess.Popen, text: str, lines: list[str], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        lines.append(line.rstrip("\n"))
        if text in line:
            return
    raise AssertionError(f"{text!r} not seen; got {lines[-5:]}")


def test_monitor_process_on_the_real_engine_stream(forrest, tmp_path):
    """The engine core runs the real run with volume 40 lost and the head moved 1, 2, 3 mm at
    volumes 60-62; the messages go out on a real ReliablePublisher exactly as `decnef engine`
    publishes them; a `decnef monitor` started half-way first catches up from the replay
    endpoint, then follows live, and reports what the engine found."""
    from runtime.transport import ReliablePublisher

    data, affine = forrest
    ep = endpoints_toml()
    cfg = config(ep)
    moved = {60: np.array([1.0, 0, 0]), 61: np.array([2.0, 0, 0]), 62: np.array([3.0, 0, 0])}
    _, results, end = run_core(cfg, make_bundle(data, affine), data, affine, skip={40}, moved=moved)
    messages = []
    for r in results:  # the order of runtime.engine.process.Engine._emit
        messages += [s.header for s in r.scores] + list(r.events) + ([r.telemetry] if r.telemetry else [])
    messages += [s.header for s in end]
    messages.append(EventHeader(name="engine_end", data={"reason": "last scan of the protocol"}))
    telemetry = [h for h in messages if isinstance(h, TelemetryHeader)]
    cfg_path = tmp_path / "session.toml"
    cfg_path.write_text(PROTOCOL + ep, encoding="utf-8")
    pub = ReliablePublisher(cfg.endpoints.scores, cfg.endpoints.scores_replay, None, stream="engine")
    half = len(messages) // 2
    try:
        for h in messages[:half]:
            pub.publish(h)
        proc = subprocess.Popen([sys.executable, "-m", "runtime.cli.main", "monitor", "--config", str(cfg_path),
                                 "--json", str(tmp_path / "monitor.json"), "--timeout", "60"],
                                stdout=subprocess.PIPE, text=True)
        lines: list[str] = []
        try:
            _wait_for(proc, f"vol {telemetry[len(telemetry) // 3].volume:4d}", lines)  # caught up from replay
            for h in messages[half:]:
                pub.publish(h)
                time.sleep(0.001)
            lines += proc.stdout.read().splitlines()  # to EOF: the monitor exits at engine_end (or --timeout)
            proc.wait(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
    finally:
        pub.close()
    assert proc.returncode == 0
    assert [int(ln.split()[1]) for ln in lines if ln.startswith("vol ")] == [h.volume for h in telemetry]
    alarms = _alarms(lines)
    assert f"{ALARM} volumes 40 missing (declared before volume 41)" in alarms
    assert any("NG scans in a row (volumes 60-62)" in a for a in alarms)
    assert any(a.startswith(f"{ALARM} head is 3.0 mm from the template at volume 62") for a in alarms)
    assert sum(ln.startswith("trial ") for ln in lines) == 7
    figures = json.loads((tmp_path / "monitor.json").read_text())  # 100 scans: 1 discarded, 1 lost
    assert figures["volumes"] == len(telemetry) == 98 and figures["missing"] == 1 and figures["trials"] == 7
    assert figures["ng"] == sum(h.ng for h in telemetry) >= 4  # 60-62 moved, 63 moved back
    assert figures["ended"] == "last scan of the protocol"
    assert figures["fd_max_mm"] == pytest.approx(max(h.framewise_displacement for h in telemetry))


def test_monitor_bad_arguments_are_one_line(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("[quality]\nfd_threshold_mm = 'high'\n", encoding="utf-8")
    for argv in (["--config", str(bad)], ["--timeout", "-1"]):
        r = subprocess.run([sys.executable, "-m", "runtime.cli.main", "monitor", *argv],
                           capture_output=True, text=True, timeout=60)
        assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr
