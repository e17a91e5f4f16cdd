"""DICOM -> volumes on real data from every vendor layout in ../shared/data.

Checks volume count, shape, voxel size, TR, temporal order (also with the files handed to the
online assembler in a shuffled order), and values/affines against dcm2niix (ref/ NIfTI) or
dicom2nifti ground truth where the source ships one.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest

from runtime.dicom import VolumeAssembler, assemble_parts, parse_file, read_series

# name: (volumes, shape, zooms, TR s, layout)
SERIES = {
    "siemens_mosaic_skyra_rtcloud_faces": (10, (64, 64, 27), (3.0, 3.0, 4.0), 1.5, "mosaic"),
    "siemens_mosaic_prisma_ep2d_asc": (6, (64, 64, 36), (3.203125, 3.203125, 3.6), 3.2, "mosaic"),
    "siemens_enhanced_xa30_bold": (20, (64, 64, 33), (3.375, 3.375, 3.4), 1.0, "enhanced"),
    "ge_mr750_dv26_epi_nih": (10, (64, 64, 15), (3.75, 3.75, 5.0), 5.0, "slice"),
    "ge_architect_dv28_epiRT": (3, (64, 64, 32), (3.75, 3.75, 3.0), 2.0, "slice"),
    "philips_classic_achieva_phantom": (3, (64, 64, 9), (3.75, 3.75, 8.0), 2.0, "slice"),
    "philips_classic_elition_fcmri_3vols": (3, (96, 96, 63), (2.2604167, 2.2604167, 2.5), 1.259232, "slice"),
    "philips_enhanced_achieva_fmri": (4, (64, 64, 8), (3.3125, 3.3125, 3.3125), 3.0, "enhanced"),
}


def _files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file())


@pytest.fixture(scope="module")
def parsed(dicom_dir: Path) -> dict[str, list]:
    return {name: [parse_file(f) for f in _files(dicom_dir / name)] for name in SERIES}


@pytest.fixture(scope="module")
def volumes(dicom_dir: Path) -> dict[str, list]:
    return {name: read_series(dicom_dir / name) for name in SERIES}


def _canonical(data: np.ndarray, affine: np.ndarray) -> nib.Nifti1Image:
    return nib.as_closest_canonical(nib.Nifti1Image(data, affine))


def test_every_layout_is_recognised(parsed):
    for name, parts in parsed.items():
        assert {p.layout for p in parts} == {SERIES[name][4]}, name


@pytest.mark.parametrize("name", list(SERIES))
def test_count_shape_zooms_tr_order(volumes, name):
    n, shape, zooms, tr, _ = SERIES[name]
    vols = volumes[name]
    assert len(vols) == n
    assert [v.index for v in vols] == list(range(n))
    for v in vols:
        assert v.shape == shape
        assert v.data.dtype == np.float32 and v.data.flags.c_contiguous
        np.testing.assert_allclose(v.zooms, zooms, atol=1e-4)
        assert v.tr == pytest.approx(tr, abs=1e-4)
        assert v.series_uid and v.manufacturer
        assert np.isfinite(v.data).all()
    times = [v.acquisition_time for v in vols]
    if all(t is not None for t in times) and name != "philips_enhanced_achieva_fmri":
        assert times == sorted(times)  # temporal index order is acquisition order


@pytest.mark.parametrize("name", list(SERIES))
def test_shuffled_arrival_gives_same_volumes(parsed, volumes, name):
    """The online assembler, fed the files in a random order, emits each volume exactly once,
    identical to the offline result."""
    parts = list(parsed[name])
    random.Random(1234).shuffle(parts)
    asm = VolumeAssembler()
    got = []
    for p in parts:
        got.extend(asm.add(p))
    assert asm.pending() == {}
    got.sort(key=lambda v: v.index)
    ref = volumes[name]
    assert [v.index for v in got] == [v.index for v in ref]
    for a, b in zip(got, ref, strict=True):
        np.testing.assert_array_equal(a.data, b.data)
        np.testing.assert_allclose(a.affine, b.affine, atol=1e-9)
    # offline assembly does not depend on file order either
    shuffled = assemble_parts(parts)
    for a, b in zip(shuffled, ref, strict=True):
        np.testing.assert_array_equal(a.data, b.data)


def test_rtcloud_duplicate_volume(dicom_dir, parsed, volumes):
    """001_000013_000000.dcm repeats volume 10 (InstanceNumber 10 -> index 9): it gets index 9,
    read_series keeps 10 unique volumes, and the online assembler hands volume 9 out once."""
    folder = dicom_dir / "siemens_mosaic_skyra_rtcloud_faces"
    dup = parse_file(folder / "001_000013_000000.dcm")
    orig = parse_file(folder / "001_000013_000010.dcm")
    assert dup.volume_indices == orig.volume_indices == [9]
    assert [v.index for v in volumes["siemens_mosaic_skyra_rtcloud_faces"]] == list(range(10))

    asm = VolumeAssembler()
    first = asm.add(orig)
    assert [v.index for v in first] == [9]
    assert asm.add(dup) == []  # duplicate of a volume already handed out
    asm2 = VolumeAssembler()
    assert [v.index for v in asm2.add(dup)] == [9]
    assert asm2.add(orig) == []
    np.testing.assert_array_equal(first[0].data, volumes["siemens_mosaic_skyra_rtcloud_faces"][9].data)


def test_duplicate_slice_is_ignored(parsed):
    parts = parsed["ge_mr750_dv26_epi_nih"]
    asm = VolumeAssembler()
    for p in parts[:14]:
        assert asm.add(p) == []
    assert asm.add(parts[3]) == []  # same slice again
    assert asm.pending() == {0: 14}
    out = asm.add(parts[14])
    assert [v.index for v in out] == [0] and out[0].shape == (64, 64, 15)
    assert asm.pending() == {}


def test_unknown_slice_count_is_learned(parsed, volumes):
    """A per-slice series whose header has no slice count: the first volume is complete once a
    slice of the next volume arrives; then the learned count is used; flush() hands out the rest."""
    import dataclasses

    parts = [dataclasses.replace(p, slices_per_volume=None) for p in parsed["ge_mr750_dv26_epi_nih"]]
    asm = VolumeAssembler()
    out = []
    for p in parts[:15]:
        out += asm.add(p)
    assert out == [] and asm.pending() == {0: 15}
    out += asm.add(parts[15])
    assert [v.index for v in out] == [0]
    for p in parts[16:]:
        out += asm.add(p)
    assert [v.index for v in out] == list(range(10))  # learned 15: the last one completes too
    for a, b in zip(out, volumes["ge_mr750_dv26_epi_nih"], strict=True):
        np.testing.assert_array_equal(a.data, b.data)
    asm2 = VolumeAssembler(slices_per_volume=None)
    for p in parts[:20]:
        asm2.add(p)
    rest = asm2.flush()
    assert [v.index for v in rest] == [1] and rest[0].shape[2] == 5


@pytest.mark.parametrize(
    "name, ref",
    [
        ("siemens_mosaic_prisma_ep2d_asc", "ref/2_ep2d_Asc.nii"),
        ("ge_mr750_dv26_epi_nih", "ref/DCM2NIIX_regression_test_4.nii"),
        ("philips_classic_achieva_phantom", "ref/EPI_asc_CLEAR_201.nii"),
    ],
)
def test_matches_dcm2niix_reference(dicom_dir, volumes, name, ref):
    """Voxel values equal dcm2niix's (Philips: the FP value, raw/SS) and affine within 1e-3 mm,
    both in dcm2niix's own array order and after reorienting both to canonical RAS."""
    img = nib.load(dicom_dir / name / ref)
    vols = volumes[name]
    ours = np.stack([v.data for v in vols], axis=-1)
    theirs = img.get_fdata(dtype=np.float32)
    assert ours.shape == theirs.shape
    np.testing.assert_allclose(ours, theirs, rtol=1e-6, atol=1e-3)
    np.testing.assert_allclose(vols[0].affine, img.affine, atol=1e-3)
    a, b = _canonical(ours, vols[0].affine), _canonical(theirs, img.affine)
    np.testing.assert_allclose(a.get_fdata(), b.get_fdata(), rtol=1e-6, atol=1e-3)
    np.testing.assert_allclose(a.affine, b.affine, atol=1e-3)


