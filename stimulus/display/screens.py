"""The display's screens: every stimulus is created once, then only drawn.

Creating PsychoPy stimuli (text especially) takes milliseconds to tens of milliseconds, too
slow to do at a trigger; so `Screens` builds them all when the window opens, renders each once
off-screen to warm up fonts and shaders, and afterwards a screen change only sets a radius,
a bar height, a marker position or a text.

Disc feedback follows the ATR DecNef program (METHOD.md §1.4 item 10, E14): a filled disc of
radius R = round(score / 100 · R_max), thin reference circles at R_max and R_max/2 drawn over
it (so both stay visible whatever the score), and a fixation dot on top.
"""

from __future__ import annotations

from typing import Any

from runtime.config import DisplayConfig
from stimulus.display.geometry import bar_height, disc_radius, rating_x

WAITING = "waiting"
FIXATION = "fixation"
ITI = "iti"
INDUCTION = "induction"
FEEDBACK = "feedback"
NO_FEEDBACK = "no_feedback"
RATING = "rating"
END = "end"
SCREENS = (WAITING, FIXATION, ITI, INDUCTION, FEEDBACK, NO_FEEDBACK, RATING, END)

WHITE = (1.0, 1.0, 1.0)
GREY = (0.0, 0.0, 0.0)
DIM = (-0.4, -0.4, -0.4)
CUE = (-0.2, 0.8, -0.2)
DISC = (-1.0, 0.2, 1.0)
"""Disc fill (a blue the reference circles and fixation dot are not), also the bar fill."""

DOT_RADIUS = 10  # fixation dot 20 px (E14)
RING_RADIUS = 45  # fixation ring 90 px (E14)
EDGES = 360


