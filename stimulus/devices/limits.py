"""Hard safety limits for thermal stimulation (METHOD.md §6.3).

The module constants below are the envelope no config can lift: a config may only make a limit
*stricter*. `SafetyLimits.from_config` refuses (ConfigError, one line naming the key) any config
value that would loosen a hard limit instead of silently clamping it, because a session that
runs with different limits from the ones its config states is worse than one that does not
start.

Choices (documented here because they are safety decisions):
- Ceiling: hard 52.0 °C, default 50.0 °C.
- Above 48.0 °C the plateau (time held at the target, ramps excluded) is at most 2.0 s.
- Any plateau is at most 30 s (tonic stimuli beyond that need a different tool).
- Floor: 10.0 °C (the TCS II legal minimum; colder risks cold injury).
- Baseline 20–40 °C (TCS II `N` range).
- ISI (onset to onset) ≥ 10 s by default; a config may raise it but never below 5 s, and a new
  stimulus is never started while the previous one is still predicted to be running.
- Per-run budget of "suprathreshold" seconds: time predicted above baseline + 2 °C, default
  120 s, hard maximum 300 s.
- Ramp speeds ≤ 100 °C/s (below every supported thermode's maximum).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from runtime.errors import ConfigError

ABSOLUTE_MAX_C = 52.0
DEFAULT_MAX_C = 50.0
ABSOLUTE_MIN_C = 10.0
PLATEAU_BOUND_C = 48.0
MAX_PLATEAU_ABOVE_BOUND_S = 2.0
ABSOLUTE_MAX_PLATEAU_S = 30.0
BASELINE_MIN_C = 20.0
BASELINE_MAX_C = 40.0
DEFAULT_BASELINE_C = 32.0
HARD_MIN_ISI_S = 5.0
DEFAULT_MIN_ISI_S = 10.0
ABSOLUTE_MAX_BUDGET_S = 300.0
DEFAULT_BUDGET_S = 120.0
SUPRATHRESHOLD_MARGIN_C = 2.0
ABSOLUTE_MAX_RAMP_C_S = 100.0
DEFAULT_RAMP_C_S = 30.0
READBACK_TOLERANCE_C = 1.0
"""A measured temperature this far above the ceiling means the device is not doing what we
asked (e.g. a Medoc program hotter than configured): abort."""


class SafetyViolation(Exception):
    """A stimulation command refused because it would break a safety limit."""


@dataclass(frozen=True)
class SafetyLimits:
    """The effective limits of one session (always within the hard-coded envelope)."""

    max_temperature_c: float = DEFAULT_MAX_C
    min_temperature_c: float = ABSOLUTE_MIN_C
    baseline_c: float = DEFAULT_BASELINE_C
    max_plateau_s: float = ABSOLUTE_MAX_PLATEAU_S
    min_isi_s: float = DEFAULT_MIN_ISI_S
    budget_s: float = DEFAULT_BUDGET_S
    rise_rate_c_s: float = DEFAULT_RAMP_C_S
    return_rate_c_s: float = DEFAULT_RAMP_C_S

    def __post_init__(self) -> None:
        _check_limits(self, origin="SafetyLimits")

    @property
    def suprathreshold_c(self) -> float:
        """Temperature above which time counts against the per-run budget."""
        return self.baseline_c + SUPRATHRESHOLD_MARGIN_C

    @classmethod
    def from_config(cls, cfg: Any, origin: str = "stimulator") -> SafetyLimits:
        """Limits from a `StimulatorConfig`; raises ConfigError if it tries to loosen one.

        Struct constructors do not validate, so this re-checks everything the TOML loader
        checks: a config built in code cannot bypass the envelope either.
        """
        values = {
            "max_temperature_c": float(cfg.max_temperature_c),
            "baseline_c": float(cfg.baseline_c),
            "min_isi_s": float(cfg.min_isi_s),
            "budget_s": float(cfg.budget_s),
            "rise_rate_c_s": float(getattr(cfg, "rise_rate_c_s", DEFAULT_RAMP_C_S)),
            "return_rate_c_s": float(getattr(cfg, "return_rate_c_s", DEFAULT_RAMP_C_S)),
        }
        limits = _build(values, origin)
        for key in ("high_c", "low_c"):
            level = float(getattr(cfg, key))
            if not math.isfinite(level) or level > limits.max_temperature_c or level < limits.min_temperature_c:
                raise ConfigError(
                    f"{origin}.{key}: got {level!r}; expected {limits.min_temperature_c}–"
                    f"{limits.max_temperature_c} °C ({origin}.max_temperature_c)"
                )
        plateau = float(cfg.plateau_s)
        if not (0 < plateau <= limits.max_plateau_s):
            raise ConfigError(f"{origin}.plateau_s: got {plateau!r}; expected 0 < plateau_s <= {limits.max_plateau_s}")
        if float(cfg.high_c) > PLATEAU_BOUND_C and plateau > MAX_PLATEAU_ABOVE_BOUND_S:
            raise ConfigError(
                f"{origin}.plateau_s: got {plateau!r} with high_c above {PLATEAU_BOUND_C} °C; "
                f"expected <= {MAX_PLATEAU_ABOVE_BOUND_S} s"
            )
        return limits


def _build(values: dict[str, float], origin: str) -> SafetyLimits:
    try:
        return SafetyLimits(**values)
    except ConfigError as exc:
        # Re-prefix with the config section so the message names the key the user wrote.
        raise ConfigError(str(exc).replace("SafetyLimits", origin, 1)) from None


def _check_limits(lim: SafetyLimits, origin: str) -> None:
    def bad(key: str, value: float, expected: str) -> ConfigError:
        return ConfigError(f"{origin}.{key}: got {value!r}; expected {expected} (hard-coded limit; configs may only lower limits)")

    for key, value in vars(lim).items():
        if not math.isfinite(value):
            raise bad(key, value, "a finite number")
    if not (lim.min_temperature_c < lim.max_temperature_c <= ABSOLUTE_MAX_C):
        raise bad("max_temperature_c", lim.max_temperature_c, f"<= {ABSOLUTE_MAX_C} °C")
    if not (ABSOLUTE_MIN_C <= lim.min_temperature_c):
        raise bad("min_temperature_c", lim.min_temperature_c, f">= {ABSOLUTE_MIN_C} °C")
    if not (BASELINE_MIN_C <= lim.baseline_c <= BASELINE_MAX_C) or lim.baseline_c >= lim.max_temperature_c:
        raise bad("baseline_c", lim.baseline_c, f"{BASELINE_MIN_C}–{BASELINE_MAX_C} °C and below the ceiling")
    if not (0 < lim.max_plateau_s <= ABSOLUTE_MAX_PLATEAU_S):
        raise bad("max_plateau_s", lim.max_plateau_s, f"0 < value <= {ABSOLUTE_MAX_PLATEAU_S} s")
    if not (lim.min_isi_s >= HARD_MIN_ISI_S):
        raise bad("min_isi_s", lim.min_isi_s, f">= {HARD_MIN_ISI_S} s")
    if not (0 <= lim.budget_s <= ABSOLUTE_MAX_BUDGET_S):
        raise bad("budget_s", lim.budget_s, f"0–{ABSOLUTE_MAX_BUDGET_S} s")
    for key in ("rise_rate_c_s", "return_rate_c_s"):
        value = getattr(lim, key)
        if not (0 < value <= ABSOLUTE_MAX_RAMP_C_S):
            raise bad(key, value, f"0 < value <= {ABSOLUTE_MAX_RAMP_C_S} °C/s")
