"""Decoder bundle: one safe file with everything the online engine needs to score a trial.

Format: an uncompressed `.npz` (zip of `.npy` arrays, written by `np.savez`) holding the numeric
arrays plus `meta`, a UTF-8 JSON document stored as a uint8 array. Loading uses
`np.load(..., allow_pickle=False)` and `json.loads` only, so a bundle can never execute code.
A SHA-256 over the arrays (name, dtype, shape, bytes) and the canonical JSON metadata is
stored in the metadata and verified on load, so truncation, corruption and edits are caught.
Every problem is reported as one `BundleError` line naming the file.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import math
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

MAGIC = "decnef-decoder-bundle"
FORMAT_VERSION = 1
KINDS = ("linear", "connectivity", "roi_mean")
LINKS = ("logistic", "softmax", "ovr")
_ARRAYS = ("weights", "intercept", "voxels", "grid_affine", "template", "feature_mean",
           "feature_scale", "voxel_means")
_EXTRA_PREFIX = "extra__"
NUISANCE_KEYS = {"wm": "nuisance_wm_voxels", "csf": "nuisance_csf_voxels"}
"""Optional extra arrays: (n, 3) template-grid voxels of white matter / CSF whose mean signals
join ATR REGRESS's nuisance set (E8; written by `decnef train`, read by the engine). Bundles
without them score as before (motion + global signal only)."""


class BundleError(ValueError):
    """A decoder bundle (or ATR ROI file) that is corrupt, truncated, tampered or incompatible."""


def software_version() -> str:
    try:
        from importlib.metadata import version

        return version("decnef")
    except Exception:  # noqa: BLE001 - not installed as a distribution
        return "0+unknown"


def _json_default(o):
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, (tuple, set)):
        return list(o)
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"{type(o).__name__} is not JSON serialisable")


def _canonical_json(doc: dict) -> str:
    return json.dumps(doc, sort_keys=True, separators=(",", ":"), default=_json_default,
                      ensure_ascii=True, allow_nan=True)


def _jsonable(doc: dict, what: str) -> dict:
    """Round-trip through JSON so what we hash is exactly what a reload will see."""
    try:
        return json.loads(_canonical_json(doc))
    except (TypeError, ValueError) as e:
        raise BundleError(f"{what} is not JSON serialisable: {e}") from None


def _sigmoid(a: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * a))


@dataclass
class DecoderBundle:
    """A trained decoder plus the geometry and feature definition it was trained with.

    weights: (rows, n_features) in the normalised feature space; rows = 1 (binary logistic,
    positive class = classes[1]) or n_classes (softmax, or normalised one-vs-rest sigmoids when
    extra["link"] == "ovr"). Features are normalised as (x - feature_mean) / feature_scale.
    For "linear" and "roi_mean" n_features = n_voxels (feature d is voxel voxels[d]); for
    "connectivity" n_features = n_pairs of extra["pairs"] (ROI index pairs) and
    extra["voxel_roi"] (n_voxels,) says which ROI each voxel belongs to.
    """

    weights: np.ndarray
    intercept: np.ndarray
    classes: list[str]
    target_class: str
    voxels: np.ndarray
    grid_shape: tuple[int, int, int]
    grid_affine: np.ndarray
    template: np.ndarray
    feature_mean: np.ndarray
    feature_scale: np.ndarray
    feature: dict
    metrics: dict
    kind: str = "linear"
    extra: dict = field(default_factory=dict)
    voxel_means: np.ndarray | None = None  # template mean intensity per voxel (ATR column 5)
    version: str = ""
    created: str = ""
    sha256: str = ""

    def __post_init__(self) -> None:
        self.validate()

    # -- consistency -------------------------------------------------------------------------
    def validate(self) -> None:
        """Coerce dtypes and check every shape; raises BundleError naming the field."""
        try:
            self.weights = np.array(self.weights, dtype=np.float64, ndmin=2)
            self.intercept = np.array(self.intercept, dtype=np.float64, ndmin=1)
            self.voxels = np.asarray(self.voxels)
            self.grid_affine = np.asarray(self.grid_affine, dtype=np.float64)
            self.template = np.asarray(self.template, dtype=np.float32)
            self.feature_mean = np.array(self.feature_mean, dtype=np.float64, ndmin=1)
            self.feature_scale = np.array(self.feature_scale, dtype=np.float64, ndmin=1)
            self.grid_shape = tuple(int(s) for s in self.grid_shape)
        except (TypeError, ValueError) as e:
            raise BundleError(f"field has the wrong type: {e}") from None
        self.classes = [str(c) for c in self.classes]
        self.target_class = str(self.target_class)
        if self.kind not in KINDS:
            raise BundleError(f"kind {self.kind!r} is not one of {KINDS}")
        if len(self.classes) < 2 or len(set(self.classes)) != len(self.classes):
            raise BundleError(f"classes must be >= 2 distinct labels, got {self.classes}")
        if self.target_class not in self.classes:
            raise BundleError(f"target_class {self.target_class!r} is not one of {self.classes}")
        if len(self.grid_shape) != 3 or min(self.grid_shape) < 1:
            raise BundleError(f"grid_shape must be 3 positive ints, got {self.grid_shape}")
        if self.grid_affine.shape != (4, 4) or not np.all(np.isfinite(self.grid_affine)):
            raise BundleError(f"grid_affine must be a finite 4x4 matrix, got shape {self.grid_affine.shape}")
        if self.template.shape != self.grid_shape:
            raise BundleError(f"template shape {self.template.shape} != grid_shape {self.grid_shape}")
        if self.voxels.ndim != 2 or self.voxels.shape[1] != 3 or not np.issubdtype(self.voxels.dtype, np.integer):
            raise BundleError(f"voxels must be an (n, 3) integer array, got {self.voxels.dtype} {self.voxels.shape}")
        self.voxels = self.voxels.astype(np.int32)
        if self.voxels.size and (self.voxels.min() < 0 or np.any(self.voxels.max(axis=0) >= np.array(self.grid_shape))):
            raise BundleError(f"voxel indices fall outside the grid {self.grid_shape}")
        if self.weights.ndim != 2:
            raise BundleError(f"weights must be 2-D (rows, features), got shape {self.weights.shape}")
        rows, n_feat = self.weights.shape
        n_cls = len(self.classes)
        allowed = (1, 2) if n_cls == 2 else (n_cls,)
        if rows not in allowed:
            raise BundleError(f"weights must have {' or '.join(map(str, allowed))} rows for {n_cls} classes, got shape {self.weights.shape}")
        if self.intercept.shape != (rows,):
            raise BundleError(f"intercept shape {self.intercept.shape} != ({rows},)")
        if not (np.all(np.isfinite(self.weights)) and np.all(np.isfinite(self.intercept))):
            raise BundleError("weights/intercept contain NaN or inf")
        n_vox = self.voxels.shape[0]
        if self.kind == "connectivity":
            pairs = np.asarray(self.extra.get("pairs", np.zeros((0, 2))))
            if pairs.ndim != 2 or pairs.shape[1] != 2 or not np.issubdtype(pairs.dtype, np.integer):
                raise BundleError("a connectivity bundle needs extra['pairs'] as an (n_pairs, 2) int array")
            if pairs.shape[0] != n_feat:
                raise BundleError(f"{pairs.shape[0]} ROI pairs but weights have {n_feat} columns")
            self.extra["pairs"] = pairs.astype(np.int64)
            if "voxel_roi" not in self.extra:
                raise BundleError("a connectivity bundle needs extra['voxel_roi'] (the ROI index of each voxel)")
            vr = np.asarray(self.extra["voxel_roi"])
            if vr.shape != (n_vox,) or not np.issubdtype(vr.dtype, np.integer):
                raise BundleError(f"extra['voxel_roi'] must be ({n_vox},) ints, got {vr.dtype} {vr.shape}")
            self.extra["voxel_roi"] = vr.astype(np.int64)
            self._check_rois(pairs, vr)
        elif n_feat != n_vox:
            raise BundleError(f"weights have {n_feat} columns but there are {n_vox} voxels")
        if self.feature_mean.shape != (n_feat,) or self.feature_scale.shape != (n_feat,):
            raise BundleError(f"feature_mean/feature_scale must have shape ({n_feat},), got {self.feature_mean.shape}/{self.feature_scale.shape}")
        if not np.all(np.isfinite(self.feature_mean)) or not np.all(np.isfinite(self.feature_scale) & (self.feature_scale != 0)):
            raise BundleError("feature_mean must be finite and feature_scale finite and non-zero")
        self._check_nuisance_voxels()
        if self.voxel_means is None:
            i, j, k = self.voxels.T
            self.voxel_means = self.template[i, j, k].astype(np.float64)
        self.voxel_means = np.array(self.voxel_means, dtype=np.float64, ndmin=1)
        if self.voxel_means.shape != (n_vox,):
            raise BundleError(f"voxel_means shape {self.voxel_means.shape} != ({n_vox},)")
        link = self.link
        if link not in LINKS or (link == "ovr" and rows != n_cls) or (link == "logistic" and rows != 1):
            raise BundleError(f"extra['link'] {link!r} does not fit weights with {rows} rows")
        if not isinstance(self.feature, dict) or not isinstance(self.metrics, dict):
            raise BundleError("feature and metrics must be dicts")

    def _check_nuisance_voxels(self) -> None:
        """extra's WM/CSF voxel lists, when present: non-empty (n, 3) ints inside the grid."""
        for tissue, key in NUISANCE_KEYS.items():
            if key not in self.extra:
                continue
            a = np.asarray(self.extra[key])
            if a.ndim != 2 or a.shape[1] != 3 or len(a) == 0 or not np.issubdtype(a.dtype, np.integer):
                raise BundleError(f"extra['{key}'] must be a non-empty (n, 3) integer array of {tissue.upper()} voxels, "
                                  f"got {a.dtype} {a.shape}")
            if a.min() < 0 or np.any(a.max(axis=0) >= np.array(self.grid_shape)):
                raise BundleError(f"extra['{key}'] holds {tissue.upper()} voxel indices outside the grid {self.grid_shape}")
            self.extra[key] = a.astype(np.int64)

    def _check_rois(self, pairs: np.ndarray, voxel_roi: np.ndarray) -> None:
        """Connectivity: every ROI index 0..n_rois-1 has a voxel and every pair joins two of them."""
        n_rois = int(self.extra.get("n_rois", int(voxel_roi.max()) + 1 if voxel_roi.size else 0))
        if voxel_roi.size and (voxel_roi.min() < 0 or voxel_roi.max() >= n_rois):
            raise BundleError(f"extra['voxel_roi'] holds ROI indices outside 0..{n_rois - 1}")
        empty = np.flatnonzero(np.bincount(voxel_roi, minlength=n_rois) == 0) if n_rois else []
        if len(empty):
            raise BundleError(f"ROI {int(empty[0])} of {n_rois} has no voxel in extra['voxel_roi']")
        if pairs.size and (pairs.min() < 0 or pairs.max() >= n_rois):
            raise BundleError(f"extra['pairs'] holds ROI indices outside 0..{n_rois - 1}")
        if pairs.size and np.any(pairs[:, 0] == pairs[:, 1]):
            raise BundleError("extra['pairs'] pairs a ROI with itself")

    @property
    def n_rois(self) -> int:
        """Connectivity bundles: number of ROIs (0 for voxel bundles)."""
        if self.kind != "connectivity":
            return 0
        vr = self.extra["voxel_roi"]
        return int(self.extra.get("n_rois", int(vr.max()) + 1 if vr.size else 0))

    @property
    def link(self) -> str:
        return str(self.extra.get("link", "logistic" if self.weights.shape[0] == 1 else "softmax"))

    @property
    def n_features(self) -> int:
        return int(self.weights.shape[1])

    # -- scoring -----------------------------------------------------------------------------
    def features_from_timecourses(self, timecourses: np.ndarray) -> np.ndarray:
        """Connectivity bundles: ROI time courses (n_rois, n_time) -> pair features."""
        from .correlation import connectivity_features

        return connectivity_features(timecourses, self.extra["pairs"],
                                     bool(self.extra.get("fisher_z", True)))

    def decision_function(self, X: np.ndarray) -> np.ndarray:
        """Linear scores (n, rows). NaN features are dropped together with their weights
        (METHOD.md E11: nothing is renormalised); for "roi_mean" they are left out of the mean.
        A row with no finite feature scores NaN."""
        X = np.array(X, dtype=np.float64, ndmin=2)
        if X.shape[1] != self.n_features:
            raise ValueError(f"expected {self.n_features} features, got {X.shape[1]}")
        z = (X - self.feature_mean) / self.feature_scale
        valid = np.isfinite(z)
        z0 = np.where(valid, z, 0.0)
        n_valid = valid.sum(axis=1)
        if self.kind == "roi_mean":
            with np.errstate(invalid="ignore", divide="ignore"):
                m = z0.sum(axis=1) / n_valid
            scores = m[:, None] * self.weights.sum(axis=1)[None, :] + self.intercept
        else:
            scores = z0 @ self.weights.T + self.intercept
        scores[n_valid == 0] = np.nan
        return scores

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        """(n, n_classes) probabilities in the order of `classes` (batch, for evaluation)."""
        s = self.decision_function(X)
        if self.link == "logistic":
            p1 = _sigmoid(s[:, 0])
            return np.column_stack([1.0 - p1, p1])
        if self.link == "ovr":
            p = _sigmoid(s)
            return p / p.sum(axis=1, keepdims=True)
        s = s - s.max(axis=1, keepdims=True)
        e = np.exp(s)
        return e / e.sum(axis=1, keepdims=True)

    def likelihood(self, features: np.ndarray) -> float:
        """(E11) P(target_class) for ONE feature vector (NaN if no feature is valid).

        Connectivity bundles also accept the ROI time-course window (n_rois, n_time)."""
        x = np.asarray(features, dtype=np.float64)
        if self.kind == "connectivity" and x.ndim == 2:
            x = self.features_from_timecourses(x)
        if x.ndim != 1:
            raise ValueError(f"likelihood takes one feature vector, got shape {x.shape}")
        p = self.predict_proba(x[None, :])[0]
        return float(p[self.classes.index(self.target_class)])

    # -- (de)serialisation helpers -----------------------------------------------------------
    def _payload(self) -> tuple[dict[str, np.ndarray], dict]:
        arrays = {
            "weights": self.weights, "intercept": self.intercept, "voxels": self.voxels,
            "grid_affine": self.grid_affine, "template": self.template,
            "feature_mean": self.feature_mean, "feature_scale": self.feature_scale,
            "voxel_means": self.voxel_means,
        }
        extra_doc = {}
        extra_arrays = []
        for key, val in self.extra.items():
            if isinstance(val, np.ndarray):
                if val.dtype.hasobject:
                    raise BundleError(f"extra[{key!r}] is an object array; bundles hold numbers only")
                arrays[_EXTRA_PREFIX + key] = val
                extra_arrays.append(key)
            else:
                extra_doc[key] = val
        meta = {
            "format": MAGIC, "format_version": FORMAT_VERSION, "kind": self.kind,
            "classes": self.classes, "target_class": self.target_class,
            "grid_shape": list(self.grid_shape),
            "feature": _jsonable(self.feature, "feature"),
            "metrics": _jsonable(self.metrics, "metrics"),
            "extra": _jsonable(extra_doc, "extra"), "extra_arrays": sorted(extra_arrays),
            "version": self.version, "created": self.created,
        }
        arrays = {k: np.ascontiguousarray(v) for k, v in arrays.items()}
        return arrays, meta


