"""Synthetic head phantom: EPI-like time series with a known hidden brain state.

Why: `decnef demo` and the end-to-end tests need data whose ground truth is known (which
trials carried the target pattern, how the head really moved) and that works on a fresh clone
with no downloaded data. Everything here is numpy/scipy and seeded.

The model, per volume t at scanner-frame world position x (RAS+ mm):

    I_t(x) = B(x) · A(p) · (1 + drift_t(x) + Σ_c effect · h_c(t) · P_c(p)) + physio + thermal
    p = M_t⁻¹ x    (M_t = the head's rigid pose at t; A, P_c live in the head frame)

A is an analytic head (scalp, skull, CSF, grey and white matter, ventricles, folded cortex)
evaluated at the moved coordinates, so motion is a real change of what each voxel sees, not a
shifted array. P_c is a fixed distributed voxel pattern of class c inside a posterior "ROI",
resampled (trilinear) at the moved coordinates; h_c is the class's boxcar convolved with the SPM
double-gamma HRF. B is a receive-coil inhomogeneity fixed in the scanner frame. Thermal noise
is Rician (magnitude of complex Gaussian), so the background has the Rayleigh floor of real EPI.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from scipy import ndimage
from scipy.special import gammaln

from runtime.volume import Volume

CLASSES = ("target", "other")
"""Pattern classes of the phantom: the hidden state 1 induces "target", 0 induces "other"."""


# ------------------------------------------------------------------------------------ HRF
def double_gamma_hrf(dt: float, length_s: float = 32.0) -> np.ndarray:
    """SPM canonical HRF (peak 6 s, undershoot 16 s, ratio 1/6), unit peak, sampled every dt s."""
    t = np.arange(0.0, length_s, dt)

    def gpdf(x: np.ndarray, shape: float) -> np.ndarray:
        out = np.zeros_like(x)
        pos = x > 0
        out[pos] = np.exp((shape - 1) * np.log(x[pos]) - x[pos] - gammaln(shape))
        return out

    h = gpdf(t, 6.0) - gpdf(t, 16.0) / 6.0
    return h / h.max()


def hrf_regressor(boxcar_s: Sequence[tuple[float, float, float]], n_scans: int, tr: float, dt: float = 0.1) -> np.ndarray:
    """Boxcars (onset s, duration s, amplitude) convolved with the HRF, sampled at scan starts.

    Scaled so a sustained boxcar of amplitude 1 plateaus at 1 (a percent-signal-change unit).
    """
    n_fine = int(math.ceil(n_scans * tr / dt)) + 1
    u = np.zeros(n_fine)
    for onset, dur, amp in boxcar_s:
        a = int(round(onset / dt))
        b = max(a + 1, int(round((onset + dur) / dt)))
        u[a:b] += amp
    h = double_gamma_hrf(dt)
    y = np.convolve(u, h)[:n_fine] / h.sum()
    idx = np.clip(np.round(np.arange(n_scans) * tr / dt).astype(int), 0, n_fine - 1)
    return y[idx]


# ------------------------------------------------------------------------------ geometry
def grid_affine(shape: Sequence[int], voxel_size: Sequence[float]) -> np.ndarray:
    """RAS+ affine with the world origin at the grid centre (axial slices, no obliquity)."""
    aff = np.eye(4)
    for a in range(3):
        aff[a, a] = float(voxel_size[a])
        aff[a, 3] = -(shape[a] - 1) / 2.0 * float(voxel_size[a])
    return aff


def rigid_matrix(params: Sequence[float]) -> np.ndarray:
    """4x4 world transform from (tx, ty, tz mm, rx, ry, rz rad), R = Rz·Ry·Rx, about the origin."""
    tx, ty, tz, rx, ry, rz = (float(v) for v in params)
    cx, sx, cy, sy, cz, sz = math.cos(rx), math.sin(rx), math.cos(ry), math.sin(ry), math.cos(rz), math.sin(rz)
    r_x = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    r_y = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    r_z = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    m = np.eye(4)
    m[:3, :3] = r_z @ r_y @ r_x
    m[:3, 3] = (tx, ty, tz)
    return m


def _sigmoid_inside(d: np.ndarray, width: float) -> np.ndarray:
    """Soft indicator of d < 0 (inside a surface at signed distance d mm), edge ~width mm."""
    return 0.5 * (1.0 - np.tanh(d / width))


def _ellipsoid_distance(p: np.ndarray, centre: Sequence[float], radii: Sequence[float], scale: np.ndarray | float = 1.0) -> np.ndarray:
    """Approximate signed distance (mm) of points p (3, N) to an ellipsoid, along the ray."""
    q = (p - np.asarray(centre, dtype=np.float64)[:, None]) / (np.asarray(radii, dtype=np.float64)[:, None] * scale)
    r = np.sqrt((q * q).sum(axis=0))
    norm = np.sqrt(((p - np.asarray(centre)[:, None]) ** 2).sum(axis=0))
    return norm * (1.0 - 1.0 / np.maximum(r, 1e-9))


# ------------------------------------------------------------------------------- phantom
@dataclass
class HeadPhantom:
    """A head on a fixed scanner grid; `render(pose, amplitudes)` gives one noise-free volume."""

    shape: tuple[int, int, int] = (64, 64, 36)
    voxel_size: tuple[float, float, float] = (3.0, 3.0, 3.0)
    seed: int = 0
    roi_centre: tuple[float, float, float] = (0.0, -72.0, 8.0)
    roi_radius: float = 16.0
    order: int = 1
    """Interpolation of the moved head: 1 = trilinear (fast; at the sub-voxel motion of a
    compliant participant its smoothing is negligible), 3 = cubic spline."""
    affine: np.ndarray = field(init=False)
    anatomy: np.ndarray = field(init=False)
    """Noise-free head at the reference pose (before coil inhomogeneity)."""
    brain_mask: np.ndarray = field(init=False)
    roi_mask: np.ndarray = field(init=False)
    patterns: np.ndarray = field(init=False)
    """(n_classes, *shape) fractional signal change per unit effect, zero outside the ROI."""
    bias: np.ndarray = field(init=False)

    # intensities in arbitrary scanner units (T2*-weighted EPI: CSF > GM > WM > scalp > bone)
    SCALP, SKULL, CSF, GM, WM = 420.0, 60.0, 1250.0, 880.0, 640.0
    HEAD_RADII = (76.0, 92.0, 66.0)
    HEAD_CENTRE = (0.0, -4.0, 8.0)

    def __post_init__(self) -> None:
        self.shape = tuple(int(s) for s in self.shape)  # type: ignore[assignment]
        self.voxel_size = tuple(float(v) for v in self.voxel_size)  # type: ignore[assignment]
        self.affine = grid_affine(self.shape, self.voxel_size)
        rng = np.random.default_rng(self.seed)
        self._fold = rng.normal(0.0, 1.0, size=(6, 3))  # cortical folding: random low-order waves
        self._fold_phase = rng.uniform(0, 2 * np.pi, size=6)
        self._world = self._grid_world()
        self.anatomy, tissue = self._head(self._world, with_tissue=True)
        self.anatomy = self.anatomy.reshape(self.shape).astype(np.float32)
        brain = tissue.reshape(self.shape)
        self.brain_mask = brain > 0.5
        x, y, z = self._world
        self.bias = (1.0 + 0.10 * x / 90.0 - 0.12 * (y / 100.0) ** 2 + 0.08 * z / 60.0).reshape(self.shape)
        d_roi = np.sqrt(((self._world - np.asarray(self.roi_centre)[:, None]) ** 2).sum(axis=0)).reshape(self.shape)
        self.roi_mask = (d_roi <= self.roi_radius) & self.brain_mask
        self.patterns = np.stack([self._pattern(rng) for _ in CLASSES]).astype(np.float32)

    # -- geometry helpers
    def _grid_world(self) -> np.ndarray:
        ijk = np.indices(self.shape, dtype=np.float64).reshape(3, -1)
        return self.affine[:3, :3] @ ijk + self.affine[:3, 3:4]

    def _pattern(self, rng: np.random.Generator) -> np.ndarray:
        """A smooth random pattern with positive mean inside the ROI (as a category's response)."""
        g = ndimage.gaussian_filter(rng.normal(size=self.shape), sigma=1.0)
        vals = g[self.roi_mask]
        g = (g - vals.mean()) / max(vals.std(), 1e-9)
        p = np.where(self.roi_mask, 0.5 + g, 0.0)
        return ndimage.gaussian_filter(p, sigma=0.5) * self.roi_mask

    def _folding(self, p: np.ndarray) -> np.ndarray:
        c = p - np.asarray(self.HEAD_CENTRE)[:, None]
        u = c / np.maximum(np.sqrt((c * c).sum(axis=0)), 1e-9)
        f = np.zeros(p.shape[1])
        for k in range(self._fold.shape[0]):
            f += np.sin((2 + k) * (self._fold[k] @ u) + self._fold_phase[k])
        return f / self._fold.shape[0]

    def _head(self, p: np.ndarray, with_tissue: bool = False):
        """Analytic head intensity at head-frame points p (3, N); optionally brain membership."""
        c, r = self.HEAD_CENTRE, np.asarray(self.HEAD_RADII)
        w = 0.8  # edge width mm (partial volume)
        fold = 1.0 + 0.035 * self._folding(p)
        img = self.SCALP * _sigmoid_inside(_ellipsoid_distance(p, c, r), w)
        layers = [
            (r - 5.0, self.SKULL, 1.0),
            (r - 11.0, self.CSF, 1.0),
            (r - 13.0, self.GM, fold),
            (r - 19.0, self.WM, fold),
        ]
        brain = None
        for radii, value, scale in layers:
            m = _sigmoid_inside(_ellipsoid_distance(p, c, radii, scale), w)
            img = img * (1.0 - m) + value * m
            if value == self.GM:
                brain = m
        for sx in (-1.0, 1.0):  # lateral ventricles
            vc = (c[0] + sx * 9.0, c[1] + 4.0, c[2] + 10.0)
            m = _sigmoid_inside(_ellipsoid_distance(p, vc, (5.0, 20.0, 8.0)), w)
            img = img * (1.0 - m) + self.CSF * m
        return (img, brain) if with_tissue else img

    # -- rendering
    def _prepare_resampling(self) -> None:
        """Spline coefficients and the voxels worth resampling (head and ROI, dilated)."""
        a = self.anatomy.astype(np.float64)
        self._coef = ndimage.spline_filter(a, order=3, mode="nearest") if self.order == 3 else a
        head = ndimage.binary_dilation(self.anatomy > 1.0, iterations=2)
        self._head_idx = np.flatnonzero(head)
        roi = ndimage.binary_dilation(self.patterns.any(axis=0), iterations=2)
        self._roi_idx = np.flatnonzero(roi)
        ijk = np.indices(self.shape, dtype=np.float64).reshape(3, -1)
        self._ijk = {id(self._head_idx): ijk[:, self._head_idx].copy(), id(self._roi_idx): ijk[:, self._roi_idx].copy()}

    def render(self, pose: np.ndarray | None = None, amplitudes: Sequence[float] = (), drift: np.ndarray | float = 0.0) -> np.ndarray:
        """Noise-free volume with the head at `pose` (4x4 world rigid) and per-class amplitudes.

        The head and the activation patterns are resampled (cubic spline / trilinear) at the
        voxel positions the moved head presents to the fixed scanner grid.
        """
        if not hasattr(self, "_coef"):
            self._prepare_resampling()
        moved = pose is not None and not np.allclose(pose, np.eye(4), atol=1e-12)
        vox = np.linalg.inv(self.affine) @ np.linalg.inv(pose) @ self.affine if moved else None

        def resample(arr: np.ndarray, idx: np.ndarray, order: int) -> np.ndarray:
            out = np.zeros(int(np.prod(self.shape)))
            pts = vox[:3, :3] @ self._ijk[id(idx)] + vox[:3, 3:4]
            out[idx] = ndimage.map_coordinates(arr, pts, order=order, prefilter=False, mode="nearest")
            return out.reshape(self.shape)

        anat = resample(self._coef, self._head_idx, self.order) if moved else self.anatomy.astype(np.float64)
        gain = 1.0 + np.asarray(drift, dtype=np.float64)
        amps = [float(a) for a in amplitudes]
        if any(a != 0.0 for a in amps):
            act = np.tensordot(np.asarray(amps), self.patterns[: len(amps)].astype(np.float64), axes=1)
            gain = gain + (resample(act, self._roi_idx, 1) if moved else act)
        return self.bias * anat * gain

    def brain_mean(self) -> float:
        return float((self.bias * self.anatomy)[self.brain_mask].mean())


# ----------------------------------------------------------------------------- time series
@dataclass
class NoiseModel:
    noise: float = 0.01
    """Thermal noise SD as a fraction of the mean brain intensity (1-2 % in 3 T EPI)."""
    physio: float = 0.5
    """Physiological (AR(1), signal-proportional) noise SD relative to the thermal SD."""
    drift: float = 0.005
    """Slow signal drift: fractional change per 100 scans (linear + a slow wave)."""
    motion_mm: float = 0.2
    """Largest head excursion of the random walk (mm; rotations scaled to match at 50 mm)."""


@dataclass
class SimulatedRun:
    volumes: list[Volume]
    events: list[dict]
    """BIDS events rows: onset (s), duration (s), trial_type."""
    tr: float
    truth: dict
    """Ground truth: "motion" (n, 6) params, "transforms" (n, 4, 4), "signal" (n, n_classes),
    and for neurofeedback runs "trials" (one dict per trial with its hidden state)."""

    def write_events(self, path: str | Path) -> Path:
        return write_events(self.events, path)

    def write_dicom(self, out_dir: str | Path, layout: str = "mosaic", **kw) -> Path:
        from runtime.dicom.write import write_series

        v0 = self.volumes[0]
        kw.setdefault("series_number", v0.series_number or 1)
        kw.setdefault("series_description", v0.series_description)
        kw.setdefault("tr", self.tr)
        out = Path(out_dir)
        write_series(self.volumes, out, layout=layout, **kw)
        return out

    def write_nifti(self, path: str | Path) -> Path:
        from runtime.nifti_io import save_4d

        save_4d(self.volumes, path, {"RepetitionTime": self.tr, "Source": "sim_scanner.phantom"})
        return Path(path)


def write_events(rows: Sequence[dict], path: str | Path) -> Path:
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    with p.open("w", newline="") as fh:
        w = csv.writer(fh, delimiter="\t", lineterminator="\n")
        w.writerow(["onset", "duration", "trial_type"])
        for r in rows:
            w.writerow([f"{r['onset']:.3f}", f"{r['duration']:.3f}", r["trial_type"]])
    return p


def write_mask(phantom: HeadPhantom, path: str | Path, which: str = "roi") -> Path:
    """Write the phantom's ROI (or brain) mask as a NIfTI on the phantom grid."""
    import nibabel as nib

    mask = phantom.roi_mask if which == "roi" else phantom.brain_mask
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(mask.astype(np.uint8), phantom.affine), str(p))
    return p


