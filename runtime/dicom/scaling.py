"""Stored pixel value -> real value, per vendor.

Convention (the same as dcm2niix, applied everywhere: classic and enhanced files):

* Philips, when the private scale slope SS = (2005,100E) is present and non-zero: the
  "floating point" (FP) value, FP = (raw * RS + RI) / (RS * SS), with RS/RI the rescale
  slope/intercept (public (0028,1053)/(0028,1052), else the Philips private copies
  (2005,140A)/(2005,1409)). For enhanced files RS/RI come from the per-frame (or shared)
  PixelValueTransformationSequence and SS from the per-frame private Philips item (2005,140F).
  dcm2niix writes exactly this (raw integers with scl_slope = 1/SS when RI = 0); nibabel's
  `Wrapper` instead returns raw*SS and the "display" value is raw*RS; these differ from FP by a
  constant factor per series, so any of them would do for decoding, but FP is what dcm2niix
  users see, so it is what we use.
* Everyone else (and Philips without SS): raw * RescaleSlope + RescaleIntercept (1 and 0 when
  absent).

Scaling is returned as one linear map value = raw * a + b so the caller can apply it in one
pass while converting to float32.
"""

from __future__ import annotations

from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.sequence import Sequence

PHILIPS_SCALE_SLOPE = (0x2005, 0x100E)
PHILIPS_PRIVATE_RESCALE_SLOPE = (0x2005, 0x140A)
PHILIPS_PRIVATE_RESCALE_INTERCEPT = (0x2005, 0x1409)
PHILIPS_PRIVATE_FRAME_ITEM = (0x2005, 0x140F)
PIXEL_VALUE_TRANSFORMATION = (0x0028, 0x9145)


def _num(ds: Dataset | None, tag, default: float | None = None) -> float | None:
    if ds is None:
        return default
    el = ds.get(tag)
    if el is None:
        return default
    v = el.value
    if isinstance(v, list | tuple | MultiValue):
        v = v[0] if len(v) else None
    if v is None or v == "":
        return default
    try:
        return float(v)
    except (TypeError, ValueError):
        return default


def is_philips(manufacturer: str) -> bool:
    return manufacturer.strip().upper().startswith("PHILIPS")


def linear_map(rs: float | None, ri: float | None, ss: float | None, philips: bool) -> tuple[float, float]:
    """(a, b) such that value = raw * a + b, by the convention in the module docstring."""
    rs = 1.0 if rs is None or rs == 0 else rs
    ri = 0.0 if ri is None else ri
    if philips and ss is not None and ss != 0:
        return 1.0 / ss, ri / (rs * ss)
    return rs, ri


def classic_params(ds: Dataset, manufacturer: str) -> tuple[tuple[float, float], dict]:
    """Scaling of a single-frame file: ((a, b), facts for the sidecar)."""
    philips = is_philips(manufacturer)
    rs = _num(ds, (0x0028, 0x1053))
    ri = _num(ds, (0x0028, 0x1052))
    info: dict = {}
    ss = None
    if philips:
        if rs is None:
            rs = _num(ds, PHILIPS_PRIVATE_RESCALE_SLOPE)
            ri = _num(ds, PHILIPS_PRIVATE_RESCALE_INTERCEPT, ri)
        ss = _num(ds, PHILIPS_SCALE_SLOPE)
        info = _philips_info(rs, ri, ss)
    return linear_map(rs, ri, ss, philips), info


def frame_params(frame: Dataset | None, shared: Dataset | None, manufacturer: str) -> tuple[tuple[float, float], dict]:
    """Scaling of one frame of an enhanced file (per-frame groups override shared groups)."""
    philips = is_philips(manufacturer)
    pvt = _first_item(frame, PIXEL_VALUE_TRANSFORMATION) or _first_item(shared, PIXEL_VALUE_TRANSFORMATION)
    rs = _num(pvt, (0x0028, 0x1053))
    ri = _num(pvt, (0x0028, 0x1052))
    info: dict = {}
    ss = None
    if philips:
        priv = _first_item(frame, PHILIPS_PRIVATE_FRAME_ITEM) or _first_item(shared, PHILIPS_PRIVATE_FRAME_ITEM)
        if rs is None and priv is not None:
            rs = _num(priv, (0x0028, 0x1053))
            ri = _num(priv, (0x0028, 0x1052), ri)
        ss = _num(priv, PHILIPS_SCALE_SLOPE)
        info = _philips_info(rs, ri, ss)
    return linear_map(rs, ri, ss, philips), info


def _philips_info(rs, ri, ss) -> dict:
    if ss is None or ss == 0:
        return {}
    return {
        "PhilipsRescaleSlope": rs if rs is not None else 1.0,
        "PhilipsRescaleIntercept": ri if ri is not None else 0.0,
        "PhilipsScaleSlope": ss,
        "UsePhilipsFloatNotDisplayScaling": 1,
    }


def _first_item(ds: Dataset | None, key) -> Dataset | None:
    if ds is None:
        return None
    el = ds.get(key)
    if el is None:
        return None
    seq = el.value
    return seq[0] if isinstance(seq, Sequence) and len(seq) else None
