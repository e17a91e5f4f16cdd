"""Which series of the export folder to follow.

Order of choice (logged): `scanner.series_number` if set, else `scanner.series_description`,
else the newest series: one whose first file arrived after the streamer started beats those that
were already in the folder, and among those already there the highest SeriesNumber wins. The
choice may change while nothing has been published; once a volume is published the series is
locked (a new series starting later is logged and ignored: restart the streamer, or set
`scanner.series_number`, to follow it).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from runtime.dicom import DicomPart

log = logging.getLogger(__name__)


@dataclass
class _Seen:
    uid: str
    number: int | None
    description: str
    arrival: int
    """0 = already in the folder at start-up; n = the n-th batch after start-up."""


class SeriesSelector:
    def __init__(self, series_number: int = 0, series_description: str = "", locked_uid: str | None = None) -> None:
        self.series_number = series_number
        self.series_description = series_description
        self.current: str | None = locked_uid
        self.locked = locked_uid is not None
        self._seen: dict[str, _Seen] = {}
        self._warned: set[str] = set()

    def _rank(self, s: _Seen) -> tuple[int, int]:
        return (s.arrival, s.number or 0)

    def note(self, part: DicomPart, arrival: int) -> None:
        """Record a part's series (call for every parsed part before `follows`)."""
        if part.series_uid not in self._seen:
            self._seen[part.series_uid] = _Seen(part.series_uid, part.series_number, part.series_description, arrival)
            if part.series_uid != self.current:
                log.info("series %s '%s' seen (%s)", part.series_number, part.series_description, part.series_uid)

    def choose(self) -> str | None:
        """(Re)decide which series to follow among those seen; returns its uid."""
        if self.locked:
            return self.current
        if self.series_number:
            cands = [s for s in self._seen.values() if s.number == self.series_number]
            why = f"scanner.series_number = {self.series_number}"
        elif self.series_description:
            cands = [s for s in self._seen.values() if s.description == self.series_description]
            why = f"scanner.series_description = '{self.series_description}'"
        else:
            cands = list(self._seen.values())
            why = "newest series" + (f" of {len(cands)}" if len(cands) > 1 else "")
        if not cands:
            return None
        best = max(cands, key=self._rank)
        if best.uid != self.current:
            if self.current is not None:
                log.info("switching to a newer series before anything was published")
            self.current = best.uid
            log.info("following series %s '%s' (%s; uid %s)", best.number, best.description, why, best.uid)
        return self.current

    def follows(self, part: DicomPart) -> bool:
        if part.series_uid == self.current:
            return True
        if part.series_uid not in self._warned:
            self._warned.add(part.series_uid)
            log.warning(
                "ignoring series %s '%s': following %s (set scanner.series_number to choose)",
                part.series_number,
                part.series_description,
                self.describe(),
            )
        return False

    def lock(self) -> None:
        self.locked = True

    def describe(self) -> str:
        s = self._seen.get(self.current or "")
        return f"series {s.number} '{s.description}'" if s else f"series {self.current}"
