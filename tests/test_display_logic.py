"""Display parts that need no window: geometry, trigger counting (incl. serial TTL over a
pseudo-terminal), score sources (file and real ZeroMQ with replay), the score book's
late/stale rules and the BIDS events writer."""

from __future__ import annotations

import csv
import os
import socket
import threading
import time
from pathlib import Path

import pytest

from runtime.config import ProtocolConfig, TrialConfig
from runtime.errors import UserError
from runtime.messages import ScoreHeader
from runtime.protocol import build_table
from stimulus.display import geometry as G
from stimulus.display.events_log import EventsLog, read_previous, sidecar_path
from stimulus.display.scores import (
    DUPLICATE,
    LATE,
    ON_TIME,
    OTHER_RUN,
    FileScores,
    ScoreBook,
    ZmqScores,
)
from stimulus.display.triggers import KeyTriggers, SerialTriggers, SimulatedTriggers, TriggerCounter

PROTO = ProtocolConfig(
    tr=0.1, discard_scans=1, baseline_scans=1, n_trials=3, end_scans=1, window_start=0, window_end=0,
    trial=TrialConfig(rest_scans=1, induction_scans=1, delay_scans=0, calc_scans=1, feedback_scans=2),
)


# -- geometry ------------------------------------------------------------------------------
def test_disc_radius_follows_e14():
    assert [G.disc_radius(s, 300) for s in (0, 25, 50, 75, 100)] == [0, 75, 150, 225, 300]
    assert G.disc_radius(33.3, 300) == 100  # round(99.9)
    assert G.disc_radius(150, 300) == 300 and G.disc_radius(-5, 300) == 0  # clipped, never huge
    with pytest.raises(ValueError):
        G.disc_radius(float("nan"), 300)


def test_mean_reward_and_rating_steps():
    assert G.mean_score([80, None, 40]) == 60
    assert G.mean_score([None, None]) is None
    assert G.reward(60, 10) == 600 and G.reward(None, 10) == 0
    assert G.step_rating(10, 1) == 10 and G.step_rating(0, -1) == 0 and G.step_rating(5, 1) == 6
    assert G.rating_x(0, 200) == -100 and G.rating_x(10, 200) == 100 and G.rating_x(5, 200) == 0


# -- triggers ------------------------------------------------------------------------------
def test_counter_infers_missed_triggers_from_intervals():
    c = TriggerCounter(tr=2.0)
    ticks = [c.register(t) for t in (10.0, 12.01, 13.98, 18.0, 20.1, 26.0)]
    assert [t.scan for t in ticks] == [0, 1, 2, 4, 5, 8]
    assert ticks[3].missed == (3,) and ticks[5].missed == (6, 7)
    assert c.n_missed == 3 and c.n_received == 6


def test_counter_rejects_a_doubled_pulse_and_resumes_from_origin():
    c = TriggerCounter(tr=2.0)
    c.register(0.0)
    assert c.register(0.3) is None and c.n_rejected == 1
    assert c.register(2.0).scan == 1
    r = TriggerCounter(tr=2.0, origin=100.0, last_scan=6)
    tick = r.register(100.0 + 12 * 2.0 + 0.2)  # display restarted; scanner at scan 12
    assert tick.scan == 12 and tick.resumed == (7, 8, 9, 10, 11) and tick.missed == ()


def test_simulated_triggers_follow_their_schedule_and_drop():
    now = [0.0]
    sim = SimulatedTriggers(0.5, lambda: now[0], lead=1.0, drop={2})
    assert sim.poll() == []
    now[0] = 2.6  # scheduled at 1.0, 1.5, (2.0 dropped), 2.5
    assert sim.poll() == [1.0, 1.5, 2.5]
    c = TriggerCounter(0.5)
    assert [c.register(t).scan for t in [1.0, 1.5, 2.5]] == [0, 1, 3]
    late = SimulatedTriggers(0.5, lambda: now[0], start=0.0)  # a scanner already running
    assert late.poll() == []  # nothing from the past
    now[0] = 3.0
    assert late.poll() == [3.0]


def test_key_triggers_take_only_their_key():
    k = KeyTriggers("5")
    assert k.offer("5", 1.0) and not k.offer("num_5", 1.1) and not k.offer("1", 1.2)
    assert k.poll() == [1.0] and k.poll() == []


def test_serial_ttl_bytes_over_a_pseudo_terminal():
    master, slave = os.openpty()
    try:
        trig = SerialTriggers(os.ttyname(slave), time.monotonic, baudrate=115200)
        sent = []
        for _ in range(4):
            sent.append(time.monotonic())
            os.write(master, b"5")
            time.sleep(0.05)
        deadline = time.monotonic() + 2.0
        got: list[float] = []
        while len(got) < 4 and time.monotonic() < deadline:
            got += trig.poll()
            time.sleep(0.01)
        trig.close()
        assert len(got) == 4
        assert all(g >= s for g, s in zip(got, sent, strict=True))  # stamped on arrival
        counter = TriggerCounter(0.05)
        assert [counter.register(t).scan for t in got][0] == 0
    finally:
        os.close(master)
        os.close(slave)


def test_serial_port_that_cannot_open_is_a_user_error():
    with pytest.raises(UserError, match="display.trigger_serial"):
        SerialTriggers("/dev/does-not-exist-ttyX", time.monotonic)


