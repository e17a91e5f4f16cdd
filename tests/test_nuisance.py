"""ATR REGRESS's full nuisance set (E8): WM and CSF mean signals from segmentation masks, on the
real studyforrest run. The masks are built here from the template by a simple intensity split
(EPI: CSF brightest, WM darker than grey matter) - a stand-in for the lab's SPM/FSL segmentation
- and saved as probability NIfTIs on a 2x finer grid than the template, so the nearest-neighbour
resampling, the 0.9 threshold and the WM erosion are all exercised."""

from __future__ import annotations

import math

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage
from test_engine import make_bundle, run_core, scores_of
from test_engine_data import PROTOCOL

from decoders.bundle import BundleError, load_bundle, save_bundle
from runtime.config import parse_config
from runtime.engine.core import EngineCore, RestoredVolume, brain_voxels
from runtime.errors import ConfigError, UserError
from runtime.features import FeatureState, TrialWindow, run_features
from runtime.nuisance import EXTRA_KEYS, bundle_extra, config_tissue_voxels
from runtime.outputs import RoiSpool, read_roi_spool
from runtime.protocol import build_table
from runtime.realign.mask import head_mask

# a 25-scan baseline and a 30-scan REGRESS window: room for 18 nuisance columns + constant + spikes
TEXT = PROTOCOL.replace("baseline_scans = 5", "baseline_scans = 25").replace(
    "n_trials = 7", "n_trials = 5").replace("[6, 18, 30, 42, 54, 66, 78]", "[30, 42, 54, 66, 78]")
REGRESS = '[denoise]\nmethod = "regress"\nregress_scans = 30\n'
OLD_REGRESS_LIKELIHOODS = {1: 0.7524754508625661, 2: 0.7735706431562958, 3: 0.736375138902604,
                           4: 0.5996882667945278, 5: 0.4951121259898461}
"""test_engine.py::test_regress_denoise_matches_offline's scores (motion + GS only), measured
before WM/CSF existed: a bundle without tissue voxels must still give exactly these."""


@pytest.fixture(scope="module")
def bundle(forrest):
    data, affine = forrest
    return make_bundle(data, affine)


