"""parse_file: one DICOM file -> `DicomPart` (frames + series facts), fast.

This is on the real-time hot path, so the file is read once into memory, parsed by pydicom
without pixel conversion, and uncompressed pixel data is viewed with numpy.frombuffer (one copy,
into float32 with the vendor scaling). A file still being written shows up as a missing or short
PixelData element (pydicom stops quietly at the end of the bytes it has), or a short file meta:
that raises `IncompleteFile` so a watcher retries; anything that is not usable MR image data
raises `DicomError`. Both name the file in one line.
"""

from __future__ import annotations

import io
import os
import struct

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError

from runtime.dicom import mosaic as _mosaic
from runtime.dicom import scaling, slices
from runtime.dicom.elements import value as _value
from runtime.dicom.elements import values as _values
from runtime.dicom.enhanced import ECHO_TIMES_KEY, enhanced_frames, tm_seconds
from runtime.dicom.part import DicomPart, Frame
from runtime.errors import DicomError, IncompleteFile

MR_IMAGE = "1.2.840.10008.5.1.4.1.1.4"
ENHANCED_MR = "1.2.840.10008.5.1.4.1.1.4.1"
LEGACY_ENHANCED_MR = "1.2.840.10008.5.1.4.1.1.4.4"
USABLE_CLASSES = {MR_IMAGE, ENHANCED_MR, LEGACY_ENHANCED_MR}
UNCOMPRESSED = {"1.2.840.10008.1.2", "1.2.840.10008.1.2.1"}

# Header facts copied into Volume.meta / sidecars. Never anything that identifies a person.
_META_TAGS: dict[str, tuple[int, int]] = {
    "EchoTime": (0x0018, 0x0081),
    "FlipAngle": (0x0018, 0x1314),
    "MagneticFieldStrength": (0x0018, 0x0087),
    "ImagingFrequency": (0x0018, 0x0084),
    "ManufacturersModelName": (0x0008, 0x1090),
    "SoftwareVersions": (0x0018, 0x1020),
    "ProtocolName": (0x0018, 0x1030),
    "MRAcquisitionType": (0x0018, 0x0023),
    "ScanningSequence": (0x0018, 0x0020),
    "SequenceVariant": (0x0018, 0x0021),
    "SequenceName": (0x0018, 0x0024),
    "SliceThickness": (0x0018, 0x0050),
    "SpacingBetweenSlices": (0x0018, 0x0088),
    "PixelBandwidth": (0x0018, 0x0095),
    "PatientPosition": (0x0018, 0x5100),
    "ImageType": (0x0008, 0x0008),
}
_SECONDS = {"EchoTime"}  # stored in ms in DICOM, seconds in BIDS sidecars


def _v(ds: Dataset, tag):
    return _value(ds, tag)


def _float(ds: Dataset, tag) -> float | None:
    v = _v(ds, tag)
    if v is None or v == "":
        return None
    try:
        return float(v[0] if isinstance(v, list | tuple | pydicom.multival.MultiValue) else v)
    except (TypeError, ValueError):
        return None


def _int(ds: Dataset, tag) -> int | None:
    f = _float(ds, tag)
    return None if f is None else int(f)


def _str(ds: Dataset, tag) -> str:
    v = _v(ds, tag)
    return "" if v is None else str(v).strip()


def _meta(ds: Dataset) -> dict:
    out: dict = {}
    for key, tag in _META_TAGS.items():
        v = _values(ds, tag) if key == "ImageType" else _v(ds, tag)
        if v is None or v == "" or v == []:
            continue
        if key == "ImageType":
            out[key] = [str(x) for x in v]
            continue
        if isinstance(v, pydicom.valuerep.DSfloat | pydicom.valuerep.IS | int | float):
            v = float(v)
            if key in _SECONDS:
                v = round(v / 1000.0, 9)  # 38.8 ms -> 0.0388 s as written, not 0.038799999999999994
        elif isinstance(v, list | tuple | pydicom.multival.MultiValue):
            v = "\\".join(str(x) for x in v)
        else:
            v = str(v).strip()
        out[key] = v
    return out


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())


def _read(path: str) -> Dataset:
    try:
        with open(path, "rb") as fh:
            data = fh.read()
    except FileNotFoundError as exc:
        raise DicomError(f"{path}: no such file") from exc
    except OSError as exc:
        raise DicomError(f"{path}: cannot read ({exc.strerror or exc})") from exc
    if not data:
        raise IncompleteFile(f"{path}: empty file (still being written?)")
    if len(data) < 132:
        if not data.strip(b"\x00"):
            raise IncompleteFile(f"{path}: only {len(data)} bytes so far (still being written?)")
        raise DicomError(f"{path}: not a DICOM file (no 'DICM' marker)")
    if data[128:132] != b"DICM":
        raise DicomError(f"{path}: not a DICOM file (no 'DICM' marker)")
    try:
        ds = pydicom.dcmread(io.BytesIO(data))
    except (EOFError, struct.error) as exc:
        raise IncompleteFile(f"{path}: truncated DICOM ({_one_line(exc)})") from exc
    except InvalidDicomError as exc:
        raise IncompleteFile(f"{path}: truncated DICOM file meta ({_one_line(exc)})") from exc
    except Exception as exc:  # pydicom raises many types on corrupt data
        raise DicomError(f"{path}: unreadable DICOM ({type(exc).__name__}: {_one_line(exc)})") from exc
    return ds


