"""Frames -> volumes: online (`VolumeAssembler`) and offline (`read_series`).

Both use `build_volume`: slices of one volume are sorted by ImagePositionPatient projected on
the slice normal cross(row, col) and stacked into the reader's (i, j, k) convention
(runtime.dicom.affine), so every vendor layout ends in the same code.

Duplicates: a slice whose position is already held for that volume is ignored, and so is any
part for a volume that was already completed (e.g. the rt-cloud sample's 001_000013_000000.dcm
repeats volume index 9); the first copy wins.

Echoes: a volume is keyed by (series, echo, temporal index), so the echoes of a multi-echo series
(same index, same slice positions) never pass for duplicates of each other. One echo is
assembled (`echo`; default the first), whatever order the echoes' files arrive in.
"""

from __future__ import annotations

import logging
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from runtime.dicom.affine import slice_normal, volume_affine
from runtime.dicom.parse import parse_file
from runtime.dicom.part import DicomPart, Frame
from runtime.errors import DicomError
from runtime.volume import Volume

log = logging.getLogger(__name__)


def _pos_key(position: np.ndarray) -> tuple:
    return tuple(np.round(np.asarray(position, float), 2).tolist())


def _slice_times(frames: list[Frame], tr: float | None) -> tuple[float, ...] | None:
    st = [f.slice_time for f in frames]
    if len(st) < 2 or any(t is None for t in st):
        return None
    arr = np.asarray(st, float)
    arr = arr - arr.min()
    span = float(arr.max())
    if span == 0.0:
        return None  # no information (e.g. GE RTIA timer all zero)
    if tr:
        if span >= tr:  # GE RTIA in units of 100 us on some software versions
            arr = arr / 10000.0
            if float(arr.max()) >= tr:
                return None
    return tuple(np.round(arr, 6).tolist())  # same values as round() per np.float64, one call


def build_volume(index: int, frames: list[Frame], ref: DicomPart) -> Volume:
    """Sort one volume's frames along the slice normal and stack them (reader convention)."""
    normal = slice_normal(ref.iop)
    d = np.array([f.position for f in frames], dtype=float).reshape(len(frames), -1) @ normal
    order = np.argsort(d, kind="stable")
    fs = [frames[o] for o in order]
    rows, cols = fs[0].pixels.shape
    if any(f.pixels.shape != (rows, cols) for f in fs):
        raise DicomError(f"{ref.path}: volume {index} mixes slice sizes")
    n = len(fs)
    # slice by slice into one new array: a stack-then-transpose needs a second large temporary,
    # whose fresh pages cost more (page faults) than the strided writes save
    data = np.empty((cols, rows, n), dtype=np.float32)
    for k, f in enumerate(fs):
        data[:, :, k] = f.pixels.T[:, ::-1]
    if n > 2:
        gaps = np.diff(d[order])
        if float(np.ptp(gaps)) > max(0.01, 0.05 * abs(float(np.median(gaps)))):
            log.warning("%s: volume %d has unevenly spaced slices (%.3f..%.3f mm)", ref.path, index, gaps.min(), gaps.max())
    affine = volume_affine(ref.iop, ref.pixel_spacing, fs[0].position, fs[-1].position, n, rows, ref.slice_spacing)
    acq = [f.acq_time for f in fs if f.acq_time is not None]
    echo = fs[0].echo
    meta = dict(ref.meta)
    if echo in ref.echo_times:
        meta["EchoTime"] = ref.echo_times[echo]
    meta["EchoNumber"] = echo
    return Volume(
        data=data,
        affine=affine,
        index=int(index),
        tr=ref.tr,
        slice_times=_slice_times(fs, ref.tr),
        acquisition_time=min(acq) if acq else ref.acquisition_time,
        series_uid=ref.series_uid,
        series_number=ref.series_number,
        series_description=ref.series_description,
        manufacturer=ref.manufacturer,
        source=os.path.basename(ref.path),
        meta=meta,
    )


@dataclass
class _Pending:
    ref: DicomPart
    frames: dict[tuple, Frame] = field(default_factory=dict)


