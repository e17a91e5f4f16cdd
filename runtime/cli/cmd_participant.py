"""`decnef participant`: the virtual participant of the co-adaptive pain loop (sim_scanner.participant).

    decnef participant --config CFG --watch DIR [--speed X] [--port-file F]   day 2: closed loop
    decnef participant --config CFG --day1 DIR                                  day 1: sham run only
"""

from __future__ import annotations

import argparse
import signal
import threading
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", "-c", default=None, help="session config (TOML) with [simulation.participant]")
    parser.add_argument("--watch", type=Path, default=None, help="scanner export folder to write volumes into (day 2)")
    parser.add_argument("--day1", type=Path, default=None, metavar="DIR",
                        help="write the sham decoder-construction run (DICOM, events.tsv, ROI mask) into DIR and exit")
    parser.add_argument("--speed", type=float, default=None,
                        help="simulated seconds per wall second (default: simulation.participant.time_scale)")
    parser.add_argument("--port-file", type=Path, default=None, help="write the emulated thermode's serial port here")
    parser.add_argument("--output", "-o", default=None, help="output root for participant.tsv (default: output.root)")
    parser.add_argument("--linger", type=float, default=30.0,
                        help="seconds the thermode stays up after the last scan, unless stopped (default 30)")


def run(args: argparse.Namespace) -> int:
    from runtime.config import load_config
    from runtime.errors import UserError
    from sim_scanner.participant import run_participant, simulate_day1

    cfg = load_config(args.config)

    def log(line: str) -> None:
        print(line, flush=True)

    if args.day1 is not None:
        simulate_day1(cfg, args.day1, log=log)
        return 0
    if args.watch is None:
        raise UserError("--watch: expected the scanner export folder to write volumes into (or --day1 DIR)")
    args.watch.mkdir(parents=True, exist_ok=True)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    summary = run_participant(cfg, args.watch, speed=args.speed, port_file=args.port_file, output_root=args.output,
                              stop_event=stop, log=log, linger_s=max(0.0, args.linger))
    return 0 if summary.ended_by in ("all scans written", "stopped") else 1
