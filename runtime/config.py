"""Session config: one TOML file decoded into typed, validated structs.

A config fully determines a session. Unknown keys are rejected, every value is type- and
range-checked before anything starts, and a bad value is reported as one line naming the file,
the key path, the value and what was expected. `resolved_toml` gives the config with defaults
filled in; it is written next to every output together with its SHA-256.

Each section is its own struct; sections and fields have defaults so that a config only needs
what differs from them.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path
from typing import Annotated, Any, Literal

import msgspec
import tomllib
from msgspec import Meta

from runtime.errors import ConfigError

PosInt = Annotated[int, Meta(ge=1)]
NonNegInt = Annotated[int, Meta(ge=0)]
PosFloat = Annotated[float, Meta(gt=0)]
NonNegFloat = Annotated[float, Meta(ge=0)]


class _Section(msgspec.Struct, forbid_unknown_fields=True, kw_only=True, frozen=True):
    pass


class SessionInfo(_Section):
    subject: Annotated[str, Meta(pattern=r"^[A-Za-z0-9]+$")] = "01"
    session: Annotated[str, Meta(pattern=r"^[A-Za-z0-9]+$")] = "01"
    task: Annotated[str, Meta(pattern=r"^[A-Za-z0-9]+$")] = "decnef"
    run: PosInt = 1


class ScannerConfig(_Section):
    """Where volumes come from and how to pick the series to follow."""

    watch_dir: str = "incoming"
    vendor: Literal["auto", "siemens", "ge", "philips"] = "auto"
    series_number: NonNegInt = 0
    """Follow this SeriesNumber; 0 = the series given by description, else the newest."""
    series_description: str = ""
    poll_interval: Annotated[float, Meta(gt=0, le=5)] = 0.02
    """Seconds between folder scans when file events are missing (network shares)."""
    use_file_events: bool = True
    settle_time: Annotated[float, Meta(ge=0, le=5)] = 0.0
    """Extra seconds a file's size must stay unchanged before it is parsed (0: parse as soon
    as a complete parse succeeds)."""
    gap_timeout: Annotated[float, Meta(gt=0)] = 10.0
    """Seconds to wait for a missing volume before it is reported as a gap and skipped."""
    echo: PosInt = 1
    """Multi-echo series: the echo assembled and published (1 = first/shortest echo time); files
    of other echoes are skipped. Single-echo series are echo 1."""


class GeometryConfig(_Section):
    """What the session expects of the volumes; empty = accept whatever arrives first."""

    shape: list[PosInt] = []
    voxel_size_mm: list[PosFloat] = []
    tolerance_mm: PosFloat = 0.01


class TrialConfig(_Section):
    rest_scans: NonNegInt = 3
    induction_scans: PosInt = 3
    delay_scans: NonNegInt = 3
    calc_scans: PosInt = 1
    feedback_scans: NonNegInt = 1


class ProtocolConfig(_Section):
    """Scan-by-scan structure of a run (ATR DecNef02 layout, METHOD.md §1.4)."""

    tr: PosFloat = 2.0
    discard_scans: NonNegInt = 5
    baseline_scans: PosInt = 10
    """Scans after the discarded ones whose mean/SD define the per-voxel baseline z-score."""
    n_trials: PosInt = 12
    trial: TrialConfig = TrialConfig()
    window_start: int = 2
    """Score window start, in scans relative to the first induction scan (haemodynamic delay)."""
    window_end: int = 1
    """Score window end, in scans relative to the last induction scan."""
    trial_onsets: list[NonNegInt] = []
    """Explicit first-induction scan of every trial (0-based, counting discarded scans); empty =
    derived from the trial lengths. Used to align trials to an existing block design."""
    trial_labels: list[str] = []
    """Optional label per trial (e.g. stim/rest), carried into the scores file."""
    end_scans: NonNegInt = 2


class RealignConfig(_Section):
    enabled: bool = True
    reference: Literal["template", "first", "index"] = "template"
    """template = the decoder bundle's template EPI; first = first kept volume; index = `reference_index`."""
    reference_index: NonNegInt = 0
    interp: Literal["trilinear", "cubic"] = "trilinear"
    max_iterations: Annotated[int, Meta(ge=1, le=100)] = 20
    tolerance_mm: PosFloat = 0.002


