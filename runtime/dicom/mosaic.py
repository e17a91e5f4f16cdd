"""Siemens mosaic: CSA header read/write and tile unpacking.

A classic Siemens EPI volume is one 2D image holding N slices as an m x m grid of tiles
(m = ceil(sqrt(N))). N and the slice normal come from the CSA image header (a binary blob in
private tag (0029,1010), creator "SIEMENS CSA HEADER"; format "SV10", as documented by
nibabel.nicom.csareader) with (0019,100A) as a quicker fallback. ImagePositionPatient refers to
the whole mosaic; the first slice starts at (E23) IPP + Q.[(Rows - r)/2, (Cols - c)/2],
Q = [column-cosine, row-cosine] x PixelSpacing. Slice s is at first + s * spacing * normal.
"""

from __future__ import annotations

import math
import struct

import numpy as np
from pydicom.dataset import Dataset

from runtime.dicom.elements import value as _value
from runtime.dicom.elements import values as _values

CSA_CREATOR = "SIEMENS CSA HEADER"
MR_HEADER_CREATOR = "SIEMENS MR HEADER"


def _private_block_base(ds: Dataset, group: int, creator: str) -> int | None:
    """Element base (e.g. 0x1000) of the private block `creator` in `group`, if present."""
    for el in range(0x10, 0x100):
        v = _value(ds, (group, el))
        if v is None:
            if el > 0x20:
                break
            continue
        if isinstance(v, bytes):
            v = v.decode("latin-1", "replace")
        if isinstance(v, str) and v.strip().rstrip("\x00").upper() == creator:
            return el << 8
    return None


_CSA_TAG = struct.Struct("<64si4s3i")
_CSA_ITEM = struct.Struct("<4i")


def read_csa(blob: bytes, names: frozenset[str] | None = None) -> dict[str, list]:
    """Parse a CSA2 ("SV10") or CSA1 header into {name: [values]} (numbers converted).

    With `names`, only those tags are decoded, and the walk stops once all of them are found
    (a mosaic needs 3 of ~100 tags; decoding is the cost)."""
    if len(blob) < 16:
        return {}
    csa2 = blob[:4] == b"SV10"
    ptr = 8 if csa2 else 0
    n_tags, _check = struct.unpack_from("<2I", blob, ptr)
    ptr += 8
    if not 0 < n_tags <= 1000:
        return {}
    out: dict[str, list] = {}
    wanted_b = None if names is None else {n.encode("latin-1") for n in names}
    tag0_n_items = None
    size = len(blob)
    tag_unpack, item_unpack = _CSA_TAG.unpack_from, _CSA_ITEM.unpack_from
    for tag_no in range(n_tags):
        name_b, vm, vr, _syngodt, n_items, _last = tag_unpack(blob, ptr)
        ptr += 84
        name_b = name_b.split(b"\x00", 1)[0]
        if tag_no == 0:
            tag0_n_items = n_items
        if n_items > 1000:
            break
        wanted = wanted_b is None or name_b in wanted_b
        if not wanted:  # skip its items without decoding them
            for _ in range(n_items):
                x0, x1, _x2, _x3 = item_unpack(blob, ptr)
                item_len = x1 if csa2 else x0 - (tag0_n_items or 0)
                ptr += 16
                if item_len < 0 or ptr + item_len > size:
                    return out
                ptr += item_len + ((4 - item_len % 4) % 4)
            continue
        name = name_b.decode("latin-1")
        vr = vr.split(b"\x00", 1)[0].decode("latin-1")
        n_values = n_items if vm == 0 else vm
        items: list = []
        for item_no in range(n_items):
            x0, x1, _x2, _x3 = item_unpack(blob, ptr)
            ptr += 16
            item_len = x1 if csa2 else x0 - (tag0_n_items or 0)
            if item_len < 0 or ptr + item_len > size:
                return out
            raw = blob[ptr : ptr + item_len]
            ptr += item_len + ((4 - item_len % 4) % 4)
            if item_no >= n_values:
                continue
            s = raw.split(b"\x00", 1)[0].decode("latin-1").strip()
            if vr in ("FL", "FD", "DS"):
                items.append(float(s) if s else None)
            elif vr in ("IS", "SL", "SS", "UL", "US"):
                items.append(int(float(s)) if s else None)
            else:
                items.append(s)
        out[name] = items
        if wanted_b is not None and len(out) == len(wanted_b):
            break
    return out


MOSAIC_TAGS = frozenset({"NumberOfImagesInMosaic", "SliceNormalVector", "MosaicRefAcqTimes"})


def csa_image_header(ds: Dataset, names: frozenset[str] | None = MOSAIC_TAGS) -> dict[str, list]:
    base = _private_block_base(ds, 0x0029, CSA_CREATOR)
    if base is None:
        return {}
    blob = _value(ds, (0x0029, base | 0x10))
    if not isinstance(blob, bytes):
        return {}
    try:
        return read_csa(blob, names)
    except struct.error:
        return {}


def _csa_scalar(csa: dict, name: str):
    v = csa.get(name) or []
    v = [x for x in v if x is not None]
    return v[0] if v else None


