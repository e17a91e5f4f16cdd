"""Append-only on-disk journal of one stream's messages.

Why: a publisher that is killed and restarted must continue the sequence numbers and still
serve old messages to receivers that missed them (DESIGN.md: every role can be restarted without
losing data). One file per stream, one record per message, flushed to the OS after each message
(survives `kill -9`; pass `fsync=True` to survive power loss too). A record cut short by a kill
in the middle of a write is truncated away when the journal is reopened.

Record: `<4s q I I q` = magic, seq, topic length, header length, payload length (-1: none),
followed by the three byte strings.
"""

from __future__ import annotations

import logging
import os
import struct
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

log = logging.getLogger(__name__)

_MAGIC = b"DNJ1"
_REC = struct.Struct("<4sqIIq")


class JournalError(RuntimeError):
    """The journal file is not a decnef journal or is corrupt in the middle."""


class Journal:
    """Messages of one stream, indexed by seq (contiguous from `first_seq`)."""

    def __init__(self, path: Path, *, fsync: bool = False) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fsync = fsync
        self._lock = threading.Lock()
        self._offsets: list[int] = []  # offset of record for seq first_seq + i
        self.first_seq = 0
        epoch_path = self.path.with_suffix(".epoch")
        if not epoch_path.exists():
            epoch_path.write_text(uuid.uuid4().hex + "\n")
        self.epoch = epoch_path.read_text().strip()
        self._fh = open(self.path, "a+b")  # noqa: SIM115 - kept open for the journal's life
        self._scan()
        self._rfd = os.open(self.path, os.O_RDONLY)

    def _scan(self) -> None:
        fh = self._fh
        fh.seek(0, os.SEEK_END)
        size = fh.tell()
        pos = 0
        expected: int | None = None
        while pos + _REC.size <= size:
            fh.seek(pos)
            magic, seq, tl, hl, pl = _REC.unpack(fh.read(_REC.size))
            if magic != _MAGIC:
                raise JournalError(f"{self.path}: bad record at byte {pos} (not a decnef journal?)")
            end = pos + _REC.size + tl + hl + max(pl, 0)
            if end > size:
                break
            if expected is not None and seq != expected:
                raise JournalError(f"{self.path}: seq {seq} at byte {pos}, expected {expected}")
            if expected is None:
                self.first_seq = seq
            self._offsets.append(pos)
            expected = seq + 1
            pos = end
        if pos < size:
            log.warning("%s: dropping %d bytes of a record cut short (publisher killed mid-write)", self.path, size - pos)
            fh.truncate(pos)
            fh.flush()
        fh.seek(0, os.SEEK_END)

    @property
    def last_seq(self) -> int:
        """Seq of the newest record, or first_seq - 1 when empty."""
        with self._lock:
            return self.first_seq + len(self._offsets) - 1

    def __len__(self) -> int:
        with self._lock:
            return len(self._offsets)

    def append(self, seq: int, topic: bytes, header: bytes, payload: memoryview | bytes | None) -> None:
        with self._lock:
            if self._offsets and seq != self.first_seq + len(self._offsets):
                raise JournalError(f"{self.path}: append seq {seq}, expected {self.first_seq + len(self._offsets)}")
            if not self._offsets:
                self.first_seq = seq
        pl = -1 if payload is None else memoryview(payload).nbytes
        fh = self._fh
        offset = fh.tell()
        fh.write(_REC.pack(_MAGIC, seq, len(topic), len(header), pl))
        fh.write(topic)
        fh.write(header)
        if payload is not None:
            fh.write(memoryview(payload).cast("B"))
        fh.flush()
        if self._fsync:
            os.fsync(fh.fileno())
        with self._lock:
            self._offsets.append(offset)

    def read(self, seq: int) -> tuple[bytes, bytes, bytes | None]:
        """(topic, header, payload) of one message; safe from another thread than `append`."""
        with self._lock:
            i = seq - self.first_seq
            if i < 0 or i >= len(self._offsets):
                raise KeyError(seq)
            offset = self._offsets[i]
        raw = os.pread(self._rfd, _REC.size, offset)
        magic, rseq, tl, hl, pl = _REC.unpack(raw)
        if magic != _MAGIC or rseq != seq:
            raise JournalError(f"{self.path}: record for seq {seq} is corrupt")
        body = os.pread(self._rfd, tl + hl + max(pl, 0), offset + _REC.size)
        topic = body[:tl]
        header = body[tl : tl + hl]
        payload = body[tl + hl :] if pl >= 0 else None
        return topic, header, payload

    def iter_from(self, seq: int = 0) -> Iterator[tuple[int, bytes, bytes, bytes | None]]:
        start = max(seq, self.first_seq)
        for s in range(start, self.last_seq + 1):
            yield (s, *self.read(s))

    def close(self) -> None:
        try:
            self._fh.close()
        finally:
            try:
                os.close(self._rfd)
            except OSError:
                pass


def journal_path(journal_dir: Path, stream: str) -> Path:
    return Path(journal_dir) / f"{stream}.journal"


class MemoryJournal:
    """The same interface kept in memory (no journal dir): survives subscriber restarts but
    not publisher restarts. Oldest messages are evicted beyond `max_bytes`, and a receiver
    asking for them is told they are gone (`first_seq`)."""

    def __init__(self, *, max_bytes: int = 1 << 30) -> None:
        self.epoch = uuid.uuid4().hex
        self.path = None
        self._lock = threading.Lock()
        self._items: list[tuple[bytes, bytes, bytes | None]] = []
        self._base = 0  # index of _items[0] in the deque-like list, for O(1) eviction
        self.first_seq = 0
        self._bytes = 0
        self._max_bytes = max_bytes

    @property
    def last_seq(self) -> int:
        with self._lock:
            return self.first_seq + len(self._items) - self._base - 1

    def __len__(self) -> int:
        with self._lock:
            return len(self._items) - self._base

    def append(self, seq: int, topic: bytes, header: bytes, payload: memoryview | bytes | None) -> None:
        data = None if payload is None else bytes(memoryview(payload).cast("B"))
        with self._lock:
            if len(self._items) == self._base:
                self.first_seq = seq
            self._items.append((topic, header, data))
            self._bytes += len(topic) + len(header) + (len(data) if data is not None else 0)
            while self._bytes > self._max_bytes and len(self._items) - self._base > 1:
                t, h, p = self._items[self._base]
                self._items[self._base] = (b"", b"", None)
                self._bytes -= len(t) + len(h) + (len(p) if p is not None else 0)
                self._base += 1
                self.first_seq += 1
            if self._base > 4096 and self._base * 2 > len(self._items):
                del self._items[: self._base]
                self._base = 0

    def read(self, seq: int) -> tuple[bytes, bytes, bytes | None]:
        with self._lock:
            i = seq - self.first_seq
            if i < 0 or i >= len(self._items) - self._base:
                raise KeyError(seq)
            return self._items[self._base + i]

    def iter_from(self, seq: int = 0) -> Iterator[tuple[int, bytes, bytes, bytes | None]]:
        start = max(seq, self.first_seq)
        for s in range(start, self.last_seq + 1):
            try:
                yield (s, *self.read(s))
            except KeyError:
                continue

    def close(self) -> None:
        pass