class QualityConfig(_Section):
    fd_threshold_mm: float = 0.5
    """Scans with FD above this are NG (negative or 0 disables)."""
    corr_threshold: Annotated[float, Meta(ge=-1, le=1)] = 0.7
    """Scans whose ROI correlation with the template is below this are NG (-1 disables)."""


class DenoiseConfig(_Section):
    method: Literal["detrend", "regress", "none"] = "detrend"
    regress_scans: Annotated[int, Meta(ge=5)] = 20
    wm_mask: str = ""
    """method = "regress": white-matter mask (NIfTI probability/binary image on the bundle's template
    grid, or any grid: resampled nearest-neighbour) for a bundle without WM voxels, e.g. an ATR
    import; thresholded at 0.9 and eroded 1 voxel (runtime/nuisance.py). Overrides the bundle's."""
    csf_mask: str = ""
    """method = "regress": CSF mask, as wm_mask (thresholded at 0.9, not eroded)."""


class DecoderConfig(_Section):
    bundle: str = ""
    direction: Literal["up", "down"] = "up"
    target_class: str = ""
    """Class whose likelihood is the score; empty = the bundle's positive class."""
    sham: Literal["none", "random", "yoked"] = "none"
    yoked_scores: str = ""
    seed: int = 0
    score: Literal["likelihood", "percentile"] = "likelihood"
    """likelihood: E12, score = round(100·L); percentile: E13 (Demin/VTD), the decoder's linear
    term as a percentile of a rest run (`decnef calibrate`), see runtime/percentile.py."""
    percentile_reference: str = ""
    """REF.json written by `decnef calibrate` (needed when score = "percentile")."""
    percentile_range: Annotated[list[Annotated[float, Meta(ge=0, le=1)]], Meta(min_length=2, max_length=2)] = \
        msgspec.field(default_factory=lambda: [0.3, 0.7])
    """E13's [lo, hi]: percentile lo maps to score 0, hi to 100 (0 <= lo < hi <= 1)."""


class DisplayConfig(_Section):
    enabled: bool = False
    feedback: Literal["disc", "bar"] = "disc"
    max_radius_px: PosInt = 300
    size: Annotated[list[PosInt], Meta(min_length=2, max_length=2)] = msgspec.field(default_factory=lambda: [1024, 768])
    fullscreen: bool = False
    screen: NonNegInt = 0
    trigger_key: str = "5"
    trigger_serial: str = ""
    """Serial device that delivers scanner TTL triggers (one byte per trigger); empty = keyboard."""
    trigger_baud: PosInt = 115200
    missed_trigger_factor: Annotated[float, Meta(gt=1, le=3)] = 1.5
    """A trigger interval above this many TRs means round(interval / TR) - 1 triggers were missed."""
    rating: bool = False
    rating_keys: Annotated[list[str], Meta(min_length=3, max_length=3)] = msgspec.field(default_factory=lambda: ["1", "2", "3"])
    """Rating keys (or button-box buttons): move down, move up, confirm."""
    rating_start: Annotated[int, Meta(ge=0, le=10)] = 5
    rating_prompt: str = "How well did it go? (0-10)"
    induction_text: str = "Regulate"
    reward_per_point: NonNegFloat = 10.0
    """End-of-run reward = mean shown score x this."""
    reward_unit: str = "JPY"
    end_screen_s: NonNegFloat = 3.0
    """Minimum time the end-of-run screen (mean score, reward) stays up."""
    panic_key: str = "escape"
    background: Annotated[list[Annotated[float, Meta(ge=-1, le=1)]], Meta(min_length=3, max_length=3)] = msgspec.field(
        default_factory=lambda: [-1.0, -1.0, -1.0]
    )


