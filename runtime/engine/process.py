"""The `decnef engine` role: volumes in over ZeroMQ, scores/telemetry/events out, files on disk.

Why a thin shell around `EngineCore`: all the science is in the core (testable without sockets);
this module owns the sockets (a `ReliableSubscriber` on the streamer's volume stream, a
`ReliablePublisher` whose journal lives in the run's output folder), the write-ahead order of
the output files (see `runtime.engine.recovery`), warm-up before the first volume, the end of
the run (end-of-run control message, last scan of the protocol, Ctrl-C/SIGTERM or a
`stop_event`) and the 4D NIfTI written at the end from the crash-proof volume spool.
"""

from __future__ import annotations

import contextlib
import math
import shutil
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from runtime.config import SessionConfig
from runtime.errors import BundleError, ConfigError, UserError
from runtime.messages import (
    TOPIC_CONTROL,
    TOPIC_EVENT,
    TOPIC_VOLUME,
    ControlHeader,
    EventHeader,
    VolumeHeader,
    volume_from_message,
    volume_header,
    volume_payload,
)
from runtime.outputs import (
    MOTION_COLUMNS,
    SCORE_COLUMNS,
    TIMING_COLUMNS,
    RoiSpool,
    RunFiles,
    TsvWriter,
    VolumeSpool,
    file_sha256,
    update_provenance,
    write_config_and_provenance,
)
from runtime.volume import Volume

from .core import EngineCore, ScoreRecord, VolumeResult
from .recovery import recover, save_reference


def load_decoder(cfg: SessionConfig) -> tuple[Any, Path]:
    """Load the session's decoder bundle; any problem is one line naming the file."""
    if not cfg.decoder.bundle:
        raise ConfigError("key 'decoder.bundle': empty; expected the path of a decoder bundle (decnef train)")
    path = cfg.path(cfg.decoder.bundle)
    if not path.exists():
        raise BundleError(f"{path}: decoder bundle not found (key 'decoder.bundle')")
    from decoders import bundle as dbundle

    try:
        b = dbundle.load_bundle(path)
    except dbundle.BundleError as exc:
        msg = str(exc)
        raise BundleError(msg if str(path) in msg else f"{path}: {msg}") from None
    if getattr(b, "kind", "linear") == "connectivity":
        _check_fc_windows(cfg, b, path)
    target = cfg.decoder.target_class
    if target and target != str(b.target_class):
        classes = [str(c) for c in b.classes]
        if target not in classes:
            raise ConfigError(f"key 'decoder.target_class': got {target!r}; the bundle {path.name} has classes {classes}")
        import dataclasses

        b = dataclasses.replace(b, target_class=target)
    from runtime.percentile import load_reference

    load_reference(cfg, b)  # decoder.score = "percentile": refuse a reference made for another bundle
    return b, path


def _check_fc_windows(cfg: SessionConfig, b: Any, path: Path) -> None:
    """A connectivity bundle scores a trial by a correlation over its window's valid scans, which
    needs at least `min_valid_scans` (3) of them: a protocol whose windows are shorter could never
    give feedback, so it is refused before the run."""
    from runtime.features import FC_MIN_SCANS
    from runtime.protocol import build_table

    need = max(int(b.extra.get("min_valid_scans", FC_MIN_SCANS)), FC_MIN_SCANS)
    table = build_table(cfg.protocol)
    short = [t for t in table.trials if len(t.window) < need]
    if short:
        raise ConfigError(f"keys 'protocol.window_start'/'window_end': trial {short[0].number}'s score window has "
                          f"{len(short[0].window)} scans, but the connectivity bundle {path.name} "
                          f"needs >= {need} valid scans per window for a correlation")


