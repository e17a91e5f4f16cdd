"""Enhanced (multi-frame) MR: frames -> `Frame`s grouped by temporal index.

Siemens XA writes one file per volume; Philips may put the whole series in one file, frames in
any order (the dicom2nifti sample is slice-major with no DimensionIndexSequence, which is why
nibabel's MultiframeWrapper fails on it). We never rely on DimensionIndexSequence: each frame's
volume is its TemporalPositionIndex (FrameContentSequence), its place in the volume is its
PlanePositionSequence position projected on the slice normal (sorted later by the assembler).
Without TemporalPositionIndex, a frame's volume is how many earlier frames share its position
(+ InstanceNumber - 1 for a one-volume-per-file series).
"""

from __future__ import annotations

import numpy as np
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from runtime.dicom import scaling
from runtime.dicom.elements import value as _fast_value
from runtime.dicom.part import Frame
from runtime.errors import DicomError

PER_FRAME = (0x5200, 0x9230)
SHARED = (0x5200, 0x9229)
FRAME_CONTENT = (0x0020, 0x9111)
PLANE_POSITION = (0x0020, 0x9113)
PLANE_ORIENTATION = (0x0020, 0x9116)
PIXEL_MEASURES = (0x0028, 0x9110)
MR_TIMING = (0x0018, 0x9112)
MR_ECHO = (0x0018, 0x9114)
FRAME_TYPE = (0x0018, 0x9226)
_MR_ECHO_KEY = 0x00189114
EFFECTIVE_ECHO_TIME = (0x0018, 0x9082)
PHILIPS_PER_FRAME = (0x2005, 0x140F)
"""Philips private per-frame item holding classic tags (EchoNumbers among them)."""
ECHO_NUMBERS = (0x0018, 0x0086)
ECHO_TIMES_KEY = "_echo_times"
"""meta key under which `enhanced_frames` returns {echo number: echo time (s)} (popped by the parser)."""


def item(ds: Dataset | None, tag) -> Dataset | None:
    if ds is None:
        return None
    el = ds.get(tag)
    if el is None:
        return None
    seq = el.value
    return seq[0] if isinstance(seq, Sequence) and len(seq) else None


def _value(ds: Dataset | None, tag):
    if ds is None:
        return None
    el = ds.get(tag)
    return None if el is None else el.value


def datetime_seconds(dt) -> float | None:
    """'YYYYMMDDHHMMSS.ffffff' -> seconds since midnight."""
    if dt is None:
        return None
    s = str(dt).strip()
    if len(s) < 10:
        return None
    t = s[8:]
    for sep in ("+", "-"):
        if sep in t:
            t = t.split(sep, 1)[0]
    return tm_seconds(t)


def tm_seconds(tm) -> float | None:
    """DICOM TM 'HHMMSS.ffffff' (or 'HH:MM:SS') -> seconds since midnight."""
    if tm is None:
        return None
    s = str(tm).strip().replace(":", "")
    if not s:
        return None
    try:
        hh = int(s[0:2])
        mm = int(s[2:4]) if len(s) >= 4 else 0
        ss = float(s[4:]) if len(s) > 4 else 0.0
    except ValueError:
        return None
    return hh * 3600.0 + mm * 60.0 + ss


def _siemens_time_after_start(fg: Dataset) -> float | None:
    """XA per-frame TimeAfterStart (0021,1104) in s, in the private item (0021,11FE) of block
    "SIEMENS MR SDI 02". dcm2niix takes slice timing from it; FrameAcquisitionDateTime is
    rounded differently (up to 2.5 ms off)."""
    creator = fg.get((0x0021, 0x0011))
    if creator is None or str(creator.value).strip() != "SIEMENS MR SDI 02":
        return None
    it = item(fg, (0x0021, 0x11FE))
    v = _value(it, (0x0021, 0x1104))
    try:
        return float(v) if v not in (None, "") else None
    except (TypeError, ValueError):
        return None


