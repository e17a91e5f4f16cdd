"""Percentile scoring (Demin/VTD DecNef variant, METHOD.md §1.4 item 9, E13).

Why: a sparse SLR decoder's likelihood σ(u) saturates, so E12's round(100·L) gives mostly 0 or
100 and the participant sees no gradation. The Demin/VTD variant scores the decoder's *linear
term* u instead, as a percentile of the same decoder's output on a resting-state run:

    Φ((u − m) / s),   m, s = mean, SD of u over sliding windows of the rest run,
    (E13) score = round(100 · clip((Φ − lo) / (hi − lo), 0, 1)),   [lo, hi] = [0.3, 0.7] by default.

Calibration (`decnef calibrate`) runs the rest run through exactly the engine's feature path:
every volume through `EngineCore` (realign to the bundle template, ROI reslice, gates; the same
code as `decnef train`, `runtime.train.extract.extract_run`), then `runtime.features.run_features`
(progressive detrend or REGRESS, baseline z-score over the protocol's baseline scans) over
windows as long as the protocol's trial score window, one starting at every scan after the
baseline, each computed at its own "calc scan" (same offset from the window end as in the
protocol), NG scans left out; connectivity bundles go through `run_connectivity` and the bundle's
pair correlations instead, exactly as the engine scores them. The reference file records the
bundle's content SHA-256 and target class, and the engine refuses (one line, also in
`decnef run --check`) a reference made for another bundle, class or window length.

E13's [0.3, 0.7] maps only u within ±0.52 reference SD of m to 1..99: trials far outside the
rest distribution (e.g. stimulation blocks when the reference run mixes task and rest) still sit
at 0/100; `decoder.percentile_range` widens the band.

Linear term u (`linear_term`): binary logistic bundles: wᵀx̃ (negated when the target class is
the first class, so u always grows with P(target)); two-class softmax bundles: the target row's
linear term minus the other row's (again log-odds of the target); multiclass bundles (softmax or
one-vs-rest): the target class's own row wᵀ_c x̃ (the rows of the other classes are not used).
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from runtime.config import SessionConfig
from runtime.errors import ConfigError, UserError

FORMAT = "decnef-percentile-reference"
FORMAT_VERSION = 1
MIN_WINDOWS = 10
"""Fewest valid sliding windows a reference needs (fewer would make m and s mere guesses)."""


def normal_cdf(x: float) -> float:
    """Φ(x), the standard normal CDF."""
    return 0.5 * (1.0 + math.erf(x / math.sqrt(2.0)))


def percentile_score(u: float, m: float, s: float, lo: float = 0.3, hi: float = 0.7, direction: str = "up") -> int:
    """E13: round(100·clip((Φ((u − m)/s) − lo)/(hi − lo), 0, 1)); a "down" group gets 100 − that."""
    phi = normal_cdf((float(u) - m) / s)
    v = int(round(100.0 * min(1.0, max(0.0, (phi - lo) / (hi - lo)))))
    return 100 - v if direction == "down" else v


def linear_term(bundle: Any, features: np.ndarray) -> float:
    """The decoder's linear term u for ONE feature vector (see the module docstring for which
    term a multiclass bundle gives); NaN when no feature is valid."""
    x = np.asarray(features, dtype=np.float64)
    if getattr(bundle, "kind", "linear") == "connectivity" and x.ndim == 2:
        x = np.asarray(bundle.features_from_timecourses(x), dtype=np.float64)
    s = np.asarray(bundle.decision_function(x[None, :]), dtype=np.float64)[0]
    classes = [str(c) for c in bundle.classes]
    t = classes.index(str(bundle.target_class))
    if s.shape[0] == 1:
        return float(s[0] if t == 1 else -s[0])
    if len(classes) == 2:
        return float(s[t] - s[1 - t])
    return float(s[t])


@dataclass(frozen=True)
class PercentileReference:
    m: float
    s: float
    n_windows: int
    window_scans: int
    bundle_sha256: str
    target_class: str
    source: str
    version: str
    created: str = ""
    calc_offset: int = 0
    baseline_scans: list[int] | None = None
    """[first, last] scan of the baseline the windows were z-scored against."""
    n_ng_scans: int = 0
    format: str = FORMAT
    format_version: int = FORMAT_VERSION


def write_reference(ref: PercentileReference, path: Path) -> str:
    """Write REF.json (atomically); returns its file SHA-256."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(asdict(ref), indent=2) + "\n"
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)
    return hashlib.sha256(text.encode()).hexdigest()


