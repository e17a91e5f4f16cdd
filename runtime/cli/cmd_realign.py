"""`decnef realign`: realign a 4D NIfTI volume by volume exactly as the engine does online.

Same code path as online (one `Realigner` per reference, warm start from the previous volume,
kernels warmed up first), so offline decoder construction sees exactly the online motion
correction and its parameters.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import numpy as np

from runtime.errors import UserError

CONVENTION = """\
outputs:
  PARAMS.tsv  one row per volume: trans_x trans_y trans_z (mm) rot_x rot_y rot_z (rad)
              framewise_displacement (mm, Power 2012, r = 50 mm; n/a for the first volume)
              iterations realign_ms
  M.npy       float64 array (N, 4, 4). M[i] @ [x, y, z, 1] maps a point (x, y, z) in volume
              i's world space (RAS+ mm, from its NIfTI affine) onto the same anatomical point
              in the reference's world space. The parameters describe the same matrix:
              M[i] = Translate(trans) @ Rx(rot_x) @ Ry(rot_y) @ Rz(rot_z), right-handed
              rotations about the RAS axes through the world origin.
  OUT.nii.gz  the series resliced onto the reference grid (NaN outside the field of view).
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = CONVENTION
    parser.add_argument("input", metavar="IN.nii.gz", help="4D NIfTI series to realign")
    ref = parser.add_mutually_exclusive_group()
    ref.add_argument("--ref", type=int, default=None, metavar="N",
                     help="reference = volume N of the input (0-based; default 0)")
    ref.add_argument("--ref-image", metavar="REF.nii.gz",
                     help="reference = this 3D NIfTI (e.g. the decoder session's template; any grid)")
    parser.add_argument("--out-params", required=True, metavar="PARAMS.tsv", help="motion parameters table")
    parser.add_argument("--out-matrices", metavar="M.npy", help="(N, 4, 4) world-to-reference matrices")
    parser.add_argument("--out", metavar="OUT.nii.gz", help="write the resliced 4D series on the reference grid")
    parser.add_argument("--interp", choices=("trilinear", "cubic"), default="trilinear",
                        help="interpolation for --out (default trilinear, as the online reslice)")


def _load(path: str, what: str):
    import nibabel as nib

    p = Path(path)
    if not p.is_file():
        raise UserError(f"{path}: {what} not found")
    try:
        return nib.load(str(p))
    except Exception as exc:  # nibabel raises many types for a non-NIfTI file
        raise UserError(f"{path}: cannot read {what} as NIfTI ({type(exc).__name__}: {exc})") from None


def _fmt(x: float) -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.6g}"


def run(args: argparse.Namespace) -> int:
    import nibabel as nib

    from runtime.qc import framewise_displacement
    from runtime.realign import Realigner, reslice, warmup

    img = _load(args.input, "input series")
    if len(img.shape) != 4:
        raise UserError(f"{args.input}: expected a 4D NIfTI series, got shape {tuple(img.shape)}")
    n = int(img.shape[3])
    affine = np.asarray(img.affine, np.float64)

    def volume(i: int) -> np.ndarray:
        return np.asarray(img.dataobj[..., i], dtype=np.float32)

    if args.ref_image:
        rimg = _load(args.ref_image, "reference image")
        rshape = tuple(rimg.shape)
        if len(rshape) == 4 and rshape[3] == 1:
            ref = np.asarray(rimg.dataobj[..., 0], np.float32)
        elif len(rshape) == 3:
            ref = np.asarray(rimg.dataobj, np.float32)
        else:
            raise UserError(f"{args.ref_image}: expected a 3D reference image, got shape {rshape}")
        ref_affine = np.asarray(rimg.affine, np.float64)
    else:
        k = 0 if args.ref is None else args.ref
        if not 0 <= k < n:
            raise UserError(f"--ref {k}: expected a volume index 0..{n - 1} of {args.input}")
        ref, ref_affine = volume(k), affine
    if min(ref.shape) < 4:
        raise UserError(f"reference has shape {ref.shape}; need at least 4 voxels on every axis")

    warmup()
    try:
        realigner = Realigner(ref, ref_affine)
    except ValueError as exc:
        raise UserError(f"reference: {exc}") from None
    realigner.prepare(img.shape[:3], affine)
    out = np.empty(ref.shape + (n,), np.float32) if args.out else None
    order = 3 if args.interp == "cubic" else 1
    mats = np.empty((n, 4, 4))
    rows = []
    prev = None
    for i in range(n):
        data = volume(i)
        res = realigner.estimate(data, affine)
        fd = math.nan if prev is None else framewise_displacement(prev, res.params)
        prev = res.params
        mats[i] = res.matrix
        rows.append([*res.params, fd, res.iterations, res.elapsed_ms])
        if out is not None:
            out[..., i] = reslice(data, affine, res.matrix, ref.shape, ref_affine, order=order)

    cols = ["trans_x", "trans_y", "trans_z", "rot_x", "rot_y", "rot_z", "framewise_displacement",
            "iterations", "realign_ms"]
    with open(args.out_params, "w", encoding="utf-8") as fh:
        fh.write("\t".join(cols) + "\n")
        for r in rows:
            vals = [_fmt(float(v)) for v in r[:7]] + [str(int(r[7])), f"{r[8]:.3f}"]
            fh.write("\t".join(vals) + "\n")
    if args.out_matrices:
        np.save(args.out_matrices, mats)
    if out is not None:
        oimg = nib.Nifti1Image(out, ref_affine)
        oimg.header.set_xyzt_units("mm", "sec")
        zooms = img.header.get_zooms()
        tr = float(zooms[3]) if len(zooms) > 3 else 0.0
        oimg.header.set_zooms(tuple(np.sqrt((ref_affine[:3, :3] ** 2).sum(0))) + (tr,))
        nib.save(oimg, args.out)
    iters = np.array([r[7] for r in rows])
    ms = np.array([r[8] for r in rows])
    print(f"realigned {n} volumes: median {np.median(ms):.2f} ms/volume, median {np.median(iters):.0f} iterations, "
          f"max |trans| {np.abs(mats[:, :3, 3]).max():.3f} mm -> {args.out_params}")
    return 0
