"""Ingest: ordering/gap logic, the folder watcher (polling only), series selection, and the
streamer in-process on real DICOM with real sockets (out-of-order arrival, duplicates, junk,
restart from the journal)."""

from __future__ import annotations

import hashlib
import shutil
import socket
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from runtime.config import ScannerConfig
from runtime.dicom import parse_file, read_series
from runtime.ingest import FolderWatcher, Gap, Publish, Sequencer, SeriesSelector, Streamer
from runtime.messages import ControlHeader, EventHeader, VolumeHeader, volume_payload
from runtime.transport import ReliablePublisher, ReliableSubscriber
from runtime.volume import Volume


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def vol(i: int) -> Volume:
    return Volume(data=np.full((2, 2, 2), i, np.float32), affine=np.eye(4), index=i)


# -- sequencer ---------------------------------------------------------------------------------
def test_sequencer_holds_until_predecessor_arrives() -> None:
    s = Sequencer(gap_timeout=5.0)
    assert s.offer(vol(1), 0.0, now=0.0) == []
    assert s.offer(vol(2), 0.0, now=0.1) == []
    out = s.offer(vol(0), 0.0, now=0.2)
    assert [a.volume.index for a in out] == [0, 1, 2]
    assert all(a.gap_before == [] for a in out)
    assert s.next_index == 3 and s.is_settled(2) and not s.is_settled(3)


def test_sequencer_declares_gap_after_timeout_and_marks_next_volume() -> None:
    s = Sequencer(gap_timeout=2.0)
    s.offer(vol(0), 0.0, now=0.0)
    assert s.offer(vol(3), 0.0, now=1.0) == []
    s.offer(vol(4), 0.0, now=1.5)
    assert s.tick(now=2.9) == []
    assert s.deadline() == pytest.approx(3.0)
    out = s.tick(now=3.0)
    assert isinstance(out[0], Gap) and out[0].indices == [1, 2]
    assert [(a.volume.index, a.gap_before) for a in out[1:]] == [(3, [1, 2]), (4, [])]
    assert s.is_settled(1) and 1 in s.gaps  # a late volume 1 must now be dropped
    with pytest.raises(ValueError):
        s.offer(vol(1), 0.0, now=4.0)


def test_sequencer_successive_gaps_use_their_own_timeouts() -> None:
    s = Sequencer(gap_timeout=1.0)
    s.offer(vol(2), 0.0, now=0.0)  # 0, 1 missing
    s.offer(vol(5), 0.0, now=0.5)  # 3, 4 missing
    out = s.tick(now=1.0)
    assert [type(a).__name__ for a in out] == ["Gap", "Publish"] and out[0].indices == [0, 1]
    assert s.tick(now=1.4) == []
    out = s.tick(now=1.5)
    assert out[0].indices == [3, 4] and out[1].volume.index == 5


def test_sequencer_flush_releases_everything_in_order() -> None:
    s = Sequencer(gap_timeout=100.0)
    s.offer(vol(4), 0.0, now=0.0)
    s.offer(vol(2), 0.0, now=0.0)
    out = s.flush()
    kinds = [(type(a).__name__, getattr(a, "indices", None) or a.volume.index) for a in out]
    assert kinds == [("Gap", [0, 1]), ("Publish", 2), ("Gap", [3]), ("Publish", 4)]
    assert isinstance(out[1], Publish) and out[1].gap_before == [0, 1]


# -- watcher (polling only) --------------------------------------------------------------------
def test_watcher_polling_only_finds_files_and_retries(tmp_path: Path) -> None:
    w = FolderWatcher(tmp_path, poll_interval=0.02, use_events=False)
    w.start()
    try:
        assert w.wait(0.05) == []
        (tmp_path / "a.dcm").write_bytes(b"x")
        (tmp_path / ".b.dcm.part").write_bytes(b"x")  # writer's temp name: never offered
        (tmp_path / "sub").mkdir()
        (tmp_path / "sub" / "c.dcm").write_bytes(b"x")
        got = set()
        deadline = time.monotonic() + 2
        while len(got) < 2 and time.monotonic() < deadline:
            got |= set(w.wait(0.1))
        assert got == {str(tmp_path / "a.dcm"), str(tmp_path / "sub" / "c.dcm")}
        w.mark_done(str(tmp_path / "sub" / "c.dcm"))
        assert w.retry(str(tmp_path / "a.dcm"), time.monotonic())
        again = w.wait(0.5)
        assert again == [str(tmp_path / "a.dcm")]  # offered again after retry_interval
        now = time.monotonic()
        assert not w.retry(str(tmp_path / "a.dcm"), now + 10, give_up_after=1.0)  # unchanged too long
        assert w.wait(0.1) == []
    finally:
        w.stop()


