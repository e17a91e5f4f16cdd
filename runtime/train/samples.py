"""From a localizer run's BIDS events to labelled scan windows (the training samples).

Why a module of its own: which scans form a sample *is* the feature definition. A sample is a
`TrialWindow` (scans averaged, scan at which the feature is read) exactly like an online trial,
so `runtime.features.run_features` computes it the way the engine computes a trial's feature.

Rules (METHOD.md §1.2 item 1):
- events of the same class closer than one TR are merged into one block (per-image events of a
  block design become the block);
- a block [onset, onset + duration) covers scans round(onset/TR) .. round(end/TR) - 1, shifted by
  round(hrf_delay_s/TR) scans for the haemodynamic delay;
- the shifted block is cut into consecutive windows of `window_scans` (1 = one sample per volume;
  a block shorter than that gives one shorter window); the feature is read at the window's last
  scan (its calc scan);
- with a rest class, scans outside every event (any trial_type) form rest blocks, shifted and
  cut the same way; baseline and discarded scans never become samples.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

from runtime.errors import UserError
from runtime.features import TrialWindow


@dataclass(frozen=True)
class Event:
    onset: float
    duration: float
    trial_type: str


@dataclass(frozen=True)
class ClassSpec:
    name: str
    trial_types: frozenset[str]


@dataclass(frozen=True)
class Block:
    label: str
    scans: range
    """Scans the block covers after the haemodynamic shift."""
    number: int
    """Block number within its run, in time order (for leave-block-out folds and permutations)."""


@dataclass(frozen=True)
class Sample:
    run: int
    label: str
    block: int
    window: range
    calc_scan: int

    @property
    def trial_window(self) -> TrialWindow:
        return TrialWindow(self.window, self.calc_scan)


def read_events(path: Path) -> list[Event]:
    """BIDS events.tsv: needs onset, duration, trial_type columns; 'n/a' durations are 0."""
    if not path.is_file():
        raise UserError(f"{path}: events file not found (key 'train.runs[].events')")
    try:
        with path.open(newline="", encoding="utf-8") as fh:
            rows = list(csv.DictReader(fh, delimiter="\t"))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise UserError(f"{path}: cannot read events file: {exc}") from None
    if not rows or not {"onset", "duration", "trial_type"} <= set(rows[0]):
        raise UserError(f"{path}: expected a tab-separated BIDS events file with columns onset, duration, trial_type")
    events = []
    for n, r in enumerate(rows, start=2):
        try:
            onset = float(r["onset"])
            dur = 0.0 if r["duration"] in ("", "n/a") else float(r["duration"])
        except (TypeError, ValueError):
            raise UserError(f"{path}: line {n}: onset/duration must be numbers, got {r['onset']!r}, {r['duration']!r}") from None
        if onset < 0 or dur < 0:
            raise UserError(f"{path}: line {n}: onset and duration must be >= 0")
        events.append(Event(onset, dur, (r["trial_type"] or "").strip()))
    return sorted(events, key=lambda e: e.onset)


def parse_classes(specs: list[str], rest_class: str) -> list[ClassSpec]:
    """`train.classes` items: "face", "face+body" (merged), or "stim=face+body" (named)."""
    if not specs:
        raise UserError("key 'train.classes': expected at least one class (trial_type values of the events)")
    out: list[ClassSpec] = []
    for s in specs:
        name, _, types = s.partition("=") if "=" in s else (s, "", s)
        name = name.strip()
        members = frozenset(t.strip() for t in types.split("+") if t.strip())
        if not name or not members:
            raise UserError(f"key 'train.classes': bad class {s!r}; expected 'type', 'a+b' or 'name=a+b'")
        out.append(ClassSpec(name, members))
    names = [c.name for c in out] + ([rest_class] if rest_class else [])
    if len(set(names)) != len(names):
        raise UserError(f"key 'train.classes'/'train.rest_class': class names must be unique, got {names}")
    if len(names) < 2:
        raise UserError("key 'train.classes': a decoder needs two classes (give two classes, or one class and train.rest_class)")
    seen: set[str] = set()
    for c in out:
        if c.trial_types & seen:
            raise UserError(f"key 'train.classes': trial_type(s) {sorted(c.trial_types & seen)} belong to two classes")
        seen |= c.trial_types
    return out


def _scan_span(onset: float, duration: float, tr: float) -> tuple[int, int]:
    a = int(round(onset / tr))
    b = max(a + 1, int(round((onset + duration) / tr)))
    return a, b


def blocks_from_events(events: list[Event], classes: list[ClassSpec], rest_class: str, tr: float,
                       delay: int, n_scans: int) -> list[Block]:
    """Class blocks (merged events) and rest blocks, shifted by `delay` scans, clipped to the run."""
    of_type = {t: c.name for c in classes for t in c.trial_types}
    spans: list[tuple[str, int, int]] = []  # (label, first, stop) in unshifted scans
    busy = [False] * n_scans
    cur: list | None = None
    for e in events:
        a, b = _scan_span(e.onset, e.duration, tr)
        for s in range(max(a, 0), min(b, n_scans)):
            busy[s] = True
        label = of_type.get(e.trial_type)
        if label is None:
            cur = None
            continue
        if cur is not None and cur[0] == label and e.onset - cur[3] < tr:
            cur[2] = max(cur[2], b)
            cur[3] = max(cur[3], e.onset + e.duration)
        else:
            cur = [label, a, b, e.onset + e.duration]
            spans.append(cur)  # type: ignore[arg-type]
    items = [(s[0], s[1], s[2]) for s in spans]
    if rest_class:
        s = 0
        while s < n_scans:
            if busy[s]:
                s += 1
                continue
            e = s
            while e < n_scans and not busy[e]:
                e += 1
            items.append((rest_class, s, e))
            s = e
    items.sort(key=lambda t: t[1])
    blocks = []
    for label, a, b in items:
        lo, hi = a + delay, min(b + delay, n_scans)
        if hi > lo:
            blocks.append(Block(label, range(lo, hi), len(blocks)))
    return blocks


def baseline_range(events: list[Event], tr: float, discard: int, baseline_scans: int, origin: str) -> range:
    """Explicit count after the discarded scans, or every scan before the first event."""
    if baseline_scans > 0:
        return range(discard, discard + baseline_scans)
    first = int(round(events[0].onset / tr)) if events else 0
    base = range(discard, first)
    if len(base) < 2:
        raise UserError(
            f"{origin}: only {len(base)} scan(s) before the first event (after {discard} discarded); "
            "the z-score baseline needs at least 2 - set train.baseline_scans"
        )
    return base


def samples_from_blocks(blocks: list[Block], run: int, window_scans: int, first_usable: int) -> list[Sample]:
    """Cut each block into windows of `window_scans`; drop scans before `first_usable`."""
    out = []
    for b in blocks:
        lo = max(b.scans.start, first_usable)
        hi = b.scans.stop
        if hi <= lo:
            continue
        if hi - lo < window_scans:
            wins = [range(lo, hi)]
        else:
            wins = [range(s, s + window_scans) for s in range(lo, hi - window_scans + 1, window_scans)]
        for w in wins:
            out.append(Sample(run, b.label, b.number, w, w.stop - 1))
    return out
