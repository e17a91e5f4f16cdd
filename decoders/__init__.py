"""Decoders for decoded neurofeedback and the decoder bundle format.

A leaf package (numpy, scipy, scikit-learn only; never imports `runtime`): estimators take
feature matrices, not volumes, and every trained decoder reduces to arrays in a
`DecoderBundle`, the one file the online engine loads.
"""

from .atr import export_atr, import_atr
from .bundle import (
    FORMAT_VERSION,
    BundleError,
    DecoderBundle,
    bundle_from_estimator,
    load_bundle,
    save_bundle,
)
from .connectivity import (
    ConnectivityDecoder,
    all_pairs,
    connectivity_features,
    fisher_z,
    window_correlation,
)
from .linear import DECODERS, CalibratedLinearSVC, make_decoder
from .metrics import classification_metrics, cross_validate
from .roi_mean import RoiMeanDecoder, percent_signal_change, roi_mean
from .slr import SparseLogisticRegression, fit_slr_var
from .smlr import SparseMultinomialLogisticRegression, fit_smlr

__all__ = [
    "BundleError",
    "CalibratedLinearSVC",
    "ConnectivityDecoder",
    "DECODERS",
    "DecoderBundle",
    "FORMAT_VERSION",
    "RoiMeanDecoder",
    "SparseLogisticRegression",
    "SparseMultinomialLogisticRegression",
    "all_pairs",
    "bundle_from_estimator",
    "classification_metrics",
    "connectivity_features",
    "cross_validate",
    "export_atr",
    "fisher_z",
    "fit_slr_var",
    "fit_smlr",
    "import_atr",
    "load_bundle",
    "make_decoder",
    "percent_signal_change",
    "roi_mean",
    "save_bundle",
    "window_correlation",
]
