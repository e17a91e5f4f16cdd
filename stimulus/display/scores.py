"""Where the display's scores come from, and when a score may be shown.

Two sources with one interface, `poll(scan) -> list[ScoreHeader]`, never blocking the frame
loop: the engine's ZeroMQ score stream (with catch-up from its replay endpoint, so a restarted
display still gets scores published while it was down) or a scores TSV for headless runs.

`ScoreBook` decides what a score may do. A trial's score is shown only if it was received
before that trial's feedback screen opened; one that arrives later is logged as late and never
shown out of turn, and a score for a trial whose feedback time passed while the display was
not running (restart) is never shown either.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from runtime.errors import UserError
from runtime.messages import TOPIC_SCORE, ScoreHeader
from runtime.protocol import ProtocolTable

_MISSING = {"", "n/a", "na", "nan", "none"}


def _opt_float(text: str | None) -> float | None:
    if text is None or text.strip().lower() in _MISSING:
        return None
    value = float(text)
    return None if math.isnan(value) else value


@dataclass(frozen=True)
class _FileScore:
    header: ScoreHeader
    available_at_scan: int


class FileScores:
    """Scores from a TSV (the engine's scores.tsv format): columns `trial`, `score` (empty or
    n/a = no feedback), optional `likelihood`, `n_valid_scans`, `flags`, and optional
    `available_at_scan` (default: the trial's score scan) to simulate a score that is late.

    A row becomes visible once the trigger of its `available_at_scan` has been counted, in the
    frame after that scan's screen was drawn, as a real score published on that scan would.
    """

    def __init__(self, path: str | Path, table: ProtocolTable, run: int = 1) -> None:
        self.path = Path(path)
        calc = {t.number: t.calc_scan for t in table.trials}
        try:
            text = self.path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise UserError(f"{self.path}: cannot read scores file: {exc}") from None
        reader = csv.DictReader(text.splitlines(), delimiter="\t")
        cols = reader.fieldnames or []
        if "trial" not in cols or "score" not in cols:
            raise UserError(f"{self.path}: expected a TSV with columns 'trial' and 'score', got {cols}")
        rows: list[_FileScore] = []
        for lineno, rec in enumerate(reader, start=2):
            try:
                trial = int(rec["trial"])
                score = _opt_float(rec["score"])
                if score is not None and not 0 <= score <= 100:
                    raise ValueError(f"score {score} outside 0-100")
                avail_txt = rec.get("available_at_scan")
                avail = int(avail_txt) if avail_txt and avail_txt.strip().lower() not in _MISSING else None
                n_valid = rec.get("n_valid_scans")
                header = ScoreHeader(
                    run=run,
                    trial=trial,
                    score=score,
                    likelihood=_opt_float(rec.get("likelihood")),
                    n_valid_scans=int(n_valid) if n_valid and n_valid.strip().lower() not in _MISSING else 0,
                    flags=(rec.get("flags") or "").strip(),
                )
            except (TypeError, ValueError) as exc:
                raise UserError(f"{self.path}: line {lineno}: {exc}") from None
            if trial not in calc:
                raise UserError(
                    f"{self.path}: line {lineno}: trial {trial} is not in the protocol "
                    f"(trials 1-{len(calc)})"
                )
            rows.append(_FileScore(header, calc[trial] if avail is None else avail))
        self._rows = sorted(rows, key=lambda r: r.available_at_scan)
        self._next = 0

    def poll(self, scan: int) -> list[ScoreHeader]:
        out: list[ScoreHeader] = []
        while self._next < len(self._rows) and self._rows[self._next].available_at_scan <= scan:
            out.append(self._rows[self._next].header)
            self._next += 1
        return out

    def close(self) -> None:
        pass


class ZmqScores:
    """The engine's score stream via `runtime.transport.ReliableSubscriber`.

    Subscribes from sequence 0, so a restarted display first catches up on every score the
    engine published this run (the ScoreBook keeps those it may no longer show off the screen).
    `poll` drains what has arrived, at most `max_per_poll` messages, and never waits.
    """

    def __init__(
        self, pub_endpoint: str, replay_endpoint: str, *, curve: Any = None, max_per_poll: int = 64
    ) -> None:
        from runtime.transport import ReliableSubscriber

        self._sub = ReliableSubscriber(
            pub_endpoint, replay_endpoint, topics=[TOPIC_SCORE], start_seq=0, curve=curve
        )
        self.max_per_poll = max_per_poll

    def poll(self, scan: int) -> list[ScoreHeader]:
        out: list[ScoreHeader] = []
        for _ in range(self.max_per_poll):
            msg = self._sub.poll()
            if msg is None:
                break
            header = msg[0]
            if isinstance(header, ScoreHeader):
                out.append(header)
        return out

    def close(self) -> None:
        close = getattr(self._sub, "close", None)
        if close is not None:
            close()


# What ScoreBook.receive says about a score.
ON_TIME = "on_time"
LATE = "late"
DUPLICATE = "duplicate"
OTHER_RUN = "other_run"
UNKNOWN_TRIAL = "unknown_trial"


@dataclass
class ScoreBook:
    """Scores received per trial, and which trials' feedback has already opened or passed."""

    trials: set[int]
    run: int = 1
    received: dict[int, ScoreHeader] = field(default_factory=dict)
    received_at: dict[int, float] = field(default_factory=dict)
    opened: set[int] = field(default_factory=set)
    """Trials whose feedback screen was shown (with their score or 'no feedback')."""
    closed: set[int] = field(default_factory=set)
    """Trials whose feedback time passed without being shown (display not running)."""
    shown: dict[int, float | None] = field(default_factory=dict)
    on_late: Callable[[ScoreHeader], None] | None = None

    def receive(self, header: ScoreHeader, t: float) -> str:
        if header.run != self.run:
            return OTHER_RUN
        if header.trial not in self.trials:
            return UNKNOWN_TRIAL
        if header.trial in self.received:
            return DUPLICATE
        self.received[header.trial] = header
        self.received_at[header.trial] = t
        if header.trial in self.opened or header.trial in self.closed:
            return LATE
        return ON_TIME

    def restore(self, trial: int, score: float | None) -> None:
        """A trial shown before a restart: its replayed score is a duplicate, not news."""
        self.opened.add(trial)
        self.shown[trial] = score
        self.received.setdefault(trial, ScoreHeader(run=self.run, trial=trial, score=score))

    def open(self, trial: int) -> ScoreHeader | None:
        """The trial's feedback screen opens now: its score if it came in time, else None.

        Only a score received before this call can ever be shown for the trial.
        """
        self.opened.add(trial)
        header = self.received.get(trial)
        self.shown[trial] = header.score if header is not None else None
        return header

    def close_passed(self, trials: list[int]) -> list[int]:
        """Mark trials whose feedback is over without having opened; returns the new ones."""
        new = [t for t in trials if t not in self.opened and t not in self.closed]
        self.closed.update(new)
        return new
