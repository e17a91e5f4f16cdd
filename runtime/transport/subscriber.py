"""Reliable subscriber: live PUB-SUB merged with replays, every seq exactly once and in order.

ZeroMQ guide patterns: **Clone** (chapter 5) — subscribe first, then fetch the state from the
replay server, then apply live updates newer than it; and **Lazy Pirate** (chapter 4) for the
replay requests — a DEALER with a timeout that is closed and reopened when the server does not
answer (publisher not started yet, restarted, or the request lost), then asked again.

Gaps in the live sequence (slow joiner, high-water-mark drops, publisher restart) are filled
from the replay endpoint. When the stream goes quiet the subscriber also asks the replay server
for anything after what it has (so a lost *last* message is recovered too). Everything runs in the
caller's thread (the SUB and DEALER sockets belong to it), so `poll()` can be called from a
PsychoPy frame loop.

All topics are received so that seq accounting sees every message of the stream; `topics`
only filters what is delivered.
"""

from __future__ import annotations

import itertools
import logging
import struct
import time
from collections import deque
from collections.abc import Iterable

import msgspec
import zmq

from runtime.messages import AnyHeader, decode_header
from runtime.transport.curve import CurveKeys
from runtime.transport.publisher import MAX_BATCH, REQ, REQ_MAGIC

log = logging.getLogger(__name__)

Payload = memoryview | bytes | None
_ids = itertools.count(1)


class _SeqOnly(msgspec.Struct):
    seq: int


class _Info(msgspec.Struct):
    last: int
    first: int
    next: int
    epoch: str


