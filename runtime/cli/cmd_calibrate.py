"""`decnef calibrate --config CFG --rest SRC --out REF.json`: percentile reference for E13.

Runs a resting-state run (DICOM folder or 4D NIfTI) through the engine's own feature path with
the session's decoder bundle and protocol, over sliding windows as long as the protocol's score
window, and writes the mean and SD of the decoder's linear term (runtime/percentile.py). Then set
`decoder.score = "percentile"` and `decoder.percentile_reference = "REF.json"` in the config.
"""

from __future__ import annotations

import argparse
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", "-c", required=True, help="session config (decoder bundle, protocol, gates, denoise)")
    parser.add_argument("--rest", required=True, metavar="SRC", help="resting-state run: DICOM folder or 4D NIfTI")
    parser.add_argument("--out", "-o", required=True, metavar="REF.json", help="reference file to write")
    parser.add_argument("--quiet", "-q", action="store_true", help="print only the final summary")


def run(args: argparse.Namespace) -> int:
    from runtime.config import load_config
    from runtime.engine.process import load_decoder
    from runtime.errors import UserError
    from runtime.outputs import file_sha256
    from runtime.percentile import calibrate, write_reference
    from runtime.train.extract import load_volumes

    cfg = load_config(args.config)
    out = Path(args.out)
    if out.suffix.lower() != ".json":
        raise UserError(f"--out: {out}: expected a .json file name")
    if out.exists() and out.is_dir():
        raise UserError(f"--out: {out} is a folder; expected a .json file name")
    import msgspec

    # the reference being made is not checked against the bundle (it may be stale: that is why we calibrate)
    cfg = msgspec.structs.replace(cfg, decoder=msgspec.structs.replace(cfg.decoder, score="likelihood"))
    bundle, bundle_path = load_decoder(cfg)

    def log(msg: str) -> None:
        if not args.quiet:
            print(f"calibrate: {msg}", flush=True)

    src = Path(args.rest)
    vols = load_volumes(src, "--rest")
    log(f"{len(vols)} volumes from {src}; bundle {bundle_path.name} ({bundle.kind}, {len(bundle.voxels)} voxels)")
    cal = calibrate(cfg, bundle, vols, source=str(src.resolve()), log=log)
    write_reference(cal.reference, out)
    r = cal.reference
    print(f"m {r.m:.6g}  s {r.s:.6g}  windows {r.n_windows} x {r.window_scans} scans  "
          f"sha256 {file_sha256(out)[:12]}  -> {out}", flush=True)
    return 0
