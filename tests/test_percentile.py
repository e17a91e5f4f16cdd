"""Percentile scoring (Demin/VTD DecNef variant, METHOD.md §1.4 item 9, E13) on the real
studyforrest run: `decnef calibrate` gives m, s of the decoder's linear term over sliding
windows through the engine's own feature path; the engine scores E13 of its own linear term;
config, reference and CLI errors are one line.

The studyforrest run is a task run (stimulation blocks); it is the only run of that session, so
it stands in for the resting-state run here ("rest" = the same run: its windows cover both
stimulation and rest).
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from types import SimpleNamespace

import numpy as np
import pytest
from test_engine import make_bundle, run_core, scores_of

from runtime.config import parse_config
from runtime.engine.core import EngineCore
from runtime.engine.scoring import Scorer
from runtime.errors import ConfigError
from runtime.percentile import (
    calibrate,
    linear_term,
    percentile_score,
    read_reference,
    write_reference,
)
from runtime.protocol import build_table
from runtime.volume import Volume

ONSETS = sorted([9 + 12 * k for k in range(7)] + [14 + 12 * k for k in range(7)])
LABELS = ["stim" if (o - 9) % 12 == 0 else "rest" for o in ONSETS]
PROTOCOL = f"""
[protocol]
tr = 2.0
discard_scans = 1
baseline_scans = 5
n_trials = {len(ONSETS)}
trial_onsets = {ONSETS}
trial_labels = {json.dumps(LABELS)}
window_start = 2
window_end = 2
end_scans = 9
[protocol.trial]
rest_scans = 0
induction_scans = 3
delay_scans = 1
calc_scans = 1
feedback_scans = 0
"""
"""100 scans: a "stim" trial mid-block (window = scans 11..13 + 12k) and a "rest" trial in the
rest after it (16..18 + 12k), 7 blocks; as configs/studyforrest_replay.toml lays them out."""


def e13(u: float, m: float, s: float, lo: float = 0.3, hi: float = 0.7) -> int:
    """E13 written out independently of runtime.percentile."""
    from scipy.stats import norm

    return int(round(100 * float(np.clip((norm.cdf((u - m) / s) - lo) / (hi - lo), 0, 1))))


def auc(pos, neg) -> float:
    pos, neg = np.asarray(pos, float), np.asarray(neg, float)
    return float(np.mean([(p > n) + 0.5 * (p == n) for p in pos for n in neg]))


@pytest.fixture(scope="module")
def setup(forrest, tmp_path_factory):
    """Bundle saved and reloaded (so it has its content sha256), the run calibrated, REF.json."""
    from decoders.bundle import load_bundle, save_bundle

    data, affine = forrest
    d = tmp_path_factory.mktemp("pct")
    save_bundle(make_bundle(data, affine), d / "b.npz")
    bundle = load_bundle(d / "b.npz")
    cfg = parse_config(PROTOCOL, origin="test.toml")
    vols = [Volume(data=data[i], affine=affine, index=i, tr=2.0) for i in range(len(data))]
    cal = calibrate(cfg, bundle, vols, source="studyforrest run 1 (as rest)")
    write_reference(cal.reference, d / "ref.json")
    return SimpleNamespace(dir=d, bundle=bundle, cal=cal, ref=cal.reference, data=data, affine=affine)


def pct_config(d, extra: str = "") -> object:
    return parse_config(PROTOCOL + f'\n[decoder]\nscore = "percentile"\npercentile_reference = "ref.json"\n{extra}',
                        origin="test.toml", base_dir=str(d))


def independent_u(bundle, values: np.ndarray, valid: np.ndarray, baseline: range, windows) -> np.ndarray:
    """u per window from the engine's ROI values with plain numpy: least-squares line over the
    valid scans so far (np.polyfit), baseline mean/SD (ddof 1) with the fit at the baseline's end,
    z-score, window mean, then wᵀ((x − mean)/scale) + b."""

    def detrended(upto: int, scans: list[int]) -> np.ndarray:
        fit = [s for s in range(baseline.start, upto + 1) if valid[s]]
        slope = np.polyfit(np.asarray(fit, float), values[fit], 1)[0]
        return values[scans] - slope * (np.asarray(scans, float)[:, None] - np.mean(fit))

    base = [s for s in baseline if valid[s]]
    yb = detrended(baseline.stop - 1, base)
    mu, sd = yb.mean(0), yb.std(0, ddof=1)
    out = []
    for w in windows:
        scans = [s for s in w.window if valid[s]]
        feat = ((detrended(w.calc_scan, scans) - mu) / sd).mean(0)
        x = (feat - bundle.feature_mean) / bundle.feature_scale
        out.append(float(x @ bundle.weights[0] + bundle.intercept[0]))
    return np.asarray(out)


def test_reference_is_the_mean_and_sd_of_u_over_the_runs_sliding_windows(setup):
    ref, cal = setup.ref, setup.cal
    table = build_table(parse_config(PROTOCOL).protocol)
    assert ref.window_scans == 3 == len(table.trials[0].window) and ref.calc_offset == 0
    # one window per start scan after the baseline (scans 6..97 start a 3-scan window ending by 99)
    assert [w.window.start for w in cal.windows] == list(range(6, 98))
    assert ref.n_windows == 92 and np.isfinite(cal.u).all() and ref.n_ng_scans == 0
    assert ref.bundle_sha256 == setup.bundle.sha256 and len(ref.bundle_sha256) == 64 and ref.target_class == "1"
    u = independent_u(setup.bundle, cal.values.values, cal.values.valid, table.baseline, cal.windows)
    np.testing.assert_allclose(cal.u, u, rtol=0, atol=1e-9)
    assert ref.m == pytest.approx(u.mean(), abs=1e-9) and ref.s == pytest.approx(u.std(ddof=1), abs=1e-9)
    # the windows cover stimulation and rest: u is high in the (lagged) blocks, low between them
    from test_engine_data import stim_labels

    on = stim_labels(100)
    mid = np.array([bool(on[w.window.start] and on[w.window.stop - 1]) for w in cal.windows])
    off = np.array([not (on[w.window.start] or on[w.window.stop - 1]) for w in cal.windows])
    assert cal.u[mid].mean() > ref.m > cal.u[off].mean()
    # the file round-trips
    assert read_reference(setup.dir / "ref.json") == ref


def test_engine_scores_are_e13_of_its_own_linear_term(setup):
    """Percentile mode = E13 of the engine's u, the likelihood column unchanged; stim-vs-rest
    ordering kept. Measured on these 14 block-aligned trials: the likelihood mode gives 6
    distinct scores, 4 of them 0/100; percentile mode 4 distinct, 11 at 0/100 (stimulation and
    rest trials lie > 0.5 reference SD on either side of m, beyond E13's [0.3, 0.7] band), both
    AUC 1.0. With percentile_range = [0.02, 0.98]: 9 distinct, none at 0/100, AUC 1.0."""
    ref = setup.ref
    lik_core, lik_res, lik_end = run_core(parse_config(PROTOCOL, origin="t.toml"), setup.bundle, setup.data, setup.affine)
    core, res, end = run_core(pct_config(setup.dir), setup.bundle, setup.data, setup.affine)
    lik, pct = scores_of(lik_res, lik_end), scores_of(res, end)
    assert sorted(pct) == list(range(1, 15)) and not lik_core.trial_linear
    for t, h in pct.items():
        u = core.trial_linear[t]
        assert h.flags == "percentile" and h.score == e13(u, ref.m, ref.s)
        assert h.likelihood == lik[t].likelihood  # the likelihood column still holds L = σ(u)
        assert u == pytest.approx(math.log(h.likelihood / (1 - h.likelihood)), abs=1e-6)
    ps = {t: h.score for t, h in pct.items()}
    ls = {t: h.score for t, h in lik.items()}
    stim = [t for t, h in pct.items() if h.label == "stim"]
    rest = [t for t, h in pct.items() if h.label == "rest"]
    auc_lik = auc([ls[t] for t in stim], [ls[t] for t in rest])
    auc_pct = auc([ps[t] for t in stim], [ps[t] for t in rest])
    assert auc_lik >= 0.9 and auc_pct >= auc_lik - 0.05 and auc_pct >= 0.9
    # honest measurement of the grading on these trials (see docstring): E13 saturates them more
    ext = lambda s: sum(v in (0, 100) for v in s.values())  # noqa: E731
    assert (len(set(ls.values())), ext(ls)) == (6, 4)
    assert (len(set(ps.values())), ext(ps)) == (4, 11)
    # a wider band (decoder.percentile_range, a lab's choice) does grade these trials: more
    # distinct scores and fewer at 0/100 than the likelihood mode, same ordering
    wcore, wres, wend = run_core(pct_config(setup.dir, "percentile_range = [0.02, 0.98]"), setup.bundle, setup.data,
                                 setup.affine)
    ws = {t: h.score for t, h in scores_of(wres, wend).items()}
    assert all(ws[t] == e13(wcore.trial_linear[t], ref.m, ref.s, 0.02, 0.98) for t in ws)
    assert len(set(ws.values())) > len(set(ls.values())) and ext(ws) < ext(ls)
    assert auc([ws[t] for t in stim], [ws[t] for t in rest]) >= auc_lik - 0.05


def test_direction_down_and_sham_modes_with_percentile(setup):
    ref = setup.ref
    dec = pct_config(setup.dir, 'direction = "down"').decoder
    sc = Scorer(dec, reference=ref)
    u = ref.m + 0.1 * ref.s
    up = percentile_score(u, ref.m, ref.s)
    assert 0 < up < 100 and sc.score(3, 0.6, u).score == 100 - up
    assert sc.score(3, None, None).flags == ("no_feedback",)
    sham = Scorer(pct_config(setup.dir, 'sham = "random"\nseed = 7').decoder, reference=ref)
    plain = Scorer(parse_config('[decoder]\nsham = "random"\nseed = 7').decoder)
    assert sham.score(5, 0.6, u) == plain.score(5, 0.6)  # sham arms ignore the decoder entirely
    narrow = Scorer(pct_config(setup.dir, "percentile_range = [0.45, 0.55]").decoder, reference=ref)
    assert narrow.score(1, 0.6, u).score == e13(u, ref.m, ref.s, 0.45, 0.55)


def test_linear_term_of_binary_and_multiclass_bundles():
    def fake(rows, classes, target):
        w = np.asarray(rows, float)
        return SimpleNamespace(classes=classes, target_class=target, kind="linear",
                               decision_function=lambda x: x @ w.T)

    x = np.array([1.0, 2.0])
    assert linear_term(fake([[1, 1]], ["a", "b"], "b"), x) == 3.0
    assert linear_term(fake([[1, 1]], ["a", "b"], "a"), x) == -3.0
    assert linear_term(fake([[1, 0], [0, 1]], ["a", "b"], "a"), x) == -1.0  # two-row softmax: log-odds
    assert linear_term(fake([[1, 0], [0, 1], [1, 1]], ["a", "b", "c"], "c"), x) == 3.0  # the target row


def one_line(exc: BaseException) -> str:
    msg = str(exc)
    assert "\n" not in msg and msg
    return msg


def test_config_errors_are_one_line(setup, tmp_path):
    with pytest.raises(ConfigError) as e:
        parse_config('[decoder]\nscore = "percentile"\n', origin="s.toml")
    assert "decoder.percentile_reference" in one_line(e.value)
    for bad in ("[0.7, 0.3]", "[0.3, 0.3]", "[-0.1, 0.5]", "[0.3, 1.5]", "[0.3]"):
        with pytest.raises(ConfigError) as e:
            parse_config(f"[decoder]\npercentile_range = {bad}\n", origin="s.toml")
        assert "decoder.percentile_range" in one_line(e.value)
    assert parse_config("").decoder.score == "likelihood"
    # missing / malformed reference: refused when the engine starts
    cfg = pct_config(tmp_path)
    with pytest.raises(ConfigError) as e:
        EngineCore(cfg, setup.bundle)
    assert "not found" in one_line(e.value) and "decnef calibrate" in str(e.value)
    (tmp_path / "ref.json").write_text("{not json")
    with pytest.raises(ConfigError) as e:
        EngineCore(cfg, setup.bundle)
    assert "ref.json" in one_line(e.value)
    (tmp_path / "ref.json").write_text(json.dumps({"format": "decnef-percentile-reference", "m": 0.0, "s": 0.0}))
    with pytest.raises(ConfigError) as e:
        EngineCore(cfg, setup.bundle)
    one_line(e.value)


def test_a_reference_of_another_bundle_is_refused(setup, tmp_path):
    """One line at engine start and in `decnef run --check` (a real subprocess)."""
    import dataclasses

    (tmp_path / "b.npz").write_bytes((setup.dir / "b.npz").read_bytes())
    write_reference(dataclasses.replace(setup.ref, bundle_sha256="0" * 64), tmp_path / "ref.json")
    cfg = pct_config(tmp_path, 'bundle = "b.npz"')
    with pytest.raises(ConfigError) as e:
        EngineCore(cfg, setup.bundle)
    assert "sha256" in one_line(e.value) and "decnef calibrate" in str(e.value)
    (tmp_path / "s.toml").write_text(PROTOCOL + '\n[decoder]\nbundle = "b.npz"\nscore = "percentile"\n'
                                     'percentile_reference = "ref.json"\n')
    p = subprocess.run([sys.executable, "-m", "runtime.cli.main", "run", str(tmp_path / "s.toml"), "--check"],
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 2 and len(p.stderr.strip().splitlines()) == 1 and "sha256" in p.stderr
    # the right reference passes the same check
    write_reference(setup.ref, tmp_path / "ref.json")
    p = subprocess.run([sys.executable, "-m", "runtime.cli.main", "run", str(tmp_path / "s.toml"), "--check"],
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr


def test_calibrate_cli_on_a_nifti(setup, tmp_path):
    """`decnef calibrate` as a real process on a 4D NIfTI written from the run gives the same
    reference as the in-process calibration on the same volumes."""
    from runtime.nifti_io import save_4d

    vols = [Volume(data=setup.data[i], affine=setup.affine, index=i, tr=2.0) for i in range(len(setup.data))]
    save_4d(vols, tmp_path / "rest.nii")
    (tmp_path / "b.npz").write_bytes((setup.dir / "b.npz").read_bytes())
    (tmp_path / "s.toml").write_text(PROTOCOL + '\n[decoder]\nbundle = "b.npz"\n')

    def cli(*args):
        return subprocess.run([sys.executable, "-m", "runtime.cli.main", "calibrate", *map(str, args)],
                              capture_output=True, text=True, timeout=300, cwd=tmp_path)

    p = cli("--config", "s.toml", "--rest", "rest.nii", "--out", "ref.json", "-q")
    assert p.returncode == 0, p.stderr
    assert "windows 92 x 3 scans" in p.stdout
    ref = read_reference(tmp_path / "ref.json")
    # NIfTI stores the affine in float32: the realignment differs in the last digits only
    assert ref.m == pytest.approx(setup.ref.m, rel=1e-4) and ref.s == pytest.approx(setup.ref.s, rel=1e-4)
    assert ref.bundle_sha256 == setup.bundle.sha256 and ref.source == str((tmp_path / "rest.nii").resolve())
    assert ref.version and ref.n_windows == 92
    for args in (("--config", "s.toml", "--rest", "nope.nii", "--out", "r.json"),
                 ("--config", "s.toml", "--rest", "rest.nii", "--out", "r.txt"),
                 ("--config", "missing.toml", "--rest", "rest.nii", "--out", "r.json"),
                 ("--config", "s.toml", "--out", "r.json")):
        p = cli(*args)
        assert p.returncode == 2 and len(p.stderr.strip().splitlines()) == 1, (args, p.stderr)
        assert "Traceback" not in p.stderr


def test_engine_process_writes_percentile_scores_and_the_reference_sha256(setup, tmp_path):
    """The engine role (real ZeroMQ publisher, real files): scores.tsv carries the percentile
    scores and the provenance the reference file's sha256, next to the bundle's."""
    import time

    from test_engine_data import endpoints_toml

    from runtime.config import load_config
    from runtime.engine.process import Engine
    from runtime.messages import volume_header, volume_payload
    from runtime.outputs import file_sha256, read_tsv, session_file

    (tmp_path / "b.npz").write_bytes((setup.dir / "b.npz").read_bytes())
    write_reference(setup.ref, tmp_path / "ref.json")
    (tmp_path / "s.toml").write_text(PROTOCOL + '\n[decoder]\nbundle = "b.npz"\nscore = "percentile"\n'
                                     'percentile_reference = "ref.json"\n[output]\nroot = "out"\nsave_volumes = false\n'
                                     + endpoints_toml())
    cfg = load_config(tmp_path / "s.toml")
    engine = Engine(cfg, log=lambda s: None)
    try:
        for i in range(len(setup.data)):
            v = Volume(data=setup.data[i], affine=setup.affine, index=i, tr=2.0)
            h = volume_header(v, t_file_complete=time.time())
            h.seq = i
            engine.handle(h, volume_payload(v).tobytes())
    finally:
        engine.close()
    rows = read_tsv(engine.files.scores)
    assert [int(r["trial"]) for r in rows] == list(range(1, 15))
    for r in rows:
        u = engine.core.trial_linear[int(r["trial"])]
        assert r["flags"] == "percentile" and float(r["score"]) == e13(u, setup.ref.m, setup.ref.s)
    prov = json.loads(session_file(cfg, "provenance.json").read_text())
    entry = prov["runs"][-1]
    assert entry["percentile_reference"] == str(tmp_path / "ref.json")
    assert entry["percentile_reference_sha256"] == file_sha256(tmp_path / "ref.json")
    assert entry["decoder_sha256"] == file_sha256(tmp_path / "b.npz")


def test_online_u_equals_the_calibration_window_u(setup):
    """Each trial's window is one of the calibration's sliding windows (same calc offset): the
    engine's u for it equals the calibration's u for it (one feature path)."""
    core, res, end = run_core(pct_config(setup.dir), setup.bundle, setup.data, setup.affine)
    by_start = {w.window.start: k for k, w in enumerate(setup.cal.windows)}
    table = build_table(parse_config(PROTOCOL).protocol)
    for t in table.trials:
        assert core.trial_linear[t.number] == pytest.approx(setup.cal.u[by_start[t.window.start]], abs=1e-9)


def test_connectivity_bundle_calibrates_and_scores(setup, tmp_path):
    """A hand-made FC bundle (u = 4·atanh r between two ROIs of the real run) through the same
    calibration and engine: the trial u equals the calibration window u, scores are E13."""
    from test_engine_connectivity import four_roi_atlas

    from decoders.bundle import DecoderBundle, load_bundle, save_bundle

    template = setup.data[0].astype(np.float32)
    atlas = four_roi_atlas(template)
    v0, v1 = np.argwhere(atlas == 1), np.argwhere(atlas == 2)
    b = DecoderBundle(weights=np.array([[4.0]]), intercept=np.zeros(1), classes=["down", "up"], target_class="up",
                      voxels=np.concatenate([v0, v1]).astype(np.int64), grid_shape=template.shape,
                      grid_affine=setup.affine, template=template, feature_mean=np.zeros(1), feature_scale=np.ones(1),
                      feature={"features": "connectivity"}, metrics={}, kind="connectivity",
                      extra={"pairs": np.array([[0, 1]]), "voxel_roi": np.repeat([0, 1], [len(v0), len(v1)]),
                             "fisher_z": True})
    save_bundle(b, tmp_path / "fc.npz")
    b = load_bundle(tmp_path / "fc.npz")
    vols = [Volume(data=setup.data[i], affine=setup.affine, index=i, tr=2.0) for i in range(len(setup.data))]
    cal = calibrate(parse_config(PROTOCOL), b, vols, source="studyforrest (as rest)")
    ref = cal.reference
    assert ref.n_windows == 92 and ref.s > 0 and ref.bundle_sha256 == b.sha256
    write_reference(ref, tmp_path / "ref.json")
    core, res, end = run_core(pct_config(tmp_path), b, setup.data, setup.affine)
    by_start = {w.window.start: k for k, w in enumerate(cal.windows)}
    for t, h in scores_of(res, end).items():
        u = core.trial_linear[t]
        assert u == pytest.approx(4.0 * core.trial_features[t][0], abs=1e-12)  # the feature is already atanh r
        assert u == pytest.approx(cal.u[by_start[core.table.trials[t - 1].window.start]], abs=1e-9)
        assert h.flags == "percentile" and h.score == e13(u, ref.m, ref.s)