class Screens:
    """All stimuli of the display for one window; `draw(name)` draws one screen."""

    def __init__(self, win: Any, cfg: DisplayConfig) -> None:
        from psychopy import visual  # lazily: PsychoPy only inside the display

        self.win = win
        self.cfg = cfg
        self.kind = cfg.feedback
        r_max = cfg.max_radius_px
        self.max_radius = r_max
        self.score: float | None = None
        self.rating: int = cfg.rating_start
        text_h = max(16, r_max // 8)

        def circle(radius: float, **kw: Any) -> Any:
            kw.setdefault("lineColor", None)
            kw.setdefault("fillColor", None)
            return visual.Circle(win, radius=radius, edges=EDGES, units="pix", **kw)

        def text(s: str, pos: tuple[float, float] = (0, 0), color: tuple = WHITE, h: int = text_h) -> Any:
            return visual.TextStim(win, text=s, pos=pos, height=h, color=color, units="pix", wrapWidth=win.size[0] * 0.9)

        self.dot = circle(DOT_RADIUS, fillColor=WHITE)
        self.dot_dim = circle(DOT_RADIUS, fillColor=DIM)
        self.ring = circle(RING_RADIUS, lineColor=WHITE, lineWidth=2)
        self.cue_ring = circle(RING_RADIUS, lineColor=CUE, lineWidth=4)
        self.cue_text = text(cfg.induction_text, pos=(0, RING_RADIUS + text_h * 1.5), color=CUE)
        self.waiting_text = text("Waiting for the scanner…", pos=(0, RING_RADIUS + text_h * 1.5), color=GREY)
        # disc feedback
        self.ref_outer = circle(r_max, lineColor=GREY, lineWidth=2)
        self.ref_inner = circle(r_max / 2, lineColor=GREY, lineWidth=2)
        self.disc = circle(1, fillColor=DISC)
        self._disc_r = 0
        # bar feedback: a thermometer as tall as the disc is wide
        self.bar_w, self.bar_h = max(40, r_max // 4), 2 * r_max
        self.bar_frame = visual.Rect(win, width=self.bar_w + 8, height=self.bar_h + 8, units="pix", lineColor=GREY, lineWidth=2, fillColor=None)
        self.bar_mid = visual.Line(win, start=(-self.bar_w / 2 - 14, 0), end=(self.bar_w / 2 + 14, 0), units="pix", lineColor=GREY, lineWidth=2)
        self.bar_fill = visual.Rect(win, width=self.bar_w, height=1, units="pix", lineColor=None, fillColor=DISC)
        self._bar_h = 0
        self.no_feedback_text = text("No feedback this time", pos=(0, -(RING_RADIUS + text_h * 1.5)), color=GREY)
        # rating: 0-10 scale
        self.scale_w = int(min(win.size[0] * 0.7, 4 * r_max))
        self.rating_prompt = text(cfg.rating_prompt, pos=(0, text_h * 3))
        self.scale_line = visual.Line(win, start=(-self.scale_w / 2, 0), end=(self.scale_w / 2, 0), units="pix", lineColor=WHITE, lineWidth=2)
        self.ticks = [
            visual.Line(win, start=(rating_x(v, self.scale_w), -8), end=(rating_x(v, self.scale_w), 8), units="pix", lineColor=WHITE, lineWidth=2)
            for v in range(11)
        ]
        label_h = max(12, text_h * 2 // 3)
        self.tick_labels = [text(str(v), pos=(rating_x(v, self.scale_w), -(24 + label_h)), h=label_h) for v in (0, 5, 10)]
        self.marker = visual.Rect(win, width=10, height=36, units="pix", fillColor=CUE, lineColor=None)
        self.end_text = text("")
        self.set_rating(self.rating)
        self._warm_up()

    def _warm_up(self) -> None:
        """Draw everything once off-screen so the first real frame is not slow, then clear."""
        for name in SCREENS:
            self.draw(name)
        self.win.clearBuffer()

    def set_score(self, score: float | None) -> None:
        """Prepare the feedback screen for `score` (None = no disc or bar)."""
        self.score = score
        if score is None:
            return
        if self.kind == "disc":
            r = disc_radius(score, self.max_radius)
            if r != self._disc_r and r > 0:
                self.disc.radius = r
            self._disc_r = r
        else:
            h = bar_height(score, self.bar_h)
            if h != self._bar_h and h > 0:
                self.bar_fill.height = h
                self.bar_fill.pos = (0, -self.bar_h / 2 + h / 2)
            self._bar_h = h

    def set_rating(self, value: int, confirmed: bool = False) -> None:
        self.rating = value
        self.marker.pos = (rating_x(value, self.scale_w), 0)
        self.marker.fillColor = WHITE if confirmed else CUE

    def set_end(self, mean: float | None, reward: float, unit: str) -> None:
        mean_txt = "n/a" if mean is None else f"{mean:.0f}"
        reward_txt = f"{reward:.0f}" if float(reward).is_integer() else f"{reward:.2f}"
        self.end_text.text = f"Mean score: {mean_txt}\nReward: {reward_txt} {unit}".rstrip()

    @property
    def disc_radius_px(self) -> int:
        return self._disc_r

    def draw(self, name: str) -> None:
        if name == WAITING:
            self.waiting_text.draw()
            self.dot.draw()
        elif name == FIXATION:
            self.ring.draw()
            self.dot.draw()
        elif name == ITI:
            self.dot_dim.draw()
        elif name == INDUCTION:
            self.cue_ring.draw()
            self.cue_text.draw()
            self.dot.draw()
        elif name == FEEDBACK:
            self._draw_feedback()
        elif name == NO_FEEDBACK:
            self.ring.draw()
            self.no_feedback_text.draw()
            self.dot.draw()
        elif name == RATING:
            self.rating_prompt.draw()
            self.scale_line.draw()
            for stim in self.ticks + self.tick_labels:
                stim.draw()
            self.marker.draw()
        elif name == END:
            self.end_text.draw()
        else:
            raise ValueError(f"unknown screen {name!r}")

    def _draw_feedback(self) -> None:
        if self.kind == "disc":
            if self._disc_r > 0 and self.score is not None:
                self.disc.draw()
            self.ref_outer.draw()
            self.ref_inner.draw()
            self.dot.draw()
        else:
            self.bar_frame.draw()
            if self._bar_h > 0 and self.score is not None:
                self.bar_fill.draw()
            self.bar_mid.draw()
