"""Fast reads of plain header elements straight from pydicom's raw (not yet converted) elements.

Why: `parse_file` is on the real-time path and reads ~40 elements per file. pydicom converts
each on first access through its hook/validation machinery (~20 us an element, about half of
the whole parse of a mosaic). Plain little-endian values (one number, ASCII text) are decoded
here directly, to the same Python values the callers get from pydicom after their own float()/
int()/str().strip(); anything else (sequences, multi-valued text where pydicom would build a
MultiValue, non-ASCII text whose decoding depends on SpecificCharacterSet, implicit-VR private
tags, big endian, empty values) goes through pydicom unchanged.
"""

from __future__ import annotations

import struct

from pydicom.datadict import dictionary_VR
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset

_BINARY = {"US": struct.Struct("<H"), "UL": struct.Struct("<I"), "SS": struct.Struct("<h"),
           "SL": struct.Struct("<i"), "FL": struct.Struct("<f"), "FD": struct.Struct("<d")}
_TEXT = frozenset({"CS", "LO", "SH", "UI", "TM", "DA", "DT", "AS"})
"""Text VRs whose backslash separates values (a backslash sends the element to pydicom)."""
_SINGLE_TEXT = frozenset({"LT", "ST"})
_MISSING = object()


def _key(tag) -> int:
    return (tag[0] << 16) | tag[1] if isinstance(tag, tuple) else int(tag)


def _vr(raw: RawDataElement) -> str | None:
    if raw.VR:
        return raw.VR
    try:
        return dictionary_VR(raw.tag)  # implicit VR: public dictionary (private tags -> pydicom)
    except KeyError:
        return None


def _fast(raw, *, multi: bool):
    """Decoded value, or _MISSING when pydicom must do it."""
    if not isinstance(raw, RawDataElement) or not raw.is_little_endian or not raw.value:
        return _MISSING
    vr = _vr(raw)
    b = raw.value
    if vr in ("DS", "IS"):
        try:
            s = b.decode("ascii")
        except UnicodeDecodeError:
            return _MISSING
        parts = s.split("\\")
        if len(parts) > 1 and not multi:
            return _MISSING
        conv = float if vr == "DS" else int
        try:
            vals = [conv(p.strip(" \0")) for p in parts]
        except ValueError:  # empty item, "36.0" as IS, ...: pydicom's rules
            return _MISSING
        return vals if multi else vals[0]
    if vr in _BINARY:
        st = _BINARY[vr]
        if len(b) == st.size:
            v = st.unpack(b)[0]
            return [v] if multi else v
        return _MISSING
    if vr in _TEXT or vr in _SINGLE_TEXT:
        try:
            s = b.decode("ascii")
        except UnicodeDecodeError:
            return _MISSING
        if "\x1b" in s:  # ISO 2022 escape: character-set dependent
            return _MISSING
        s = s.rstrip("\0 ")
        if vr in _SINGLE_TEXT:
            return [s] if multi else s
        if "\\" in s:
            return s.split("\\") if multi else _MISSING
        return [s] if multi else s
    if vr == "OB" and not multi:
        return b
    return _MISSING


def value(ds: Dataset, tag):
    """The element's value (None when absent): `ds.get(tag).value`, faster for plain elements.

    Numbers come back as float/int instead of pydicom's DSfloat/IS, text as str; a multi-valued
    element is left to pydicom (MultiValue)."""
    raw = ds._dict.get(_key(tag))
    if raw is None:
        return None
    v = _fast(raw, multi=False)
    if v is _MISSING:
        el = ds.get(tag)
        return None if el is None else el.value
    return v


def values(ds: Dataset, tag) -> list | None:
    """All values of a (possibly multi-valued) element as a list, or None when absent."""
    raw = ds._dict.get(_key(tag))
    if raw is None:
        return None
    v = _fast(raw, multi=True)
    if v is _MISSING:
        el = ds.get(tag)
        if el is None:
            return None
        v = el.value
        if v is None or v == "":
            return []
        return list(v) if isinstance(v, list | tuple) or type(v).__name__ == "MultiValue" else [v]
    return v
