"""`decnef display`: the PsychoPy feedback display, locked to scanner triggers.

PsychoPy and everything in `stimulus.display` are imported inside `run()`, so `decnef --help`
and the other commands never pay for them.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", metavar="CFG", help="session config (TOML); default: built-in defaults")
    parser.add_argument(
        "--simulate-triggers", metavar="TR", type=float, default=None,
        help="internal trigger clock every TR seconds instead of the scanner (headless runs, demos)",
    )
    parser.add_argument(
        "--scores", metavar="FILE",
        help="scores from a TSV (columns trial, score; optional available_at_scan) instead of the engine's ZeroMQ stream",
    )
    parser.add_argument("--screenshots", metavar="DIR", help="save a PNG at every screen change (scan-NNNN_<screen>.png)")
    parser.add_argument("--output", metavar="DIR", help="output root (default: output.root of the config)")
    parser.add_argument("--max-scans", metavar="N", type=int, default=None, help="stop after N scans")
    parser.add_argument(
        "--overwrite", action="store_true",
        help="start the run's events.tsv afresh even if it exists (default: resume an interrupted run)",
    )
    parser.add_argument("--no-events", action="store_true", help="do not publish display events on endpoints.events")


def run(args: argparse.Namespace) -> int:
    from runtime.config import load_config
    from runtime.errors import UserError
    from runtime.outputs import run_file
    from runtime.protocol import build_table

    cfg = load_config(args.config)
    table = build_table(cfg.protocol, origin=args.config or "config")
    if args.max_scans is not None and args.max_scans < 1:
        raise UserError(f"--max-scans: expected a number of scans >= 1, got {args.max_scans}")
    if args.scores and not Path(args.scores).is_file():
        raise UserError(f"--scores: {args.scores}: no such file")

    from stimulus.display.events_log import EventsLog, read_previous
    from stimulus.display.scores import FileScores

    path = run_file(cfg, "events.tsv", args.output)
    previous = None if args.overwrite else read_previous(path)
    if previous is not None and previous.finished:
        raise UserError(f"{path}: this run is already complete (run_end or panic logged); pass --overwrite to record it again")
    if previous is not None and previous.rows == 0:
        previous = None
    score_source = FileScores(args.scores, table, run=cfg.session.run) if args.scores else None

    from stimulus.display.app import DisplayApp, open_window

    win = open_window(cfg)
    triggers = scores = log = publisher = None
    try:
        triggers = _trigger_source(cfg, args, win)
        if score_source is not None:
            scores = score_source
        else:
            from runtime.transport import load_keys
            from stimulus.display.scores import ZmqScores

            curve = load_keys(cfg.path(cfg.endpoints.curve_keys) if cfg.endpoints.curve_keys else None, "client")
            scores = ZmqScores(cfg.endpoints.scores, cfg.endpoints.scores_replay, curve=curve)
        publisher, publish = (None, None) if args.no_events else _event_publisher(cfg, args)
        log = EventsLog(path, append=previous is not None)
        app = DisplayApp(
            cfg, table, win=win, triggers=triggers, scores=scores, log=log,
            tr=args.simulate_triggers, screenshots=args.screenshots, max_scans=args.max_scans,
            publish=publish, resume=previous,
        )
        status = app.run()
    finally:
        for thing in (triggers, scores, log, publisher):
            if thing is not None:
                try:
                    thing.close()
                except Exception:
                    pass
        win.close()
    counter = app.counter
    shown = {k: v for k, v in app.book.shown.items()}
    print(
        f"decnef display: {'ABORTED by panic key' if status else 'run complete'}: "
        f"{counter.n_received} triggers ({counter.n_missed} missed), "
        f"{sum(v is not None for v in shown.values())}/{len(shown)} feedback screens with a score; "
        f"events: {path}"
    )
    return status


def _trigger_source(cfg, args, win):
    from psychopy import core

    from stimulus.display.triggers import KeyTriggers, SerialTriggers, SimulatedTriggers

    if args.simulate_triggers is not None:
        return SimulatedTriggers(args.simulate_triggers, core.getTime)
    if cfg.display.trigger_serial:
        return SerialTriggers(cfg.display.trigger_serial, core.getTime, baudrate=cfg.display.trigger_baud)
    return KeyTriggers(cfg.display.trigger_key)


def _event_publisher(cfg, args):
    """Publish display events (trigger, onset, rating, panic) for the agent's watchdog.

    A display that cannot bind the events endpoint still runs (the participant's feedback
    matters more), but says so loudly: the agent will not hear a panic from it.
    """
    from runtime.messages import EventHeader
    from runtime.outputs import run_file
    from runtime.transport import ReliablePublisher, load_keys

    curve = load_keys(cfg.path(cfg.endpoints.curve_keys) if cfg.endpoints.curve_keys else None, "server")
    try:
        pub = ReliablePublisher(
            cfg.endpoints.events, cfg.endpoints.events_replay, run_file(cfg, "journal", args.output),
            stream="display_events", curve=curve,
        )
    except OSError as exc:
        print(f"decnef display: WARNING: not publishing events ({exc}); a panic key press will not reach the agent", file=sys.stderr)
        return None, None

    def publish(name: str, data: dict) -> None:
        pub.publish(EventHeader(name=name, run=cfg.session.run, session=cfg.session.session, data=data))

    return pub, publish
