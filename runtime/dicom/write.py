"""Volumes -> real DICOM files (for the replay simulator and round-trip tests).

Three layouts, each read back by `parse_file`/`read_series` to the same array (within the
integer quantisation) and the same affine:

* "slice": MR Image Storage, one file per slice, TemporalPositionIdentifier = index + 1,
  ImagesInAcquisition = slices per volume.
* "mosaic": Siemens classic mosaic, one file per volume, with a CSA image header
  (NumberOfImagesInMosaic, SliceNormalVector, MosaicRefAcqTimes) that nibabel's MosaicWrapper
  also accepts, plus the (0019,xx0A)/(0019,xx29) copies.
* "enhanced": Enhanced MR Image Storage, one multi-frame file per volume (or `volumes_per_file`
  volumes per file), with per-frame TemporalPositionIndex / PlanePosition and a
  DimensionIndexSequence.

Float data are stored as uint16 (non-negative data) or int16 with RescaleSlope/Intercept chosen
per volume; data that are already integers in range are stored unscaled. UIDs are derived
deterministically from the series so that per-volume calls agree. No patient-identifying
values are written (PatientName/PatientID are present but empty, as the standard requires).

Exact round trip holds for volumes in the reader's array convention (anything `read_series`
returns). Other volumes (e.g. RAS-canonical NIfTI) come back as the same image in world space,
possibly with the slice axis reversed (see runtime.dicom.affine.same_handedness_as_reader).
"""

from __future__ import annotations

import datetime as _dt
import io
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from runtime.dicom.affine import dicom_geometry, dicom_pixels
from runtime.dicom.mosaic import CSA_CREATOR, MR_HEADER_CREATOR, mosaic_ipp, pack, write_csa
from runtime.volume import Volume

MR_IMAGE = "1.2.840.10008.5.1.4.1.1.4"
ENHANCED_MR = "1.2.840.10008.5.1.4.1.1.4.1"
LAYOUTS = ("slice", "mosaic", "enhanced")


@dataclass
class SeriesSpec:
    """What is constant over a written series. UIDs default to values derived from the series."""

    layout: str = "slice"
    series_number: int = 1
    series_description: str = "decnef replay"
    manufacturer: str = "SIEMENS"
    model: str = "decnef"
    tr: float | None = None
    """Seconds; default: the volume's tr."""
    n_volumes: int | None = None
    echo_time: float | None = None
    """Seconds."""
    echo_number: int | None = None
    """Multi-echo series: this echo's number, written as EchoNumbers (all layouts; mosaics also
    get Siemens' "TE<n>" in ImageType) and folded into the SOP instance UIDs and file names
    (`_e<n>`) so that the echoes of one volume never collide. None: no EchoNumbers element
    (single-echo files exactly as before)."""
    flip_angle: float | None = None
    series_uid: str = ""
    study_uid: str = ""
    frame_of_reference_uid: str = ""
    date: str = ""
    """YYYYMMDD for Study/Series/Content dates; default today."""

    def resolved(self, vol: Volume) -> SeriesSpec:
        if self.layout not in LAYOUTS:
            raise ValueError(f"layout must be one of {LAYOUTS}, not {self.layout!r}")
        seed = [str(self.series_number), self.series_description, vol.series_uid or "", self.layout]
        s = SeriesSpec(**self.__dict__)
        s.series_uid = s.series_uid or generate_uid(entropy_srcs=["series", *seed])
        s.study_uid = s.study_uid or generate_uid(entropy_srcs=["study", vol.series_uid or s.series_uid])
        s.frame_of_reference_uid = s.frame_of_reference_uid or generate_uid(entropy_srcs=["for", s.study_uid])
        s.date = s.date or _dt.date.today().strftime("%Y%m%d")
        if s.tr is None:
            s.tr = vol.tr
        if s.echo_time is None and isinstance(vol.meta.get("EchoTime"), int | float):
            s.echo_time = float(vol.meta["EchoTime"])
        if s.flip_angle is None and isinstance(vol.meta.get("FlipAngle"), int | float):
            s.flip_angle = float(vol.meta["FlipAngle"])
        return s


