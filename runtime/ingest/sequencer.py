"""Publish volumes strictly in temporal-index order, whatever order they complete in.

Why: downstream (realignment, detrend, trial windows) assumes volume k comes before k+1, and the
scanner's export may deliver files out of order, late, twice or never. Pure logic, no clock of
its own (the caller passes `now`), so it is tested without files or sockets.

Rules:
- volume k+1 is held until k is published;
- k is declared missing (a gap) when a later volume has been held for `gap_timeout` seconds
  without k completing; the gap is reported once and then the held volumes are released;
- a volume at or below the last published/declared index is late: it is reported and dropped,
  never published out of order.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from runtime.volume import Volume


@dataclass
class Publish:
    volume: Volume
    t_file_complete: float
    gap_before: list[int] = field(default_factory=list)


@dataclass
class Gap:
    indices: list[int]
    reason: str = "timeout"


Action = Publish | Gap


class Sequencer:
    """Orders completed volumes; `next_index` is the next index to publish."""

    def __init__(self, gap_timeout: float, *, next_index: int = 0, gaps: set[int] | None = None) -> None:
        self.gap_timeout = gap_timeout
        self.next_index = next_index
        self.gaps: set[int] = set(gaps or ())
        self._held: dict[int, tuple[Volume, float, float]] = {}  # index -> (vol, t_file_complete, held since)

    def is_settled(self, index: int) -> bool:
        """Published or declared missing: any further file for it is late/duplicate."""
        return index < self.next_index

    def is_held(self, index: int) -> bool:
        return index in self._held

    @property
    def held(self) -> list[int]:
        return sorted(self._held)

    def deadline(self) -> float | None:
        """Monotonic-ish time (same clock as `now`) when the next gap will be declared."""
        if not self._held:
            return None
        return min(since for _, _, since in self._held.values()) + self.gap_timeout

    def offer(self, vol: Volume, t_file_complete: float, now: float) -> list[Action]:
        """A volume just completed. Returns what to do (possibly nothing: it is held)."""
        k = vol.index
        if k < self.next_index or k in self._held:
            raise ValueError(f"volume {k} is late or already held; check is_settled/is_held first")
        self._held[k] = (vol, t_file_complete, now)
        return self._release([])

    def _release(self, gap_before: list[int]) -> list[Action]:
        out: list[Action] = []
        while self.next_index in self._held:
            vol, t_done, _ = self._held.pop(self.next_index)
            out.append(Publish(vol, t_done, gap_before))
            gap_before = []
            self.next_index += 1
        return out

    def tick(self, now: float) -> list[Action]:
        """Declare gaps whose timeout has passed; returns the resulting actions."""
        out: list[Action] = []
        while self._held:
            due = self.deadline()
            if due is None or now < due:
                break
            out += self._skip_to(min(self._held), "timeout")
        return out

    def flush(self) -> list[Action]:
        """End of stream: declare every hole before held volumes and release them all."""
        out: list[Action] = []
        while self._held:
            out += self._skip_to(min(self._held), "end of stream")
        return out

    def _skip_to(self, k: int, reason: str) -> list[Action]:
        missing = list(range(self.next_index, k))
        self.gaps.update(missing)
        self.next_index = k
        return [Gap(missing, reason), *self._release(missing)]
