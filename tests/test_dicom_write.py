"""write_series / volume_to_datasets: real DICOM files that our reader (and nibabel) read back."""

from __future__ import annotations

import warnings
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest

from runtime.dicom import (
    SeriesSpec,
    VolumeAssembler,
    parse_file,
    read_series,
    volume_to_datasets,
    write_dataset,
    write_series,
)
from runtime.dicom.affine import same_handedness_as_reader
from runtime.dicom.write import dataset_bytes, quantise
from runtime.volume import Volume

IDENTIFYING = ("PatientBirthDate", "PatientSex", "PatientAge", "InstitutionName", "OtherPatientIDs")


@pytest.fixture(scope="module")
def ep2d(dicom_dir: Path) -> list[Volume]:
    return read_series(dicom_dir / "siemens_mosaic_prisma_ep2d_asc")


@pytest.fixture(scope="module")
def phantom(dicom_dir: Path) -> list[Volume]:
    return read_series(dicom_dir / "philips_classic_achieva_phantom")


def _step(vol: Volume) -> float:
    """Largest quantisation step the writer may use for this volume."""
    _, slope, _ = quantise(vol.data)
    return slope / 2 + 1e-3 * slope


@pytest.mark.parametrize("layout", ["slice", "mosaic", "enhanced"])
@pytest.mark.parametrize("source", ["ep2d", "phantom"])
def test_round_trip(tmp_path, request, layout, source):
    vols = request.getfixturevalue(source)
    paths = write_series(vols, tmp_path, layout=layout, series_number=7, tr=vols[0].tr)
    n_files = {"slice": len(vols) * vols[0].shape[2], "mosaic": len(vols), "enhanced": len(vols)}[layout]
    assert len(paths) == n_files
    back = read_series(tmp_path)
    assert [v.index for v in back] == [v.index for v in vols]
    for a, b in zip(vols, back, strict=True):
        assert b.shape == a.shape
        np.testing.assert_allclose(b.data, a.data, atol=_step(a), rtol=0)
        np.testing.assert_allclose(b.affine, a.affine, atol=1e-4)
        assert b.tr == pytest.approx(a.tr, abs=1e-6)
        assert b.series_number == 7
        if a.slice_times is not None:
            np.testing.assert_allclose(b.slice_times, a.slice_times, atol=1e-5)
        assert b.acquisition_time == pytest.approx(a.acquisition_time, abs=1e-4)
    parts = [parse_file(p) for p in paths]
    assert {p.layout for p in parts} == {layout}
    ds = pydicom.dcmread(paths[0])
    assert ds.file_meta.TransferSyntaxUID == pydicom.uid.ExplicitVRLittleEndian
    assert str(ds.PatientName) == "" and ds.PatientID == ""
    assert not any(k in ds for k in IDENTIFYING)
    assert len({pydicom.dcmread(p).SOPInstanceUID for p in paths}) == len(paths)
    assert len({pydicom.dcmread(p).SeriesInstanceUID for p in paths}) == 1


def test_integer_data_is_stored_exactly(tmp_path, ep2d):
    write_series(ep2d[:2], tmp_path, layout="slice")
    back = read_series(tmp_path)
    for a, b in zip(ep2d[:2], back, strict=True):
        np.testing.assert_array_equal(a.data, b.data)
    assert "RescaleSlope" not in pydicom.dcmread(sorted(tmp_path.iterdir())[0])


def test_negative_float_data(tmp_path, ep2d):
    v = ep2d[0]
    rng = np.random.default_rng(0)
    data = (rng.standard_normal(v.shape) * 3.7).astype(np.float32)
    vol = Volume(data=data, affine=v.affine, index=3, tr=2.0)
    write_series([vol], tmp_path, layout="enhanced")
    (b,) = read_series(tmp_path)
    assert b.index == 3
    _, slope, _ = quantise(data)
    np.testing.assert_allclose(b.data, data, atol=slope / 2 + 1e-6)