# -- series selection ----------------------------------------------------------------------------
def test_series_selection_rules(dicom_dir: Path) -> None:
    prisma = parse_file(sorted((dicom_dir / "siemens_mosaic_prisma_ep2d_asc").glob("*.dcm"))[0])
    skyra = parse_file(sorted((dicom_dir / "siemens_mosaic_skyra_rtcloud_faces").glob("*.dcm"))[0])
    assert prisma.series_number != skyra.series_number
    newer_num = max((prisma, skyra), key=lambda p: p.series_number)

    auto = SeriesSelector()
    auto.note(prisma, 0)
    auto.note(skyra, 0)
    assert auto.choose() == newer_num.series_uid  # both pre-existing: highest number

    late = SeriesSelector()
    late.note(newer_num, 0)
    older = prisma if newer_num is skyra else skyra
    late.note(older, 3)  # first file arrived after start-up: newest
    assert late.choose() == older.series_uid
    late.lock()
    other = SeriesSelector(locked_uid=older.series_uid)
    assert other.follows(older) and not other.follows(newer_num)

    by_number = SeriesSelector(series_number=prisma.series_number)
    by_number.note(prisma, 0)
    by_number.note(skyra, 5)
    assert by_number.choose() == prisma.series_uid
    by_desc = SeriesSelector(series_description=skyra.series_description)
    by_desc.note(prisma, 0)
    assert by_desc.choose() is None
    by_desc.note(skyra, 0)
    assert by_desc.choose() == skyra.series_uid


# -- streamer in-process -----------------------------------------------------------------------
class Harness:
    """A Streamer in a thread, a publisher and a subscriber on free loopback ports."""

    def __init__(self, watch: Path, journal: Path | None, **scanner) -> None:
        self.endpoints = (f"tcp://127.0.0.1:{free_port()}", f"tcp://127.0.0.1:{free_port()}")
        self.watch, self.journal = watch, journal
        self.scanner = ScannerConfig(**{"poll_interval": 0.02, "gap_timeout": 2.0, **scanner})
        self.stop = threading.Event()
        self.stats = None

    def start(self, use_events: bool = False, count: int | None = None) -> Harness:
        self.pub = ReliablePublisher(*self.endpoints, self.journal, stream="volumes")
        self.streamer = Streamer(self.scanner, self.watch, self.pub, state_dir=self.journal, use_events=use_events)
        self.thread = threading.Thread(target=self._run, args=(count,), daemon=True)
        self.thread.start()
        return self

    def _run(self, count) -> None:
        self.stats = self.streamer.run(self.stop, count=count)

    def close(self) -> None:
        self.stop.set()
        self.thread.join(10)
        self.pub.close()


def collect(sub: ReliableSubscriber, n_volumes: int, timeout: float = 20.0):
    vols, events = [], []
    deadline = time.monotonic() + timeout
    while len(vols) < n_volumes and time.monotonic() < deadline:
        msg = sub.recv(100)
        if msg is None:
            continue
        h, payload = msg
        if isinstance(h, VolumeHeader):
            vols.append((h, hashlib.sha1(payload).hexdigest()))
        else:
            events.append(h)
    return vols, events


def sha1_of(v: Volume) -> str:
    return hashlib.sha1(volume_payload(v).tobytes()).hexdigest()


