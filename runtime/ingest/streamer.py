"""The streamer: export folder -> complete, ordered, de-duplicated volumes -> ZeroMQ.

One thread does everything (watch -> parse -> assemble -> order -> publish), so there are no
locks on the hot path; the watchdog observer only feeds it paths. Restart safety: every message
goes through the publisher's journal, and a ledger (`ingest_files.tsv` beside it) lists the
files already consumed; a streamer killed with `kill -9` and started again rebuilds its state
from both (published indices, declared gaps, followed series) and carries on, without
re-publishing or losing a volume.

Multi-echo series: one echo is published (`scanner.echo`, default the first). Files holding only
other echoes are skipped before de-duplication (they share the selected echo's volume index, so
they would otherwise pass for duplicates, and whichever echo arrived first would win); the
assembler keys volumes by (series, echo, index) as well.
"""

from __future__ import annotations

import gc
import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from runtime.config import EndpointsConfig, ScannerConfig, SessionConfig
from runtime.dicom import DicomPart, VolumeAssembler, parse_file
from runtime.errors import DicomError, IncompleteFile
from runtime.ingest.sequencer import Action, Gap, Publish, Sequencer
from runtime.ingest.series import SeriesSelector
from runtime.ingest.watcher import FolderWatcher
from runtime.messages import (
    ControlHeader,
    EventHeader,
    VolumeHeader,
    decode_header,
    volume_header,
    volume_payload,
)
from runtime.transport import ReliablePublisher
from runtime.volume import Volume

log = logging.getLogger(__name__)

STREAM = "volumes"
LEDGER = "ingest_files.tsv"


@dataclass
class StreamStats:
    published: int = 0
    gaps: list[int] = field(default_factory=list)
    duplicates: int = 0
    late: int = 0
    ignored_files: int = 0
    incomplete_files: int = 0
    other_series_files: int = 0
    other_echo_files: int = 0
    """Files of a multi-echo series holding only echoes other than `scanner.echo` (skipped)."""
    restored_published: int = 0
    latencies_ms: list[float] = field(default_factory=list)
    """Per published volume: last file parsed -> published (ms)."""

    def summary(self) -> str:
        lat = sorted(self.latencies_ms)
        med = f"{lat[len(lat) // 2]:.1f} ms" if lat else "n/a"
        return (
            f"published {self.published} volumes (median ingest latency {med}), gaps {len(self.gaps)}"
            f"{' ' + str(self.gaps) if self.gaps else ''}, duplicates dropped {self.duplicates}, late dropped {self.late}, "
            f"non-DICOM files ignored {self.ignored_files}, incomplete files given up {self.incomplete_files}"
            + (f", files of other echoes skipped {self.other_echo_files}" if self.other_echo_files else "")
        )


