"""Decoder construction (`decnef train`): localizer runs → decoder bundle + report.json.

    from runtime.train import train
    result = train(cfg, output="decoder.npz")     # TrainResult(bundle_path, report_path, report, bundle)

The features come from the engine's per-volume code and `runtime.features.run_features`, so
they equal what the online engine computes for the same scans (tests/test_train_features.py).
"""

from runtime.train.pipeline import TrainResult, train

__all__ = ["TrainResult", "train"]
