"""`decnef agent`: the co-adaptive agent role (scores in, stimuli out within hard limits).

Restart it with the same config after a crash: it rebuilds the learner from `*_agent.tsv`,
the budget and last onset from `*_device.tsv`, commands baseline first and catches up on the
score stream (stimulus.agent.process).
"""

from __future__ import annotations

import argparse
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", "-c", default=None, help="session config (TOML) with [agent] enabled and a [stimulator]")
    parser.add_argument("--output", "-o", default=None, help="output root (default: the config's output.root)")
    parser.add_argument("--port", default=None, help="stimulator serial port (overrides stimulator.port)")
    parser.add_argument("--port-file", type=Path, default=None,
                        help="read the serial port from this file once it exists (an emulated thermode's pty)")
    parser.add_argument("--time-scale", type=float, default=1.0,
                        help="simulated seconds per wall second for guard and watchdog (simulated/emulated devices only)")


def run(args: argparse.Namespace) -> int:
    from runtime.config import load_config
    from stimulus.agent.process import run_agent, wait_for_port_file

    cfg = load_config(args.config)
    port = args.port
    if args.port_file is not None:
        port = wait_for_port_file(args.port_file)

    def log(line: str) -> None:
        print(line, flush=True)

    summary = run_agent(cfg, output_root=args.output, time_scale=args.time_scale, port=port, log=log)
    return 130 if summary.ended_by == "interrupted" else 0
