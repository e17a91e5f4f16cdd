"""Device emulators that speak the real protocols (for tests and `decnef run --simulate`)."""

from sim_scanner.emulators.medoc_emulator import MedocEmulator, MedocProgram
from sim_scanner.emulators.tcs2_emulator import TCS2Emulator

__all__ = ["MedocEmulator", "MedocProgram", "TCS2Emulator"]