def content_hash(arrays: dict[str, np.ndarray], meta: dict) -> str:
    """SHA-256 over every array (name, little-endian dtype, shape, bytes) and the metadata."""
    h = hashlib.sha256()
    for name in sorted(arrays):
        a = arrays[name]
        a = a.astype(a.dtype.newbyteorder("<"), copy=False)
        h.update(f"{name}|{a.dtype.str}|{a.shape}|".encode())
        h.update(np.ascontiguousarray(a).tobytes())
    doc = {k: v for k, v in meta.items() if k != "sha256"}
    h.update(_canonical_json(doc).encode())
    return h.hexdigest()


def save_bundle(bundle: DecoderBundle, path) -> str:
    """Write `bundle` to `path` atomically (exact path; no suffix added). Returns the SHA-256."""
    bundle.validate()
    if not bundle.version:
        bundle.version = software_version()
    if not bundle.created:
        bundle.created = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    arrays, meta = bundle._payload()
    meta["sha256"] = content_hash(arrays, meta)
    blob = np.frombuffer(_canonical_json(meta).encode("utf-8"), dtype=np.uint8)
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent or ".")
    try:
        with os.fdopen(fd, "wb") as fh:
            np.savez(fh, meta=blob, **arrays)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    bundle.sha256 = meta["sha256"]
    return bundle.sha256