def tissue_probabilities(template: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(WM, CSF) 'probability' maps on the template grid from intensity quantiles inside the brain:
    1.0 for the core of each class, a sub-threshold 0.6/0.8 band around it (must be dropped)."""
    brain = ndimage.binary_erosion(head_mask(template, dilate=0), iterations=1)
    q = np.quantile(template[brain], [0.15, 0.40, 0.50, 0.90, 0.95])
    wm = np.zeros(template.shape)
    wm[brain & (template >= q[0]) & (template < q[1])] = 1.0
    wm[brain & (template >= q[1]) & (template < q[2])] = 0.6
    csf = np.zeros(template.shape)
    csf[brain & (template >= q[4])] = 1.0
    csf[brain & (template >= q[3]) & (template < q[4])] = 0.8
    return wm, csf


def save_upsampled(prob: np.ndarray, affine: np.ndarray, path) -> None:
    """The map on a 2x finer grid whose voxels (2i, 2i+1) lie inside template voxel i."""
    hi = np.repeat(np.repeat(np.repeat(prob, 2, 0), 2, 1), 2, 2).astype(np.float32)
    a = np.asarray(affine, np.float64) @ np.diag([0.5, 0.5, 0.5, 1.0])
    a[:3, 3] += a[:3, :3] @ np.full(3, -0.5)  # fine voxel h's centre at template coordinate h/2 - 0.25
    nib.save(nib.Nifti1Image(hi, a), str(path))


@pytest.fixture(scope="module")
def masks(forrest, tmp_path_factory):
    """Mask files + the template-grid voxels expected from them (computed here, independently)."""
    data, affine = forrest
    wm, csf = tissue_probabilities(data[0])
    d = tmp_path_factory.mktemp("masks")
    save_upsampled(wm, affine, d / "wm.nii.gz")
    save_upsampled(csf, affine, d / "csf.nii.gz")
    exp_wm = np.argwhere(ndimage.binary_erosion(wm > 0.9, iterations=1))
    exp_csf = np.argwhere(csf > 0.9)
    return d, exp_wm, exp_csf


def cfg_with(d, extra: str = "", text: str = TEXT):
    return parse_config(text + REGRESS + f'wm_mask = "{d / "wm.nii.gz"}"\ncsf_mask = "{d / "csf.nii.gz"}"\n' + extra,
                        origin="test.toml")


def thin(ijk: np.ndarray, n: int = 4096) -> np.ndarray:
    return ijk[:: math.ceil(len(ijk) / n)] if len(ijk) > n else ijk


def collect(results, n, n_vox, p):
    values = np.full((n, n_vox), np.nan)
    valid = np.zeros(n, bool)
    nuis = np.full((n, p), np.nan)
    for r in results:
        if r.roi is not None:
            values[r.volume], valid[r.volume], nuis[r.volume] = r.roi
    return values, valid, nuis


def test_mask_resampling_threshold_and_erosion(forrest, masks):
    data, affine = forrest
    d, exp_wm, exp_csf = masks
    got = config_tissue_voxels(cfg_with(d), "denoise", data[0].shape, affine)
    assert np.array_equal(got["wm"], exp_wm) and np.array_equal(got["csf"], exp_csf)
    assert 300 < len(exp_wm) < 20000 and 100 < len(exp_csf) < 20000
    wm_vals, csf_vals = data[0][tuple(exp_wm.T)], data[0][tuple(exp_csf.T)]
    assert csf_vals.mean() > 1.3 * wm_vals.mean()  # the split did separate the two tissues


def test_nuisance_columns_equal_numpy(forrest, bundle, masks):
    """Without realignment (identity) the WM/CSF columns are plain means of the masks' voxels:
    the engine's columns equal numpy's to 1e-9; the regression uses all 18 columns (E8)."""
    data, affine = forrest
    d, exp_wm, exp_csf = masks
    cfg = cfg_with(d, "[realign]\nenabled = false\n")
    core, results, end = run_core(cfg, bundle, data, affine)
    assert core.n_nuisance == 9
    n = len(data)
    values, valid, nuis = collect(results, n, len(bundle.voxels), 9)
    wm_ijk, csf_ijk, gs_ijk = thin(exp_wm), thin(exp_csf), brain_voxels(data[0])
    for s in range(1, n):
        vol = data[s].astype(np.float64)
        assert np.array_equal(nuis[s, :6], np.zeros(6))
        assert nuis[s, 6] == pytest.approx(vol[tuple(gs_ijk.T)].mean(), rel=1e-6)  # float32 mean, as before
        assert abs(nuis[s, 7] - vol[tuple(wm_ijk.T)].mean()) < 1e-9
        assert abs(nuis[s, 8] - vol[tuple(csf_ijk.T)].mean()) < 1e-9
    # E8 for the last window: y - X pinv(X) y + mean(y), X = [1, N - mean, dN - mean, spikes]
    fs = core.features
    last = n - 1
    hist = sorted(s for s in fs.values if s <= last)[-30:]
    y = np.stack([fs.values[s] for s in hist])
    x = nuis[hist]
    dx = np.vstack([np.zeros((1, 9)), np.diff(x, axis=0)])
    cols = [np.ones((30, 1)), x - x.mean(0), dx - dx.mean(0)]
    for i, s in enumerate(hist):
        if not fs.valid[s]:
            cols.append(np.eye(30)[:, [i]])
    design = np.hstack(cols)
    assert design.shape[1] >= 19
    beta, *_ = np.linalg.lstsq(design, y, rcond=None)
    expect = y - design @ beta + y.mean(0)
    scans = [s for s in hist[-7:] if fs.valid[s]]
    got = fs._denoised(scans)
    assert np.abs(got - expect[[hist.index(s) for s in scans]]).max() < 1e-9 * np.abs(y).max()


def test_scores_equal_offline_and_train_path(forrest, bundle, masks, tmp_path):
    """Realigned run: engine scores = run_features on what it fed its state (1e-10); the train
    path (extract_run, masks stored in a saved bundle) computes the same nuisance columns and the
    bundle alone (no [denoise] masks) scores identically."""
    from runtime.train.extract import extract_run

    data, affine = forrest
    d, _, _ = masks
    cfg = cfg_with(d)
    core, results, end = run_core(cfg, bundle, data, affine)
    scores = scores_of(results, end)
    table = build_table(cfg.protocol)
    n = len(data)
    values, valid, nuis = collect(results, n, len(bundle.voxels), 9)
    assert np.isfinite(nuis[1:]).all()
    trials = [TrialWindow(t.window, t.calc_scan) for t in table.trials]
    feats, _ = run_features(values, valid, table.baseline, trials, method="regress", regress_scans=30, nuisance=nuis)
    assert sorted(scores) == [1, 2, 3, 4, 5]
    for k, t in enumerate(table.trials):
        assert abs(scores[t.number].likelihood - bundle.likelihood(feats[k])) < 1e-10
    # the scores differ from motion + GS alone (the new columns take part)
    _, res_old, end_old = run_core(parse_config(TEXT + REGRESS), bundle, data, affine)
    old = scores_of(res_old, end_old)
    assert max(abs(old[k].likelihood - scores[k].likelihood) for k in scores) > 1e-3

    # train: [train] masks -> bundle extra -> extract_run (the engine's own code)
    tcfg = parse_config(TEXT + REGRESS + f'[train]\nwm_mask = "{d / "wm.nii.gz"}"\ncsf_mask = "{d / "csf.nii.gz"}"\n')
    extra = bundle_extra(config_tissue_voxels(tcfg, "train", data[0].shape, affine))
    from runtime.volume import Volume

    vols = [Volume(data=data[i], affine=affine, index=i, tr=2.0) for i in range(n)]
    rv = extract_run(tcfg, vols, template=data[0], grid_affine=affine, voxels=np.asarray(bundle.voxels),
                     baseline=table.baseline, tr=2.0, extra=extra)
    assert np.array_equal(rv.nuisance[1:], nuis[1:])
    assert np.array_equal(rv.values[1:], values[1:])
    tfeats, _ = run_features(rv.values, rv.valid, table.baseline, trials, method="regress", regress_scans=30,
                             nuisance=rv.nuisance, first_scan=table.baseline.start)
    assert np.array_equal(np.isnan(tfeats), np.isnan(feats)) and np.nanmax(np.abs(tfeats - feats)) < 1e-10
    # the same lists from a saved bundle, no [denoise] masks in the session
    bundle.extra.update(extra)
    try:
        save_bundle(bundle, tmp_path / "b.npz")
    finally:
        for k in EXTRA_KEYS.values():
            bundle.extra.pop(k, None)
    loaded = load_bundle(tmp_path / "b.npz")
    assert np.array_equal(loaded.extra[EXTRA_KEYS["wm"]], extra[EXTRA_KEYS["wm"]])
    _, res_b, end_b = run_core(parse_config(TEXT + REGRESS), loaded, data, affine)
    from_bundle = scores_of(res_b, end_b)
    for k in scores:
        assert from_bundle[k].likelihood == scores[k].likelihood


def test_old_bundle_scores_exactly_as_before(forrest, bundle):
    data, affine = forrest
    text = PROTOCOL.replace("baseline_scans = 5", "baseline_scans = 20").replace(
        "n_trials = 7", "n_trials = 5").replace("[6, 18, 30, 42, 54, 66, 78]", "[30, 42, 54, 66, 78]")
    core, results, end = run_core(parse_config(text + '[denoise]\nmethod = "regress"\nregress_scans = 20\n'),
                                  bundle, data, affine)
    assert core.n_nuisance == 7 and not core.tissue_voxels
    got = {k: v.likelihood for k, v in scores_of(results, end).items()}
    assert got.keys() == OLD_REGRESS_LIKELIHOODS.keys()
    for k, v in OLD_REGRESS_LIKELIHOODS.items():
        assert got[k] == pytest.approx(v, abs=1e-9)


def test_wm_borne_artefact_is_removed_only_with_wm(forrest, bundle, masks):
    """A slow artefact carried by the WM voxels, balanced by its opposite in the rest of the
    global-signal sample (so GS cannot see it). When it also reaches the decoder voxels, the WM
    column takes it out of the features; with motion + GS only it stays. Both runs have the same
    WM/GS columns, so the feature change is what the regression left of the artefact."""
    data, affine = forrest
    d, exp_wm, _ = masks
    n = len(data)
    t = np.arange(n)
    art = 3000.0 * np.sin(2 * np.pi * t / 23.0) + 1800.0 * np.cos(2 * np.pi * t / 37.0)  # ~7% of the signal
    wm = np.zeros(data.shape[1:], bool)
    wm[tuple(exp_wm.T)] = True
    roi = np.zeros(data.shape[1:], bool)
    roi[tuple(np.asarray(bundle.voxels).T)] = True
    gs = np.zeros(data.shape[1:], bool)
    gs[tuple(brain_voxels(data[0]).T)] = True
    rest = gs & ~wm & ~roi

    def with_artefact(hit):
        out = data.astype(np.float64)
        out[:, hit] += art[:, None]
        out[:, rest] -= art[:, None] * (gs & hit).sum() / rest.sum()
        return out.astype(np.float32)

    base, dirty = with_artefact(wm), with_artefact(wm | roi)
    table = build_table(parse_config(TEXT).protocol)

    def denoised(cfg, arr):
        """E8's output (before the z-score) over every trial window, as the engine computes it,
        less its mean over the window (E8 keeps each REGRESS window's mean, a slow artefact's too)."""
        _, results, _ = run_core(cfg, bundle, arr, affine)
        values, valid, nuis = collect(results, n, len(bundle.voxels), 8 if cfg.denoise.wm_mask else 7)
        state = FeatureState(values.shape[1], table.baseline, method="regress", regress_scans=30)
        for s in range(1, n):
            state.add_scan(s, values[s], bool(valid[s]), nuis[s])
        out = [state._denoised([s for s in tw.window if valid[s]]) for tw in table.trials]
        return np.vstack([w - w.mean(axis=0) for w in out])

    off = "[realign]\nenabled = false\n"
    with_wm = parse_config(TEXT + REGRESS + f'wm_mask = "{d / "wm.nii.gz"}"\n' + off)
    without = parse_config(TEXT + REGRESS + off)
    in_roi = np.mean([np.abs(art[tw.window] - art[tw.window].mean()).mean() for tw in table.trials])
    left_with = np.abs(denoised(with_wm, dirty) - denoised(with_wm, base)).mean()
    left_without = np.abs(denoised(without, dirty) - denoised(without, base)).mean()
    print(f"artefact in the ROI windows (mean |a - window mean|) {in_roi:.0f}; left after E8: {left_with:.0f} with WM, "
          f"{left_without:.0f} with motion + GS only")
    assert left_without > 0.3 * in_roi  # GS does not see it: most of it stays
    assert left_with < 0.1 * left_without  # the WM column takes it out


def test_restart_from_the_roi_spool_gives_identical_scores(forrest, bundle, masks, tmp_path):
    """Crash after volume 59: the ROI spool (a real file) holds the 9 nuisance values per volume;
    a fresh core restored from it scores the remaining trials exactly as the uninterrupted run."""
    data, affine = forrest
    d, _, _ = masks
    cfg = cfg_with(d)
    _, full, full_end = run_core(cfg, bundle, data, affine)
    ref = scores_of(full, full_end)
    spool = RoiSpool(tmp_path / "roi.bin", len(bundle.voxels), 9)
    statuses, params = {}, {}
    scored = set()
    for r in full:
        if r.volume >= 60:
            break
        if r.roi is not None:
            vals, ok, nu = r.roi
            spool.append(r.volume, ok, vals, nu)
        statuses[r.volume] = r.status
        if r.telemetry is not None:
            tt = r.telemetry
            params[r.volume] = np.array([tt.trans_x, tt.trans_y, tt.trans_z, tt.rot_x, tt.rot_y, tt.rot_z])
        scored |= {s.header.trial for s in r.scores}
    spool.close()
    roi = read_roi_spool(tmp_path / "roi.bin")
    restored = []
    for i, st in statuses.items():
        rv = RestoredVolume(index=i, status=st, params=params.get(i))
        if i in roi:
            rv.valid, rv.values, rv.nuisance = roi[i]
            assert rv.nuisance.shape == (9,)
        restored.append(rv)
    core = EngineCore(cfg, bundle)
    core.restore(restored, scored)
    from runtime.volume import Volume

    core.warmup()
    after = []
    for i in range(60, len(data)):
        after += core.process(Volume(data=data[i], affine=affine, index=i, tr=2.0))
    got = scores_of(after, core.finish())
    assert got and set(got) == set(ref) - scored
    for k in got:
        # motion params restart from the spooled estimate (warm start): the scores agree to
        # realignment precision; the replayed state itself is exact (features of scans < 60)
        assert got[k].likelihood == pytest.approx(ref[k].likelihood, abs=1e-9)
        assert got[k].score == ref[k].score


# -- one-line errors ---------------------------------------------------------------------------

def test_missing_mask_file_is_one_line(forrest, bundle, tmp_path):
    cfg = parse_config(TEXT + REGRESS + f'wm_mask = "{tmp_path / "nope.nii.gz"}"\n')
    with pytest.raises(UserError) as e:
        EngineCore(cfg, bundle)
    msg = str(e.value)
    assert "\n" not in msg and "nope.nii.gz" in msg and "WM mask not found" in msg and "denoise.wm_mask" in msg


def test_mask_with_no_voxel_above_threshold_is_one_line(forrest, bundle, tmp_path):
    data, affine = forrest
    nib.save(nib.Nifti1Image(np.full(data[0].shape, 0.5, np.float32), affine), str(tmp_path / "pve.nii.gz"))
    cfg = parse_config(TEXT + REGRESS + f'csf_mask = "{tmp_path / "pve.nii.gz"}"\n')
    with pytest.raises(UserError) as e:
        EngineCore(cfg, bundle)
    msg = str(e.value)
    assert "\n" not in msg and "CSF mask has no voxel" in msg and "0.9" in msg and "denoise.csf_mask" in msg
    # WM: a one-voxel-thin slab survives the threshold but not the erosion
    thin_wm = np.zeros(data[0].shape, np.float32)
    thin_wm[:, :, 10] = 1.0
    nib.save(nib.Nifti1Image(thin_wm, affine), str(tmp_path / "wm.nii.gz"))
    with pytest.raises(UserError, match=r"no voxel left after thresholding at 0.9 and eroding 1 voxel") as e:
        EngineCore(parse_config(TEXT + REGRESS + f'wm_mask = "{tmp_path / "wm.nii.gz"}"\n'), bundle)
    assert "\n" not in str(e.value)


def test_window_too_short_for_the_columns_is_refused(forrest, bundle, masks):
    d, _, _ = masks
    cfg = parse_config(TEXT + '[denoise]\nmethod = "regress"\nregress_scans = 20\n'
                       f'wm_mask = "{d / "wm.nii.gz"}"\ncsf_mask = "{d / "csf.nii.gz"}"\n')
    with pytest.raises(ConfigError, match=r"denoise.regress_scans.*need >= 24"):
        EngineCore(cfg, bundle)


def test_bundle_with_bad_nuisance_voxels_is_refused(bundle, tmp_path):
    good = np.array([[1, 2, 3], [4, 5, 6]])
    bundle.extra[EXTRA_KEYS["csf"]] = good
    try:
        save_bundle(bundle, tmp_path / "ok.npz")
        assert np.array_equal(load_bundle(tmp_path / "ok.npz").extra[EXTRA_KEYS["csf"]], good)
        bad = good.copy()
        bad[1, 2] = bundle.grid_shape[2]  # one past the last slice
        bundle.extra[EXTRA_KEYS["csf"]] = bad
        with pytest.raises(BundleError) as e:
            bundle.validate()
        assert "\n" not in str(e.value) and "nuisance_csf_voxels" in str(e.value) and "outside the grid" in str(e.value)
        bundle.extra[EXTRA_KEYS["csf"]] = np.zeros((4, 2), np.int64)
        with pytest.raises(BundleError, match=r"\(n, 3\) integer array"):
            bundle.validate()
    finally:
        bundle.extra.pop(EXTRA_KEYS["csf"], None)
    # a file whose (hash-consistent) contents hold out-of-range voxels: one line on load
    import json
    import zipfile

    from decoders.bundle import content_hash

    with np.load(tmp_path / "ok.npz") as z:
        arrays = {k: z[k] for k in z.files}
    meta = json.loads(arrays.pop("meta").tobytes())
    arrays["extra__" + EXTRA_KEYS["csf"]] = np.array([[1, 2, 3], [-1, 5, 6]])
    meta["sha256"] = content_hash(arrays, meta)
    blob = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
    np.savez(tmp_path / "bad.npz", meta=blob, **arrays)
    assert zipfile.is_zipfile(tmp_path / "bad.npz")
    with pytest.raises(BundleError) as e:
        load_bundle(tmp_path / "bad.npz")
    assert "\n" not in str(e.value) and "bad.npz" in str(e.value) and "outside the grid" in str(e.value)


def test_decnef_train_stores_the_masks_and_its_features_equal_the_engine(forrest, masks, tmp_path):
    """`decnef train` with REGRESS and [train] wm_mask / csf_mask: the bundle holds the WM/CSF
    voxel lists, and the features it was trained on equal what the engine computes from that
    bundle alone (no [denoise] masks), sample by sample."""
    from test_engine_data import roi_voxels
    from test_train_features import _online_features

    from runtime.train import train
    from runtime.volume import Volume

    data, affine = forrest
    d, exp_wm, exp_csf = masks
    roi = np.zeros(data.shape[1:], np.uint8)
    roi[tuple(roi_voxels(data[0], 300).T)] = 1
    nib.save(nib.Nifti1Image(roi, affine), str(tmp_path / "roi.nii.gz"))
    onsets = [12, 36, 60, 84, 108, 132, 156, 180]
    (tmp_path / "events.tsv").write_text("onset\tduration\ttrial_type\n" + "".join(
        f"{o}\t16\t{'a' if k // 2 % 2 == 0 else 'b'}\n" for k, o in enumerate(onsets)))
    cfg = parse_config(
        '[denoise]\nmethod = "regress"\nregress_scans = 30\n[train]\n'
        'runs = [{ source = "run.nii.gz", events = "events.tsv" }]\nroi_mask = "roi.nii.gz"\n'
        f'wm_mask = "{d / "wm.nii.gz"}"\ncsf_mask = "{d / "csf.nii.gz"}"\nclasses = ["a", "b"]\n'
        'estimator = "l2"\nsplit = "blocks"\nmax_folds = 2\nn_permutations = 0\nwindow_scans = 3\n',
        origin="train.toml", base_dir=str(tmp_path))
    vols = [Volume(data=data[i], affine=affine, index=i, tr=2.0) for i in range(len(data))]
    lines: list[str] = []
    res = train(cfg, tmp_path / "b.npz", log=lines.append, preloaded={cfg.path("run.nii.gz"): vols})
    b = load_bundle(res.bundle_path)
    assert np.array_equal(b.extra[EXTRA_KEYS["wm"]], exp_wm) and np.array_equal(b.extra[EXTRA_KEYS["csf"]], exp_csf)
    assert b.feature["nuisance"] == ["motion6", "gs", "wm", "csf"] and b.feature["denoise"] == "regress"
    assert any(ln.startswith(f"WM mask {d / 'wm.nii.gz'}: {len(exp_wm)} voxels") for ln in lines)
    base = range(0, 6)  # the scans before the first event
    online, _ = _online_features(parse_config(REGRESS, origin="run.toml"), b, res.samples, base, vols)
    assert online.shape == res.features.shape
    assert np.abs(np.nan_to_num(online) - res.features).max() < 1e-10



def test_run_check_reports_the_nuisance_set_and_refuses_a_missing_mask(bundle, masks, tmp_path):
    """`decnef run --check` (check_session) loads the masks before any process starts."""
    from runtime.cli.cmd_run import check_session

    d, exp_wm, exp_csf = masks
    save_bundle(bundle, tmp_path / "b.npz")
    lines: list[str] = []
    check_session(cfg_with(d, f'[decoder]\nbundle = "{tmp_path / "b.npz"}"\n'), "s.toml", log=lines.append)
    assert f"denoise OK: regress on motion, GS, WM ({len(thin(exp_wm))} voxels), CSF ({len(thin(exp_csf))} voxels) " \
           "and their differences over 30 scans" in lines
    bad = parse_config(TEXT + REGRESS + f'csf_mask = "{tmp_path / "c.nii"}"\n[decoder]\nbundle = "{tmp_path / "b.npz"}"\n')
    with pytest.raises(UserError, match=r"CSF mask not found \(key 'denoise.csf_mask'\)"):
        check_session(bad, "s.toml", log=lines.append)
