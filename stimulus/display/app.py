"""The display's frame loop: triggers in, screens out, everything logged.

Each frame: read keys (panic, trigger key, rating keys), drain scores, drain triggers (each
counted trigger moves the scan index), choose the screen the condition table prescribes for
the current scan, draw it and flip. A screen change is logged to events.tsv with the flip's
timestamp (and saved as a PNG with --screenshots). Nothing in the loop waits: scores and
serial triggers are polled, and the flip is the only pacing.

Restart in the middle of a run: the display reads its own events file and sidecar, which hold
the wall-clock time of scan 0, and places the first trigger it counts at
round((t - t0) / TR); it then appends to the same events file. Scores for trials whose
feedback time passed while it was down arrive through the engine's replay endpoint but are
only logged (`skipped_feedback`), never shown; a trial whose feedback is still to come is
shown normally.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from runtime import protocol as P
from runtime.config import SessionConfig
from runtime.errors import UserError
from runtime.messages import ScoreHeader
from stimulus.display import screens as S
from stimulus.display.events_log import EventsLog, PreviousRun
from stimulus.display.geometry import mean_score, reward, step_rating
from stimulus.display.scores import DUPLICATE, LATE, ON_TIME, ScoreBook
from stimulus.display.triggers import KeyTriggers, Tick, TriggerCounter

_CONDITION_SCREEN = {
    P.DISCARD: S.FIXATION,
    P.BASELINE: S.FIXATION,
    P.REST: S.ITI,
    P.INDUCTION: S.INDUCTION,
    P.DELAY: S.FIXATION,
    P.CALC: S.FIXATION,
    P.END: S.END,
}

def _screen_of(condition: str) -> str:
    """The screen a condition prescribes (feedback: the disc/bar or its no-feedback stand-in)."""
    return S.FEEDBACK if condition == P.FEEDBACK else _CONDITION_SCREEN[condition]


MIN_FRAME_S = 0.004
"""Without vsync (Xvfb, some drivers) flips return at once; sleep so the loop does not spin."""


def open_window(cfg: SessionConfig) -> Any:
    """A PsychoPy window for the display (pyglet without a shadow window, so it runs headless)."""
    import pyglet

    pyglet.options["shadow_window"] = False
    from psychopy import logging as plog

    plog.console.setLevel(plog.ERROR)
    from psychopy import visual

    d = cfg.display
    if len(d.size) != 2:
        raise UserError(f"display.size: expected [width, height], got {d.size}")
    if len(d.background) != 3 or not all(-1 <= c <= 1 for c in d.background):
        raise UserError(f"display.background: expected 3 values in -1..1, got {d.background}")
    try:
        return visual.Window(
            size=tuple(d.size), fullscr=d.fullscreen, screen=d.screen, units="pix", color=tuple(d.background),
            colorSpace="rgb", allowGUI=not d.fullscreen, checkTiming=False, winType="pyglet",
        )
    except Exception as exc:  # no display server, no GL
        raise UserError(f"display: cannot open a window ({type(exc).__name__}: {exc}); is DISPLAY set (or run under xvfb-run)?") from None


@dataclass
class Rating:
    trial: int
    value: int
    t_onset: float | None = None
    scan: int = -1


class DisplayApp:
    """One run of the feedback display in an open window."""

    def __init__(
        self,
        cfg: SessionConfig,
        table: P.ProtocolTable,
        *,
        win: Any,
        triggers: Any,
        scores: Any,
        log: EventsLog,
        tr: float | None = None,
        screenshots: str | Path | None = None,
        max_scans: int | None = None,
        publish: Callable[[str, dict], None] | None = None,
        resume: PreviousRun | None = None,
        frame_hooks: list[Callable[[DisplayApp], None]] | None = None,
    ) -> None:
        from psychopy import core, event
        from psychopy import logging as plog

        self.cfg, self.d, self.table = cfg, cfg.display, table
        self.win, self.triggers, self.scores, self.log = win, triggers, scores, log
        self.tr = tr or table.tr
        self.clock: Callable[[], float] = core.getTime
        # win.flip() stamps with psychopy.logging.defaultClock; keys and triggers use core.getTime
        self._flip_offset = core.getTime() - plog.defaultClock.getTime()
        self._event = event
        self._check_keys()
        self.screens = S.Screens(win, self.d)
        self.key_triggers = triggers if isinstance(triggers, KeyTriggers) else None
        self.screenshots = Path(screenshots) if screenshots else None
        if self.screenshots:
            self.screenshots.mkdir(parents=True, exist_ok=True)
        self._saver = ThreadPoolExecutor(max_workers=1) if self.screenshots else None
        self.max_scans = max_scans
        self.publish = publish or (lambda name, data: None)
        self.frame_hooks = list(frame_hooks or [])
        self.counter = TriggerCounter(self.tr, factor=self.d.missed_trigger_factor)
        self.resume = resume
        if resume is not None and resume.first_trigger_wall is not None:
            # scan 0's time on this process's clock, from the wall-clock time the log kept
            origin = resume.first_trigger_wall - (time.time() - self.clock())
            self.counter.origin = origin
            self.counter.last_scan = resume.last_scan
            self.log.set_zero(origin)
        self.book = ScoreBook({t.number for t in table.trials}, run=cfg.session.run)
        self._rated: set[int] = set()
        for n, score in (resume.shown.items() if resume is not None else ()):
            self.book.restore(n, score)  # counts in the mean; never shown or rated again
            self._rated.add(n)
        self.scan = -1
        self.screen: str = S.WAITING
        self._screen_key: tuple = ()
        self._trial = 0
        self.rating: Rating | None = None
        self.ratings: dict[int, int | None] = {}
        self.end_onset: float | None = None
        self.aborted = False
        self.finished = False
        self.flips: list[tuple[str, int, float]] = []
        """(screen, scan, flip time) of every screen change, for tests and summaries."""
        self.frames = 0
        self._last_flip = 0.0

    def _check_keys(self) -> None:
        d = self.d
        if len(d.rating_keys) != 3 or len(set(d.rating_keys)) != 3:
            raise UserError(f"display.rating_keys: expected 3 different keys (down, up, confirm), got {d.rating_keys}")
        clash = {d.trigger_key, d.panic_key} & set(d.rating_keys) if d.rating else set()
        if d.trigger_key == d.panic_key or clash:
            raise UserError(
                f"display: trigger_key {d.trigger_key!r}, panic_key {d.panic_key!r} and rating_keys "
                f"{d.rating_keys} must all differ"
            )

    # ---------------------------------------------------------------- loop
    def run(self) -> int:
        """Run until the table (or --max-scans) is done, or the panic key; 0 = done, 1 = panic."""
        try:
            self._event.clearEvents()  # keys pressed before the run are not triggers or answers
            self._change_screen(S.WAITING, trial=0)
            while not (self.finished or self.aborted):
                for hook in self.frame_hooks:
                    hook(self)
                self._read_keys()
                if self.aborted:
                    break
                self._read_scores()
                for t in self.triggers.poll():
                    self._on_trigger(t)
                self._update_screen()
                self._frame()
        finally:
            self._shutdown()
        return 1 if self.aborted else 0

    def _frame(self) -> None:
        self.screens.draw(self.screen)
        self._flip()

    def _flip(self) -> float:
        t = self.win.flip()
        now = self.clock()
        t = now if t is None else t + self._flip_offset
        self.frames += 1
        if now - self._last_flip < MIN_FRAME_S:
            time.sleep(MIN_FRAME_S - (now - self._last_flip))
        self._last_flip = self.clock()
        return t

    # ---------------------------------------------------------------- input
    def _read_keys(self) -> None:
        for name, t in self._event.getKeys(timeStamped=True):
            if name == self.d.panic_key:
                self._panic(t)
                return
            if self.key_triggers is not None and self.key_triggers.offer(name, t):
                continue
            if self.rating is not None and self.rating.t_onset is not None and name in self.d.rating_keys:
                self._rating_key(name, t)

    def _panic(self, t: float) -> None:
        self.aborted = True
        self.log.write(t, "panic", scan=self._scan(), trial=self._trial, note="panic key pressed; run aborted")
        self.publish("panic", {"scan": self.scan, "trial": self._trial, "onset": self.log.onset(t)})

    def _read_scores(self) -> None:
        for header in self.scores.poll(self.scan):
            self._on_score(header, self.clock())

    def _on_score(self, h: ScoreHeader, t: float) -> None:
        status = self.book.receive(h, t)
        if status == ON_TIME:
            note = "no feedback (engine)" if h.score is None else ""
            self.log.write(t, "score_received", score=h.score, scan=self._scan(), trial=h.trial, note=note)
        elif status == LATE:
            fb = self.table.trials[h.trial - 1].feedback
            note = f"arrived at scan {self.scan}; feedback began at scan {fb.start}; not shown"
            self.log.write(t, "late_score", score=h.score, scan=self._scan(), trial=h.trial, note=note)
        elif status != DUPLICATE:
            self.log.write(t, "ignored_score", score=h.score, scan=self._scan(), trial=h.trial, note=f"{status} (run {h.run})")

    def _trial_at(self, scan: int) -> int:
        return self.table.rows[scan].trial if 0 <= scan < self.table.n_scans else 0

    def _scan(self) -> int | None:
        return None if self.scan < 0 else self.scan

    def _on_trigger(self, t: float) -> None:
        first = self.counter.last_t is None
        tick: Tick | None = self.counter.register(t)
        if tick is None:
            self.log.write(t, "extra_trigger", scan=self._scan(), note=f"{(t - (self.counter.last_t or t)):.3f} s after the previous trigger")
            return
        if first:
            if self.log.t_zero is None:
                self.log.set_zero(tick.t)
                self.log.write_sidecar(time.time() - (self.clock() - tick.t), self._sidecar_extra())
            note = "restart: resumed from events file" if self.resume is not None else "first trigger"
            self.log.write(t, "display_start", scan=tick.scan, trial=self._trial_at(tick.scan), note=note)
        for s in tick.missed:
            self.log.write(t - (tick.scan - s) * self.tr, "missed_trigger", scan=s, trial=self._trial_at(s),
                           note="inferred from the trigger interval")
        if tick.resumed:
            self.log.write(t, "display_gap", scan=tick.scan, note=f"scans {tick.resumed[0]}-{tick.resumed[-1]} passed while the display was not running")
        self.scan = tick.scan
        trial = self._trial_at(tick.scan)
        self.log.write(t, "trigger", scan=tick.scan, trial=trial)
        self.publish("trigger", {"scan": tick.scan, "onset": self.log.onset(t), "missed": list(tick.missed)})
        # trials whose feedback is wholly past without having been shown
        passed = [tr.number for tr in self.table.trials if len(tr.feedback) and tr.feedback.stop <= tick.scan]
        for n in self.book.close_passed(passed):
            h = self.book.received.get(n)
            self.log.write(t, "skipped_feedback", score=h.score if h else None, scan=tick.scan, trial=n,
                           note="its feedback scans passed without a counted trigger (display not running)")

    # ---------------------------------------------------------------- screens
    def _table_done(self, now: float) -> bool:
        """The last scan of the table (or of --max-scans) is over: a trigger beyond it came, or
        one TR passed since its own trigger."""
        last = self.table.n_scans - 1
        if self.max_scans is not None:
            last = min(last, self.max_scans - 1)
        if self.scan > last:
            return True
        return self.scan == last and self.counter.last_t is not None and now - self.counter.last_t >= self.tr

    def _update_screen(self) -> None:
        now = self.clock()
        if self.scan < 0:
            return
        scan = self.scan
        cond = self.table.condition(scan)
        trial = self._trial_at(scan)
        done = self._table_done(now)
        if self.max_scans is not None and scan >= self.max_scans:
            cond, trial = P.END, 0
        self._update_rating(cond, trial, done)
        if self.rating is not None:
            if self.screen != S.RATING:
                self.screens.set_rating(self.rating.value)
                self._change_screen(S.RATING, trial=self.rating.trial)
                self.rating.t_onset = self.flips[-1][2]
                self.rating.scan = scan
            return
        if done or cond == P.END:
            if self.screen != S.END:
                shown = mean_score(self.book.shown.values())
                self.screens.set_end(shown, reward(shown, self.d.reward_per_point), self.d.reward_unit)
                self._change_screen(S.END, trial=0, score=shown, note=self._end_note(shown))
                self.end_onset = self.flips[-1][2]
            if done and self.end_onset is not None and now - self.end_onset >= self.d.end_screen_s:
                self.finished = True
                self.log.write(now, "run_end", scan=scan, note=f"{self.counter.n_received} triggers, {self.counter.n_missed} missed")
                self.publish("run_end", {"scan": scan})
            return
        if cond == P.FEEDBACK:
            if trial not in self.book.opened and trial not in self.book.closed:
                h = self.book.open(trial)
                score = None if h is None else h.score
                self.screens.set_score(score)
                if score is None:
                    why = "score not received in time" if h is None else "engine sent no feedback"
                    self._change_screen(S.NO_FEEDBACK, trial=trial, note=why)
                else:
                    self._change_screen(S.FEEDBACK, trial=trial, score=score)
            return
        self._change_screen(_CONDITION_SCREEN[cond], trial=trial)

    def _end_note(self, shown: float | None) -> str:
        r = reward(shown, self.d.reward_per_point)
        return f"mean of {sum(s is not None for s in self.book.shown.values())} shown scores; reward {r:g} {self.d.reward_unit}"

    def _update_rating(self, cond: str, trial: int, done: bool) -> None:
        if not self.d.rating:
            return
        if self.rating is None:
            # start after a trial's feedback (or no-feedback) screen, once it is over
            for n in sorted(self.book.opened - self._rated):
                fb = self.table.trials[n - 1].feedback
                if self.scan >= fb.stop:
                    self._rated.add(n)
                    if cond == P.INDUCTION or done:  # no rest scan left to rate in
                        self.ratings[n] = None
                        self.log.write(self.clock(), "rating", scan=self.scan, trial=n, note="no scan left for the rating before the next induction")
                    else:
                        self.rating = Rating(trial=n, value=self.d.rating_start)
                    break
            return
        # time out when the next induction begins or the run is over
        if cond == P.INDUCTION or done:
            self._finish_rating(self.clock(), None, "not confirmed before the " + ("end of the run" if done else "next induction"))

    def _rating_key(self, name: str, t: float) -> None:
        assert self.rating is not None
        down, up, confirm = self.d.rating_keys
        if name == confirm:
            self._finish_rating(t, self.rating.value)
        else:
            self.rating.value = step_rating(self.rating.value, -1 if name == down else 1)
            self.screens.set_rating(self.rating.value)

    def _finish_rating(self, t: float, value: int | None, why: str = "") -> None:
        r = self.rating
        assert r is not None and r.t_onset is not None
        self.ratings[r.trial] = value
        self.log.write(None, "rating", onset=self.log.onset(r.t_onset), duration=t - r.t_onset, response=value,
                       scan=r.scan, trial=r.trial, note=why)
        self.publish("rating", {"trial": r.trial, "response": value})
        self.rating = None

    def _change_screen(self, name: str, *, trial: int, score: float | None = None, note: str = "") -> None:
        key = (name, trial)
        if key == self._screen_key:
            return
        self.screen, self._screen_key, self._trial = name, key, trial
        self.screens.draw(name)
        if self.screenshots is not None:
            self.win.getMovieFrame(buffer="back")
        t = self._flip()
        scan = self.scan
        self.flips.append((name, scan, t))
        if self.screenshots is not None and self.win.movieFrames:
            img = self.win.movieFrames.pop()
            self.win.movieFrames.clear()
            fname = "waiting.png" if scan < 0 else f"scan-{scan:04d}_{name}.png"
            assert self._saver is not None
            self._saver.submit(img.save, self.screenshots / fname)
        duration = self._planned_duration(name, scan)
        if name != S.RATING:  # rating rows are written when answered (duration = response time)
            self.log.write(t, name, duration=duration, score=score, scan=None if scan < 0 else scan,
                           trial=trial, note=note)
        self.publish("onset", {"screen": name, "scan": scan, "trial": trial, "onset": self.log.onset(t)})

    def _planned_duration(self, name: str, scan: int) -> float:
        if scan < 0 or name in (S.WAITING, S.RATING):
            return 0.0
        if name == S.END:
            return max(self.d.end_screen_s, self.tr * max(0, self.table.n_scans - scan))
        # the screen lasts while the table keeps prescribing it for the same trial
        key = _screen_of(self.table.condition(scan)), self._trial_at(scan)
        n = 1
        while scan + n < self.table.n_scans and (_screen_of(self.table.condition(scan + n)), self._trial_at(scan + n)) == key:
            n += 1
        return n * self.tr

    def _sidecar_extra(self) -> dict:
        d = self.d
        return {
            "TaskName": self.cfg.session.task,
            "RepetitionTime": self.tr,
            "FeedbackKind": d.feedback,
            "MaxRadiusPixels": d.max_radius_px,
            "TriggerSource": "serial" if d.trigger_serial else "key",
            "TriggerKey": d.trigger_key,
            "PanicKey": d.panic_key,
            "RatingKeys": d.rating_keys if d.rating else [],
            "StimulusPresentation": {"SoftwareName": "PsychoPy", "SoftwareVersion": _psychopy_version()},
        }

    def _shutdown(self) -> None:
        for closer in (self.triggers.close, self.scores.close):
            try:
                closer()
            except Exception as exc:  # keep closing the rest
                print(f"decnef display: warning: {exc}", file=sys.stderr)
        if self._saver is not None:
            self._saver.shutdown(wait=True)
        self.log.close()


def _psychopy_version() -> str:
    try:
        import psychopy

        return psychopy.__version__
    except Exception:
        return ""