def mosaic_info(ds: Dataset) -> tuple[int, np.ndarray | None, list[float] | None] | None:
    """(N slices, CSA slice normal or None, slice times in ms or None), or None if not a mosaic."""
    image_type = [str(x).upper() for x in (_values(ds, (0x0008, 0x0008)) or [])]
    csa = csa_image_header(ds)
    n = _csa_scalar(csa, "NumberOfImagesInMosaic")
    if n is None:
        base = _private_block_base(ds, 0x0019, MR_HEADER_CREATOR)
        if base is not None:
            el = ds.get((0x0019, base | 0x0A))
            if el is not None:
                n = int(el.value)
    if n is None or (n <= 1 and "MOSAIC" not in image_type):
        return None
    if "MOSAIC" not in image_type and not csa:
        return None
    normal = csa.get("SliceNormalVector")
    normal_arr = np.asarray(normal, float) if normal and len(normal) == 3 and None not in normal else None
    times = csa.get("MosaicRefAcqTimes")
    if not times or len(times) < n or None in times[:n]:
        times = None
        base = _private_block_base(ds, 0x0019, MR_HEADER_CREATOR)
        if base is not None:
            el = ds.get((0x0019, base | 0x29))
            if el is not None:
                v = el.value
                if isinstance(v, bytes):
                    v = list(np.frombuffer(v, "<f8"))
                v = list(v) if isinstance(v, list | tuple) or hasattr(v, "__iter__") else [v]
                times = [float(x) for x in v] if len(v) >= n else None
    return int(n), normal_arr, (list(times[:n]) if times else None)


def tiles_per_side(n: int) -> int:
    return int(math.ceil(math.sqrt(n)))


def unpack(mosaic: np.ndarray, n: int, dtype=None) -> np.ndarray:
    """(Rows, Cols) mosaic -> (n, r, c) slices (a view where possible). With `dtype`, a new
    array of that type, made in one pass (the tile reorder and the conversion together)."""
    m = tiles_per_side(n)
    rows, cols = mosaic.shape
    r, c = rows // m, cols // m
    grid = mosaic[: r * m, : c * m].reshape(m, r, m, c).transpose(0, 2, 1, 3)
    if dtype is not None:
        grid = grid.astype(dtype)  # C-contiguous (m, m, r, c): the reshape below is free
    return grid.reshape(m * m, r, c)[:n]


def pack(slices: np.ndarray) -> np.ndarray:
    """(n, r, c) -> (m*r, m*c) mosaic with zero tiles at the end (inverse of `unpack`)."""
    n, r, c = slices.shape
    m = tiles_per_side(n)
    full = np.zeros((m * m, r, c), dtype=slices.dtype)
    full[:n] = slices
    return full.reshape(m, m, r, c).transpose(0, 2, 1, 3).reshape(m * r, m * c)


def first_slice_position(ipp: np.ndarray, iop: np.ndarray, pixel_spacing, mosaic_shape, tile_shape) -> np.ndarray:
    """(E23) position of the first voxel of the first tile."""
    row, col = iop[:3], iop[3:]
    d_rows = (mosaic_shape[0] - tile_shape[0]) / 2.0
    d_cols = (mosaic_shape[1] - tile_shape[1]) / 2.0
    return ipp + col * pixel_spacing[0] * d_rows + row * pixel_spacing[1] * d_cols


def mosaic_ipp(first_pos: np.ndarray, iop: np.ndarray, pixel_spacing, mosaic_shape, tile_shape) -> np.ndarray:
    """Inverse of `first_slice_position` (for the writer)."""
    row, col = iop[:3], iop[3:]
    d_rows = (mosaic_shape[0] - tile_shape[0]) / 2.0
    d_cols = (mosaic_shape[1] - tile_shape[1]) / 2.0
    return first_pos - col * pixel_spacing[0] * d_rows - row * pixel_spacing[1] * d_cols


# --- CSA writing -------------------------------------------------------------------------


def _csa_item(value, vr: str) -> bytes:
    if vr in ("FD", "FL", "DS"):
        s = f"{float(value):.8f}"
    elif vr in ("IS", "SL", "SS", "UL", "US"):
        s = str(int(value))
    else:
        s = str(value)
    return s.encode("latin-1") + b"\x00"


def write_csa(tags: dict[str, tuple[str, list]]) -> bytes:
    """Build a CSA2 ("SV10") header from {name: (vr, [values])}; readable by `read_csa` and nibabel."""
    out = bytearray(b"SV10\x04\x03\x02\x01")
    out += struct.pack("<2I", len(tags), 77)
    for name, (vr, values) in tags.items():
        vm = len(values)
        out += struct.pack("<64si4s3i", name.encode("latin-1"), vm, vr.encode("latin-1"), 0, len(values), 77)
        for v in values:
            data = _csa_item(v, vr)
            n = len(data)
            out += struct.pack("<4i", n, n, 77, n)
            out += data + b"\x00" * ((4 - n % 4) % 4)
    out += b"\x00" * 4
    return bytes(out)
