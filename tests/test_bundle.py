"""Decoder bundle: round trip on a real Haxby decoder, safe loading, damage detection, ATR text."""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path

import numpy as np
import pytest

import decoders
from decoders import (
    BundleError,
    DecoderBundle,
    SparseLogisticRegression,
    bundle_from_estimator,
    export_atr,
    import_atr,
    load_bundle,
    make_decoder,
    save_bundle,
)
from decoders.bundle import content_hash

FEATURE = {"window_start": 2, "window_end": 4, "baseline_scans": 10, "denoise": "detrend",
           "hrf_delay_s": 5.0, "zscore": "run_baseline"}


@pytest.fixture(scope="module")
def haxby_decoder(haxby_dir):
    """SLR face-vs-house decoder on the real Haxby slice, with its real grid and template."""
    nib = pytest.importorskip("nibabel")
    from test_decoders import load_haxby

    x, labels, chunks, mask = load_haxby(haxby_dir)
    img = nib.load(haxby_dir / "bold.nii.gz")
    sel = np.isin(labels, ["face", "house"])
    train, test = sel & (chunks < 6), sel & (chunks >= 6)
    est = SparseLogisticRegression().fit(x[train], labels[train])
    template = np.asanyarray(img.dataobj[..., :10]).astype(np.float32).mean(axis=-1)
    geometry = dict(voxels=np.argwhere(mask), grid_shape=mask.shape, grid_affine=img.affine,
                    template=template)
    return est, geometry, x[test], labels[test]


def make_bundle(haxby_decoder, **kw) -> DecoderBundle:
    est, geo, _, _ = haxby_decoder
    return bundle_from_estimator(est, **geo, feature=FEATURE, metrics={"cv_accuracy": 0.9}, **kw)


# -- round trip ------------------------------------------------------------------------------

def test_round_trip_keeps_every_field_and_the_likelihood(haxby_decoder, tmp_path):
    est, geo, xt, _ = haxby_decoder
    b = make_bundle(haxby_decoder)
    path = tmp_path / "face_house.bundle"  # any name: no ".npz" is appended
    digest = save_bundle(b, path)
    assert path.is_file() and not Path(str(path) + ".npz").exists()
    back = load_bundle(path)
    assert back.sha256 == digest and len(digest) == 64
    assert back.classes == ["face", "house"] and back.target_class == "house"
    assert back.voxels.dtype == np.int32 and back.voxels.shape == (530, 3)
    assert back.template.dtype == np.float32 and back.template.shape == (40, 20, 1)
    np.testing.assert_array_equal(back.grid_affine, geo["grid_affine"])
    np.testing.assert_array_equal(back.weights, b.weights)
    assert back.feature == FEATURE and back.metrics["cv_accuracy"] == 0.9
    assert back.metrics["n_selected_features"] == est.n_selected_features_
    assert back.version == decoders.bundle.software_version() and back.created
    i, j, k = back.voxels.T
    np.testing.assert_allclose(back.voxel_means, geo["template"][i, j, k])
    for row in xt[:20]:
        assert back.likelihood(row) == b.likelihood(row)  # bit-identical after reload
    np.testing.assert_allclose(back.predict_proba(xt), est.predict_proba(xt), atol=1e-12)
    acc = np.mean(np.array(back.classes)[np.argmax(back.predict_proba(xt), 1)] == haxby_decoder[3])
    assert acc >= 0.85


def test_nan_features_are_dropped_with_their_weights(haxby_decoder):
    b = make_bundle(haxby_decoder)
    x = haxby_decoder[2][0].copy()
    w = b.weights[0]
    hit = np.flatnonzero(w)[:2]
    x[hit] = np.nan
    valid = np.isfinite(x)
    expected = 1 / (1 + np.exp(-(x[valid] @ w[valid] + b.intercept[0])))
    assert b.likelihood(x) == pytest.approx(expected, rel=1e-12)
    assert np.isnan(b.likelihood(np.full(530, np.nan)))


def test_target_class_orientation(haxby_decoder):
    x = haxby_decoder[2][0]
    p_house = make_bundle(haxby_decoder).likelihood(x)
    p_face = make_bundle(haxby_decoder, target_class="face").likelihood(x)
    assert p_face == pytest.approx(1 - p_house)
    with pytest.raises(BundleError, match="target_class 'cat'"):
        make_bundle(haxby_decoder, target_class="cat")


