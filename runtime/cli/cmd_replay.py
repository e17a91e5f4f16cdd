"""`decnef replay SRC --to DIR`: replay a DICOM series or 4D NIfTI into a folder at the TR,
with optional faults (the scanner stand-in; the code lives in sim_scanner.replay)."""

from __future__ import annotations

import argparse
import signal
import sys
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("src", type=Path, help="DICOM folder (any layout) or 4D NIfTI (.nii/.nii.gz)")
    parser.add_argument("--to", type=Path, required=True, help="folder to write into (the streamer's watch folder)")
    parser.add_argument("--tr", type=float, default=None, help="seconds between volumes (default: from the data, else 2.0)")
    parser.add_argument("--speed", type=float, default=1.0, help="speed-up factor (2 = twice as fast as real time)")
    parser.add_argument("--write", choices=("chunked", "rename"), default="rename",
                        help="chunked: write each file in pieces (watchers see half files); rename: temp name + rename")
    parser.add_argument("--faults", default="", help="e.g. drop=0.05,duplicate=0.05,reorder=0.05,delay=0.05,"
                        "truncate=0.02,corrupt=0.02,junk=0.1 or drop:12,37")
    parser.add_argument("--fault-log", type=Path, default=None, help="TSV of every injected fault (volume, fault, file, time, detail)")
    parser.add_argument("--seed", type=int, default=0, help="random seed for the fault plan")
    parser.add_argument("--start", type=int, default=0, help="first source volume (position in temporal order)")
    parser.add_argument("--count", type=int, default=None, help="number of source volumes to replay")
    parser.add_argument("--repeat", type=int, default=1, help="loop over the source N times (renumbered, new UIDs)")
    parser.add_argument("--delay-trs", type=int, default=3, help="how many TRs a 'delay' fault holds a volume back")
    parser.add_argument("--series", default=None, help="series number, description or UID in a multi-series folder")
    parser.add_argument("--layout", choices=("mosaic", "slice", "enhanced"), default="mosaic",
                        help="DICOM layout for a NIfTI source")
    parser.add_argument("--quiet", action="store_true", help="no line per volume")


def run(args: argparse.Namespace) -> int:
    from runtime.errors import UserError
    from sim_scanner.faults import parse_fault_spec
    from sim_scanner.replay import load_source, replay

    if not args.src.exists():
        raise UserError(f"{args.src}: no such file or folder")
    if args.start < 0 or (args.count is not None and args.count < 1) or args.repeat < 1:
        raise UserError("--start must be >= 0, --count and --repeat >= 1")
    spec = parse_fault_spec(args.faults)
    source = load_source(args.src, series=args.series, layout=args.layout, tr=args.tr)
    stopping = {"flag": False}

    def _term(signum, frame):  # SIGTERM: stop after the current volume
        stopping["flag"] = True

    signal.signal(signal.SIGTERM, _term)
    tr = args.tr if args.tr is not None else (source.tr or 2.0)
    print(f"replaying {source.description}: {len(source.volumes)} volumes, TR {tr:g} s / speed {args.speed:g} "
          f"-> {args.to}", flush=True)

    def _line(index: int, paths: list, t: float) -> None:
        if not args.quiet:
            print(f"volume {index:4d}  {len(paths)} file(s)", flush=True)

    flog = replay(source, args.to, tr=args.tr, speed=args.speed, write=args.write, faults=spec,
                  fault_log=args.fault_log, seed=args.seed, start=args.start, count=args.count,
                  repeat=args.repeat, delay_trs=args.delay_trs, on_volume=_line,
                  stop=lambda: stopping["flag"])
    faults = [r for r in flog.rows]
    counts: dict[str, int] = {}
    for r in faults:
        counts[r[1]] = counts.get(r[1], 0) + 1
    summary = ", ".join(f"{k} {v}" for k, v in sorted(counts.items())) or "none"
    print(f"replay done; faults injected: {summary}", file=sys.stdout, flush=True)
    return 0
