"""`decnef listen --out RECEIVED.tsv`: receive the volume stream and record every volume.

A restarted listener resumes after the last seq in RECEIVED.tsv (the replay endpoint supplies
what it missed), so the file ends with every published volume exactly once.
"""

from __future__ import annotations

import argparse
import hashlib
import signal
import time
from pathlib import Path

COLUMNS = ["seq", "index", "acquisition_time", "shape", "sha1", "latency_ms", "gap_before"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", type=Path, default=None, help="session config (TOML) for endpoints / CURVE keys")
    parser.add_argument("--endpoint", default=None, help="PUB endpoint to subscribe to (default: endpoints.volumes)")
    parser.add_argument("--replay-endpoint", default=None, help="replay endpoint (default: endpoints.volumes_replay)")
    parser.add_argument("--out", type=Path, required=True, help="TSV to append received volumes to")
    parser.add_argument("--count", type=int, default=None, help="stop once the file holds N volumes")
    parser.add_argument("--timeout", type=float, default=None, help="stop after this many seconds without a volume")


def read_last_seq(path: Path) -> tuple[int, int]:
    """(last seq recorded, rows) in an existing TSV; drops a last line cut short by a kill."""
    if not path.exists() or path.stat().st_size == 0:
        return -1, 0
    data = path.read_bytes()
    if not data.endswith(b"\n"):
        cut = data.rfind(b"\n") + 1
        with open(path, "r+b") as fh:
            fh.truncate(cut)
        data = data[:cut]
    lines = [ln for ln in data.decode("utf-8").splitlines() if ln]
    if not lines or lines[0].split("\t")[0] != "seq":
        raise ValueError(f"{path}: not a decnef listen file (header {lines[:1]})")
    rows = lines[1:]
    return (int(rows[-1].split("\t")[0]) if rows else -1), len(rows)


def run(args: argparse.Namespace) -> int:
    from runtime.config import load_config
    from runtime.errors import UserError
    from runtime.messages import ControlHeader, EventHeader, VolumeHeader
    from runtime.transport import ReliableSubscriber, load_keys

    cfg = load_config(args.config)
    pub_ep = args.endpoint or cfg.endpoints.volumes
    rep_ep = args.replay_endpoint or cfg.endpoints.volumes_replay
    try:
        last_seq, rows = read_last_seq(args.out)
    except (ValueError, IndexError) as exc:
        raise UserError(str(exc)) from None
    if args.count is not None and rows >= args.count:
        print(f"decnef listen: {args.out} already holds {rows} volumes")
        return 0
    curve = load_keys(cfg.path(cfg.endpoints.curve_keys) if cfg.endpoints.curve_keys else None, "client")
    stop = {"flag": False}

    def _stop(signum, frame):
        stop["flag"] = True

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    new_file = not args.out.exists() or args.out.stat().st_size == 0
    sub = ReliableSubscriber(pub_ep, rep_ep, start_seq=last_seq + 1, curve=curve)
    got = 0
    reason = "stopped"
    print(f"decnef listen: {pub_ep} (replay {rep_ep}) from seq {last_seq + 1} -> {args.out}", flush=True)
    with open(args.out, "a", encoding="utf-8") as fh:
        if new_file:
            fh.write("\t".join(COLUMNS) + "\n")
            fh.flush()
        last_msg = time.monotonic()
        while not stop["flag"]:
            msg = sub.recv(200)
            now = time.monotonic()
            if msg is None:
                if args.timeout is not None and now - last_msg >= args.timeout:
                    reason = f"no volume for {args.timeout:g} s"
                    break
                continue
            header, payload = msg
            if isinstance(header, VolumeHeader):
                last_msg = now
                sha1 = hashlib.sha1(payload).hexdigest()
                lat = (time.time() - header.t_file_complete) * 1000.0 if header.t_file_complete else float("nan")
                acq = "" if header.acquisition_time is None else f"{header.acquisition_time:.4f}"
                shape = "x".join(map(str, header.shape))
                gaps = ",".join(map(str, header.gap_before))
                fh.write(f"{header.seq}\t{header.index}\t{acq}\t{shape}\t{sha1}\t{lat:.3f}\t{gaps}\n")
                fh.flush()
                got += 1
                rows += 1
                print(f"volume {header.index:4d}  seq {header.seq:5d}  {shape}  {lat:7.2f} ms"
                      f"{'  replayed' if sub.replayed else ''}", flush=True)
                if args.count is not None and rows >= args.count:
                    reason = f"{args.count} volumes"
                    break
            elif isinstance(header, EventHeader) and header.name == "gap":
                print(f"gap: volumes {header.data.get('indices')} missing", flush=True)
            elif isinstance(header, ControlHeader) and header.command == "end_of_run":
                reason = "end of run"
                break
    sub.close()
    print(f"decnef listen: {got} new volumes ({rows} in {args.out}); {reason}", flush=True)
    return 0