@dataclass
class EngineSummary:
    output_dir: Path
    volumes: int = 0
    ok: int = 0
    ng: int = 0
    missing: int = 0
    discarded: int = 0
    trials: int = 0
    scores: dict[int, float | None] = field(default_factory=dict)
    no_feedback: int = 0
    restarted: bool = False
    processed_ms: list[float] = field(default_factory=list)
    """file complete → volume processed, per volume handled by this process."""
    ended_by: str = ""

    def latency(self, q: float) -> float:
        return float(np.percentile(self.processed_ms, q)) if self.processed_ms else float("nan")

    def lines(self) -> list[str]:
        shown = [s for s in self.scores.values() if s is not None]
        mean = f"{np.mean(shown):.1f}" if shown else "n/a"
        return [
            f"run end ({self.ended_by}): {self.volumes} volumes ({self.ok} ok, {self.ng} NG, {self.discarded} discarded, "
            f"{self.missing} missing); {len(self.scores)}/{self.trials} trials scored, {self.no_feedback} without feedback, "
            f"mean score {mean}",
            f"file complete -> processed: median {self.latency(50):.1f} ms, p99 {self.latency(99):.1f} ms "
            f"over {len(self.processed_ms)} volumes" + (" (this process; restarted)" if self.restarted else ""),
            f"outputs: {self.output_dir}",
        ]


def _score_line(rec: ScoreRecord, latency_ms: float | None) -> str:
    h = rec.header
    score = "  --" if h.score is None else f"{h.score:4.0f}"
    lik = "   n/a" if h.likelihood is None else f"{h.likelihood:6.3f}"
    lat = "" if latency_ms is None or not math.isfinite(latency_ms) else f"  {latency_ms:6.1f} ms"
    label = f" {h.label}" if h.label else ""
    flags = f"  [{h.flags}]" if h.flags else ""
    return f"trial {h.trial:3d}{label}  score {score}  L {lik}  valid {h.n_valid_scans}  vol {h.volume}{lat}{flags}"


