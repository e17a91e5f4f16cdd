"""Rebuild an engine's state from its own outputs after a crash (`kill -9`, power cut).

Why it can: the engine writes ahead, per volume, in this order: scores published (journaled by
the publisher before they are sent) → volume spool → ROI spool record → score rows → motion
rows → timing row. So:

* a volume counts as handled iff it has a motion row (missing and discarded volumes too); its ROI
  values come from the last ROI spool record for it, its motion parameters from its row;
* a trial counts as scored iff a score for it is in the publisher's journal (the participant
  may have seen it); rows the crash kept out of `scores.tsv` are appended from the journal;
* the volume stream is resumed after the highest seq in `timing.tsv`; any older volume the
  replay sends again is recognised as already handled.

Everything the restarted engine does from there is what the first process would have done,
so the run ends with one motion row per volume and one score row per trial.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from runtime.messages import ScoreHeader, decode_header
from runtime.outputs import RunFiles, TsvWriter, read_roi_spool, read_tsv, tsv_float

from .core import PARAM_NAMES, RestoredVolume


@dataclass
class RecoveredRun:
    volumes: list[RestoredVolume] = field(default_factory=list)
    scored: set[int] = field(default_factory=set)
    last_seq: int = -1
    """Highest volume-stream seq already processed (-1: none)."""
    reference: tuple[np.ndarray, np.ndarray, int] | None = None
    appended_scores: int = 0
    """Score rows restored from the journal (published but not yet written when it crashed)."""

    @property
    def empty(self) -> bool:
        return not self.volumes and not self.scored and self.last_seq < 0


def save_reference(path: Path, data: np.ndarray, affine: np.ndarray, index: int) -> None:
    """The run's realignment reference (first/index modes), kept so a restart realigns to the
    very same volume."""
    tmp = path.with_name(path.name + ".tmp.npz")
    np.savez(tmp, data=np.asarray(data), affine=np.asarray(affine, np.float64), index=np.int64(index))
    tmp.replace(path)


def load_reference(path: Path) -> tuple[np.ndarray, np.ndarray, int] | None:
    if not path.exists():
        return None
    with np.load(path) as z:
        return z["data"], z["affine"], int(z["index"])


def journal_scores(journal) -> list[ScoreHeader]:
    """Score headers in a publisher journal (runtime.transport.Journal), in seq order."""
    out = []
    for _seq, topic, raw, _payload in journal.iter_from(0):
        if topic == b"score":
            h = decode_header(raw)
            if isinstance(h, ScoreHeader):
                out.append(h)
    return out


def recover(files: RunFiles, *, journal=None, score_writer: TsvWriter | None = None) -> RecoveredRun:
    """Read what a previous process of this run left behind (nothing → an empty RecoveredRun)."""
    rec = RecoveredRun()
    rows = read_tsv(files.motion)
    roi = read_roi_spool(files.roi) if files.roi.exists() else {}
    seen: set[int] = set()
    for r in rows:
        idx = int(r["volume"])
        if idx in seen:
            continue
        seen.add(idx)
        status = r.get("status", "ok")
        params = np.array([tsv_float(r.get(n)) for n in PARAM_NAMES])
        rv = RestoredVolume(index=idx, status=status, params=params if np.isfinite(params).all() else None)
        if status in ("ok", "ng") and idx in roi:
            valid, values, nuisance = roi[idx]
            rv.values, rv.valid, rv.nuisance = values, valid, nuisance
        elif status in ("ok", "ng"):
            rv.status = status  # values lost (spool damaged): the scan stays out of the features
        rec.volumes.append(rv)
    for r in read_tsv(files.timing):
        try:
            rec.last_seq = max(rec.last_seq, int(r["seq"]))
        except (KeyError, ValueError):
            continue
    written = {int(r["trial"]) for r in read_tsv(files.scores)}
    rec.scored |= written
    if journal is not None:
        for h in journal_scores(journal):
            if h.trial in rec.scored:
                continue
            rec.scored.add(h.trial)
            if score_writer is not None:
                from .core import ScoreRecord

                score_writer.write(ScoreRecord(header=h, trial=None).row())  # type: ignore[arg-type]
                rec.appended_scores += 1
    rec.reference = load_reference(files.reference)
    return rec
