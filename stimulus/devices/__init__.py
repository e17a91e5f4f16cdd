"""Stimulator drivers behind one interface, a safety guard and a watchdog.

Typical wiring (the agent only ever talks to the guard):

    limits = SafetyLimits.from_config(cfg.stimulator)
    guard = SafetyGuard(build_stimulator(cfg.stimulator), limits, log_path)
    guard.connect()
    dog = Watchdog.from_config(cfg, guard, engine_alive=..., display_alive=...).start()
    ...  dog.feed("trigger") on every trigger/score/volume; guard.deliver(level, cfg.stimulator.plateau_s)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from runtime.errors import ConfigError
from stimulus.devices.base import Ack, DeviceError, DeviceStatus, StimulationAborted, Stimulator
from stimulus.devices.guard import SafetyGuard
from stimulus.devices.limits import SafetyLimits, SafetyViolation
from stimulus.devices.watchdog import Watchdog

__all__ = [
    "Ack", "DeviceError", "DeviceStatus", "SafetyGuard", "SafetyLimits", "SafetyViolation",
    "StimulationAborted", "Stimulator", "Watchdog", "build_guard", "build_stimulator",
]


def build_stimulator(cfg: Any, **kw: Any) -> Stimulator:
    """Driver for `cfg` (a StimulatorConfig), carrying the limits resolved from it.

    Extra keyword arguments go to the driver (e.g. `char_delay_s` for tcs2, `clock` for
    simulated). Raises ConfigError for kind = "none" or a missing port.
    """
    limits = SafetyLimits.from_config(cfg)
    if cfg.kind == "simulated":
        from stimulus.devices.simulated import SimulatedStimulator

        return SimulatedStimulator(limits, **kw)
    if cfg.kind == "tcs2":
        if not cfg.port:
            raise ConfigError("stimulator.port: expected the TCS II serial port (e.g. /dev/ttyACM0 or COM3) when kind = 'tcs2'")
        from stimulus.devices.tcs2 import TCS2Stimulator

        return TCS2Stimulator(cfg.port, limits, **kw)
    if cfg.kind == "medoc":
        from stimulus.devices.medoc import MedocStimulator

        if cfg.medoc_program_high == cfg.medoc_program_low and cfg.high_c != cfg.low_c:
            raise ConfigError("stimulator.medoc_program_low: expected a program code different from medoc_program_high")
        programs = {cfg.high_c: cfg.medoc_program_high, cfg.low_c: cfg.medoc_program_low}
        return MedocStimulator(cfg.host, cfg.tcp_port, programs, cfg.medoc_byte_order, limits, **kw)
    raise ConfigError(f"stimulator.kind: got {cfg.kind!r}; expected simulated, tcs2 or medoc to drive a stimulator")


def build_guard(cfg: Any, log_path: str | Path | None, **kw: Any) -> SafetyGuard:
    """`SafetyGuard(build_stimulator(cfg), SafetyLimits.from_config(cfg), log_path)`."""
    return SafetyGuard(build_stimulator(cfg, **kw), SafetyLimits.from_config(cfg), log_path)
