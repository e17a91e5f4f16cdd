"""Engine core on the real studyforrest run: scores equal the offline feature path, one score per
trial, no-feedback trials, NG gates, gaps and late trials, reference modes, sham scoring."""

from __future__ import annotations

import numpy as np
import pytest
from test_engine_data import PROTOCOL, roi_voxels, stim_labels

from runtime.config import parse_config
from runtime.engine.core import EngineCore, sample_roi
from runtime.engine.scoring import (
    Scorer,
    read_yoked_scores,
    score_from_likelihood,
    sham_random_score,
)
from runtime.errors import ConfigError
from runtime.features import TrialWindow, run_features
from runtime.protocol import build_table
from runtime.volume import Volume


def make_bundle(data: np.ndarray, affine: np.ndarray, *, n_voxels: int = 1500):
    """A stim-vs-rest logistic decoder on the run itself, saved and loaded as a real bundle."""
    from sklearn.linear_model import LogisticRegression

    from decoders.bundle import bundle_from_estimator

    template = data[0].astype(np.float32)
    voxels = roi_voxels(template, n_voxels)
    x = data[:, voxels[:, 0], voxels[:, 1], voxels[:, 2]].astype(np.float64)
    x = (x - x[1:6].mean(0)) / (x[1:6].std(0, ddof=1) + 1e-6)
    y = stim_labels(len(x))
    est = LogisticRegression(C=0.01, max_iter=500).fit(x[1:], y[1:])
    return bundle_from_estimator(est, voxels=voxels, grid_shape=template.shape, grid_affine=affine, template=template,
                                 feature={"window_start": 2, "window_end": 1, "baseline_scans": 5, "denoise": "detrend"},
                                 metrics={}, target_class="1")


@pytest.fixture(scope="module")
def bundle(forrest):
    data, affine = forrest
    return make_bundle(data, affine)


def config(extra: str = ""):
    return parse_config(PROTOCOL + extra, origin="test.toml")


def run_core(cfg, bundle, data, affine, *, skip=(), silent=(), moved=None):
    """Feed volumes in order, skipping `skip` (declared in the next volume's gap_before unless in
    `silent`: then only the index jump shows it) and shifting the affine of `moved` volumes."""
    core = EngineCore(cfg, bundle)
    core.warmup()
    results = []
    pending_gap: list[int] = []
    for i in range(len(data)):
        if i in skip:
            if i not in silent:
                pending_gap.append(i)
            continue
        aff = affine.copy()
        if moved and i in moved:
            aff[:3, 3] += moved[i]
        vol = Volume(data=data[i], affine=aff, index=i, tr=2.0)
        results += core.process(vol, gap_before=pending_gap)
        pending_gap = []
    results_end = core.finish()
    return core, results, results_end


def scores_of(results, end=()):
    out = {}
    for r in results:
        for s in r.scores:
            assert s.header.trial not in out, "a trial was scored twice"
            out[s.header.trial] = s.header
    for s in end:
        assert s.header.trial not in out
        out[s.header.trial] = s.header
    return out


def offline_scores(cfg, bundle, results, n):
    """The same run through runtime.features.run_features on the engine's own ROI values."""
    table = build_table(cfg.protocol)
    v = len(bundle.voxels)
    values = np.full((n, v), np.nan)
    valid = np.zeros(n, dtype=bool)
    for r in results:
        if r.roi is not None:
            values[r.volume], valid[r.volume] = r.roi[0], r.roi[1]
    trials = [TrialWindow(t.window, t.calc_scan) for t in table.trials]
    # a trial whose calc scan is missing is scored online when the next volume arrives, i.e.
    # with the state as it stood after the last scan before it: move its calc scan back there
    received = {r.volume for r in results if r.status in ("ok", "ng")}
    for k, t in enumerate(trials):
        if t.calc_scan not in received:
            trials[k] = TrialWindow(t.window, max(s for s in received if s < t.calc_scan))
    feats, n_valid = run_features(values, valid, table.baseline, trials, method=cfg.denoise.method)
    out = {}
    for k, t in enumerate(table.trials):
        lik = None if n_valid[k] == 0 else bundle.likelihood(feats[k])
        out[t.number] = (lik, int(n_valid[k]))
    return out


