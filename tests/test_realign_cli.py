"""`decnef realign` end to end on real EPI: parameters, matrices convention, resliced output."""

from __future__ import annotations

import subprocess
import sys

import nibabel as nib
import numpy as np
import pytest

from runtime.cli.main import main
from runtime.realign.params import params_to_matrix
from runtime.realign.synth import forrest_volumes, random_motion, scenario

COLUMNS = ["trans_x", "trans_y", "trans_z", "rot_x", "rot_y", "rot_z", "framewise_displacement",
           "iterations", "realign_ms"]


@pytest.fixture(scope="module")
def series(studyforrest_dir, tmp_path_factory):
    """4D NIfTI: the real reference volume, then 5 volumes moved by known transforms."""
    vols = forrest_volumes(studyforrest_dir, 1)
    scn = scenario(vols[0].data, vols[0].affine)
    rng = np.random.default_rng(21)
    truths = [np.eye(4)] + [random_motion(rng, 3.0, 3.0) for _ in range(5)]
    data = np.stack([scn.ref] + [scn.move(t, rng) for t in truths[1:]], axis=-1)
    folder = tmp_path_factory.mktemp("realign_cli")
    path = folder / "bold.nii.gz"
    img = nib.Nifti1Image(data, scn.affine)
    img.header.set_zooms(img.header.get_zooms()[:3] + (2.0,))
    nib.save(img, path)
    return scn, truths, path, folder


def _read_tsv(path):
    lines = path.read_text().splitlines()
    header = lines[0].split("\t")
    rows = [line.split("\t") for line in lines[1:]]
    return header, rows


def test_realign_cli_outputs(series):
    scn, truths, path, folder = series
    tsv, mats, out = folder / "p.tsv", folder / "m.npy", folder / "r.nii.gz"
    rc = main(["realign", str(path), "--out-params", str(tsv), "--out-matrices", str(mats), "--out", str(out)])
    assert rc == 0
    header, rows = _read_tsv(tsv)
    assert header == COLUMNS
    assert len(rows) == len(truths)
    assert rows[0][6] == "n/a"  # FD of the first volume, as fMRIPrep
    m = np.load(mats)
    assert m.shape == (len(truths), 4, 4)
    # M[i] maps volume i's world onto the reference's world: compare with the known truth
    for t, mi, row in zip(truths, m, rows, strict=True):
        assert scn.error_mm(t, mi) < 0.05
        np.testing.assert_allclose(params_to_matrix(np.array(row[:6], float)), mi, atol=1e-4)
    fd = [float(r[6]) for r in rows[1:]]
    p = np.array([[float(x) for x in r[:6]] for r in rows])
    hand = np.abs(np.diff(p[:, :3], axis=0)).sum(1) + 50 * np.abs(np.diff(p[:, 3:], axis=0)).sum(1)
    np.testing.assert_allclose(fd, hand, rtol=1e-4)
    img = nib.load(out)
    assert img.shape == scn.ref.shape + (len(truths),)
    np.testing.assert_allclose(img.affine, scn.affine, atol=1e-5)
    res = np.asarray(img.dataobj)
    np.testing.assert_allclose(res[..., 0], scn.ref, rtol=1e-4, atol=1e-2)  # the reference itself


def test_realign_cli_ref_image_and_cubic(series):
    scn, truths, path, folder = series
    ref_path = folder / "ref.nii.gz"
    nib.save(nib.Nifti1Image(scn.ref, scn.affine), ref_path)
    tsv, mats, out = folder / "p2.tsv", folder / "m2.npy", folder / "r2.nii.gz"
    rc = main(["realign", str(path), "--ref-image", str(ref_path), "--out-params", str(tsv),
               "--out-matrices", str(mats), "--out", str(out), "--interp", "cubic"])
    assert rc == 0
    m = np.load(mats)
    assert max(scn.error_mm(t, mi) for t, mi in zip(truths, m, strict=True)) < 0.05
    assert nib.load(out).shape == scn.ref.shape + (len(truths),)


def test_realign_cli_ref_index(series):
    scn, truths, path, folder = series
    tsv, mats = folder / "p3.tsv", folder / "m3.npy"
    assert main(["realign", str(path), "--ref", "2", "--out-params", str(tsv), "--out-matrices", str(mats)]) == 0
    m = np.load(mats)
    # reference = volume 2: M[i] ~ inv(T2) @ T_i
    for t, mi in zip(truths, m, strict=True):
        assert scn.error_mm(np.linalg.inv(truths[2]) @ t, mi) < 0.1
    assert scn.error_mm(np.eye(4), m[2]) < 0.002  # the reference itself, to the tolerance


@pytest.mark.parametrize("argv_tail, expected", [
    (["missing.nii.gz"], "not found"),
    (["REF3D"], "expected a 4D NIfTI"),
    (["BOLD", "--ref", "99"], "--ref 99"),
    (["BOLD", "--ref-image", "missing_ref.nii.gz"], "not found"),
    (["NOTNIFTI"], "cannot read"),
])
def test_realign_cli_bad_input(series, argv_tail, expected, tmp_path):
    scn, _, path, folder = series
    ref3d = folder / "ref3d.nii.gz"
    nib.save(nib.Nifti1Image(scn.ref, scn.affine), ref3d)
    junk = tmp_path / "junk.nii.gz"
    junk.write_text("not a nifti")
    subst = {"BOLD": str(path), "REF3D": str(ref3d), "NOTNIFTI": str(junk)}
    tail = [subst.get(a, a if not a.endswith(".nii.gz") else str(tmp_path / a)) for a in argv_tail]
    proc = subprocess.run([sys.executable, "-m", "runtime.cli.main", "realign", *tail,
                           "--out-params", str(tmp_path / "p.tsv")], capture_output=True, text=True)
    assert proc.returncode == 2
    assert expected in proc.stderr
    assert "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


def test_realign_help_documents_convention():
    proc = subprocess.run([sys.executable, "-m", "runtime.cli.main", "realign", "--help"], capture_output=True, text=True)
    assert proc.returncode == 0
    assert "M[i] @ [x, y, z, 1]" in proc.stdout and "reference's world" in proc.stdout