def motion_walk(n: int, motion_mm: float, rng: np.random.Generator) -> np.ndarray:
    """(n, 6) rigid params (mm, rad): a smooth random walk whose largest translation is motion_mm."""
    if n == 0 or motion_mm <= 0:
        return np.zeros((n, 6))
    steps = rng.normal(size=(n, 6))
    steps[0] = 0.0
    walk = np.cumsum(steps, axis=0)
    walk = ndimage.gaussian_filter1d(walk, sigma=1.0, axis=0)
    walk -= walk[0]
    peak_t = np.abs(walk[:, :3]).max()
    peak_r = np.abs(walk[:, 3:]).max()
    out = np.zeros_like(walk)
    if peak_t > 0:
        out[:, :3] = walk[:, :3] / peak_t * motion_mm
    if peak_r > 0:
        out[:, 3:] = walk[:, 3:] / peak_r * (0.5 * motion_mm / 50.0)
    return out


def simulate(
    phantom: HeadPhantom,
    signal: np.ndarray,
    tr: float,
    noise: NoiseModel,
    *,
    seed: int = 0,
    effect: float = 0.02,
    series_number: int = 1,
    description: str = "sim_phantom",
) -> tuple[list[Volume], dict]:
    """Render a run: `signal` (n_scans, n_classes) HRF-convolved class time courses (0..1)."""
    rng = np.random.default_rng(seed)
    n = signal.shape[0]
    motion = motion_walk(n, noise.motion_mm, rng)
    transforms = np.stack([rigid_matrix(m) for m in motion]) if n else np.zeros((0, 4, 4))
    sigma = noise.noise * phantom.brain_mean()
    x, y, z = phantom._world.reshape(3, *phantom.shape)
    spatial = 1.0 + 0.5 * x / 90.0 + 0.3 * y / 100.0
    wave_phase = rng.uniform(0, 2 * np.pi)
    ar = np.zeros(phantom.shape, dtype=np.float32)
    rho = 0.5
    vols: list[Volume] = []
    for t in range(n):
        trend = noise.drift * (t / 100.0) * spatial + 0.3 * noise.drift * math.sin(2 * np.pi * t / 60.0 + wave_phase)
        clean = phantom.render(transforms[t], [effect * s for s in signal[t]], trend)
        ar *= rho
        ar += math.sqrt(1 - rho * rho) * rng.standard_normal(size=phantom.shape, dtype=np.float32)
        re = clean.astype(np.float32)
        re *= 1.0 + np.float32(noise.physio * noise.noise) * ar
        re += np.float32(sigma) * rng.standard_normal(size=phantom.shape, dtype=np.float32)
        im = np.float32(sigma) * rng.standard_normal(size=phantom.shape, dtype=np.float32)
        data = np.sqrt(re * re + im * im)
        vols.append(
            Volume(
                data=np.ascontiguousarray(data),
                affine=phantom.affine.copy(),
                index=t,
                tr=tr,
                acquisition_time=36000.0 + t * tr,
                series_uid=f"1.2.826.0.1.3680043.9.7433.{seed}.{series_number}",
                series_number=series_number,
                series_description=description,
                manufacturer="SIEMENS",
                source=f"phantom:{t}",
                meta={"EchoTime": 0.03, "FlipAngle": 77.0},
            )
        )
    truth = {"motion": motion, "transforms": transforms, "signal": signal}
    return vols, truth