def test_scores_equal_offline_feature_path(forrest, bundle):
    data, affine = forrest
    cfg = config()
    core, results, end = run_core(cfg, bundle, data, affine)
    scores = scores_of(results, end)
    table = build_table(cfg.protocol)
    assert sorted(scores) == [t.number for t in table.trials] and not end
    for t in table.trials:
        assert scores[t.number].volume == t.calc_scan and "late" not in scores[t.number].flags
    off = offline_scores(cfg, bundle, results, len(data))
    for trial, h in scores.items():
        lik, n_valid = off[trial]
        assert h.likelihood == pytest.approx(lik, abs=1e-12)
        assert h.score == score_from_likelihood(lik) and h.n_valid_scans == n_valid
    # every window scan of this real, quiet run passes the gates, and the decoder (trained on
    # this run's stimulation blocks, all of which the trials cover) sees stimulation
    assert all(h.n_valid_scans == 7 for h in scores.values())
    assert np.mean([h.likelihood for h in scores.values()]) > 0.5
    motion = [row for r in results for row in r.motion_rows]
    assert [m["volume"] for m in motion] == list(range(len(data)))
    assert motion[0]["status"] == "discard" and all(m["status"] == "ok" for m in motion[1:])
    fds = [m["framewise_displacement"] for m in motion[2:]]
    assert 0 < max(fds) < 0.5  # sub-millimetre real motion (data README)


def test_all_window_scans_ng_gives_no_feedback_and_the_run_goes_on(forrest, bundle):
    data, affine = forrest
    cfg = config()
    table = build_table(cfg.protocol)
    trial3 = table.trials[2]
    moved = {s: np.array([0.0, 4.0 * (1 + (s % 2)), 0.0]) for s in trial3.window}  # 4/8 mm jumps
    core, results, end = run_core(cfg, bundle, data, affine, moved=moved)
    scores = scores_of(results, end)
    assert len(scores) == len(table.trials)
    h = scores[3]
    assert h.score is None and h.likelihood is None and h.n_valid_scans == 0
    assert h.flags.split(",")[0] == "no_feedback"
    assert all(scores[k].score is not None for k in scores if k != 3)
    rows = {row["volume"]: row for r in results for row in r.motion_rows}
    for s in trial3.window:
        assert rows[s]["ng"] and rows[s]["framewise_displacement"] > 0.5
        # the realigner found the injected shift (the volume content moved the other way)
        assert abs(rows[s]["trans_y"]) > 3.0
    after = trial3.window.stop  # the head is back: one more FD jump, then quiet again
    assert rows[after]["ng"] and rows[after]["framewise_displacement"] > 0.5
    assert not rows[after + 1]["ng"]


@pytest.mark.parametrize("fd_thr,corr_thr", [(0.05, -1.0), (0.0, 0.99), (0.0, -1.0)])
def test_ng_flags_follow_thresholds(forrest, bundle, fd_thr, corr_thr):
    data, affine = forrest
    cfg = config(f"[quality]\nfd_threshold_mm = {fd_thr}\ncorr_threshold = {corr_thr}\n")
    sub = data[:30]
    core, results, _ = run_core(cfg, bundle, sub, affine)
    rows = [row for r in results for row in r.motion_rows if row["status"] in ("ok", "ng")]
    n_ng = 0
    for row in rows:
        expect = (fd_thr > 0 and row["framewise_displacement"] > fd_thr) or (corr_thr > -1 and row["template_corr"] < corr_thr)
        assert row["ng"] == expect, row
        assert (row["status"] == "ng") == expect
        n_ng += expect
    for r in results:
        if r.roi is not None:
            assert r.roi[1] == (r.status == "ok")
    if fd_thr == 0.0 and corr_thr == -1.0:
        assert n_ng == 0
    else:
        assert 0 < n_ng < len(rows)  # the thresholds sit inside this run's real range


def test_gaps_and_a_missing_calc_scan(forrest, bundle):
    data, affine = forrest
    cfg = config()
    table = build_table(cfg.protocol)
    t2, t4 = table.trials[1], table.trials[3]
    skip = {t2.window[1], t2.window[3], t4.calc_scan, 40}  # declared gaps, and 40 as a silent jump
    core, results, end = run_core(cfg, bundle, data, affine, skip=skip, silent={40})
    scores = scores_of(results, end)
    assert sorted(scores) == [t.number for t in table.trials]
    assert scores[2].n_valid_scans == len(t2.window) - 2 and "partial" in scores[2].flags
    late = scores[4]
    assert "late" in late.flags and late.volume == t4.calc_scan + 1 and late.score is not None
    motion = [row for r in results for row in r.motion_rows]
    assert [m["volume"] for m in motion] == list(range(len(data)))
    assert {m["volume"] for m in motion if m["status"] == "missing"} == skip
    gap_events = [e for r in results for e in r.events if e.name == "gap"]
    assert sorted(m for e in gap_events for m in e.data["missing"]) == sorted(skip)
    off = offline_scores(cfg, bundle, results, len(data))
    for trial, h in scores.items():
        assert h.likelihood == pytest.approx(off[trial][0], abs=1e-12)
        assert h.n_valid_scans == off[trial][1]


