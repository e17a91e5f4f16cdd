"""Multi-echo series: echoes are never mixed up, whatever order their files arrive in.

There is no multi-echo series in the shared data, so each one here is made from a real series
with the project's own DICOM writer: echo 1 is the real data at a short echo time, echo 2 is
0.6 x echo 1 at a longer one (a clearly different array), written as real files with
EchoNumbers set (classic: Siemens mosaic, Philips per-slice) or with per-frame MR Echo items
(enhanced: both echoes' frames in one file per volume, echo 2's frames first). Files are read
back by `read_series`, the `VolumeAssembler`, the real `decnef stream` -> `decnef listen`
processes on loopback ZeroMQ, and `decnef convert` next to the dcm2niix binary.
"""

from __future__ import annotations

import copy
import csv
import hashlib
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.uid import generate_uid

from runtime.config import ScannerConfig, parse_config
from runtime.dicom import (
    VolumeAssembler,
    parse_file,
    read_series,
    read_series_echoes,
    volume_to_datasets,
    write_dataset,
    write_series,
)
from runtime.dicom.write import SeriesSpec
from runtime.errors import ConfigError, DicomError
from runtime.ingest import Streamer
from runtime.messages import volume_payload
from runtime.transport import ReliablePublisher

TE = {1: 0.015, 2: 0.0388}
"""Echo times (s) of the synthetic echoes."""
FACTOR = {1: 1.0, 2: 0.6}
"""Echo n's array = FACTOR[n] x the real volume."""


def _echo_volumes(vols, echo: int):
    out = []
    for v in vols:
        w = copy.copy(v)
        w.data = (v.data * np.float32(FACTOR[echo])).astype(np.float32)
        w.meta = dict(v.meta)
        out.append(w)
    return out


def write_multiecho(vols, out: Path, layout: str, series_number: int) -> dict[int, list[np.ndarray]]:
    """Write echoes 1 and 2 of `vols` as one series in `out`; returns the arrays written per echo."""
    expected = {}
    for e in (1, 2):
        ev = _echo_volumes(vols, e)
        spec = SeriesSpec(layout=layout, series_number=series_number, series_description=f"me_{layout}",
                          manufacturer=vols[0].manufacturer or "SIEMENS", tr=vols[0].tr, n_volumes=len(vols),
                          echo_time=TE[e], echo_number=e)
        write_series(ev, out, spec=spec)
        expected[e] = [v.data for v in ev]
    return expected


def _tol(arrays: list[np.ndarray]) -> float:
    """Quantisation step of the writer (uint16 with a per-volume slope) and then some."""
    return max(float(np.abs(a).max()) for a in arrays) / 65000.0 + 1e-3


def _files_by_echo(folder: Path) -> dict[int, list[Path]]:
    out: dict[int, list[Path]] = {}
    for f in sorted(folder.glob("*.dcm")):
        out.setdefault(parse_file(f).echoes[0], []).append(f)
    return out


@pytest.fixture(scope="module")
def me_mosaic(dicom_dir: Path, tmp_path_factory) -> tuple[Path, dict[int, list[np.ndarray]]]:
    """Siemens Prisma mosaic (6 volumes, 64x64x36) as a 2-echo series: one mosaic file per echo,
    numbered as CMRR's multi-echo EPI numbers them: InstanceNumber counts every echo's image
    (volume k: 2k + 1 for echo 1, 2k + 2 for echo 2), AcquisitionNumber is the volume, and
    ImageType carries "TE1"/"TE2"."""
    vols = read_series(dicom_dir / "siemens_mosaic_prisma_ep2d_asc")
    out = tmp_path_factory.mktemp("me_mosaic")
    expected = write_multiecho(vols, out, "mosaic", 7)
    for f in out.glob("*.dcm"):
        ds = pydicom.dcmread(f)
        assert f"TE{int(ds.EchoNumbers)}" in ds.ImageType
        ds.InstanceNumber = (int(ds.AcquisitionNumber) - 1) * 2 + int(ds.EchoNumbers)
        write_dataset(ds, f, atomic=False)
    return out, expected


@pytest.fixture(scope="module")
def me_slices(dicom_dir: Path, tmp_path_factory) -> tuple[Path, dict[int, list[np.ndarray]]]:
    """Philips Achieva per-slice series (3 volumes, 64x64x9) as a 2-echo series: 54 files."""
    vols = read_series(dicom_dir / "philips_classic_achieva_phantom")
    assert vols[0].manufacturer.upper().startswith("PHILIPS")
    out = tmp_path_factory.mktemp("me_slices")
    return out, write_multiecho(vols, out, "slice", 8)