def _raw_pixels(ds: Dataset, path: str, n_frames: int, rows: int, cols: int) -> np.ndarray:
    pd = ds.get((0x7FE0, 0x0010))
    if pd is None:
        raise IncompleteFile(f"{path}: no pixel data yet (file still being written?)")
    if (_int(ds, (0x0028, 0x0002)) or 1) != 1:
        raise DicomError(f"{path}: colour image (SamplesPerPixel != 1) is not usable MR data")
    bits = _int(ds, (0x0028, 0x0100)) or 16
    signed = (_int(ds, (0x0028, 0x0103)) or 0) == 1
    ts = str(getattr(ds.file_meta, "TransferSyntaxUID", "1.2.840.10008.1.2.1"))
    n = n_frames * rows * cols
    if ts in UNCOMPRESSED and bits in (8, 16, 32):
        buf = pd.value
        need = n * bits // 8
        if buf is None or len(buf) < need:
            got = 0 if buf is None else len(buf)
            raise IncompleteFile(f"{path}: pixel data has {got} of {need} bytes (file still being written?)")
        arr = np.frombuffer(buf, dtype=f"<{'i' if signed else 'u'}{bits // 8}", count=n)
        stored = _int(ds, (0x0028, 0x0101)) or bits
        if signed and stored < bits:
            shift = bits - stored
            arr = (arr << shift) >> shift
        return arr.reshape(n_frames, rows, cols)
    try:
        arr = ds.pixel_array
    except Exception as exc:
        raise DicomError(f"{path}: cannot decode pixel data ({type(exc).__name__}: {_one_line(exc)})") from exc
    return np.asarray(arr).reshape(n_frames, rows, cols)


def parse_file(path: str | os.PathLike) -> DicomPart:
    """Parse one file. Raises IncompleteFile (retry later) or DicomError (give up)."""
    p = os.fspath(path)
    ds = _read(p)
    sop_class = _str(ds, (0x0008, 0x0016)) or str(getattr(ds.file_meta, "MediaStorageSOPClassUID", ""))
    if sop_class not in USABLE_CLASSES:
        if not sop_class:
            raise IncompleteFile(f"{p}: no SOP class yet (file still being written?)")
        name = getattr(pydicom.uid.UID(sop_class), "name", sop_class)
        raise DicomError(f"{p}: not usable MR image data (SOP class {name})")
    rows = _int(ds, (0x0028, 0x0010))
    cols = _int(ds, (0x0028, 0x0011))
    if not rows or not cols:
        raise IncompleteFile(f"{p}: no image dimensions yet (file still being written?)")
    manufacturer = _str(ds, (0x0008, 0x0070))
    n_frames = _int(ds, (0x0028, 0x0008)) or 1
    raw = _raw_pixels(ds, p, n_frames, rows, cols)

    part = DicomPart(
        path=p,
        sop_uid=_str(ds, (0x0008, 0x0018)),
        series_uid=_str(ds, (0x0020, 0x000E)),
        series_number=_int(ds, (0x0020, 0x0011)),
        series_description=_str(ds, (0x0008, 0x103E)),
        layout="slice",
        volume_indices=[],
        slices_per_volume=None,
        acquisition_time=tm_seconds(_v(ds, (0x0008, 0x0032))),
        manufacturer=manufacturer,
        tr=None,
    )
    part.meta = _meta(ds)
    tr = _float(ds, (0x0018, 0x0080))
    part.tr = tr / 1000.0 if tr else None

    if sop_class != MR_IMAGE or n_frames > 1 and _v(ds, (0x5200, 0x9230)) is not None:
        _fill_enhanced(part, ds, raw)
    else:
        _fill_classic(part, ds, raw[0])
    if part.acquisition_time is None:
        times = [f.acq_time for f in part.frames if f.acq_time is not None]
        part.acquisition_time = min(times) if times else None
    return part


def _geometry(ds: Dataset, path: str) -> tuple[np.ndarray, np.ndarray, tuple[float, float], float | None]:
    iop = _values(ds, (0x0020, 0x0037))
    ipp = _values(ds, (0x0020, 0x0032))
    ps = _values(ds, (0x0028, 0x0030))
    if not iop or not ipp or not ps:
        raise DicomError(f"{path}: no ImageOrientationPatient/ImagePositionPatient/PixelSpacing")
    sbs = _float(ds, (0x0018, 0x0088))
    st = _float(ds, (0x0018, 0x0050))
    return (
        np.asarray([float(x) for x in iop], float),
        np.asarray([float(x) for x in ipp], float),
        (float(ps[0]), float(ps[1])),
        sbs if sbs else st,
    )


