"""The feedback display in a real PsychoPy window (under Xvfb when headless).

Each test runs the real frame loop on short TRs and checks what was drawn (saved frames) and
what was logged (events.tsv). Without a display these tests are skipped on a developer's
machine and FAIL in CI (CI=true): a CI run that silently skips them checks nothing.
"""

from __future__ import annotations

import csv
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from runtime.config import SessionConfig, parse_config
from runtime.errors import UserError
from runtime.messages import TOPIC_EVENT, EventHeader, ScoreHeader
from runtime.protocol import build_table

pytestmark = pytest.mark.display

R_MAX = 120
SIZE = (400, 320)


def _unavailable(msg: str) -> None:
    if os.environ.get("CI"):
        pytest.fail(msg)
    pytest.skip(msg)


@pytest.fixture(scope="module")
def x_display():
    """Our own 24-bit Xvfb when Xvfb is installed, else the user's display.

    Not pytest-xvfb's: its default 16-bit depth makes pyglet wait forever for the window to map.
    """
    xvfb = shutil.which("Xvfb")
    if xvfb is None:
        if os.environ.get("DISPLAY"):
            yield os.environ["DISPLAY"]
            return
        _unavailable("no X display and no Xvfb (apt-get install xvfb)")
    before = os.environ.get("DISPLAY")
    r, w = os.pipe()
    proc = subprocess.Popen(
        [xvfb, "-displayfd", str(w), "-screen", "0", "1280x1024x24", "-nolisten", "tcp"],
        pass_fds=(w,), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    os.close(w)
    with os.fdopen(r) as fh:
        number = fh.readline().strip()
    if not number:
        proc.kill()
        _unavailable("Xvfb did not start")
    os.environ["DISPLAY"] = f":{number}"
    try:
        yield os.environ["DISPLAY"]
    finally:
        if before is None:
            del os.environ["DISPLAY"]
        else:
            os.environ["DISPLAY"] = before
        proc.terminate()
        proc.wait(10)


def make_cfg(extra: str = "", proto: str = "", tr: float = 0.1) -> SessionConfig:
    text = f"""
[protocol]
tr = {tr}
discard_scans = 1
baseline_scans = 1
n_trials = {proto or 7}
end_scans = 1
window_start = 0
window_end = 0

[protocol.trial]
rest_scans = 2
induction_scans = 1
delay_scans = 0
calc_scans = 1
feedback_scans = 2

[display]
size = [{SIZE[0]}, {SIZE[1]}]
max_radius_px = {R_MAX}
end_screen_s = 0.1
{extra}
"""
    return parse_config(text, origin="test.toml")


@pytest.fixture(scope="module")
def win(x_display):
    try:
        import psychopy  # noqa: F401
    except ImportError:
        _unavailable("PsychoPy is not installed (pip install -e '.[display]')")
    from stimulus.display.app import open_window

    try:
        w = open_window(make_cfg())
    except UserError as exc:
        _unavailable(str(exc))
    yield w
    w.close()


def read_events(path: Path) -> list[dict[str, str]]:
    with path.open(encoding="utf-8") as fh:
        return list(csv.DictReader(fh, delimiter="\t"))


def run_app(cfg, win, tmp: Path, *, triggers=None, scores=None, hooks=(), max_scans=None,
            publish=None, resume=None, screenshots=True, append=False):
    from psychopy import core

    from stimulus.display.app import DisplayApp
    from stimulus.display.events_log import EventsLog
    from stimulus.display.scores import FileScores
    from stimulus.display.triggers import SimulatedTriggers

    table = build_table(cfg.protocol)
    if scores is None:
        (tmp / "none.tsv").write_text("trial\tscore\n")
        scores = FileScores(tmp / "none.tsv", table)
    triggers = triggers or SimulatedTriggers(cfg.protocol.tr, core.getTime)
    log = EventsLog(tmp / "events.tsv", append=append)
    app = DisplayApp(cfg, table, win=win, triggers=triggers, scores=scores, log=log,
                     screenshots=tmp / "shots" if screenshots else None, max_scans=max_scans,
                     publish=publish, resume=resume, frame_hooks=list(hooks))
    return app


def press(app, name: str) -> None:
    from pyglet.window import key

    symbol = {"escape": key.ESCAPE}.get(name) or getattr(key, f"_{name}")
    app.win.winHandle.dispatch_event("on_key_press", symbol, 0)


# -- measuring saved frames -------------------------------------------------------------------
def _rgb(png: Path) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.open(png).convert("RGB")).astype(int)


