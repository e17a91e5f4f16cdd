"""Replay a real DICOM series (any layout) or a 4D NIfTI into a folder at the TR, like a scanner
console exporting a run, optionally with faults (see `sim_scanner.faults`).

Why: developers and tests need the streamer to face what real exports do — files appearing one
volume per TR, half-written files (`--write chunked`), atomic renames (`--write rename`), drops,
duplicates, reordering, late volumes, truncated and corrupt files, stray non-DICOM files —
reproducibly (`--seed`) and with every injected fault logged to a TSV (volume, fault, file,
time, detail) so that tests can account for each volume's fate.

A DICOM source is grouped into volumes by temporal index (the same rules as the reader) and its
files are written byte-for-byte (so the streamer's volumes equal `read_series` on the source).
`repeat > 1` loops over the source, rewriting temporal indices and UIDs (a longer run from a
short sample, for benchmarks). A NIfTI source is written as DICOM through `volume_to_datasets`.
"""

from __future__ import annotations

import csv
import io
import logging
import os
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pydicom
from pydicom.errors import InvalidDicomError
from pydicom.filereader import read_partial

from runtime.errors import DicomError, UserError
from sim_scanner.faults import LOST, FaultSpec, plan_faults

log = logging.getLogger(__name__)

ENHANCED_CLASSES = {"1.2.840.10008.5.1.4.1.1.4.1", "1.2.840.10008.5.1.4.1.1.4.4"}


@dataclass
class SourceFile:
    name: str
    path: Path | None = None
    data: bytes | None = None
    order: int = 0

    def read(self) -> bytes:
        if self.data is None:
            assert self.path is not None
            self.data = self.path.read_bytes()
        return self.data


@dataclass
class SourceVolume:
    index: int
    files: list[SourceFile] = field(default_factory=list)


@dataclass
class Source:
    volumes: list[SourceVolume]
    tr: float | None
    layout: str
    description: str


# -- reading the source ------------------------------------------------------------------------
def _stop_after_group_20(tag, vr, length) -> bool:
    return tag > 0x0020FFFF


def _quick_header(path: Path) -> pydicom.Dataset | None:
    try:
        with open(path, "rb") as fh:
            if fh.read(132)[128:132] != b"DICM":
                return None
            fh.seek(0)
            return read_partial(fh, stop_when=_stop_after_group_20)
    except (InvalidDicomError, OSError, EOFError, ValueError):
        return None


def _int(ds, name: str) -> int | None:
    v = ds.get(name)
    try:
        return int(v) if v not in (None, "") else None
    except (TypeError, ValueError):
        return None


def load_dicom_source(folder: Path, series: str | None = None) -> Source:
    """Group a DICOM folder (recursively) into volumes of one series, in temporal order."""
    from runtime.dicom import parse_file

    files = sorted(p for p in Path(folder).rglob("*") if p.is_file() and not p.name.startswith("."))
    groups: dict[str, dict[int, list[SourceFile]]] = {}
    info: dict[str, tuple[int | None, str, float | None]] = {}
    layout = "slice"
    for path in files:
        ds = _quick_header(path)
        if ds is None:
            continue
        uid = str(ds.get("SeriesInstanceUID", ""))
        tpi = _int(ds, "TemporalPositionIdentifier")
        sop_class = str(ds.get("SOPClassUID", ""))
        manufacturer = str(ds.get("Manufacturer", "")).upper()
        frames = _int(ds, "NumberOfFrames") or 1
        if tpi is not None and frames == 1 and sop_class not in ENHANCED_CLASSES and not manufacturer.startswith("SIEMENS"):
            indices = [tpi - 1]  # classic per-slice with a temporal index (Philips): no pixel read needed
        else:
            try:
                part = parse_file(path)
            except DicomError as exc:
                log.debug("skipping %s", exc)
                continue
            indices = part.volume_indices
            layout = part.layout
        if not indices:
            continue
        tr = ds.get("RepetitionTime")
        info.setdefault(uid, (_int(ds, "SeriesNumber"), str(ds.get("SeriesDescription", "")), float(tr) / 1000.0 if tr else None))
        sf = SourceFile(path.name, path=path, order=_int(ds, "InstanceNumber") or 0)
        groups.setdefault(uid, {}).setdefault(min(indices), []).append(sf)
    if not groups:
        raise UserError(f"{folder}: no DICOM series found")
    if series is not None:
        cands = [u for u, (num, desc, _) in info.items() if series in (u, str(num), desc)]
        if not cands:
            avail = ", ".join(f"{num} '{desc}'" for num, desc, _ in info.values())
            raise UserError(f"{folder}: series {series!r} not found (available: {avail})")
        uid = max(cands, key=lambda u: len(groups[u]))
    else:
        uid = max(groups, key=lambda u: len(groups[u]))
        if len(groups) > 1:
            log.warning("%s: %d series; replaying series %s (the longest; choose with --series)", folder, len(groups), info[uid][0])
    vols = []
    for idx in sorted(groups[uid]):
        fs = sorted(groups[uid][idx], key=lambda f: (f.order, f.name))
        vols.append(SourceVolume(idx, fs))
    num, desc, tr = info[uid]
    return Source(vols, tr, layout, f"series {num} '{desc}' from {folder}")


