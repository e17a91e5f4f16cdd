"""Session protocol: the scan-by-scan condition table of a run.

One table drives both the engine (which scans form the baseline, which scans are averaged for
each trial's score, when the score is computed) and the display (what screen to show at each
trigger), so the two can never disagree. Scan numbers are 0-based volume indices counted from
the first volume the scanner sends, discarded scans included.
"""

from __future__ import annotations

from dataclasses import dataclass

from runtime.config import ProtocolConfig
from runtime.errors import ConfigError

DISCARD = "discard"
BASELINE = "baseline"
REST = "rest"
INDUCTION = "induction"
DELAY = "delay"
CALC = "calc"
FEEDBACK = "feedback"
END = "end"


@dataclass(frozen=True)
class Trial:
    number: int
    """1-based trial number."""
    label: str
    induction: range
    """Scans of the induction period."""
    window: range
    """Scans averaged for the score (induction shifted by the haemodynamic delay)."""
    calc_scan: int
    """The scan at whose arrival the score is computed and published."""
    feedback: range
    """Scans during which the feedback is shown."""


@dataclass(frozen=True)
class ScanRow:
    scan: int
    condition: str
    trial: int
    """1-based trial the scan belongs to; 0 outside trials."""


@dataclass(frozen=True)
class ProtocolTable:
    rows: tuple[ScanRow, ...]
    trials: tuple[Trial, ...]
    baseline: range
    tr: float

    @property
    def n_scans(self) -> int:
        return len(self.rows)

    def condition(self, scan: int) -> str:
        return self.rows[scan].condition if 0 <= scan < len(self.rows) else END

    def trial_at_calc(self, scan: int) -> Trial | None:
        for t in self.trials:
            if t.calc_scan == scan:
                return t
        return None

    def trial_of(self, scan: int) -> Trial | None:
        n = self.rows[scan].trial if 0 <= scan < len(self.rows) else 0
        return self.trials[n - 1] if n else None


def build_table(p: ProtocolConfig, origin: str = "config") -> ProtocolTable:
    """Lay out discard → baseline → trials (rest, induction, delay, calc, feedback) → end."""
    t = p.trial
    cond: list[tuple[str, int]] = [(DISCARD, 0)] * p.discard_scans + [(BASELINE, 0)] * p.baseline_scans
    trials: list[Trial] = []
    for k in range(p.n_trials):
        number = k + 1
        if p.trial_onsets:
            onset = p.trial_onsets[k]
            if onset < len(cond):
                raise ConfigError(
                    f"{origin}: key 'protocol.trial_onsets': trial {number} starts at scan {onset}, "
                    f"before the end of the previous period (scan {len(cond)})"
                )
            cond += [(REST, number)] * (onset - len(cond))
        else:
            cond += [(REST, number)] * t.rest_scans
        ind = range(len(cond), len(cond) + t.induction_scans)
        cond += [(INDUCTION, number)] * t.induction_scans + [(DELAY, number)] * t.delay_scans
        calc_first = len(cond)
        cond += [(CALC, number)] * t.calc_scans
        fb = range(len(cond), len(cond) + t.feedback_scans)
        cond += [(FEEDBACK, number)] * t.feedback_scans
        window = range(ind.start + p.window_start, ind.stop - 1 + p.window_end + 1)
        if len(window) == 0:
            raise ConfigError(f"{origin}: keys 'protocol.window_start'/'window_end': the score window of trial {number} is empty")
        calc_scan = calc_first + t.calc_scans - 1
        if window.stop - 1 > calc_scan:
            raise ConfigError(
                f"{origin}: key 'protocol.window_end': the score window of trial {number} ends at scan "
                f"{window.stop - 1}, after its score scan {calc_scan}; lengthen protocol.trial.delay_scans"
            )
        label = p.trial_labels[k] if p.trial_labels else ""
        trials.append(Trial(number, label, ind, window, calc_scan, fb))
    cond += [(END, 0)] * p.end_scans
    rows = tuple(ScanRow(i, c, n) for i, (c, n) in enumerate(cond))
    baseline = range(p.discard_scans, p.discard_scans + p.baseline_scans)
    return ProtocolTable(rows=rows, trials=tuple(trials), baseline=baseline, tr=p.tr)
