"""`decnef convert DICOM_DIR OUT.nii.gz [--series N]`: offline DICOM -> 4D NIfTI + sidecar.

Uses the same assembly code as the online streamer (runtime.dicom), so what you convert is
what the engine would have seen.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from runtime.errors import UserError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("dicom_dir", help="folder holding the DICOM files of a run (one level, no recursion)")
    parser.add_argument("out", help="output NIfTI path (.nii or .nii.gz); the JSON sidecar is written beside it")
    parser.add_argument(
        "--series",
        default=None,
        help="series to convert (SeriesNumber, SeriesInstanceUID or SeriesDescription); default: the one with most volumes",
    )


def run(args: argparse.Namespace) -> int:
    from runtime.dicom import read_series
    from runtime.nifti_io import save_4d, sidecar_for, sidecar_path

    logging.basicConfig(level=logging.WARNING, format="decnef convert: warning: %(message)s", stream=sys.stderr)
    src = Path(args.dicom_dir)
    if not src.is_dir():
        raise UserError(f"{src}: not a folder (expected a folder of DICOM files)")
    out = Path(args.out)
    if not (out.name.endswith(".nii") or out.name.endswith(".nii.gz")):
        raise UserError(f"{out}: expected an output path ending in .nii or .nii.gz")
    series = args.series
    if series is not None and str(series).strip().isdigit():
        series = int(series)
    vols = read_series(src, series=series)
    shapes = {v.shape for v in vols}
    if len(shapes) > 1:
        raise UserError(f"{src}: volumes of the series differ in shape ({sorted(shapes)}); cannot write one 4D NIfTI")
    try:
        save_4d(vols, out, sidecar_for(vols))
    except OSError as exc:
        raise UserError(f"{out}: cannot write ({exc.strerror or exc})") from exc
    v0 = vols[0]
    zooms = "x".join(f"{z:.3g}" for z in v0.zooms)
    tr = f"{v0.tr:.4g} s" if v0.tr else "unknown"
    vendor = v0.manufacturer or "unknown vendor"
    print(
        f"{out}: {len(vols)} volumes, shape {'x'.join(map(str, v0.shape))}, voxel {zooms} mm, TR {tr}, "
        f"{vendor}, series {v0.series_number} '{v0.series_description}' (sidecar {sidecar_path(out).name})"
    )
    return 0
