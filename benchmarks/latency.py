"""Engine latency: volume file complete -> volume processed / score published / score received.

`decnef engine` runs as its own process (as in a session). This script stands where
`decnef stream` stands (a ReliablePublisher on the volume stream; "file complete" is stamped just
before publishing, so ingest — see benchmarks/ingest.py — is not included) and where the display
stands (a ReliableSubscriber on the score stream that timestamps every score it receives).
Volumes are synthetic EPI from `sim_scanner.phantom` (head with real-looking motion, drift and
Rician noise), pre-rendered and cycled with new indices; the decoder bundle (2000 voxels) is
built with `decoders.bundle` on the phantom's ROI.

Per configuration (median / p99 over all processed volumes after the discarded ones):
  processed  = t_processed - t_file_complete     (timing.tsv; realign + reslice + QC + features
                                                  + score + publish, plus transport in)
  score pub  = score's t_published - t_file_complete   (scores.tsv, one per trial)
  score recv = display-like subscriber receipt - t_file_complete
and the per-stage breakdown from timing.tsv. `first` is the first kept volume (the one a cold
engine would pay for). A 1000-volume run reports engine RSS and per-100-volume median time to
show memory and time stay flat.

    python benchmarks/latency.py [--quick] [--real-volumes 30] [--fast-volumes 200] [--long 1000]
    python benchmarks/latency.py --sizes 64x64x36 --real-volumes 0 --long 0 --denoise regress,regress+masks

Goals (64x64x36): processed p50 <= 15 ms, p99 <= 40 ms.
"""

from __future__ import annotations

import argparse
import json
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from runtime.config import load_config  # noqa: E402
from runtime.messages import ScoreHeader, volume_header, volume_payload  # noqa: E402
from runtime.outputs import RunFiles, read_tsv, tsv_float  # noqa: E402
from runtime.transport import ReliablePublisher, ReliableSubscriber  # noqa: E402
from runtime.volume import Volume  # noqa: E402

