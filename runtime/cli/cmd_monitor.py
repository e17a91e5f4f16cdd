"""`decnef monitor [--config CFG]`: the operator's live view of a run, from any machine.

Subscribes to the engine's stream (Clone pattern: from seq 0, so a monitor started late or
restarted first shows what it missed) and, with `--events`, to the display's / agent's events.
It only reads: stopping or restarting it never affects the run.
"""

from __future__ import annotations

import argparse
import json
import signal
import time
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", type=Path, default=None, help="session config (TOML): endpoints, CURVE keys, TR and NG thresholds")
    parser.add_argument("--endpoint", default=None, help="engine PUB endpoint (default: endpoints.scores)")
    parser.add_argument("--replay-endpoint", default=None, help="engine replay endpoint (default: endpoints.scores_replay)")
    parser.add_argument("--events", action="store_true",
                        help="also watch endpoints.events (display triggers, panic; agent actions) and agent.events if set")
    parser.add_argument("--trials-only", action="store_true", help="no line per volume: trials, alarms and the summary")
    parser.add_argument("--timeout", type=float, default=None, help="stop after this many seconds without any message")
    parser.add_argument("--json", type=Path, default=None, help="write the run summary figures to this JSON file at the end")


def _subscribers(cfg, args):
    from runtime.transport import ReliableSubscriber, load_keys

    ep = cfg.endpoints
    curve = load_keys(cfg.path(ep.curve_keys) if ep.curve_keys else None, "client")
    subs = [ReliableSubscriber(args.endpoint or ep.scores, args.replay_endpoint or ep.scores_replay, start_seq=0, curve=curve)]
    if args.events:
        pairs = [(ep.events, ep.events_replay)]
        if cfg.agent.events and cfg.agent.events_replay:
            pairs.append((cfg.agent.events, cfg.agent.events_replay))
        subs += [ReliableSubscriber(p, r, start_seq=0, curve=curve) for p, r in pairs]
    return subs


def run(args: argparse.Namespace) -> int:
    from runtime.config import load_config
    from runtime.errors import UserError
    from runtime.monitor import MonitorLimits, RunMonitor

    if args.timeout is not None and not args.timeout > 0:
        raise UserError(f"--timeout: expected seconds > 0, got {args.timeout:g}")
    cfg = load_config(args.config)
    q = cfg.quality
    monitor = RunMonitor(MonitorLimits(fd_threshold_mm=q.fd_threshold_mm, corr_threshold=q.corr_threshold,
                                       tr_s=cfg.protocol.tr), show_volumes=not args.trials_only)
    stop = {"flag": False}

    def _stop(signum, frame):
        stop["flag"] = True

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    subs = _subscribers(cfg, args)
    print(f"decnef monitor: {subs[0].pub_endpoint} (replay {subs[0].replay_endpoint})"
          + "".join(f" + events {s.pub_endpoint}" for s in subs[1:]), flush=True)
    last_msg = time.monotonic()
    reason = "stopped"
    try:
        while not stop["flag"]:
            got = False
            for sub in subs:  # one thread owns every socket; each waits briefly in turn
                msg = sub.recv(100 // len(subs))
                if msg is None:
                    continue
                got = True
                for line in monitor.handle(msg[0], time.monotonic()):
                    print(line, flush=True)
            now = time.monotonic()
            if got:
                last_msg = now
            else:
                for line in monitor.idle(now):
                    print(line, flush=True)
            if monitor.ended:
                reason = f"engine ended ({monitor.ended})"
                break
            if args.timeout is not None and now - last_msg >= args.timeout:
                reason = f"no message for {args.timeout:g} s"
                break
    finally:
        for sub in subs:
            sub.close()
    print(f"decnef monitor: {reason}", flush=True)
    for line in monitor.summary():
        print(f"  {line}", flush=True)
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        figures = {k: (None if isinstance(v, float) and v != v else v) for k, v in monitor.figures().items()}
        args.json.write_text(json.dumps(figures, indent=1) + "\n", encoding="utf-8")
    return 0