class AgentConfig(_Section):
    enabled: bool = False
    learner: Literal["q", "thompson"] = "q"
    policy: Literal["softmax", "egreedy"] = "softmax"
    n_options: Annotated[int, Meta(ge=2, le=8)] = 2
    p_high: list[Annotated[float, Meta(ge=0, le=1)]] = msgspec.field(default_factory=lambda: [0.8, 0.2])
    """Hidden probability that each option delivers a high-intensity stimulus (simulation)."""
    reversal_trial: NonNegInt = 0
    """Trial at which p_high is reversed (0 = never)."""
    learning_rate: Annotated[float, Meta(gt=0, le=1)] = 0.3
    inverse_temperature: NonNegFloat = 15.0
    """Beyond METHOD.md's 3-5 on purpose: rewards lie in [0, 1], so beta 5 keeps choosing the worse
    option 5-10 % of the time; the optimistic initial value does the exploring instead (robust across
    seeds and reversals in 30-trial runs: benchmarks/agent_tuning.py)."""
    epsilon: Annotated[float, Meta(ge=0, le=1)] = 0.1
    reward: Literal["likelihood", "binary"] = "likelihood"
    initial_value: Annotated[float, Meta(ge=0, le=1)] = 1.0
    """Q learner: starting value of every option (1 = optimistic: each option is tried until its value
    falls, and after a reversal the other option's stale value is high, so the agent switches fast)."""
    thompson_discount: Annotated[float, Meta(gt=0, le=1)] = 0.9
    """Thompson learner: evidence kept per update (1 = stationary; < 1 re-adapts after reversals)."""
    seed: int = 0
    events: str = ""
    """Endpoint the agent publishes its events on (agent_action, device_command, device_ack, ...);
    empty = endpoints.events, unless the display is enabled (it publishes there): then none."""
    events_replay: str = ""


class StimulatorConfig(_Section):
    kind: Literal["none", "simulated", "tcs2", "medoc"] = "none"
    port: str = ""
    """Serial port (tcs2)."""
    host: str = "127.0.0.1"
    tcp_port: Annotated[int, Meta(ge=1, le=65535)] = 20121
    # Bounds below mirror the hard-coded envelope in stimulus/devices/limits.py (runtime/ may
    # not import stimulus/); SafetyLimits.from_config re-checks them, tests keep them equal.
    baseline_c: Annotated[float, Meta(ge=20, le=40)] = 32.0
    high_c: Annotated[float, Meta(ge=10, le=52)] = 46.0
    low_c: Annotated[float, Meta(ge=10, le=52)] = 40.0
    plateau_s: Annotated[float, Meta(gt=0, le=30)] = 2.0
    """Plateau (time held at the level, ramps excluded); at most 2 s above 48 °C."""
    max_temperature_c: Annotated[float, Meta(gt=20, le=52)] = 50.0
    """Lowers the hard-coded ceiling (52 °C); can never raise it."""
    min_isi_s: Annotated[float, Meta(ge=5)] = 10.0
    """Onset-to-onset interval; may be raised, never below the hard minimum of 5 s."""
    budget_s: Annotated[float, Meta(ge=0, le=300)] = 120.0
    """Total seconds above baseline+2 °C allowed per run (hard maximum 300 s)."""
    rise_rate_c_s: Annotated[float, Meta(gt=0, le=100)] = 30.0
    return_rate_c_s: Annotated[float, Meta(gt=0, le=100)] = 30.0
    watchdog_tr: Annotated[float, Meta(gt=0, le=10)] = 2.0
    """Watchdog timeout in TRs: nothing fed for this long returns the device to baseline."""
    medoc_byte_order: Literal["big", "little"] = "big"
    """Byte order of the Medoc length prefix (sources disagree; verify with your MMS)."""
    medoc_program_high: Annotated[int, Meta(ge=0, le=255)] = 1
    """Medoc test program (defined on the MMS) delivering high_c."""
    medoc_program_low: Annotated[int, Meta(ge=0, le=255)] = 2


class EndpointsConfig(_Section):
    """ZeroMQ endpoints. Loopback by default; use CURVE keys across hosts."""

    volumes: str = "tcp://127.0.0.1:5560"
    volumes_replay: str = "tcp://127.0.0.1:5561"
    scores: str = "tcp://127.0.0.1:5562"
    scores_replay: str = "tcp://127.0.0.1:5563"
    events: str = "tcp://127.0.0.1:5564"
    events_replay: str = "tcp://127.0.0.1:5565"
    curve_keys: str = ""
    """Folder with CURVE key pairs (`decnef keys`); empty = no encryption (loopback only)."""


class OutputConfig(_Section):
    root: str = "derivatives/decnef"
    save_volumes: bool = True


class TrainRun(_Section):
    source: str
    """DICOM folder or 4D NIfTI of one localizer run."""
    events: str
    """BIDS events.tsv (onset, duration, trial_type)."""


