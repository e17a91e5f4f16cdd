"""`decnef engine`: the online engine role (volumes in, scores/telemetry/events out).

Restart it with the same config after a crash: it resumes from its own outputs and the
streamer's replay endpoint (runtime.engine.recovery).
"""

from __future__ import annotations

import argparse
import sys


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", "-c", default=None, help="session config (TOML); default: built-in defaults")
    parser.add_argument("--output", "-o", default=None, help="output root (default: the config's output.root)")
    parser.add_argument("--grace", type=float, default=1.0,
                        help="seconds the score replay server stays up after the run ends (default 1)")


def run(args: argparse.Namespace) -> int:
    from runtime.config import load_config
    from runtime.engine.process import run_engine

    cfg = load_config(args.config)

    def log(line: str) -> None:
        print(line, flush=True)

    summary = run_engine(cfg, output_root=args.output, log=log, end_grace_s=max(0.0, args.grace))
    sys.stdout.flush()
    return 130 if summary.ended_by == "interrupted" else 0
