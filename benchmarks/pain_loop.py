"""Co-adaptive pain loop, end to end: optimal-choice rate per seed, reversal behaviour, run time.

    python benchmarks/pain_loop.py [--seeds 0 1 2] [--reversal 16] [--reversal-seeds 0 1] [--speed 4]

Runs `decnef run configs/pain_coadaptive.toml --simulate --seed N` (day-1 sham run → train →
closed-loop day 2, every role a process) once per seed, and with `--reversal K` also one run per
`--reversal-seeds` seed whose contingency reverses at trial K (agent.reversal_trial = K). Prints a
table, then one JSON line per run.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "configs" / "pain_coadaptive.toml"


def run_once(seed: int, speed: float | None, reversal: int, work: Path) -> dict:
    sys.path.insert(0, str(REPO))
    from runtime.config import load_config
    from runtime.outputs import read_tsv, run_file

    cfg_path = CONFIG
    if reversal:
        text = re.sub(r"(?m)^reversal_trial = \d+", f"reversal_trial = {reversal}", CONFIG.read_text())
        cfg_path = work / f"pain_reversal{reversal}.toml"
        cfg_path.write_text(text)
    out = work / f"seed{seed}-rev{reversal}"
    cmd = [sys.executable, "-m", "runtime.cli.main", "run", str(cfg_path), "--simulate", "--seed", str(seed),
           "--output", str(out), "--free-ports", "--timeout", "900"]
    if speed:
        cmd += ["--speed", f"{speed:g}"]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
    elapsed = time.perf_counter() - t0
    cfg = load_config(cfg_path)
    rows = read_tsv(run_file(cfg, "agent.tsv", out))
    n = cfg.protocol.n_trials
    opt = [r["action"] == r["optimal_action"] for r in rows]

    def rate(a: int, b: int) -> float:
        sel = opt[a - 1: b]
        return round(sum(sel) / len(sel), 3) if sel else float("nan")

    m = re.search(r"day-1 decoder: cv accuracy ([\d.]+), AUC ([\d.]+)", proc.stdout)
    res = {"seed": seed, "reversal_trial": reversal, "status": proc.returncode, "trials": len(rows),
           "optimal_first_half": rate(1, n // 2), "optimal_second_half": rate(n // 2 + 1, n),
           "day1_cv_accuracy": float(m.group(1)) if m else None, "day1_cv_auc": float(m.group(2)) if m else None,
           "delivered": sum(r["device_ack"].startswith("ok") for r in rows), "wall_s": round(elapsed, 1),
           "watchdog_trips": proc.stdout.count("WATCHDOG")}
    if reversal:
        res["optimal_before_reversal_last8"] = rate(reversal - 8, reversal - 1)
        res["optimal_first8_after_reversal"] = rate(reversal, reversal + 7)
        res["optimal_last8"] = rate(n - 7, n)
    return res


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--reversal", type=int, default=16, help="reversal trial of the extra run (0 = none)")
    ap.add_argument("--reversal-seeds", "--reversal-seed", type=int, nargs="+", default=[0])
    ap.add_argument("--speed", type=float, default=None, help="time scale (default: the config's)")
    args = ap.parse_args()
    results = []
    with tempfile.TemporaryDirectory(prefix="pain-bench-") as tmp:
        for s in args.seeds:
            results.append(run_once(s, args.speed, 0, Path(tmp)))
        for s in args.reversal_seeds if args.reversal else []:
            results.append(run_once(s, args.speed, args.reversal, Path(tmp)))
    print(f"{'seed':>4} {'rev':>4} {'status':>6} {'cv_acc':>6} {'opt 1st':>7} {'opt 2nd':>7} "
          f"{'pre8':>5} {'post8':>5} {'last8':>5} {'deliv':>5} {'wall s':>7}")
    nan = float("nan")
    for r in results:
        print(f"{r['seed']:>4} {r['reversal_trial']:>4} {r['status']:>6} {r['day1_cv_accuracy'] or nan:>6.2f} "
              f"{r['optimal_first_half']:>7.2f} {r['optimal_second_half']:>7.2f} "
              f"{r.get('optimal_before_reversal_last8', nan):>5.2f} {r.get('optimal_first8_after_reversal', nan):>5.2f} "
              f"{r.get('optimal_last8', nan):>5.2f} {r['delivered']:>5} {r['wall_s']:>7.1f}")
    for r in results:
        print(json.dumps(r))
    return 0


if __name__ == "__main__":
    sys.exit(main())