class TrainConfig(_Section):
    runs: list[TrainRun] = []
    roi_mask: str = ""
    """NIfTI mask on any grid (resampled to the template grid); empty = automatic brain mask."""
    wm_mask: str = ""
    """White-matter probability/binary NIfTI from the anatomical segmentation (any grid): kept > 0.9,
    eroded 1 voxel on the template grid, stored in the bundle as REGRESS's WM signal (E8)."""
    csf_mask: str = ""
    """CSF probability/binary NIfTI (any grid): kept > 0.9, stored in the bundle (E8's CSF signal)."""
    classes: list[str] = []
    """trial_type values to decode; a class may merge several with '+' (e.g. "face+body")."""
    rest_class: str = ""
    """Name for volumes outside any event (empty = not used)."""
    hrf_delay_s: NonNegFloat = 4.0
    """Events are shifted by this (rounded to whole scans) to give each sample's scan window."""
    window_scans: PosInt = 3
    """Scans averaged per sample: a block is cut into consecutive windows of this length
    (1 = one sample per volume)."""
    discard_scans: NonNegInt = 0
    """Scans at the start of each localizer run that are never used (as protocol.discard_scans)."""
    baseline_scans: NonNegInt = 0
    """Baseline (z-score) scans after the discarded ones; 0 = every scan before the first event."""
    n_voxels: NonNegInt = 0
    """Keep the top-k voxels (ANOVA F, chosen inside each training fold); 0 = all mask voxels."""
    split: Literal["runs", "halves", "blocks"] = "runs"
    train_fraction: Annotated[float, Meta(gt=0, lt=1)] = 0.5
    """With one run and split = "halves": the first fraction trains, the rest is held out."""
    max_folds: Annotated[int, Meta(ge=2)] = 10
    """split = "blocks": blocks are dealt round-robin (in time order) into at most this many folds."""
    estimator: Literal["slr", "smlr", "l1", "l2", "svm", "roi_mean", "connectivity"] = "slr"
    """connectivity: FCNef decoder on ROI-pair window correlations (needs roi_atlas)."""
    roi_atlas: str = ""
    """estimator = connectivity: integer label NIfTI on any grid (resampled nearest-neighbour to the
    template grid); each label is one ROI whose voxel values are averaged per scan."""
    roi_labels: list[PosInt] = []
    """Atlas labels used as ROIs, in this order; empty = every non-zero label, ascending."""
    fc_pairs: list[Annotated[list[PosInt], Meta(min_length=2, max_length=2)]] = []
    """ROI pairs (atlas labels) whose correlations are the features; empty = every pair."""
    fisher_z: bool = True
    """Connectivity features as Fisher z = atanh(r) (else r)."""
    n_iter: PosInt = 300
    n_permutations: NonNegInt = 100
    reference_index: NonNegInt = 0
    seed: int = 0


class ParticipantConfig(_Section):
    """Virtual participant of the co-adaptive pain loop (simulation.kind = "participant";
    model in sim_scanner/participant.py)."""

    time_scale: Annotated[float, Meta(ge=1, le=20)] = 1.0
    """Simulated seconds per wall-clock second (TR, ISI, watchdog and the emulated thermode run
    on this scaled clock); `decnef run --speed` overrides it. Refused with a real device."""
    pain_effect: NonNegFloat = 0.04
    """Fractional signal change of the pain pattern for a fully painful stimulus (sustained)."""
    touch_effect: NonNegFloat = 0.015
    """Fractional signal change of the intensity-independent somatosensory pattern."""
    pain_threshold_c: Annotated[float, Meta(ge=30, le=52)] = 43.0
    pain_slope_c: PosFloat = 1.5
    """Perceived pain = logistic((peak °C - pain_threshold_c) / pain_slope_c)."""
    response_sd: NonNegFloat = 0.2
    """Trial-to-trial SD of the response amplitude (relative)."""
    engagement_initial: Annotated[float, Meta(ge=0, le=1)] = 0.5
    engagement_rate: Annotated[float, Meta(gt=0, le=1)] = 0.3
    """How fast engagement follows the relief the participant experiences."""
    engagement_modulation: Annotated[float, Meta(ge=0, le=1)] = 0.3
    """Fraction by which full engagement weakens the pain encoding in the ROI."""
    day1_trials: Annotated[int, Meta(ge=4)] = 30
    """Sham (decoder-construction) run: trials, half high and half low, in random order."""
    layout: Literal["mosaic", "slice", "enhanced"] = "mosaic"
    start_timeout_s: PosFloat = 60.0
    """Wall seconds the participant waits for the agent to configure the thermode before scanning."""


