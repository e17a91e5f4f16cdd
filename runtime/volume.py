"""The in-memory volume: array + affine + timing, as nibabel would hold it.

The array is indexed (i, j, k) and the affine maps voxel indices to RAS+ world millimetres,
following the dcm2niix/nibabel conventions, so `nibabel.Nifti1Image(vol.data, vol.affine)`
is the volume as dcm2niix would write it (up to a flip of the array axes, which the affine
accounts for).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class Volume:
    data: np.ndarray
    """(i, j, k) float32 C-contiguous, vendor scaling applied (see runtime.dicom for Philips)."""
    affine: np.ndarray
    """4x4 float64: voxel (i, j, k, 1) -> RAS+ mm."""
    index: int
    """0-based position of the volume in its series (temporal index), not arrival order."""
    tr: float | None = None
    """Repetition time in seconds, when the header has it."""
    slice_times: tuple[float, ...] | None = None
    """Slice acquisition times in seconds from volume start, one per k, when known."""
    acquisition_time: float | None = None
    """Seconds since midnight of the volume's first slice (DICOM AcquisitionTime), when known."""
    series_uid: str = ""
    series_number: int | None = None
    series_description: str = ""
    manufacturer: str = ""
    source: str = ""
    """Where it came from (file name of the first part), for logs only."""
    meta: dict = field(default_factory=dict)
    """Other non-identifying header facts (e.g. EchoTime, FlipAngle) for sidecars."""

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.data.shape)  # type: ignore[return-value]

    @property
    def zooms(self) -> tuple[float, float, float]:
        return tuple(float(z) for z in np.sqrt((self.affine[:3, :3] ** 2).sum(axis=0)))  # type: ignore[return-value]