def test_a_declared_gap_scores_a_trial_without_waiting_for_the_next_volume(forrest, bundle):
    data, affine = forrest
    cfg = config()
    t3 = build_table(cfg.protocol).trials[2]
    a = EngineCore(cfg, bundle)
    b = EngineCore(cfg, bundle)
    for i in range(t3.calc_scan):
        a.process(Volume(data=data[i], affine=affine, index=i))
        b.process(Volume(data=data[i], affine=affine, index=i))
    # a: the streamer declares the calc scan missing; b: only the next volume shows it
    ra = a.declare_missing([t3.calc_scan])
    assert ra.status == "gap" and [row["status"] for row in ra.motion_rows] == ["missing"]
    assert a.declare_missing([t3.calc_scan]) is None  # already written off
    rb = b.process(Volume(data=data[t3.calc_scan + 1], affine=affine, index=t3.calc_scan + 1),
                   gap_before=[t3.calc_scan])[0]
    (sa,), (sb,) = ra.scores, rb.scores
    assert sa.header.trial == sb.header.trial == 3 and "late" in sa.header.flags
    assert sa.header.likelihood == sb.header.likelihood and sa.header.score == sb.header.score
    ra2 = a.process(Volume(data=data[t3.calc_scan + 1], affine=affine, index=t3.calc_scan + 1), gap_before=[t3.calc_scan])[0]
    assert ra2.scores == [] and [row["volume"] for row in ra2.motion_rows] == [t3.calc_scan + 1]


def test_a_volume_that_cannot_be_processed_is_ng_not_a_crash(forrest, bundle):
    data, affine = forrest
    cfg = config()
    core = EngineCore(cfg, bundle)
    results = []
    for i in range(40):
        aff = np.zeros((4, 4)) if i == 20 else affine  # a corrupt geometry: singular affine
        results += core.process(Volume(data=data[i], affine=aff, index=i))
    r20 = next(r for r in results if r.volume == 20)
    assert r20.status == "error" and r20.roi is None
    assert r20.motion_rows[-1]["status"] == "error" and r20.motion_rows[-1]["ng"]
    assert [e.name for e in r20.events] == ["fault"] and "volume" in r20.events[0].data
    assert [r.status for r in results if r.volume > 20] == ["ok"] * 19
    scores = scores_of(results)
    assert sorted(scores) == [1, 2, 3] and scores[2].n_valid_scans == 6  # scan 20 is in trial 2's window


def test_stale_and_duplicate_volumes_are_ignored(forrest, bundle):
    data, affine = forrest
    core = EngineCore(config(), bundle)
    for i in (0, 1, 2):
        core.process(Volume(data=data[i], affine=affine, index=i))
    assert core.process(Volume(data=data[1], affine=affine, index=1))[0].status == "stale"
    assert core.process(Volume(data=data[2], affine=affine, index=2))[0].status == "stale"
    assert core.last_index == 2


def test_end_of_run_scores_every_remaining_trial(forrest, bundle):
    data, affine = forrest
    cfg = config()
    core, results, end = run_core(cfg, bundle, data[:50], affine)
    scores = scores_of(results, end)
    table = build_table(cfg.protocol)
    assert sorted(scores) == [t.number for t in table.trials]
    for t in table.trials:
        h = scores[t.number]
        if t.calc_scan < 50:
            assert "late" not in h.flags
        elif t.window.start >= 50:
            assert h.score is None and "no_feedback" in h.flags and "late" in h.flags


def test_missing_baseline_means_no_feedback(forrest, bundle):
    data, affine = forrest
    cfg = config()
    core, results, end = run_core(cfg, bundle, data[:35], affine, skip=set(range(1, 6)))
    scores = scores_of(results, end)
    assert all(h.score is None and "no_baseline" in h.flags for h in scores.values())


@pytest.mark.parametrize("mode", ["first", "index"])
def test_run_reference_modes(forrest, bundle, mode):
    data, affine = forrest
    ref = 3
    cfg = config(f'[realign]\nreference = "{mode}"\nreference_index = {ref}\n')
    core, results, end = run_core(cfg, bundle, data[:30], affine)
    rows = {row["volume"]: row for r in results for row in r.motion_rows}
    ref_vol = 1 if mode == "first" else ref
    assert core.ref_index == ref_vol
    p = np.array([rows[ref_vol][k] for k in ("trans_x", "trans_y", "trans_z", "rot_x", "rot_y", "rot_z")])
    assert np.abs(p[:3]).max() < 0.01 and np.abs(p[3:]).max() < 1e-4  # the reference against itself
    assert [row["volume"] for r in results for row in r.motion_rows] == list(range(30))
    # values land on the template grid through reference -> template: same ROI values as
    # realigning straight to the template, up to the realignment precision
    _, res_t, _ = run_core(config(), bundle, data[:30], affine)
    a = np.array([r.roi[0] for r in results if r.roi is not None])
    b = np.array([r.roi[0] for r in res_t if r.roi is not None])
    assert np.corrcoef(a.ravel(), b.ravel())[0, 1] > 0.999


