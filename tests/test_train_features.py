"""Offline features (`decnef train`) == online features (the engine), on real DICOM files.

A phantom localizer with head motion is written as Siemens mosaic DICOM, `decnef train` builds a
bundle from it (top-k voxels, so the bundle holds fewer voxels than the mask), and the same
volumes are then fed one by one to the engine core with the training samples as its trials. The
feature vectors the decoder was trained on must equal the ones the engine computes, and both
must equal an independent numpy computation of the feature definition (full-volume reslice,
least-squares detrend on the history, baseline z-score, window mean).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from runtime.config import parse_config
from runtime.errors import UserError
from runtime.protocol import ProtocolTable, ScanRow, Trial
from sim_scanner import phantom as P

TOML = """
[train]
runs = [{ source = "loc/dicom", events = "loc/events.tsv" }]
roi_mask = "loc/roi.nii.gz"
classes = ["target", "other"]
hrf_delay_s = 4.0
window_scans = 3
n_voxels = 120
split = "blocks"
max_folds = 3
n_permutations = 3
seed = 1
[quality]
corr_threshold = 0.7
"""


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    from runtime.train import train

    out = tmp_path_factory.mktemp("train")
    ph = P.HeadPhantom(seed=1)
    loc = P.localizer_run(ph, noise=P.NoiseModel(noise=0.012, motion_mm=0.35), effect=0.02, seed=2,
                          n_blocks_per_class=3, block_scans=6, rest_scans=4, lead_scans=8)
    loc.write_dicom(out / "loc" / "dicom", layout="mosaic")
    loc.write_events(out / "loc" / "events.tsv")
    P.write_mask(ph, out / "loc" / "roi.nii.gz")
    cfg = parse_config(TOML, origin="test", base_dir=str(out))
    lines: list[str] = []
    res = train(cfg, out / "bundle" / "decoder.npz", log=lines.append)
    return cfg, res, out, lines, ph


def _online_features(cfg, bundle, samples, baseline, volumes):
    """Run the engine core over the volumes with one trial per training sample; return the
    feature vector it hands the decoder at each trial's calc scan."""
    from runtime.engine.core import EngineCore
    from runtime.engine.scoring import Scorer

    n = int(volumes[-1].index) + 1
    rows = tuple(ScanRow(i, "rest", 0) for i in range(n))
    trials = tuple(Trial(k + 1, s.label, s.window, s.window, s.calc_scan, range(s.calc_scan + 1, s.calc_scan + 1))
                   for k, s in enumerate(samples))
    table = ProtocolTable(rows=rows, trials=trials, baseline=baseline, tr=2.0)
    seen: list[np.ndarray] = []

    class Recorder:
        def __getattr__(self, name):
            return getattr(bundle, name)

        def likelihood(self, feat):
            seen.append(np.array(feat, dtype=np.float64))
            return bundle.likelihood(feat)

    from runtime.config import DecoderConfig

    core = EngineCore(cfg, Recorder(), table=table, scorer=Scorer(DecoderConfig()))
    scores = []
    for vol in volumes:
        for res in core.process(vol):
            scores += res.scores
    scores += core.finish()
    assert [s.header.trial for s in scores] == list(range(1, len(samples) + 1))
    return np.vstack(seen), scores


def test_training_features_equal_engine_features(trained):
    from decoders.bundle import load_bundle
    from runtime.dicom import read_series

    cfg, res, out, _, _ = trained
    bundle = load_bundle(res.bundle_path)
    assert len(bundle.voxels) == 120 < res.report["n_mask_voxels"]
    vols = read_series(out / "loc" / "dicom")
    base = range(0, 8)
    online, scores = _online_features(cfg, bundle, res.samples, base, vols)
    offline = res.features
    assert online.shape == offline.shape == (len(res.samples), 120)
    assert np.allclose(np.nan_to_num(online), offline, rtol=1e-10, atol=1e-10)
    # and the engine's likelihoods are the bundle's decision on those features
    lik = np.array([s.header.likelihood for s in scores])
    assert np.allclose(lik, [bundle.likelihood(f) for f in offline], atol=1e-12)


def test_engine_features_match_an_independent_computation(trained):
    """Full-volume reslice + explicit least-squares detrend/z-score, no shared feature code."""
    from decoders.bundle import load_bundle
    from runtime.dicom import read_series
    from runtime.realign import Realigner, reslice

    cfg, res, out, _, _ = trained
    bundle = load_bundle(res.bundle_path)
    vols = read_series(out / "loc" / "dicom")
    vox = np.asarray(bundle.voxels).reshape(-1, 3)
    tmpl = np.asarray(bundle.template, np.float32)
    aff = np.asarray(bundle.grid_affine, np.float64)
    rl = Realigner(tmpl, aff, max_iterations=cfg.realign.max_iterations, tolerance_mm=cfg.realign.tolerance_mm)
    y = []
    for v in vols:
        m = rl.estimate(v.data, v.affine).matrix
        full = reslice(v.data, v.affine, m, tmpl.shape, aff)
        y.append(full[tuple(vox.T)].astype(np.float64))
    y = np.array(y)
    base = range(0, 8)

    def line(scans):
        t = np.array(scans, float)
        A = np.column_stack([np.ones_like(t), t - t.mean()])
        coef = np.linalg.lstsq(A, y[scans], rcond=None)[0]
        return coef[1], t.mean()

    b0, t0 = line(list(base))
    det = y[list(base)] - np.outer(np.array(base) - t0, b0)
    mu, sd = det.mean(0), det.std(0, ddof=1)
    for k, s in enumerate(res.samples[::5]):
        b, tb = line(list(range(0, s.calc_scan + 1)))
        w = np.array(list(s.window))
        z = (y[w] - np.outer(w - tb, b) - mu) / sd
        ref = z.mean(0)
        got = res.features[5 * k]
        assert np.allclose(got, ref, rtol=1e-5, atol=1e-4), (s, np.abs(got - ref).max())


