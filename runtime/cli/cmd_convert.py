"""`decnef convert DICOM_DIR OUT.nii.gz [--series N] [--echo N]`: offline DICOM -> 4D NIfTI + sidecar.

Uses the same assembly code as the online streamer (runtime.dicom), so what you convert is
what the engine would have seen.

Multi-echo series are named as dcm2niix names them: one NIfTI per echo, OUT_e1.nii.gz,
OUT_e2.nii.gz, ..., each sidecar with its EchoNumber and EchoTime (s); `--echo N` writes only
echo N, to OUT itself.
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
    parser.add_argument(
        "--echo",
        type=int,
        default=None,
        help="multi-echo series: convert only this echo (1 = first/shortest TE) to OUT; default: every echo, as OUT_e1, OUT_e2, ...",
    )


def run(args: argparse.Namespace) -> int:
    from runtime.dicom import read_series_echoes

    logging.basicConfig(level=logging.WARNING, format="decnef convert: warning: %(message)s", stream=sys.stderr)
    src = Path(args.dicom_dir)
    if not src.is_dir():
        raise UserError(f"{src}: not a folder (expected a folder of DICOM files)")
    out = Path(args.out)
    if not (out.name.endswith(".nii") or out.name.endswith(".nii.gz")):
        raise UserError(f"{out}: expected an output path ending in .nii or .nii.gz")
    if args.echo is not None and args.echo < 1:
        raise UserError(f"--echo {args.echo}: expected an echo number >= 1")
    series = args.series
    if series is not None and str(series).strip().isdigit():
        series = int(series)
    echoes = read_series_echoes(src, series=series)
    multi = len(echoes) > 1
    if args.echo is not None:
        if args.echo not in echoes:
            raise UserError(f"{src}: --echo {args.echo}: the series has echo(es) {', '.join(map(str, echoes))}")
        _write(src, echoes[args.echo], out, multi or args.echo > 1)
    elif multi or min(echoes) > 1:
        for e, vols in echoes.items():
            _write(src, vols, _echo_path(out, e), True)
    else:
        _write(src, next(iter(echoes.values())), out, False)
    return 0


def _echo_path(out: Path, echo: int) -> Path:
    """dcm2niix's multi-echo name: `_e<n>` before the extension (echo 1 included)."""
    for ext in (".nii.gz", ".nii"):
        if out.name.endswith(ext):
            return out.with_name(f"{out.name[: -len(ext)]}_e{echo}{ext}")
    return out.with_name(f"{out.name}_e{echo}")


def _write(src: Path, vols: list, out: Path, tell_echo: bool) -> None:
    """One 4D NIfTI + sidecar; `tell_echo` adds EchoNumber to the sidecar (as dcm2niix does for
    a multi-echo series, or a lone echo > 1)."""
    from runtime.nifti_io import save_4d, sidecar_for, sidecar_path

    shapes = {v.shape for v in vols}
    if len(shapes) > 1:
        raise UserError(f"{src}: volumes of the series differ in shape ({sorted(shapes)}); cannot write one 4D NIfTI")
    side = sidecar_for(vols)
    echo = vols[0].meta.get("EchoNumber")
    if tell_echo and echo is not None:
        side["EchoNumber"] = int(echo)
    try:
        save_4d(vols, out, side)
    except OSError as exc:
        raise UserError(f"{out}: cannot write ({exc.strerror or exc})") from exc
    v0 = vols[0]
    zooms = "x".join(f"{z:.3g}" for z in v0.zooms)
    tr = f"{v0.tr:.4g} s" if v0.tr else "unknown"
    vendor = v0.manufacturer or "unknown vendor"
    te = f", echo {echo} (TE {v0.meta['EchoTime'] * 1000:.4g} ms)" if tell_echo and isinstance(v0.meta.get("EchoTime"), float) else ""
    print(
        f"{out}: {len(vols)} volumes, shape {'x'.join(map(str, v0.shape))}, voxel {zooms} mm, TR {tr}, "
        f"{vendor}, series {v0.series_number} '{v0.series_description}'{te} (sidecar {sidecar_path(out).name})"
    )