def read_reference(path: Path, key: str = "decoder.percentile_reference") -> PercentileReference:
    """REF.json → PercentileReference; any problem is one ConfigError line naming the file."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: percentile reference not found (key '{key}'; make it with `decnef calibrate`)")
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read percentile reference as JSON: {exc} (key '{key}')") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise ConfigError(f"{path}: not a percentile reference (expected \"format\": \"{FORMAT}\"; key '{key}')")
    try:
        ref = PercentileReference(**doc)
    except TypeError as exc:
        raise ConfigError(f"{path}: bad percentile reference: {exc} (key '{key}')") from None
    if not (isinstance(ref.m, (int, float)) and isinstance(ref.s, (int, float)) and math.isfinite(ref.m)
            and math.isfinite(ref.s) and ref.s > 0):
        raise ConfigError(f"{path}: percentile reference needs finite m and s > 0, got m={ref.m!r} s={ref.s!r} (key '{key}')")
    return ref


def load_reference(cfg: SessionConfig, bundle: Any) -> PercentileReference | None:
    """The session's reference when decoder.score = "percentile" (else None), checked against the
    loaded bundle (content SHA-256, target class) and the protocol's window length."""
    d = cfg.decoder
    if d.score != "percentile":
        return None
    if not d.percentile_reference:
        raise ConfigError("key 'decoder.percentile_reference': expected a REF.json path when decoder.score = 'percentile'")
    path = cfg.path(d.percentile_reference)
    ref = read_reference(path)
    sha = str(getattr(bundle, "sha256", "") or "")
    if ref.bundle_sha256 != sha:
        raise ConfigError(f"{path}: percentile reference was calibrated for bundle sha256 {ref.bundle_sha256[:12]}…, "
                          f"but the loaded bundle is {sha[:12] or 'unknown'}… (re-run `decnef calibrate`)")
    target = str(getattr(bundle, "target_class", ""))
    if ref.target_class != target:
        raise ConfigError(f"{path}: percentile reference is for target class {ref.target_class!r}, the session scores "
                          f"{target!r} (key 'decoder.target_class'; re-run `decnef calibrate`)")
    from runtime.protocol import build_table

    table = build_table(cfg.protocol)
    if table.trials and len(table.trials[0].window) != ref.window_scans:
        raise ConfigError(f"{path}: percentile reference used {ref.window_scans}-scan windows, the protocol's score "
                          f"window has {len(table.trials[0].window)} scans (re-run `decnef calibrate`)")
    return ref


# -- calibration -----------------------------------------------------------------------------------

@dataclass
class Calibration:
    reference: PercentileReference
    u: np.ndarray
    """u per sliding window (NaN where the window had no valid scan)."""
    windows: list
    """The TrialWindows (window, calc_scan) in the order of `u`."""
    values: Any
    """runtime.train.extract.RunValues of the rest run (the engine's own ROI values)."""


def sliding_windows(cfg: SessionConfig, n_scans: int) -> list:
    """Windows as long as the protocol's score window, one starting at every scan after the
    baseline, each scored at its calc scan (window end + the protocol's calc offset)."""
    from runtime.features import TrialWindow
    from runtime.protocol import build_table

    table = build_table(cfg.protocol)
    if not table.trials:
        raise ConfigError("key 'protocol.n_trials': the protocol has no trial to take a window length from")
    t0 = table.trials[0]
    length = len(t0.window)
    offset = t0.calc_scan - (t0.window.stop - 1)
    out = []
    for start in range(table.baseline.stop, n_scans):
        calc = start + length - 1 + offset
        if calc >= n_scans:
            break
        out.append(TrialWindow(range(start, start + length), calc))
    return out