SIZES = {
    "64x64x36": ((64, 64, 36), (3.0, 3.0, 3.6)),
    "80x80x35": ((80, 80, 35), (3.0, 3.0, 3.0)),
    "104x104x72": ((104, 104, 72), (2.0, 2.0, 2.0)),
}
STAGES = ["decode_ms", "realign_ms", "reslice_ms", "qc_ms", "features_ms", "score_ms", "publish_ms"]
N_UNIQUE = 24
DISCARD = 3


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def render(shape, voxel, n: int, seed: int = 0) -> tuple[list[Volume], object]:
    from sim_scanner.phantom import HeadPhantom, NoiseModel, simulate

    ph = HeadPhantom(shape=shape, voxel_size=voxel, seed=seed)
    sig = np.zeros((n, 1))
    sig[n // 3 : 2 * n // 3, 0] = 1.0
    vols, _ = simulate(ph, sig, 2.0, NoiseModel(noise=0.01, motion_mm=0.3), seed=seed)
    return vols, ph


def make_bundle(vols: list[Volume], phantom, path: Path, n_voxels: int = 2000) -> None:
    from sklearn.linear_model import LogisticRegression

    from decoders.bundle import bundle_from_estimator, save_bundle

    template = vols[0].data.astype(np.float32)
    ijk = np.argwhere(phantom.brain_mask)
    rng = np.random.default_rng(0)
    roi = np.argwhere(phantom.roi_mask)
    rest = ijk[rng.choice(len(ijk), size=max(0, n_voxels - len(roi)), replace=False)]
    voxels = np.unique(np.vstack([roi, rest]), axis=0)[:n_voxels].astype(np.int64)
    x = np.stack([v.data[tuple(voxels.T)] for v in vols]).astype(np.float64)
    x = (x - x.mean(0)) / (x.std(0) + 1e-6)
    y = (np.arange(len(vols)) >= len(vols) // 3) & (np.arange(len(vols)) < 2 * len(vols) // 3)
    est = LogisticRegression(C=0.05, max_iter=300).fit(x, y.astype(int))
    b = bundle_from_estimator(est, voxels=voxels, grid_shape=template.shape, grid_affine=vols[0].affine,
                              template=template, feature={"window_start": 2, "window_end": 1}, metrics={},
                              target_class="1")
    save_bundle(b, path)


def protocol_toml(n_scans: int, tr: float) -> str:
    per = 3 + 4 + 2 + 1 + 1
    n_trials = max(1, (n_scans - DISCARD - 8) // per)
    end = n_scans - (DISCARD + 8 + n_trials * per)
    return (f"[protocol]\ntr = {tr}\ndiscard_scans = {DISCARD}\nbaseline_scans = 8\nn_trials = {n_trials}\n"
            f"end_scans = {end}\nwindow_start = 2\nwindow_end = 1\n"
            "[protocol.trial]\nrest_scans = 3\ninduction_scans = 4\ndelay_scans = 2\ncalc_scans = 1\nfeedback_scans = 1\n")


def rss_mb(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return float("nan")


def denoise_toml(variant: str, phantom, workdir: Path) -> str:
    """[denoise] for a --denoise variant: detrend (default), regress (6 motion + GS and their
    differences), regress+masks (+ WM and CSF means: masks cut from the phantom's anatomy)."""
    if variant == "detrend":
        return ""
    text = '[denoise]\nmethod = "regress"\nregress_scans = 30\n'
    if variant == "regress+masks":
        import nibabel as nib

        a = phantom.anatomy
        for name, m in (("wm", phantom.brain_mask & (np.abs(a - phantom.WM) < 60)),
                        ("csf", phantom.brain_mask & (a > phantom.CSF - 100))):
            nib.save(nib.Nifti1Image(m.astype(np.float32), phantom.affine), str(workdir / f"{name}.nii.gz"))
            text += f'{name}_mask = "{workdir / f"{name}.nii.gz"}"\n'
    return text


def run_config(name: str, vols: list[Volume], bundle: Path, n_scans: int, interval: float, workdir: Path,
               *, save_volumes: bool = True, sample_rss: bool = False, extra_toml: str = "") -> dict:
    ports = [free_port() for _ in range(4)]
    cfg_text = protocol_toml(n_scans, 2.0) + (
        "[endpoints]\n" + "".join(f'{k} = "tcp://127.0.0.1:{p}"\n' for k, p in
                                  zip(["volumes", "volumes_replay", "scores", "scores_replay"], ports, strict=True))
        + f'[decoder]\nbundle = "{bundle}"\n[output]\nroot = "out_{name}"\nsave_volumes = {"true" if save_volumes else "false"}\n'
        + extra_toml)
    cfg_path = workdir / f"{name}.toml"
    cfg_path.write_text(cfg_text)
    cfg = load_config(cfg_path)
    pub = ReliablePublisher(cfg.endpoints.volumes, cfg.endpoints.volumes_replay, workdir / f"{name}_stream", stream="volumes")
    received: list[tuple[float, ScoreHeader]] = []
    stop = threading.Event()

    def display():
        sub = ReliableSubscriber(cfg.endpoints.scores, cfg.endpoints.scores_replay, topics=[b"score"])
        while not stop.is_set():
            m = sub.recv(50)
            if m is not None:
                received.append((time.time(), m[0]))
        sub.close()

    disp = threading.Thread(target=display, daemon=True)
    disp.start()
    proc = subprocess.Popen([sys.executable, "-m", "runtime.cli.main", "engine", "--config", str(cfg_path), "--grace", "1"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=REPO)
    lines: list[str] = []
    ready = threading.Event()

    def reader():
        for line in proc.stdout:
            lines.append(line.rstrip())
            if "engine ready" in line:
                ready.set()

    threading.Thread(target=reader, daemon=True).start()
    if not ready.wait(120):
        proc.kill()
        raise RuntimeError("engine did not start:\n" + "\n".join(lines))
    rss: list[tuple[int, float]] = [(0, rss_mb(proc.pid))]
    files = RunFiles.for_run(cfg, None)
    t_next = time.perf_counter()
    for i in range(n_scans):
        v = vols[i % len(vols)]
        vol = Volume(data=v.data, affine=v.affine, index=i, tr=2.0, manufacturer=v.manufacturer)
        h = volume_header(vol, t_file_complete=time.time())
        pub.publish(h, volume_payload(vol))
        if sample_rss and i % 100 == 99:
            rss.append((i + 1, rss_mb(proc.pid)))
        t_next += interval
        time.sleep(max(0.0, t_next - time.perf_counter()))
    rc = proc.wait(300)
    time.sleep(0.3)
    stop.set()
    disp.join(5)
    pub.close()
    if rc != 0:
        raise RuntimeError(f"engine exited {rc}:\n" + "\n".join(lines[-20:]))
    timing = read_tsv(files.timing)
    kept = [r for r in timing if int(r["volume"]) >= DISCARD]
    proc_ms = np.array([(tsv_float(r["t_processed"]) - tsv_float(r["t_file_complete"])) * 1e3 for r in kept])
    stages = {s: np.array([tsv_float(r[s]) for r in kept]) for s in STAGES}
    transport = np.array([(tsv_float(r["t_received"]) - tsv_float(r["t_published"])) * 1e3 for r in kept])
    scores = read_tsv(files.scores)
    pub_ms = np.array([(tsv_float(r["t_published"]) - tsv_float(r["t_file_complete"])) * 1e3 for r in scores])
    recv_ms = np.array([(t - h.t_file_complete) * 1e3 for t, h in received])
    q = lambda a, p: float(np.nanpercentile(a, p)) if len(a) else float("nan")  # noqa: E731
    out = {
        "config": name, "volumes": n_scans, "interval_s": interval, "trials": len(scores),
        "processed_p50_ms": q(proc_ms, 50), "processed_p99_ms": q(proc_ms, 99), "processed_max_ms": q(proc_ms, 100),
        "first_kept_ms": float(proc_ms[0]) if len(proc_ms) else float("nan"),
        "score_published_p50_ms": q(pub_ms, 50), "score_published_p99_ms": q(pub_ms, 99),
        "score_received_p50_ms": q(recv_ms, 50), "score_received_p99_ms": q(recv_ms, 99),
        "scores_received": len(received),
        "transport_in_p50_ms": q(transport, 50),
        **{f"{s[:-3]}_p50_ms": q(a, 50) for s, a in stages.items()},
        **{f"{s[:-3]}_p99_ms": q(a, 99) for s, a in stages.items()},
    }
    if sample_rss:
        out["rss_mb"] = rss
        blocks = [proc_ms[max(0, k - DISCARD): k + 100 - DISCARD] for k in range(0, n_scans, 100)]
        out["p50_per_100_ms"] = [round(float(np.median(b)), 2) for b in blocks if len(b)]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--real-volumes", type=int, default=30, help="volumes per size at the real TR (2 s)")
    ap.add_argument("--fast-volumes", type=int, default=200, help="volumes per size at 10x speed")
    ap.add_argument("--long", type=int, default=1000, help="volumes of the flatness run (64x64x36, 20x speed)")
    ap.add_argument("--quick", action="store_true", help="12 volumes at TR, 60 at 10x, 300 long")
    ap.add_argument("--sizes", default=",".join(SIZES))
    ap.add_argument("--denoise", default="detrend",
                    help="comma list of detrend, regress, regress+masks (REGRESS with WM/CSF means); each is run")
    args = ap.parse_args()
    for n in (args.real_volumes, args.fast_volumes, args.long):
        if 0 < n < 22:
            ap.error("runs need at least 22 volumes (discard 3, baseline 8, one 11-scan trial)")
    if args.quick:
        args.real_volumes, args.fast_volumes, args.long = 22, 60, 300
    results = []
    with tempfile.TemporaryDirectory(prefix="decnef-latency-") as tmp:
        work = Path(tmp)
        for size in args.sizes.split(","):
            shape, voxel = SIZES[size]
            t0 = time.perf_counter()
            vols, ph = render(shape, voxel, N_UNIQUE)
            bundle = work / f"{size}.npz"
            make_bundle(vols, ph, bundle)
            print(f"# {size}: {N_UNIQUE} phantom volumes + bundle in {time.perf_counter() - t0:.1f} s", flush=True)
            for variant in args.denoise.split(","):
                tag = "" if variant == "detrend" else f" {variant}"
                for label, n, interval in ((f"{size} TR 2s{tag}", args.real_volumes, 2.0),
                                           (f"{size} 10x{tag}", args.fast_volumes, 0.2)):
                    if n <= 0:
                        continue
                    r = run_config(label.replace(" ", "_").replace("+", "_"), vols, bundle, n, interval, work,
                                   extra_toml=denoise_toml(variant, ph, work))
                    r["config"] = label
                    results.append(r)
                    print(json.dumps(r), flush=True)
            if size == "64x64x36" and args.long > 0:
                r = run_config("long", vols, bundle, args.long, 0.1, work, save_volumes=True, sample_rss=True)
                r["config"] = f"{size} x{args.long} 20x"
                results.append(r)
                print(json.dumps(r), flush=True)
    print()
    hdr = (f"{'configuration':<34}{'vols':>6}{'proc p50':>10}{'p99':>8}{'first':>8}{'score pub p50':>15}{'p99':>8}"
           f"{'recv p50':>10}{'p99':>8}   stages p50 (ms): realign reslice qc feat score publish decode")
    print(hdr)
    for r in results:
        print(f"{r['config']:<34}{r['volumes']:>6}{r['processed_p50_ms']:>10.1f}{r['processed_p99_ms']:>8.1f}"
              f"{r['first_kept_ms']:>8.1f}{r['score_published_p50_ms']:>15.1f}{r['score_published_p99_ms']:>8.1f}"
              f"{r['score_received_p50_ms']:>10.1f}{r['score_received_p99_ms']:>8.1f}   "
              + " ".join(f"{r[k]:.2f}" for k in ("realign_p50_ms", "reslice_p50_ms", "qc_p50_ms", "features_p50_ms",
                                                  "score_p50_ms", "publish_p50_ms", "decode_p50_ms")))
    for r in results:
        if "rss_mb" in r:
            print(f"\n{r['config']}: engine RSS (MB) at volume " + ", ".join(f"{k}: {m:.0f}" for k, m in r["rss_mb"]))
            print(f"{r['config']}: median processed ms per 100 volumes: {r['p50_per_100_ms']}")
    goal = next((r for r in results if r["config"].startswith("64x64x36 10x")), None)
    if goal:
        ok = goal["processed_p50_ms"] <= 15 and goal["processed_p99_ms"] <= 40
        print(f"\ngoal 64x64x36 (p50 <= 15 ms, p99 <= 40 ms): {'met' if ok else 'NOT met'}")


if __name__ == "__main__":
    main()