def load_nifti_source(path: Path, layout: str = "mosaic", tr: float | None = None) -> Source:
    """A 4D NIfTI as DICOM files (one series, written through `volume_to_datasets`)."""
    from runtime.dicom.write import SeriesSpec, dataset_bytes, file_name, volume_to_datasets
    from runtime.nifti_io import load_4d

    vols = load_4d(path)
    if not vols:
        raise UserError(f"{path}: no volumes")
    tr = tr or vols[0].tr
    spec = SeriesSpec(layout=layout, series_number=1, series_description=Path(path).name, tr=tr, n_volumes=len(vols))
    spec = spec.resolved(vols[0])
    out = []
    for vol in vols:
        files = [SourceFile(file_name(ds, layout), data=dataset_bytes(ds)) for ds in volume_to_datasets(vol, spec)]
        out.append(SourceVolume(vol.index, files))
    return Source(out, tr, layout, f"{path} as {layout} DICOM")


def load_source(src: Path, *, series: str | None = None, layout: str = "mosaic", tr: float | None = None) -> Source:
    src = Path(src)
    if src.is_dir():
        return load_dicom_source(src, series)
    if src.is_file() and (src.name.endswith(".nii") or src.name.endswith(".nii.gz")):
        return load_nifti_source(src, layout, tr)
    raise UserError(f"{src}: expected a DICOM folder or a 4D NIfTI (.nii/.nii.gz)")


# -- renumbering (repeat) ---------------------------------------------------------------------
def renumber(data: bytes, new_index: int, old_index: int, series_uid: str, files_per_volume: int) -> bytes:
    """The same file as volume `new_index` of series `series_uid`, with a fresh SOP UID."""
    from runtime.dicom.write import dataset_bytes

    ds = pydicom.dcmread(io.BytesIO(data))
    sop = pydicom.uid.generate_uid(entropy_srcs=[series_uid, str(new_index), str(ds.SOPInstanceUID)])
    ds.SOPInstanceUID = sop
    ds.file_meta.MediaStorageSOPInstanceUID = sop
    ds.SeriesInstanceUID = series_uid
    if "TemporalPositionIdentifier" in ds:
        ds.TemporalPositionIdentifier = new_index + 1
    if "AcquisitionNumber" in ds:
        ds.AcquisitionNumber = new_index + 1
    if "InstanceNumber" in ds:
        inst = int(ds.InstanceNumber)
        ds.InstanceNumber = inst + (new_index - old_index) * files_per_volume
    # Enhanced multi-frame: the reader takes the volume index from each frame's
    # TemporalPositionIndex, so shift those too (every frame by the same amount).
    for frame in ds.get("PerFrameFunctionalGroupsSequence", []):
        for content in frame.get("FrameContentSequence", []):
            if "TemporalPositionIndex" in content:
                content.TemporalPositionIndex = int(content.TemporalPositionIndex) + new_index - old_index
    return dataset_bytes(ds)


