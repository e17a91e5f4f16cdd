"""Estimators: SLR-VAR / SMLR (sparsity, Woodbury, determinism, real Haxby data), sklearn API."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.calibration import CalibratedClassifierCV
from sklearn.svm import LinearSVC
from sklearn.utils.estimator_checks import check_estimator

from decoders import (
    CalibratedLinearSVC,
    SparseLogisticRegression,
    SparseMultinomialLogisticRegression,
    make_decoder,
)


def load_haxby(haxby_dir):
    """Haxby 2001 single slice as (volumes x 530 mask voxels), labels, chunks.

    Preprocessing (the usual PyMVPA recipe, per run so no information crosses runs): linear
    detrend of every voxel within each chunk, then z-score each voxel within the chunk over
    all its volumes. One sample per labelled volume, no HRF shift (the labels in
    attributes_literal.txt are per volume, as in the PyMVPA example this set ships with).
    """
    nib = pytest.importorskip("nibabel")
    from scipy.signal import detrend

    bold = np.asanyarray(nib.load(haxby_dir / "bold.nii.gz").dataobj).astype(np.float64)
    mask = np.asanyarray(nib.load(haxby_dir / "mask.nii.gz").dataobj) > 0
    attrs = np.loadtxt(haxby_dir / "attributes_literal.txt", dtype=str)
    labels, chunks = attrs[:, 0], attrs[:, 1].astype(int)
    x = bold[mask].T  # (1452, 530)
    out = np.empty_like(x)
    for c in np.unique(chunks):
        sel = chunks == c
        z = detrend(x[sel], axis=0)
        out[sel] = (z - z.mean(axis=0)) / z.std(axis=0)
    return out, labels, chunks, mask


@pytest.fixture(scope="module")
def haxby(haxby_dir):
    return load_haxby(haxby_dir)


def sparse_problem(n=120, d=200, informative=5, seed=0, noise=0.0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, d))
    w = np.zeros(d)
    w[:informative] = np.linspace(2.0, 3.0, informative) * np.where(np.arange(informative) % 2, -1, 1)
    y = (x @ w + noise * rng.standard_normal(n) > 0).astype(int)
    return x, y


# -- scikit-learn compatibility --------------------------------------------------------------

@pytest.mark.filterwarnings("ignore::sklearn.exceptions.SkipTestWarning")  # array-API check
@pytest.mark.parametrize(
    "est",
    [SparseLogisticRegression(), SparseMultinomialLogisticRegression(), CalibratedLinearSVC()],
    ids=lambda e: type(e).__name__,
)
def test_check_estimator(est):
    # no expected failures: every applicable check must pass
    check_estimator(est)


@pytest.mark.filterwarnings("ignore::sklearn.exceptions.SkipTestWarning")
def test_check_estimator_roi_mean_only_fails_by_design():
    from decoders import RoiMeanDecoder

    # check_classifiers_train wants > 83% on multivariate blobs; a decoder that by design
    # sees only the mean over features cannot separate them. Everything else must pass.
    check_estimator(
        RoiMeanDecoder(),
        expected_failed_checks={"check_classifiers_train": "univariate by design (ROI mean only)"},
    )


# -- binary SLR-VAR --------------------------------------------------------------------------

def test_slr_keeps_informative_features_and_prunes_the_rest():
    x, y = sparse_problem()
    est = SparseLogisticRegression().fit(x, y)
    assert set(range(5)) <= set(est.selected_.tolist())
    assert est.n_selected_features_ <= 8  # from 200 candidates
    pruned = np.setdiff1d(np.arange(x.shape[1]), est.selected_)
    assert np.all(est.coef_[0, pruned] == 0.0)
    assert np.all(np.isinf(est.alpha_[0, pruned]))
    # signs of the informative weights are right and the training data is separated
    assert np.all(np.sign(est.coef_[0, :5]) == np.array([1, -1, 1, -1, 1]))
    assert est.score(x, y) == 1.0


def test_slr_predicts_held_out_data():
    x, y = sparse_problem(n=400, noise=0.5, seed=3)
    est = SparseLogisticRegression().fit(x[:200], y[:200])
    assert est.score(x[200:], y[200:]) > 0.85
    p = est.predict_proba(x[200:])
    assert np.allclose(p.sum(axis=1), 1.0)
    assert np.array_equal(est.predict(x[200:]), est.classes_[(p[:, 1] > 0.5).astype(int)])


def test_woodbury_and_direct_give_the_same_weights():
    x, y = sparse_problem(n=60, d=150, noise=1.0, seed=1)
    wood = SparseLogisticRegression(woodbury=True, tol=0).fit(x, y)
    direct = SparseLogisticRegression(woodbury=False, tol=0).fit(x, y)
    assert np.array_equal(wood.selected_, direct.selected_)
    np.testing.assert_allclose(wood.coef_, direct.coef_, rtol=1e-7, atol=1e-9)
    np.testing.assert_allclose(wood.intercept_, direct.intercept_, atol=1e-9)


def test_slr_is_deterministic():
    x, y = sparse_problem(n=80, d=300, noise=1.0, seed=2)
    a = SparseLogisticRegression().fit(x, y)
    b = SparseLogisticRegression().fit(x.copy(), y.copy())
    assert np.array_equal(a.coef_, b.coef_) and np.array_equal(a.intercept_, b.intercept_)


def test_normalize_each_is_folded_into_raw_coefficients():
    x, y = sparse_problem(n=100, d=20, noise=0.5, seed=4)
    x = 5.0 * x + 10.0  # offset and scale that 'each' normalisation removes
    est = SparseLogisticRegression(normalize="each").fit(x, y)
    xn = (x - est.feature_mean_) / est.feature_scale_
    np.testing.assert_allclose(est.feature_scale_, np.max(np.abs(x - x.mean(0)), axis=0))
    ref = SparseLogisticRegression(normalize="none").fit(xn, y)
    np.testing.assert_allclose(est.decision_function(x), ref.decision_function(xn), atol=1e-8)
    with pytest.raises(ValueError, match="normalize"):
        SparseLogisticRegression(normalize="max").fit(x, y)


def test_slr_many_more_features_than_samples():
    # Woodbury path: 4000 features x 100 samples never forms a 4000 x 4000 matrix
    x, y = sparse_problem(n=100, d=4000, informative=4, seed=5)
    est = SparseLogisticRegression(n_iter=150).fit(x, y)
    assert set(range(4)) <= set(est.selected_.tolist())
    assert est.n_selected_features_ < 20


def test_string_labels_and_class_order():
    x, y = sparse_problem(n=80, d=30, seed=6)
    labels = np.where(y == 1, "house", "face")
    est = SparseLogisticRegression().fit(x, labels)
    assert list(est.classes_) == ["face", "house"]
    assert est.score(x, labels) == 1.0


# -- multiclass SMLR -------------------------------------------------------------------------

def multiclass_problem(n=300, d=60, seed=7):
    rng = np.random.default_rng(seed)
    y = np.repeat(np.arange(3), n // 3)
    x = rng.standard_normal((n, d))
    for c in range(3):  # class c raises features 2c, 2c+1
        x[y == c, 2 * c : 2 * c + 2] += 2.0
    perm = rng.permutation(n)
    return x[perm], y[perm]


def test_smlr_multiclass_dispatch_and_sparsity():
    x, y = multiclass_problem()
    est = SparseLogisticRegression().fit(x[:150], y[:150])
    assert est.coef_.shape == (3, 60) and est.intercept_.shape == (3,)
    assert est.score(x[150:], y[150:]) > 0.85
    assert set(range(6)) <= set(est.selected_.tolist())
    # per-(feature, class) ARD is less sparse than binary SLR on 150 samples (the reference
    # implementations behave alike), but far from dense, and each class's strongest weight
    # sits on its own informative features, with positive sign
    assert est.n_selected_features_ <= 30
    for c in range(3):
        assert np.all(est.coef_[c, 2 * c : 2 * c + 2] > 0)
        assert np.argmax(np.abs(est.coef_[c])) in (2 * c, 2 * c + 1)
    p = est.predict_proba(x[150:])
    assert p.shape == (150, 3) and np.allclose(p.sum(axis=1), 1.0)
    assert est.decision_function(x[:5]).shape == (5, 3)


def test_smlr_on_two_classes_matches_softmax_convention():
    x, y = sparse_problem(n=100, d=20, noise=0.5, seed=8)
    est = SparseMultinomialLogisticRegression().fit(x, y)
    assert est.coef_.shape == (2, 20)
    s = est.decision_function(x)
    assert s.shape == (100,)
    raw = x @ est.coef_.T + est.intercept_
    np.testing.assert_allclose(s, raw[:, 1] - raw[:, 0])
    assert est.score(x, y) > 0.9


def test_smlr_block_hessian_path_matches_exact_path():
    # above full_hessian_max the per-class block approximation + exact-Hessian CG is used;
    # the fitted classifier must agree with the exact-Hessian fit on held-out predictions
    from decoders.smlr import fit_smlr

    x, y = multiclass_problem(n=150, d=40, seed=9)
    xb = np.hstack([x, np.ones((150, 1))])
    w_exact, _, _ = fit_smlr(xb, y, 3, n_iter=100, full_hessian_max=10**6)
    w_block, _, _ = fit_smlr(xb, y, 3, n_iter=100, full_hessian_max=0)
    pe = np.argmax(xb @ w_exact, axis=1)
    pb = np.argmax(xb @ w_block, axis=1)
    assert np.mean(pe == pb) > 0.95
    assert set(np.flatnonzero(np.any(w_block[:6] != 0, axis=1))) == set(range(6))


# -- real data: Haxby 2001 face vs house -----------------------------------------------------

def test_haxby_face_vs_house_slr(haxby):
    x, labels, chunks, mask = haxby
    sel = np.isin(labels, ["face", "house"])
    train, test = sel & (chunks < 6), sel & (chunks >= 6)
    est = SparseLogisticRegression().fit(x[train], labels[train])
    acc = est.score(x[test], labels[test])
    assert acc >= 0.85, acc
    assert 0 < est.n_selected_features_ < mask.sum() // 10  # sparse: a handful of 530 voxels


def test_haxby_face_vs_house_other_linear_decoders(haxby):
    x, labels, chunks, _ = haxby
    sel = np.isin(labels, ["face", "house"])
    train, test = sel & (chunks < 6), sel & (chunks >= 6)
    for name in ("l1", "l2", "svm"):
        est = make_decoder(name).fit(x[train], labels[train])
        assert est.score(x[test], labels[test]) >= 0.8, name


# -- other linear decoders -------------------------------------------------------------------

def test_make_decoder_names():
    from decoders import DECODERS

    for name in DECODERS:
        est = make_decoder(name)
        assert hasattr(est, "fit")
    assert make_decoder("slr", n_iter=10).n_iter == 10
    assert make_decoder("l1", C=0.3).C == 0.3
    with pytest.raises(ValueError, match="unknown decoder 'lda'"):
        make_decoder("lda")


@pytest.mark.parametrize("n_classes", [2, 3])
def test_calibrated_svm_is_one_linear_function_matching_sklearn(n_classes):
    rng = np.random.default_rng(10)
    y = np.repeat(np.arange(n_classes), 40)
    x = rng.standard_normal((y.size, 8))
    x[np.arange(y.size), y] += 1.5
    est = CalibratedLinearSVC().fit(x, y)
    ref = CalibratedClassifierCV(LinearSVC(random_state=0, max_iter=10000), method="sigmoid",
                                 cv=3, ensemble=False).fit(x, y)
    np.testing.assert_allclose(est.predict_proba(x), ref.predict_proba(x), atol=1e-10)
    assert est.coef_.shape == (1 if n_classes == 2 else n_classes, 8)
    assert est.link_ == ("logistic" if n_classes == 2 else "ovr")