def localizer_design(
    n_blocks_per_class: int = 6,
    block_scans: int = 6,
    rest_scans: int = 5,
    lead_scans: int = 10,
    tail_scans: int = 8,
    tr: float = 2.0,
    seed: int = 0,
) -> tuple[list[dict], int]:
    """Blocked two-class design: (BIDS events, n_scans). Lead-in rest gives the baseline."""
    rng = np.random.default_rng(seed)
    order: list[str] = []
    for _ in range(n_blocks_per_class):  # each pair in random order: balanced over time
        pair = list(CLASSES)
        rng.shuffle(pair)
        order += pair
    events, scan = [], lead_scans
    for cls in order:
        events.append({"onset": scan * tr, "duration": block_scans * tr, "trial_type": cls})
        scan += block_scans + rest_scans
    n_scans = scan - rest_scans + tail_scans
    return events, n_scans


def class_signal(events: Sequence[dict], n_scans: int, tr: float, amplitude: Sequence[float] | None = None) -> np.ndarray:
    """(n_scans, n_classes) HRF-convolved time course per phantom class from events."""
    amps = [1.0] * len(events) if amplitude is None else list(amplitude)
    out = np.zeros((n_scans, len(CLASSES)))
    for c, name in enumerate(CLASSES):
        boxes = [(e["onset"], e["duration"], a) for e, a in zip(events, amps, strict=True) if e["trial_type"] == name]
        if boxes:
            out[:, c] = hrf_regressor(boxes, n_scans, tr)
    return out


