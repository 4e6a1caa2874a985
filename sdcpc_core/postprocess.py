"""Stride-4 logits -> labels (and confidence) at the input resolution, without the (K, H, W) volume.

The definition is the reference evaluation's: resize the logits bilinearly to (H, W)
(``align_corners=False``), then argmax over classes (and, for confidence, the max softmax
probability). Both functions here compute exactly that, to float rounding, faster on CPU:

- ``resized_labels``: an output pixel is a convex mix of its four source neighbours, so where
  all four have the same argmax that class is the argmax of the mix. Only pixels between
  neighbours that disagree (object boundaries) are mixed over all K classes.
- ``labels_and_confidence``: confidence needs every class everywhere, so the volume is
  resized separably in strips of rows, classes last (the fast reduction axis on CPU).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

BOUNDARY_CHUNK = 16384  # boundary pixels mixed at once: 16384 × K floats per neighbour gather
DENSE_BOUNDARY = 0.3  # above this fraction of boundary pixels, resizing in strips is faster


def source_coordinates(in_size: int, out_size: int, device=None):
    """Bilinear (``align_corners=False``) source of each output index along one axis, as
    PyTorch computes it: (lower index, upper index, weight of the upper one), each (out_size,)."""
    src = (torch.arange(out_size, device=device, dtype=torch.float32) + 0.5) * (in_size / out_size) - 0.5
    src = src.clamp_min(0)
    lower = src.floor().long().clamp_max(in_size - 1)
    upper = (lower + 1).clamp_max(in_size - 1)
    return lower, upper, src - lower


def resized_labels(logits: torch.Tensor, size) -> torch.Tensor:
    """(K, h, w) logits -> (H, W) int64 labels at ``size = (H, W)``: argmax of the resized logits."""
    k, h, w = logits.shape
    y0, y1, fy = source_coordinates(h, size[0], logits.device)
    x0, x1, fx = source_coordinates(w, size[1], logits.device)
    flat = logits.float().permute(1, 2, 0).reshape(h * w, k)  # (h*w, K), classes last
    low = flat.argmax(1).view(h, w)
    labels = low[y0[:, None], x0[None, :]]  # (H, W): the top-left neighbour's class
    mixed = ((labels != low[y0[:, None], x1[None, :]]) | (labels != low[y1[:, None], x0[None, :]])
             | (labels != low[y1[:, None], x1[None, :]]))
    ys, xs = mixed.nonzero(as_tuple=True)
    if ys.numel() > DENSE_BOUNDARY * mixed.numel():  # boundaries everywhere (a noisy prediction)
        return _resize_in_strips(logits, size, None, with_confidence=False)[0]
    for start in range(0, ys.numel(), BOUNDARY_CHUNK):
        y, x = ys[start:start + BOUNDARY_CHUNK], xs[start:start + BOUNDARY_CHUNK]
        wx = fx[x, None]
        top = torch.lerp(flat[y0[y] * w + x0[x]], flat[y0[y] * w + x1[x]], wx)  # (n, K)
        bottom = torch.lerp(flat[y1[y] * w + x0[x]], flat[y1[y] * w + x1[x]], wx)
        labels[y, x] = torch.lerp(top, bottom, fy[y, None]).argmax(1)
    return labels


def labels_and_confidence(logits: torch.Tensor, size, strip_rows: int | None = None):
    """(K, h, w) logits -> (labels (H, W) int64, confidence (H, W) float32) at ``size = (H, W)``.

    Separable (width, then rows two at a time) in strips of ``strip_rows`` output rows, classes
    last. ``strip_rows=None``: 32 on CPU, all rows at once on a GPU.
    """
    return _resize_in_strips(logits, size, strip_rows, with_confidence=True)


def _resize_in_strips(logits, size, strip_rows, with_confidence: bool):
    h = logits.shape[1]
    out_h, out_w = size
    # width first: (K, h, w) -> (h, W, K)
    rows = F.interpolate(logits.float()[None], size=(h, out_w), mode="bilinear",
                         align_corners=False)[0].permute(1, 2, 0).contiguous()
    top_row, bottom_row, frac = source_coordinates(h, out_h, logits.device)
    frac = frac.view(-1, 1, 1)
    labels = torch.empty(out_h, out_w, dtype=torch.long, device=logits.device)
    confidence = torch.empty(out_h, out_w, dtype=torch.float32, device=logits.device) if with_confidence else None
    step = strip_rows or (out_h if logits.is_cuda else 32)
    for start in range(0, out_h, step):
        sl = slice(start, min(start + step, out_h))
        x = torch.lerp(rows[top_row[sl]], rows[bottom_row[sl]], frac[sl])  # (S, W, K)
        if not with_confidence:
            labels[sl] = x.argmax(2)
            continue
        top, labels[sl] = x.max(2)
        # max softmax probability = 1 / sum_k exp(l_k - l_max)
        confidence[sl] = x.sub_(top.unsqueeze(2)).exp_().sum(2).reciprocal_()
    return labels, confidence