def test_philips_fp_scaling_formula(dicom_dir, volumes):
    """FP = (raw*RS + RI) / (RS*SS) with SS = (2005,100E), checked on one raw slice."""
    f = dicom_dir / "philips_classic_achieva_phantom" / "201_EPI_asc_CLEAR_0001_01.dcm"
    ds = pydicom.dcmread(f)
    raw = ds.pixel_array.astype(np.float64)
    rs, ri, ss = float(ds.RescaleSlope), float(ds.RescaleIntercept), float(ds[0x2005, 0x100E].value)
    fp = (raw * rs + ri) / (rs * ss)
    part = parse_file(f)
    np.testing.assert_allclose(part.frames[0].pixels, fp, rtol=1e-6)
    assert part.meta["PhilipsScaleSlope"] == pytest.approx(ss)


def test_philips_enhanced_equals_dicom2nifti_up_to_constant(dicom_dir, volumes):
    """dicom2nifti's ground truth is raw x RS (1.8593); ours is FP = raw / SS: the ratio is the
    same constant 1/(RS*SS) everywhere, which also proves frames are grouped by
    TemporalPositionIndex correctly (nibabel cannot read this file at all)."""
    folder = dicom_dir / "philips_enhanced_achieva_fmri"
    img = nib.load(folder / "ref" / "001_ground_truth.nii.gz")
    vols = volumes["philips_enhanced_achieva_fmri"]
    a = _canonical(np.stack([v.data for v in vols], -1), vols[0].affine)
    b = _canonical(img.get_fdata(dtype=np.float32), img.affine)
    np.testing.assert_allclose(a.affine, b.affine, atol=1e-3)
    x, y = a.get_fdata(), b.get_fdata()
    mask = y != 0
    assert mask.sum() > 0.9 * mask.size
    ds = pydicom.dcmread(folder / "IM-0001-9600-0001.dcm", stop_before_pixels=True)
    fg = ds.PerFrameFunctionalGroupsSequence[0]
    rs = float(fg.PixelValueTransformationSequence[0].RescaleSlope)
    ss = float(fg[0x2005, 0x140F][0][0x2005, 0x100E].value)
    np.testing.assert_allclose(x[mask] / y[mask], 1.0 / (rs * ss), rtol=1e-5)
    np.testing.assert_allclose(x[~mask], 0.0)


