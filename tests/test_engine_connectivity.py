"""Online functional-connectivity neurofeedback (FCNef, METHOD.md §2) in the engine.

Real data (the studyforrest run, read once and cached by test_engine_data): `decnef train` builds a
connectivity bundle from an atlas of four ROIs; the engine core, fed the volumes one by one, must
compute for every trial the very pair features and likelihoods that (a) `decnef train` computed
for the same windows, (b) the offline feature path gives on the engine's ROI values, and (c) an
independent numpy reference (ROI mean → least-squares line over the valid scans so far → Pearson r
over the window's valid scans → atanh) gives. A window with fewer than 3 valid scans is no
feedback; a restart rebuilds the FC state. A synthetic run where two ROIs' correlation flips
between conditions checks the direction of the score; bad connectivity bundles are one line.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import msgspec
import numpy as np
import pytest
from test_engine_data import PROTOCOL

from decoders.bundle import (
    BundleError,
    DecoderBundle,
    bundle_from_estimator,
    load_bundle,
    save_bundle,
)
from runtime.config import DecoderConfig, parse_config
from runtime.engine.core import EngineCore, RestoredVolume
from runtime.engine.scoring import Scorer, score_from_likelihood
from runtime.features import FC_MIN_SCANS, TrialWindow, run_connectivity
from runtime.protocol import ProtocolTable, ScanRow, Trial, build_table
from runtime.volume import Volume

REPO = Path(__file__).resolve().parents[1]

TRAIN_TOML = """
[session]
subject = "forrest"
task = "visloc"
[protocol]
tr = 2.0
[realign]
enabled = true
[denoise]
method = "detrend"
[train]
runs = [{{ source = "{src}", events = "{events}" }}]
roi_atlas = "{atlas}"
classes = ["stim=face+scene+body+house+object+scramble"]
rest_class = "rest"
estimator = "connectivity"
hrf_delay_s = 4.0
window_scans = 6
split = "blocks"
max_folds = 3
n_permutations = 0
fisher_z = true
"""


# -- real data: fixtures -------------------------------------------------------------------------

def four_roi_atlas(template: np.ndarray) -> np.ndarray:
    """Labels 1-4: the brain mask of slices 12-21 split into quadrants (labels 1..4)."""
    from scipy import ndimage

    from runtime.realign.mask import head_mask

    m = ndimage.binary_erosion(head_mask(template, dilate=0), iterations=2)
    m[:, :, :12] = False
    m[:, :, 22:] = False
    ijk = np.argwhere(m)
    ci, cj = np.median(ijk[:, 0]), np.median(ijk[:, 1])
    lab = np.zeros(template.shape, np.int16)
    for i, j, k in ijk:
        lab[i, j, k] = 1 + int(i >= ci) + 2 * int(j >= cj)
    return lab


@pytest.fixture(scope="module")
def trained(forrest, studyforrest_dir, tmp_path_factory):
    """`decnef train` (estimator = connectivity) on the cached volumes of the run."""
    import nibabel as nib

    from runtime.config import load_config
    from runtime.train import train

    data, affine = forrest
    out = tmp_path_factory.mktemp("fc")
    atlas = four_roi_atlas(data[0])
    nib.save(nib.Nifti1Image(atlas, affine), str(out / "atlas.nii.gz"))
    src = studyforrest_dir / "dicoms"
    (out / "train.toml").write_text(TRAIN_TOML.format(src=src, events=studyforrest_dir / "events.tsv",
                                                      atlas=out / "atlas.nii.gz"))
    cfg = load_config(out / "train.toml")
    vols = [Volume(data=data[i], affine=affine, index=i, tr=2.0) for i in range(len(data))]
    lines: list[str] = []
    res = train(cfg, out / "fc.npz", log=lines.append, preloaded={cfg.path(cfg.train.runs[0].source): vols})
    return cfg, res, atlas, lines


def run_core(cfg, bundle, data, affine, *, table=None, skip=(), stop=None, core=None):
    core = core or EngineCore(cfg, bundle, table=table)
    core.warmup()
    results = []
    gap: list[int] = []
    for i in range(len(data)):
        if i <= core.last_index:
            continue
        if stop is not None and i >= stop:
            return core, results
        if i in skip:
            gap.append(i)
            continue
        results += core.process(Volume(data=data[i], affine=affine, index=i, tr=2.0), gap_before=gap)
        gap = []
    for sc in core.finish():
        results[-1].scores.append(sc)
    return core, results


def scores_of(results):
    out = {}
    for r in results:
        for s in r.scores:
            assert s.header.trial not in out, "a trial was scored twice"
            out[s.header.trial] = s.header
    return out


def roi_arrays(results, n, n_vox):
    values = np.full((n, n_vox), np.nan)
    valid = np.zeros(n, bool)
    for r in results:
        if r.roi is not None:
            values[r.volume], valid[r.volume] = r.roi[0], r.roi[1]
    return values, valid


def reference_features(values, valid, voxel_roi, n_rois, pairs, window, calc, first=0):
    """Independent numpy reference of the online FC feature (progressive detrend)."""
    y = np.stack([values[:, voxel_roi == r].mean(axis=1) for r in range(n_rois)], axis=1)
    fit = [s for s in range(first, calc + 1) if valid[s]]
    used = [s for s in window if valid[s]]
    den = np.empty((len(used), n_rois))
    for r in range(n_rois):
        b = np.polyfit(np.array(fit, float), y[fit, r], 1)[0]
        den[:, r] = y[used, r] - b * np.array(used, float)  # offsets do not change r
    return np.arctanh([np.corrcoef(den[:, a], den[:, b])[0, 1] for a, b in pairs])


# -- real data: train + engine ---------------------------------------------------------------------

def test_train_builds_a_connectivity_bundle(trained):
    _, res, atlas, lines = trained
    b = load_bundle(res.bundle_path)
    assert b.kind == "connectivity" and b.n_rois == 4 and b.extra["roi_labels"] == [1, 2, 3, 4]
    assert b.extra["pairs"].shape == (6, 2) and b.feature["features"] == "connectivity"
    assert len(b.voxels) == int((atlas > 0).sum()) == res.report["n_bundle_voxels"]
    assert np.array_equal(atlas[tuple(b.voxels.T)], np.array(b.extra["voxel_roi"]) + 1)
    assert res.features.shape == (len(res.samples), 6) and np.isfinite(res.features).all()
    assert res.report["n_selected_voxels"] == len(b.voxels) and 1 <= res.report["n_pairs_nonzero"] <= 6
    assert all(len(s.window) >= FC_MIN_SCANS for s in res.samples)
    assert any("4 ROIs" in ln for ln in lines)


def test_online_features_equal_training_features(trained, forrest):
    """Trials = the training samples: the engine's pair features equal `decnef train`'s."""
    cfg, res, _, _ = trained
    data, affine = forrest
    bundle = load_bundle(res.bundle_path)
    b0, b1 = res.report["runs"][0]["baseline"]
    base = range(b0, b1 + 1)
    trials = tuple(Trial(k + 1, s.label, s.window, s.window, s.calc_scan, range(s.calc_scan + 1, s.calc_scan + 1))
                   for k, s in enumerate(res.samples))
    table = ProtocolTable(rows=tuple(ScanRow(i, "rest", 0) for i in range(len(data))), trials=trials, baseline=base, tr=2.0)
    core = EngineCore(cfg, bundle, table=table, scorer=Scorer(DecoderConfig(target_class="stim")))
    core, results = run_core(cfg, bundle, data, affine, core=core)
    online = np.stack([core.trial_features[k + 1] for k in range(len(res.samples))])
    diff = np.abs(online - res.features).max()
    print(f"FC features, online vs decnef train: max |diff| {diff:.2e} over {online.size} values")
    assert diff < 1e-8
    lik = scores_of(results)
    assert all(lik[k + 1].likelihood == pytest.approx(bundle.likelihood(res.features[k]), abs=1e-8)
               for k in range(len(res.samples)))


@pytest.fixture(scope="module")
def protocol_run(trained, forrest):
    """The 7-trial protocol of the engine tests (windows of 7 scans) with the FC bundle."""
    _, res, _, _ = trained
    data, affine = forrest
    bundle = load_bundle(res.bundle_path)
    cfg = parse_config(PROTOCOL, origin="test.toml")
    core, results = run_core(cfg, bundle, data, affine)
    return cfg, bundle, core, results


def test_every_trial_scored_and_equal_to_offline(protocol_run, forrest):
    cfg, bundle, core, results = protocol_run
    data, _ = forrest
    table = build_table(cfg.protocol)
    scores = scores_of(results)
    assert sorted(scores) == [t.number for t in table.trials]
    values, valid = roi_arrays(results, len(data), len(bundle.voxels))
    vr = np.asarray(bundle.extra["voxel_roi"])
    windows, n_valid = run_connectivity(values, valid, vr, bundle.n_rois, table.baseline,
                                        [TrialWindow(t.window, t.calc_scan) for t in table.trials])
    d_feat = d_ref = d_lik = 0.0
    for k, t in enumerate(table.trials):
        h = scores[t.number]
        assert h.score is not None and h.likelihood is not None and 0 <= h.score <= 100
        assert h.n_valid_scans == n_valid[k] == 7 and h.volume == t.calc_scan
        off = bundle.features_from_timecourses(windows[k])
        ref = reference_features(values, valid, vr, bundle.n_rois, bundle.extra["pairs"], t.window, t.calc_scan,
                                 table.baseline.start)
        on = core.trial_features[t.number]
        assert np.isfinite(on).all()
        d_feat = max(d_feat, np.abs(on - off).max())
        d_ref = max(d_ref, np.abs(on - ref).max())
        d_lik = max(d_lik, abs(h.likelihood - bundle.likelihood(off)))
        assert h.score == score_from_likelihood(h.likelihood)
    print(f"FC online vs offline: features {d_feat:.2e}, vs numpy reference {d_ref:.2e}, likelihood {d_lik:.2e}")
    assert d_feat < 1e-8 and d_ref < 1e-8 and d_lik < 1e-8
    # the stimulation blocks covered by the windows are what the decoder was trained to see
    assert np.mean([scores[t.number].likelihood for t in table.trials]) > 0.5


def test_too_few_valid_scans_is_no_feedback(protocol_run, forrest):
    cfg, bundle, _, full = protocol_run
    data, affine = forrest
    table = build_table(cfg.protocol)
    t3, t5 = table.trials[2], table.trials[4]
    skip = set(list(t3.window)[:-2])  # two valid scans left in trial 3's window
    skip |= {t5.window[1], t5.window[4]}  # two censored scans in trial 5's window
    core, results = run_core(cfg, bundle, data, affine, skip=skip)
    scores, ref = scores_of(results), scores_of(full)
    h = scores[3]
    assert h.score is None and h.likelihood is None and h.n_valid_scans == 2
    assert "no_feedback" in h.flags and "few_valid_scans" in h.flags and 3 not in core.trial_features
    for n in (1, 2):  # scored before the gap: unchanged
        assert scores[n].likelihood == pytest.approx(ref[n].likelihood, abs=1e-12)
    # the others: scored, and equal to the offline path / the numpy reference with the censored scans
    values, valid = roi_arrays(results, len(data), len(bundle.voxels))
    assert not valid[sorted(skip)].any()
    vr = np.asarray(bundle.extra["voxel_roi"])
    windows, n_valid = run_connectivity(values, valid, vr, bundle.n_rois, table.baseline,
                                        [TrialWindow(t.window, t.calc_scan) for t in table.trials])
    assert windows[2] is None and n_valid[2] == 2
    for k in (3, 4, 5, 6):
        t = table.trials[k]
        on = core.trial_features[t.number]
        assert scores[t.number].score is not None and scores[t.number].n_valid_scans == n_valid[k]
        assert np.abs(on - bundle.features_from_timecourses(windows[k])).max() < 1e-10
        ref_f = reference_features(values, valid, vr, bundle.n_rois, bundle.extra["pairs"], t.window, t.calc_scan)
        assert np.abs(on - ref_f).max() < 1e-8
    assert scores[5].n_valid_scans == 5 and "partial" in scores[5].flags


def test_restart_rebuilds_the_fc_state(protocol_run, forrest):
    """Recovery replays the spooled voxel values into a fresh core: same scores after the crash."""
    cfg, bundle, _, full = protocol_run
    data, affine = forrest
    crashed, before = run_core(cfg, bundle, data, affine, stop=45)
    restored = []
    for r in before:
        rv = RestoredVolume(index=r.volume, status=r.status)
        if r.roi is not None:
            rv.values, rv.valid, rv.nuisance = r.roi
        if r.telemetry is not None:
            t = r.telemetry
            rv.params = np.array([t.trans_x, t.trans_y, t.trans_z, t.rot_x, t.rot_y, t.rot_z])
        restored.append(rv)
    core = EngineCore(cfg, bundle)
    core.restore(restored, set(crashed.scored))
    _, after = run_core(cfg, bundle, data, affine, core=core)
    ref, got = scores_of(full), scores_of(before) | scores_of(after)
    assert sorted(got) == sorted(ref)
    for n in ref:
        assert got[n].likelihood == pytest.approx(ref[n].likelihood, abs=1e-9)
        assert got[n].score == ref[n].score


def test_regress_denoise_online_equals_offline(trained, forrest):
    _, res, _, _ = trained
    data, affine = forrest
    bundle = load_bundle(res.bundle_path)
    text = PROTOCOL.replace("baseline_scans = 5", "baseline_scans = 20").replace(
        "n_trials = 7", "n_trials = 4").replace("[6, 18, 30, 42, 54, 66, 78]", "[42, 54, 66, 78]")
    cfg = parse_config(text + '[denoise]\nmethod = "regress"\nregress_scans = 20\n')
    core, results = run_core(cfg, bundle, data[:90], affine)
    table = build_table(cfg.protocol)
    n = 90
    values, valid = roi_arrays(results, n, len(bundle.voxels))
    nuis = np.full((n, 7), np.nan)
    for r in results:
        if r.roi is not None:
            nuis[r.volume] = r.roi[2]
    windows, _ = run_connectivity(values, valid, bundle.extra["voxel_roi"], bundle.n_rois, table.baseline,
                                  [TrialWindow(t.window, t.calc_scan) for t in table.trials], method="regress",
                                  regress_scans=20, nuisance=nuis)
    scores = scores_of(results)
    for k, t in enumerate(table.trials):
        off = bundle.features_from_timecourses(windows[k])
        assert np.abs(core.trial_features[t.number] - off).max() < 1e-10
        assert scores[t.number].likelihood == pytest.approx(bundle.likelihood(off), abs=1e-10)


# -- synthetic: a correlation that flips between conditions ------------------------------------------

SYN_PROTOCOL = """
[protocol]
tr = 2.0
discard_scans = 0
baseline_scans = 5
n_trials = 6
trial_labels = ["up", "down", "up", "down", "up", "down"]
window_start = 0
window_end = 0
end_scans = 1
[protocol.trial]
rest_scans = 2
induction_scans = 14
delay_scans = 1
calc_scans = 1
feedback_scans = 1
[realign]
enabled = false
"""


def fc_bundle(template, voxels, voxel_roi, weight=4.0, **extra):
    """A hand-made bundle whose answer is known: P(up) = sigmoid(weight * atanh r(ROI 0, ROI 1))."""
    return DecoderBundle(weights=np.array([[weight]]), intercept=np.zeros(1), classes=["down", "up"], target_class="up",
                         voxels=voxels, grid_shape=template.shape, grid_affine=np.eye(4), template=template,
                         feature_mean=np.zeros(1), feature_scale=np.ones(1), feature={"features": "connectivity"},
                         metrics={}, kind="connectivity",
                         extra={"pairs": np.array([[0, 1]]), "voxel_roi": voxel_roi, "fisher_z": True, **extra})


def synthetic_run(cfg, seed=0):
    rng = np.random.default_rng(seed)
    shape = (12, 12, 6)
    template = (1000 + 200 * rng.random(shape)).astype(np.float32)
    a_vox = np.argwhere(np.ones((3, 3, 2), bool)) + [2, 2, 2]
    b_vox = np.argwhere(np.ones((3, 3, 2), bool)) + [7, 7, 2]
    voxels = np.concatenate([a_vox, b_vox]).astype(np.int64)
    voxel_roi = np.repeat([0, 1], [len(a_vox), len(b_vox)])
    table = build_table(cfg.protocol)
    sign = np.zeros(table.n_scans)
    for t in table.trials:
        sign[list(t.induction)] = 1.0 if t.label == "up" else -1.0
    vols = []
    for s in range(table.n_scans):
        shared = rng.normal()
        a = 5 * shared + rng.normal()
        b = 5 * (sign[s] * shared if sign[s] else rng.normal()) + rng.normal()
        d = template + rng.normal(0, 1, shape).astype(np.float32) + 0.3 * s  # a drift the detrend removes
        d[tuple(a_vox.T)] += a
        d[tuple(b_vox.T)] += b
        vols.append(Volume(data=d.astype(np.float32), affine=np.eye(4), index=s, tr=2.0))
    return fc_bundle(template, voxels, voxel_roi), vols, table


@pytest.mark.parametrize("direction", ["up", "down"])
def test_synthetic_flip_scores_high_then_low(direction):
    cfg = parse_config(SYN_PROTOCOL + f'[decoder]\ndirection = "{direction}"\n')
    bundle, vols, table = synthetic_run(cfg)
    core = EngineCore(cfg, bundle)
    got = {}
    for v in vols:
        for r in core.process(v):
            for s in r.scores:
                got[s.header.trial] = s.header
    assert sorted(got) == [t.number for t in table.trials]
    for t in table.trials:
        h = got[t.number]
        r = np.tanh(core.trial_features[t.number][0])
        high = (t.label == "up") == (direction == "up")
        assert (r > 0.8) if t.label == "up" else (r < -0.8), (t.label, r)
        assert (h.score >= 95) if high else (h.score <= 5), (t.label, direction, h.score)


# -- bundles --------------------------------------------------------------------------------------------

def trained_fc_bundle():
    from test_decoders_other import fc_windows

    from decoders import make_decoder

    x, y = fc_windows(n_rois=3)
    est = make_decoder("connectivity").fit(x, y)
    return est, x, bundle_from_estimator(
        est, voxels=np.argwhere(np.ones((3, 3, 1))), grid_shape=(3, 3, 1), grid_affine=np.eye(4),
        template=np.ones((3, 3, 1)), feature={"window_scans": 20}, metrics={}, target_class="up",
        extra={"voxel_roi": np.array([0, 0, 0, 1, 1, 1, 2, 2, 2]), "roi_labels": [4, 7, 9], "min_valid_scans": 5})


def test_connectivity_bundle_round_trip(tmp_path):
    est, x, b = trained_fc_bundle()
    save_bundle(b, tmp_path / "fc.npz")
    back = load_bundle(tmp_path / "fc.npz")
    assert back.kind == "connectivity" and back.n_rois == 3 and back.sha256 == b.sha256
    assert back.extra["roi_labels"] == [4, 7, 9] and back.extra["min_valid_scans"] == 5
    np.testing.assert_array_equal(back.extra["voxel_roi"], b.extra["voxel_roi"])
    up = list(est.classes_).index("up")
    for tc in x[:4]:
        f = back.features_from_timecourses(tc)
        assert back.likelihood(f) == back.likelihood(tc) == pytest.approx(est.predict_proba(tc[None])[0, up], abs=1e-12)


def write_bad(tmp_path, name, edit):
    """A bundle file whose contents are bad but whose hash is right (what a buggy writer would make)."""
    from decoders.bundle import _canonical_json, content_hash

    _, _, b = trained_fc_bundle()
    arrays, meta = b._payload()
    edit(arrays, meta)
    meta["sha256"] = content_hash(arrays, meta)
    path = tmp_path / name
    np.savez(path, meta=np.frombuffer(_canonical_json(meta).encode(), np.uint8), **arrays)
    return path


def drop_voxel_roi(arrays, meta):
    del arrays["extra__voxel_roi"]
    meta["extra_arrays"].remove("voxel_roi")


def pair_out_of_range(arrays, meta):
    arrays["extra__pairs"] = np.array([[0, 1], [0, 2], [1, 5]], np.int64)


@pytest.mark.parametrize(("edit", "message"), [(drop_voxel_roi, "needs extra['voxel_roi']"),
                                               (pair_out_of_range, "extra['pairs'] holds ROI indices outside 0..2")])
def test_bad_connectivity_bundle_is_one_line(tmp_path, edit, message):
    from runtime.engine.process import load_decoder
    from runtime.errors import BundleError as RuntimeBundleError

    path = write_bad(tmp_path, "bad.npz", edit)
    with pytest.raises(BundleError, match=re.escape(message)) as ei:
        load_bundle(path)
    assert "\n" not in str(ei.value) and str(path) in str(ei.value)
    cfg = parse_config(f'[decoder]\nbundle = "{path}"\n')
    with pytest.raises(RuntimeBundleError, match=re.escape(message)) as ei2:
        load_decoder(cfg)
    assert "\n" not in str(ei2.value)


def test_bad_roi_assignments_are_refused():
    template = np.ones((3, 3, 1), np.float32)
    vox = np.argwhere(np.ones((3, 3, 1)))
    with pytest.raises(BundleError, match="ROI 1 of 3 has no voxel"):
        fc_bundle(template, vox, np.array([0, 0, 0, 0, 2, 2, 2, 2, 2]), n_rois=3)
    with pytest.raises(BundleError, match=r"must be \(9,\) ints"):
        fc_bundle(template, vox, np.array([0, 1]))
    with pytest.raises(BundleError, match="with itself"):
        b = fc_bundle(template, vox, np.repeat([0, 1, 2], 3))
        b.extra["pairs"] = np.array([[1, 1]])
        b.validate()


def test_engine_accepts_fc_bundle_and_checks_its_windows(tmp_path):
    """`decnef run --check` on configs/fcnef_example.toml with a connectivity bundle passes;
    score windows shorter than the bundle's min_valid_scans are refused in one line."""
    _, _, b = trained_fc_bundle()
    save_bundle(b, tmp_path / "fc.npz")
    ok = tmp_path / "ok.toml"
    text = (REPO / "configs" / "fcnef_example.toml").read_text()
    for old, new in (('bundle = "../derivatives/fcnef/fc_decoder.npz"', 'bundle = "fc.npz"'),
                     ('target_class = "high"', 'target_class = "up"')):
        assert old in text
        text = text.replace(old, new)
    ok.write_text(text)
    short = tmp_path / "short.toml"
    short.write_text(PROTOCOL.replace("induction_scans = 8", "induction_scans = 3")
                     + '[decoder]\nbundle = "fc.npz"\n')  # 4-scan windows < the bundle's min_valid_scans = 5
    p = subprocess.run([sys.executable, "-m", "runtime.cli.main", "run", str(ok), "--check"], capture_output=True,
                       text=True, cwd=REPO)
    assert p.returncode == 0, p.stdout + p.stderr
    assert "bundle OK" in p.stdout
    p = subprocess.run([sys.executable, "-m", "runtime.cli.main", "run", str(short), "--check"], capture_output=True,
                       text=True, cwd=REPO)
    assert p.returncode == 2 and "Traceback" not in p.stderr
    assert "needs >= 5 valid scans" in p.stderr and len(p.stderr.strip().splitlines()) == 1