def _tm(seconds: float) -> str:
    seconds = float(seconds) % 86400.0
    h = int(seconds // 3600)
    m = int((seconds - h * 3600) // 60)
    s = seconds - h * 3600 - m * 60
    return f"{h:02d}{m:02d}{s:09.6f}"


def _ds_str(x: float) -> str:
    """A DS value (max 16 chars) with as much precision as fits."""
    for prec in range(10, 0, -1):
        s = f"{x:.{prec}g}"
        if len(s) <= 16:
            return s
    return f"{x:.6e}"[:16]


def quantise(data: np.ndarray) -> tuple[np.ndarray, float, float]:
    """Float array -> (uint16/int16 array, slope, intercept): stored * slope + intercept ~ data."""
    finite = np.nan_to_num(np.asarray(data, np.float64), nan=0.0, posinf=0.0, neginf=0.0)
    lo, hi = float(finite.min()) if finite.size else 0.0, float(finite.max()) if finite.size else 0.0
    integral = np.array_equal(finite, np.round(finite))
    if lo >= 0:
        if integral and hi <= 65535:
            return finite.astype(np.uint16), 1.0, 0.0
        slope = hi / 65000.0 if hi > 0 else 1.0
        return np.round(finite / slope).astype(np.uint16), slope, 0.0
    if integral and lo >= -32768 and hi <= 32767:
        return finite.astype(np.int16), 1.0, 0.0
    slope = max(abs(lo), abs(hi)) / 32000.0
    return np.round(finite / slope).astype(np.int16), slope, 0.0


def _base(spec: SeriesSpec, sop_class: str, sop_uid: str, vol: Volume, acq_time: float) -> Dataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = pydicom.uid.PYDICOM_IMPLEMENTATION_UID
    ds = Dataset()
    ds.file_meta = meta
    ds.preamble = b"\x00" * 128
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "M", "ND"]
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = sop_uid
    ds.StudyDate = ds.SeriesDate = ds.ContentDate = ds.AcquisitionDate = spec.date
    ds.StudyTime = ds.SeriesTime = _tm(0 if vol.acquisition_time is None else acq_time - vol.index * (spec.tr or 0))
    ds.AcquisitionTime = ds.ContentTime = _tm(acq_time)
    ds.Modality = "MR"
    ds.Manufacturer = spec.manufacturer
    ds.ManufacturerModelName = spec.model
    ds.SeriesDescription = spec.series_description
    ds.ProtocolName = spec.series_description
    ds.PatientName = ""
    ds.PatientID = ""
    ds.StudyInstanceUID = spec.study_uid
    ds.SeriesInstanceUID = spec.series_uid
    ds.FrameOfReferenceUID = spec.frame_of_reference_uid
    ds.StudyID = ""
    ds.SeriesNumber = int(spec.series_number)
    ds.AcquisitionNumber = vol.index + 1
    ds.PositionReferenceIndicator = ""
    ds.ScanningSequence = "EP"
    ds.SequenceVariant = "SK"
    ds.MRAcquisitionType = "2D"
    if spec.tr:
        ds.RepetitionTime = _ds_str(spec.tr * 1000.0)
    if spec.echo_time:
        ds.EchoTime = _ds_str(spec.echo_time * 1000.0)
    if spec.echo_number is not None:
        ds.EchoNumbers = int(spec.echo_number)
    if spec.flip_angle:
        ds.FlipAngle = _ds_str(spec.flip_angle)
    if spec.n_volumes:
        ds.NumberOfTemporalPositions = int(spec.n_volumes)
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    return ds


def _acq_time(vol: Volume, spec: SeriesSpec) -> float:
    if vol.acquisition_time is not None:
        return float(vol.acquisition_time)
    return 12 * 3600.0 + vol.index * (spec.tr or 1.0)


def _set_pixels(ds: Dataset, stored: np.ndarray) -> None:
    ds.PixelRepresentation = 1 if stored.dtype == np.int16 else 0
    ds.PixelData = np.ascontiguousarray(stored).astype(stored.dtype.newbyteorder("<")).tobytes()


def volume_to_datasets(vol: Volume, spec: SeriesSpec | None = None, **kwargs) -> list[Dataset]:
    """The DICOM datasets for one volume (one per slice, or one mosaic/enhanced file).

    Pass a `SeriesSpec` (or its fields as keyword arguments: layout, series_number, manufacturer,
    tr, n_volumes, ...). Write each with `dataset_bytes` / `write_dataset`.
    """
    spec = (spec or SeriesSpec(**kwargs)).resolved(vol)
    if spec.layout == "enhanced":
        return [enhanced_dataset([vol], spec)]
    ni, nj, nk = vol.data.shape
    iop, ps, positions, spacing, step = dicom_geometry(vol.affine, vol.shape)
    stored, slope, inter = quantise(vol.data)
    acq = _acq_time(vol, spec)
    times = vol.slice_times if vol.slice_times is not None and len(vol.slice_times) == nk else None
    normal = step / np.linalg.norm(step) if np.linalg.norm(step) > 0 else np.cross(iop[:3], iop[3:])
    if spec.layout == "mosaic":
        spec.manufacturer = spec.manufacturer if spec.manufacturer.upper().startswith("SIEMENS") else "SIEMENS"
        sop = generate_uid(entropy_srcs=[spec.series_uid, str(vol.index), "mosaic", *_echo_src(spec)])
        ds = _base(spec, MR_IMAGE, sop, vol, acq)
        ds.ImageType = ["ORIGINAL", "PRIMARY", "M", *_echo_src(spec, "TE"), "ND", "MOSAIC"]
        tiles = np.stack([dicom_pixels(stored, k) for k in range(nk)])
        mos = pack(tiles)
        ds.Rows, ds.Columns = mos.shape
        ds.InstanceNumber = vol.index + 1
        ds.ImageOrientationPatient = [_ds_str(x) for x in iop]
        ds.ImagePositionPatient = [_ds_str(x) for x in mosaic_ipp(positions[0], iop, ps, mos.shape, tiles.shape[1:])]
        ds.PixelSpacing = [_ds_str(ps[0]), _ds_str(ps[1])]
        ds.SliceThickness = _ds_str(spacing)
        ds.SpacingBetweenSlices = _ds_str(spacing)
        ds.SliceLocation = _ds_str(float(positions[0] @ normal))
        if slope != 1.0 or inter != 0.0:
            ds.RescaleSlope, ds.RescaleIntercept = _ds_str(slope), _ds_str(inter)
        ref_ms = [t * 1000.0 for t in times] if times is not None else [0.0] * nk
        csa = write_csa(
            {
                "NumberOfImagesInMosaic": ("US", [nk]),
                "SliceNormalVector": ("FD", list(map(float, normal))),
                "MosaicRefAcqTimes": ("FD", ref_ms),
                "AcquisitionMatrixText": ("SH", [f"{nj}*{ni}"]),
            }
        )
        mr = ds.private_block(0x0019, MR_HEADER_CREATOR, create=True)
        mr.add_new(0x0A, "US", nk)
        mr.add_new(0x29, "FD", ref_ms)
        blk = ds.private_block(0x0029, CSA_CREATOR, create=True)
        blk.add_new(0x08, "CS", "IMAGE NUM 4")
        blk.add_new(0x09, "LO", "20100114")
        blk.add_new(0x10, "OB", csa)
        _set_pixels(ds, mos)
        return [ds]
    out = []
    for k in range(nk):
        sop = generate_uid(entropy_srcs=[spec.series_uid, str(vol.index), str(k), *_echo_src(spec)])
        t = acq + (times[k] if times is not None else 0.0)
        ds = _base(spec, MR_IMAGE, sop, vol, t)
        ds.Rows, ds.Columns = nj, ni
        ds.InstanceNumber = vol.index * nk + k + 1
        ds.TemporalPositionIdentifier = vol.index + 1
        ds.ImagesInAcquisition = nk
        ds.InStackPositionNumber = k + 1
        ds.ImageOrientationPatient = [_ds_str(x) for x in iop]
        ds.ImagePositionPatient = [_ds_str(x) for x in positions[k]]
        ds.PixelSpacing = [_ds_str(ps[0]), _ds_str(ps[1])]
        ds.SliceThickness = _ds_str(spacing)
        ds.SpacingBetweenSlices = _ds_str(spacing)
        ds.SliceLocation = _ds_str(float(positions[k] @ normal))
        if times is not None:
            ds.TriggerTime = _ds_str(times[k] * 1000.0)
        if slope != 1.0 or inter != 0.0:
            ds.RescaleSlope, ds.RescaleIntercept = _ds_str(slope), _ds_str(inter)
            ds.RescaleType = "US"
        _set_pixels(ds, dicom_pixels(stored, k))
        out.append(ds)
    return out


def _echo_src(spec: SeriesSpec, prefix: str = "echo") -> list[str]:
    """[] for a single-echo series, else ["<prefix><n>"] (UID entropy; Siemens ImageType "TE<n>")."""
    return [] if spec.echo_number is None else [f"{prefix}{int(spec.echo_number)}"]


def _item(**kw) -> Dataset:
    d = Dataset()
    for k, v in kw.items():
        setattr(d, k, v)
    return d


def enhanced_dataset(vols: list[Volume], spec: SeriesSpec) -> Dataset:
    """One Enhanced MR Image Storage file holding `vols` (same grid), frames volume-major."""
    v0 = vols[0]
    spec = spec.resolved(v0)
    ni, nj, nk = v0.data.shape
    iop, ps, positions, spacing, step = dicom_geometry(v0.affine, v0.shape)
    acq0 = _acq_time(v0, spec)
    sop = generate_uid(entropy_srcs=[spec.series_uid, ",".join(str(v.index) for v in vols), "enhanced", *_echo_src(spec)])
    ds = _base(spec, ENHANCED_MR, sop, v0, acq0)
    for tag in ("RepetitionTime", "EchoTime", "FlipAngle", "ScanningSequence", "SequenceVariant"):
        if tag in ds:
            delattr(ds, tag)
    ds.ImageType = ["ORIGINAL", "PRIMARY", "FMRI", "NONE"]
    ds.InstanceNumber = v0.index + 1
    ds.AcquisitionDateTime = spec.date + _tm(acq0)
    ds.ContentQualification = "PRODUCT"
    ds.ResonantNucleus = "1H"
    ds.ImagedNucleus = "1H"
    ds.PulseSequenceName = "epi"
    ds.EchoPulseSequence = "GRADIENT"
    ds.Rows, ds.Columns = nj, ni
    ds.NumberOfFrames = nk * len(vols)
    dim_uid = generate_uid(entropy_srcs=[spec.series_uid, "dims"])
    ds.DimensionOrganizationSequence = Sequence([_item(DimensionOrganizationUID=dim_uid)])
    ds.DimensionIndexSequence = Sequence(
        [
            _item(DimensionOrganizationUID=dim_uid, DimensionIndexPointer=0x00209056, FunctionalGroupPointer=0x00209111),
            _item(DimensionOrganizationUID=dim_uid, DimensionIndexPointer=0x00209057, FunctionalGroupPointer=0x00209111),
            _item(DimensionOrganizationUID=dim_uid, DimensionIndexPointer=0x00209128, FunctionalGroupPointer=0x00209111),
        ]
    )
    shared = Dataset()
    shared.PixelMeasuresSequence = Sequence(
        [_item(PixelSpacing=[_ds_str(ps[0]), _ds_str(ps[1])], SliceThickness=_ds_str(spacing), SpacingBetweenSlices=_ds_str(spacing))]
    )
    shared.PlaneOrientationSequence = Sequence([_item(ImageOrientationPatient=[_ds_str(x) for x in iop])])
    timing = Dataset()
    if spec.tr:
        timing.RepetitionTime = _ds_str(spec.tr * 1000.0)
    if spec.flip_angle:
        timing.FlipAngle = _ds_str(spec.flip_angle)
    shared.MRTimingAndRelatedParametersSequence = Sequence([timing])
    if spec.echo_time:
        shared.MREchoSequence = Sequence([_item(EffectiveEchoTime=float(spec.echo_time * 1000.0))])
    per_frame = []
    pixel_chunks = []
    signed = any(float(v.data.min()) < 0 for v in vols)
    for v in vols:
        if v.data.shape != v0.data.shape:
            raise ValueError("volumes in one enhanced file must share a grid")
        _, _, pos_v, _, _ = dicom_geometry(v.affine, v.shape)
        stored, slope, inter = quantise(v.data)
        if signed and stored.dtype == np.uint16:
            stored, slope, inter = _as_int16(v.data)
        acq = _acq_time(v, spec)
        times = v.slice_times if v.slice_times is not None and len(v.slice_times) == nk else None
        for k in range(nk):
            t = acq + (times[k] if times is not None else 0.0)
            fg = Dataset()
            fg.FrameContentSequence = Sequence(
                [
                    _item(
                        FrameAcquisitionDateTime=spec.date + _tm(t),
                        FrameReferenceDateTime=spec.date + _tm(t),
                        StackID="1",
                        InStackPositionNumber=k + 1,
                        TemporalPositionIndex=v.index + 1,
                        DimensionIndexValues=[1, k + 1, v.index + 1],
                    )
                ]
            )
            fg.PlanePositionSequence = Sequence([_item(ImagePositionPatient=[_ds_str(x) for x in pos_v[k]])])
            fg.PixelValueTransformationSequence = Sequence(
                [_item(RescaleIntercept=_ds_str(inter), RescaleSlope=_ds_str(slope), RescaleType="US")]
            )
            per_frame.append(fg)
            pixel_chunks.append(dicom_pixels(stored, k))
    ds.SharedFunctionalGroupsSequence = Sequence([shared])
    ds.PerFrameFunctionalGroupsSequence = Sequence(per_frame)
    allpix = np.stack(pixel_chunks)
    if signed:
        allpix = allpix.astype(np.int16)
    _set_pixels(ds, allpix)
    return ds


def _as_int16(data: np.ndarray) -> tuple[np.ndarray, float, float]:
    f = np.nan_to_num(np.asarray(data, np.float64))
    m = float(np.abs(f).max()) or 1.0
    if np.array_equal(f, np.round(f)) and m <= 32767:
        return f.astype(np.int16), 1.0, 0.0
    slope = m / 32000.0
    return np.round(f / slope).astype(np.int16), slope, 0.0


def dataset_bytes(ds: Dataset) -> bytes:
    """The Part-10 file bytes of a dataset (so a replayer can write them in chunks or atomically)."""
    buf = io.BytesIO()
    _dcmwrite(buf, ds)
    return buf.getvalue()


def _dcmwrite(target, ds: Dataset) -> None:
    try:
        pydicom.dcmwrite(target, ds, enforce_file_format=True)
    except TypeError:  # pydicom < 3
        pydicom.dcmwrite(target, ds, write_like_original=False)


def file_name(ds: Dataset, layout: str) -> str:
    """Scanner-like file name: Siemens RT export style for mosaics, else series_volume[_slice]."""
    series = int(ds.SeriesNumber)
    echo = f"_e{int(ds.EchoNumbers)}" if "EchoNumbers" in ds else ""
    if layout == "mosaic":
        return f"001_{series:06d}_{int(ds.InstanceNumber):06d}{echo}.dcm"
    if layout == "enhanced":
        return f"{series:03d}_{int(ds.InstanceNumber):06d}{echo}.dcm"
    return f"{series:03d}_{int(ds.TemporalPositionIdentifier):06d}_{int(ds.InStackPositionNumber):03d}{echo}.dcm"


def write_dataset(ds: Dataset, path: str | os.PathLike, *, atomic: bool = True) -> Path:
    """Write one dataset; with atomic=True via a temporary name and rename (no half files seen)."""
    path = Path(path)
    if not atomic:
        _dcmwrite(str(path), ds)
        return path
    tmp = path.with_name("." + path.name + ".part")
    with open(tmp, "wb") as fh:
        fh.write(dataset_bytes(ds))
    os.replace(tmp, path)
    return path


def write_series(
    volumes: list[Volume],
    out_dir: str | os.PathLike,
    *,
    layout: str = "slice",
    series_number: int = 1,
    manufacturer: str = "SIEMENS",
    tr: float | None = None,
    series_description: str = "decnef replay",
    volumes_per_file: int = 1,
    spec: SeriesSpec | None = None,
) -> list[Path]:
    """Write `volumes` as one DICOM series into `out_dir` (created); returns the file paths."""
    if not volumes:
        return []
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    spec = spec or SeriesSpec(
        layout=layout,
        series_number=series_number,
        series_description=series_description,
        manufacturer=manufacturer,
        tr=tr,
        n_volumes=len(volumes),
    )
    spec = spec.resolved(volumes[0])
    paths: list[Path] = []
    if spec.layout == "enhanced" and volumes_per_file > 1:
        for i in range(0, len(volumes), volumes_per_file):
            ds = enhanced_dataset(volumes[i : i + volumes_per_file], spec)
            paths.append(write_dataset(ds, out / file_name(ds, "enhanced"), atomic=False))
        return paths
    for vol in volumes:
        for ds in volume_to_datasets(vol, spec):
            paths.append(write_dataset(ds, out / file_name(ds, spec.layout), atomic=False))
    return paths
