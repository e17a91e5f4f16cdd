"""Realignment speed and accuracy: ours vs python-rtspm (OpenNFT) vs SimpleITK, same volumes.

    python benchmarks/realign.py [--volumes 30] [--repeats 5] [--peer-repeats 1] [--quick]

Per grid (64x64x36 Siemens mosaic, 80x80x35 studyforrest, 104x104x72 at 2 mm resampled from
the mosaic), one run of moved volumes: a real volume resampled (cubic B-spline) along a head
motion trajectory (slow drift + a few jumps, within 5 mm / 5 deg) + 2.5 % Rician noise
(runtime.realign.synth). Every tool processes the run in order, as online (ours and SimpleITK
warm-start from the previous volume; rtspm starts each volume from its header, as OpenNFT).
Error = mean displacement over brain voxels between true and estimated transforms.

Prints a table, then one JSON line per (tool, grid) with keys tool, grid, median_ms, p95_ms,
mean_error_mm, first_volume_ms (+ median_cpu_ms = process CPU time, all threads, which a
shared machine's preemption does not inflate, and ratios vs ours), and a profile of where our
time goes, against the memory floor (one pass over the volume: data.sum() / copy).
SimpleITK runs with its default threads (both cores); ours and rtspm use one.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
from scipy import ndimage

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from runtime.realign import Realigner, reslice, warmup  # noqa: E402
from runtime.realign import kernels as K  # noqa: E402
from runtime.realign.params import params_to_matrix  # noqa: E402
from runtime.realign.synth import forrest_volumes, mosaic_volume, scenario  # noqa: E402

SHARED = Path(os.environ.get("DECNEF_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))


def trajectory(n: int, rng: np.random.Generator) -> list[np.ndarray]:
    """Drift (random walk, 0.15 mm / 0.15 deg per volume) + a jump every ~8 volumes (<= 2 mm /
    2 deg), clipped to 5 mm / 5 deg."""
    p = np.zeros(6)
    out = []
    for i in range(n):
        step = np.r_[rng.normal(0, 0.15, 3), np.deg2rad(rng.normal(0, 0.15, 3))]
        if i % 8 == 7:
            step += np.r_[rng.uniform(-2, 2, 3), np.deg2rad(rng.uniform(-2, 2, 3))]
        p = p + step
        p[:3] = np.clip(p[:3], -5, 5)
        p[3:] = np.clip(p[3:], -np.deg2rad(5), np.deg2rad(5))
        out.append(params_to_matrix(p))
    return out


def grids(quick: bool):
    mos, mos_aff = mosaic_volume(SHARED / "dicom")
    out = [("64x64x36", scenario(mos, mos_aff, crop=0))]
    if quick:
        return out
    forrest = forrest_volumes(SHARED / "task_bold" / "studyforrest_visloc_philips_run1", 1)[0]
    out.append(("80x80x35", scenario(forrest.data, forrest.affine, crop=0)))
    # 2 mm isotropic 104x104x76 resampled from the mosaic volume (cubic), centred on its FOV;
    # cropping 2 slices at each end gives the 104x104x72 reference
    shape = (104, 104, 76)
    centre = mos_aff[:3, :3] @ ((np.array(mos.shape) - 1) / 2.0) + mos_aff[:3, 3]
    aff = np.diag([-2.0, 2.0, 2.0, 1.0])
    aff[:3, 3] = centre - aff[:3, :3] @ ((np.array(shape) - 1) / 2.0)
    q = np.linalg.inv(mos_aff) @ aff
    coords = q[:3, :3] @ np.indices(shape, dtype=np.float64).reshape(3, -1) + q[:3, 3:4]
    big = ndimage.map_coordinates(mos, coords, order=3, mode="constant").reshape(shape).astype(np.float32)
    out.append(("104x104x72", scenario(big, aff, crop=2)))
    return out


def stats(times_ms, errors, first_ms, cpu_ms):
    t = np.asarray(times_ms)
    return {"median_ms": float(np.median(t)), "p95_ms": float(np.percentile(t, 95)),
            "median_cpu_ms": float(np.median(cpu_ms)),
            "mean_error_mm": float(np.mean(errors)), "median_error_mm": float(np.median(errors)),
            "first_volume_ms": float(first_ms)}


def run_ours(scn, truths, vols, repeats):
    times, errs, first, cpu = [], [], None, []
    for rep in range(repeats):
        t0 = time.perf_counter()
        r = Realigner(scn.ref, scn.affine)
        setup = (time.perf_counter() - t0) * 1e3
        for i, (t, v) in enumerate(zip(truths, vols, strict=True)):
            c1, t1 = time.process_time(), time.perf_counter()
            res = r.estimate(v, scn.affine)
            dt = (time.perf_counter() - t1) * 1e3
            dc = (time.process_time() - c1) * 1e3
            if i == 0:
                first = dt if first is None else min(first, dt)
                continue  # cold start reported as first_volume_ms
            times.append(dt)
            cpu.append(dc)
            if rep == 0:
                errs.append(scn.error_mm(t, res.matrix))
    out = stats(times, errs, first, cpu)
    out["setup_ms"] = setup
    return out


def run_peer(cls, scn, truths, vols, repeats):
    times, errs, first, cpu = [], [], None, []
    for rep in range(repeats):
        r = cls(scn.ref, scn.affine)
        for i, (t, v) in enumerate(zip(truths, vols, strict=True)):
            c1, t1 = time.process_time(), time.perf_counter()
            m = r.estimate(v, scn.affine)
            dt = (time.perf_counter() - t1) * 1e3
            dc = (time.process_time() - c1) * 1e3
            if i == 0:
                first = dt if first is None else min(first, dt)
                continue
            times.append(dt)
            cpu.append(dc)
            if rep == 0:
                errs.append(scn.error_mm(t, m))
    return stats(times, errs, first, cpu)


def _best(fn, n=200) -> float:
    ts = []
    for _ in range(n):
        t = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t)
    return float(np.median(ts)) * 1e3


def profile(scn, truths, vols) -> dict:
    """Where our per-volume time goes, vs one pass over the volume's memory."""
    r = Realigner(scn.ref, scn.affine)
    its = []
    for v in vols:
        its.append(r.estimate(v, scn.affine).iterations)
    v = vols[len(vols) // 2]
    q = np.ascontiguousarray((np.linalg.inv(scn.affine) @ np.linalg.inv(truths[len(vols) // 2]) @ r.fine.affine)[:3])
    acc = np.zeros(K.ACC_LEN)
    est = _best(lambda: r.estimate(v, scn.affine, init=truths[len(vols) // 2]), 100)
    res = r.estimate(v, scn.affine, init=truths[len(vols) // 2])
    roi = np.argwhere(r.mask)[::10]
    return {
        "voxels": int(v.size),
        "floor_sum_ms": _best(lambda: v.sum()),
        "floor_copy_ms": _best(lambda: v.copy()),
        "finite_check_ms": _best(lambda: np.isfinite(v).all()),
        "gn_pass_ms": _best(lambda: K.gn_sums(v, q, r.fine.pts, acc)),
        "points": int(r.fine.n_points),
        "median_iterations": float(np.median(its[1:])),
        "estimate_from_truth_ms": est,
        "iterations_from_truth": int(res.iterations),
        "reslice_full_trilinear_ms": _best(lambda: reslice(v, scn.affine, res.matrix, scn.ref.shape, scn.affine), 50),
        "reslice_roi_voxels": int(len(roi)),
        "reslice_roi_ms": _best(lambda: reslice(v, scn.affine, res.matrix, scn.ref.shape, scn.affine, voxels=roi)),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--volumes", type=int, default=30)
    ap.add_argument("--repeats", type=int, default=5, help="repeats of the whole run for ours")
    ap.add_argument("--peer-repeats", type=int, default=1, help="repeats for the (slow) peers")
    ap.add_argument("--quick", action="store_true", help="64x64x36 only")
    ap.add_argument("--no-peers", action="store_true")
    args = ap.parse_args()

    t0 = time.perf_counter()
    warmup()
    print(f"numba warm-up (cache load): {(time.perf_counter() - t0) * 1e3:.0f} ms")
    peers = []
    if not args.no_peers:
        from runtime.realign.peers import RtspmRealigner, SitkRealigner
        peers = [("python-rtspm", RtspmRealigner), ("SimpleITK", SitkRealigner)]
    rows, profiles = [], {}
    for name, scn in grids(args.quick):
        rng = np.random.default_rng(2024)
        truths = trajectory(args.volumes, rng)
        vols = [scn.move(t, rng) for t in truths]
        ours = run_ours(scn, truths, vols, args.repeats)
        rows.append(("ours", name, ours))
        for pname, cls in peers:
            rows.append((pname, name, run_peer(cls, scn, truths, vols, args.peer_repeats)))
        profiles[name] = profile(scn, truths, vols)

    ours_by_grid = {g: s for t, g, s in rows if t == "ours"}
    print()
    print(f"{'tool':<13} {'grid':<11} {'median ms':>9} {'p95 ms':>8} {'cpu ms':>8} {'first ms':>9} {'mean err mm':>11} "
          f"{'median err':>10} {'x slower':>9} {'x error':>8}")
    for tool, grid, s in rows:
        o = ours_by_grid[grid]
        s["speed_ratio_vs_ours"] = s["median_ms"] / o["median_ms"]
        s["error_ratio_vs_ours"] = s["mean_error_mm"] / o["mean_error_mm"]
        print(f"{tool:<13} {grid:<11} {s['median_ms']:9.2f} {s['p95_ms']:8.2f} {s['median_cpu_ms']:8.2f} {s['first_volume_ms']:9.1f} "
              f"{s['mean_error_mm']:11.4f} {s['median_error_mm']:10.4f} {s['speed_ratio_vs_ours']:9.1f} "
              f"{s['error_ratio_vs_ours']:8.2f}")
    print()
    print("where our time goes (medians):")
    for grid, p in profiles.items():
        print(f"  {grid}: {p['voxels']} voxels; floor: sum {p['floor_sum_ms']:.3f} ms, copy {p['floor_copy_ms']:.3f} ms; "
              f"finite check {p['finite_check_ms']:.3f} ms; one Gauss-Newton pass over {p['points']} points "
              f"{p['gn_pass_ms']:.3f} ms x {p['median_iterations']:.0f} iterations (median); "
              f"estimate from the true pose {p['estimate_from_truth_ms']:.3f} ms ({p['iterations_from_truth']} it); "
              f"reslice full {p['reslice_full_trilinear_ms']:.3f} ms, {p['reslice_roi_voxels']} ROI voxels "
              f"{p['reslice_roi_ms']:.3f} ms")
    print()
    for tool, grid, s in rows:
        line = {"tool": tool, "grid": grid, **{k: round(v, 5) if isinstance(v, float) else v for k, v in s.items()}}
        print(json.dumps(line))
    for grid, p in profiles.items():
        print(json.dumps({"tool": "ours-profile", "grid": grid, **{k: round(v, 5) if isinstance(v, float) else v
                                                                   for k, v in p.items()}}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
