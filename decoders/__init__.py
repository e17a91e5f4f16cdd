"""Decoders for decoded neurofeedback and the decoder bundle format.

A leaf package (numpy, scipy, scikit-learn only; never imports `runtime`): estimators take
feature matrices, not volumes, and every trained decoder reduces to arrays in a
`DecoderBundle`, the one file the online engine loads.

Names are imported lazily: loading and scoring a bundle (`decoders.load_bundle`) needs numpy
only, so the online engine does not pay scikit-learn's ~1 s import. (The ROI-mean helper
function is `decoders.roi_mean.roi_mean`; `decoders.roi_mean` is its module.)
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "BundleError": "bundle",
    "DecoderBundle": "bundle",
    "FORMAT_VERSION": "bundle",
    "bundle_from_estimator": "bundle",
    "load_bundle": "bundle",
    "save_bundle": "bundle",
    "export_atr": "atr",
    "import_atr": "atr",
    "all_pairs": "correlation",
    "connectivity_features": "correlation",
    "fisher_z": "correlation",
    "window_correlation": "correlation",
    "ConnectivityDecoder": "connectivity",
    "CalibratedLinearSVC": "linear",
    "DECODERS": "linear",
    "make_decoder": "linear",
    "classification_metrics": "metrics",
    "cross_validate": "metrics",
    "RoiMeanDecoder": "roi_mean",
    "percent_signal_change": "roi_mean",
    "SparseLogisticRegression": "slr",
    "fit_slr_var": "slr",
    "SparseMultinomialLogisticRegression": "smlr",
    "fit_smlr": "smlr",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'decoders' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
