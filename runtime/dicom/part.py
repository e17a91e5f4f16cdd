"""The parsed form of one DICOM file: 2D frames with positions, plus series facts.

Every layout (mosaic, enhanced multi-frame, one slice per file) is reduced to the same thing,
a list of `Frame`s (one 2D image each, already scaled to real values, with its patient position
and the volume it belongs to), so that assembly into volumes is one code path.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass(slots=True)
class Frame:
    volume: int
    """0-based temporal index."""
    pixels: np.ndarray
    """(rows, cols) float32, vendor scaling applied."""
    position: np.ndarray
    """ImagePositionPatient (LPS mm) of the first voxel of this slice."""
    slice_time: float | None = None
    """Slice acquisition time in seconds on some clock (only differences within a volume are used)."""
    acq_time: float | None = None
    """Seconds since midnight when this slice (or its volume) was acquired, if known."""
    echo: int = 1
    """1-based echo number (multi-echo series: EchoNumbers, or the rank of the frame's echo time
    among the file's distinct echo times); slices of different echoes never share a volume."""


@dataclass(eq=False)
class DicomPart:
    """One parsed file (header + pixels), ready for assembly."""

    path: str
    sop_uid: str
    series_uid: str
    series_number: int | None
    series_description: str
    layout: str
    """"mosaic" | "enhanced" | "slice"."""
    volume_indices: list[int]
    """0-based temporal index/indices this file contributes to."""
    slices_per_volume: int | None
    """Expected slices per volume (None if the header cannot tell)."""
    acquisition_time: float | None
    """Seconds since midnight (AcquisitionTime, or the earliest frame time)."""
    manufacturer: str = ""
    tr: float | None = None
    """Repetition time in seconds."""
    iop: np.ndarray = field(default_factory=lambda: np.array([1.0, 0, 0, 0, 1, 0]))
    """ImageOrientationPatient (row cosine, column cosine), LPS."""
    pixel_spacing: tuple[float, float] = (1.0, 1.0)
    """DICOM PixelSpacing: (row spacing, column spacing) in mm."""
    slice_spacing: float | None = None
    """SpacingBetweenSlices, else SliceThickness (used only for single-slice volumes)."""
    frames: list[Frame] = field(default_factory=list)
    meta: dict = field(default_factory=dict)
    """Non-identifying header facts for sidecars (EchoTime, FlipAngle, ...)."""
    echo_times: dict[int, float] = field(default_factory=dict)
    """Echo number -> echo time (s) for the echoes in this file, when the header has them."""
    echoes: tuple[int, ...] = (1,)
    """Distinct echo numbers of this file's frames, ascending."""

    @property
    def rows(self) -> int:
        return int(self.frames[0].pixels.shape[0]) if self.frames else 0

    @property
    def cols(self) -> int:
        return int(self.frames[0].pixels.shape[1]) if self.frames else 0