class VolumeAssembler:
    """Collects parts as they arrive and hands out each volume once all its slices are in.

    `slices_per_volume` overrides the header; when neither knows (some per-slice exports), the
    count is learned from the first volume once a slice of a later volume arrives (slices of a
    volume arrive before those of the next one in every real-time export we know).

    `echo`: the echo assembled (1 = first/shortest); frames of other echoes are skipped
    (`skipped_echo_frames` counts them). None assembles every echo, each as its own volume
    (tell them apart by `Volume.meta["EchoNumber"]`).
    """

    def __init__(self, slices_per_volume: int | None = None, echo: int | None = 1) -> None:
        self._forced = slices_per_volume
        self.echo = echo
        self.skipped_echo_frames = 0
        self._pending: dict[tuple[str, int, int], _Pending] = {}
        self._done: set[tuple[str, int, int]] = set()
        self._learned: dict[str, int] = {}

    def add(self, part: DicomPart) -> list[Volume]:
        touched: list[tuple[str, int, int]] = []
        frames = part.frames
        if self.echo is not None and part.echoes != (self.echo,):
            frames = [f for f in frames if f.echo == self.echo]
            self.skipped_echo_frames += len(part.frames) - len(frames)
        # all frames' position keys at once (a mosaic has dozens; one np.round instead of many)
        keys = [tuple(k) for k in np.round(np.asarray([f.position for f in frames], float), 2).tolist()] \
            if len(frames) > 1 else [_pos_key(f.position) for f in frames]
        for frame, pk in zip(frames, keys, strict=True):
            key = (part.series_uid, frame.echo, frame.volume)
            if key in self._done:
                continue
            pend = self._pending.get(key)
            if pend is None:
                pend = self._pending[key] = _Pending(part)
            if pk in pend.frames:
                continue
            pend.frames[pk] = frame
            if key not in touched:
                touched.append(key)
        out: list[Volume] = []
        series = part.series_uid
        expected = self._forced or part.slices_per_volume or self._learned.get(series)
        if expected is None and part.volume_indices and frames:
            newest = max(part.volume_indices)
            older = [k for k in self._pending if k[0] == series and k[2] < newest]
            if older:
                expected = max(len(self._pending[k].frames) for k in older)
                self._learned[series] = expected
                log.info("series %s: learned %d slices per volume", series, expected)
                touched = older + touched
        if expected:
            for key in sorted(set(touched), key=lambda k: (k[2], k[1])):
                pend = self._pending.get(key)
                if pend is not None and len(pend.frames) >= expected:
                    out.append(self._complete(key))
        return out

    def _complete(self, key: tuple[str, int, int]) -> Volume:
        pend = self._pending.pop(key)
        self._done.add(key)
        return build_volume(key[2], list(pend.frames.values()), pend.ref)

    def pending(self) -> dict[int, int]:
        """volume index -> slices held, for volumes not complete yet."""
        out: dict[int, int] = {}
        for (_s, _e, idx), pend in self._pending.items():
            out[idx] = out.get(idx, 0) + len(pend.frames)
        return out

    def flush(self) -> list[Volume]:
        """Hand out what is still pending (incomplete volumes), e.g. at the end of a run."""
        keys = sorted(self._pending, key=lambda k: (k[2], k[1]))
        return [self._complete(k) for k in keys]


def _list_files(folder_or_files) -> tuple[str, list[str]]:
    if isinstance(folder_or_files, str | os.PathLike):
        p = Path(folder_or_files)
        if p.is_dir():
            files = sorted(str(e.path) for e in os.scandir(p) if e.is_file() and not e.name.startswith("."))
            return str(p), files
        if p.is_file():
            return str(p), [str(p)]
        raise DicomError(f"{p}: no such file or folder")
    files = sorted(os.fspath(f) for f in folder_or_files)
    label = os.path.dirname(files[0]) if files else "(no files)"
    return label, files


def _select_series(label: str, groups: dict[str, list[DicomPart]], series: int | str | None) -> str:
    def nvol(uid: str) -> int:
        return len({v for p in groups[uid] for v in p.volume_indices})

    def describe(uid: str) -> str:
        p = groups[uid][0]
        return f"series {p.series_number} '{p.series_description}' ({nvol(uid)} volumes)"

    if series is not None:
        s = str(series).strip()
        matches = [
            uid
            for uid, parts in groups.items()
            if uid == s or str(parts[0].series_number) == s or parts[0].series_description == s
        ]
        if not matches:
            avail = "; ".join(describe(u) for u in groups)
            raise DicomError(f"{label}: series {series!r} not found (available: {avail})")
        return max(matches, key=nvol)
    best = max(groups, key=lambda u: (nvol(u), -(groups[u][0].series_number or 0)))
    if len(groups) > 1:
        others = "; ".join(describe(u) for u in groups if u != best)
        log.warning("%s: %d series found; using %s (others: %s)", label, len(groups), describe(best), others)
    return best


def series_echoes(parts: list[DicomPart]) -> list[int]:
    """The echo numbers present in a series' parts, ascending ([1] for a single-echo series)."""
    return sorted({e for p in parts for e in p.echoes}) or [1]