def test_enhanced_several_volumes_per_file(tmp_path, ep2d):
    paths = write_series(ep2d, tmp_path, layout="enhanced", volumes_per_file=4)
    assert len(paths) == 2
    part = parse_file(paths[0])
    assert part.volume_indices == [0, 1, 2, 3] and part.slices_per_volume == 36
    back = read_series(tmp_path)
    assert [v.index for v in back] == list(range(6))
    for a, b in zip(ep2d, back, strict=True):
        np.testing.assert_array_equal(a.data, b.data)


def test_mosaic_readable_by_nibabel(tmp_path, dicom_dir, ep2d):
    """nibabel's MosaicWrapper reads our mosaic (CSA header) exactly like the scanner's file."""
    warnings.simplefilter("ignore")
    from nibabel.nicom import dicomwrappers

    paths = write_series(ep2d[:1], tmp_path, layout="mosaic")
    ours = dicomwrappers.wrapper_from_file(str(paths[0]))
    orig = dicomwrappers.wrapper_from_file(str(dicom_dir / "siemens_mosaic_prisma_ep2d_asc" / "IM-0001-0001.dcm"))
    assert type(ours).__name__ == "MosaicWrapper"
    np.testing.assert_array_equal(ours.get_data(), orig.get_data())
    np.testing.assert_allclose(ours.affine, orig.affine, atol=1e-4)
    ds = pydicom.dcmread(paths[0])
    assert ds[0x0019, 0x100A].value == 36 and "MOSAIC" in ds.ImageType


def test_enhanced_readable_by_nibabel(tmp_path, ep2d):
    warnings.simplefilter("ignore")
    from nibabel.nicom import dicomwrappers

    paths = write_series(ep2d[:1], tmp_path, layout="enhanced")
    w = dicomwrappers.wrapper_from_file(str(paths[0]))
    assert type(w).__name__ == "MultiframeWrapper"
    a = nib.as_closest_canonical(nib.Nifti1Image(w.get_data().astype(np.float32), np.diag([-1, -1, 1, 1]) @ w.affine))
    b = nib.as_closest_canonical(nib.Nifti1Image(ep2d[0].data, ep2d[0].affine))
    np.testing.assert_array_equal(a.get_fdata(), b.get_fdata())
    np.testing.assert_allclose(a.affine, b.affine, atol=1e-3)


def test_ras_canonical_volume_same_image_in_world(tmp_path, ep2d):
    """A volume in another array convention comes back as the same image in world space."""
    img = nib.as_closest_canonical(nib.Nifti1Image(ep2d[0].data, ep2d[0].affine))
    vol = Volume(data=np.ascontiguousarray(img.get_fdata(dtype=np.float32)), affine=img.affine, index=0, tr=3.2)
    assert not same_handedness_as_reader(vol.affine)
    write_series([vol], tmp_path, layout="slice")
    (b,) = read_series(tmp_path)
    c = nib.as_closest_canonical(nib.Nifti1Image(b.data, b.affine))
    np.testing.assert_array_equal(c.get_fdata(), img.get_fdata())
    np.testing.assert_allclose(c.affine, img.affine, atol=1e-4)


@pytest.mark.parametrize("layout", ["slice", "mosaic", "enhanced"])
def test_per_volume_datasets_for_a_replayer(tmp_path, phantom, layout):
    """A replayer writes one volume's files at a time (atomically); the online assembler sees
    each volume complete as soon as its files are in."""
    spec = SeriesSpec(layout=layout, series_number=3, manufacturer="Philips" if layout != "mosaic" else "SIEMENS", n_volumes=3)
    asm = VolumeAssembler()
    for vol in phantom:
        dss = volume_to_datasets(vol, spec)
        out = []
        for ds in dss:
            p = write_dataset(ds, tmp_path / f"{ds.SOPInstanceUID}.dcm")
            out += asm.add(parse_file(p))
        assert [v.index for v in out] == [vol.index]
        np.testing.assert_allclose(out[0].data, vol.data, atol=_step(vol))
        np.testing.assert_allclose(out[0].affine, vol.affine, atol=1e-4)
    assert not list(tmp_path.glob(".*.part"))
    # keyword form and raw bytes agree with the spec form
    ds1 = volume_to_datasets(phantom[0], layout=layout, series_number=3)[0]
    assert dataset_bytes(ds1)[128:132] == b"DICM"