@pytest.fixture(scope="module")
def me_enhanced(dicom_dir: Path, tmp_path_factory) -> tuple[Path, dict[int, list[np.ndarray]]]:
    """Siemens XA30 enhanced (first 3 volumes, 64x64x33): one file per volume holding both
    echoes' frames (echo 2's first), each frame with its own MREchoSequence EffectiveEchoTime."""
    src = sorted(p for p in (dicom_dir / "siemens_enhanced_xa30_bold").iterdir() if p.is_file())
    vols = read_series(src)[:3]
    out = tmp_path_factory.mktemp("me_enhanced")
    expected: dict[int, list[np.ndarray]] = {1: [], 2: []}
    for v in vols:
        per_echo = {}
        for e in (1, 2):
            (w,) = _echo_volumes([v], e)
            spec = SeriesSpec(layout="enhanced", series_number=9, series_description="me_enhanced",
                              manufacturer="SIEMENS", tr=v.tr, n_volumes=len(vols), echo_time=TE[e])
            (per_echo[e],) = volume_to_datasets(w, spec)
            expected[e].append(w.data)
        ds = _merge_enhanced(per_echo)
        write_dataset(ds, out / f"vol{v.index + 1:03d}.dcm", atomic=False)
    return out, expected


def _merge_enhanced(per_echo: dict[int, Dataset]) -> Dataset:
    """Both echoes' frames in one enhanced file, echo 2 first, TE per frame (not shared)."""
    order = (2, 1)
    out = copy.deepcopy(per_echo[order[0]])
    shared = out.SharedFunctionalGroupsSequence[0]
    if "MREchoSequence" in shared:
        del shared.MREchoSequence
    frames = []
    for e in order:
        for fg in per_echo[e].PerFrameFunctionalGroupsSequence:
            fg = copy.deepcopy(fg)
            item = Dataset()
            item.EffectiveEchoTime = TE[e] * 1000.0
            fg.MREchoSequence = Sequence([item])
            frames.append(fg)
    out.PerFrameFunctionalGroupsSequence = Sequence(frames)
    out.NumberOfFrames = len(frames)
    assert all(per_echo[e].PixelRepresentation == out.PixelRepresentation for e in order)
    out.PixelData = b"".join(per_echo[e].PixelData for e in order)
    out.SOPInstanceUID = generate_uid(entropy_srcs=[per_echo[1].SOPInstanceUID, "merged"])
    out.file_meta.MediaStorageSOPInstanceUID = out.SOPInstanceUID
    return out


# -- parsing and offline reading ---------------------------------------------------------------
def test_parse_gives_each_file_its_echo(me_mosaic, me_slices) -> None:
    for folder, n_vol, per_vol in ((me_mosaic[0], 6, 1), (me_slices[0], 3, 9)):
        by_echo = _files_by_echo(folder)
        assert sorted(by_echo) == [1, 2] and all(len(fs) == n_vol * per_vol for fs in by_echo.values())
        p1, p2 = parse_file(by_echo[1][0]), parse_file(by_echo[2][0])
        assert p1.echo_times == {1: TE[1]} and p2.echo_times == {2: TE[2]}
        # same series, same volume, same slice positions: only the echo tells them apart
        assert p1.series_uid == p2.series_uid and p1.volume_indices == p2.volume_indices
        np.testing.assert_allclose(p1.frames[0].position, p2.frames[0].position)
        assert {f.echo for f in p2.frames} == {2}


@pytest.mark.parametrize("fixture", ["me_mosaic", "me_slices", "me_enhanced"])
def test_read_series_returns_exactly_the_chosen_echo(fixture: str, request) -> None:
    folder, expected = request.getfixturevalue(fixture)
    for e in (1, 2):
        vols = read_series(folder, echo=e)
        assert [v.index for v in vols] == list(range(len(expected[e])))
        for v, want in zip(vols, expected[e], strict=True):
            np.testing.assert_allclose(v.data, want, atol=_tol(expected[e]), rtol=0)
            assert v.meta["EchoNumber"] == e and v.meta["EchoTime"] == pytest.approx(TE[e])
    one, two = read_series(folder, echo=1), read_series(folder, echo=2)
    # clearly different arrays (0.6x), not two copies of whichever echo came first
    ratio = float(np.sum(two[0].data) / np.sum(one[0].data))
    assert ratio == pytest.approx(0.6, abs=0.01)
    # default = first echo (with a warning naming the others); every echo at once
    assert all(np.array_equal(a.data, b.data) for a, b in zip(read_series(folder), one, strict=True))
    both = read_series_echoes(folder)
    assert sorted(both) == [1, 2] and all(len(both[e]) == len(expected[e]) for e in (1, 2))
    with pytest.raises(DicomError, match=r"echo 3 not in series .* \(echoes present: 1, 2\)"):
        read_series(folder, echo=3)


