"""Participant-side feedback display, clocked by scanner triggers.

Only `app` and `screens` touch PsychoPy, and only when a window is made; the other modules
(trigger counting, score sources, events log, geometry) are plain Python so they can be tested
and reused without a display.
"""
