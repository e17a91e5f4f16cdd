"""`decnef run CONFIG`: the whole session on one machine (streamer, engine, display, agent),
each as a supervised child process; optionally with a simulated scanner.

    decnef run session.toml --check                 validate config, bundle and protocol, exit
    decnef run session.toml                         watch scanner.watch_dir (a real scanner)
    decnef run session.toml --simulate DICOM_DIR    replay a series into a temporary export folder
    decnef run session.toml --simulate              replay the [simulation] phantom run
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", help="session config (TOML)")
    parser.add_argument("--simulate", nargs="?", const="", default=None, metavar="SRC",
                        help="replay SRC (DICOM folder or 4D NIfTI) as the scanner; without SRC, the [simulation] run")
    parser.add_argument("--speed", type=float, default=1.0, help="replay speed-up (with --simulate; default 1 = real time)")
    parser.add_argument("--output", "-o", default=None, help="output root (overrides output.root)")
    parser.add_argument("--check", action="store_true", help="validate config, decoder bundle and protocol, then exit")
    parser.add_argument("--free-ports", action="store_true", help="use free loopback ports instead of the config's endpoints")
    parser.add_argument("--no-display", action="store_true", help="do not start the display even if display.enabled")
    parser.add_argument("--timeout", type=float, default=None, help="stop everything after this many seconds")
    parser.add_argument("--max-restarts", type=int, default=3, help="restarts allowed per crashed role (default 3)")
    parser.add_argument("--seed", type=int, default=None, help="simulation seed (overrides simulation/agent/train seeds)")


def check_session(cfg, origin: str, log=print):
    """Config + protocol + bundle; returns (table, bundle). Raises UserError on a problem."""
    from runtime.engine.process import load_decoder
    from runtime.errors import ConfigError
    from runtime.protocol import build_table

    table = build_table(cfg.protocol, origin=origin)
    bundle, path = load_decoder(cfg)
    n_vox = len(bundle.voxels)
    shape = tuple(int(n) for n in bundle.grid_shape)
    if cfg.geometry.shape and tuple(cfg.geometry.shape) != shape:
        raise ConfigError(f"{origin}: key 'geometry.shape': {list(cfg.geometry.shape)} but the bundle {path.name} grid is {list(shape)}")
    if cfg.decoder.target_class and cfg.decoder.target_class not in [str(c) for c in getattr(bundle, "classes", [])]:
        raise ConfigError(f"{origin}: key 'decoder.target_class': {cfg.decoder.target_class!r} not in the bundle's classes")
    from runtime.nuisance import session_tissue_voxels

    tissues = session_tissue_voxels(cfg, bundle, shape, bundle.grid_affine)  # REGRESS's WM/CSF masks, early
    dur = table.n_scans * table.tr
    log(f"config OK: {origin}  (sub-{cfg.session.subject} ses-{cfg.session.session} run {cfg.session.run})")
    log(f"protocol OK: {table.n_scans} scans ({dur:.0f} s at TR {table.tr:g} s), {len(table.trials)} trials, "
        f"baseline scans {table.baseline.start}-{table.baseline.stop - 1}, first calc scan "
        f"{table.trials[0].calc_scan if table.trials else '-'}")
    metrics = getattr(bundle, "metrics", {}) or {}
    m = ", ".join(f"{k} {v:.3f}" if isinstance(v, float) else f"{k} {v}" for k, v in metrics.items() if k in ("cv_accuracy", "cv_auc", "permutation_p"))
    log(f"bundle OK: {path}  {n_vox} voxels on a {'x'.join(map(str, shape))} grid, classes {list(getattr(bundle, 'classes', []))}"
        + (f", {m}" if m else ""))
    if cfg.denoise.method == "regress":
        log("denoise OK: regress on motion, GS" + "".join(f", {t.upper()} ({len(v)} voxels)" for t, v in tissues.items())
            + f" and their differences over {cfg.denoise.regress_scans} scans")
    return table, bundle


def run(args: argparse.Namespace) -> int:
    import msgspec

    from runtime.config import load_config
    from runtime.errors import UserError
    from runtime.supervisor import absolute_paths, with_free_endpoints

    cfg = load_config(args.config)
    if args.output:
        cfg = msgspec.structs.replace(cfg, output=msgspec.structs.replace(cfg.output, root=str(Path(args.output).resolve())))
    if args.speed <= 0:
        raise UserError(f"--speed: expected a positive factor, got {args.speed}")
    if args.seed is not None:
        from sim_scanner.participant import with_seed

        cfg = with_seed(cfg, args.seed)
    if args.simulate == "" and cfg.simulation.kind == "participant":  # day 1: sham run -> decnef train -> bundle
        from runtime.outputs import session_dir
        from sim_scanner.participant import prepare_session

        cfg = prepare_session(cfg, session_dir(cfg) / "simulation", log=lambda m: print(m, flush=True))
    table, _bundle = check_session(cfg, args.config)
    if args.check:
        return 0
    cfg = absolute_paths(cfg)
    if args.free_ports:
        cfg = with_free_endpoints(cfg)
    work = Path(tempfile.mkdtemp(prefix="decnef-run-"))
    try:
        return _session(cfg, args, table, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _session(cfg, args, table, work: Path) -> int:
    from runtime.errors import UserError
    from runtime.outputs import session_dir
    from runtime.supervisor import Supervisor

    replay_src: Path | None = None
    participant = args.simulate == "" and cfg.simulation.kind == "participant"
    if args.simulate is not None and not participant:
        replay_src = Path(args.simulate) if args.simulate else simulate_source(cfg, table, session_dir(cfg) / "simulation")
        if not replay_src.exists():
            raise UserError(f"--simulate: {replay_src}: no such file or folder")
    cfg, roles = session_roles(cfg, table, work, replay_src=replay_src, speed=args.speed,
                               display=cfg.display.enabled and not args.no_display, participant=participant)
    log_dir = session_dir(cfg) / "logs"
    print(f"decnef run: {', '.join(r.name for r in roles)}; outputs in {session_dir(cfg)}; logs in {log_dir}", flush=True)
    sup = Supervisor(roles, log=lambda m: print(m, flush=True), log_dir=log_dir, max_restarts=args.max_restarts)
    status = sup.run(timeout=args.timeout)
    print(f"decnef run: {'finished' if status == 0 else 'stopped' if status == 130 else 'failed'}", flush=True)
    return status


def session_roles(cfg, table, work: Path, *, replay_src: Path | None = None, speed: float = 1.0,
                  display: bool = False, participant: bool = False):
    """(child config, roles) for one run: engine (primary), streamer, optional display/agent and,
    with `replay_src`, a replay of it into `work/export` (the streamer's watch folder); with
    `participant`, the closed-loop virtual participant (sim_scanner.participant) instead."""
    import msgspec

    from runtime.supervisor import Role, write_config

    if replay_src is not None or participant:
        watch = work / "export"
        watch.mkdir(parents=True, exist_ok=True)
        cfg = msgspec.structs.replace(cfg, scanner=msgspec.structs.replace(cfg.scanner, watch_dir=str(watch)))
    child_cfg = write_config(cfg, work / "session.toml")
    root = cfg.output.root
    roles = [Role("engine", ["engine", "--config", str(child_cfg), "--output", root], primary=True)]
    roles.append(Role("stream", ["stream", "--config", str(child_cfg), "--watch", cfg.scanner.watch_dir,
                                 "--journal", str(work / "stream_journal"), "--count", str(table.n_scans)]))
    if display:
        d = ["display", "--config", str(child_cfg), "--output", root]
        if replay_src is not None:
            d += ["--simulate-triggers", f"{table.tr / speed:g}"]
        roles.append(Role("display", d, wait_for=("engine", "engine ready")))
    agent_extra, participant_role = [], None
    if participant:
        from sim_scanner.participant import participant_role as make_role
        from sim_scanner.participant import session_speed

        agent_extra, participant_role = make_role(cfg, child_cfg, work, session_speed(cfg, speed), Role)
    if cfg.agent.enabled:
        roles.append(Role("agent", ["agent", "--config", str(child_cfg), *agent_extra], wait_for=("engine", "engine ready")))
    if participant_role is not None:
        roles.append(participant_role)
    if replay_src is not None:
        roles.append(Role("replay", ["replay", str(replay_src), "--to", cfg.scanner.watch_dir, "--tr", f"{table.tr:g}",
                                     "--speed", f"{speed:g}", "--quiet"],
                          restart=False, wait_for=("engine", "engine ready")))
    return cfg, roles


def simulate_source(cfg, table, out: Path) -> Path:
    """Write the run described by [simulation] as DICOM (Siemens mosaic) and return the folder."""
    if cfg.simulation.kind != "phantom":
        from runtime.errors import UserError

        raise UserError(f"key 'simulation.kind': {cfg.simulation.kind!r} is not available for --simulate yet (use 'phantom')")
    from sim_scanner.phantom import nf_run, phantom_from_config

    ph, noise, effect = phantom_from_config(cfg.simulation)
    run = nf_run(ph, table, noise=noise, effect=effect, seed=cfg.simulation.seed)
    folder = run.write_dicom(out / "dicom", layout="mosaic")
    import json

    (out / "truth.json").write_text(json.dumps({"trials": run.truth["trials"]}, indent=1))
    print(f"decnef run: simulated {len(run.volumes)} phantom volumes -> {folder}", flush=True)
    return folder