class Engine:
    """One run of the online engine with its sockets and files (use `run_engine`)."""

    def __init__(self, cfg: SessionConfig, *, output_root: str | Path | None = None, bundle: Any = None,
                 log: Callable[[str], None] = print) -> None:
        from runtime.transport import ReliablePublisher, load_keys

        self.cfg = cfg
        self.log = log
        bundle_path = None
        if bundle is None:
            bundle, bundle_path = load_decoder(cfg)
        self.bundle = bundle
        self.files = RunFiles.for_run(cfg, output_root)
        self.core = EngineCore(cfg, bundle)
        self.summary = EngineSummary(output_dir=self.files.func, trials=len(self.core.table.trials))
        ep = cfg.endpoints
        self._client_keys = load_keys(cfg.path(ep.curve_keys) if ep.curve_keys else None, "client")
        try:
            self.publisher = ReliablePublisher(ep.scores, ep.scores_replay, self.files.journal, stream="scores",
                                               curve=load_keys(cfg.path(ep.curve_keys) if ep.curve_keys else None, "server"))
        except OSError as exc:
            raise UserError(f"keys 'endpoints.scores'/'endpoints.scores_replay': {exc} (is another engine running?)") from None
        try:
            self.motion = TsvWriter(self.files.motion, MOTION_COLUMNS)
            self.scores = TsvWriter(self.files.scores, SCORE_COLUMNS, fsync=True)
            self.timing = TsvWriter(self.files.timing, TIMING_COLUMNS)
            self.roi = RoiSpool(self.files.roi, len(self.core.voxels), self.core.n_nuisance)
            self.spool = VolumeSpool(self.files.volumes) if cfg.output.save_volumes else None
            self.recovered = recover(self.files, journal=self.publisher.journal, score_writer=self.scores)
            if not self.recovered.empty:
                self.core.restore(self.recovered.volumes, self.recovered.scored, self.recovered.reference)
                self.summary.restarted = True
                for rv in self.recovered.volumes:
                    self._count(rv.status)
            fsha = file_sha256(bundle_path) if bundle_path and bundle_path.is_file() else None
            write_config_and_provenance(cfg, output_root, bundle_path=bundle_path,
                                        bundle_sha256=fsha or getattr(bundle, "sha256", None),
                                        extra={"decoder_content_sha256": getattr(bundle, "sha256", None),
                                               "restart": self.summary.restarted,
                                               **self._reference_provenance(),
                                               "resumed_after_seq": self.recovered.last_seq})
            self._output_root = output_root
            self.warmup_ms = self.core.warmup() + self._warm_wire()
        except BaseException:
            self.publisher.close()
            raise
        self._headers: dict[int, VolumeHeader] = {}
        self.finished = False

    def _reference_provenance(self) -> dict[str, Any]:
        """decoder.score = "percentile": the reference file and its SHA-256, like the bundle's."""
        d = self.cfg.decoder
        if d.score != "percentile" or not d.percentile_reference:
            return {}
        path = self.cfg.path(d.percentile_reference)
        return {"percentile_reference": str(path),
                "percentile_reference_sha256": file_sha256(path) if path.is_file() else None}

    def _warm_wire(self) -> float:
        """Encode/decode each message kind once (msgspec builds its codecs on first use)."""
        from runtime.messages import ScoreHeader, TelemetryHeader, decode_header, encode_header

        t0 = time.perf_counter()
        vol = Volume(data=np.zeros((2, 2, 2), np.float32), affine=np.eye(4), index=0)
        raw = encode_header(volume_header(vol))
        volume_from_message(decode_header(raw), volume_payload(vol).tobytes())
        for h in (ScoreHeader(trial=0, score=1.0, likelihood=0.5), TelemetryHeader(volume=0, timings={"a": 1.0}),
                  EventHeader(name="warmup", data={"a": [1]})):
            decode_header(encode_header(h))
        return (time.perf_counter() - t0) * 1e3

    def _count(self, status: str) -> None:
        s = self.summary
        if status == "missing":
            s.missing += 1
            return
        s.volumes += 1
        if status == "ok":
            s.ok += 1
        elif status == "ng":
            s.ng += 1
        elif status == "discard":
            s.discarded += 1

    # -- messages ---------------------------------------------------------------------------------
    def subscribe(self):
        from runtime.transport import ReliableSubscriber

        ep = self.cfg.endpoints
        return ReliableSubscriber(ep.volumes, ep.volumes_replay, topics=[TOPIC_VOLUME, TOPIC_CONTROL, TOPIC_EVENT],
                                  start_seq=self.recovered.last_seq + 1, curve=self._client_keys)

    def handle(self, header: Any, payload: Any, t_received: float | None = None) -> bool:
        """One message from the volume stream; True when the run is over."""
        t_received = time.time() if t_received is None else t_received
        if isinstance(header, EventHeader):
            if header.name == "gap":
                res = self.core.declare_missing(header.data.get("indices", ()))
                if res is not None:
                    self._emit(res, None, 0.0, t_received)
            return False
        if isinstance(header, ControlHeader):
            if header.command == "end_of_run":
                nxt = header.data.get("next_index")
                if isinstance(nxt, int) and nxt - 1 > self.core.last_index:
                    res = self.core.declare_missing(range(self.core.last_index + 1, nxt))
                    if res is not None:
                        self._emit(res, None, 0.0, t_received)
                self.finish(score_remaining=True, reason=header.command)
                return True
            if header.command == "stop":
                self.finish(score_remaining=False, reason="stop")
                return True
            if header.command == "abort":
                self.finish(score_remaining=False, reason="abort")
                return True
            return False
        if not isinstance(header, VolumeHeader):
            return False
        td = time.perf_counter()
        try:
            vol = volume_from_message(header, payload)
        except (ValueError, TypeError) as exc:  # payload does not match its header: skip it (a gap)
            self.publisher.publish(EventHeader(session=self.core.session_id, run=self.core.run, name="fault",
                                               data={"volume": header.index, "error": f"undecodable volume: {exc}"[:300]}))
            return False
        decode_ms = (time.perf_counter() - td) * 1e3
        self._headers[vol.index] = header
        results = self.core.process(vol, gap_before=header.gap_before, t_file_complete=header.t_file_complete)
        for res in results:
            if res.status != "stale":
                h = self._headers.pop(res.volume, header)
                self._emit(res, h, decode_ms, t_received)
        if self.core.done:
            self.finish(score_remaining=True, reason="last scan of the protocol")
            return True
        return False

    def _emit(self, res: VolumeResult, header: VolumeHeader | None, decode_ms: float, t_received: float) -> None:
        tp = time.perf_counter()
        pub = self.publisher
        for sc in res.scores:
            pub.publish(sc.header)
        for ev in res.events:
            pub.publish(ev)
        if res.telemetry is not None:
            res.telemetry.timings["decode_ms"] = decode_ms
            pub.publish(res.telemetry)
        publish_ms = (time.perf_counter() - tp) * 1e3
        t_processed = time.time()
        # write-ahead order (runtime.engine.recovery): spools, score rows, motion rows, timing row
        vol = res.source
        res.source = None
        if res.is_reference and self.core.ref_index is not None:
            data, affine = self.core.reference_data
            save_reference(self.files.reference, data, affine, self.core.ref_index)
        if self.spool is not None and vol is not None:
            self.spool.put(res.volume, vol.data, {
                "affine": np.asarray(vol.affine).ravel().tolist(), "tr": vol.tr, "acquisition_time": vol.acquisition_time,
                "slice_times": list(vol.slice_times) if vol.slice_times else None, "manufacturer": vol.manufacturer,
                "series_number": vol.series_number, "series_description": vol.series_description, "meta": vol.meta,
            })  # fmt: skip
        if res.roi is not None:
            values, valid, nuisance = res.roi
            self.roi.append(res.volume, valid, values, nuisance)
        latency = (t_processed - header.t_file_complete) * 1e3 if header is not None and header.t_file_complete else float("nan")
        for sc in res.scores:
            self.scores.write(sc.row())
            self.summary.scores[sc.header.trial] = sc.header.score
            self.summary.no_feedback += sc.header.score is None
            self.log(_score_line(sc, latency))
        for row in res.motion_rows:
            self.motion.write(row)
            self._count(row["status"])
        if header is None:
            return  # missing volumes declared by the streamer: no timing row
        self.timing.write({
            "volume": res.volume, "seq": header.seq, "t_file_complete": header.t_file_complete or None,
            "t_published": header.t_sent or None, "t_received": t_received, "t_realigned": res.t_realigned or None,
            "t_processed": t_processed, "decode_ms": decode_ms, "publish_ms": publish_ms, **res.timings,
        })  # fmt: skip
        if math.isfinite(latency):
            self.summary.processed_ms.append(latency)

    # -- end of run --------------------------------------------------------------------------------
    def finish(self, *, score_remaining: bool, reason: str) -> EngineSummary:
        if self.finished:
            return self.summary
        self.finished = True
        self.summary.ended_by = reason
        for sc in self.core.finish(score_remaining=score_remaining):
            self.publisher.publish(sc.header)
            self.scores.write(sc.row())
            self.summary.scores[sc.header.trial] = sc.header.score
            self.summary.no_feedback += sc.header.score is None
            self.log(_score_line(sc, None))
        self.publisher.publish(EventHeader(session=self.core.session_id, run=self.core.run, name="engine_end",
                                           data={"reason": reason, "volumes": self.summary.volumes,
                                                 "trials_scored": len(self.summary.scores)}))
        complete = score_remaining
        bold = self.write_bold(remove_spool=complete)
        update_provenance(self.cfg, self._output_root, finished=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                          ended_by=reason, volumes=self.summary.volumes, trials_scored=len(self.summary.scores),
                          bold=bold.name if bold else None)
        for line in self.summary.lines():
            self.log(line)
        return self.summary

    def write_bold(self, *, remove_spool: bool = True) -> Path | None:
        """4D NIfTI + sidecar of every received volume, from the spool (missing volumes: zeros,
        listed in the sidecar). The spool is removed once the NIfTI is safely written and the run
        is complete; a stopped run keeps it, so a restart of the run still writes every volume."""
        if self.spool is None:
            return None
        indices = self.spool.indices()
        if not indices:
            return self.files.bold if self.files.bold.exists() else None
        from runtime.nifti_io import save_4d, sidecar_for, sidecar_path

        vols: list[Volume | None] = []
        missing = []
        for i in range(indices[-1] + 1):
            if not self.spool.has(i):
                missing.append(i)
                vols.append(None)
                continue
            data, m = self.spool.get(i, mmap=True)  # memory-mapped: one copy in memory, in save_4d
            vols.append(Volume(data=data, affine=np.asarray(m["affine"]).reshape(4, 4), index=i, tr=m.get("tr"),
                               slice_times=tuple(m["slice_times"]) if m.get("slice_times") else None,
                               acquisition_time=m.get("acquisition_time"), manufacturer=m.get("manufacturer") or "",
                               series_number=m.get("series_number"), series_description=m.get("series_description") or "",
                               meta=m.get("meta") or {}))
        ref = next(v for v in vols if v is not None)
        full = [v if v is not None else Volume(data=np.zeros(ref.shape, np.float32), affine=ref.affine, index=k, tr=ref.tr)
                for k, v in enumerate(vols)]
        sidecar = sidecar_for(full)
        sidecar.pop("VolumeIndices", None)
        if missing:
            sidecar["MissingVolumes"] = missing  # filled with zeros; see the motion file's status column
        tmp = self.files.bold.with_name(self.files.bold.name.replace("_bold.nii.gz", "_bold-tmp.nii.gz"))
        save_4d(full, tmp, sidecar)
        sidecar_path(tmp).replace(self.files.bold_json)
        tmp.replace(self.files.bold)
        if remove_spool:
            shutil.rmtree(self.files.volumes, ignore_errors=True)
        return self.files.bold

    def close(self, grace_s: float = 0.0) -> None:
        """Keep the replay server up for `grace_s` (late subscribers catch up), then close."""
        if grace_s > 0:
            time.sleep(grace_s)
        for w in (self.motion, self.scores, self.timing, self.roi):
            w.close()
        self.publisher.close()


