"""Which volume a single-slice file belongs to, and how many slices a volume has.

Per-slice vendors put one 2D image in each file; the volume (temporal) index has to come from
the header, in this order of trust:

1. TemporalPositionIdentifier (0020,0100), 1-based (Philips classic; also what our writer puts).
2. GE: floor((InstanceNumber - 1) / ImagesInAcquisition) (GE has no TemporalPositionIdentifier;
   pyneal / METHOD.md §5).
3. AcquisitionNumber - 1 (Siemens classic per-slice export increments it per volume).

Slices per volume: ImagesInAcquisition (0020,1002), else Philips "Number of Slices MR"
(2001,1018), else unknown (the assembler then learns it from the first volume).
"""

from __future__ import annotations

from pydicom.dataset import Dataset

from runtime.errors import DicomError

PHILIPS_N_SLICES = (0x2001, 0x1018)


def _int(ds: Dataset, key) -> int | None:
    el = ds.get(key)
    if el is None:
        return None
    v = el.value if hasattr(el, "value") else el
    if v is None or v == "":
        return None
    try:
        return int(v)
    except (TypeError, ValueError):
        try:
            return int(float(v))
        except (TypeError, ValueError):
            return None


def slices_per_volume(ds: Dataset, manufacturer: str) -> int | None:
    n = _int(ds, (0x0020, 0x1002))
    if n and n > 0:
        return n
    if manufacturer.upper().startswith("PHILIPS"):
        n = _int(ds, PHILIPS_N_SLICES)
        if n and n > 0:
            return n
    return None


def is_ge(manufacturer: str) -> bool:
    m = manufacturer.upper()
    return m.startswith("GE ") or m == "GE" or "GE MEDICAL" in m


def volume_index(ds: Dataset, manufacturer: str, n_slices: int | None, path: str) -> int:
    tpi = _int(ds, (0x0020, 0x0100))
    if tpi is not None and tpi >= 1:
        return tpi - 1
    inst = _int(ds, (0x0020, 0x0013))
    if is_ge(manufacturer) and inst is not None and n_slices:
        return (inst - 1) // n_slices
    acq = _int(ds, (0x0020, 0x0012))
    if acq is not None and acq >= 1:
        return acq - 1
    if inst is not None and n_slices:
        return (inst - 1) // n_slices
    raise DicomError(f"{path}: cannot tell which volume this slice belongs to (no TemporalPositionIdentifier, AcquisitionNumber or InstanceNumber)")
