"""Reliable publisher: PUB for live delivery + a replay server for everything missed.

ZeroMQ guide patterns: the live path is plain **PUB-SUB** (fast, zero-copy, but lossy on
reconnect, slow joiners and high-water marks); reliability comes from the **Clone** pattern
(chapter 5): every message carries a per-stream sequence number, is stored (here in an on-disk
`Journal`) and can be fetched again from a **ROUTER** replay server running in its own thread
(one socket per thread) that answers "everything from seq N" requests. Receivers use
**Lazy Pirate** (chapter 4) against that server.

Replay protocol (DEALER -> ROUTER):
  request  `[b"RPLY1", req_id:u64, start:i64, end:i64 (-1 = up to the newest), max_count:u32]`
  replies  `[b"M", req_id, topic, header, payload?]` for each stored message from `start`, at
           most `max_count` of them (flow control: the receiver asks for the next batch), then
  end      `[b"E", req_id, json {"last", "first", "next", "epoch"}]` where `last` is the newest seq
           published, `first` the oldest still stored, `next` the seq after the last one sent
           and `epoch` identifies the journal (a publisher restarted *without* its journal starts a
           new epoch, and receivers reset their sequence instead of ignoring everything as old).
"""

from __future__ import annotations

import logging
import struct
import threading
import time
from pathlib import Path

import msgspec
import numpy as np
import zmq

from runtime.messages import Header, encode_header, stamp, topic_of
from runtime.transport.curve import CurveKeys
from runtime.transport.journal import Journal, MemoryJournal, journal_path

log = logging.getLogger(__name__)

REQ_MAGIC = b"RPLY1"
REQ = struct.Struct("<QqqI")
MAX_BATCH = 64
"""Messages sent per replay request at most (the receiver asks again for more)."""


def _bind(sock: zmq.Socket, endpoint: str, patience: float = 3.0) -> None:
    """Bind, retrying briefly while a previous owner of the port (a publisher closed a moment ago
    in this process, whose socket libzmq closes asynchronously) still holds it."""
    deadline = time.monotonic() + patience
    while True:
        try:
            sock.bind(endpoint)
            return
        except zmq.ZMQError as exc:
            if exc.errno != zmq.EADDRINUSE or time.monotonic() >= deadline:
                raise
            time.sleep(0.05)


