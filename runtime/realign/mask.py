"""Automatic head mask of an EPI reference (computed once per reference, not per volume).

Why: realignment should be driven by the head, not by ghosts or background noise, and the
steepest (most informative) intensity edges are at the brain/skull boundary, so the mask is
the largest connected component above an Otsu threshold of a lightly smoothed image, holes
filled, then dilated by a voxel or two to keep the outer edge.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage


def otsu_threshold(values: np.ndarray, bins: int = 256) -> float:
    """Threshold maximising the between-class variance of a 1-D sample."""
    v = values[np.isfinite(values)]
    if v.size == 0:
        return 0.0
    hist, edges = np.histogram(v, bins=bins)
    centres = 0.5 * (edges[:-1] + edges[1:])
    w0 = np.cumsum(hist).astype(np.float64)
    w1 = w0[-1] - w0
    s0 = np.cumsum(hist * centres)
    m0 = s0 / np.maximum(w0, 1)
    m1 = (s0[-1] - s0) / np.maximum(w1, 1)
    between = w0 * w1 * (m0 - m1) ** 2
    return float(centres[int(np.argmax(between))])


def head_mask(data: np.ndarray, *, dilate: int = 1) -> np.ndarray:
    """Boolean (i, j, k) mask of the head in one EPI volume."""
    vol = np.nan_to_num(np.asarray(data, dtype=np.float32))
    smooth = ndimage.gaussian_filter(vol, sigma=1.0, mode="nearest")
    # Otsu on the upper part of the histogram only: EPI background is a large mode near 0
    positive = smooth[smooth > np.percentile(smooth, 2)]
    thr = otsu_threshold(positive)
    mask = smooth > thr
    labels, n = ndimage.label(mask)
    if n > 1:
        sizes = ndimage.sum_labels(mask, labels, index=np.arange(1, n + 1))
        mask = labels == (1 + int(np.argmax(sizes)))
    # fill holes slice by slice as well as in 3-D (open-ended ventricles at the FOV edge)
    mask = ndimage.binary_fill_holes(mask)
    if dilate > 0:
        mask = ndimage.binary_dilation(mask, iterations=dilate)
    return mask