def assemble_parts(parts: list[DicomPart], label: str = "", echo: int | None = None) -> list[Volume]:
    """Offline assembly of one series' parts: every volume of one echo, sorted by temporal index.

    `echo` None = the first echo present. Volumes with fewer slices than the others (an
    interrupted run) are dropped with a warning.
    """
    if echo is None:
        echo = series_echoes(parts)[0]
    by_vol: dict[int, dict[tuple, Frame]] = {}
    ref: dict[int, DicomPart] = {}
    for part in parts:
        for f in part.frames:
            if f.echo != echo:
                continue
            held = by_vol.setdefault(f.volume, {})
            pk = _pos_key(f.position)
            if pk not in held:
                held[pk] = f
                ref.setdefault(f.volume, part)
    if not by_vol:
        return []
    counts = Counter(len(v) for v in by_vol.values())
    expected = next((p.slices_per_volume for p in parts if p.slices_per_volume), None)
    full = expected if expected and expected in counts else counts.most_common(1)[0][0]
    vols = []
    for idx in sorted(by_vol):
        if len(by_vol[idx]) < full:
            log.warning("%s: volume %d has %d of %d slices; skipped", label, idx, len(by_vol[idx]), full)
            continue
        vols.append(build_volume(idx, list(by_vol[idx].values()), ref[idx]))
    # Slice timing is a property of the sequence: volumes whose header lacks it (e.g. the
    # first volume of GE epiRT) take the pattern the other volumes agree on.
    patterns = Counter(v.slice_times for v in vols if v.slice_times is not None)
    if patterns:
        common = patterns.most_common(1)[0][0]
        for v in vols:
            if v.slice_times is None and len(common) == v.shape[2]:
                v.slice_times = common
    return vols


def read_series(folder_or_files, series: int | str | None = None, echo: int | None = None) -> list[Volume]:
    """All volumes of one series (and one echo) in a folder (or list of files), sorted by
    temporal index.

    `echo`: 1-based echo number of a multi-echo series (DicomError if the series lacks it);
    None = the first echo (with a warning naming the others when there are several)."""
    label, parts = _series_parts(folder_or_files, series)
    echoes = series_echoes(parts)
    desc = f"series {parts[0].series_number} '{parts[0].series_description}'"
    if echo is None:
        echo = echoes[0]
        if len(echoes) > 1:
            log.warning("%s: %s has echoes %s; using echo %d (choose with echo=N)", label, desc, echoes, echo)
    elif echo not in echoes:
        raise DicomError(f"{label}: echo {echo} not in {desc} (echoes present: {', '.join(map(str, echoes))})")
    vols = assemble_parts(parts, label, echo)
    if not vols:
        raise DicomError(f"{label}: no complete volume in series {parts[0].series_number}")
    return vols


def read_series_echoes(folder_or_files, series: int | str | None = None) -> dict[int, list[Volume]]:
    """Every echo of one series: {echo number: volumes sorted by temporal index} (one entry for a
    single-echo series). Echoes without a complete volume are left out (with a warning)."""
    label, parts = _series_parts(folder_or_files, series)
    out: dict[int, list[Volume]] = {}
    for e in series_echoes(parts):
        vols = assemble_parts(parts, label, e)
        if vols:
            out[e] = vols
        else:
            log.warning("%s: echo %d has no complete volume; skipped", label, e)
    if not out:
        raise DicomError(f"{label}: no complete volume in series {parts[0].series_number}")
    return out


def _series_parts(folder_or_files, series: int | str | None) -> tuple[str, list[DicomPart]]:
    """Parse a folder's files and keep the chosen series' parts (see `_select_series`)."""
    label, files = _list_files(folder_or_files)
    groups: dict[str, list[DicomPart]] = {}
    for f in files:
        try:
            part = parse_file(f)
        except DicomError as exc:
            log.debug("skipping %s", exc)
            continue
        groups.setdefault(part.series_uid, []).append(part)
    if not groups:
        raise DicomError(f"{label}: no usable DICOM series found ({len(files)} files looked at)")
    uid = _select_series(label, groups, series)
    parts = groups[uid]
    number_echoes_by_time(parts, label)
    return label, parts


def number_echoes_by_time(parts: list[DicomPart], label: str = "") -> bool:
    """A series whose files all say echo 1 (or say nothing) but carry several echo times is a
    multi-echo export without EchoNumbers (e.g. some Siemens XA classic exports): number its
    echoes by echo time, shortest = 1, in place. Returns whether it did.

    Offline only: online, the order of the echo times is not known until every echo has been
    seen (the streamer follows one echo time instead; see runtime.ingest.streamer)."""
    if not parts or any(p.echoes != (1,) or 1 not in p.echo_times for p in parts):
        return False
    times = sorted({p.echo_times[1] for p in parts})
    if len(times) < 2:
        return False
    rank = {t: i + 1 for i, t in enumerate(times)}
    for p in parts:
        te = p.echo_times[1]
        e = rank[te]
        p.echoes, p.echo_times = (e,), {e: te}
        for f in p.frames:
            f.echo = e
    log.warning("%s: series %s has no EchoNumbers but %d echo times (%s ms); echoes numbered by echo time",
                label, parts[0].series_number, len(times), ", ".join(f"{t * 1000:g}" for t in times))
    return True