class _Ledger:
    """Files already consumed (`status<TAB>index<TAB>path`, appended and flushed per volume)."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self.paths: set[str] = set()
        self._fh = None
        if path is None:
            return
        if path.exists():
            with open(path, encoding="utf-8") as fh:
                for line in fh:
                    if line.endswith("\n"):
                        parts = line.rstrip("\n").split("\t", 2)
                        if len(parts) == 3:
                            self.paths.add(parts[2])
        self._fh = open(path, "a", encoding="utf-8")  # noqa: SIM115 - open for the streamer's life

    def add(self, status: str, index: int | None, paths: list[str]) -> None:
        if self._fh is None or not paths:
            return
        self._fh.write("".join(f"{status}\t{'' if index is None else index}\t{p}\n" for p in paths))
        self._fh.flush()

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()


class Streamer:
    """Watch `watch_dir` and publish the followed series' volumes on `publisher`.

    Drive it with `run(stop_event)` or call `step()` in your own loop. `on_volume(header, vol)`
    is called after each publish, `on_gap(indices)` after each declared gap.
    """

    def __init__(
        self,
        scanner: ScannerConfig,
        watch_dir: Path,
        publisher: ReliablePublisher,
        *,
        state_dir: Path | None = None,
        session: str = "",
        run: int = 1,
        use_events: bool | None = None,
        on_volume: Callable[[VolumeHeader, Volume], None] | None = None,
        on_gap: Callable[[list[int]], None] | None = None,
    ) -> None:
        self.scanner = scanner
        self.watch_dir = Path(watch_dir)
        self.publisher = publisher
        self.session = session
        self.run_number = run
        self.on_volume = on_volume
        self.on_gap = on_gap
        self.stats = StreamStats()
        self.watcher = FolderWatcher(
            self.watch_dir,
            poll_interval=scanner.poll_interval,
            use_events=scanner.use_file_events if use_events is None else use_events,
            settle_time=scanner.settle_time,
        )
        self.echo = scanner.echo
        self.assembler = VolumeAssembler(echo=self.echo)
        self._echo_logged: set[str] = set()
        self._echo_te: dict[str, float] = {}
        self._te_warned: set[str] = set()
        """Series -> echo time of the first file of the followed echo (see `_skip_echo_time`)."""
        self._echo_seen: dict[str, set[int]] = {}
        self._seen_sops: set[str] = set()
        self._files: dict[int, list[str]] = {}
        self._batches = 0
        self._last_activity = time.monotonic()
        self._ignored_logged = False
        self._dup_logged: set[tuple[int, ...]] = set()
        self._ignored_paths: set[str] = set()
        self.ended = False
        locked, next_index, gaps = self._restore()
        self.sequencer = Sequencer(scanner.gap_timeout, next_index=next_index, gaps=gaps)
        self.selector = SeriesSelector(scanner.series_number, scanner.series_description, locked)
        self.ledger = _Ledger(Path(state_dir) / LEDGER if state_dir is not None else None)

    # -- restart -------------------------------------------------------------------------------
    def _restore(self) -> tuple[str | None, int, set[int]]:
        series: str | None = None
        done: set[int] = set()
        gaps: set[int] = set()
        for _seq, _topic, raw, _payload in self.publisher.journal.iter_from(0):
            h = decode_header(raw)
            if isinstance(h, VolumeHeader):
                done.add(h.index)
                series = h.series_uid
            elif isinstance(h, EventHeader) and h.name == "gap":
                gaps.update(int(i) for i in h.data.get("indices", []))
        if not done and not gaps:
            return None, 0, set()
        self.stats.restored_published = len(done)
        nxt = max(done | gaps) + 1
        log.info("restored from journal: %d volumes published, %d gaps, next index %d", len(done), len(gaps), nxt)
        return series, nxt, gaps

    # -- lifecycle -----------------------------------------------------------------------------
    def start(self) -> None:
        # start-up objects (modules, config) never die: keep the GC from rescanning them on the
        # hot path (gen-2 collections during a volume's parse cost milliseconds)
        gc.collect()
        gc.freeze()
        for p in self.ledger.paths:
            self.watcher.mark_done(p)
        self.watcher.start()
        log.info("watching %s (file events %s, polling every %.0f ms)", self.watch_dir,
                 "on" if self.watcher.use_events else "off", self.scanner.poll_interval * 1000)

    def close(self) -> None:
        self.watcher.stop()
        self.ledger.close()

    # -- one iteration -------------------------------------------------------------------------
    def step(self, timeout: float = 0.1) -> None:
        due = self.sequencer.deadline()
        if due is not None:
            timeout = max(0.0, min(timeout, due - time.monotonic()))
        paths = self.watcher.wait(timeout)
        arrival = self._batches
        self._batches += 1
        parsed: list[tuple[DicomPart, float]] = []
        for path in paths:
            part = self._parse(path)
            if part is not None:
                parsed.append((part, time.time()))
                self.selector.note(part, arrival)
        if parsed:
            self._last_activity = time.monotonic()
            self.selector.choose()
            for part, t_parsed in parsed:
                self._feed(part, t_parsed)
        self._do(self.sequencer.tick(time.monotonic()))

    def _parse(self, path: str) -> DicomPart | None:
        now = time.monotonic()
        try:
            part = parse_file(path)
        except IncompleteFile:
            if not self.watcher.retry(path, now, give_up_after=max(2.0, self.scanner.gap_timeout)):
                self.stats.incomplete_files += 1
                log.warning("%s: still incomplete and unchanged; gave up on it (retried if it changes)", path)
            return None
        except DicomError as exc:
            self.watcher.reject(path)  # looked at again only if it changes
            self._ignored_paths.add(path)
            self.stats.ignored_files = len(self._ignored_paths)
            level = logging.INFO if not self._ignored_logged else logging.DEBUG
            self._ignored_logged = True
            log.log(level, "ignoring %s", exc)
            return None
        except OSError as exc:  # vanished / permission race: try again shortly
            self.watcher.retry(path, now, give_up_after=max(2.0, self.scanner.gap_timeout))
            log.debug("%s: %s", path, exc)
            return None
        self.watcher.mark_done(path)
        return part

    def _feed(self, part: DicomPart, t_parsed: float) -> None:
        path = part.path
        if not self.selector.follows(part):
            self.stats.other_series_files += 1
            if self.selector.locked:
                self.ledger.add("other_series", None, [path])
            return
        idx = part.volume_indices
        if part.echoes != (self.echo,) and self.echo not in part.echoes:
            self._skip_echo(part)
            return
        te = part.echo_times.get(self.echo)
        if te is not None and self._echo_te.setdefault(part.series_uid, te) != te:
            self._skip_echo_time(part, te)
            return
        if part.sop_uid and part.sop_uid in self._seen_sops:
            self.stats.duplicates += 1
            self._log_dup("%s: duplicate of SOP instance already received (volume %s); dropped", os.path.basename(path), idx)
            self.ledger.add("duplicate", idx[0] if idx else None, [path])
            return
        seq = self.sequencer
        if idx and all(seq.is_settled(i) or seq.is_held(i) for i in idx):
            if any(i in seq.gaps for i in idx):
                self.stats.late += 1
                log.warning("%s: volume %s arrived after it was declared missing; dropped (never out of order)",
                            os.path.basename(path), idx)
                self.ledger.add("late", idx[0], [path])
            else:
                self.stats.duplicates += 1
                self._log_dup("%s: another file for volume %s, already complete; dropped", os.path.basename(path), idx)
                self.ledger.add("duplicate", idx[0], [path])
            return
        if part.sop_uid:
            self._seen_sops.add(part.sop_uid)
        for i in idx:
            self._files.setdefault(i, []).append(path)
        try:
            vols = self.assembler.add(part)
        except DicomError as exc:
            log.error("cannot assemble %s: %s", path, exc)
            return
        for vol in vols:
            if seq.is_settled(vol.index) or seq.is_held(vol.index):
                self.stats.late += 1
                log.warning("volume %d completed after it was declared missing; dropped", vol.index)
                self.ledger.add("late", vol.index, self._files.pop(vol.index, []))
                continue
            self._do(seq.offer(vol, t_parsed, time.monotonic()))

    def _skip_echo(self, part: DicomPart) -> None:
        """A file holding only other echoes of a multi-echo series: skipped, counted, logged once
        per series (never a duplicate: its volume index is the selected echo's too)."""
        self.stats.other_echo_files += 1
        self._echo_seen.setdefault(part.series_uid, set()).update(part.echoes)
        if part.series_uid not in self._echo_logged:
            self._echo_logged.add(part.series_uid)
            log.info("series %s '%s' is multi-echo: publishing echo %d (scanner.echo); files of echo %s are skipped",
                     part.series_number, part.series_description, self.echo, ", ".join(map(str, part.echoes)))
        self.ledger.add("other_echo", part.volume_indices[0] if part.volume_indices else None, [part.path])

    def _skip_echo_time(self, part: DicomPart, te: float) -> None:
        """Same echo number, another echo time: a multi-echo export without EchoNumbers. Which
        echo time is shortest is not known until all have arrived, so the run follows the first
        one seen, consistently, rather than whichever echo of each volume happens to come first."""
        self.stats.other_echo_files += 1
        if part.series_uid not in self._te_warned:
            self._te_warned.add(part.series_uid)
            log.warning("series %s '%s': files with echo time %g ms besides %g ms but no EchoNumbers (multi-echo "
                        "export without echo numbers?): following %g ms, the first seen; files of other echo times "
                        "are skipped", part.series_number, part.series_description, te * 1000,
                        self._echo_te[part.series_uid] * 1000, self._echo_te[part.series_uid] * 1000)
        self.ledger.add("other_echo", part.volume_indices[0] if part.volume_indices else None, [part.path])

    def _log_dup(self, msg: str, name: str, idx: list[int]) -> None:
        """First duplicate file of a volume at INFO, the rest (other slices) at DEBUG."""
        key = tuple(idx)
        level = logging.DEBUG if key in self._dup_logged else logging.INFO
        self._dup_logged.add(key)
        log.log(level, msg, name, idx)

    def _do(self, actions: list[Action]) -> None:
        for a in actions:
            if isinstance(a, Gap):
                self._publish_gap(a.indices, a.reason)
            elif isinstance(a, Publish):
                self._publish_volume(a)

    def _publish_gap(self, indices: list[int], reason: str) -> None:
        if not indices:
            return
        self.stats.gaps.extend(indices)
        log.warning("volume(s) %s missing (%s); reported as a gap", _ranges(indices), reason)
        self.publisher.publish(
            EventHeader(session=self.session, run=self.run_number, name="gap",
                        data={"indices": indices, "reason": reason, "series_uid": self.selector.current or ""})
        )
        for i in indices:
            self.ledger.add("gap", i, self._files.pop(i, []))
        if self.on_gap is not None:
            self.on_gap(indices)

    def _publish_volume(self, a: Publish) -> None:
        vol = a.volume
        header = volume_header(vol, t_file_complete=a.t_file_complete, gap_before=list(a.gap_before),
                               session=self.session, run=self.run_number)
        self.publisher.publish(header, volume_payload(vol))
        self.selector.lock()
        self.stats.published += 1
        self.stats.latencies_ms.append((header.t_sent - a.t_file_complete) * 1000.0)
        self.ledger.add("published", vol.index, self._files.pop(vol.index, []))
        if self.on_volume is not None:
            self.on_volume(header, vol)

    # -- ending --------------------------------------------------------------------------------
    def end_run(self, count: int | None = None) -> None:
        """Declare what is still missing (up to `count` volumes if known), publish what is held,
        and send the end-of-run control message."""
        self._do(self.sequencer.flush())
        if self.stats.other_echo_files and not self.stats.published and not self.stats.restored_published:
            seen = sorted(set().union(*self._echo_seen.values()))
            log.warning("no file of echo %d arrived (scanner.echo); the series has echo(es) %s",
                        self.echo, ", ".join(map(str, seen)))
        if count is not None and self.sequencer.next_index < count:
            missing = list(range(self.sequencer.next_index, count))
            self.sequencer.next_index = count
            self.sequencer.gaps.update(missing)
            self._publish_gap(missing, "end of run")
        self.publisher.publish(
            ControlHeader(session=self.session, run=self.run_number, command="end_of_run",
                          data={"published": self.stats.published + self.stats.restored_published,
                                "gaps": sorted(self.sequencer.gaps), "next_index": self.sequencer.next_index})
        )
        self.ended = True

    def run(self, stop_event: threading.Event, *, count: int | None = None, idle_end: float | None = None) -> StreamStats:
        """Loop until `stop_event` is set, or `count` volume indices are settled (published or
        gap) / nothing new arrived for `idle_end` s (both then end the run with end_of_run)."""
        self.start()
        try:
            while not stop_event.is_set():
                self.step(0.05)
                if count is not None and self.sequencer.next_index >= count:
                    self.end_run(count)
                    break
                quiet = time.monotonic() - self._last_activity
                if count is not None and not self.sequencer.held and quiet >= self.scanner.gap_timeout + 1.0 \
                        and self.watcher.n_pending == 0 and self.sequencer.next_index > 0:
                    self.end_run(count)  # the run's last volumes never came
                    break
                if idle_end is not None and quiet >= idle_end and (self.stats.published or self.stats.restored_published):
                    self.end_run(count)
                    break
        finally:
            self.close()
        return self.stats


def _ranges(indices: list[int]) -> str:
    if len(indices) <= 3:
        return ", ".join(map(str, indices))
    return f"{indices[0]}..{indices[-1]}"


def run_streamer(
    cfg: SessionConfig,
    watch_dir: Path | None,
    endpoints: EndpointsConfig | tuple[str, str] | None,
    journal_dir: Path | None,
    stop_event: threading.Event,
    *,
    count: int | None = None,
    idle_end: float | None = None,
    use_events: bool | None = None,
    on_volume: Callable[[VolumeHeader, Volume], None] | None = None,
    on_gap: Callable[[list[int]], None] | None = None,
) -> StreamStats:
    """Run the streamer until `stop_event` (for `decnef stream` and for `decnef run`'s thread).

    `watch_dir` None = `cfg.scanner.watch_dir`; `endpoints` None = `cfg.endpoints`, or a
    (publish, replay) pair; `journal_dir` None = in-memory only (no restart safety).
    """
    from runtime.transport import load_keys

    if watch_dir is None:
        watch_dir = cfg.path(cfg.scanner.watch_dir)
    if endpoints is None:
        endpoints = cfg.endpoints
    if isinstance(endpoints, EndpointsConfig):
        pub_ep, rep_ep = endpoints.volumes, endpoints.volumes_replay
    else:
        pub_ep, rep_ep = endpoints
    curve = load_keys(cfg.path(cfg.endpoints.curve_keys) if cfg.endpoints.curve_keys else None, "server")
    publisher = ReliablePublisher(pub_ep, rep_ep, journal_dir, stream=STREAM, curve=curve)
    try:
        streamer = Streamer(
            cfg.scanner,
            Path(watch_dir),
            publisher,
            state_dir=journal_dir,
            session=f"sub-{cfg.session.subject}_ses-{cfg.session.session}",
            run=cfg.session.run,
            use_events=use_events,
            on_volume=on_volume,
            on_gap=on_gap,
        )
        return streamer.run(stop_event, count=count, idle_end=idle_end)
    finally:
        publisher.close()
