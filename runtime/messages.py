"""Wire messages: ZeroMQ multipart `[topic, header, payload?]` (DESIGN.md, wire protocol).

The header is a small JSON document (msgspec structs, so decoding validates it); the payload is
the raw C-contiguous little-endian array, sent zero-copy. Every stream carries a per-stream
sequence number (`seq`, 0-based, no gaps) so receivers detect loss and ask the sender's replay
endpoint for what they missed.
"""

from __future__ import annotations

import time
from typing import Any, Literal

import msgspec
import numpy as np

from runtime.volume import Volume

WIRE_VERSION = 1

TOPIC_VOLUME = b"volume"
TOPIC_SCORE = b"score"
TOPIC_TELEMETRY = b"telemetry"
TOPIC_EVENT = b"event"
TOPIC_CONTROL = b"control"


class Header(msgspec.Struct, kw_only=True, tag_field="kind"):
    version: int = WIRE_VERSION
    session: str = ""
    run: int = 1
    seq: int = -1
    """Per-stream sequence number, set by the publisher."""
    t_sent: float = 0.0
    """time.time() when published, set by the publisher."""


class VolumeHeader(Header, tag="volume"):
    index: int
    shape: tuple[int, int, int]
    dtype: str
    affine: list[float]
    """Row-major 4x4 voxel -> RAS+ mm."""
    tr: float | None = None
    slice_times: list[float] | None = None
    acquisition_time: float | None = None
    series_uid: str = ""
    series_number: int | None = None
    manufacturer: str = ""
    source: str = ""
    t_file_complete: float = 0.0
    """time.time() when the last file of this volume was seen complete."""
    gap_before: list[int] = []
    """Volume indices declared missing just before this one."""


class ScoreHeader(Header, tag="score"):
    trial: int
    condition: str = "calc"
    label: str = ""
    score: float | None = None
    """0-100, or None for "no feedback" (no valid scan)."""
    likelihood: float | None = None
    n_valid_scans: int = 0
    volume: int = -1
    """Index of the volume whose arrival triggered the score."""
    flags: str = ""
    t_file_complete: float = 0.0


class TelemetryHeader(Header, tag="telemetry"):
    volume: int
    trans_x: float = 0.0
    trans_y: float = 0.0
    trans_z: float = 0.0
    rot_x: float = 0.0
    rot_y: float = 0.0
    rot_z: float = 0.0
    framewise_displacement: float = 0.0
    template_corr: float | None = None
    """None = not computed (JSON has no NaN: a NaN float would arrive as null)."""
    ng: bool = False
    iterations: int = 0
    timings: dict[str, float] = {}


class EventHeader(Header, tag="event"):
    name: str
    """e.g. trigger, onset, agent_action, device_command, device_ack, gap, fault."""
    data: dict[str, Any] = {}


class ControlHeader(Header, tag="control"):
    command: Literal["start", "stop", "end_of_run", "abort", "heartbeat"]
    data: dict[str, Any] = {}


AnyHeader = VolumeHeader | ScoreHeader | TelemetryHeader | EventHeader | ControlHeader

TOPICS: dict[type, bytes] = {
    VolumeHeader: TOPIC_VOLUME,
    ScoreHeader: TOPIC_SCORE,
    TelemetryHeader: TOPIC_TELEMETRY,
    EventHeader: TOPIC_EVENT,
    ControlHeader: TOPIC_CONTROL,
}

_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(AnyHeader)


def encode_header(header: Header) -> bytes:
    return _encoder.encode(header)


def decode_header(raw: bytes) -> AnyHeader:
    return _decoder.decode(raw)


def topic_of(header: Header) -> bytes:
    return TOPICS[type(header)]


def stamp(header: Header, seq: int) -> None:
    header.seq = seq
    header.t_sent = time.time()


def volume_header(vol: Volume, **extra: Any) -> VolumeHeader:
    """Header for a volume; the payload is `volume_payload(vol)`."""
    data = volume_payload(vol)
    return VolumeHeader(
        index=vol.index,
        shape=tuple(int(s) for s in data.shape),
        dtype=data.dtype.str,
        affine=[float(x) for x in np.asarray(vol.affine, dtype=np.float64).ravel()],
        tr=vol.tr,
        slice_times=list(vol.slice_times) if vol.slice_times is not None else None,
        acquisition_time=vol.acquisition_time,
        series_uid=vol.series_uid,
        series_number=vol.series_number,
        manufacturer=vol.manufacturer,
        source=vol.source,
        **extra,
    )


def volume_payload(vol: Volume) -> np.ndarray:
    """The array as sent: C-contiguous, little-endian."""
    data = np.ascontiguousarray(vol.data)
    if data.dtype.byteorder == ">" or (data.dtype.byteorder == "=" and np.little_endian is False):
        data = data.astype(data.dtype.newbyteorder("<"))
    return data


def volume_from_message(header: VolumeHeader, payload: memoryview | bytes) -> Volume:
    data = np.frombuffer(payload, dtype=np.dtype(header.dtype)).reshape(header.shape)
    return Volume(
        data=data,
        affine=np.asarray(header.affine, dtype=np.float64).reshape(4, 4),
        index=header.index,
        tr=header.tr,
        slice_times=tuple(header.slice_times) if header.slice_times is not None else None,
        acquisition_time=header.acquisition_time,
        series_uid=header.series_uid,
        series_number=header.series_number,
        manufacturer=header.manufacturer,
        source=header.source,
    )