def test_enhanced_echo_is_the_rank_of_the_echo_time(me_enhanced) -> None:
    folder, _ = me_enhanced
    part = parse_file(sorted(folder.glob("*.dcm"))[0])
    assert part.layout == "enhanced" and part.echoes == (1, 2)
    assert part.echo_times == {1: TE[1], 2: TE[2]}
    assert part.slices_per_volume == 33 and part.volume_indices == [0]
    # frames are stored echo 2 first: the numbering follows the echo time, not the frame order
    assert [f.echo for f in part.frames[:33]] == [2] * 33 and [f.echo for f in part.frames[33:]] == [1] * 33


def test_enhanced_one_echo_per_file_uses_echo_numbers(dicom_dir: Path, tmp_path: Path) -> None:
    """An enhanced file with one echo time declares its echo in EchoNumbers (writer's echo_number)."""
    src = sorted(p for p in (dicom_dir / "siemens_enhanced_xa30_bold").iterdir() if p.is_file())[:2]
    vols = read_series(src)
    for e in (1, 2):
        spec = SeriesSpec(layout="enhanced", series_number=4, manufacturer="SIEMENS", tr=vols[0].tr,
                          echo_time=TE[e], echo_number=e)
        write_series(_echo_volumes(vols, e), tmp_path, spec=spec)
    names = sorted(p.name for p in tmp_path.glob("*.dcm"))
    assert names == ["004_000001_e1.dcm", "004_000001_e2.dcm", "004_000002_e1.dcm", "004_000002_e2.dcm"]
    assert parse_file(tmp_path / "004_000001_e2.dcm").echoes == (2,)
    two = read_series(tmp_path, echo=2)
    np.testing.assert_allclose(two[1].data, vols[1].data * 0.6, atol=_tol([vols[1].data]), rtol=0)


# -- online assembly ---------------------------------------------------------------------------
@pytest.mark.parametrize("fixture", ["me_mosaic", "me_slices", "me_enhanced"])
def test_assembler_with_echo2_files_first_yields_echo1(fixture: str, request) -> None:
    folder, _ = request.getfixturevalue(fixture)
    ref = {e: {v.index: v.data for v in read_series(folder, echo=e)} for e in (1, 2)}
    files = sorted(folder.glob("*.dcm"))
    by_echo = _files_by_echo(folder) if fixture != "me_enhanced" else {1: [], 2: files}
    rng = random.Random(3)
    e1, e2 = list(by_echo[1]), list(by_echo[2])
    rng.shuffle(e1)
    rng.shuffle(e2)

    asm = VolumeAssembler()  # default: echo 1
    got = [v for f in e2 + e1 for v in asm.add(parse_file(f))]
    assert sorted(v.index for v in got) == sorted(ref[1])
    for v in got:
        assert v.meta["EchoNumber"] == 1 and v.meta["EchoTime"] == pytest.approx(TE[1])
        assert np.array_equal(v.data, ref[1][v.index])
    assert asm.skipped_echo_frames > 0 and asm.pending() == {}

    mixed = files[:]
    rng.shuffle(mixed)
    asm2 = VolumeAssembler(echo=2)
    got2 = [v for f in mixed for v in asm2.add(parse_file(f))]
    assert sorted(v.index for v in got2) == sorted(ref[2])
    assert all(np.array_equal(v.data, ref[2][v.index]) for v in got2)

    every = VolumeAssembler(echo=None)  # each echo its own volume
    got3 = [v for f in mixed for v in every.add(parse_file(f))]
    assert sorted((v.meta["EchoNumber"], v.index) for v in got3) == [(e, i) for e in (1, 2) for i in sorted(ref[e])]
    assert all(np.array_equal(v.data, ref[v.meta["EchoNumber"]][v.index]) for v in got3)