def run_engine(cfg: SessionConfig, *, output_root: str | Path | None = None,
               stop_event: threading.Event | None = None, bundle: Any = None,
               ready: Callable[[Engine], None] | None = None, log: Callable[[str], None] = print,
               end_grace_s: float = 1.0) -> EngineSummary:
    """Run the engine until the run ends (end-of-run message, last protocol scan, `stop_event`,
    SIGTERM or Ctrl-C). Usable in-process (`decnef run`) or as the `decnef engine` process."""
    stop = stop_event or threading.Event()
    engine = Engine(cfg, output_root=output_root, bundle=bundle, log=log)
    old_handlers: dict[int, Any] = {}
    if threading.current_thread() is threading.main_thread():
        def on_signal(signum: int, _frame: Any) -> None:
            if signum == signal.SIGINT and stop.is_set():
                raise KeyboardInterrupt  # a second Ctrl-C: stop now
            stop.set()  # finish between two volumes, never in the middle of one

        for sig in (signal.SIGTERM, signal.SIGINT):
            old_handlers[sig] = signal.signal(sig, on_signal)
    sub = None
    try:
        sub = engine.subscribe()
        log(f"engine ready: warm-up {engine.warmup_ms:.0f} ms, {len(engine.core.voxels)} decoder voxels, "
            f"{len(engine.core.table.trials)} trials, {engine.core.table.n_scans} scans; volumes from {cfg.endpoints.volumes}"
            + (f"; resumed after volume {engine.core.last_index}" if engine.summary.restarted else ""))
        if ready is not None:
            ready(engine)
        if engine.core.done:
            engine.finish(score_remaining=True, reason="already complete")
        while not engine.finished:
            if stop.is_set():
                engine.finish(score_remaining=False, reason="stopped")
                break
            try:
                msg = sub.recv(100)
            except KeyboardInterrupt:
                engine.finish(score_remaining=False, reason="interrupted")
                break
            if msg is None:
                continue
            header, payload = msg
            engine.handle(header, payload, time.time())
    except KeyboardInterrupt:
        engine.finish(score_remaining=False, reason="interrupted")
    finally:
        if sub is not None:
            sub.close()
        with contextlib.suppress(KeyboardInterrupt):
            engine.close(grace_s=end_grace_s if engine.finished else 0.0)
        for sig, handler in old_handlers.items():
            signal.signal(sig, handler)
    return engine.summary