class ReliableSubscriber:
    """Receive one sequenced stream from a `ReliablePublisher`, exactly once and in order.

    `start_seq`: first seq wanted (0 = from the beginning; a restarted receiver passes the last
    seq it recorded + 1). `topics`: deliver only these topics (None = all).
    `lost` lists `(first, last)` seq ranges the publisher no longer had (evicted from memory);
    never non-empty with an on-disk journal.
    """

    def __init__(
        self,
        pub_endpoint: str,
        replay_endpoint: str,
        *,
        topics: Iterable[bytes] | None = None,
        start_seq: int = 0,
        curve: CurveKeys | None = None,
        request_timeout: float = 2.0,
        resync_interval: float = 1.0,
        rcvhwm: int = 1000,
        context: zmq.Context | None = None,
    ) -> None:
        self.pub_endpoint = pub_endpoint
        self.replay_endpoint = replay_endpoint
        self.topics = None if topics is None else frozenset(topics)
        self.next_seq = int(start_seq)
        self.lost: list[tuple[int, int]] = []
        self.replayed = 0
        """Messages obtained from the replay server rather than live (for tests and logs)."""
        self._curve = curve
        self._timeout = request_timeout
        self._resync = resync_interval
        self._ctx = context or zmq.Context.instance()
        self._sub = self._ctx.socket(zmq.SUB)
        self._sub.linger = 0
        self._sub.rcvhwm = rcvhwm
        if curve is not None:
            curve.apply_client(self._sub)
        self._sub.setsockopt(zmq.SUBSCRIBE, b"")
        self._sub.connect(pub_endpoint)  # subscribe first (Clone), then ask for the past
        self._dealer: zmq.Socket | None = None
        self._poller = zmq.Poller()
        self._poller.register(self._sub, zmq.POLLIN)
        self._pending: dict[int, tuple[bytes, AnyHeader | None, Payload]] = {}
        self._ready: deque[tuple[bytes, AnyHeader, Payload]] = deque()
        self._epoch: str | None = None
        self._req: tuple[int, int, int] | None = None  # (req_id, start, end)
        self._req_deadline = 0.0
        self._req_tries = 0
        self._last_activity = time.monotonic()
        self._want_check = False
        self._open_dealer()
        self._request(self.next_seq, -1)

    # -- replay requests (Lazy Pirate) ---------------------------------------------------------
    def _open_dealer(self) -> None:
        if self._dealer is not None:
            self._poller.unregister(self._dealer)
            self._dealer.close(0)
        d = self._ctx.socket(zmq.DEALER)
        d.linger = 0
        d.rcvhwm = 0
        if self._curve is not None:
            self._curve.apply_client(d)
        d.connect(self.replay_endpoint)
        self._poller.register(d, zmq.POLLIN)
        self._dealer = d

    def _request(self, start: int, end: int) -> None:
        req_id = next(_ids)
        self._req = (req_id, start, end)
        self._req_deadline = time.monotonic() + self._timeout
        assert self._dealer is not None
        self._dealer.send_multipart([REQ_MAGIC, REQ.pack(req_id, start, end, MAX_BATCH)])

    def _maybe_request(self, now: float) -> None:
        if self._req is not None:
            if now >= self._req_deadline:
                self._req_tries += 1
                level = logging.DEBUG if self._req_tries < 3 else logging.WARNING
                log.log(level, "replay server %s did not answer (try %d); reconnecting", self.replay_endpoint, self._req_tries)
                _, start, end = self._req
                self._open_dealer()
                self._request(max(start, self.next_seq), end)
            return
        if self._pending:
            low = min(self._pending)
            if low > self.next_seq:
                log.debug("gap in live seq: have %d, expected %d; fetching %d..%d", low, self.next_seq, self.next_seq, low - 1)
                self._request(self.next_seq, low - 1)
                return
        if self._want_check or now - self._last_activity >= self._resync:
            self._want_check = False
            self._last_activity = now
            self._request(self.next_seq, -1)

    def _on_reply(self, frames: list[zmq.Frame]) -> None:
        if len(frames) < 3 or self._req is None:
            return
        kind = frames[0].bytes
        (req_id,) = struct.unpack("<Q", frames[1].bytes)
        if req_id != self._req[0]:
            return  # answer to a request we gave up on
        self._req_deadline = time.monotonic() + self._timeout  # the server is alive
        self._req_tries = 0
        if kind == b"M" and len(frames) >= 4:
            payload = frames[4].buffer if len(frames) > 4 else None
            self._accept(frames[2].bytes, frames[3].bytes, payload, replayed=True)
        elif kind == b"E":
            info = msgspec.json.decode(frames[2].bytes, type=_Info)
            _, start, end = self._req
            self._req = None
            # A new epoch, or (when no earlier answer told us the epoch, e.g. every message came
            # live before the old publisher died) a publisher whose last seq is below what we had
            # received before asking (`start` - 1; live messages after the ask may be newer than
            # this answer, so next_seq is not the measure): restarted.
            if (self._epoch is not None and info.epoch != self._epoch) or info.last < start - 1:
                log.warning("publisher of %s restarted without its journal: sequence restarts at %d", self.pub_endpoint, info.first)
                self._pending.clear()
                self.next_seq = info.first
                self._epoch = info.epoch
                self._request(self.next_seq, -1)
                return
            self._epoch = info.epoch
            if info.first > self.next_seq and info.last >= self.next_seq:
                lost_to = info.first - 1
                log.error("seq %d..%d no longer stored by the publisher; skipped", self.next_seq, lost_to)
                self.lost.append((self.next_seq, lost_to))
                self.next_seq = info.first
                self._drain()
            goal = info.last if end < 0 else min(end, info.last)
            if info.next <= goal and info.next >= self.next_seq:
                self._request(info.next, end)

    # -- merge -----------------------------------------------------------------------------
    def _accept(self, topic: bytes, raw: bytes, payload: Payload, *, replayed: bool) -> None:
        try:
            seq = msgspec.json.decode(raw, type=_SeqOnly).seq
        except msgspec.DecodeError:
            log.error("message without a readable seq on %s ignored", self.pub_endpoint)
            return
        if seq < self.next_seq or seq in self._pending:
            if not replayed and seq < self.next_seq - 1:
                self._want_check = True  # maybe a publisher restarted without journal
            return
        try:
            header: AnyHeader | None = decode_header(raw)
        except msgspec.DecodeError as exc:
            # keep the seq accounted for (or it would be fetched forever) but deliver nothing
            log.error("seq %d on %s has an invalid header (%s); skipped", seq, self.pub_endpoint, exc)
            header = None
        if replayed:
            self.replayed += 1
        self._pending[seq] = (topic, header, payload)
        self._drain()

    def _drain(self) -> None:
        while self.next_seq in self._pending:
            item = self._pending.pop(self.next_seq)
            self.next_seq += 1
            if item[1] is not None and (self.topics is None or item[0] in self.topics):
                self._ready.append(item)
        # anything below next_seq left in pending (after a skip) is stale
        for s in [s for s in self._pending if s < self.next_seq]:
            del self._pending[s]

    # -- public ----------------------------------------------------------------------------
    def recv_with_topic(self, timeout_ms: float | None = None) -> tuple[bytes, AnyHeader, Payload] | None:
        """Next message in seq order as (topic, header, payload), or None after `timeout_ms`
        (None = wait forever, 0 = do not wait)."""
        deadline = None if timeout_ms is None else time.monotonic() + timeout_ms / 1000.0
        while True:
            if self._ready:
                return self._ready.popleft()
            now = time.monotonic()
            self._maybe_request(now)
            if self._ready:
                return self._ready.popleft()
            wake = now + self._resync if self._req is None else self._req_deadline
            if deadline is not None:
                wake = min(wake, deadline)
            wait_ms = max(0.0, (wake - now) * 1000.0)
            events = dict(self._poller.poll(wait_ms))
            got = False
            if events.get(self._sub):
                got = True
                for _ in range(1000):
                    try:
                        frames = self._sub.recv_multipart(zmq.NOBLOCK, copy=False)
                    except zmq.Again:
                        break
                    if len(frames) >= 2:
                        payload = frames[2].buffer if len(frames) > 2 else None
                        self._accept(frames[0].bytes, frames[1].bytes, payload, replayed=False)
            if self._dealer is not None and events.get(self._dealer):
                got = True
                for _ in range(10 * MAX_BATCH):
                    try:
                        frames = self._dealer.recv_multipart(zmq.NOBLOCK, copy=False)
                    except zmq.Again:
                        break
                    self._on_reply(frames)
            if got:
                self._last_activity = time.monotonic()
            if self._ready:
                return self._ready.popleft()
            if deadline is not None and time.monotonic() >= deadline:
                return None

    def recv(self, timeout_ms: float | None = None) -> tuple[AnyHeader, Payload] | None:
        """Next message in seq order as (header, payload), or None after `timeout_ms`."""
        item = self.recv_with_topic(timeout_ms)
        return None if item is None else (item[1], item[2])

    def poll(self) -> tuple[AnyHeader, Payload] | None:
        """Non-blocking `recv` (for frame loops)."""
        return self.recv(0)

    def close(self) -> None:
        if self._dealer is not None:
            self._dealer.close(0)
            self._dealer = None
        self._sub.close(0)

    def __enter__(self) -> ReliableSubscriber:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