def expand(source: Source, *, start: int = 0, count: int | None = None, repeat: int = 1) -> list[SourceVolume]:
    """The volumes to write: `count` from position `start`, looping `repeat` times (renumbered)."""
    vols = source.volumes[start:]
    if repeat <= 1:
        return vols[:count] if count is not None else vols
    base = vols[:count] if count is not None else vols
    if not base:
        return []
    series_uid = pydicom.uid.generate_uid()
    out = []
    n = 0
    first = base[0].index
    for r in range(repeat):
        for v in base:
            new_index = first + n
            files = [
                SourceFile(f"r{r:03d}_{f.name}", data=renumber(f.read(), new_index, v.index, series_uid, len(v.files)))
                for f in v.files
            ]
            out.append(SourceVolume(new_index, files))
            n += 1
    return out


# -- writing -----------------------------------------------------------------------------------
@dataclass
class _Item:
    t: float
    """Seconds from the start of the replay."""
    vol: int
    files: list[SourceFile]
    mode: str = "normal"
    """normal | duplicate | truncate | corrupt | junk."""
    names: list[str] | None = None
    detail: str = ""


class FaultLog:
    """The TSV every injected fault goes to (flushed per row)."""

    def __init__(self, path: Path | None) -> None:
        self._fh = None
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._fh = open(path, "w", newline="", encoding="utf-8")  # noqa: SIM115
            self._w = csv.writer(self._fh, delimiter="\t", lineterminator="\n")
            self._w.writerow(["volume", "fault", "file", "time", "detail"])
            self._fh.flush()
        self.rows: list[tuple[int, str, str, float, str]] = []

    def add(self, vol: int, fault: str, file: str, detail: str = "") -> None:
        row = (vol, fault, file, time.time(), detail)
        self.rows.append(row)
        if self._fh is not None:
            self._w.writerow([vol, fault, file, f"{row[3]:.6f}", detail])
            self._fh.flush()

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()


