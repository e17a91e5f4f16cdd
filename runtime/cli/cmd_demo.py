"""`decnef demo`: train on a synthetic phantom, then run a neurofeedback session end to end.

Why: one command that shows (and checks) the whole system on a fresh clone, with no scanner
and no downloaded data: phantom localizer → `decnef train` → phantom neurofeedback run written
as DICOM → replay → stream → engine (→ display) as separate processes at a sped-up TR → scores
next to the hidden state the simulated participant was in, and where the time went.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import tempfile
import time
from pathlib import Path

DEFAULT_CONFIG = Path(__file__).resolve().parents[2] / "configs" / "demo.toml"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", default=None, help=f"demo config (default: {DEFAULT_CONFIG.name} of the repository)")
    parser.add_argument("--output", "-o", default=None, help="folder for everything the demo writes (default: a new temp dir)")
    parser.add_argument("--speed", type=float, default=8.0, help="replay speed-up over the protocol TR (default 8)")
    parser.add_argument("--no-display", action="store_true", help="never start the PsychoPy display")
    parser.add_argument("--timeout", type=float, default=300.0, help="give up on the session after this many seconds")
    parser.add_argument("--verbose", "-v", action="store_true", help="echo every line of every process")


def _say(msg: str) -> None:
    print(f"demo: {msg}", flush=True)


def _load(args: argparse.Namespace, out: Path):
    from runtime.config import parse_config
    from runtime.errors import UserError

    path = Path(args.config) if args.config else DEFAULT_CONFIG
    if not path.is_file():
        if args.config:
            raise UserError(f"{path}: demo config not found")
        text, origin = _BUILTIN, "<built-in demo config>"
    else:
        text, origin = path.read_text(encoding="utf-8"), str(path)
    # relative paths of the demo config point into the demo's own output folder
    return parse_config(text, origin=origin, base_dir=str(out.resolve())), origin


def _display_available() -> str | None:
    """None if a display can be opened, else why not."""
    import importlib.util

    if importlib.util.find_spec("psychopy") is None:
        return "PsychoPy is not installed (pip install 'decnef[display]')"
    if os.name == "posix" and not os.environ.get("DISPLAY") and not os.environ.get("WAYLAND_DISPLAY"):
        return "no screen (DISPLAY is not set)"
    return None


def run(args: argparse.Namespace) -> int:
    import msgspec

    from runtime.errors import UserError
    from runtime.protocol import build_table
    from runtime.supervisor import Supervisor, with_free_endpoints
    from runtime.train import train
    from sim_scanner.phantom import localizer_run, nf_run, phantom_from_config, write_mask

    if args.speed <= 0:
        raise UserError(f"--speed: expected a positive factor, got {args.speed}")
    t_start = time.monotonic()
    out = Path(args.output) if args.output else Path(tempfile.mkdtemp(prefix="decnef-demo-"))
    out.mkdir(parents=True, exist_ok=True)
    cfg, origin = _load(args, out)
    cfg = with_free_endpoints(cfg)
    table = build_table(cfg.protocol, origin=origin)
    _say(f"output in {out}  (config {origin})")

    # 1. phantom + localizer run
    t0 = time.monotonic()
    ph, noise, effect = phantom_from_config(cfg.simulation)
    loc = localizer_run(ph, tr=cfg.protocol.tr, noise=noise, effect=effect, seed=cfg.simulation.seed)
    run0 = cfg.train.runs[0]
    loc.write_dicom(cfg.path(run0.source), layout="mosaic")
    loc.write_events(cfg.path(run0.events))
    if cfg.train.roi_mask:
        write_mask(ph, cfg.path(cfg.train.roi_mask))
    _say(f"phantom {ph.shape} at {ph.voxel_size[0]:g} mm, ROI {int(ph.roi_mask.sum())} voxels; localizer run: "
         f"{len(loc.volumes)} volumes, {len(loc.events)} blocks, written as DICOM ({time.monotonic() - t0:.1f} s)")

    # 2. decoder construction
    t0 = time.monotonic()
    res = train(cfg, log=lambda m: _say(f"train: {m}"))
    r = res.report
    _say(f"decoder: CV accuracy {r['cv_accuracy']:.2f}, AUC {r['cv_auc']:.2f}, {r['n_selected_voxels']} voxels, "
         f"permutation p {r['permutation_p']}  ({time.monotonic() - t0:.1f} s)")

    # 3. the neurofeedback run with a hidden state per trial
    t0 = time.monotonic()
    nf = nf_run(ph, table, noise=noise, effect=effect, seed=cfg.simulation.seed + 1)
    src = nf.write_dicom(out / "nf_source", layout="mosaic")
    (out / "nf_truth.json").write_text(json.dumps({"trials": nf.truth["trials"]}, indent=1))
    _say(f"neurofeedback run: {len(nf.volumes)} volumes, {len(table.trials)} trials, hidden state "
         f"{''.join(str(t['state']) for t in nf.truth['trials'])} ({time.monotonic() - t0:.1f} s)")

    # 4. the real pipeline, as processes
    from runtime.cli.cmd_run import session_roles
    from runtime.outputs import run_file, session_dir

    why_not = "--no-display" if args.no_display else _display_available()
    _say("display: " + ("starting PsychoPy feedback display" if why_not is None else f"skipped ({why_not})"))
    cfg = msgspec.structs.replace(cfg, output=msgspec.structs.replace(cfg.output, root=str(cfg.path(cfg.output.root))))
    work = out / "run"
    cfg_run, roles = session_roles(cfg, table, work, replay_src=src, speed=args.speed, display=why_not is None)
    _say(f"session: {' + '.join(r.name for r in roles)} at TR {table.tr / args.speed:.3g} s "
         f"({table.n_scans} scans, ~{table.n_scans * table.tr / args.speed:.0f} s)")

    def echo(role: str, line: str) -> bool:
        return args.verbose or (role == "engine" and (line.startswith("trial") or "ready" in line)) or "rror" in line

    sup = Supervisor(roles, log=lambda m: print(m, flush=True), log_dir=session_dir(cfg_run) / "logs", echo=echo)
    t0 = time.monotonic()
    status = sup.run(timeout=args.timeout)
    _say(f"session {'finished' if status == 0 else 'FAILED'} in {time.monotonic() - t0:.1f} s")
    scores_path = run_file(cfg_run, "scores.tsv")
    timing_path = run_file(cfg_run, "timing.tsv")
    ok = summarise(scores_path, timing_path, nf.truth["trials"])
    _say(f"total {time.monotonic() - t_start:.0f} s; outputs: {session_dir(cfg_run)}")
    return 0 if status == 0 and ok else 1


def _pct(values: list[float], q: float) -> float:
    import numpy as np

    return float(np.percentile(values, q)) if values else math.nan


def summarise(scores_path: Path, timing_path: Path, truth: list[dict]) -> bool:
    """Print scores next to the hidden state, their AUC/correlation and the latency summary."""
    import numpy as np

    from runtime.outputs import read_tsv, tsv_float

    if not scores_path.exists():
        _say(f"no scores were written ({scores_path})")
        return False
    rows = {int(r["trial"]): r for r in read_tsv(scores_path)}
    print("\n trial  hidden state  strength   score  likelihood  valid  flags")
    pairs = []
    for t in truth:
        row = rows.get(t["trial"], {})
        score = tsv_float(row.get("score"))
        lik = tsv_float(row.get("likelihood"))
        if math.isfinite(score):
            pairs.append((t["state"], score))
        sc = f"{score:5.0f}" if math.isfinite(score) else "   --"
        lk = f"{lik:10.3f}" if math.isfinite(lik) else "       n/a"
        print(f" {t['trial']:5d}  {t['state']} ({t['class']:<6})  {t['strength']:8.2f}  {sc}  {lk}  {row.get('n_valid_scans', '-'):>5}  "
              f"{'' if row.get('flags') in (None, 'n/a') else row['flags']}")
    states = np.array([p[0] for p in pairs])
    scores = np.array([p[1] for p in pairs])
    auc = math.nan
    corr = math.nan
    if len(set(states.tolist())) == 2:
        from sklearn.metrics import roc_auc_score

        auc = float(roc_auc_score(states, scores))
        corr = float(np.corrcoef(states, scores)[0, 1]) if scores.std() > 0 else math.nan
    print(f"\nscores vs hidden state: AUC {auc:.3f}, point-biserial r {corr:.3f} "
          f"({len(pairs)}/{len(truth)} trials scored; mean score state 1: "
          f"{scores[states == 1].mean() if (states == 1).any() else math.nan:.1f}, state 0: "
          f"{scores[states == 0].mean() if (states == 0).any() else math.nan:.1f})")
    lat = [1e3 * (tsv_float(r.get("t_published")) - tsv_float(r.get("t_file_complete"))) for r in rows.values()]
    lat = [v for v in lat if math.isfinite(v)]
    print(f"latency file complete -> score published: median {_pct(lat, 50):.1f} ms, p99 {_pct(lat, 99):.1f} ms (n={len(lat)})")
    if timing_path.exists():
        trows = read_tsv(timing_path)
        cols = {
            "file complete -> published (ingest)": ("t_file_complete", "t_published"),
            "published -> received (ZeroMQ)": ("t_published", "t_received"),
            "received -> processed (engine)": ("t_received", "t_processed"),
            "file complete -> processed (total)": ("t_file_complete", "t_processed"),
        }
        print(f"per volume (n={len(trows)}):{'':18s}median      p99   [ms]")
        for name, (a, b) in cols.items():
            v = [1e3 * (tsv_float(r.get(b)) - tsv_float(r.get(a))) for r in trows]
            v = [x for x in v if math.isfinite(x)]
            print(f"  {name:<38s} {_pct(v, 50):8.2f} {_pct(v, 99):8.2f}")
        from runtime.outputs import TIMING_STAGES

        for st in TIMING_STAGES:
            v = [tsv_float(r.get(st)) for r in trows]
            v = [x for x in v if math.isfinite(x)]
            if v:
                print(f"  {'  stage ' + st:<38s} {_pct(v, 50):8.2f} {_pct(v, 99):8.2f}")
    return len(pairs) > 0


# The same session as configs/demo.toml (a test keeps them equal), for installs without configs/.
_BUILTIN = """
[session]
subject = "phantom"
task = "nf"
[scanner]
watch_dir = "export"
poll_interval = 0.01
gap_timeout = 5.0
[protocol]
tr = 2.0
discard_scans = 2
baseline_scans = 8
n_trials = 12
window_start = 2
window_end = 2
end_scans = 2
[protocol.trial]
rest_scans = 2
induction_scans = 3
delay_scans = 2
calc_scans = 1
feedback_scans = 1
[decoder]
bundle = "decoder/target_vs_other.npz"
target_class = "target"
[output]
root = "derivatives"
[train]
runs = [{ source = "localizer/dicom", events = "localizer/events.tsv" }]
roi_mask = "localizer/roi_mask.nii.gz"
classes = ["target", "other"]
window_scans = 3
split = "blocks"
max_folds = 6
n_permutations = 10
"""
