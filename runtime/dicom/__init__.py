"""DICOM ingest and writing: every vendor layout -> `runtime.volume.Volume`.

parse_file (one file -> DicomPart), VolumeAssembler (online: parts in, complete volumes out),
read_series / read_series_echoes (offline: a folder -> volumes, one echo / every echo), write_series / volume_to_datasets (volumes -> real
DICOM files for replay). Pixel scaling conventions: see runtime.dicom.scaling; array/affine
conventions: see runtime.dicom.affine.
"""

from runtime.dicom.assemble import (
    VolumeAssembler,
    assemble_parts,
    build_volume,
    read_series,
    read_series_echoes,
    series_echoes,
)
from runtime.dicom.parse import parse_file
from runtime.dicom.part import DicomPart, Frame
from runtime.dicom.write import (
    SeriesSpec,
    dataset_bytes,
    volume_to_datasets,
    write_dataset,
    write_series,
)

__all__ = [
    "DicomPart",
    "Frame",
    "VolumeAssembler",
    "assemble_parts",
    "build_volume",
    "parse_file",
    "read_series",
    "read_series_echoes",
    "series_echoes",
    "SeriesSpec",
    "dataset_bytes",
    "volume_to_datasets",
    "write_dataset",
    "write_series",
]
