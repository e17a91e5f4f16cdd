"""`decnef stream`: watch a scanner export folder and publish volumes on ZeroMQ."""

from __future__ import annotations

import argparse
import logging
import signal
import threading
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", type=Path, default=None, help="session config (TOML); flags override it")
    parser.add_argument("--watch", type=Path, default=None, help="export folder to watch (default: scanner.watch_dir, ./incoming)")
    parser.add_argument("--endpoint", default=None, help="PUB endpoint (default: endpoints.volumes)")
    parser.add_argument("--replay-endpoint", default=None, help="replay endpoint (default: endpoints.volumes_replay)")
    parser.add_argument("--journal", type=Path, default=None,
                        help="journal folder: makes a restart (even after kill -9) continue without loss or repeats")
    parser.add_argument("--count", type=int, default=None,
                        help="volumes in the run: end the run (end_of_run message) once indices 0..N-1 are published or missing")
    parser.add_argument("--idle-end", type=float, default=None, help="end the run after this many seconds without new files")
    parser.add_argument("--gap-timeout", type=float, default=None, help="override scanner.gap_timeout (seconds)")
    parser.add_argument("--poll-interval", type=float, default=None, help="override scanner.poll_interval (seconds)")
    parser.add_argument("--no-events", action="store_true", help="poll only (as on a network share without file events)")
    parser.add_argument("--series", type=int, default=None, help="override scanner.series_number")
    parser.add_argument("--echo", type=int, default=None, help="override scanner.echo (multi-echo: the echo published, 1 = first)")
    parser.add_argument("-v", "--verbose", action="store_true", help="log dropped duplicates and other details")


def run(args: argparse.Namespace) -> int:
    import msgspec

    from runtime.config import load_config
    from runtime.errors import UserError
    from runtime.ingest import run_streamer

    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for name in ("watchdog", "runtime.transport.zap"):
        logging.getLogger(name).setLevel(logging.WARNING)
    cfg = load_config(args.config)
    overrides = {}
    if args.gap_timeout is not None:
        overrides["gap_timeout"] = args.gap_timeout
    if args.poll_interval is not None:
        overrides["poll_interval"] = args.poll_interval
    if args.series is not None:
        overrides["series_number"] = args.series
    if args.echo is not None:
        overrides["echo"] = args.echo
    if args.no_events:
        overrides["use_file_events"] = False
    if overrides:
        try:
            scanner = msgspec.convert(dict(msgspec.to_builtins(cfg.scanner), **overrides), type(cfg.scanner))
        except msgspec.ValidationError as exc:
            raise UserError(f"stream flags: {exc}") from None
        cfg = msgspec.structs.replace(cfg, scanner=scanner)
    if args.count is not None and args.count < 1:
        raise UserError("--count must be >= 1")
    watch = args.watch if args.watch is not None else cfg.path(cfg.scanner.watch_dir)
    endpoints = (args.endpoint or cfg.endpoints.volumes, args.replay_endpoint or cfg.endpoints.volumes_replay)
    for ep in endpoints:
        if not ep.startswith(("tcp://", "ipc://", "inproc://")):
            raise UserError(f"endpoint {ep!r}: expected tcp://HOST:PORT")

    stop = threading.Event()

    def _stop(signum, frame):
        stop.set()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)

    def _line(header, vol) -> None:
        lat = (header.t_sent - header.t_file_complete) * 1000.0
        gap = f"  (after gap {header.gap_before})" if header.gap_before else ""
        shape = "x".join(map(str, header.shape))
        print(f"volume {header.index:4d}  seq {header.seq:5d}  {shape}  ingest {lat:6.2f} ms{gap}", flush=True)

    print(f"decnef stream: watching {watch} -> {endpoints[0]} (replay {endpoints[1]})"
          f"{', journal ' + str(args.journal) if args.journal else ''}", flush=True)
    try:
        stats = run_streamer(cfg, Path(watch), endpoints, args.journal, stop, count=args.count,
                             idle_end=args.idle_end, on_volume=_line)
    except OSError as exc:
        raise UserError(str(exc)) from None
    print(f"decnef stream: {stats.summary()}", flush=True)
    return 0