# -- decnef stream -> decnef listen (real processes, loopback ZeroMQ) --------------------------
ENV = dict(os.environ, PYTHONUNBUFFERED="1")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _decnef(*args: str, log: Path) -> subprocess.Popen:
    fh = open(log, "ab")  # noqa: SIM115 - closed with the process
    return subprocess.Popen([sys.executable, "-m", "runtime.cli.main", *args], stdout=fh, stderr=subprocess.STDOUT, env=ENV)


def _wait_for(cond, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def _sha1(vol) -> str:
    return hashlib.sha1(volume_payload(vol).tobytes()).hexdigest()


def _arrive(src: Path, watch: Path, order: list[Path]) -> None:
    """Files appear one by one in `order`, each atomically (written aside, renamed in)."""
    for f in order:
        tmp = watch / ("." + f.name + ".part")
        shutil.copyfile(f, tmp)
        os.replace(tmp, watch / f.name)
        time.sleep(0.03)


@pytest.mark.slow
def test_stream_to_listen_publishes_only_the_selected_echo(me_mosaic, me_slices, tmp_path: Path) -> None:
    """Two runs side by side: the mosaic series with the default echo (1), every volume's echo-2
    file arriving first; the per-slice series with `scanner.echo = 2` from a config file, echoes
    interleaved at random. The listener must receive exactly the selected echo, once, in order,
    and the streamer must report no duplicate."""
    rng = random.Random(11)
    mosaic_files = _files_by_echo(me_mosaic[0])
    mosaic_order = [f for pair in zip(mosaic_files[2], mosaic_files[1], strict=True) for f in pair]
    slice_order = sorted(me_slices[0].glob("*.dcm"))
    rng.shuffle(slice_order)
    cfg = tmp_path / "echo2.toml"
    cfg.write_text("[scanner]\necho = 2\ngap_timeout = 20.0\n")
    runs = {
        "mosaic": (me_mosaic[0], mosaic_order, 1, 6, []),
        "slices": (me_slices[0], slice_order, 2, 3, ["--config", str(cfg)]),
    }
    streamers: list[subprocess.Popen] = []
    listeners: list[subprocess.Popen] = []
    try:
        for name, (_src, _order, _echo, n, extra) in runs.items():
            d = tmp_path / name
            d.mkdir()
            (d / "watch").mkdir()
            pub, rep = f"tcp://127.0.0.1:{_free_port()}", f"tcp://127.0.0.1:{_free_port()}"
            # no --count: the streamer serves replays until told to stop, so a listener that
            # connects late still gets every volume
            streamers.append(_decnef("stream", *extra, "--watch", str(d / "watch"), "--endpoint", pub,
                                     "--replay-endpoint", rep, "--journal", str(d / "journal"), log=d / "stream.log"))
            listeners.append(_decnef("listen", "--endpoint", pub, "--replay-endpoint", rep, "--out",
                                     str(d / "received.tsv"), "--count", str(n), "--timeout", "60", log=d / "listen.log"))
        for name in runs:
            for role, ready in (("stream", "watching"), ("listen", "decnef listen:")):
                log = tmp_path / name / f"{role}.log"
                _wait_for(lambda log=log, ready=ready: log.exists() and ready in log.read_text(), 30, f"{name} {role} start")
        for name, (src, order, _echo, _n, _extra) in runs.items():
            _arrive(src, tmp_path / name / "watch", order)
        for p in listeners:
            assert p.wait(90) == 0
        for name, (_src, order, _echo, _n, _extra) in runs.items():  # every file consumed (ledger)
            ledger, k = tmp_path / name / "journal" / "ingest_files.tsv", len(order)
            _wait_for(lambda ledger=ledger, k=k: ledger.exists() and len(ledger.read_text().splitlines()) >= k,
                      30, f"{name}: all files in the ledger")
        for p in streamers:
            p.send_signal(signal.SIGTERM)
            assert p.wait(30) == 0
    finally:
        procs = streamers + listeners
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    for name, (src, order, echo, n, _extra) in runs.items():
        d = tmp_path / name
        with open(d / "received.tsv", newline="") as fh:
            rows = [r for r in csv.DictReader(fh, delimiter="\t") if r.get("sha1")]
        want = {v.index: _sha1(v) for v in read_series(src, echo=echo)}
        assert [int(r["index"]) for r in rows] == list(range(n)), name
        assert [r["sha1"] for r in rows] == [want[i] for i in range(n)], f"{name}: not echo {echo}"
        log = (d / "stream.log").read_text()
        assert "duplicate" not in log.replace("duplicates dropped 0", "") and "already complete" not in log, log
        assert log.count("is multi-echo: publishing echo") == 1, log  # once per series, not per file
        assert f"files of other echoes skipped {len(order) // 2}" in log, log
        ledger = (d / "journal" / "ingest_files.tsv").read_text().splitlines()
        assert sum(line.startswith("other_echo\t") for line in ledger) == len(order) // 2


def test_bad_echo_is_a_one_line_config_error(tmp_path: Path) -> None:
    for bad, expect in (("0", "got 0; expected `int` >= 1"), ('"combine"', "got 'combine'; expected `int`"),
                        ("1.5", "got 1.5; expected `int`")):
        with pytest.raises(ConfigError) as exc:
            parse_config(f"[scanner]\necho = {bad}\n", origin="s.toml")
        msg = str(exc.value)
        assert "\n" not in msg and msg.startswith("s.toml: key 'scanner.echo':") and expect in msg
    assert parse_config("[scanner]\necho = 3\n").scanner.echo == 3 and parse_config("").scanner.echo == 1
    cfg = tmp_path / "bad.toml"
    cfg.write_text('[scanner]\necho = "combine"\n')
    r = subprocess.run([sys.executable, "-m", "runtime.cli.main", "stream", "--config", str(cfg), "--watch", str(tmp_path)],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and r.stderr.strip().count("\n") == 0 and "scanner.echo" in r.stderr
    assert "Traceback" not in r.stderr


# -- decnef convert next to dcm2niix -----------------------------------------------------------
@pytest.mark.parametrize("fixture", ["me_mosaic", "me_slices"])
def test_convert_names_and_sidecars_match_dcm2niix(fixture: str, request, tmp_path: Path, dcm2niix) -> None:
    folder, _ = request.getfixturevalue(fixture)
    dcm2niix(folder, tmp_path / "d2n", "-b", "y")
    ref_names = sorted(p.name for p in (tmp_path / "d2n").glob("*.nii"))
    assert ref_names == ["ref_e1.nii", "ref_e2.nii"]  # dcm2niix: _e<n> on every echo of a multi-echo series
    r = subprocess.run([sys.executable, "-m", "runtime.cli.main", "convert", str(folder), str(tmp_path / "ours" / "ref.nii")],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert sorted(p.name for p in (tmp_path / "ours").glob("*.nii")) == ref_names
    assert len(r.stdout.strip().splitlines()) == 2 and "echo 2 (TE 38.8 ms)" in r.stdout
    for name in ref_names:
        ours, ref = nib.load(tmp_path / "ours" / name), nib.load(tmp_path / "d2n" / name)
        assert ours.shape == ref.shape
        np.testing.assert_allclose(ours.affine, ref.affine, atol=1e-3)
        x, y = ours.get_fdata(dtype=np.float32), ref.get_fdata(dtype=np.float32)
        np.testing.assert_allclose(x, y, rtol=1e-5, atol=_tol([y]))
        js_ours = json.loads((tmp_path / "ours" / name.replace(".nii", ".json")).read_text())
        js_ref = json.loads((tmp_path / "d2n" / name.replace(".nii", ".json")).read_text())
        for key in ("EchoNumber", "EchoTime", "RepetitionTime", "SeriesNumber"):
            assert js_ours[key] == pytest.approx(js_ref[key]), key
        assert js_ours["EchoTime"] == pytest.approx(TE[js_ours["EchoNumber"]])

    # --echo N: that echo only, under the name given; an echo the series lacks is a one-line error
    out2 = tmp_path / "pick" / "bold.nii.gz"
    r = subprocess.run([sys.executable, "-m", "runtime.cli.main", "convert", str(folder), str(out2), "--echo", "2"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert sorted(p.name for p in out2.parent.iterdir()) == ["bold.json", "bold.nii.gz"]
    np.testing.assert_allclose(nib.load(out2).get_fdata(dtype=np.float32),
                               nib.load(tmp_path / "d2n" / "ref_e2.nii").get_fdata(dtype=np.float32), rtol=1e-5,
                               atol=_tol([nib.load(tmp_path / "d2n" / "ref_e2.nii").get_fdata()]))
    side = json.loads(out2.with_name("bold.json").read_text())
    assert side["EchoNumber"] == 2 and side["EchoTime"] == pytest.approx(TE[2])
    r = subprocess.run([sys.executable, "-m", "runtime.cli.main", "convert", str(folder), str(tmp_path / "x.nii.gz"),
                        "--echo", "3"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and r.stderr.strip().count("\n") == 0 and "the series has echo(es) 1, 2" in r.stderr


def test_single_echo_convert_has_no_echo_suffix(dicom_dir: Path, tmp_path: Path) -> None:
    """Single-echo series: one file, under the given name, no EchoNumber (as dcm2niix)."""
    out = tmp_path / "bold.nii.gz"
    r = subprocess.run([sys.executable, "-m", "runtime.cli.main", "convert", str(dicom_dir / "siemens_mosaic_prisma_ep2d_asc"),
                        str(out)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bold.json", "bold.nii.gz"]
    side = json.loads((tmp_path / "bold.json").read_text())
    assert "EchoNumber" not in side and side["EchoTime"] == pytest.approx(0.03)


# -- multi-echo without EchoNumbers (echo told apart by echo time only) ------------------------
@pytest.fixture(scope="module")
def me_no_numbers(dicom_dir: Path, tmp_path_factory) -> tuple[Path, dict[int, list[Path]]]:
    """The Prisma mosaic as 2 echoes with different EchoTime but no EchoNumbers element (as some
    classic exports write them): files named and UID'd per echo by hand."""
    vols = read_series(dicom_dir / "siemens_mosaic_prisma_ep2d_asc")
    out = tmp_path_factory.mktemp("me_no_numbers")
    files: dict[int, list[Path]] = {1: [], 2: []}
    for e in (1, 2):
        spec = SeriesSpec(layout="mosaic", series_number=6, series_description="me_nonum", tr=vols[0].tr,
                          n_volumes=len(vols), echo_time=TE[e])
        for v in _echo_volumes(vols, e):
            (ds,) = volume_to_datasets(v, spec)
            assert "EchoNumbers" not in ds
            ds.SOPInstanceUID = generate_uid(entropy_srcs=[ds.SOPInstanceUID, f"te{e}"])
            ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
            files[e].append(write_dataset(ds, out / f"MR.{v.index + 1:04d}.te{e}.dcm", atomic=False))
    return out, files


def test_no_echo_numbers_offline_numbers_echoes_by_echo_time(me_no_numbers, caplog) -> None:
    folder, _ = me_no_numbers
    assert {parse_file(f).echoes for f in folder.glob("*.dcm")} == {(1,)}  # the files cannot tell
    with caplog.at_level("WARNING"):
        two = read_series(folder, echo=2)
    assert "no EchoNumbers but 2 echo times (15, 38.8 ms)" in caplog.text
    one = read_series(folder, echo=1)
    assert [v.meta["EchoTime"] for v in one + two] == pytest.approx([TE[1]] * 6 + [TE[2]] * 6)
    for a, b in zip(one, two, strict=True):
        assert float(b.data.sum() / a.data.sum()) == pytest.approx(0.6, abs=0.01)


def test_no_echo_numbers_streamer_follows_one_echo_time(me_no_numbers, tmp_path: Path, caplog) -> None:
    """Online the order of echo times is unknown until all have arrived: the streamer follows the
    echo time of the first file and skips the others, so every volume is the same echo (never
    whichever echo of each volume came first)."""
    _folder, files = me_no_numbers
    order = [files[1][0], files[2][0]] + [f for k in range(1, 6) for f in ((files[2][k], files[1][k]) if k % 2 else
                                                                          (files[1][k], files[2][k]))]
    watch = tmp_path / "watch"
    watch.mkdir()
    pub = ReliablePublisher(f"tcp://127.0.0.1:{_free_port()}", f"tcp://127.0.0.1:{_free_port()}", None, stream="volumes")
    got = []
    streamer = Streamer(ScannerConfig(gap_timeout=20.0), watch, pub, use_events=True,
                        on_volume=lambda _h, v: got.append(v))
    stop = threading.Event()
    th = threading.Thread(target=streamer.run, args=(stop,), kwargs={"count": 6}, daemon=True)
    try:
        with caplog.at_level("INFO"):
            th.start()
            time.sleep(0.3)
            _arrive(_folder, watch, order)
            th.join(30)
    finally:
        stop.set()
        th.join(5)
        pub.close()
    assert [v.index for v in got] == list(range(6))
    assert all(v.meta["EchoTime"] == pytest.approx(TE[1]) for v in got)
    ref = read_series(files[1])
    assert all(np.array_equal(a.data, b.data) for a, b in zip(got, ref, strict=True))
    assert streamer.stats.duplicates == 0 and streamer.stats.other_echo_files == 6
    assert caplog.text.count("but no EchoNumbers") == 1 and "duplicate" not in caplog.text