class ReliablePublisher:
    """Publish a sequenced stream on PUB and serve replays of it on a ROUTER (Clone pattern).

    `publish()` must be called from one thread at a time (it takes a lock, so several threads are
    safe but serialised). With `journal_dir`, messages are appended to
    `journal_dir/<stream>.journal` before they are sent, so a restarted publisher continues the
    sequence and can still serve every old message; without it they are kept in memory.
    """

    def __init__(
        self,
        pub_endpoint: str,
        replay_endpoint: str,
        journal_dir: Path | None,
        *,
        stream: str,
        curve: CurveKeys | None = None,
        sndhwm: int = 1000,
        fsync: bool = False,
        memory_limit_bytes: int = 1 << 30,
    ) -> None:
        self.stream = stream
        self.pub_endpoint = pub_endpoint
        self.replay_endpoint = replay_endpoint
        self.journal: Journal | MemoryJournal = (
            Journal(journal_path(journal_dir, stream), fsync=fsync)
            if journal_dir is not None
            else MemoryJournal(max_bytes=memory_limit_bytes)
        )
        self._next_seq = self.journal.last_seq + 1 if len(self.journal) else 0
        self._lock = threading.Lock()
        self._auth = None
        if curve is not None:
            # own context: the ZAP authenticator is per context
            self._ctx = zmq.Context()
            self._owns_ctx = True
            self._start_auth(curve)
        else:
            self._ctx = zmq.Context.instance()
            self._owns_ctx = False
        self._curve = curve
        self._pub = self._ctx.socket(zmq.PUB)
        self._pub.linger = 0
        self._pub.sndhwm = sndhwm
        if curve is not None:
            curve.apply_server(self._pub)
        try:
            _bind(self._pub, pub_endpoint)
        except zmq.ZMQError as exc:
            self._pub.close(0)
            self.journal.close()
            raise OSError(f"cannot bind {pub_endpoint}: {exc}") from exc
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._bind_error: Exception | None = None
        self._thread = threading.Thread(target=self._serve, name=f"replay-{stream}", daemon=True)
        self._thread.start()
        self._ready.wait(10)
        if self._bind_error is not None:
            self._pub.close(0)
            self.journal.close()
            raise OSError(f"cannot bind {replay_endpoint}: {self._bind_error}")
        if len(self.journal):
            log.info("%s: journal holds seq %d..%d; continuing at %d", stream, self.journal.first_seq, self.journal.last_seq, self._next_seq)

    def _start_auth(self, curve: CurveKeys) -> None:
        from zmq.auth.thread import ThreadAuthenticator

        self._auth = ThreadAuthenticator(self._ctx, log=logging.getLogger("runtime.transport.zap"))
        self._auth.start()
        if curve.authorized_dir is not None:
            self._auth.configure_curve(domain="*", location=str(curve.authorized_dir))
        else:
            self._auth.configure_curve(domain="*", location=zmq.auth.CURVE_ALLOW_ANY)

    @property
    def last_seq(self) -> int:
        """Seq of the newest published message (-1 before the first)."""
        return self._next_seq - 1

    def publish(self, header: Header, payload: np.ndarray | memoryview | bytes | None = None) -> int:
        """Stamp `header` with the next seq, journal it, send `[topic, header, payload?]`; return seq."""
        buf = None
        if payload is not None:
            if isinstance(payload, np.ndarray):
                buf = memoryview(np.ascontiguousarray(payload).reshape(-1).view(np.uint8))
            else:
                buf = memoryview(payload).cast("B")
        topic = topic_of(header)
        with self._lock:
            seq = self._next_seq
            stamp(header, seq)
            raw = encode_header(header)
            self.journal.append(seq, topic, raw, buf)  # stored before anyone can see it
            if buf is None:
                self._pub.send_multipart([topic, raw])
            else:  # small frames copied (cheaper than zero-copy bookkeeping), the payload not
                self._pub.send(topic, zmq.SNDMORE)
                self._pub.send(raw, zmq.SNDMORE)
                self._pub.send(buf, copy=False)
            self._next_seq = seq + 1
        return seq

    # -- replay server (own thread, own ROUTER socket) ---------------------------------------
    def _serve(self) -> None:
        router = self._ctx.socket(zmq.ROUTER)
        router.linger = 0
        router.sndhwm = 0  # replies are bounded by MAX_BATCH per request; never drop them
        if self._curve is not None:
            self._curve.apply_server(router)
        try:
            _bind(router, self.replay_endpoint)
        except zmq.ZMQError as exc:
            self._bind_error = exc
            router.close(0)
            self._ready.set()
            return
        self._ready.set()
        poller = zmq.Poller()
        poller.register(router, zmq.POLLIN)
        try:
            while not self._stop.is_set():
                if not poller.poll(100):
                    continue
                frames = router.recv_multipart()
                if len(frames) != 3 or frames[1] != REQ_MAGIC or len(frames[2]) != REQ.size:
                    log.warning("%s replay: ignoring malformed request", self.stream)
                    continue
                ident = frames[0]
                req_id, start, end, max_count = REQ.unpack(frames[2])
                self._answer(router, ident, req_id, start, end, max_count)
        finally:
            router.close(0)

    def _answer(self, router: zmq.Socket, ident: bytes, req_id: int, start: int, end: int, max_count: int) -> None:
        j = self.journal
        last = j.last_seq
        first = j.first_seq if len(j) else last + 1
        stop = last if end < 0 else min(end, last)
        count = max(1, min(max_count or MAX_BATCH, MAX_BATCH))
        rid = struct.pack("<Q", req_id)
        s = max(start, first)
        sent = 0
        while s <= stop and sent < count:
            try:
                topic, header, payload = j.read(s)
            except KeyError:  # evicted meanwhile
                s += 1
                first = s
                continue
            frames = [ident, b"M", rid, topic, header] + ([payload] if payload is not None else [])
            router.send_multipart(frames, copy=False)
            sent += 1
            s += 1
        info = {"last": last, "first": first, "next": s, "epoch": j.epoch}
        router.send_multipart([ident, b"E", rid, msgspec.json.encode(info)])

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        with self._lock:
            self._pub.close(0)
        if self._auth is not None:
            self._auth.stop()
        if self._owns_ctx:
            self._ctx.term()
        self.journal.close()

    def __enter__(self) -> ReliablePublisher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