def test_streamer_orders_dedupes_and_ignores_junk_on_real_mosaics(dicom_dir: Path, tmp_path: Path) -> None:
    src = dicom_dir / "siemens_mosaic_prisma_ep2d_asc"
    files = sorted(src.glob("*.dcm"))
    expected = {v.index: sha1_of(v) for v in read_series(src)}
    watch = tmp_path / "in"
    watch.mkdir()
    h = Harness(watch, tmp_path / "journal").start(use_events=False)  # polling only
    sub = ReliableSubscriber(*h.endpoints)
    try:
        for name in (files[1], files[0]):  # volume 1 before volume 0
            shutil.copyfile(name, watch / name.name)
            time.sleep(0.15)
        (watch / "notes.txt").write_text("operator notes, not DICOM\n")
        shutil.copyfile(files[0], watch / "copy_of_first.dcm")  # same SOP under another name
        for name in files[2:]:
            shutil.copyfile(name, watch / name.name)
            time.sleep(0.05)
        got, _ = collect(sub, 6)
        assert [hd.index for hd, _ in got] == [0, 1, 2, 3, 4, 5]
        assert [sha for _, sha in got] == [expected[i] for i in range(6)]
        assert all(hd.shape == (64, 64, 36) and hd.t_file_complete > 0 for hd, _ in got)
        assert got[0][0].t_file_complete > got[1][0].t_file_complete  # held: 1 completed first
        assert sub.recv(500) is None  # the duplicate was not published
    finally:
        sub.close()
        h.close()
    assert h.stats.published == 6 and h.stats.duplicates == 1 and h.stats.ignored_files == 1

    # restart on the same journal and folder: nothing is re-published, numbering continues
    h2 = Harness(watch, tmp_path / "journal")
    h2.endpoints = h.endpoints
    h2.start(use_events=True)
    sub = ReliableSubscriber(*h.endpoints, start_seq=6)
    try:
        assert sub.recv(800) is None
        # the next volume of the run (a renumbered copy of volume 0) is published as index 6
        from sim_scanner.replay import renumber

        data = renumber(files[0].read_bytes(), 6, 0, got[0][0].series_uid, 1)
        (watch / "next.dcm").write_bytes(data)
        nxt, _ = collect(sub, 1)
        assert [hd.index for hd, _ in nxt] == [6] and nxt[0][0].seq == 6
        assert nxt[0][1] == expected[0]
    finally:
        sub.close()
        h2.close()
    assert h2.stats.restored_published == 6 and h2.stats.published == 1


def test_streamer_declares_missing_volume_and_drops_late_arrival(dicom_dir: Path, tmp_path: Path) -> None:
    files = sorted((dicom_dir / "siemens_mosaic_prisma_ep2d_asc").glob("*.dcm"))
    watch = tmp_path / "in"
    watch.mkdir()
    h = Harness(watch, None, gap_timeout=0.6).start(use_events=True)
    sub = ReliableSubscriber(*h.endpoints)
    try:
        for f in (files[0], files[2], files[3]):
            shutil.copyfile(f, watch / f.name)
        got, events = collect(sub, 3)
        assert [(hd.index, hd.gap_before) for hd, _ in got] == [(0, []), (2, [1]), (3, [])]
        gap_events = [e for e in events if isinstance(e, EventHeader) and e.name == "gap"]
        assert [e.data["indices"] for e in gap_events] == [[1]]
        shutil.copyfile(files[1], watch / files[1].name)  # too late: dropped, never out of order
        time.sleep(0.5)
        assert sub.recv(300) is None
    finally:
        sub.close()
        h.close()
    assert h.stats.late == 1 and h.stats.gaps == [1]


def test_streamer_follows_configured_series_in_mixed_folder(dicom_dir: Path, tmp_path: Path) -> None:
    watch = tmp_path / "in"
    watch.mkdir()
    prisma = sorted((dicom_dir / "siemens_mosaic_prisma_ep2d_asc").glob("*.dcm"))
    skyra = sorted((dicom_dir / "siemens_mosaic_skyra_rtcloud_faces").glob("*.dcm"))[:4]
    for f in prisma[:3] + skyra:
        shutil.copyfile(f, watch / f"{f.parent.name}_{f.name}")
    number = parse_file(prisma[0]).series_number
    h = Harness(watch, None, series_number=number).start(count=3)
    sub = ReliableSubscriber(*h.endpoints)
    try:
        got, events = collect(sub, 3)
        end = sub.recv(3000)
    finally:
        sub.close()
        h.thread.join(10)
        h.close()
    assert [hd.index for hd, _ in got] == [0, 1, 2]
    assert {hd.series_number for hd, _ in got} == {number}
    assert end is not None and isinstance(end[0], ControlHeader) and end[0].command == "end_of_run"
    assert h.stats.other_series_files == 4
