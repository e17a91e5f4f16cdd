"""`decnef convert` end to end (subprocess), against dcm2niix; and runtime.nifti_io."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from runtime.nifti_io import FORBIDDEN_KEYS, load_4d, save_4d, sidecar_for, sidecar_path
from runtime.volume import Volume


def _decnef(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "runtime.cli.main", *args], capture_output=True, text=True, timeout=300
    )


def _dcm2niix(dcm2niix, src: Path, out_dir: Path) -> nib.Nifti1Image:
    return nib.load(dcm2niix(src, out_dir) / "ref.nii")


def _same_as_dcm2niix(ours: nib.Nifti1Image, ref: nib.Nifti1Image) -> None:
    assert ours.shape == ref.shape
    np.testing.assert_allclose(ours.affine, ref.affine, atol=1e-3)
    x = ours.get_fdata(dtype=np.float32)
    y = ref.get_fdata(dtype=np.float32)
    np.testing.assert_allclose(x, y, rtol=1e-6, atol=1e-3)  # same array order as dcm2niix
    a, b = nib.as_closest_canonical(ours), nib.as_closest_canonical(ref)
    np.testing.assert_allclose(a.affine, b.affine, atol=1e-3)


@pytest.fixture(scope="module")
def studyforrest_converted(studyforrest_dir: Path, tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    out = tmp_path_factory.mktemp("conv") / "sf.nii.gz"
    return out, _decnef("convert", str(studyforrest_dir / "dicoms"), str(out))


def test_convert_studyforrest(studyforrest_converted):
    out, r = studyforrest_converted
    assert r.returncode == 0, r.stderr
    line = r.stdout.strip()
    assert line.count("\n") == 0
    for piece in ("156 volumes", "80x80x35", "voxel 3x3x3.3 mm", "TR 2 s", "Philips"):
        assert piece in line
    img = nib.load(out)
    assert img.shape == (80, 80, 35, 156)
    assert img.get_data_dtype() == np.float32
    assert img.header.get_zooms()[3] == pytest.approx(2.0, abs=1e-5)
    assert img.header.get_xyzt_units() == ("mm", "sec")
    side = json.loads(sidecar_path(out).read_text())
    assert side["RepetitionTime"] == pytest.approx(2.0, abs=1e-5)
    assert side["NumberOfVolumes"] == 156
    assert side["Manufacturer"] == "Philips"
    assert side["PhilipsScaleSlope"] == pytest.approx(0.0132383, rel=1e-5)
    assert not FORBIDDEN_KEYS & set(side)
    assert "Jane" not in sidecar_path(out).read_text()


def test_convert_studyforrest_equals_dcm2niix(studyforrest_converted, studyforrest_dir, tmp_path, dcm2niix):
    out, r = studyforrest_converted
    assert r.returncode == 0, r.stderr
    _same_as_dcm2niix(nib.load(out), _dcm2niix(dcm2niix, studyforrest_dir / "dicoms", tmp_path))


@pytest.mark.parametrize("name", ["siemens_mosaic_skyra_rtcloud_faces", "siemens_enhanced_xa30_bold"])
def test_convert_siemens_equals_dcm2niix(dicom_dir, tmp_path, name, dcm2niix):
    out = tmp_path / "ours.nii"
    r = _decnef("convert", str(dicom_dir / name), str(out))
    assert r.returncode == 0, r.stderr
    ref = _dcm2niix(dcm2niix, dicom_dir / name, tmp_path / "d2n")
    _same_as_dcm2niix(nib.load(out), ref)
    ours_side = json.loads(sidecar_path(out).read_text())
    ref_side = json.loads((tmp_path / "d2n" / "ref.json").read_text())
    np.testing.assert_allclose(ours_side["SliceTiming"], ref_side["SliceTiming"], atol=1e-6)
    assert ours_side["RepetitionTime"] == pytest.approx(ref_side["RepetitionTime"])
    assert ours_side["EchoTime"] == pytest.approx(ref_side["EchoTime"])


def test_convert_series_option(tmp_path, dicom_dir):
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    for name in ("ge_mr750_dv26_epi_nih", "siemens_mosaic_prisma_ep2d_asc"):
        for f in (dicom_dir / name).iterdir():
            if f.is_file():
                (mixed / f"{name}_{f.name}").symlink_to(f)
    r = _decnef("convert", str(mixed), str(tmp_path / "a.nii.gz"))
    assert r.returncode == 0 and "10 volumes" in r.stdout
    assert "2 series found" in r.stderr  # the warning says which series was picked
    r = _decnef("convert", str(mixed), str(tmp_path / "b.nii.gz"), "--series", "2")
    assert r.returncode == 0 and "6 volumes" in r.stdout and "64x64x36" in r.stdout
    r = _decnef("convert", str(mixed), str(tmp_path / "c.nii.gz"), "--series", "42")
    assert r.returncode == 2 and "Traceback" not in r.stderr and "series 42 not found" in r.stderr


def test_convert_bad_arguments(tmp_path, dicom_dir):
    r = _decnef("convert", str(tmp_path / "nope"), str(tmp_path / "x.nii.gz"))
    assert r.returncode == 2 and "not a folder" in r.stderr and "Traceback" not in r.stderr
    r = _decnef("convert", str(dicom_dir / "siemens_mosaic_prisma_ep2d_asc"), str(tmp_path / "x.txt"))
    assert r.returncode == 2 and ".nii" in r.stderr


def _vol(i: int, tr: float | None = 1.5) -> Volume:
    rng = np.random.default_rng(i)
    aff = np.array([[-2.0, 0, 0, 60], [0, 2.0, 0.1, -70], [0, -0.1, 2.5, -20], [0, 0, 0, 1]])
    return Volume(
        data=rng.random((6, 5, 4), dtype=np.float32) * 100,
        affine=aff,
        index=i,
        tr=tr,
        slice_times=(0.0, 0.75, 0.25, 1.0),
        series_number=5,
        series_description="bold",
        manufacturer="SIEMENS",
        meta={"EchoTime": 0.03, "FlipAngle": 70.0, "PatientName": "Jane_Doe", "InstitutionName": "X"},
    )


def test_save_load_4d_round_trip(tmp_path):
    vols = [_vol(i) for i in range(3)]
    p = tmp_path / "run.nii.gz"
    save_4d(vols, p)
    img = nib.load(p)
    assert img.shape == (6, 5, 4, 3) and img.get_data_dtype() == np.float32
    assert img.header.get_zooms()[3] == pytest.approx(1.5)
    assert int(img.header["sform_code"]) == 1 and int(img.header["qform_code"]) == 1
    back = load_4d(p)
    assert [v.index for v in back] == [0, 1, 2]
    for a, b in zip(vols, back, strict=True):
        np.testing.assert_array_equal(a.data, b.data)
        np.testing.assert_allclose(a.affine, b.affine, atol=1e-5)
        assert b.tr == pytest.approx(1.5)
        assert b.slice_times == a.slice_times
        assert b.data.flags.c_contiguous
    side = json.loads((tmp_path / "run.json").read_text())
    assert side["RepetitionTime"] == 1.5 and side["SliceTiming"] == [0.0, 0.75, 0.25, 1.0]
    assert side["EchoTime"] == 0.03 and side["FlipAngle"] == 70.0 and side["SeriesNumber"] == 5
    assert side["Manufacturer"] == "Siemens" and side["NumberOfVolumes"] == 3
    assert "PatientName" not in side and "InstitutionName" not in side


def test_sidecar_never_identifies(tmp_path):
    vols = [_vol(0)]
    assert not FORBIDDEN_KEYS & set(sidecar_for(vols))
    p = tmp_path / "x.nii"
    save_4d(vols, p, sidecar={"PatientName": "Jane_Doe", "PatientID": "123", "PatientBirthDate": "19900101", "RepetitionTime": 1.5})
    text = (tmp_path / "x.json").read_text()
    assert "Jane" not in text and "123" not in text and "1990" not in text
    assert json.loads(text) == {"RepetitionTime": 1.5}


def test_sidecar_reports_gaps(tmp_path):
    vols = [_vol(0), _vol(1), _vol(3)]
    assert sidecar_for(vols)["VolumeIndices"] == [0, 1, 3]
    assert "VolumeIndices" not in sidecar_for(vols[:2])


def test_load_4d_of_3d_image_and_msec_units(tmp_path):
    img = nib.Nifti1Image(np.ones((3, 3, 3, 2), np.int16), np.eye(4))
    img.header.set_xyzt_units("mm", "msec")
    img.header.set_zooms((1, 1, 1, 2500))
    nib.save(img, tmp_path / "m.nii")
    vols = load_4d(tmp_path / "m.nii")
    assert len(vols) == 2 and vols[0].tr == pytest.approx(2.5) and vols[0].data.dtype == np.float32
    nib.save(nib.Nifti1Image(np.zeros((3, 3, 3), np.float32), np.eye(4)), tmp_path / "s.nii")
    assert len(load_4d(tmp_path / "s.nii")) == 1
