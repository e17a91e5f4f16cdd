"""Shared helpers (no tests) of the engine tests: the studyforrest run (read once, cached), a decoder bundle
built from it with `decoders`, and session configs on free loopback ports."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import numpy as np

N_VOLUMES = 100
"""Volumes of the studyforrest run used (7 stimulation blocks)."""

PROTOCOL = """
[protocol]
tr = 2.0
discard_scans = 1
baseline_scans = 5
n_trials = 7
trial_onsets = [6, 18, 30, 42, 54, 66, 78]
window_start = 2
window_end = 1
end_scans = 11
[protocol.trial]
rest_scans = 0
induction_scans = 8
delay_scans = 1
calc_scans = 1
feedback_scans = 1
"""
"""Trials aligned to the run's 16 s stimulation blocks (onsets 12, 36, ... s = scans 6, 18, ...);
window = scans onset+2 .. onset+8, calc scan onset+9; 100 scans in all."""


def forrest_arrays(studyforrest_dir: Path, cache_dir: Path) -> tuple[np.ndarray, np.ndarray]:
    """(data (N, 80, 80, 35) float32, affine) of the first N_VOLUMES volumes, read with
    runtime.dicom.read_series once and cached (the DICOM read costs ~0.2 s per volume)."""
    cache = Path(cache_dir) / f"studyforrest_{N_VOLUMES}.npz"
    if cache.exists():
        with np.load(cache) as z:
            return z["data"], z["affine"]
    from runtime.dicom import read_series

    folder = Path(studyforrest_dir) / "dicoms"
    files = sorted(str(folder / f) for f in os.listdir(folder))[: 35 * N_VOLUMES]
    vols = read_series(files)
    assert [v.index for v in vols] == list(range(N_VOLUMES))
    data = np.stack([v.data for v in vols]).astype(np.float32)
    affine = vols[0].affine
    tmp = cache.with_suffix(".tmp.npz")
    np.savez(tmp, data=data, affine=affine)
    tmp.replace(cache)
    return data, affine


def stim_labels(n: int, tr: float = 2.0, lag_s: float = 4.0) -> np.ndarray:
    """1 where the (lagged) studyforrest block design is on, per scan."""
    onsets = [12, 36, 60, 84, 108, 132, 156, 180, 204, 228, 252, 276]
    t = np.arange(n) * tr - lag_s
    y = np.zeros(n, dtype=int)
    for o in onsets:
        y[(t >= o) & (t < o + 16)] = 1
    return y


def roi_voxels(template: np.ndarray, n: int = 1500, seed: int = 0) -> np.ndarray:
    """An evenly spread sample of brain voxels (the decoder's voxel list)."""
    from scipy import ndimage

    from runtime.realign.mask import head_mask

    m = ndimage.binary_erosion(head_mask(template, dilate=0), iterations=1)
    ijk = np.argwhere(m)
    rng = np.random.default_rng(seed)
    sel = np.sort(rng.choice(len(ijk), size=min(n, len(ijk)), replace=False))
    return np.ascontiguousarray(ijk[sel], dtype=np.int64)


def free_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def endpoints_toml() -> str:
    p = [free_port() for _ in range(6)]
    names = ["volumes", "volumes_replay", "scores", "scores_replay", "events", "events_replay"]
    return "[endpoints]\n" + "".join(f'{n} = "tcp://127.0.0.1:{q}"\n' for n, q in zip(names, p, strict=True))

