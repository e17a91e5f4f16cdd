"""Which files in the export folder are worth (re)trying to parse now.

Why both file events and polling: local disks deliver inotify events within a millisecond (what
keeps latency low), but network shares (SMB/NFS exports from the scanner console) deliver none,
so a poll of the folder every `poll_interval` must find everything on its own. Polling is cheap:
a folder is listed again only when its mtime changed (new/renamed/deleted entries), plus a full
listing every `full_scan_interval` as a safety net for coarse mtimes on network shares.

The watcher does not parse; it hands out candidate paths (new files, files that changed, and
files the caller asked to `retry` later because they were still being written) and forgets
files the caller marks `done`.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import heapq
import logging
import os
import queue
import select
import struct
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

IGNORED_SUFFIXES = (".tmp", ".part", ".partial", ".swp", "~", ".lock")
"""Names writers use while a file is not finished (and renamed afterwards): never parsed."""


def ignored_name(name: str) -> bool:
    return name.startswith(".") or name.endswith(IGNORED_SUFFIXES)


@dataclass
class _Pending:
    first_seen: float
    next_try: float
    size: int = -1
    size_since: float = 0.0
    tries: int = 0


class FolderWatcher:
    """Candidate files of `folder` (recursively): new ones, and ones to try again."""

    def __init__(
        self,
        folder: Path,
        *,
        poll_interval: float = 0.02,
        use_events: bool = True,
        settle_time: float = 0.0,
        retry_interval: float = 0.02,
        full_scan_interval: float = 1.0,
    ) -> None:
        self.folder = Path(folder)
        self.poll_interval = poll_interval
        self.use_events = use_events
        self.settle_time = settle_time
        self.retry_interval = retry_interval
        self.full_scan_interval = full_scan_interval
        self._events: queue.SimpleQueue[str] = queue.SimpleQueue()
        self._pending: dict[str, _Pending] = {}
        self._heap: list[tuple[float, str]] = []
        self._done: set[str] = set()
        self._given_up: dict[str, tuple[int, int]] = {}
        self._dir_mtimes: dict[str, int] = {}
        self._next_poll = 0.0
        self._next_full = 0.0
        self._observer = None
        self._inotify: _Inotify | None = None
        self._lock = threading.Lock()

    # -- lifecycle ---------------------------------------------------------------------------
    def start(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        if self.use_events:
            try:
                # Linux: read inotify on this (the caller's) thread: no thread hand-offs between
                # the kernel event and the parse (watchdog's chain of 4 threads cost ~0.3 ms a file)
                self._inotify = _Inotify.open(self.folder)
                if self._inotify is None:
                    self._start_observer()
            except Exception as exc:  # inotify limits, unsupported filesystem: polling still works
                log.warning("file events unavailable for %s (%s); polling every %.0f ms", self.folder, exc, self.poll_interval * 1000)
                self._observer = None

    def _start_observer(self) -> None:
        from watchdog.events import FileSystemEventHandler
        from watchdog.observers import Observer

        events = self._events

        class _Handler(FileSystemEventHandler):
            def on_any_event(self, event) -> None:  # created / modified / closed / moved
                if event.is_directory or event.event_type == "deleted":
                    return
                path = getattr(event, "dest_path", "") or event.src_path
                events.put(os.fsdecode(path))

        obs = Observer()
        obs.schedule(_Handler(), str(self.folder), recursive=True)
        obs.daemon = True
        obs.start()
        self._observer = obs

    def stop(self) -> None:
        if self._inotify is not None:
            self._inotify.close()
            self._inotify = None
        if self._observer is not None:
            self._observer.stop()
            self._observer.join(2)
            self._observer = None

    # -- bookkeeping by the caller -----------------------------------------------------------
    def mark_done(self, path: str) -> None:
        """Parsed (or rejected for good): never hand it out again."""
        self._pending.pop(path, None)
        self._given_up.pop(path, None)
        self._done.add(path)

    def reject(self, path: str) -> None:
        """Not usable as it is (e.g. not DICOM): offer it again only if it changes (a writer that
        had only written a few bytes when we looked)."""
        self._pending.pop(path, None)
        self._given_up[path] = (_size(path), _mtime(path))

    def retry(self, path: str, now: float, *, give_up_after: float | None = None) -> bool:
        """Still being written: hand it out again after `retry_interval`. Returns False (and stops
        retrying until the file changes) when its size has not changed for `give_up_after` s."""
        p = self._pending.get(path)
        if p is None:
            p = self._pending[path] = _Pending(first_seen=now, next_try=now)
        p.tries += 1
        size = _size(path)
        if size != p.size:
            p.size, p.size_since = size, now
        if give_up_after is not None and now - p.size_since >= give_up_after:
            del self._pending[path]
            self._given_up[path] = (size, _mtime(path))
            return False
        p.next_try = now + self.retry_interval
        heapq.heappush(self._heap, (p.next_try, path))
        return True

    @property
    def n_pending(self) -> int:
        return len(self._pending)

    # -- discovery ---------------------------------------------------------------------------
    def _offer(self, path: str, now: float, out: dict[str, None]) -> None:
        if path in self._done or ignored_name(os.path.basename(path)):
            return
        if path in self._given_up:
            if (_size(path), _mtime(path)) == self._given_up[path]:
                return  # unchanged since we gave up on it
            del self._given_up[path]
        p = self._pending.get(path)
        if p is None:
            self._pending[path] = _Pending(first_seen=now, next_try=now)
        elif p.next_try - now > self.retry_interval / 4:
            p.next_try = now  # an event on a file being written: try it now
        if self.settle_time > 0 and not self._settled(path, now):
            return
        out[path] = None

    def _settled(self, path: str, now: float) -> bool:
        p = self._pending[path]
        size = _size(path)
        if size != p.size:
            p.size, p.size_since = size, now
        if now - p.size_since >= self.settle_time:
            return True
        p.next_try = p.size_since + self.settle_time
        heapq.heappush(self._heap, (p.next_try, path))
        return False

    def _scan(self, now: float, full: bool) -> list[str]:
        found: list[tuple[int, str]] = []
        stack = [str(self.folder)]
        while stack:
            d = stack.pop()
            try:
                mt = os.stat(d).st_mtime_ns
            except OSError:
                continue
            listed = self._dir_mtimes.get(d)
            if not full and listed == mt:
                # unchanged folder: only its sub-folders can hold news
                stack.extend(s for s in self._dir_mtimes if os.path.dirname(s) == d and s != d)
                continue
            self._dir_mtimes[d] = mt
            try:
                entries = list(os.scandir(d))
            except OSError:
                continue
            for e in entries:
                try:
                    if e.is_dir(follow_symlinks=False):
                        stack.append(e.path)
                    elif e.is_file() and e.path not in self._done and not ignored_name(e.name):
                        # in arrival order (mtime), so a batch found by one poll is fed in the
                        # order the export wrote it (originals before later duplicates)
                        found.append((e.stat().st_mtime_ns if e.path not in self._pending else 0, e.path))
                except OSError:
                    continue
        if full:
            for path, (size, mtime) in list(self._given_up.items()):
                if (_size(path), _mtime(path)) != (size, mtime):
                    del self._given_up[path]  # it changed after all: try again
        found.sort()
        return [p for _, p in found]

    def wait(self, timeout: float) -> list[str]:
        """Block up to `timeout` s for candidates; return the paths to try parsing now."""
        now = time.monotonic()
        deadline = now + timeout
        out: dict[str, None] = {}
        while True:
            now = time.monotonic()
            if now >= self._next_poll:
                full = now >= self._next_full
                for path in self._scan(now, full):
                    if path not in self._pending:
                        self._offer(path, now, out)
                self._next_poll = now + self.poll_interval
                if full:
                    self._next_full = now + self.full_scan_interval
            while self._heap and self._heap[0][0] <= now:
                _, path = heapq.heappop(self._heap)
                p = self._pending.get(path)
                if p is not None and p.next_try <= now:
                    if self.settle_time > 0 and not self._settled(path, now):
                        continue
                    out[path] = None
            for path in list(self._pending):  # nudged by an event
                p = self._pending[path]
                if p.next_try <= now and path not in out and (self.settle_time <= 0 or self._settled(path, now)):
                    out[path] = None
            if out or now >= deadline:
                return list(out)
            wake = min(deadline, self._next_poll, self._heap[0][0] if self._heap else deadline)
            if self._inotify is not None:
                paths = self._inotify.wait(max(0.0, wake - time.monotonic()))
                if paths is None:  # queue overflow: events were lost, the next scan is a full one
                    self._next_poll = self._next_full = 0.0
                    continue
                now = time.monotonic()
                for path in paths:
                    self._offer(path, now, out)
                if out:
                    return list(out)  # the file just completed goes first; a due scan waits
                continue
            try:
                path = self._events.get(timeout=max(0.0, wake - time.monotonic()))
            except queue.Empty:
                continue
            now = time.monotonic()
            self._offer(path, now, out)
            while True:  # drain the burst
                try:
                    self._offer(self._events.get_nowait(), now, out)
                except queue.Empty:
                    break
            if out:
                return list(out)


def _size(path: str) -> int:
    try:
        return os.stat(path).st_size
    except OSError:
        return -1


def _mtime(path: str) -> int:
    try:
        return os.stat(path).st_mtime_ns
    except OSError:
        return -1


# -- Linux inotify, read on the caller's thread ---------------------------------------------------
_IN_MODIFY, _IN_CLOSE_WRITE, _IN_MOVED_TO, _IN_CREATE = 0x2, 0x8, 0x80, 0x100
_IN_Q_OVERFLOW, _IN_IGNORED, _IN_ISDIR = 0x4000, 0x8000, 0x40000000
_IN_ONLYDIR, _IN_NONBLOCK, _IN_CLOEXEC = 0x01000000, 0o4000, 0o2000000
_MASK = _IN_MODIFY | _IN_CLOSE_WRITE | _IN_MOVED_TO | _IN_CREATE
_EVENT = struct.Struct("iIII")


class _Inotify:
    """inotify watches on a folder tree, polled with select() by the thread that parses."""

    def __init__(self, libc, fd: int) -> None:
        self._libc = libc
        self.fd = fd
        self._dirs: dict[int, str] = {}

    @classmethod
    def open(cls, folder: Path) -> _Inotify | None:
        """None where inotify is not available (not Linux): the caller uses watchdog instead."""
        if not sys.platform.startswith("linux"):
            return None
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        fd = libc.inotify_init1(_IN_NONBLOCK | _IN_CLOEXEC)
        if fd < 0:
            raise OSError(ctypes.get_errno(), f"inotify_init1: {os.strerror(ctypes.get_errno())}")
        ino = cls(libc, fd)
        try:
            ino.add_tree(str(folder), must=True)
        except OSError:
            ino.close()
            raise
        return ino

    def add_tree(self, top: str, *, must: bool = False) -> None:
        """Watch `top` and its sub-folders (a folder created later is added on its event; files
        written into it before its watch existed are found by the watcher's scan)."""
        stack = [top]
        while stack:
            d = stack.pop()
            wd = self._libc.inotify_add_watch(self.fd, os.fsencode(d), _MASK | _IN_ONLYDIR)
            if wd < 0:
                err = ctypes.get_errno()
                if must and d == top:
                    raise OSError(err, f"inotify_add_watch {d}: {os.strerror(err)}")
                log.debug("cannot watch %s: %s", d, os.strerror(err))
                continue
            self._dirs[wd] = d
            try:
                stack.extend(e.path for e in os.scandir(d) if e.is_dir(follow_symlinks=False))
            except OSError:
                continue

    def wait(self, timeout: float) -> list[str] | None:
        """Paths with events within `timeout` s (may be empty); None after a queue overflow."""
        try:
            ready, _, _ = select.select([self.fd], [], [], timeout)
        except InterruptedError:
            return []
        if not ready:
            return []
        try:
            buf = os.read(self.fd, 1 << 16)
        except OSError as exc:
            if exc.errno in (errno.EAGAIN, errno.EINTR):
                return []
            raise
        out: list[str] = []
        overflow = False
        pos = 0
        while pos + _EVENT.size <= len(buf):
            wd, mask, _cookie, n = _EVENT.unpack_from(buf, pos)
            name = buf[pos + _EVENT.size : pos + _EVENT.size + n].rstrip(b"\0")
            pos += _EVENT.size + n
            if mask & _IN_Q_OVERFLOW:
                overflow = True
                continue
            if mask & _IN_IGNORED:
                self._dirs.pop(wd, None)
                continue
            d = self._dirs.get(wd)
            if d is None or not name:
                continue
            path = os.path.join(d, os.fsdecode(name))
            if mask & _IN_ISDIR:
                if mask & (_IN_CREATE | _IN_MOVED_TO):
                    self.add_tree(path)
                continue
            out.append(path)
        return None if overflow else out

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