def disc_mask(a: np.ndarray) -> np.ndarray:
    """Pixels of the feedback fill colour (blue; rgb -1, 0.2, 1)."""
    return (a[..., 2] > 200) & (a[..., 0] < 60) & (a[..., 1] > 110) & (a[..., 1] < 190)


def measured_radius(png: Path) -> float:
    """Half the disc's extent along the horizontal and vertical lines through the centre."""
    m = disc_mask(_rgb(png))
    h, w = m.shape
    out = []
    for line in (m[h // 2 - 1], m[h // 2], m[:, w // 2 - 1], m[:, w // 2]):
        idx = np.flatnonzero(line)
        out.append((idx.max() - idx.min() + 1) / 2 if idx.size else 0.0)
    return max(out)


def is_grey(px: np.ndarray) -> bool:
    return bool(abs(px[0] - px[1]) < 12 and abs(px[1] - px[2]) < 12 and 90 < px[0] < 170)


# -- one run exercises disc sizes, missing and late scores, ratings -------------------------------
SCORES = {1: 0, 2: 25, 3: 50, 4: 75, 5: 100}  # trial 6: no row; trial 7: arrives late
MAIN_TR = 0.15


@pytest.fixture(scope="module")
def main_run(win, tmp_path_factory):
    from stimulus.display.scores import FileScores

    tmp = tmp_path_factory.mktemp("main")
    cfg = make_cfg("rating = true", tr=MAIN_TR)
    table = build_table(cfg.protocol)
    late_at = table.trials[6].feedback.start  # published at the scan its feedback opens: too late
    lines = ["trial\tscore\tavailable_at_scan"] + [f"{k}\t{v}\t" for k, v in SCORES.items()] + [f"7\t90\t{late_at}"]
    (tmp / "scores.tsv").write_text("\n".join(lines) + "\n")
    frames: list[tuple[int, str, float | None, int]] = []
    answers = {1: ["2", "2", "3"], 2: ["1", "3"]}  # trial 1 -> 7, trial 2 -> 4, others time out

    def record(app):
        frames.append((app.scan, app.screen, app.screens.score, app._trial))

    def answer(app):  # all of a trial's key presses in one frame, read in order
        r = app.rating
        if r is not None and r.t_onset is not None and answers.get(r.trial):
            for name in answers.pop(r.trial):
                press(app, name)

    app = run_app(cfg, win, tmp, scores=FileScores(tmp / "scores.tsv", table), hooks=[record, answer])
    status = app.run()
    return {"app": app, "status": status, "rows": read_events(tmp / "events.tsv"), "tmp": tmp,
            "table": table, "frames": frames, "cfg": cfg}


@pytest.mark.parametrize("trial", sorted(SCORES))
def test_disc_radius_in_the_saved_frame(main_run, trial):
    fb = main_run["table"].trials[trial - 1].feedback.start
    png = main_run["tmp"] / "shots" / f"scan-{fb:04d}_feedback.png"
    assert png.exists(), sorted(p.name for p in (main_run["tmp"] / "shots").iterdir())
    expected = R_MAX * SCORES[trial] / 100
    assert abs(measured_radius(png) - expected) <= 2, (measured_radius(png), expected)


def test_reference_circles_and_fixation_dot(main_run):
    fb = main_run["table"].trials[1].feedback.start  # score 25: disc inside both circles
    a = _rgb(main_run["tmp"] / "shots" / f"scan-{fb:04d}_feedback.png")
    h, w = a.shape[:2]
    row = a[h // 2]
    assert any(is_grey(row[w // 2 + R_MAX + d]) for d in range(-2, 2))
    assert any(is_grey(row[w // 2 + R_MAX // 2 + d]) for d in range(-2, 2))
    assert (a[h // 2, w // 2] > 240).all()  # white fixation dot on top of the disc


def test_missing_score_shows_no_feedback(main_run):
    rows, table = main_run["rows"], main_run["table"]
    fb = table.trials[5].feedback.start
    png = main_run["tmp"] / "shots" / f"scan-{fb:04d}_no_feedback.png"
    assert png.exists() and not disc_mask(_rgb(png)).any()
    nf = [r for r in rows if r["trial_type"] == "no_feedback" and r["trial"] == "6"]
    assert len(nf) == 1 and nf[0]["score"] == "n/a" and nf[0]["note"] == "score not received in time"


def test_late_score_is_logged_and_never_shown(main_run):
    rows, frames = main_run["rows"], main_run["frames"]
    late = [r for r in rows if r["trial_type"] == "late_score"]
    assert [(r["trial"], r["score"]) for r in late] == [("7", "90")]
    assert [r["trial"] for r in rows if r["trial_type"] == "no_feedback"] == ["6", "7"]
    trial7 = [f for f in frames if f[3] == 7 or f[0] >= main_run["table"].trials[6].feedback.start]
    assert trial7 and all(screen != "feedback" and score is None for _, screen, score, _ in trial7)
    assert 7 not in {k for k, v in main_run["app"].book.shown.items() if v is not None}


def test_triggers_and_screens_logged_against_the_first_trigger(main_run):
    rows, table = main_run["rows"], main_run["table"]
    assert main_run["status"] == 0
    trig = [r for r in rows if r["trial_type"] == "trigger"]
    n = table.n_scans  # the scanner may go on while the end screen is up: those are logged too
    assert [int(r["scan"]) for r in trig][:n] == list(range(n))
    assert all(abs(float(r["onset"]) - MAIN_TR * int(r["scan"])) < 1e-3 for r in trig)  # scheduled clock
    assert not [r for r in rows if r["trial_type"] == "missed_trigger"]
    onset_of_trigger = {int(r["scan"]): float(r["onset"]) for r in trig}
    screens = [r for r in rows if r["trial_type"] in ("fixation", "iti", "induction", "feedback", "no_feedback")]
    assert all(float(r["onset"]) >= onset_of_trigger[int(r["scan"])] for r in screens)
    first_ind = table.trials[0].induction.start
    assert any(r["trial_type"] == "induction" and int(r["scan"]) == first_ind for r in screens)
    assert rows[0]["trial_type"] == "waiting" and float(rows[0]["onset"]) < 0


def test_ratings_recorded(main_run):
    ratings = {r["trial"]: r for r in main_run["rows"] if r["trial_type"] == "rating"}
    assert ratings["1"]["response"] == "7" and ratings["2"]["response"] == "4"
    assert ratings["3"]["response"] == "n/a" and "not confirmed" in ratings["3"]["note"]
    assert float(ratings["1"]["duration"]) > 0
    assert main_run["app"].ratings[1] == 7


def test_end_screen_mean_score_and_reward(main_run):
    rows = main_run["rows"]
    end = [r for r in rows if r["trial_type"] == "end"]
    assert len(end) == 1 and float(end[0]["score"]) == 50.0  # mean of 0, 25, 50, 75, 100
    assert "reward 500 JPY" in end[0]["note"]
    assert rows[-1]["trial_type"] == "run_end"
    assert main_run["app"].screens.end_text.text.startswith("Mean score: 50")


def test_thermometer_bar(win, tmp_path):
    from stimulus.display.scores import FileScores

    cfg = make_cfg('feedback = "bar"', proto="1")
    table = build_table(cfg.protocol)
    (tmp_path / "s.tsv").write_text("trial\tscore\n1\t60\n")
    app = run_app(cfg, win, tmp_path, scores=FileScores(tmp_path / "s.tsv", table))
    assert app.run() == 0
    m = disc_mask(_rgb(tmp_path / "shots" / f"scan-{table.trials[0].feedback.start:04d}_feedback.png"))
    col = np.flatnonzero(m[:, m.shape[1] // 2])
    assert abs(col.size - round(0.6 * 2 * R_MAX)) <= 2


# -- trigger sources ------------------------------------------------------------------------------
def _trigger_rows(rows):
    return [int(r["scan"]) for r in rows if r["trial_type"] == "trigger"], [
        int(r["scan"]) for r in rows if r["trial_type"] == "missed_trigger"
    ]


def test_key_triggers_counted_with_a_missed_one(win, tmp_path):
    from psychopy import core

    from stimulus.display.triggers import KeyTriggers

    tr = 0.2
    cfg = make_cfg(proto="1", tr=tr)
    sched = {"t0": None, "k": 0}

    def scanner(app):  # the trigger box types '5' every TR; the pulse of scan 3 is lost
        now = core.getTime()
        if sched["t0"] is None:
            sched["t0"] = now + tr
        while sched["t0"] + sched["k"] * tr <= now:
            if sched["k"] != 3:
                press(app, "5")
            sched["k"] += 1

    app = run_app(cfg, win, tmp_path, triggers=KeyTriggers("5"), hooks=[scanner], max_scans=7, screenshots=False)
    assert app.run() == 0
    got, missed = _trigger_rows(read_events(tmp_path / "events.tsv"))
    assert got[:6] == [0, 1, 2, 4, 5, 6] and missed == [3]
    assert app.counter.n_missed == 1


def test_serial_ttl_triggers_over_a_pseudo_terminal(win, tmp_path):
    from psychopy import core

    from stimulus.display.triggers import SerialTriggers

    tr = 0.2
    cfg = make_cfg(proto="1", tr=tr)
    master, slave = os.openpty()
    stop = threading.Event()

    def ttl():  # one byte per pulse; pulse 2 lost
        k = 0
        while not stop.is_set() and k < 40:
            if k != 2:
                os.write(master, b"\x01")
            k += 1
            time.sleep(tr)

    th = threading.Thread(target=ttl, daemon=True)
    try:
        trig = SerialTriggers(os.ttyname(slave), core.getTime)
        app = run_app(cfg, win, tmp_path, triggers=trig, max_scans=6, screenshots=False)
        th.start()
        assert app.run() == 0
    finally:
        stop.set()
        th.join(5)
        os.close(master)
        os.close(slave)
    got, missed = _trigger_rows(read_events(tmp_path / "events.tsv"))
    assert got[:5] == [0, 1, 3, 4, 5] and missed == [2]


# -- panic --------------------------------------------------------------------------------------
def _free_endpoint() -> str:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"tcp://127.0.0.1:{s.getsockname()[1]}"


def test_panic_key_aborts_logs_and_publishes(win, tmp_path):
    from runtime.cli.cmd_display import _event_publisher
    from runtime.transport import ReliableSubscriber

    ev, ev_rep = _free_endpoint(), _free_endpoint()
    cfg = make_cfg(f'[endpoints]\nevents = "{ev}"\nevents_replay = "{ev_rep}"', proto="2")

    class Args:
        output = str(tmp_path / "out")

    pub, publish = _event_publisher(cfg, Args)
    assert pub is not None
    sub = ReliableSubscriber(ev, ev_rep, topics=[TOPIC_EVENT])
    try:
        def panic(app):
            if app.scan >= 3:
                press(app, "escape")

        app = run_app(cfg, win, tmp_path, hooks=[panic], publish=publish, screenshots=False)
        assert app.run() == 1 and app.aborted
        names: list[str] = []
        deadline = time.monotonic() + 5
        while "panic" not in names and time.monotonic() < deadline:
            msg = sub.recv(100)
            if msg is not None and isinstance(msg[0], EventHeader):
                names.append(msg[0].name)
    finally:
        sub.close()
        pub.close()
    rows = read_events(tmp_path / "events.tsv")
    assert rows[-1]["trial_type"] == "panic" and int(rows[-1]["scan"]) >= 3
    assert "panic" in names and names.count("trigger") >= 4
    from stimulus.display.events_log import read_previous

    assert read_previous(tmp_path / "events.tsv").finished  # a panicked run is not resumed


# -- restart mid-run ------------------------------------------------------------------------------
def test_restarted_display_resumes_and_never_shows_stale_scores(win, tmp_path):
    from psychopy import core

    from runtime.transport import ReliablePublisher
    from stimulus.display.events_log import read_previous
    from stimulus.display.scores import ZmqScores
    from stimulus.display.triggers import SimulatedTriggers

    tr = 0.2
    cfg = parse_config(
        f"""
[protocol]
tr = {tr}
discard_scans = 1
baseline_scans = 1
n_trials = 3
end_scans = 1
window_start = 0
window_end = 0
[protocol.trial]
rest_scans = 4
induction_scans = 1
delay_scans = 0
calc_scans = 1
feedback_scans = 2
[display]
size = [{SIZE[0]}, {SIZE[1]}]
max_radius_px = {R_MAX}
end_screen_s = 0.1
""",
        origin="restart.toml",
    )
    table = build_table(cfg.protocol)
    t2, t3 = table.trials[1], table.trials[2]
    pub_ep, rep_ep = _free_endpoint(), _free_endpoint()
    engine_scores = {1: 30.0, 2: 60.0, 3: 90.0}
    published: set[int] = set()

    with ReliablePublisher(pub_ep, rep_ep, None, stream="scores") as engine:

        def engine_hook(app):  # the engine publishes each trial's score at its score scan
            for t in table.trials:
                if app.scan >= t.calc_scan and t.number not in published:
                    engine.publish(ScoreHeader(trial=t.number, score=engine_scores[t.number], run=1))
                    published.add(t.number)

        class Crash(Exception):
            pass

        def crash(app):
            if app.scan >= t2.calc_scan and 2 in published:
                raise Crash

        app1 = run_app(cfg, win, tmp_path, triggers=SimulatedTriggers(tr, core.getTime),
                       scores=ZmqScores(pub_ep, rep_ep), hooks=[engine_hook, crash], screenshots=False)
        with pytest.raises(Crash):
            app1.run()
        origin = app1.counter.origin
        # the display is down while trial 2's feedback scans pass
        while core.getTime() < origin + t2.feedback.stop * tr:
            time.sleep(0.01)
        prev = read_previous(tmp_path / "events.tsv")
        assert prev is not None and not prev.finished and prev.last_scan >= t2.calc_scan
        app2 = run_app(cfg, win, tmp_path, triggers=SimulatedTriggers(tr, core.getTime, start=origin),
                       scores=ZmqScores(pub_ep, rep_ep), hooks=[engine_hook], resume=prev,
                       screenshots=False, append=True)
        assert app2.run() == 0

    rows = read_events(tmp_path / "events.tsv")
    assert sum(1 for r in rows if r["trial_type"] == "display_start") == 2
    restart = [r for r in rows if r["trial_type"] == "display_start"][1]
    first_scan = int(restart["scan"])
    assert t2.feedback.stop <= first_scan < t3.feedback.start
    trig = [int(r["scan"]) for r in rows if r["trial_type"] == "trigger"]
    assert trig == sorted(trig) and trig[-1] >= table.n_scans - 1
    # resumed on the same time base: trigger onsets still k * TR
    assert all(abs(float(r["onset"]) - tr * int(r["scan"])) < 0.05 for r in rows if r["trial_type"] == "trigger")
    skipped = [r for r in rows if r["trial_type"] == "skipped_feedback"]
    assert [(r["trial"], r["score"]) for r in skipped] == [("2", "60")]
    shown = [(r["trial"], r["score"]) for r in rows if r["trial_type"] == "feedback"]
    assert shown == [("1", "30"), ("3", "90")]  # trial 2's score never shown
    assert all(name != "feedback" or scan >= t3.feedback.start for name, scan, _ in app2.flips)


# -- the command itself ---------------------------------------------------------------------------
def test_cli_headless_run_writes_bids_events_and_screenshots(x_display, win, tmp_path):
    (tmp_path / "cfg.toml").write_text(
        """
[session]
subject = "07"
session = "2"
task = "nf"
run = 3
[protocol]
tr = 2.0
discard_scans = 1
baseline_scans = 1
n_trials = 2
end_scans = 1
window_start = 0
window_end = 0
[protocol.trial]
rest_scans = 1
induction_scans = 1
delay_scans = 0
calc_scans = 1
feedback_scans = 1
[display]
size = [320, 240]
max_radius_px = 80
end_screen_s = 0.1
"""
    )
    (tmp_path / "scores.tsv").write_text("trial\tscore\n1\t80\n")
    cmd = [sys.executable, "-m", "runtime.cli.main", "display", "--config", str(tmp_path / "cfg.toml"),
           "--simulate-triggers", "0.1", "--scores", str(tmp_path / "scores.tsv"),
           "--screenshots", str(tmp_path / "shots"), "--output", str(tmp_path / "out"), "--no-events"]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    events = tmp_path / "out/sub-07/ses-2/func/sub-07_ses-2_task-nf_run-3_events.tsv"
    rows = read_events(events)
    assert [r["trial_type"] for r in rows if r["trial_type"] in ("feedback", "no_feedback")] == ["feedback", "no_feedback"]
    names = sorted(p.name for p in (tmp_path / "shots").iterdir())
    assert "scan-0005_feedback.png" in names and "scan-0009_no_feedback.png" in names
    assert "waiting.png" in names and any(n.endswith("_end.png") for n in names)
    assert (events.with_name(events.name.replace(".tsv", ".json"))).exists()
    again = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert again.returncode == 2 and "already complete" in again.stderr


def test_cli_bad_scores_file_is_one_line_error(tmp_path):
    (tmp_path / "bad.tsv").write_text("trial\tvalue\n")
    res = subprocess.run(
        [sys.executable, "-m", "runtime.cli.main", "display", "--scores", str(tmp_path / "bad.tsv"),
         "--simulate-triggers", "0.1", "--output", str(tmp_path / "o"), "--no-events"],
        capture_output=True, text=True, timeout=60, env={**os.environ, "DISPLAY": ""},
    )
    assert res.returncode == 2
    assert res.stderr.count("\n") == 1 and "expected a TSV with columns 'trial' and 'score'" in res.stderr



def test_cli_with_engine_scores_over_zeromq_and_events_published(x_display, win, tmp_path):
    """The production path: scores from a live ReliablePublisher (the engine's role), display
    events (triggers, onsets) published for the agent."""
    from runtime.transport import ReliablePublisher, ReliableSubscriber

    eps = {k: _free_endpoint() for k in ("scores", "scores_replay", "events", "events_replay")}
    (tmp_path / "cfg.toml").write_text(
        "[protocol]\ntr = 2.0\ndiscard_scans = 1\nbaseline_scans = 1\nn_trials = 2\nend_scans = 1\n"
        "window_start = 0\nwindow_end = 0\n"
        "[protocol.trial]\nrest_scans = 1\ninduction_scans = 1\ndelay_scans = 0\ncalc_scans = 1\nfeedback_scans = 1\n"
        "[display]\nsize = [320, 240]\nmax_radius_px = 80\nend_screen_s = 0.1\n"
        "[endpoints]\n" + "".join(f'{k} = "{v}"\n' for k, v in eps.items())
    )
    with ReliablePublisher(eps["scores"], eps["scores_replay"], None, stream="scores") as engine:
        # published before the display starts: it must catch up from the replay endpoint
        engine.publish(ScoreHeader(trial=1, score=40.0, run=1))
        engine.publish(ScoreHeader(trial=2, score=None, run=1))
        cmd = [sys.executable, "-m", "runtime.cli.main", "display", "--config", str(tmp_path / "cfg.toml"),
               "--simulate-triggers", "0.2", "--output", str(tmp_path / "out")]
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        sub = ReliableSubscriber(eps["events"], eps["events_replay"], topics=[TOPIC_EVENT])
        names: list[str] = []
        try:
            while proc.poll() is None:
                msg = sub.recv(100)
                if msg is not None:
                    names.append(msg[0].name)
            while (msg := sub.recv(500)) is not None:
                names.append(msg[0].name)
        finally:
            sub.close()
        out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    rows = read_events(tmp_path / "out/sub-01/ses-01/func/sub-01_ses-01_task-decnef_run-1_events.tsv")
    fb = [(r["trial_type"], r["trial"], r["score"]) for r in rows if r["trial_type"] in ("feedback", "no_feedback")]
    assert fb == [("feedback", "1", "40"), ("no_feedback", "2", "n/a")]
    assert names.count("trigger") >= 11 and "onset" in names and "run_end" in names


def test_trigger_key_clashing_with_rating_keys_is_a_user_error(win, tmp_path):
    cfg = make_cfg('rating = true\nrating_keys = ["5", "2", "3"]', proto="1")
    with pytest.raises(UserError, match="must all differ"):
        run_app(cfg, win, tmp_path, screenshots=False)