def test_train_connectivity_needs_an_atlas(trained, forrest):
    from runtime.errors import UserError
    from runtime.train import train

    cfg, _, _, _ = trained
    data, affine = forrest
    vols = [Volume(data=data[i], affine=affine, index=i, tr=2.0) for i in range(len(data))]
    bad = msgspec.structs.replace(cfg, train=msgspec.structs.replace(cfg.train, roi_atlas=""))
    with pytest.raises(UserError, match="train.roi_atlas"):
        train(bad, "/nonexistent/x.npz", log=lambda m: None, preloaded={cfg.path(cfg.train.runs[0].source): vols})
    bad = msgspec.structs.replace(cfg, train=msgspec.structs.replace(cfg.train, fc_pairs=[[1, 9]]))
    with pytest.raises(UserError, match=r"train.fc_pairs': pair \[1, 9\]"):
        train(bad, "/nonexistent/x.npz", log=lambda m: None, preloaded={cfg.path(cfg.train.runs[0].source): vols})


def test_kill_9_mid_run_and_restart_with_a_connectivity_bundle(trained, protocol_run, forrest, tmp_path):
    """`decnef engine` as a process: killed after trial 3, restarted while volumes keep coming;
    recovery rebuilds the FC state from the ROI spool, so every trial is scored once and equals
    the uninterrupted run."""
    import os
    import signal
    import threading

    from test_engine_process import Collector, Streamer, _start_engine, _wait, write_config

    from runtime.config import load_config
    from runtime.messages import TOPIC_SCORE
    from runtime.outputs import RunFiles, read_tsv

    _, res, _, _ = trained
    _, _, _, full = protocol_run
    data, affine = forrest
    cfg_path = write_config(tmp_path, res.bundle_path)
    cfg = load_config(cfg_path)
    files = RunFiles.for_run(cfg)
    streamer = Streamer(cfg, tmp_path / "stream", data, affine)
    collector = Collector(cfg)
    procs = []
    lines1: list[str] = []
    lines2: list[str] = []
    try:
        procs.append(_start_engine(cfg_path, lines1))
        assert _wait(lambda: any("engine ready" in s for s in lines1), 90), lines1
        stop_stream = threading.Event()
        player = streamer.play(range(100), 0.04, stop_stream)
        assert _wait(lambda: len(read_tsv(files.scores)) >= 3, 60), lines1
        os.kill(procs[0].pid, signal.SIGKILL)
        procs[0].wait(10)
        assert 0 < len(read_tsv(files.motion)) < 100
        procs.append(_start_engine(cfg_path, lines2))
        assert procs[1].wait(120) == 0, "\n".join(lines2)
        player.join(10)
        assert collector.wait_for(lambda c: len(c.of(TOPIC_SCORE)) >= 7, 10)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
        collector.close()
        streamer.pub.close()
    assert any("resumed after volume" in s for s in lines2), lines2
    rows = read_tsv(files.scores)
    assert [int(r["trial"]) for r in rows] == list(range(1, 8))
    assert sorted(h.trial for h in collector.of(TOPIC_SCORE)) == list(range(1, 8))
    ref = scores_of(full)
    for r in rows:
        h = ref[int(r["trial"])]
        assert float(r["score"]) == h.score and int(r["n_valid_scans"]) == 7
        assert float(r["likelihood"]) == pytest.approx(h.likelihood, abs=1e-6)