def localizer_run(
    phantom: HeadPhantom,
    *,
    tr: float = 2.0,
    noise: NoiseModel | None = None,
    effect: float = 0.02,
    seed: int = 0,
    n_blocks_per_class: int = 6,
    block_scans: int = 6,
    rest_scans: int = 5,
    lead_scans: int = 10,
) -> SimulatedRun:
    """A decoder-construction run: labelled blocks of the two classes separated by rest."""
    events, n = localizer_design(n_blocks_per_class, block_scans, rest_scans, lead_scans, tr=tr, seed=seed)
    signal = class_signal(events, n, tr)
    vols, truth = simulate(phantom, signal, tr, noise or NoiseModel(), seed=seed + 1000, effect=effect, series_number=3, description="sim_localizer")
    return SimulatedRun(vols, events, tr, truth)


def nf_run(
    phantom: HeadPhantom,
    table,
    *,
    noise: NoiseModel | None = None,
    effect: float = 0.02,
    seed: int = 0,
    p_target: float = 0.5,
    strength_sd: float = 0.25,
) -> SimulatedRun:
    """A neurofeedback run following a `runtime.protocol.ProtocolTable`.

    During each trial's induction the simulated participant is (hidden state 1) or is not
    (state 0) in the target brain state; states are drawn seeded and balanced (exactly
    round(p_target · n) ones, in random order). State 1 evokes the "target" pattern, state 0 the
    "other" pattern, each with a random strength (mean 1, SD `strength_sd`), so a decoder of
    target vs other should score state-1 trials higher.
    """
    rng = np.random.default_rng(seed)
    tr = float(table.tr)
    n_trials = len(table.trials)
    n_on = int(round(p_target * n_trials))
    states = np.array([1] * n_on + [0] * (n_trials - n_on))
    rng.shuffle(states)
    strengths = np.clip(rng.normal(1.0, strength_sd, size=n_trials), 0.2, None)
    events, trials = [], []
    for trial, state, s in zip(table.trials, states, strengths, strict=True):
        cls = CLASSES[0] if state else CLASSES[1]
        onset = trial.induction.start * tr
        dur = len(trial.induction) * tr
        events.append({"onset": onset, "duration": dur, "trial_type": cls})
        trials.append(
            {
                "trial": trial.number,
                "state": int(state),
                "class": cls,
                "strength": float(s),
                "induction": [trial.induction.start, trial.induction.stop - 1],
                "calc_scan": trial.calc_scan,
            }
        )
    signal = class_signal(events, table.n_scans, tr, amplitude=strengths)
    vols, truth = simulate(phantom, signal, tr, noise or NoiseModel(), seed=seed + 2000, effect=effect, series_number=5, description="sim_neurofeedback")
    truth["trials"] = trials
    return SimulatedRun(vols, events, tr, truth)


def phantom_from_config(sim) -> tuple[HeadPhantom, NoiseModel, float]:
    """(phantom, noise model, effect) from a `runtime.config.SimulationConfig`."""
    ph = HeadPhantom(shape=tuple(sim.shape), voxel_size=tuple(sim.voxel_size_mm), seed=sim.seed)
    return ph, NoiseModel(noise=sim.noise, drift=sim.drift, motion_mm=sim.motion_mm), sim.effect