def test_report_and_progress(trained):
    _, res, out, lines, _ = trained
    rep = json.loads(res.report_path.read_text())
    assert res.report_path == res.bundle_path.parent / "report.json"
    for key in ("cv_accuracy", "cv_auc", "n_selected_voxels", "permutation_p", "confusion"):
        assert key in rep
    assert rep["cv_auc"] > 0.8  # the phantom's two states are separable
    assert np.array(rep["confusion"]).sum() == rep["n_samples"]
    assert 0 < rep["permutation_p"] <= 1 and rep["n_permutations"] == 3
    assert any("realigned" in ln and "volumes" in ln for ln in lines)
    assert any(ln.startswith("cross-validation") for ln in lines)


def _cfg(out: Path, extra: str = "", **train):
    base = {"runs": '[{ source = "loc/dicom", events = "loc/events.tsv" }]', "classes": '["target", "other"]',
            "roi_mask": '"loc/roi.nii.gz"', "split": '"blocks"', "n_permutations": "0"}
    base.update(train)
    body = "\n".join(f"{k} = {v}" for k, v in base.items())
    return parse_config(f"[train]\n{body}\n{extra}", origin="cfg.toml", base_dir=str(out))


@pytest.mark.parametrize(
    ("train", "needle"),
    [
        ({"classes": '["target", "nothing"]'}, "class 'nothing' has no sample"),
        ({"split": '"runs"'}, "needs at least 2 runs"),
        ({"runs": '[{ source = "loc/dicom", events = "missing.tsv" }]'}, "missing.tsv: events file not found"),
        ({"runs": '[{ source = "nowhere", events = "loc/events.tsv" }]'}, "not found"),
        ({"roi_mask": '"loc/far_mask.nii.gz"'}, "no voxel inside the template grid"),
        ({"classes": '["target"]'}, "needs two classes"),
    ],
)
def test_bad_input_is_one_line_user_error(trained, train, needle):
    import nibabel as nib

    from runtime.train import train as train_fn

    _, _, out, _, ph = trained
    far = out / "loc" / "far_mask.nii.gz"
    if not far.exists():
        aff = ph.affine.copy()
        aff[:3, 3] += 1000.0
        nib.save(nib.Nifti1Image(ph.roi_mask.astype(np.uint8), aff), str(far))
    cfg = _cfg(out, **train)
    with pytest.raises(UserError) as exc:
        train_fn(cfg, out / "bad" / "b.npz", log=lambda m: None)
    assert needle in str(exc.value) and "\n" not in str(exc.value)


def test_cli_bad_events_exit_2(trained, tmp_path):
    _, _, out, _, _ = trained
    (tmp_path / "ev.tsv").write_text("onset\tduration\ttrial_type\nabc\t2\ttarget\n")
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'[train]\nruns = [{{ source = "{out}/loc/dicom", events = "ev.tsv" }}]\nclasses = ["target", "other"]\n')
    p = subprocess.run([sys.executable, "-m", "runtime.cli.main", "train", str(cfg), "--output", str(tmp_path / "b.npz")],
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 2
    assert "line 2: onset/duration must be numbers" in p.stderr and "Traceback" not in p.stderr


def test_leave_one_run_out_with_a_dicom_run_and_a_nifti_run(trained, tmp_path):
    """split = "runs": two localizer runs (DICOM folder + 4D NIfTI, with their own motion),
    both realigned to volume 0 of the first; one fold per run; labels permuted within runs."""
    from runtime.train import train

    _, _, out, _, ph = trained
    run2 = P.localizer_run(ph, noise=P.NoiseModel(noise=0.012, motion_mm=0.3), effect=0.02, seed=7,
                           n_blocks_per_class=3, block_scans=6, rest_scans=4, lead_scans=8)
    run2.write_nifti(tmp_path / "run2.nii.gz")
    run2.write_events(tmp_path / "run2_events.tsv")
    cfg = parse_config(
        "[train]\n"
        f'runs = [{{ source = "{out}/loc/dicom", events = "{out}/loc/events.tsv" }}, '
        '{ source = "run2.nii.gz", events = "run2_events.tsv" }]\n'
        f'roi_mask = "{out}/loc/roi.nii.gz"\nclasses = ["target", "other"]\nsplit = "runs"\nn_permutations = 2\n',
        origin="loro.toml", base_dir=str(tmp_path))
    lines: list[str] = []
    res = train(cfg, tmp_path / "b.npz", log=lines.append)
    rep = res.report
    assert rep["n_folds"] == 2 and len(rep["runs"]) == 2
    assert rep["runs"][1]["source"].endswith("run2.nii.gz") and rep["runs"][1]["n_scans"] == len(run2.volumes)
    assert rep["cv_auc"] >= 0.8 and rep["n_samples"] == 24  # 6 blocks x 2 windows per run
    assert {s.run for s in res.samples} == {0, 1}
    assert sum("realigned" in ln for ln in lines) == 2
