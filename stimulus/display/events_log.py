"""BIDS `*_events.tsv` of the feedback display, appended and flushed row by row.

Onsets are seconds from the run's first scanner trigger (scan 0), taken from `win.flip()`
timestamps for screens and from trigger timestamps for triggers, so the file lines up with the
fMRI volumes. Screen rows are written at onset with the duration the condition table plans for
them (the screen lasts until the trigger that changes it); instantaneous rows (triggers,
scores, panic) have duration 0. A crash loses nothing already written.

The sidecar `*_events.json` describes the columns and records the wall-clock time of the first
trigger, which a restarted display uses to find its place in the run.
"""

from __future__ import annotations

import csv
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

COLUMNS = ("onset", "duration", "trial_type", "score", "response", "scan", "trial", "note")

COLUMN_DOC: dict[str, dict[str, Any]] = {
    "onset": {"Description": "Seconds from the first scanner trigger (scan 0); screen rows from the flip timestamp.", "Units": "s"},
    "duration": {"Description": "Planned screen duration (scans x TR) for screens, time to respond for ratings, 0 for instantaneous events.", "Units": "s"},
    "trial_type": {
        "Description": "What happened.",
        "Levels": {
            "trigger": "scanner trigger counted for `scan`",
            "missed_trigger": "trigger inferred missing from the interval between two others",
            "extra_trigger": "trigger rejected: closer than TR/2 to the previous one",
            "waiting": "screen before the first trigger",
            "fixation": "fixation screen (discarded, baseline, delay and score-calculation scans)",
            "iti": "inter-trial interval screen (rest scans)",
            "induction": "induction cue",
            "feedback": "feedback disc or bar; `score` is the score shown",
            "no_feedback": "neutral screen: no score in time, or the engine sent 'no feedback'",
            "rating": "rating scale; `response` is the confirmed value (n/a if not confirmed)",
            "end": "end-of-run screen with mean score and reward",
            "score_received": "score arrived in time to be shown at the trial's feedback",
            "late_score": "score arrived after the trial's feedback opened; never shown",
            "skipped_feedback": "the trial's feedback time passed while the display was not running",
            "display_start": "the display (re)started; `scan` is the first scan it counted",
            "panic": "panic key pressed; the run was aborted",
            "run_end": "the display finished the run",
        },
    },
    "score": {"Description": "Score 0-100 shown or received; n/a for no feedback."},
    "response": {"Description": "Rating 0-10 confirmed by the participant."},
    "scan": {"Description": "0-based scan (volume) index, discarded scans included."},
    "trial": {"Description": "1-based trial number; 0 outside trials."},
    "note": {"Description": "Free text: why a screen was chosen, how late a score was, how many triggers were missed."},
}


def _fmt(value: Any) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return "n/a" if math.isnan(value) else f"{value:.4f}".rstrip("0").rstrip(".")
    return str(value).replace("\t", " ").replace("\n", " ")


@dataclass(frozen=True)
class PreviousRun:
    """What an existing events file says about an interrupted run."""

    first_trigger_wall: float | None
    last_scan: int
    finished: bool
    rows: int
    shown: dict[int, float | None]
    """Trials whose feedback (or no-feedback) screen was already shown, with the score shown."""


def read_previous(path: str | Path) -> PreviousRun | None:
    """Read an existing events file and sidecar; None when there is none."""
    p = Path(path)
    if not p.exists():
        return None
    with p.open(encoding="utf-8", newline="") as fh:
        rows = list(csv.DictReader(fh, delimiter="\t"))
    last_scan = -1
    for r in rows:
        if r.get("trial_type") in ("trigger", "missed_trigger") and r.get("scan", "n/a") != "n/a":
            last_scan = max(last_scan, int(r["scan"]))
    finished = any(r.get("trial_type") in ("run_end", "panic") for r in rows)
    shown: dict[int, float | None] = {}
    for r in rows:
        if r.get("trial_type") in ("feedback", "no_feedback"):
            score = r.get("score", "n/a")
            shown[int(r["trial"])] = None if score in ("n/a", "", None) else float(score)
    wall = None
    side = sidecar_path(p)
    if side.exists():
        try:
            wall = json.loads(side.read_text(encoding="utf-8")).get("FirstTriggerWallTime")
        except (OSError, ValueError):
            wall = None
    return PreviousRun(first_trigger_wall=wall, last_scan=last_scan, finished=finished, rows=len(rows), shown=shown)


def sidecar_path(path: Path) -> Path:
    return path.with_name(path.name.removesuffix(".tsv") + ".json")


class EventsLog:
    """Append-only events.tsv; `t_zero` (first trigger, display clock) converts times to onsets.

    Rows stamped before the first trigger (the waiting screen) are held back until `set_zero`
    and then written with negative onsets, since BIDS onsets must be numbers.
    """

    def __init__(self, path: str | Path, *, append: bool = False) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        new = not (append and self.path.exists())
        self._fh = self.path.open("w" if new else "a", encoding="utf-8", newline="")
        if new:
            self._fh.write("\t".join(COLUMNS) + "\n")
            self._flush()
        self.t_zero: float | None = None
        self.n_rows = 0
        self._pending: list[tuple[float, str, dict[str, Any]]] = []

    def set_zero(self, t_zero: float) -> None:
        """Fix the time of scan 0 and write the rows held back until now."""
        self.t_zero = t_zero
        pending, self._pending = self._pending, []
        for t, trial_type, kw in pending:
            self.write(t, trial_type, **kw)

    def _flush(self) -> None:
        self._fh.flush()
        os.fsync(self._fh.fileno())

    def onset(self, t: float) -> float | None:
        return None if self.t_zero is None else t - self.t_zero

    def write(
        self,
        t: float | None,
        trial_type: str,
        *,
        duration: float = 0.0,
        score: float | None = None,
        response: float | None = None,
        scan: int | None = None,
        trial: int | None = None,
        note: str = "",
        onset: float | None = None,
    ) -> dict[str, Any]:
        """Append one row; `t` is a display-clock time."""
        if onset is None and t is not None:
            if self.t_zero is None:
                kw = dict(duration=duration, score=score, response=response, scan=scan, trial=trial, note=note)
                self._pending.append((t, trial_type, kw))
                return {}
            onset = self.onset(t)
        row = {
            "onset": onset,
            "duration": float(duration),
            "trial_type": trial_type,
            "score": None if score is None else float(score),
            "response": response,
            "scan": scan,
            "trial": trial,
            "note": note or None,
        }
        self._fh.write("\t".join(_fmt(row[c]) for c in COLUMNS) + "\n")
        self._flush()
        self.n_rows += 1
        return row

    def write_sidecar(self, first_trigger_wall: float, extra: dict[str, Any]) -> None:
        doc = dict(COLUMN_DOC)
        doc["FirstTriggerWallTime"] = first_trigger_wall
        doc.update(extra)
        side = sidecar_path(self.path)
        tmp = side.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(doc, indent=2), encoding="utf-8")
        os.replace(tmp, side)

    def close(self) -> None:
        if self._fh.closed:
            return
        pending, self._pending = self._pending, []
        for _t, trial_type, kw in pending:  # no trigger ever came: onsets unknown
            self.write(None, trial_type, **kw)
        if not self._fh.closed:
            self._fh.close()