def _one_line(msg: str) -> str:
    return " ".join(str(msg).split())


def load_bundle(path) -> DecoderBundle:
    """Read and verify a bundle; any problem raises BundleError("<path>: <what is wrong>")."""
    path = Path(path)

    def fail(msg: str) -> BundleError:
        return BundleError(_one_line(f"decoder bundle {path}: {msg}"))

    if not path.is_file():
        raise fail("no such file")
    with open(path, "rb") as fh:
        head = fh.read(4)
    if head != b"PK\x03\x04":
        raise fail("not a decoder bundle (not an .npz archive)")
    arrays: dict[str, np.ndarray] = {}
    try:
        with np.load(path, allow_pickle=False) as z:
            for key in z.files:
                arrays[key] = z[key]
    except ValueError as e:
        if "allow_pickle" in str(e):
            raise fail("contains a pickled object array; refused (bundles never execute code)") from None
        raise fail(f"corrupt or truncated archive ({e})") from None
    except Exception as e:  # noqa: BLE001 - zipfile/zlib/EOF/OSError: all mean "damaged file"
        raise fail(f"corrupt or truncated archive ({type(e).__name__}: {e})") from None
    if "meta" not in arrays:
        raise fail("not a decoder bundle (no 'meta' document)")
    blob = arrays.pop("meta")
    try:
        if blob.dtype != np.uint8 or blob.ndim != 1:
            raise ValueError("meta is not a uint8 vector")
        meta = json.loads(blob.tobytes().decode("utf-8"))
        if not isinstance(meta, dict):
            raise ValueError("meta is not a JSON object")
    except (ValueError, UnicodeDecodeError) as e:
        raise fail(f"unreadable metadata ({e})") from None
    if meta.get("format") != MAGIC:
        raise fail("not a decoder bundle (metadata lacks the decnef format tag)")
    fv = meta.get("format_version")
    if not isinstance(fv, int):
        raise fail("metadata lacks an integer format_version")
    if fv > FORMAT_VERSION:
        raise fail(f"written by a newer decnef (format version {fv} > {FORMAT_VERSION} supported); upgrade decnef")
    for key in _ARRAYS:
        if key not in arrays:
            raise fail(f"missing array '{key}'")
    for key in ("kind", "classes", "target_class", "grid_shape", "feature", "metrics", "sha256"):
        if key not in meta:
            raise fail(f"missing metadata key '{key}'")
    stored = meta["sha256"]
    actual = content_hash(arrays, meta)
    if stored != actual:
        raise fail(f"content hash mismatch (file modified or corrupt): stored {str(stored)[:12]}..., computed {actual[:12]}...")
    extra = dict(meta.get("extra") or {})
    for key in meta.get("extra_arrays", []):
        if _EXTRA_PREFIX + key not in arrays:
            raise fail(f"missing array '{_EXTRA_PREFIX + key}'")
        extra[key] = arrays[_EXTRA_PREFIX + key]
    try:
        return DecoderBundle(
            weights=arrays["weights"], intercept=arrays["intercept"], classes=meta["classes"],
            target_class=meta["target_class"], voxels=arrays["voxels"],
            grid_shape=tuple(meta["grid_shape"]), grid_affine=arrays["grid_affine"],
            template=arrays["template"], feature_mean=arrays["feature_mean"],
            feature_scale=arrays["feature_scale"], feature=meta["feature"],
            metrics=meta["metrics"], kind=meta["kind"], extra=extra,
            voxel_means=arrays["voxel_means"], version=str(meta.get("version", "")),
            created=str(meta.get("created", "")), sha256=stored,
        )
    except BundleError as e:
        raise fail(str(e)) from None
    except (TypeError, ValueError, KeyError) as e:
        raise fail(f"inconsistent contents ({e})") from None