class SimulationConfig(_Section):
    """What `decnef run --simulate` (without SRC) replays: a synthetic phantom run, or (kind =
    "participant") a closed-loop virtual participant of the co-adaptive pain loop."""

    kind: Literal["phantom", "participant"] = "phantom"
    shape: list[PosInt] = msgspec.field(default_factory=lambda: [64, 64, 36])
    voxel_size_mm: list[PosFloat] = msgspec.field(default_factory=lambda: [3.0, 3.0, 3.0])
    noise: NonNegFloat = 0.01
    drift: NonNegFloat = 0.005
    motion_mm: NonNegFloat = 0.2
    effect: NonNegFloat = 0.02
    seed: int = 0
    participant: ParticipantConfig = ParticipantConfig()


class SessionConfig(_Section):
    session: SessionInfo = SessionInfo()
    scanner: ScannerConfig = ScannerConfig()
    geometry: GeometryConfig = GeometryConfig()
    protocol: ProtocolConfig = ProtocolConfig()
    realign: RealignConfig = RealignConfig()
    quality: QualityConfig = QualityConfig()
    denoise: DenoiseConfig = DenoiseConfig()
    decoder: DecoderConfig = DecoderConfig()
    display: DisplayConfig = DisplayConfig()
    agent: AgentConfig = AgentConfig()
    stimulator: StimulatorConfig = StimulatorConfig()
    endpoints: EndpointsConfig = EndpointsConfig()
    output: OutputConfig = OutputConfig()
    train: TrainConfig = TrainConfig()
    simulation: SimulationConfig = SimulationConfig()
    base_dir: str = ""
    """Folder relative paths are resolved against; filled in from the config's own location."""

    def path(self, value: str) -> Path:
        """Resolve a path from the config relative to the config file's folder."""
        p = Path(value).expanduser()
        return p if p.is_absolute() or not self.base_dir else Path(self.base_dir) / p


_PATH_RE = re.compile(r" - at `\$(?P<path>[^`]*)`$")


def _lookup(raw: Any, path: str) -> tuple[bool, Any]:
    cur = raw
    for part in re.findall(r"\.([A-Za-z0-9_\-]+)|\[(\d+)\]", path):
        key, idx = part
        try:
            cur = cur[key] if key else cur[int(idx)]
        except (KeyError, IndexError, TypeError):
            return False, None
    return True, cur


def _explain(err: msgspec.ValidationError, raw: dict, origin: str) -> str:
    msg = str(err)
    m = _PATH_RE.search(msg)
    path = m.group("path") if m else ""
    what = _PATH_RE.sub("", msg)
    what = re.sub(r", got `[^`]+`$", "", what)
    unknown = re.match(r"Object contains unknown field `([^`]+)`", what)
    if unknown:
        key = (path + "." + unknown.group(1)).lstrip(".")
        return f"{origin}: unknown key '{key}' (check the spelling; see configs/example.toml)"
    key = path.lstrip(".") or "(top level)"
    found, value = _lookup(raw, path)
    got = f" got {value!r};" if found else ""
    return f"{origin}: key '{key}':{got} {what[0].lower() + what[1:]}"


def parse_config(text: str, origin: str = "<config>", base_dir: str = "") -> SessionConfig:
    """Decode TOML text into a validated SessionConfig or raise ConfigError (one line)."""
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{origin}: not valid TOML: {exc}") from None
    if "base_dir" in raw:
        raise ConfigError(f"{origin}: unknown key 'base_dir' (it is set from the file's location)")
    raw_with_base = dict(raw, base_dir=base_dir)
    try:
        cfg = msgspec.convert(raw_with_base, SessionConfig, strict=True)
    except msgspec.ValidationError as exc:
        raise ConfigError(_explain(exc, raw, origin)) from None
    _check_consistency(cfg, origin)
    return cfg


