"""Ingest latency: file complete -> volume published -> received by a subscriber.

`decnef stream` runs as its own process (as in a session) watching a folder; this script writes
real scanner files into it at a fixed TR (atomic rename, so "file complete" is the rename time),
subscribes with a ReliableSubscriber, and reports per volume:
  total     = received by the subscriber - last file of the volume complete
  detect+parse = streamer's t_file_complete - file complete (event delivery + parse)
  publish   = t_sent - t_file_complete (assembly, ordering, journal, send)
  transport = received - t_sent
next to the floor: `parse_file` (pydicom read + pixel decode) of the same files alone, in this
process. Median / p95 / p99 over >= 100 volumes after 3 warm-up volumes.

Configurations: the Siemens Prisma mosaic (64x64x36; its 6 volumes replayed repeatedly with new
UIDs and indices) and the Philips studyforrest per-slice series (80x80x35, 35 files per volume,
written spread over 60% of the TR as a scanner exports slices; per-file cost reported too). A
third run streams the mosaics without a journal, to show what restart safety costs. Goals on the 2-core machine: mosaic p50 <= 5 ms, p99 <= 15 ms.

    python benchmarks/ingest.py [--volumes 103] [--tr-mosaic 0.1] [--tr-slice 0.3]
"""

from __future__ import annotations

import argparse
import json
import os
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

from runtime.dicom import parse_file  # noqa: E402
from runtime.messages import VolumeHeader  # noqa: E402
from runtime.transport import ReliableSubscriber  # noqa: E402
from sim_scanner.replay import expand, load_dicom_source, write_file  # noqa: E402

WARMUP = 3


def shared_data() -> Path:
    env = os.environ.get("DECNEF_SHARED_DATA")
    p = Path(env) if env else REPO.parent / "shared" / "data"
    if not (p / "dicom").is_dir():
        sys.exit(f"real data not found at {p} (set DECNEF_SHARED_DATA)")
    return p


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def pct(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q)) if values else float("nan")


def floor_parse_ms(files: list[Path], repeats: int = 10) -> list[float]:
    """parse_file alone on the same files (page cache warm, one unmeasured pass), ms per file."""
    for f in files:
        parse_file(f)
    out = []
    for _ in range(repeats):
        for f in files:
            t = time.perf_counter()
            parse_file(f)
            out.append((time.perf_counter() - t) * 1000.0)
    return out