def test_xa30_slice_timing_matches_dcm2niix(dicom_dir, volumes):
    ref = json.loads((dicom_dir / "siemens_enhanced_xa30_bold" / "ref" / "7_func-bold_task-fa_run-1.json").read_text())
    vols = volumes["siemens_enhanced_xa30_bold"]
    assert vols[0].tr == pytest.approx(ref["RepetitionTime"])
    np.testing.assert_allclose(vols[0].slice_times, ref["SliceTiming"], atol=1e-6)
    for v in vols:
        np.testing.assert_allclose(v.slice_times, ref["SliceTiming"], atol=0.003)
    assert v.meta["EchoTime"] == pytest.approx(ref["EchoTime"])
    assert v.meta["FlipAngle"] == pytest.approx(ref["FlipAngle"])


def test_mosaic_slice_timing_matches_dcm2niix(dicom_dir, volumes):
    ref = json.loads((dicom_dir / "siemens_mosaic_prisma_ep2d_asc" / "ref" / "2_ep2d_Asc.json").read_text())
    for v in volumes["siemens_mosaic_prisma_ep2d_asc"]:
        np.testing.assert_allclose(v.slice_times, ref["SliceTiming"], atol=1e-6)


def test_ge_epirt_headers_and_timing(volumes):
    """epiRT (no anatomy): geometry and slice timing only. RTIA timer gives interleaved
    acquisition 0, 1.0, 0.0625, 1.0625, ... (TR/32 apart); volume 0 lacks some RTIA values and
    takes the series pattern."""
    vols = volumes["ge_architect_dv28_epiRT"]
    expected = np.empty(32)
    expected[0::2] = np.arange(16) * 0.0625
    expected[1::2] = 1.0 + np.arange(16) * 0.0625
    for v in vols:
        np.testing.assert_allclose(v.slice_times, expected, atol=1e-4)
        assert v.manufacturer.startswith("GE")
    assert np.allclose(np.diff([v.affine[2, 3] for v in vols]), 0)


