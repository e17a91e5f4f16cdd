"""`decnef train CONFIG [--output BUNDLE]`: build a decoder bundle from localizer runs."""

from __future__ import annotations

import argparse
import sys


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", help="session config with a [train] section (runs, events, classes, ...)")
    parser.add_argument("--output", "-o", default=None,
                        help="bundle path to write (default: decoder.bundle of the config); report.json goes beside it")
    parser.add_argument("--quiet", "-q", action="store_true", help="print only the final summary")


def run(args: argparse.Namespace) -> int:
    from runtime.config import load_config
    from runtime.train import train

    cfg = load_config(args.config)

    def log(msg: str) -> None:
        if not args.quiet:
            print(f"train: {msg}", flush=True)

    res = train(cfg, args.output, log=log)
    r = res.report
    p = r.get("permutation_p")
    print(f"cv_accuracy {r['cv_accuracy']:.3f}  cv_auc {r['cv_auc']:.3f}  voxels {r['n_selected_voxels']}  "
          f"permutation_p {p if p is not None else 'n/a'}  -> {res.bundle_path}", file=sys.stdout, flush=True)
    return 0