def test_regress_denoise_matches_offline(forrest, bundle):
    data, affine = forrest
    # REGRESS needs more scans than its 15 regressors: a 20-scan baseline, trials after it
    text = PROTOCOL.replace("baseline_scans = 5", "baseline_scans = 20").replace(
        "n_trials = 7", "n_trials = 5").replace("[6, 18, 30, 42, 54, 66, 78]", "[30, 42, 54, 66, 78]")
    cfg = parse_config(text + "[denoise]\nmethod = \"regress\"\nregress_scans = 20\n")
    core, results, end = run_core(cfg, bundle, data, affine)
    scores = scores_of(results, end)
    table = build_table(cfg.protocol)
    n = len(data)
    values = np.full((n, len(bundle.voxels)), np.nan)
    valid = np.zeros(n, bool)
    nuis = np.full((n, 7), np.nan)
    for r in results:
        if r.roi is not None:
            values[r.volume], valid[r.volume], nuis[r.volume] = r.roi
    assert np.isfinite(nuis[1:]).all()
    feats, n_valid = run_features(values, valid, table.baseline, [TrialWindow(t.window, t.calc_scan) for t in table.trials],
                                  method="regress", regress_scans=20, nuisance=nuis)
    assert sorted(scores) == [1, 2, 3, 4, 5]
    for k, t in enumerate(table.trials):
        assert scores[t.number].likelihood is not None
        assert scores[t.number].likelihood == pytest.approx(bundle.likelihood(feats[k]), abs=1e-12)


def test_edge_voxels_are_clamped_not_nan(forrest, bundle):
    """A sub-voxel shift pushes first/last-slice voxels just outside the slab: they take the
    nearest value inside it instead of NaN (which would make every scan NG)."""
    data, affine = forrest
    ijk = np.array([[40, 40, 0], [40, 40, 34], [40, 40, 17]])
    m = np.eye(4)
    m[:3, 3] = [0.0, 0.0, 0.5]
    vals = sample_roi(data[5], affine, m, data[5].shape, affine, ijk)
    assert np.isfinite(vals).all()
    far = np.eye(4)
    far[:3, 3] = [0.0, 0.0, 20.0]
    assert np.isnan(sample_roi(data[5], affine, far, data[5].shape, affine, ijk)).any()


# -- scoring (E12, sham) -------------------------------------------------------------------------
def test_score_rule():
    assert score_from_likelihood(0.624) == 62 and score_from_likelihood(0.626) == 63
    assert score_from_likelihood(1.0) == 100 and score_from_likelihood(0.0) == 0
    assert score_from_likelihood(0.624, "down") == 38


def test_sham_random_is_seeded_per_trial_and_n50_30():
    draws = np.array([sham_random_score(7, t) for t in range(1, 4001)])
    assert draws.min() >= 0 and draws.max() <= 100
    assert [sham_random_score(7, t) for t in range(1, 6)] == list(draws[:5])  # restart-safe
    assert [sham_random_score(8, t) for t in range(1, 6)] != list(draws[:5])
    # N(50, 30.3) clipped to [0, 100]: mean 50, about 5 % at each bound
    assert abs(draws.mean() - 50) < 2.0
    assert 0.03 < np.mean(draws == 0) < 0.08 and 0.03 < np.mean(draws == 100) < 0.08
    cfg = parse_config('[decoder]\nsham = "random"\nseed = 7\n')
    s = Scorer(cfg.decoder)
    out = s.score(3, 0.9)
    assert out.score == draws[2] and out.flags == ("sham_random",)
    assert s.score(3, None).score is None


def test_sham_yoked_reads_another_sessions_scores(tmp_path):
    p = tmp_path / "other_scores.tsv"
    p.write_text("trial\tcondition\tlabel\tscore\tlikelihood\tn_valid_scans\tflags\tvolume\n"
                 "1\tcalc\tn/a\t71.0\t0.71\t3\tn/a\t10\n2\tcalc\tn/a\tn/a\tn/a\t0\tno_feedback\t20\n")
    assert read_yoked_scores(p) == {1: 71, 2: None}
    cfg = parse_config(f'[decoder]\nsham = "yoked"\nyoked_scores = "{p}"\n')
    s = Scorer(cfg.decoder, yoked_path=p)
    assert s.score(1, 0.2).score == 71 and s.score(1, 0.2).flags == ("sham_yoked",)
    assert s.score(2, 0.9).score is None
    assert s.score(3, 0.9).score is None  # the yoked session had no trial 3
    with pytest.raises(ConfigError, match="not found"):
        Scorer(cfg.decoder, yoked_path=tmp_path / "nope.tsv")
