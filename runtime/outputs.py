"""Session outputs: where every file of a run goes, and writers that lose nothing on a crash.

Layout (DESIGN.md, BIDS-derivatives style)::

    <root>/sub-<s>/ses-<n>/sub-<s>_ses-<n>_config.toml        resolved config of the latest run
    <root>/sub-<s>/ses-<n>/sub-<s>_ses-<n>_provenance.json    versions, hashes, host, one entry per run
    <root>/sub-<s>/ses-<n>/func/sub-<s>_ses-<n>_task-<t>_run-<r>_<suffix>
        _bold.nii.gz + _bold.json   received volumes (written at run end from the spool)
        _motion.tsv  _scores.tsv  _timing.tsv   engine, one row per volume / trial / volume
        _events.tsv  _agent.tsv                 display and agent (they call `run_file`)
        _config.toml                            resolved config of this run
        _volumes/  _roi.bin  _journal/          crash-proof spools (volumes, ROI values, sent messages)

Rows are appended and flushed to the OS as they happen (a `kill -9` loses nothing); files whose
loss would cost a participant's feedback (scores) are also fsync'ed. A row cut short by a kill in
the middle of a write is dropped when the file is reopened. Nothing here ever holds a DICOM
patient field: the engine only sees arrays, affines and timing.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import math
import os
import platform
import socket
import struct
import sys
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from runtime.config import SessionConfig, config_sha256, resolved_toml

NA = "n/a"


# -- paths -----------------------------------------------------------------------------------
def output_root(cfg: SessionConfig, root: str | Path | None = None) -> Path:
    """The derivatives root: `root` if given (CLI --output), else cfg.output.root (config-relative)."""
    return Path(root).expanduser() if root is not None else cfg.path(cfg.output.root)


def session_dir(cfg: SessionConfig, root: str | Path | None = None) -> Path:
    s = cfg.session
    return output_root(cfg, root) / f"sub-{s.subject}" / f"ses-{s.session}"


def run_prefix(cfg: SessionConfig) -> str:
    s = cfg.session
    return f"sub-{s.subject}_ses-{s.session}_task-{s.task}_run-{s.run}"


def run_file(cfg: SessionConfig, suffix: str, root: str | Path | None = None) -> Path:
    """Path of one of the run's files, e.g. `run_file(cfg, "events.tsv")` (display),
    `run_file(cfg, "agent.tsv")` (agent). A suffix without an extension gets `.tsv`.
    The folder is created."""
    suffix = suffix.lstrip("_")
    if "." not in suffix and not suffix.endswith(("volumes", "journal")):
        suffix += ".tsv"
    folder = session_dir(cfg, root) / "func"
    folder.mkdir(parents=True, exist_ok=True)
    return folder / f"{run_prefix(cfg)}_{suffix}"


def session_file(cfg: SessionConfig, suffix: str, root: str | Path | None = None) -> Path:
    s = cfg.session
    folder = session_dir(cfg, root)
    folder.mkdir(parents=True, exist_ok=True)
    return folder / f"sub-{s.subject}_ses-{s.session}_{suffix}"


@dataclass(frozen=True)
class RunFiles:
    """Every file the engine writes for one run."""

    func: Path
    motion: Path
    scores: Path
    timing: Path
    roi: Path
    volumes: Path
    reference: Path
    journal: Path
    bold: Path
    bold_json: Path

    @classmethod
    def for_run(cls, cfg: SessionConfig, root: str | Path | None = None) -> RunFiles:
        f = lambda suffix: run_file(cfg, suffix, root)  # noqa: E731
        return cls(func=f("motion.tsv").parent, motion=f("motion.tsv"), scores=f("scores.tsv"),
                   timing=f("timing.tsv"), roi=f("roi.bin"), volumes=f("volumes"),
                   reference=f("reference.npz"), journal=f("journal"), bold=f("bold.nii.gz"),
                   bold_json=f("bold.json"))


# -- TSV ----------------------------------------------------------------------------------------
def _cell(value: Any) -> str:
    if value is None:
        return NA
    if isinstance(value, bool | np.bool_):
        return "1" if value else "0"
    if isinstance(value, float | np.floating):
        v = float(value)
        if not math.isfinite(v):
            return NA
        return repr(round(v, 9)) if abs(v) < 1e15 else repr(v)
    s = str(value)
    if any(c in s for c in "\t\n\r"):
        s = s.replace("\t", " ").replace("\n", " ").replace("\r", " ")
    return s if s != "" else NA


class TsvWriter:
    """Append-only TSV with a fixed header; every row is flushed (and optionally fsync'ed).

    Reopening an existing file keeps its rows (crash restart) after dropping a last line that
    was cut short; a header that differs from `columns` is an error rather than silent mixing.
    """

    def __init__(self, path: Path, columns: Sequence[str], *, fsync: bool = False) -> None:
        self.path = Path(path)
        self.columns = list(columns)
        self.fsync = fsync
        self.path.parent.mkdir(parents=True, exist_ok=True)
        _drop_partial_line(self.path)
        new = not self.path.exists() or self.path.stat().st_size == 0
        if not new:
            with open(self.path, encoding="utf-8") as fh:
                head = fh.readline().rstrip("\n").split("\t")
            if head != self.columns:
                raise ValueError(f"{self.path}: existing columns {head} differ from {self.columns}")
        self._fh = open(self.path, "a", encoding="utf-8", newline="")  # noqa: SIM115 - kept open
        if new:
            self._write_line("\t".join(self.columns))

    def _write_line(self, line: str) -> None:
        self._fh.write(line + "\n")
        self._fh.flush()
        if self.fsync:
            os.fsync(self._fh.fileno())

    def write(self, row: Mapping[str, Any]) -> None:
        self._write_line("\t".join(_cell(row.get(c)) for c in self.columns))

    def close(self) -> None:
        if not self._fh.closed:
            self._fh.close()


def _drop_partial_line(path: Path) -> None:
    if not path.exists():
        return
    size = path.stat().st_size
    if size == 0:
        return
    with open(path, "r+b") as fh:
        fh.seek(size - 1)
        if fh.read(1) == b"\n":
            return
        fh.seek(0)
        content = fh.read()
        cut = content.rfind(b"\n") + 1
        fh.truncate(cut)


def read_tsv(path: Path) -> list[dict[str, str]]:
    """Rows of a TSV as dicts of strings (complete lines only)."""
    path = Path(path)
    if not path.exists():
        return []
    text = path.read_text(encoding="utf-8")
    if text and not text.endswith("\n"):
        text = text[: text.rfind("\n") + 1]
    return list(csv.DictReader(io.StringIO(text), delimiter="\t", quoting=csv.QUOTE_NONE))


def tsv_float(value: str | None) -> float:
    if value is None or value in ("", NA):
        return float("nan")
    return float(value)


# -- columns of the engine's files ----------------------------------------------------------
MOTION_COLUMNS = [
    "volume", "trans_x", "trans_y", "trans_z", "rot_x", "rot_y", "rot_z",
    "framewise_displacement", "template_corr", "ng", "iterations", "status", "condition",
]  # fmt: skip
"""fMRIPrep confound names first; status is ok / ng / discard / missing."""

SCORE_COLUMNS = [
    "trial", "condition", "label", "score", "likelihood", "n_valid_scans", "flags", "volume",
    "t_file_complete", "t_published",
]  # fmt: skip

TIMING_STAGES = ["decode_ms", "realign_ms", "reslice_ms", "qc_ms", "features_ms", "score_ms", "publish_ms"]
TIMING_COLUMNS = [
    "volume", "seq", "t_file_complete", "t_published", "t_received", "t_realigned", "t_processed",
    *TIMING_STAGES,
]  # fmt: skip
"""t_* are wall-clock time.time() seconds: file seen complete (streamer), volume published
(streamer), received, realigned, processed (scores and telemetry sent) by the engine."""


# -- ROI spool -------------------------------------------------------------------------------
class RoiSpool:
    """Fixed-size binary records `(volume, valid, nuisance[p], values[V])` as float64, appended
    and flushed per volume: what the engine needs to rebuild its feature state after a crash
    without realigning again. A record cut short is ignored on reading."""

    MAGIC = b"DNROI1\0\0"

    def __init__(self, path: Path, n_values: int, n_nuisance: int) -> None:
        self.path = Path(path)
        self.n_values = n_values
        self.n_nuisance = n_nuisance
        self.record = 8 * (2 + n_nuisance + n_values)
        head = struct.pack("<8sqq", self.MAGIC, n_values, n_nuisance)
        if self.path.exists() and self.path.stat().st_size >= len(head):
            with open(self.path, "rb") as fh:
                if fh.read(len(head)) != head:
                    raise ValueError(f"{self.path}: ROI spool of another decoder or denoising (voxel count or nuisance columns differ)")
            size = self.path.stat().st_size
            whole = len(head) + (size - len(head)) // self.record * self.record
            if whole != size:
                os.truncate(self.path, whole)
            self._fh = open(self.path, "ab")  # noqa: SIM115
        else:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._fh = open(self.path, "wb")  # noqa: SIM115
            self._fh.write(head)
            self._fh.flush()
        self._head = len(head)

    def append(self, volume: int, valid: bool, values: np.ndarray, nuisance: np.ndarray | None) -> None:
        rec = np.empty(2 + self.n_nuisance + self.n_values, dtype="<f8")
        rec[0] = volume
        rec[1] = 1.0 if valid else 0.0
        if self.n_nuisance:
            rec[2 : 2 + self.n_nuisance] = np.nan if nuisance is None else nuisance
        rec[2 + self.n_nuisance :] = values
        self._fh.write(rec.tobytes())
        self._fh.flush()

    def read(self) -> dict[int, tuple[bool, np.ndarray, np.ndarray | None]]:
        """volume -> (valid, values, nuisance); the last record of a volume wins."""
        return read_roi_spool(self.path)

    def close(self) -> None:
        if not self._fh.closed:
            self._fh.close()


def read_roi_spool(path: Path) -> dict[int, tuple[bool, np.ndarray, np.ndarray | None]]:
    path = Path(path)
    if not path.exists():
        return {}
    raw = path.read_bytes()
    if len(raw) < 24:
        return {}
    magic, nv, nn = struct.unpack("<8sqq", raw[:24])
    if magic != RoiSpool.MAGIC:
        raise ValueError(f"{path}: not a decnef ROI spool")
    rec = 2 + nn + nv
    n = (len(raw) - 24) // (8 * rec)
    arr = np.frombuffer(raw, dtype="<f8", count=n * rec, offset=24).reshape(n, rec)
    out: dict[int, tuple[bool, np.ndarray, np.ndarray | None]] = {}
    for row in arr:
        out[int(row[0])] = (bool(row[1]), row[2 + nn :].copy(), row[2 : 2 + nn].copy() if nn else None)
    return out


# -- volume spool ------------------------------------------------------------------------------
class VolumeSpool:
    """One `.npy` per received volume (written to a temp name, then renamed: a file either is
    complete or does not exist), plus the affine and timing in a small JSON per volume. The 4D
    NIfTI is assembled from it at run end, so a crash mid-run loses no volume."""

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)

    def _npy(self, index: int) -> Path:
        return self.folder / f"vol-{index:05d}.npy"

    def put(self, index: int, data: np.ndarray, meta: Mapping[str, Any]) -> None:
        final = self._npy(index)
        tmp = final.with_suffix(".tmp")
        with open(tmp, "wb") as fh:
            np.save(fh, np.ascontiguousarray(data))
        os.replace(tmp, final)
        mtmp = final.with_suffix(".json.tmp")
        mtmp.write_text(json.dumps(dict(meta), default=_jsonable))
        os.replace(mtmp, final.with_suffix(".json"))

    def has(self, index: int) -> bool:
        return self._npy(index).exists() and self._npy(index).with_suffix(".json").exists()

    def indices(self) -> list[int]:
        out = []
        for p in self.folder.glob("vol-*.npy"):
            try:
                i = int(p.stem[4:])
            except ValueError:
                continue
            if p.with_suffix(".json").exists():
                out.append(i)
        return sorted(out)

    def get(self, index: int, *, mmap: bool = False) -> tuple[np.ndarray, dict]:
        p = self._npy(index)
        return np.load(p, mmap_mode="r" if mmap else None), json.loads(p.with_suffix(".json").read_text())


def _jsonable(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    return str(value)


# -- provenance -----------------------------------------------------------------------------
def file_sha256(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def package_versions(names: Iterable[str] = ("decnef", "numpy", "scipy", "numba", "pyzmq", "nibabel", "msgspec", "scikit-learn", "pydicom")) -> dict[str, str]:
    out = {}
    for n in names:
        try:
            out[n] = metadata.version(n)
        except metadata.PackageNotFoundError:
            out[n] = "not installed"
    return out


def write_config_and_provenance(
    cfg: SessionConfig,
    root: str | Path | None = None,
    *,
    bundle_path: Path | None = None,
    bundle_sha256: str | None = None,
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Write the resolved config (session level and per run) and add this run's provenance
    entry (keeping earlier runs' and earlier starts of this run). Returns the entry."""
    text = resolved_toml(cfg)
    _atomic_write(session_file(cfg, "config.toml", root), text)
    _atomic_write(run_file(cfg, "config.toml", root), text)
    prov_path = session_file(cfg, "provenance.json", root)
    try:
        prov = json.loads(prov_path.read_text()) if prov_path.exists() else {}
    except json.JSONDecodeError:
        prov = {}
    entry = {
        "run": cfg.session.run,
        "task": cfg.session.task,
        "config_sha256": config_sha256(cfg),
        "config_file": str(run_file(cfg, "config.toml", root).name),
        "decoder_bundle": str(bundle_path) if bundle_path else None,
        "decoder_sha256": bundle_sha256,
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "started_unix": time.time(),
        "host": socket.gethostname(),
        "platform": platform.platform(),
        "python": sys.version.split()[0],
        "packages": package_versions(),
        "pid": os.getpid(),
        **(dict(extra) if extra else {}),
    }
    prov.setdefault("subject", cfg.session.subject)
    prov.setdefault("session", cfg.session.session)
    runs = prov.setdefault("runs", [])
    runs.append(entry)
    prov["config_sha256"] = entry["config_sha256"]
    prov["decoder_sha256"] = bundle_sha256
    _atomic_write(prov_path, json.dumps(prov, indent=2) + "\n")
    return entry


def update_provenance(cfg: SessionConfig, root: str | Path | None, **fields: Any) -> None:
    """Add fields to this process's latest entry for the run (e.g. `finished`, counts)."""
    prov_path = session_file(cfg, "provenance.json", root)
    prov = json.loads(prov_path.read_text()) if prov_path.exists() else {"runs": []}
    for entry in reversed(prov.get("runs", [])):
        if entry.get("run") == cfg.session.run and entry.get("pid") == os.getpid():
            entry.update(fields)
            break
    _atomic_write(prov_path, json.dumps(prov, indent=2) + "\n")


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