def run_config(name: str, vols, tr: float, n_measure: int, journal: bool = True, spread: float = 0.0) -> dict:
    """`spread`: fraction of the TR over which a volume's files are written (a scanner exports
    per-slice files as slices are reconstructed, not in one burst)."""
    n_total = WARMUP + n_measure
    vols = vols[:n_total]
    assert len(vols) == n_total, f"{name}: only {len(vols)} volumes"
    pub, rep = f"tcp://127.0.0.1:{free_port()}", f"tcp://127.0.0.1:{free_port()}"
    with tempfile.TemporaryDirectory(prefix="decnef-bench-") as tmp:
        watch = Path(tmp) / "incoming"
        watch.mkdir()
        proc = subprocess.Popen(
            [sys.executable, "-m", "runtime.cli.main", "stream", "--watch", str(watch), "--endpoint", pub,
             "--replay-endpoint", rep, "--count", str(n_total), "--gap-timeout", "5",
             *(["--journal", str(Path(tmp) / "journal")] if journal else [])],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=tmp,
        )
        sub = ReliableSubscriber(pub, rep)
        received: dict[int, tuple[VolumeHeader, float]] = {}
        done = threading.Event()

        def listen() -> None:
            while len(received) < n_total and not done.is_set():
                msg = sub.recv(200)
                if msg is None:
                    continue
                h, _payload = msg
                if isinstance(h, VolumeHeader):
                    received[h.index] = (h, time.time())

        th = threading.Thread(target=listen, daemon=True)
        th.start()
        time.sleep(1.5)  # streamer start-up (imports, bind, watch)
        written: dict[int, float] = {}
        t0 = time.monotonic()
        for k, v in enumerate(vols):
            wait = t0 + k * tr - time.monotonic()
            if wait > 0:
                time.sleep(wait)
            for j, f in enumerate(v.files):
                if spread and j:
                    wait = t0 + k * tr + j * spread * tr / len(v.files) - time.monotonic()
                    if wait > 0:
                        time.sleep(wait)
                write_file(watch, f.name, f.read(), "rename")
            written[v.index] = time.time()
        th.join(30 + 2 * tr * n_total)
        done.set()
        sub.close()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    idx = [v.index for v in vols][WARMUP:]
    missing = [i for i in idx if i not in received]
    total = [(received[i][1] - written[i]) * 1000 for i in idx if i in received]
    detect = [(received[i][0].t_file_complete - written[i]) * 1000 for i in idx if i in received]
    publish = [(received[i][0].t_sent - received[i][0].t_file_complete) * 1000 for i in idx if i in received]
    transport = [(received[i][1] - received[i][0].t_sent) * 1000 for i in idx if i in received]
    files_per_volume = len(vols[0].files)
    floor_files = [Path(f.path) if f.path else None for f in vols[0].files]
    if floor_files[0] is None:  # renumbered in memory: write one volume to parse it from disk
        tmpd = Path(tempfile.mkdtemp(prefix="decnef-floor-"))
        floor_files = [write_file(tmpd, f.name, f.read(), "rename") for v in vols[:6] for f in v.files]
    else:
        floor_files = [Path(f.path) for v in vols[:3] for f in v.files]
    floor = floor_parse_ms(floor_files)
    res = {
        "benchmark": "ingest",
        "config": name,
        "journal": journal,
        "loadavg_1min": os.getloadavg()[0],
        "shape": "x".join(map(str, received[idx[0]][0].shape)) if idx[0] in received else "",
        "files_per_volume": files_per_volume,
        "tr_s": tr,
        "write_spread_tr": spread,
        "n": len(total),
        "missing": len(missing),
        "total_p50_ms": pct(total, 50),
        "total_p95_ms": pct(total, 95),
        "total_p99_ms": pct(total, 99),
        "detect_parse_p50_ms": pct(detect, 50),
        "publish_p50_ms": pct(publish, 50),
        "transport_p50_ms": pct(transport, 50),
        "floor_parse_per_file_p50_ms": pct(floor, 50),
        "floor_parse_per_volume_ms": pct(floor, 50) * files_per_volume,
        "ratio_total_to_floor_last_file": pct(total, 50) / pct(floor, 50),
    }
    return res


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--volumes", type=int, default=103 - WARMUP, help="measured volumes per configuration (>= 100)")
    ap.add_argument("--tr-mosaic", type=float, default=0.1)
    ap.add_argument("--tr-slice", type=float, default=0.3)
    ap.add_argument("--only", choices=("mosaic", "slice"), default=None)
    args = ap.parse_args()
    data = shared_data()
    n_total = WARMUP + args.volumes
    results = []
    if args.only in (None, "mosaic"):
        src = load_dicom_source(data / "dicom" / "siemens_mosaic_prisma_ep2d_asc")
        vols = expand(src, repeat=-(-n_total // len(src.volumes)))
        results.append(run_config("siemens_mosaic_prisma", vols, args.tr_mosaic, args.volumes))
        results.append(run_config("siemens_mosaic_prisma_nojournal", vols, args.tr_mosaic, args.volumes, journal=False))
    if args.only in (None, "slice"):
        src = load_dicom_source(data / "task_bold" / "studyforrest_visloc_philips_run1" / "dicoms")
        results.append(run_config("philips_perslice_studyforrest", src.volumes, args.tr_slice, args.volumes, spread=0.6))
    hdr = (f"{'config':<32} {'shape':>9} {'files':>5} {'n':>4} {'p50':>7} {'p95':>7} {'p99':>7} "
           f"{'detect+parse':>12} {'publish':>8} {'transport':>9} {'floor/file':>10} {'floor/vol':>9}")
    print(hdr)
    print("-" * len(hdr))
    for r in results:
        print(f"{r['config']:<32} {r['shape']:>9} {r['files_per_volume']:>5} {r['n']:>4} {r['total_p50_ms']:>7.2f} "
              f"{r['total_p95_ms']:>7.2f} {r['total_p99_ms']:>7.2f} {r['detect_parse_p50_ms']:>12.2f} "
              f"{r['publish_p50_ms']:>8.2f} {r['transport_p50_ms']:>9.2f} {r['floor_parse_per_file_p50_ms']:>10.2f} "
              f"{r['floor_parse_per_volume_ms']:>9.1f}")
    print("(ms; total = last file of the volume complete -> received by a subscriber; floor = parse_file alone;"
          f" load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores)")
    for r in results:
        print(json.dumps(r))
    return 0


if __name__ == "__main__":
    sys.exit(main())