def write_file(folder: Path, name: str, data: bytes, mode: str, *, chunks: int = 4, chunk_sleep: float = 0.002,
               complete: bool = True) -> Path:
    """Write one file as a scanner export would: in chunks (readers may see it half-written) or
    via a temporary name and an atomic rename."""
    path = folder / name
    if mode == "rename":
        tmp = folder / f".{name}.part"
        with open(tmp, "wb") as fh:
            fh.write(data)
        os.replace(tmp, path)
        return path
    step = max(1, -(-len(data) // chunks))
    with open(path, "wb") as fh:
        for i in range(0, len(data), step):
            fh.write(data[i : i + step])
            fh.flush()
            if i + step < len(data) or not complete:
                time.sleep(chunk_sleep)
    return path


def schedule(vols: list[SourceVolume], plan: dict[int, str], junk: set[int], period: float, delay_trs: int,
             rng: random.Random) -> list[_Item]:
    """Timed write items for the whole replay (sorted by time)."""
    items: list[_Item] = []
    slot = {v.index: i for i, v in enumerate(vols)}
    by_index = {v.index: v for v in vols}
    dup_count = 0
    for v in vols:
        fault = plan.get(v.index)
        t = slot[v.index] * period
        if fault == "drop":
            items.append(_Item(t, v.index, [], "drop"))
        elif fault == "reorder":
            nxt = vols[slot[v.index] + 1]
            items.append(_Item(t + period, v.index, v.files, "normal", detail=f"swapped with {nxt.index}"))
            items.append(_Item(t, nxt.index, nxt.files, "normal", detail="reorder partner"))
            items.append(_Item(t, v.index, [], "reorder", detail=f"written after volume {nxt.index}"))
        elif fault == "_reorder_partner":
            continue
        elif fault == "delay":
            items.append(_Item(t + delay_trs * period + period / 2, v.index, v.files, "normal", detail="delayed"))
            items.append(_Item(t, v.index, [], "delay", detail=f"{delay_trs} TRs late"))
        elif fault == "duplicate":
            items.append(_Item(t, v.index, v.files, "normal"))
            how = "same_sop" if dup_count % 2 == 0 else "new_sop"
            dup_count += 1
            items.append(_Item(t + min(period / 4, 0.05), v.index, v.files, "duplicate", detail=how))
        elif fault in ("truncate", "corrupt"):
            victim = rng.randrange(len(v.files))
            items.append(_Item(t, v.index, v.files, fault, names=[v.files[victim].name]))
        else:
            items.append(_Item(t, v.index, v.files, "normal"))
        if v.index in junk:
            items.append(_Item(t + min(period / 2, 0.1), v.index, [], "junk"))
    assert all(i.vol in by_index for i in items)
    items.sort(key=lambda i: i.t)
    return items


def _new_sop_copy(data: bytes) -> bytes:
    from runtime.dicom.write import dataset_bytes

    ds = pydicom.dcmread(io.BytesIO(data))
    sop = pydicom.uid.generate_uid()
    ds.SOPInstanceUID = sop
    ds.file_meta.MediaStorageSOPInstanceUID = sop
    return dataset_bytes(ds)


def replay(
    source: Source,
    to: Path,
    *,
    tr: float | None = None,
    speed: float = 1.0,
    write: str = "rename",
    faults: FaultSpec | None = None,
    fault_log: Path | None = None,
    seed: int = 0,
    start: int = 0,
    count: int | None = None,
    repeat: int = 1,
    delay_trs: int = 3,
    on_volume: Callable[[int, list[Path], float], None] | None = None,
    stop: Callable[[], bool] | None = None,
) -> FaultLog:
    """Write the source volumes into `to` at their TR slots; returns the fault log."""
    if write not in ("chunked", "rename"):
        raise UserError(f"--write: expected 'chunked' or 'rename', got {write!r}")
    if speed <= 0:
        raise UserError("--speed must be > 0")
    to = Path(to)
    to.mkdir(parents=True, exist_ok=True)
    vols = expand(source, start=start, count=count, repeat=repeat)
    if not vols:
        raise UserError(f"nothing to replay (start {start}, count {count}, {len(source.volumes)} volumes in source)")
    tr_s = tr if tr is not None else (source.tr or 2.0)
    period = tr_s / speed
    plan, junk = plan_faults(faults or FaultSpec(), [v.index for v in vols], seed)
    rng = random.Random(seed + 2)
    items = schedule(vols, plan, junk, period, delay_trs, rng)
    flog = FaultLog(fault_log)
    t0 = time.monotonic()
    try:
        for item in items:
            if stop is not None and stop():
                break
            wait = t0 + item.t - time.monotonic()
            if wait > 0:
                time.sleep(wait)
            written = _write_item(item, to, write, flog, rng)
            if on_volume is not None and item.mode == "normal":
                on_volume(item.vol, written, time.time())
    finally:
        flog.close()
    return flog


def _write_item(item: _Item, to: Path, write: str, flog: FaultLog, rng: random.Random) -> list[Path]:
    out: list[Path] = []
    if item.mode in ("drop", "reorder", "delay"):
        flog.add(item.vol, item.mode, "", item.detail)
        return out
    if item.mode == "junk":
        name = f"junk_{item.vol:05d}.txt"
        path = write_file(to, name, b"not a DICOM file: scanner console log line\n" * 8, write)
        flog.add(item.vol, "junk", name)
        return [path]
    for f in item.files:
        data = f.read()
        name = f.name
        if item.mode == "duplicate":
            name = f"dup_{name}"
            if item.detail == "new_sop":
                data = _new_sop_copy(data)
            out.append(write_file(to, name, data, write))
            flog.add(item.vol, "duplicate", name, f"{item.detail} copy of {f.name}")
            continue
        if item.names and name in item.names:
            if item.mode == "truncate":
                cut = data[: max(132, len(data) * 3 // 5)]
                out.append(write_file(to, name, cut, write, complete=False))
                flog.add(item.vol, "truncate", name, f"{len(cut)} of {len(data)} bytes")
                continue
            if item.mode == "corrupt":
                junk = rng.randbytes(len(data))
                out.append(write_file(to, name, junk, write))
                flog.add(item.vol, "corrupt", name, f"{len(data)} random bytes")
                continue
        out.append(write_file(to, name, data, write))
    return out


def expected_fate(rows: list[tuple[int, str, str, float, str]]) -> dict[int, str]:
    """Per volume, what the streamer should make of it: 'gap' for lost volumes, else the fault."""
    fate: dict[int, str] = {}
    for vol, fault, *_ in rows:
        if fault in LOST:
            fate[vol] = "gap"
        elif fault != "junk":
            fate.setdefault(vol, fault)
    return fate
