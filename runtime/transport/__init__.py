"""Reliable ZeroMQ transport for every decnef stream (volumes, scores, telemetry, events).

PUB-SUB for live delivery plus a journaled replay server (ZeroMQ guide: Clone pattern) and
Lazy-Pirate replay requests, so every receiver gets every seq exactly once and in order across
slow joins, high-water-mark drops and restarts of either side. See `publisher` and `subscriber`.
"""

from runtime.transport.curve import (
    CurveKeys,
    generate_keys,
    load_client_keys,
    load_keys,
    load_server_keys,
)
from runtime.transport.journal import Journal, JournalError, MemoryJournal, journal_path
from runtime.transport.publisher import ReliablePublisher
from runtime.transport.subscriber import ReliableSubscriber

__all__ = [
    "CurveKeys",
    "Journal",
    "JournalError",
    "MemoryJournal",
    "ReliablePublisher",
    "ReliableSubscriber",
    "generate_keys",
    "journal_path",
    "load_client_keys",
    "load_keys",
    "load_server_keys",
]
