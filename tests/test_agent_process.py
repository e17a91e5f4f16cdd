"""The `decnef agent` role against a fake engine (real ZeroMQ on 127.0.0.1) and the emulated
TCS II on a real pseudo-terminal: stimuli at the trial onsets, learning from scores, watchdog
aborts (stall, engine killed mid-stimulus, display panic, device error), restart after SIGKILL.

Guard, watchdog and emulator run on a scaled clock (`time.monotonic() × SCALE`), which the agent
only allows because the device is a pseudo-terminal."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import msgspec
import pytest

from runtime.config import parse_config
from runtime.errors import UserError
from runtime.messages import TOPIC_EVENT, EventHeader, ScoreHeader, TelemetryHeader
from runtime.outputs import read_tsv, run_file
from runtime.protocol import build_table
from runtime.supervisor import with_free_endpoints, write_config
from runtime.transport import ReliablePublisher, ReliableSubscriber
from sim_scanner.emulators import TCS2Emulator
from stimulus.agent.process import (
    Agent,
    check_time_scale,
    is_pseudo_terminal,
    read_device_history,
    run_agent,
    scaled_clock,
)

SCALE = 8.0
TESTS = Path(__file__).resolve().parent

BASE = """
[protocol]
tr = 2.0
discard_scans = 1
baseline_scans = 2
n_trials = {n_trials}
window_start = 3
window_end = 3
end_scans = 0
[protocol.trial]
rest_scans = 0
induction_scans = 2
delay_scans = 2
calc_scans = 1
feedback_scans = 1
[agent]
enabled = true
learning_rate = 0.3
inverse_temperature = 5.0
seed = 3
[stimulator]
kind = "tcs2"
plateau_s = {plateau}
watchdog_tr = {watchdog_tr}
[display]
enabled = {display}
"""


def make_cfg(n_trials: int = 5, plateau: float = 2.0, watchdog_tr: float = 3.0, display: bool = False, port: str = ""):
    cfg = with_free_endpoints(parse_config(BASE.format(n_trials=n_trials, plateau=plateau, watchdog_tr=watchdog_tr,
                                                       display=str(display).lower())))
    if display:  # the display owns endpoints.events: the agent publishes on its own endpoints
        from runtime.supervisor import free_loopback_ports

        a, b = free_loopback_ports(2)
        cfg = msgspec.structs.replace(cfg, agent=msgspec.structs.replace(
            cfg.agent, events=f"tcp://127.0.0.1:{a}", events_replay=f"tcp://127.0.0.1:{b}"))
    if port:
        cfg = msgspec.structs.replace(cfg, stimulator=msgspec.structs.replace(cfg.stimulator, port=port))
    return cfg


def fake_engine(cfg, scale: float, *, emu=None, stall_after: int | None = None, stop: threading.Event | None = None,
                forever: bool = False, start_delay: float = 0.5) -> None:
    """Telemetry every TR (from the first kept scan), a score at every calc scan with P(high)
    0.85 / 0.15 for the last stimulus the thermode delivered, engine_end at the end. With
    `stall_after`, goes silent after that scan (a stalled or dead engine)."""
    table = build_table(cfg.protocol)
    ep = cfg.endpoints
    stop = stop or threading.Event()
    pub = ReliablePublisher(ep.scores, ep.scores_replay, None, stream="scores")
    try:
        time.sleep(start_delay)
        tw = cfg.protocol.tr / scale
        t0 = time.monotonic()
        v = 0
        while forever or v < table.n_scans:
            wake = t0 + (v + 1) * tw
            while time.monotonic() < wake and not stop.is_set():
                time.sleep(0.005)
            if stop.is_set():
                return
            if stall_after is not None and v > stall_after:
                stop.wait()
                return
            trial = table.trial_at_calc(v)
            if trial is not None:
                high = bool(emu is not None and emu.stimuli and emu.stimuli[-1].target_c > 43)
                pub.publish(ScoreHeader(trial=trial.number, likelihood=0.85 if high else 0.15,
                                        score=15.0 if high else 85.0, volume=v))
            if v >= cfg.protocol.discard_scans:
                pub.publish(TelemetryHeader(volume=v))
            v += 1
        pub.publish(EventHeader(name="engine_end", data={"reason": "last scan of the protocol"}))
        stop.wait(1.5)  # keep the replay server up for late subscribers
    finally:
        pub.close()


def fake_engine_main(cfg_path: str, scale: str) -> None:
    """Entry point for a fake engine in its own process (to be SIGKILLed)."""
    from runtime.config import load_config

    fake_engine(load_config(cfg_path), float(scale), forever=True, start_delay=0.2)


@pytest.fixture
def emulator():
    emu = TCS2Emulator(clock=scaled_clock(SCALE), stream_period_s=1.0).start()
    yield emu
    emu.stop()


def start_engine(cfg, emu, **kw):
    stop = threading.Event()
    th = threading.Thread(target=fake_engine, args=(cfg, SCALE), kwargs=dict(emu=emu, stop=stop, **kw), daemon=True)
    th.start()
    return th, stop


def run_in_thread(cfg, out: Path):
    """run_agent in a thread; returns (thread, stop, result holder)."""
    stop = threading.Event()
    res: dict = {}
    lines: list[str] = []

    def target():
        res["summary"] = run_agent(cfg, output_root=out, time_scale=SCALE, stop_event=stop, log=lines.append)

    th = threading.Thread(target=target, daemon=True)
    th.start()
    return th, stop, res, lines


def wait_until(cond, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


def valid_c_commands(emu) -> list[int]:
    return [int(c[2:]) for c in emu.commands() if c.startswith("C")]


# ---------------------------------------------------------------------------------------------
def test_closed_loop_delivers_at_onsets_logs_and_publishes(tmp_path, emulator):
    cfg = make_cfg(n_trials=5, port=emulator.port)
    table = build_table(cfg.protocol)
    names: list[str] = []
    done = threading.Event()

    def listen():  # the agent's event stream, read while it runs
        with ReliableSubscriber(cfg.endpoints.events, cfg.endpoints.events_replay, topics=[TOPIC_EVENT]) as sub:
            while not done.is_set() and names.count("agent_reward") < 5:
                m = sub.recv(50)
                if m is not None:
                    names.append(m[0].name)

    listener = threading.Thread(target=listen, daemon=True)
    listener.start()
    eng, eng_stop = start_engine(cfg, emulator)
    summary = run_agent(cfg, output_root=tmp_path, time_scale=SCALE, log=lambda m: None)
    eng_stop.set()
    eng.join(5)
    done.set()
    listener.join(5)

    assert summary.trips == []
    stim = list(emulator.stimuli)
    assert len(stim) == 5, "one stimulus per trial"
    onsets = [s.onset for s in stim]
    # 12 simulated seconds apart (6 scans of 2 s), never closer than the ISI limit
    gaps = [b - a for a, b in zip(onsets, onsets[1:], strict=False)]
    assert all(10.0 <= g <= 14.0 for g in gaps), gaps
    assert emulator.malformed() == []
    assert emulator.om_c == 50.0 and all(c <= 500 for c in valid_c_commands(emulator))
    assert {s.target_c for s in stim} <= {40.0, 46.0}

    rows = read_tsv(run_file(cfg, "agent.tsv", tmp_path))
    assert [int(r["trial"]) for r in rows] == [1, 2, 3, 4, 5]
    for r, s in zip(rows, stim, strict=True):
        assert float(r["stimulus_level"]) == s.target_c
        assert float(r["reward"]) == pytest.approx(0.15 if s.target_c > 43 else 0.85)
        assert r["device_ack"].startswith("ok tcs2")
    # E18 between consecutive rows: value_a(k+1) = value_a(k) + 0.3 * (r - value_a(k))
    for a, b in zip(rows, rows[1:], strict=False):
        act = int(a["action"])
        q = float(a[f"value_{act}"])
        assert float(b[f"value_{act}"]) == pytest.approx(q + 0.3 * (float(a["reward"]) - q), abs=1e-5)

    dev = read_tsv(run_file(cfg, "device.tsv", tmp_path))
    ev = [r["event"] for r in dev]
    assert ev.index("start_run") < ev.index("trial") and ev.count("trial") == 5 and ev.count("ack") == 5
    assert dev[ev.index("baseline")]["level_c"] == "32.0"

    assert names.count("agent_action") == 5 and names.count("device_command") == 5
    assert names.count("device_ack") == 5 and names.count("agent_reward") == 5
    # delivered at the first induction scan: the telemetry of the scan before it had arrived
    assert all(table.trials[k].induction.start >= 3 for k in range(5))


def test_watchdog_aborts_when_scores_stop_for_2_tr(tmp_path, emulator):
    cfg = make_cfg(n_trials=4, plateau=8.0, watchdog_tr=2.0, port=emulator.port)
    onset1 = build_table(cfg.protocol).trials[0].induction.start
    eng, eng_stop = start_engine(cfg, emulator, stall_after=onset1)  # silent right after trial 1's onset
    th, stop, res, lines = run_in_thread(cfg, tmp_path)
    try:
        wait_until(lambda: any("WATCHDOG" in line for line in lines), 20, "the watchdog to trip")
    finally:
        stop.set()
        eng_stop.set()
        th.join(10)
        eng.join(5)
    s = emulator.stimuli[0]
    assert s.aborted_at is not None, "the 8-s stimulus was cut short"
    stall = s.aborted_at - s.onset
    assert 2 * 2.0 <= stall < 8.0  # after 2 TR (4 simulated s) without a message, before the plateau ended
    cmds = emulator.commands()
    assert "A" in cmds[cmds.index("L"):] and cmds[-1] == "N320"
    assert emulator.temperature() == pytest.approx(32.0)
    assert "loop stalled" in res["summary"].trips[0]
    dev = read_tsv(run_file(cfg, "device.tsv", tmp_path))
    aborts = [r["detail"] for r in dev if r["event"] == "abort"]
    assert aborts[0].startswith("watchdog: loop stalled")


def test_engine_killed_while_stimulus_on_aborts(tmp_path, emulator):
    cfg = make_cfg(n_trials=4, plateau=8.0, watchdog_tr=2.0, port=emulator.port)
    cfg_path = write_config(cfg, tmp_path / "session.toml")
    code = f"import sys; sys.path.insert(0, {str(TESTS)!r}); from test_agent_process import fake_engine_main; fake_engine_main({str(cfg_path)!r}, {str(SCALE)!r})"
    engine = subprocess.Popen([sys.executable, "-c", code])
    th, stop, res, lines = run_in_thread(cfg, tmp_path / "out")
    try:
        wait_until(lambda: len(emulator.stimuli) >= 1, 30, "the first stimulus")
        time.sleep(0.1)
        engine.send_signal(signal.SIGKILL)  # the engine dies while the thermode is hot
        engine.wait(5)
        wait_until(lambda: any("WATCHDOG" in line for line in lines), 10, "the watchdog to trip")
    finally:
        if engine.poll() is None:
            engine.kill()
        stop.set()
        th.join(10)
    s = emulator.stimuli[0]
    assert len(emulator.stimuli) == 1
    assert s.aborted_at is not None and s.aborted_at - s.onset < 8.0
    assert "A" in emulator.commands()[-4:]
    assert "loop stalled" in res["summary"].trips[0]


def test_display_panic_event_aborts_and_latches(tmp_path, emulator):
    cfg = make_cfg(n_trials=4, plateau=8.0, watchdog_tr=3.0, display=True, port=emulator.port)
    eng, eng_stop = start_engine(cfg, emulator)
    display = ReliablePublisher(cfg.endpoints.events, cfg.endpoints.events_replay, None, stream="display")
    th, stop, res, lines = run_in_thread(cfg, tmp_path)
    try:
        wait_until(lambda: len(emulator.stimuli) >= 1, 20, "the first stimulus")
        display.publish(EventHeader(name="panic", data={"scan": 4, "trial": 1}))
        wait_until(lambda: emulator.stimuli[0].aborted_at is not None, 5, "the abort")
        th.join(40)  # the run goes on (latched): later trials are refused, not delivered
    finally:
        stop.set()
        eng_stop.set()
        display.close()
        th.join(10)
        eng.join(5)
    assert len(emulator.stimuli) == 1
    assert emulator.stimuli[0].aborted_at - emulator.stimuli[0].onset < 8.0
    assert "panic" in res["summary"].trips[0]
    rows = read_tsv(run_file(cfg, "agent.tsv", tmp_path))
    assert len(rows) == 4 and all(r["device_ack"].startswith("refused") for r in rows[1:])
    assert all(r["reward"] in ("", "n/a") for r in rows[1:]), "no learning from stimuli never delivered"


def test_device_error_aborts(tmp_path, emulator):
    cfg = make_cfg(n_trials=4, plateau=8.0, watchdog_tr=3.0, port=emulator.port)
    eng, eng_stop = start_engine(cfg, emulator)
    th, stop, res, lines = run_in_thread(cfg, tmp_path)
    try:
        wait_until(lambda: len(emulator.stimuli) >= 1, 20, "the first stimulus")
        emulator.inject_zone_error(2)
        wait_until(lambda: any("WATCHDOG" in line for line in lines), 10, "the watchdog to trip")
    finally:
        stop.set()
        eng_stop.set()
        th.join(10)
        eng.join(5)
    assert emulator.stimuli[0].aborted_at is not None
    assert "device error" in res["summary"].trips[0]


def test_agent_killed_restarts_at_baseline_and_resumes_from_agent_tsv(tmp_path, emulator):
    cfg = make_cfg(n_trials=8, port=emulator.port)
    cfg_path = write_config(cfg, tmp_path / "session.toml")
    out = tmp_path / "out"
    agent_tsv = run_file(cfg, "agent.tsv", out)
    eng, eng_stop = start_engine(cfg, emulator)
    cmd = [sys.executable, "-m", "runtime.cli.main", "agent", "--config", str(cfg_path), "--output", str(out),
           "--time-scale", str(SCALE)]
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    first_log = (tmp_path / "first.log").open("w")
    first = subprocess.Popen(cmd, stdout=first_log, stderr=subprocess.STDOUT, env=env)
    try:
        wait_until(lambda: len(read_tsv(agent_tsv)) >= 2, 60, "two logged trials")
        first.send_signal(signal.SIGKILL)
        first.wait(5)
        n_before = len(emulator.received)
        second = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=90)
    finally:
        if first.poll() is None:
            first.kill()
        eng_stop.set()
        eng.join(5)
    assert second.returncode == 0, second.stdout + second.stderr
    assert "resumed after trial" in second.stdout
    after = [r.text for r in emulator.received[n_before:]]
    # first thing on restart: configure (F, Om, N), then baseline (A, N) - before any stimulus
    assert after[:3] == ["F", "Om500", "N320"]
    assert after.index("A") < after.index("L") if "L" in after else "A" in after
    rows = read_tsv(agent_tsv)
    trials = [int(r["trial"]) for r in rows]
    assert trials == list(range(1, 9)), trials
    dev = read_tsv(run_file(cfg, "device.tsv", out))
    marks = [r["detail"].split()[0] for r in dev if r["event"] == "trial"]
    assert len(marks) == len(set(marks)), "no trial delivered twice"
    assert [r["event"] for r in dev].count("start_run") == 1 and any(r["event"] == "resume" for r in dev)
    hist = read_device_history(run_file(cfg, "device.tsv", out))
    assert hist.budget_used_s > 0 and hist.latched is None
    # the learner was rebuilt: E18 holds across the restart for every rewarded row
    for a, b in zip(rows, rows[1:], strict=False):
        if a["reward"] in ("", "n/a"):
            continue
        act = int(a["action"])
        q = float(a[f"value_{act}"])
        assert float(b[f"value_{act}"]) == pytest.approx(q + 0.3 * (float(a["reward"]) - q), abs=1e-5)
    onsets = [s.onset for s in emulator.stimuli]
    assert all(b - a >= 10.0 for a, b in zip(onsets, onsets[1:], strict=False))


def test_time_scale_refused_with_a_real_device(tmp_path, emulator):
    real = make_cfg(port="/dev/ttyACM0").stimulator
    with pytest.raises(UserError, match="only allowed with a simulated or emulated"):
        check_time_scale(real, 4.0)
    check_time_scale(real, 1.0)
    assert is_pseudo_terminal(emulator.port) and not is_pseudo_terminal("/dev/ttyACM0")
    check_time_scale(make_cfg(port=emulator.port).stimulator, 4.0)
    with pytest.raises(UserError):
        Agent(make_cfg(port="/dev/ttyUSB0"), output_root=tmp_path, time_scale=4.0)
    assert emulator.received == [], "refused before touching any device"
    cfg_path = write_config(make_cfg(port="/dev/ttyUSB0"), tmp_path / "s.toml")
    proc = subprocess.run([sys.executable, "-m", "runtime.cli.main", "agent", "--config", str(cfg_path),
                           "--output", str(tmp_path), "--time-scale", "4"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and "real time" in proc.stderr
