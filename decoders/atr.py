"""ATR DecNef02 text ROI format (METHOD.md 1.2 item 5), for exchange with the MATLAB program.

    nx ny nz
    K
    i j k weight template_mean      (K lines; i j k are 1-based MATLAB indices)
    0 0 0 bias 0

Only voxels with a non-zero weight are listed. The format has no feature normalisation, so
export folds (x - mean)/scale into the weights and bias (identical scores whenever no feature is
NaN). The ATR program computes sigmoid(w.x + bias) as the target likelihood, so the exported
weights are oriented towards the bundle's target class.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .bundle import BundleError, DecoderBundle


def _binary_target_weights(bundle: DecoderBundle) -> tuple[np.ndarray, float]:
    """Weights/bias in raw feature space with sigmoid(w.x + b) = P(target_class)."""
    if bundle.kind != "linear":
        raise BundleError(f"ATR export needs a linear decoder, got kind {bundle.kind!r}")
    if len(bundle.classes) != 2 or bundle.link == "ovr":
        raise BundleError(f"ATR export needs a binary logistic decoder, got classes {bundle.classes}")
    if bundle.weights.shape[0] == 1:
        w, b = bundle.weights[0], float(bundle.intercept[0])
    else:  # two-row softmax: P(classes[1]) = sigmoid((w1 - w0).x + b1 - b0)
        w = bundle.weights[1] - bundle.weights[0]
        b = float(bundle.intercept[1] - bundle.intercept[0])
    if bundle.target_class == bundle.classes[0]:
        w, b = -w, -b
    w_raw = w / bundle.feature_scale
    b_raw = b - float(np.dot(w_raw, bundle.feature_mean))
    return w_raw, b_raw


def export_atr(bundle: DecoderBundle, path) -> int:
    """Write the ATR ROI text file; returns the number of voxels listed (non-zero weights)."""
    w, b = _binary_target_weights(bundle)
    keep = np.flatnonzero(w != 0.0)
    lines = [" ".join(str(int(s)) for s in bundle.grid_shape), str(keep.size)]
    for d in keep:
        i, j, k = (int(v) + 1 for v in bundle.voxels[d])  # MATLAB indices are 1-based
        lines.append(f"{i} {j} {k} {w[d]:.17g} {bundle.voxel_means[d]:.17g}")
    lines.append(f"0 0 0 {b:.17g} 0")
    Path(path).write_text("\n".join(lines) + "\n")
    return int(keep.size)


def import_atr(
    path,
    *,
    template: np.ndarray | None = None,
    grid_affine: np.ndarray | None = None,
    classes=("0", "1"),
    target_class: str | None = None,
    feature: dict | None = None,
    metrics: dict | None = None,
) -> DecoderBundle:
    """Read an ATR ROI file into a binary linear bundle (P(target) = sigmoid(w.x + bias)).

    `template`: the reference EPI on the same grid (needed for realignment); if omitted, a zero
    volume with the listed template means at the ROI voxels stands in. `grid_affine` defaults to
    the identity (pass the reference EPI's affine). `target_class` defaults to classes[1].
    """
    path = Path(path)

    def fail(line_no: int | None, msg: str) -> BundleError:
        where = f" line {line_no}" if line_no else ""
        return BundleError(f"ATR ROI file {path}{where}: {msg}")

    try:
        raw = path.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise fail(None, f"cannot read ({e})") from None
    rows = [(n, ln.split()) for n, ln in enumerate(raw, 1) if ln.strip()]
    if len(rows) < 3:
        raise fail(None, "too short: expected dims, voxel count, voxel lines and a bias line")
    n0, dims = rows[0]
    try:
        grid_shape = tuple(int(v) for v in dims)
    except ValueError:
        raise fail(n0, f"expected 'nx ny nz' integers, got {' '.join(dims)!r}") from None
    if len(grid_shape) != 3 or min(grid_shape) < 1:
        raise fail(n0, f"expected 3 positive image dimensions, got {' '.join(dims)!r}")
    n1, count = rows[1]
    try:
        k = int(count[0]) if len(count) == 1 else -1
    except ValueError:
        k = -1
    if k < 0:
        raise fail(n1, f"expected the voxel count K, got {' '.join(count)!r}")
    if len(rows) != k + 3:
        raise fail(None, f"header says {k} voxels but the file has {len(rows) - 3} voxel lines (plus bias line)")
    table = np.zeros((k + 1, 5))
    for r, (n, fields) in enumerate(rows[2:]):
        try:
            if len(fields) != 5:
                raise ValueError
            table[r] = [float(v) for v in fields]
        except ValueError:
            raise fail(n, f"expected 5 numbers 'i j k weight template_mean', got {' '.join(fields)!r}") from None
        if not np.all(np.isfinite(table[r])):
            raise fail(n, "non-finite number")
    bias_line = table[k]
    if np.any(bias_line[:3] != 0):
        raise fail(rows[-1][0], "last line must be '0 0 0 bias 0'")
    ijk = table[:k, :3]
    if np.any(ijk != np.round(ijk)):
        raise fail(None, "voxel indices must be integers")
    voxels = ijk.astype(np.int64) - 1  # 1-based MATLAB -> 0-based
    if k and (voxels.min() < 0 or np.any(voxels.max(axis=0) >= np.array(grid_shape))):
        raise fail(None, f"voxel index outside the 1..{grid_shape} grid")
    means = table[:k, 4]
    if template is None:
        template = np.zeros(grid_shape, dtype=np.float32)
        if k:
            template[tuple(voxels.T)] = means
    classes = [str(c) for c in classes]
    target = classes[1] if target_class is None else str(target_class)
    # ATR's sigmoid is P(target); a one-row bundle's sigmoid is P(classes[1])
    sign = -1.0 if len(classes) == 2 and target == classes[0] else 1.0
    try:
        return DecoderBundle(
            weights=sign * table[:k, 3][None, :], intercept=[sign * bias_line[3]],
            classes=classes, target_class=target,
            voxels=voxels, grid_shape=grid_shape,
            grid_affine=np.eye(4) if grid_affine is None else grid_affine,
            template=template, feature_mean=np.zeros(k), feature_scale=np.ones(k),
            feature=dict(feature or {"source": "atr_roi_file"}), metrics=dict(metrics or {}),
            voxel_means=means, extra={"imported_from": str(path)},
        )
    except BundleError as e:
        raise fail(None, str(e)) from None