def _check_consistency(cfg: SessionConfig, origin: str) -> None:
    p = cfg.protocol
    if p.trial_labels and len(p.trial_labels) != p.n_trials:
        raise ConfigError(
            f"{origin}: key 'protocol.trial_labels': got {len(p.trial_labels)} labels; "
            f"expected one per trial (protocol.n_trials = {p.n_trials})"
        )
    if p.trial_onsets:
        if len(p.trial_onsets) != p.n_trials:
            raise ConfigError(
                f"{origin}: key 'protocol.trial_onsets': got {len(p.trial_onsets)} onsets; "
                f"expected one per trial (protocol.n_trials = {p.n_trials})"
            )
        if any(b <= a for a, b in zip(p.trial_onsets, p.trial_onsets[1:], strict=False)):
            raise ConfigError(f"{origin}: key 'protocol.trial_onsets': expected increasing scan numbers")
    if cfg.geometry.shape and len(cfg.geometry.shape) != 3:
        raise ConfigError(f"{origin}: key 'geometry.shape': got {cfg.geometry.shape!r}; expected 3 integers")
    if cfg.decoder.sham == "yoked" and not cfg.decoder.yoked_scores:
        raise ConfigError(f"{origin}: key 'decoder.yoked_scores': expected a scores.tsv path when decoder.sham = 'yoked'")
    d = cfg.decoder
    if d.score == "percentile" and not d.percentile_reference:
        raise ConfigError(f"{origin}: key 'decoder.percentile_reference': expected a REF.json path (decnef calibrate) when decoder.score = 'percentile'")
    if not d.percentile_range[0] < d.percentile_range[1]:
        raise ConfigError(f"{origin}: key 'decoder.percentile_range': got {d.percentile_range!r}; expected [lo, hi] with 0 <= lo < hi <= 1")
    if len(cfg.agent.p_high) != cfg.agent.n_options:
        raise ConfigError(
            f"{origin}: key 'agent.p_high': got {len(cfg.agent.p_high)} values; expected agent.n_options = {cfg.agent.n_options}"
        )
    st = cfg.stimulator
    for key in ("high_c", "low_c"):
        if getattr(st, key) > st.max_temperature_c:
            raise ConfigError(
                f"{origin}: key 'stimulator.{key}': got {getattr(st, key)!r}; expected <= stimulator.max_temperature_c = {st.max_temperature_c}"
            )
    if st.high_c > 48 and st.plateau_s > 2:
        raise ConfigError(f"{origin}: key 'stimulator.plateau_s': got {st.plateau_s!r}; expected <= 2 s when stimulator.high_c > 48 °C")
    if len(cfg.simulation.shape) != 3 or len(cfg.simulation.voxel_size_mm) != 3:
        raise ConfigError(f"{origin}: key 'simulation.shape'/'simulation.voxel_size_mm': expected 3 values each")


def load_config(path: str | Path | None) -> SessionConfig:
    """Load and validate a session config file; None gives the defaults."""
    if path is None:
        return SessionConfig()
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{p}: config file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{p}: cannot read config: {exc}") from None
    return parse_config(text, origin=str(p), base_dir=str(p.resolve().parent))


def _to_toml(obj: dict, prefix: str = "") -> list[str]:
    lines: list[str] = []
    tables: list[tuple[str, dict]] = []
    arrays_of_tables: list[tuple[str, list]] = []
    for key, value in obj.items():
        if isinstance(value, dict):
            tables.append((key, value))
        elif isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
            arrays_of_tables.append((key, value))
        else:
            lines.append(f"{key} = {_toml_value(value)}")
    for key, value in tables:
        name = f"{prefix}{key}"
        lines += ["", f"[{name}]"] + _to_toml(value, name + ".")
    for key, items in arrays_of_tables:
        name = f"{prefix}{key}"
        for item in items:
            lines += ["", f"[[{name}]]"] + _to_toml(item, name + ".")
    return lines


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return msgspec.json.encode(value).decode()
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(f"cannot write {value!r} as TOML")


def resolved_toml(cfg: SessionConfig) -> str:
    """The config with every default filled in, as TOML (what was really run)."""
    data = msgspec.to_builtins(cfg)
    data.pop("base_dir", None)
    return "\n".join(_to_toml(data)).lstrip() + "\n"


def config_sha256(cfg: SessionConfig) -> str:
    return hashlib.sha256(resolved_toml(cfg).encode()).hexdigest()