def test_estimator_normalisation_is_kept_online(haxby_dir, tmp_path):
    from test_decoders import sparse_problem

    x, y = sparse_problem(n=100, d=30, noise=0.5, seed=11)
    x = 3 * x + 7
    est = SparseLogisticRegression(normalize="each").fit(x, y)
    b = bundle_from_estimator(est, voxels=np.argwhere(np.ones((5, 6, 1))), grid_shape=(5, 6, 1),
                              grid_affine=np.eye(4), template=np.ones((5, 6, 1)),
                              feature={}, metrics={})
    save_bundle(b, tmp_path / "n.npz")
    back = load_bundle(tmp_path / "n.npz")
    np.testing.assert_allclose(back.feature_mean, est.feature_mean_)
    np.testing.assert_allclose(back.predict_proba(x), est.predict_proba(x), atol=1e-12)


def test_multiclass_and_ovr_svm_bundles(tmp_path):
    rng = np.random.default_rng(12)
    y = np.repeat(np.array(["a", "b", "c"]), 30)
    x = rng.standard_normal((90, 8))
    x[np.arange(90), np.searchsorted(["a", "b", "c"], y)] += 2.0
    geo = dict(voxels=np.argwhere(np.ones((2, 2, 2))), grid_shape=(2, 2, 2),
               grid_affine=np.eye(4), template=np.ones((2, 2, 2)))
    for name in ("slr", "svm", "l2"):
        est = make_decoder(name).fit(x, y)
        with pytest.raises(ValueError, match="target_class is required"):
            bundle_from_estimator(est, **geo, feature={}, metrics={})
        b = bundle_from_estimator(est, **geo, feature={}, metrics={}, target_class="b")
        save_bundle(b, tmp_path / f"{name}.npz")
        back = load_bundle(tmp_path / f"{name}.npz")
        assert back.link == ("ovr" if name == "svm" else "softmax")
        np.testing.assert_allclose(back.predict_proba(x), est.predict_proba(x), atol=1e-10)
        assert back.likelihood(x[0]) == pytest.approx(est.predict_proba(x[:1])[0, 1])


def test_roi_mean_bundle(tmp_path):
    rng = np.random.default_rng(13)
    y = np.repeat([0, 1], 40)
    x = rng.standard_normal((80, 8)) + 0.8 * y[:, None]
    est = make_decoder("roi_mean").fit(x, y)
    geo = dict(voxels=np.argwhere(np.ones((2, 2, 2))), grid_shape=(2, 2, 2),
               grid_affine=np.eye(4), template=np.ones((2, 2, 2)))
    save_bundle(bundle_from_estimator(est, **geo, feature={}, metrics={}), tmp_path / "r.npz")
    back = load_bundle(tmp_path / "r.npz")
    assert back.kind == "roi_mean"
    xn = x[:5].copy()
    xn[:, :3] = np.nan  # missing voxels leave the mean, exactly as in the estimator
    np.testing.assert_allclose(back.predict_proba(xn), est.predict_proba(xn), atol=1e-12)


def test_connectivity_bundle_scores_time_courses(tmp_path):
    from test_decoders_other import fc_windows

    x, y = fc_windows(n_rois=3)
    est = make_decoder("connectivity").fit(x, y)
    vox = np.argwhere(np.ones((3, 3, 1)))
    voxel_roi = np.array([0, 0, 0, 1, 1, 1, 2, 2, 2])
    b = bundle_from_estimator(est, voxels=vox, grid_shape=(3, 3, 1), grid_affine=np.eye(4),
                              template=np.ones((3, 3, 1)), feature={"window_scans": 20},
                              metrics={}, target_class="up",
                              extra={"voxel_roi": voxel_roi, "roi_names": ["M1", "IPL", "V1"]})
    save_bundle(b, tmp_path / "fc.npz")
    back = load_bundle(tmp_path / "fc.npz")
    assert back.kind == "connectivity"
    np.testing.assert_array_equal(back.extra["pairs"], est.pairs_)
    np.testing.assert_array_equal(back.extra["voxel_roi"], voxel_roi)
    assert back.extra["roi_names"] == ["M1", "IPL", "V1"]
    up = list(est.classes_).index("up")
    for tc in x[:5]:
        assert back.likelihood(tc) == pytest.approx(est.predict_proba(tc[None])[0, up], abs=1e-12)


# -- damaged, hostile and incompatible files -------------------------------------------------

def _assert_one_line(err: BundleError, path: Path, fragment: str) -> None:
    msg = str(err)
    assert "\n" not in msg and str(path) in msg and fragment in msg, msg