# -- scores --------------------------------------------------------------------------------
def _write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def test_file_scores_release_at_their_scan(tmp_path):
    table = build_table(PROTO)
    calc = [t.calc_scan for t in table.trials]
    f = _write(tmp_path / "s.tsv", "trial\tscore\tavailable_at_scan\tlikelihood\n1\t70\t\t0.7\n2\tn/a\t\t\n3\t40\t99\t0.4\n")
    src = FileScores(f, table)
    assert src.poll(calc[0] - 1) == []
    first = src.poll(calc[0])
    assert [(h.trial, h.score, h.likelihood) for h in first] == [(1, 70.0, 0.7)]
    assert [(h.trial, h.score) for h in src.poll(calc[2])] == [(2, None)]  # n/a = no feedback
    assert [h.trial for h in src.poll(99)] == [3]


@pytest.mark.parametrize(
    "text, match",
    [
        ("trial\tvalue\n1\t3\n", "columns 'trial' and 'score'"),
        ("trial\tscore\n1\tabc\n", "line 2"),
        ("trial\tscore\n1\t140\n", "outside 0-100"),
        ("trial\tscore\n9\t40\n", "trial 9 is not in the protocol"),
    ],
)
def test_bad_scores_file_is_one_line_user_error(tmp_path, text, match):
    with pytest.raises(UserError, match=match):
        FileScores(_write(tmp_path / "bad.tsv", text), build_table(PROTO))


def test_score_book_never_shows_a_late_or_stale_score():
    book = ScoreBook({1, 2, 3}, run=1)
    assert book.receive(ScoreHeader(trial=1, score=60.0), 0.0) == ON_TIME
    assert book.receive(ScoreHeader(trial=1, score=61.0), 0.1) == DUPLICATE
    assert book.receive(ScoreHeader(trial=2, score=10.0, run=2), 0.1) == OTHER_RUN
    assert book.open(1).score == 60.0
    assert book.open(2) is None  # nothing in time: "no feedback"
    assert book.receive(ScoreHeader(trial=2, score=90.0), 0.2) == LATE
    assert book.shown == {1: 60.0, 2: None}  # the late 90 never became shown
    assert book.close_passed([3]) == [3]
    assert book.receive(ScoreHeader(trial=3, score=50.0), 0.3) == LATE


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_zmq_scores_catch_up_from_replay_after_a_restart():
    from runtime.transport import ReliablePublisher

    pub_ep, rep_ep = f"tcp://127.0.0.1:{_free_port()}", f"tcp://127.0.0.1:{_free_port()}"
    with ReliablePublisher(pub_ep, rep_ep, None, stream="scores") as pub:
        for k, s in [(1, 55.0), (2, None)]:
            pub.publish(ScoreHeader(trial=k, score=s, run=1))  # before the display exists
        src = ZmqScores(pub_ep, rep_ep)
        try:
            got: list[ScoreHeader] = []
            deadline = time.monotonic() + 5.0
            while len(got) < 3 and time.monotonic() < deadline:
                got += src.poll(0)  # non-blocking: the loop goes on while nothing has come
                if len(got) == 2 and pub.last_seq == 1:
                    pub.publish(ScoreHeader(trial=3, score=80.0, run=1))  # live
                time.sleep(0.01)
        finally:
            src.close()
    assert [(h.trial, h.score) for h in got] == [(1, 55.0), (2, None), (3, 80.0)]


# -- events.tsv ----------------------------------------------------------------------------
def test_events_log_is_bids_and_appends(tmp_path):
    path = tmp_path / "func" / "sub-01_ses-01_task-decnef_run-1_events.tsv"
    log = EventsLog(path)
    log.write(99.0, "waiting")  # before the first trigger: held back
    assert path.read_text().count("\n") == 1
    log.set_zero(100.0)
    log.write_sidecar(1.7e9, {"RepetitionTime": 2.0})
    log.write(100.0, "trigger", scan=0, trial=0)
    log.write(102.25, "feedback", duration=2.0, score=75.0, scan=1, trial=1)
    log.close()
    rows = list(csv.DictReader(path.open(), delimiter="\t"))
    assert list(rows[0]) == ["onset", "duration", "trial_type", "score", "response", "scan", "trial", "note"]
    assert [(r["onset"], r["trial_type"]) for r in rows] == [("-1", "waiting"), ("0", "trigger"), ("2.25", "feedback")]
    assert rows[2]["score"] == "75" and rows[2]["response"] == "n/a" and rows[2]["duration"] == "2"
    prev = read_previous(path)
    assert prev.first_trigger_wall == 1.7e9 and prev.last_scan == 0 and not prev.finished
    assert "trial_type" in sidecar_path(path).read_text()
    again = EventsLog(path, append=True)
    again.set_zero(100.0)
    again.write(104.0, "run_end", scan=2)
    again.close()
    text = path.read_text()
    assert text.count("onset\t") == 1 and read_previous(path).finished


def test_events_rows_are_on_disk_as_they_happen(tmp_path):
    path = tmp_path / "e.tsv"
    log = EventsLog(path)
    log.set_zero(0.0)
    seen = []

    def reader():
        seen.append(path.read_text().count("\n"))

    for k in range(3):
        log.write(float(k), "trigger", scan=k)
        th = threading.Thread(target=reader)
        th.start()
        th.join()
    assert seen == [2, 3, 4]  # header + rows, each visible before close
    log.close()