def calibrate(cfg: SessionConfig, bundle: Any, volumes: list, *, source: str = "",
              log: Callable[[str], None] | None = None) -> Calibration:
    """m, s of the decoder's linear term over sliding windows of a rest run (the engine's own
    feature path, see the module docstring)."""
    from decoders.bundle import software_version
    from runtime.features import run_connectivity, run_features
    from runtime.protocol import build_table
    from runtime.train.extract import extract_run

    table = build_table(cfg.protocol)
    n_scans = int(volumes[-1].index) + 1
    if table.baseline.stop > n_scans:
        raise UserError(f"rest run {source}: {n_scans} scans, but the protocol's baseline ends at scan {table.baseline.stop - 1}")
    windows = sliding_windows(cfg, n_scans)
    if len(windows) < MIN_WINDOWS:
        raise UserError(f"rest run {source}: {n_scans} scans give {len(windows)} windows after the baseline; "
                        f"need >= {MIN_WINDOWS}")
    tr = float(volumes[0].tr) if getattr(volumes[0], "tr", 0) else cfg.protocol.tr
    rv = extract_run(cfg, volumes, template=np.asarray(bundle.template), grid_affine=np.asarray(bundle.grid_affine),
                     voxels=np.asarray(bundle.voxels), baseline=table.baseline, tr=tr, log=log,
                     extra=getattr(bundle, "extra", None))
    d = cfg.denoise
    u = np.full(len(windows), np.nan)
    if getattr(bundle, "kind", "linear") == "connectivity":
        from runtime.features import FC_MIN_SCANS

        tcs, _ = run_connectivity(rv.values, rv.valid, bundle.extra["voxel_roi"], bundle.n_rois, table.baseline,
                                  windows, method=d.method, regress_scans=d.regress_scans, nuisance=rv.nuisance,
                                  min_scans=int(bundle.extra.get("min_valid_scans", FC_MIN_SCANS)))
        for i, tc in enumerate(tcs):
            if tc is not None:
                u[i] = linear_term(bundle, tc)
    else:
        feats, n_valid = run_features(rv.values, rv.valid, table.baseline, windows, method=d.method,
                                      regress_scans=d.regress_scans, nuisance=rv.nuisance)
        for i in range(len(windows)):
            if n_valid[i]:
                u[i] = linear_term(bundle, feats[i])
    ok = u[np.isfinite(u)]
    if len(ok) < MIN_WINDOWS:
        raise UserError(f"rest run {source}: only {len(ok)} of {len(windows)} windows have a valid scan and a "
                        f"baseline; need >= {MIN_WINDOWS} (motion? check the gates in [quality])")
    m, s = float(ok.mean()), float(ok.std(ddof=1))
    if not (math.isfinite(s) and s > 0):
        raise UserError(f"rest run {source}: the decoder's output does not vary over the rest run (SD {s}); cannot calibrate")
    t0 = table.trials[0]
    ref = PercentileReference(
        m=m, s=s, n_windows=int(len(ok)), window_scans=len(t0.window), bundle_sha256=str(getattr(bundle, "sha256", "")),
        target_class=str(bundle.target_class), source=source, version=software_version(),
        created=time.strftime("%Y-%m-%dT%H:%M:%S%z"), calc_offset=int(t0.calc_scan - (t0.window.stop - 1)),
        baseline_scans=[table.baseline.start, table.baseline.stop - 1],
        n_ng_scans=int(np.sum(~rv.valid[table.baseline.start:])),
    )
    return Calibration(reference=ref, u=u, windows=windows, values=rv)