def _rewrite(src: Path, dst: Path, edit) -> None:
    """Re-pack a bundle's arrays after `edit(arrays, meta)`; the stored hash is kept."""
    with np.load(src, allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    meta = json.loads(arrays.pop("meta").tobytes())
    edit(arrays, meta)
    blob = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
    with open(dst, "wb") as fh:
        np.savez(fh, meta=blob, **arrays)


def _rehash(arrays, meta):
    meta["sha256"] = content_hash(arrays, meta)


@pytest.fixture()
def saved(haxby_decoder, tmp_path) -> Path:
    path = tmp_path / "good.npz"
    save_bundle(make_bundle(haxby_decoder), path)
    return path


def test_not_a_bundle(tmp_path):
    p = tmp_path / "notes.txt"
    p.write_text("hello\n")
    with pytest.raises(BundleError) as e:
        load_bundle(p)
    _assert_one_line(e.value, p, "not a decoder bundle")
    with pytest.raises(BundleError) as e:
        load_bundle(tmp_path / "missing.npz")
    _assert_one_line(e.value, tmp_path / "missing.npz", "no such file")
    q = tmp_path / "plain.npz"
    np.savez(q, weights=np.ones(3))
    with pytest.raises(BundleError) as e:
        load_bundle(q)
    _assert_one_line(e.value, q, "no 'meta'")


def test_truncated_bundle(saved, tmp_path):
    data = saved.read_bytes()
    for cut in (len(data) // 2, len(data) - 10, 100):
        p = tmp_path / f"cut{cut}.npz"
        p.write_bytes(data[:cut])
        with pytest.raises(BundleError) as e:
            load_bundle(p)
        _assert_one_line(e.value, p, "corrupt or truncated")


def test_flipped_byte_is_caught(saved, tmp_path):
    data = bytearray(saved.read_bytes())
    with zipfile.ZipFile(io.BytesIO(bytes(data))) as zf:
        info = zf.getinfo("weights.npy")
    data[info.header_offset + 30 + len(info.filename) + info.file_size - 3] ^= 0xFF
    p = tmp_path / "flipped.npz"
    p.write_bytes(bytes(data))
    with pytest.raises(BundleError) as e:
        load_bundle(p)
    _assert_one_line(e.value, p, "corrupt")  # zip CRC


def test_tampered_weights_fail_the_hash(saved, tmp_path):
    p = tmp_path / "tampered.npz"
    _rewrite(saved, p, lambda a, m: a.__setitem__("weights", a["weights"] * 2))
    with pytest.raises(BundleError) as e:
        load_bundle(p)
    _assert_one_line(e.value, p, "content hash mismatch")
    q = tmp_path / "tampered_meta.npz"
    _rewrite(saved, q, lambda a, m: m.__setitem__("target_class", "face"))
    with pytest.raises(BundleError, match="content hash mismatch"):
        load_bundle(q)


def test_missing_key_wrong_shape_newer_version(saved, tmp_path):
    p = tmp_path / "missing.npz"
    _rewrite(saved, p, lambda a, m: (a.pop("template"), _rehash(a, m)))
    with pytest.raises(BundleError) as e:
        load_bundle(p)
    _assert_one_line(e.value, p, "missing array 'template'")

    p = tmp_path / "shape.npz"
    _rewrite(saved, p, lambda a, m: (a.__setitem__("weights", a["weights"][:, :-1]), _rehash(a, m)))
    with pytest.raises(BundleError) as e:
        load_bundle(p)
    _assert_one_line(e.value, p, "weights have 529 columns but there are 530 voxels")

    p = tmp_path / "newer.npz"
    _rewrite(saved, p, lambda a, m: (m.__setitem__("format_version", 99), _rehash(a, m)))
    with pytest.raises(BundleError) as e:
        load_bundle(p)
    _assert_one_line(e.value, p, "newer decnef (format version 99")


class _Boom:
    """Unpickling this would create a file: proof that loading executed code."""

    marker: Path

    def __reduce__(self):
        return (Path.write_text, (self.marker, "pwned"))


def test_pickled_payload_is_refused_not_executed(saved, tmp_path):
    marker = tmp_path / "executed.txt"
    bomb = _Boom()
    bomb.marker = marker
    evil = np.empty(1, dtype=object)
    evil[0] = bomb
    p = tmp_path / "evil.npz"

    def edit(arrays, meta):
        arrays["weights"] = evil
    _rewrite(saved, p, edit)
    with pytest.raises(BundleError) as e:
        load_bundle(p)
    _assert_one_line(e.value, p, "pickled object array; refused")
    assert not marker.exists()
    src = Path(decoders.__file__).parent
    for f in src.glob("*.py"):
        assert "allow_pickle=True" not in f.read_text(), f


def test_bundle_error_is_importable_and_a_value_error():
    assert issubclass(decoders.BundleError, ValueError)


# -- ATR text ROI format ---------------------------------------------------------------------

def test_atr_export_import_round_trip(haxby_decoder, tmp_path):
    b = make_bundle(haxby_decoder)
    path = tmp_path / "ROI_face_house.txt"
    k = export_atr(b, path)
    lines = path.read_text().splitlines()
    assert lines[0] == "40 20 1" and int(lines[1]) == k == np.count_nonzero(b.weights)
    assert len(lines) == k + 3 and lines[-1].startswith("0 0 0 ")
    ijk = np.array([[int(v) for v in ln.split()[:3]] for ln in lines[2:-1]])
    assert ijk.min() >= 1  # MATLAB 1-based
    back = import_atr(path, template=b.template, grid_affine=b.grid_affine)
    sel = np.flatnonzero(b.weights[0])
    np.testing.assert_array_equal(back.voxels, b.voxels[sel])
    np.testing.assert_allclose(back.voxel_means, b.voxel_means[sel])
    for row in haxby_decoder[2][:20]:
        assert back.likelihood(row[sel]) == pytest.approx(b.likelihood(row), rel=1e-12, abs=1e-15)


def test_atr_known_file_is_one_based(tmp_path):
    p = tmp_path / "ROI_v1.txt"
    p.write_text("4 3 2\n2\n1 1 1 0.5 100\n4 3 2 -0.25 200\n0 0 0 0.1 0\n")
    b = import_atr(p)
    assert b.voxels.tolist() == [[0, 0, 0], [3, 2, 1]]
    assert b.grid_shape == (4, 3, 2) and b.template[3, 2, 1] == 200
    x = np.array([2.0, 4.0])
    assert b.likelihood(x) == pytest.approx(1 / (1 + np.exp(-(0.5 * 2 - 0.25 * 4 + 0.1))))
    flipped = import_atr(p, classes=("house", "face"), target_class="house")
    assert flipped.likelihood(x) == pytest.approx(b.likelihood(x))


@pytest.mark.parametrize(
    "text, fragment",
    [
        ("4 3\n1\n1 1 1 1 1\n0 0 0 0 0\n", "3 positive image dimensions"),
        ("4 3 2\n2\n1 1 1 1 1\n0 0 0 0 0\n", "header says 2 voxels"),
        ("4 3 2\n1\n1 1 x 1 1\n0 0 0 0 0\n", "line 3"),
        ("4 3 2\n1\n5 1 1 1 1\n0 0 0 0 0\n", "outside"),
        ("4 3 2\n1\n1 1 1 1 1\n1 0 0 0 0\n", "0 0 0 bias 0"),
    ],
)
def test_atr_bad_files_give_one_line(tmp_path, text, fragment):
    p = tmp_path / "ROI_bad.txt"
    p.write_text(text)
    with pytest.raises(BundleError) as e:
        import_atr(p)
    _assert_one_line(e.value, p, fragment)


def test_atr_export_refuses_multiclass(tmp_path):
    rng = np.random.default_rng(14)
    est = make_decoder("l2").fit(rng.standard_normal((30, 8)), np.repeat([0, 1, 2], 10))
    b = bundle_from_estimator(est, voxels=np.argwhere(np.ones((2, 2, 2))), grid_shape=(2, 2, 2),
                              grid_affine=np.eye(4), template=np.ones((2, 2, 2)), feature={},
                              metrics={}, target_class=1)
    with pytest.raises(BundleError, match="binary"):
        export_atr(b, tmp_path / "x.txt")


def test_atr_export_folds_feature_normalisation(tmp_path):
    from test_decoders import sparse_problem

    x, y = sparse_problem(n=100, d=8, noise=0.5, seed=15)
    x = 4 * x + 2
    est = SparseLogisticRegression(normalize="each").fit(x, y)
    b = bundle_from_estimator(est, voxels=np.argwhere(np.ones((2, 2, 2))), grid_shape=(2, 2, 2),
                              grid_affine=np.eye(4), template=np.ones((2, 2, 2)), feature={},
                              metrics={}, target_class=0)  # the negative class as target
    export_atr(b, tmp_path / "ROI_n.txt")
    back = import_atr(tmp_path / "ROI_n.txt", classes=("0", "1"), target_class="0")
    sel = np.flatnonzero(b.weights[0])
    for row in x[:10]:
        assert back.likelihood(row[sel]) == pytest.approx(est.predict_proba(row[None])[0, 0], rel=1e-10)


def test_loading_and_scoring_needs_no_scikit_learn(saved):
    # the online engine imports decoders only to load and score: keep that path numpy-only
    import subprocess
    import sys

    code = ("import sys, numpy as np, decoders; b = decoders.load_bundle(sys.argv[1]); "
            "p = b.likelihood(np.zeros(b.n_features)); "
            "assert 0 <= p <= 1 and 'sklearn' not in sys.modules, sorted(sys.modules)")
    subprocess.run([sys.executable, "-c", code, str(saved)], check=True)
