"""4D NIfTI + JSON sidecar in and out (what `decnef convert` and session outputs write).

The NIfTI is float32 with the first volume's voxel-to-RAS affine as both sform and qform
(code 1, scanner), TR in pixdim[4] and xyzt units mm/sec, like dcm2niix. The sidecar carries
BIDS-style acquisition facts and never anything that identifies a person (`sidecar_for`
only copies from a whitelist).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import nibabel as nib
import numpy as np

from runtime.volume import Volume

# Non-identifying keys that may be copied from Volume.meta into a sidecar.
SIDECAR_KEYS = (
    "EchoTime",
    "FlipAngle",
    "MagneticFieldStrength",
    "ImagingFrequency",
    "ManufacturersModelName",
    "SoftwareVersions",
    "ProtocolName",
    "MRAcquisitionType",
    "ScanningSequence",
    "SequenceVariant",
    "SequenceName",
    "SliceThickness",
    "SpacingBetweenSlices",
    "PixelBandwidth",
    "PatientPosition",
    "ImageType",
    "PhilipsRescaleSlope",
    "PhilipsRescaleIntercept",
    "PhilipsScaleSlope",
    "UsePhilipsFloatNotDisplayScaling",
)
# Never written, whatever a caller passes in `sidecar`.
FORBIDDEN_KEYS = frozenset(
    {
        "PatientName",
        "PatientID",
        "PatientBirthDate",
        "PatientSex",
        "PatientAge",
        "PatientWeight",
        "PatientSize",
        "PatientAddress",
        "OtherPatientIDs",
        "OtherPatientNames",
        "PatientBirthTime",
        "AccessionNumber",
        "ReferringPhysicianName",
        "PerformingPhysicianName",
        "OperatorsName",
        "InstitutionName",
        "InstitutionAddress",
        "DeviceSerialNumber",
        "StationName",
        "StudyDate",
        "SeriesDate",
        "AcquisitionDate",
        "ContentDate",
    }
)


def _vendor(manufacturer: str) -> str:
    m = manufacturer.upper()
    if m.startswith("SIEMENS"):
        return "Siemens"
    if m.startswith("PHILIPS"):
        return "Philips"
    if m.startswith("GE") or "GE MEDICAL" in m:
        return "GE"
    return manufacturer.strip()


def sidecar_for(volumes: list[Volume]) -> dict:
    """BIDS-style sidecar facts of a series (non-identifying only)."""
    if not volumes:
        return {}
    v0 = volumes[0]
    out: dict = {}
    if v0.manufacturer:
        out["Manufacturer"] = _vendor(v0.manufacturer)
    for k in SIDECAR_KEYS:
        if k in v0.meta and v0.meta[k] not in (None, ""):
            out[k] = v0.meta[k]
    if v0.series_description:
        out["SeriesDescription"] = v0.series_description
    if v0.series_number is not None:
        out["SeriesNumber"] = int(v0.series_number)
    if v0.tr is not None:
        out["RepetitionTime"] = round(float(v0.tr), 6)  # float32 headers add noise below 1 µs
    if v0.slice_times is not None:
        out["SliceTiming"] = [round(float(t), 6) for t in v0.slice_times]
    out["NumberOfVolumes"] = len(volumes)
    idx = [v.index for v in volumes]
    expected = list(range(idx[0], idx[0] + len(idx)))
    if idx != expected:
        out["VolumeIndices"] = idx  # gaps or reordering: say which volumes these are
    return out


def _clean(sidecar: dict) -> dict:
    return {k: v for k, v in sidecar.items() if k not in FORBIDDEN_KEYS}


def sidecar_path(path: str | os.PathLike) -> Path:
    p = Path(path)
    name = p.name
    for ext in (".nii.gz", ".nii"):
        if name.endswith(ext):
            return p.with_name(name[: -len(ext)] + ".json")
    return p.with_name(name + ".json")


def save_4d(volumes: list[Volume], path: str | os.PathLike, sidecar: dict | None = None) -> None:
    """Write volumes as one 4D float32 NIfTI plus a JSON sidecar beside it."""
    if not volumes:
        raise ValueError("save_4d: no volumes")
    shape = volumes[0].shape
    data = np.empty(shape + (len(volumes),), dtype=np.float32)
    for t, v in enumerate(volumes):
        if v.shape != shape:
            raise ValueError(f"save_4d: volume {v.index} has shape {v.shape}, expected {shape}")
        data[..., t] = v.data
    affine = np.asarray(volumes[0].affine, float)
    img = nib.Nifti1Image(data, affine)
    hdr = img.header
    hdr.set_xyzt_units("mm", "sec")
    tr = volumes[0].tr
    zooms = tuple(float(z) for z in volumes[0].zooms) + (float(tr) if tr else 1.0,)
    hdr.set_zooms(zooms)
    img.set_sform(affine, code=1)
    img.set_qform(affine, code=1)
    hdr.set_data_dtype(np.float32)
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    nib.save(img, str(p))
    meta = sidecar_for(volumes) if sidecar is None else dict(sidecar)
    with open(sidecar_path(p), "w") as fh:
        json.dump(_clean(meta), fh, indent=2)
        fh.write("\n")


def load_4d(path: str | os.PathLike) -> list[Volume]:
    """Volumes (index 0..N-1) from a 3D/4D NIfTI; tr from pixdim[4] (or the sidecar)."""
    img = nib.load(str(path))
    data = img.get_fdata(dtype=np.float32)
    if data.ndim == 3:
        data = data[..., None]
    if data.ndim != 4:
        raise ValueError(f"{path}: expected a 3D or 4D NIfTI, got {data.ndim} dimensions")
    affine = img.affine
    zooms = img.header.get_zooms()
    tr = float(zooms[3]) if len(zooms) > 3 and zooms[3] > 0 else None
    units = img.header.get_xyzt_units()[1]
    if tr is not None and units == "msec":
        tr /= 1000.0
    side: dict = {}
    sp = sidecar_path(path)
    if sp.exists():
        try:
            side = json.loads(sp.read_text())
        except (OSError, ValueError):
            side = {}
    if side.get("RepetitionTime"):
        tr = float(side["RepetitionTime"])
    st = side.get("SliceTiming")
    slice_times = tuple(float(t) for t in st) if isinstance(st, list) and len(st) == data.shape[2] else None
    meta = {k: side[k] for k in SIDECAR_KEYS if k in side}
    name = os.path.basename(str(path))
    vols = []
    for t in range(data.shape[3]):
        vols.append(
            Volume(
                data=np.ascontiguousarray(data[..., t]),
                affine=np.array(affine, float),
                index=t,
                tr=tr,
                slice_times=slice_times,
                series_number=side.get("SeriesNumber"),
                series_description=side.get("SeriesDescription", ""),
                manufacturer=side.get("Manufacturer", ""),
                source=name,
                meta=dict(meta),
            )
        )
    return vols