def _scaled(raw: np.ndarray, a: float, b: float) -> np.ndarray:
    px = raw.astype(np.float32)
    if a != 1.0:
        px *= np.float32(a)
    if b != 0.0:
        px += np.float32(b)
    return px


def _fill_classic(part: DicomPart, ds: Dataset, raw: np.ndarray) -> None:
    iop, ipp, ps, spacing = _geometry(ds, part.path)
    part.iop, part.pixel_spacing, part.slice_spacing = iop, ps, spacing
    (a, b), info = scaling.classic_params(ds, part.manufacturer)
    part.meta.update(info)
    info_m = _mosaic.mosaic_info(ds) if part.manufacturer.upper().startswith("SIEMENS") else None
    inst = _int(ds, (0x0020, 0x0013))
    acq = _int(ds, (0x0020, 0x0012))
    echo = echo_number(ds)
    part.echoes = (echo,)
    te = part.meta.get("EchoTime")
    if isinstance(te, float):
        part.echo_times = {echo: te}
    if info_m is not None:
        n, normal, times_ms = info_m
        part.layout = "mosaic"
        if acq and (echo > 1 or _multi_echo_image_type(part.meta.get("ImageType"))):
            # multi-echo mosaics number instances over every echo's image (CMRR: 1, 2, 3 ... for
            # echo 1, 2, 3 of volume 0); AcquisitionNumber is the volume
            vol = acq - 1
        else:
            vol = (inst if inst is not None else acq or 1) - 1
        px = _mosaic.unpack(raw, n, np.float32)  # one copy: tiles reordered into float32
        if a != 1.0:
            px *= np.float32(a)
        if b != 0.0:
            px += np.float32(b)
        first = _mosaic.first_slice_position(ipp, iop, ps, raw.shape, px.shape[1:])
        if normal is None:
            from runtime.dicom.affine import slice_normal

            normal = slice_normal(iop)
        step = normal * (spacing or 1.0)
        part.frames = [
            Frame(vol, px[s], first + s * step, None if times_ms is None else times_ms[s] / 1000.0, part.acquisition_time, echo)
            for s in range(n)
        ]
        part.volume_indices = [vol]
        part.slices_per_volume = n
        return
    part.layout = "slice"
    n = slices.slices_per_volume(ds, part.manufacturer)
    vol = slices.volume_index(ds, part.manufacturer, n, part.path)
    part.slices_per_volume = n
    part.volume_indices = [vol]
    part.frames = [Frame(vol, _scaled(raw, a, b), ipp, _slice_time(ds, part), part.acquisition_time, echo)]


def _multi_echo_image_type(image_type) -> bool:
    """Siemens marks each echo of a multi-echo series in ImageType ("TE1", "TE2", ...), echo 1
    included: the only sign, in an echo-1 file, that other echoes exist."""
    return bool(image_type) and any(len(t) > 2 and t[:2] == "TE" and t[2:].isdigit() for t in image_type)


def echo_number(ds: Dataset) -> int:
    """EchoNumbers (0018,0086) of a classic file, 1 when absent or not a positive number.

    Why: multi-echo EPI (Siemens mosaic, GE/Philips per-slice) writes one file per echo with the
    same volume index; only the echo number tells them apart."""
    e = _int(ds, (0x0018, 0x0086))
    return e if e is not None and e >= 1 else 1


def _slice_time(ds: Dataset, part: DicomPart) -> float | None:
    """Per-slice time for per-slice vendors: GE RTIA timer, else TriggerTime (ms), else None.

    All-equal times (Philips writes TriggerTime 0 everywhere) are dropped by the assembler."""
    if slices.is_ge(part.manufacturer):
        rtia = _float(ds, (0x0021, 0x105E))
        if rtia is not None:
            # Exactly 0 means "not set" (all zero on DV26; scattered zeros in the first volume
            # of DV28 epiRT). Units (s or 100 us) are fixed up per volume by the assembler.
            return rtia if rtia != 0.0 else None
    tt = _float(ds, (0x0018, 0x1060))
    return tt / 1000.0 if tt is not None else None


def _fill_enhanced(part: DicomPart, ds: Dataset, raw: np.ndarray) -> None:
    frames, iop, ps, spacing, tr, meta = enhanced_frames(ds, raw, part.manufacturer, part.path)
    part.layout = "enhanced"
    part.frames = frames
    part.echo_times = meta.pop(ECHO_TIMES_KEY, {})
    part.echoes = tuple(sorted({f.echo for f in frames})) or (1,)
    part.iop, part.pixel_spacing, part.slice_spacing = iop, ps, spacing
    if tr:
        part.tr = tr
    part.meta.update(meta)
    vols = sorted({f.volume for f in frames})
    part.volume_indices = vols
    groups = len(vols) * len(part.echoes)  # one group of slices per (volume, echo)
    part.slices_per_volume = len(frames) // groups if vols and len(frames) % groups == 0 else None
    times = [f.acq_time for f in frames if f.acq_time is not None]
    if times:
        part.acquisition_time = min(times)
