"""Files a watcher must retry (IncompleteFile) versus files it must give up on (DicomError)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from runtime.dicom import parse_file, read_series
from runtime.errors import DicomError, IncompleteFile

GE_FILE = "ge_mr750_dv26_epi_nih/axial_epi_fmri_interleaved_i_to_s-00001.dcm"
MOSAIC_FILE = "siemens_mosaic_prisma_ep2d_asc/IM-0001-0001.dcm"
ENHANCED_FILE = "philips_enhanced_achieva_fmri/IM-0001-9600-0001.dcm"


@pytest.mark.parametrize("rel", [GE_FILE, MOSAIC_FILE, ENHANCED_FILE])
@pytest.mark.parametrize("fraction", [0.0, 0.003, 0.05, 0.3, 0.7, 0.999])
def test_truncated_file_is_incomplete(tmp_path, dicom_dir, rel, fraction):
    data = (dicom_dir / rel).read_bytes()
    n = int(len(data) * fraction)
    f = tmp_path / "partial.dcm"
    f.write_bytes(data[:n])
    with pytest.raises(IncompleteFile) as exc:
        parse_file(f)
    assert str(f) in str(exc.value) and "\n" not in str(exc.value)
    # once the rest arrives, the same path parses
    f.write_bytes(data)
    assert parse_file(f).frames


def test_non_dicom_file(tmp_path):
    f = tmp_path / "notes.txt"
    f.write_text("this is not a DICOM file, and it is long enough to have a preamble\n" * 5)
    with pytest.raises(DicomError) as exc:
        parse_file(f)
    assert not isinstance(exc.value, IncompleteFile)
    assert str(f) in str(exc.value) and "not a DICOM file" in str(exc.value)


def test_missing_file_is_an_error(tmp_path):
    with pytest.raises(DicomError, match="no such file") as exc:
        parse_file(tmp_path / "gone.dcm")
    assert not isinstance(exc.value, IncompleteFile)


def _non_image_dicom(path: Path) -> None:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.88.11"  # Basic Text SR
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.preamble = b"\x00" * 128
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = "SR"
    pydicom.dcmwrite(path, ds, enforce_file_format=True)


def test_dicom_that_is_not_image_data(tmp_path):
    f = tmp_path / "report.dcm"
    _non_image_dicom(f)
    with pytest.raises(DicomError, match="not usable MR image data") as exc:
        parse_file(f)
    assert not isinstance(exc.value, IncompleteFile)


def test_garbage_folder_one_line_error(tmp_path):
    (tmp_path / "a.txt").write_text("hello")
    (tmp_path / "b.bin").write_bytes(b"\x01\x02" * 500)
    _non_image_dicom(tmp_path / "c.dcm")
    with pytest.raises(DicomError) as exc:
        read_series(tmp_path)
    assert str(exc.value) == f"{tmp_path}: no usable DICOM series found (3 files looked at)"


def test_empty_folder(tmp_path):
    with pytest.raises(DicomError, match=r"no usable DICOM series found \(0 files looked at\)"):
        read_series(tmp_path)


def test_cli_garbage_folder_exit_2(tmp_path):
    (tmp_path / "a.txt").write_text("hello")
    out = tmp_path / "out.nii.gz"
    r = subprocess.run(
        [sys.executable, "-m", "runtime.cli.main", "convert", str(tmp_path), str(out)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 2
    assert "Traceback" not in r.stderr
    assert r.stderr.strip().count("\n") == 0
    assert "no usable DICOM series found (1 files looked at)" in r.stderr
    assert not out.exists()