def test_elition_slice_major_numbering(dicom_dir, volumes):
    """File numbers are slice-major; the volume comes from TemporalPositionIdentifier."""
    folder = dicom_dir / "philips_classic_elition_fcmri_3vols"
    parts = [parse_file(folder / f"2101_{i:04d}.dcm") for i in (1, 2, 3, 76)]
    assert [p.volume_indices[0] for p in parts] == [0, 1, 2, 0]
    assert all(p.slices_per_volume == 63 for p in parts)
    v = volumes["philips_classic_elition_fcmri_3vols"]
    assert len({round(float(x.data.mean()), 3) for x in v}) == 3


def test_ge_nih_volume_from_instance_number(dicom_dir):
    folder = dicom_dir / "ge_mr750_dv26_epi_nih"
    p = parse_file(folder / "axial_epi_fmri_interleaved_i_to_s-00016.dcm")
    assert p.volume_indices == [1] and p.slices_per_volume == 15 and p.layout == "slice"


def test_several_series_pick_most_volumes(tmp_path, dicom_dir, caplog):
    for name in ("ge_mr750_dv26_epi_nih", "siemens_mosaic_prisma_ep2d_asc"):
        for f in _files(dicom_dir / name):
            (tmp_path / f"{name}_{f.name}").symlink_to(f)
    with caplog.at_level("WARNING"):
        vols = read_series(tmp_path)
    assert len(vols) == 10 and vols[0].series_number == 4
    assert "2 series found" in caplog.text and "series 4" in caplog.text
    vols2 = read_series(tmp_path, series=2)
    assert len(vols2) == 6 and vols2[0].shape == (64, 64, 36)
    assert len(read_series(tmp_path, series="ep2d_Asc")) == 6
    with pytest.raises(Exception, match="series 99 not found") as exc:
        read_series(tmp_path, series=99)
    assert "\n" not in str(exc.value)


def test_no_identifying_fields_in_meta(volumes):
    forbidden = {"PatientName", "PatientID", "PatientBirthDate", "InstitutionName", "DeviceSerialNumber"}
    for vols in volumes.values():
        assert not forbidden & set(vols[0].meta)
        assert "Doe" not in json.dumps(vols[0].meta, default=str)


@pytest.fixture(scope="module")
def studyforrest_parts(studyforrest_dir: Path) -> list:
    return [parse_file(f) for f in _files(studyforrest_dir / "dicoms")]


def test_studyforrest_online_shuffled(studyforrest_parts):
    """5460 Philips slices: 156 volumes of 80x80x35, TR 2 s, 3x3 mm (3.3 mm slice spacing); the
    online assembler fed the files in random order emits every volume once, equal to the
    offline assembly in TemporalPositionIdentifier order."""
    ref = assemble_parts(studyforrest_parts)
    assert [v.index for v in ref] == list(range(156))
    assert {v.shape for v in ref} == {(80, 80, 35)}
    assert ref[0].tr == pytest.approx(2.0, abs=1e-5)
    np.testing.assert_allclose(ref[0].zooms, (3.0, 3.0, 3.3), atol=1e-4)
    assert all(p.slices_per_volume == 35 for p in studyforrest_parts)
    parts = list(studyforrest_parts)
    random.Random(7).shuffle(parts)
    asm = VolumeAssembler()
    got = sorted((v for p in parts for v in asm.add(p)), key=lambda v: v.index)
    assert asm.pending() == {}
    assert [v.index for v in got] == list(range(156))
    for a, b in zip(got, ref, strict=True):
        np.testing.assert_array_equal(a.data, b.data)
    # AcquisitionTime in this excerpt is 2 s apart for TPI 1..140 but jumps back for TPI 141..156
    # (16:01:53..16:02:23, before TPI 1 at 16:04:22): the index comes from the TPI, never from time.
    acq = np.array([v.acquisition_time for v in ref])
    np.testing.assert_allclose(np.diff(acq[:140]), 2.0, atol=0.01)
    assert acq[140] < acq[0]
