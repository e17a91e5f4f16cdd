"""The synthetic head phantom: anatomy, noise level, real motion, hidden-state signal, files."""

from __future__ import annotations

import numpy as np
import pytest

from runtime.config import ProtocolConfig, TrialConfig
from runtime.protocol import build_table
from sim_scanner import phantom as P


@pytest.fixture(scope="module")
def ph() -> P.HeadPhantom:
    return P.HeadPhantom(seed=3)


def test_grid_is_ras_and_centred(ph):
    assert ph.shape == (64, 64, 36)
    assert np.allclose(np.diag(ph.affine)[:3], 3.0)
    centre = ph.affine @ np.array([31.5, 31.5, 17.5, 1.0])
    assert np.allclose(centre[:3], 0.0)


def test_epi_like_contrast(ph):
    a = ph.anatomy
    # CSF (ventricles) brighter than grey matter, brighter than white matter, skull dark
    c = ph.HEAD_CENTRE
    ijk = lambda xyz: tuple(np.round(np.linalg.solve(ph.affine[:3, :3], np.array(xyz) - ph.affine[:3, 3])).astype(int))  # noqa: E731
    ventricle = a[ijk((c[0] + 9.0, c[1] + 4.0, c[2] + 10.0))]
    white = a[ijk((c[0] + 30.0, c[1], c[2]))]
    grey = a[ijk((c[0], c[1] + ph.HEAD_RADII[1] - 15.0, c[2]))]
    skull = a[ijk((c[0], c[1] + ph.HEAD_RADII[1] - 8.0, c[2]))]
    assert ventricle > grey > white > skull
    assert a[0, 0, 0] < 1.0  # background
    assert 30000 < ph.brain_mask.sum() < 60000  # ~1.1 l of brain at 27 µl per voxel
    assert 200 < ph.roi_mask.sum() < 1000
    assert not (ph.roi_mask & ~ph.brain_mask).any()


def test_hrf_peaks_near_5_s():
    h = P.double_gamma_hrf(0.1)
    assert 4.5 <= np.argmax(h) * 0.1 <= 5.5
    assert h.min() < 0  # undershoot


def test_noise_level_and_motion_are_as_configured(ph):
    noise = P.NoiseModel(noise=0.015, physio=0.0, drift=0.0, motion_mm=0.0)
    vols, truth = P.simulate(ph, np.zeros((12, 2)), 2.0, noise, seed=1)
    data = np.stack([v.data for v in vols], -1)
    sd = data[ph.brain_mask].std(axis=1, ddof=1)
    assert np.median(sd) == pytest.approx(0.015 * ph.brain_mean(), rel=0.15)
    assert np.all(truth["motion"] == 0)

    moving = P.NoiseModel(noise=0.01, motion_mm=0.25)
    _, truth = P.simulate(ph, np.zeros((40, 2)), 2.0, moving, seed=2)
    assert np.abs(truth["motion"][:, :3]).max() == pytest.approx(0.25)
    assert np.allclose(truth["transforms"][5], P.rigid_matrix(truth["motion"][5]))


def test_motion_is_real_resampling_that_the_realigner_recovers():
    from runtime.realign import Realigner

    ph = P.HeadPhantom(seed=3, order=3)  # cubic: no interpolation blur to bias the estimate
    noise = P.NoiseModel(noise=0.01, physio=0.0, drift=0.0, motion_mm=0.0)
    pose = P.rigid_matrix([0.8, -0.5, 0.3, 0.01, -0.006, 0.008])
    ref = ph.render(np.eye(4))
    moved = ph.render(pose)
    assert np.abs(moved - ref)[ph.brain_mask].mean() > 5.0  # the image really changed
    rng = np.random.default_rng(0)
    moved = np.sqrt((moved + rng.normal(0, 7, moved.shape)) ** 2 + rng.normal(0, 7, moved.shape) ** 2)
    r = Realigner(ref.astype(np.float32), ph.affine).estimate(moved.astype(np.float32), ph.affine)
    # the realignment maps the moved image's world onto the reference: the inverse head pose
    pts = np.array([[0, -60, 6, 1], [50, 0, 0, 1], [0, 60, 30, 1], [-40, -20, -20, 1]], float).T
    err = np.linalg.norm((r.matrix @ pts - np.linalg.inv(pose) @ pts)[:3], axis=0)
    assert err.max() < 0.1, err
    del noise


def test_nf_run_states_balanced_and_pattern_tracks_state(ph):
    p = ProtocolConfig(tr=2.0, discard_scans=2, baseline_scans=8, n_trials=8,
                       trial=TrialConfig(rest_scans=3, induction_scans=3, delay_scans=3, calc_scans=1, feedback_scans=1))
    table = build_table(p)
    run = P.nf_run(ph, table, noise=P.NoiseModel(noise=0.01, motion_mm=0.1), effect=0.03, seed=4)
    assert len(run.volumes) == table.n_scans
    states = [t["state"] for t in run.truth["trials"]]
    assert sorted(states) == [0, 0, 0, 0, 1, 1, 1, 1]
    data = np.stack([v.data for v in run.volumes]).astype(np.float64)
    roi = data[:, ph.roi_mask]
    diff = ph.patterns[0][ph.roi_mask] - ph.patterns[1][ph.roi_mask]
    proj = []
    for tr in table.trials:
        w = roi[list(tr.window)].mean(0) - roi[list(table.baseline)].mean(0)
        proj.append(float(np.corrcoef(w, diff)[0, 1]))
    proj = np.array(proj)
    s = np.array(states)
    assert proj[s == 1].min() > proj[s == 0].max()
    assert [e["trial_type"] for e in run.events] == [t["class"] for t in run.truth["trials"]]


def test_localizer_events_and_dicom_round_trip(ph, tmp_path):
    from runtime.dicom import read_series

    run = P.localizer_run(ph, n_blocks_per_class=1, block_scans=2, rest_scans=2, lead_scans=3, seed=1)
    assert [e["trial_type"] for e in run.events].count("target") == 1
    out = run.write_dicom(tmp_path / "dcm", layout="mosaic")
    back = read_series(out)
    assert len(back) == len(run.volumes)
    for a, b in zip(run.volumes, back, strict=True):
        assert b.index == a.index
        # the reader may store the slices in the other order; the same world image either way
        vox = np.linalg.inv(a.affine) @ b.affine
        assert np.allclose(vox, np.round(vox), atol=1e-3)
        ijk = np.indices(b.shape).reshape(3, -1)
        ia = np.round(vox[:3, :3] @ ijk + vox[:3, 3:4]).astype(int)
        va = a.data[ia[0], ia[1], ia[2]]
        vb = b.data.reshape(-1)
        assert np.abs(vb - va).max() <= 0.5 + 1e-3 * np.abs(a.data).max()
    ev = run.write_events(tmp_path / "events.tsv").read_text().splitlines()
    assert ev[0] == "onset\tduration\ttrial_type" and len(ev) == 1 + len(run.events)