def enhanced_frames(ds: Dataset, raw: np.ndarray, manufacturer: str, path: str):
    """Split an enhanced file into frames.

    Returns (frames, iop, pixel_spacing, slice_spacing, tr_seconds, meta).
    raw: (n_frames, rows, cols) stored values.
    """
    per_frame = _value(ds, PER_FRAME)
    if not per_frame:
        raise DicomError(f"{path}: enhanced DICOM without PerFrameFunctionalGroupsSequence")
    shared = item(ds, SHARED)
    if len(per_frame) != raw.shape[0]:
        raise DicomError(f"{path}: {len(per_frame)} per-frame groups but {raw.shape[0]} frames of pixel data")
    siemens = manufacturer.upper().startswith("SIEMENS")

    orient = item(shared, PLANE_ORIENTATION)
    measures = item(shared, PIXEL_MEASURES)
    iop = None
    pixel_spacing = None
    spacing = None
    keep_magnitude_only = False
    components = []
    for fg in per_frame:
        ft = item(fg, FRAME_TYPE) or item(shared, FRAME_TYPE)
        components.append(str(_value(ft, (0x0008, 0x9208)) or "").upper())
    if len(set(components)) > 1 and "MAGNITUDE" in components:
        keep_magnitude_only = True

    inst = _value(ds, (0x0020, 0x0013))
    base_volume = int(inst) - 1 if inst not in (None, "") else 0
    seen_positions: dict[tuple, int] = {}
    scale_info: dict = {}
    frames: list[Frame] = []
    tes: list[float | None] = []
    """Per kept frame: EffectiveEchoTime (ms) from its MR Echo item (per-frame, else shared)."""
    shared_te = _te(item(shared, MR_ECHO))
    te_cache: dict[bytes, float | None] = {}
    first_kept: Dataset | None = None
    for f, fg in enumerate(per_frame):
        if keep_magnitude_only and components[f] != "MAGNITUDE":
            continue
        fc = item(fg, FRAME_CONTENT)
        pp = item(fg, PLANE_POSITION) or item(shared, PLANE_POSITION)
        ipp = _value(pp, (0x0020, 0x0032))
        if ipp is None:
            raise DicomError(f"{path}: frame {f + 1} has no ImagePositionPatient")
        if iop is None:
            po = item(fg, PLANE_ORIENTATION) or orient
            v = _value(po, (0x0020, 0x0037))
            if v is None:
                raise DicomError(f"{path}: no ImageOrientationPatient")
            iop = np.asarray([float(x) for x in v], float)
            pm = item(fg, PIXEL_MEASURES) or measures
            ps = _value(pm, (0x0028, 0x0030))
            if ps is None:
                raise DicomError(f"{path}: no PixelSpacing")
            pixel_spacing = (float(ps[0]), float(ps[1]))
            sbs = _value(pm, (0x0018, 0x0088)) or _value(ds, (0x0018, 0x0088))
            st = _value(pm, (0x0018, 0x0050))
            spacing = float(sbs) if sbs not in (None, "") else (float(st) if st not in (None, "") else None)
        if first_kept is None:
            first_kept = fg
        te = _frame_te(fg, te_cache, shared_te)
        tes.append(te)
        pos = np.asarray([float(x) for x in ipp], float)
        tpi = _value(fc, (0x0020, 0x9128))
        if tpi is not None:
            vol = int(tpi) - 1
        else:
            key = (te, *np.round(pos, 3))  # echoes of one slice share its position, not its volume
            vol = base_volume + seen_positions.get(key, 0)
            seen_positions[key] = seen_positions.get(key, 0) + 1
        (a, b), info = scaling.frame_params(fg, shared, manufacturer)
        if info and not scale_info:
            scale_info = info
        px = raw[f].astype(np.float32)
        if a != 1.0:
            px *= np.float32(a)
        if b != 0.0:
            px += np.float32(b)
        t = datetime_seconds(_value(fc, (0x0018, 0x9074)) or _value(fc, (0x0018, 0x9151)))
        st = (_siemens_time_after_start(fg) or t) if siemens else None
        frames.append(Frame(vol, px, pos, slice_time=st, acq_time=t))

    timing = item(shared, MR_TIMING)
    tr = _value(timing, (0x0018, 0x0080)) or _value(ds, (0x0018, 0x0080))
    tr_s = float(tr) / 1000.0 if tr not in (None, "") else None
    meta: dict = dict(scale_info)
    echo_times = _number_echoes(frames, tes, first_kept, ds)
    if echo_times:
        meta["EchoTime"] = echo_times[min(echo_times)]
    meta[ECHO_TIMES_KEY] = echo_times
    fa = _value(timing, (0x0018, 0x1314))
    if fa not in (None, ""):
        meta["FlipAngle"] = float(fa)
    return frames, iop, pixel_spacing, spacing, tr_s, meta


def _frame_te(fg: Dataset, cache: dict[bytes, float | None], shared_te: float | None) -> float | None:
    """The frame's EffectiveEchoTime (ms): its own MR Echo item, else the shared one.

    Why the cache: converting a frame's MR Echo sequence costs ~35 us, over a millisecond for a
    whole volume on the hot path; the undecoded bytes of the item are the same for every frame
    of one echo, so each distinct item is decoded once."""
    el = fg._dict.get(_MR_ECHO_KEY)
    if el is None:
        return shared_te
    v = el.value
    if isinstance(v, bytes):  # still undecoded
        if v not in cache:
            cache[v] = _te(item(fg, MR_ECHO))
        return cache[v]
    if isinstance(v, Sequence):  # pydicom decodes most sequences on read: read the number raw
        if not len(v):
            return shared_te
        te = _fast_value(v[0], EFFECTIVE_ECHO_TIME)
        try:
            return float(te) if te not in (None, "") else None
        except (TypeError, ValueError):
            return None
    return _te(item(fg, MR_ECHO))


def _te(me: Dataset | None) -> float | None:
    te = _value(me, EFFECTIVE_ECHO_TIME)
    try:
        return float(te) if te not in (None, "") else None
    except (TypeError, ValueError):
        return None


def _declared_echo(fg: Dataset | None, ds: Dataset) -> int:
    """Echo number a one-echo-time file declares: Philips per-frame private EchoNumbers, else the
    top-level EchoNumbers, else 1."""
    for holder in (item(fg, PHILIPS_PER_FRAME) if fg is not None else None, ds):
        try:
            v = _value(holder, ECHO_NUMBERS)
            e = int(v[0] if isinstance(v, list | tuple) or type(v).__name__ == "MultiValue" else v) if v not in (None, "") else None
        except (TypeError, ValueError, IndexError):
            e = None
        if e is not None and e >= 1:
            return e
    return 1


def _number_echoes(frames: list[Frame], tes: list[float | None], first: Dataset | None, ds: Dataset) -> dict[int, float]:
    """Give every frame its echo number; returns {echo number: echo time (s)}.

    Several distinct echo times in one file: echo n is the n-th shortest (the order dcm2niix and
    the scanners number echoes in). One echo time (or none): the echo number the file declares."""
    distinct = sorted({t for t in tes if t is not None})
    if len(distinct) > 1:
        rank = {t: i + 1 for i, t in enumerate(distinct)}
        for fr, t in zip(frames, tes, strict=True):
            fr.echo = rank.get(t, 1) if t is not None else 1
        return {rank[t]: round(t / 1000.0, 9) for t in distinct}
    e = _declared_echo(first, ds)
    if e != 1:
        for fr in frames:
            fr.echo = e
    return {e: round(distinct[0] / 1000.0, 9)} if distinct else {}