def bundle_from_estimator(
    est,
    *,
    voxels,
    grid_shape,
    grid_affine,
    template,
    feature: dict,
    metrics: dict,
    target_class=None,
    feature_mean=None,
    feature_scale=None,
    extra: dict | None = None,
    voxel_means=None,
) -> DecoderBundle:
    """Reduce a fitted decoder to a bundle.

    `feature_mean`/`feature_scale`: normalisation the *caller* applied to X before `fit`
    (default none). An estimator's own normalisation (SLR `normalize="each"`:
    `feature_mean_`/`feature_scale_`) is composed with it, and the weights are stored in the
    resulting normalised space so E11's "drop NaN terms" acts on the features the model saw.
    `target_class` defaults to classes_[1] for two classes and is required for more.
    """
    coef = np.array(est.coef_, dtype=np.float64, ndmin=2)
    icpt = np.array(est.intercept_, dtype=np.float64, ndmin=1)
    classes = [str(c) for c in est.classes_]
    n_feat = coef.shape[1]
    m_u = np.zeros(n_feat) if feature_mean is None else np.asarray(feature_mean, dtype=np.float64)
    s_u = np.ones(n_feat) if feature_scale is None else np.asarray(feature_scale, dtype=np.float64)
    m_e = np.asarray(getattr(est, "feature_mean_", np.zeros(n_feat)), dtype=np.float64)
    s_e = np.asarray(getattr(est, "feature_scale_", np.ones(n_feat)), dtype=np.float64)
    # coef_ acts on the estimator's input u = (x - m_u)/s_u; its internal space is (u - m_e)/s_e
    weights = coef * s_e
    intercept = icpt + coef @ m_e
    mean = m_u + s_u * m_e
    scale = s_u * s_e
    if target_class is None:
        if len(classes) != 2:
            raise ValueError("target_class is required for a decoder with more than two classes")
        target_class = classes[1]
    extra = dict(extra or {})
    kind = "linear"
    from .connectivity import ConnectivityDecoder
    from .roi_mean import RoiMeanDecoder

    if isinstance(est, RoiMeanDecoder):
        kind = "roi_mean"
    elif isinstance(est, ConnectivityDecoder):
        kind = "connectivity"
        extra.setdefault("pairs", np.asarray(est.pairs_, dtype=np.int64))
        extra.setdefault("fisher_z", bool(est.fisher_z))
        extra.setdefault("n_rois", int(est.n_rois_))
    link = getattr(est, "link_", None)
    if link is not None and link != ("logistic" if weights.shape[0] == 1 else "softmax"):
        extra.setdefault("link", link)
    metrics = dict(metrics)
    if hasattr(est, "n_selected_features_"):
        metrics.setdefault("n_selected_features", int(est.n_selected_features_))
    metrics.setdefault("estimator", type(est).__name__)
    metrics.setdefault("estimator_params", {k: v for k, v in est.get_params(deep=False).items()
                                            if isinstance(v, (int, float, str, bool, type(None)))
                                            and not (isinstance(v, float) and math.isnan(v))})
    return DecoderBundle(
        weights=weights, intercept=intercept, classes=classes, target_class=str(target_class),
        voxels=voxels, grid_shape=tuple(grid_shape), grid_affine=grid_affine,
        template=template, feature_mean=mean, feature_scale=scale, feature=dict(feature),
        metrics=metrics, kind=kind, extra=extra, voxel_means=voxel_means,
        version=software_version(),
        created=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    )
