"""Stride-4 logits -> labels (and confidence) at the input resolution, without the (K, H, W) volume.

The definition is the reference evaluation's: resize the logits bilinearly to (H, W)
(``align_corners=False``, float32), then argmax over classes (first index on ties) and, for
confidence, the max softmax probability. ``resized_labels`` returns exactly
``F.interpolate(logits.float()[None], size, mode="bilinear").argmax(1)[0]``, bit for bit:

Two implementations, each exact:

- CPU tensors: the compiled kernel (``sdcpc_core.ops.label_kernel``, numba). A source cell whose
  four corners agree on the argmax, each ahead of its runner-up by more than a rounding margin, is
  decided without mixing; elsewhere only the classes that can still win are mixed.
- Elsewhere (a GPU, or no numba): the volume is resized in strips of rows, classes last.

Both flag near ties: pixels whose two best mixed values lie within the margin, where our rounding
may differ from PyTorch's. ``_settle`` decides them with the reference's own values: PyTorch's CPU
arithmetic reproduced bit for bit (``_pytorch_bilinear``), or ``F.interpolate`` of the contending
classes (interpolation treats channels independently). ``labels_and_confidence``: confidence
needs every class everywhere, so it resizes in strips; its labels come from ``resized_labels``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from sdcpc_core.ops import label_kernel

MARGIN = 2.0 ** -18  # near-tie margin, relative to the largest |logit| involved (64 float32 ulps)
STRIP_ROWS = 32  # output rows per strip on CPU
USE_KERNEL = True  # CPU tensors: the compiled kernel (sdcpc_core.ops.label_kernel) when numba is installed


def source_coordinates(in_size: int, out_size: int, device=None):
    """Bilinear (``align_corners=False``) source of each output index along one axis, in
    PyTorch's own float32 arithmetic (``src = fma(in/out, i + 0.5, -0.5)``, clamped at 0):
    (lower index, upper index, weight of the upper one), each (out_size,)."""
    ratio = torch.tensor(in_size, dtype=torch.float32) / out_size  # float32, as PyTorch divides
    # ratio * (i + 0.5) - 0.5 is exact in float64 for any realistic size: one rounding, as in an fma
    src = (ratio.double() * (torch.arange(out_size, dtype=torch.float64) + 0.5) - 0.5).float()
    src = src.clamp_min(0).to(device)  # src < in - 1/2: its floor is a valid index
    lower = src.floor().long()
    upper = (lower + 1).clamp_max(in_size - 1)
    return lower, upper, src - lower


def resized_labels(logits: torch.Tensor, size) -> torch.Tensor:
    """(K, h, w) logits -> (H, W) int64 labels at ``size = (H, W)``: argmax of the resized logits."""
    _check(logits, size)
    k, h, w = logits.shape
    out_h, out_w = int(size[0]), int(size[1])
    dev = logits.device
    x = logits.float().contiguous()
    pixels = x.permute(1, 2, 0).contiguous().view(h * w, k)  # (h*w, K), classes last
    if USE_KERNEL and dev.type == "cpu" and label_kernel.available():
        labels = _kernel_labels(x, pixels, (out_h, out_w))
        return labels if labels is not None else _resize_whole(x, (out_h, out_w))
    if not bool(torch.isfinite(x).all()):
        return _resize_whole(x, (out_h, out_w))
    labels, _, ties = _resize_in_strips(x, (out_h, out_w), None, with_confidence=False)
    if ties:
        ys, xs, member = (torch.cat(t) for t in zip(*ties))
        classes = torch.arange(k, device=dev).expand(member.shape[0], k)
        labels[ys, xs] = _settle(x, pixels, (out_h, out_w), ys, xs, (classes, member))
    return labels


def warm_up() -> None:
    """Compile (or load from the disk cache) the CPU kernel now, not on the first frame."""
    resized_labels(torch.zeros(2, 2, 2), (4, 4))


def _resize_whole(x, size):
    """The definition itself, for logits with NaN or inf (which the engine refuses anyway): the
    shortcuts reason about finite values only."""
    return F.interpolate(x[None], size=size, mode="bilinear", align_corners=False)[0].argmax(0)


def _kernel_labels(x, pixels, size):
    """The fused CPU pass (``sdcpc_core.ops.label_kernel``), near ties settled as elsewhere;
    None when a logit is NaN or inf."""
    k, h, w = x.shape
    threads = torch.get_num_threads()
    scale, arg, sure, finite = label_kernel.summarise(pixels.numpy(), MARGIN, threads)
    if not finite.all():
        return None
    sources_y = source_coordinates(h, size[0])
    sources_x = source_coordinates(w, size[1])
    labels, tie = label_kernel.resized_labels_cpu(
        pixels.view(h, w, k).numpy(), scale.reshape(h, w), arg.reshape(h, w), sure.reshape(h, w),
        [t.numpy() for t in sources_y], [t.numpy() for t in sources_x], MARGIN, threads)
    labels = torch.from_numpy(labels)
    ys, xs = torch.from_numpy(tie).nonzero(as_tuple=True)
    if ys.numel():
        labels[ys, xs] = _settle(x, pixels, size, ys, xs, lambda: _contenders(pixels, w, ys, xs, sources_y,
                                                                            sources_x, scale))
    return labels


def _contenders(pixels, w, ys, xs, sources_y, sources_x, scale):
    """The classes within twice the margin of the best at pixels (ys, xs), by the reproduced
    arithmetic (within rounding of the reference's values wherever it runs)."""
    mixed = _pytorch_bilinear(pixels, w, ys, xs, sources_y, sources_x)[0]  # (T, K)
    (y0, y1, _), (x0, x1, _) = sources_y, sources_x
    a, b, c, d = y0[ys] * w, y1[ys] * w, x0[xs], x1[xs]
    scale = torch.from_numpy(scale)
    margin = MARGIN * torch.stack([scale[a + c], scale[a + d], scale[b + c], scale[b + d]]).amax(0)
    member = mixed >= (mixed.amax(1) - 2 * margin)[:, None]
    return torch.arange(pixels.shape[1]).expand_as(member), member


def _settle(x, pixels, size, ys, xs, contenders):
    """Labels at the near-tie pixels (ys, xs) as the reference gives them. On CPU, where
    ``F.interpolate`` takes its generic kernel, its arithmetic is reproduced exactly
    (``_reference_values``); elsewhere, and at the rare pixel where that reproduction cannot be
    sure of its rounding, ``F.interpolate`` of the contending classes settles it.
    ``contenders``: (classes (T, c), member (T, c)), or a function returning them."""
    values = _reference_values(x, pixels, size, ys, xs)
    if values is None:
        unsure = torch.ones_like(ys, dtype=torch.bool)
        labels = torch.empty_like(ys)
    else:
        exact, unsure = values
        labels = exact.argmax(1)  # first index on ties, as the reference's argmax
    if unsure.any():
        classes, member = contenders() if callable(contenders) else contenders
        labels[unsure] = _exact_labels(x, size, ys[unsure], xs[unsure], (classes[unsure], member[unsure]))
    return labels


def _fma(a, b, c):
    """float32 a * b + c rounded once (as a fused multiply-add), and where float64 cannot be
    sure of that rounding: its own rounding of the sum was inexact and landed on a float32
    halfway point (or in the subnormal range)."""
    p, c = a.double() * b.double(), c.double()  # the product is exact in float64
    s = p + c
    t = s - c
    inexact = ((p - t) + (c - (s - t))) != 0  # the rounding error of the sum (TwoSum)
    halfway = (s.view(torch.int64) & (2 ** 29 - 1)) == 2 ** 28
    return s.float(), inexact & (halfway | ((s.abs() < 2.0 ** -126) & (s != 0)))


def _pytorch_bilinear(pixels, w, ys, xs, sources_y, sources_x):
    """The values ``F.interpolate`` (CPU, generic kernel) gives at pixels (ys, xs), all classes:
    ``t0 * w0 + t1 * w1`` per axis, width first, compiled as ``fma(t0, w0, t1 * w1)``.
    Returns (values (T, K) float32, unsure (T,) bool)."""
    (y0, y1, fy), (x0, x1, fx) = sources_y, sources_x
    a, b, c, d = y0[ys] * w, y1[ys] * w, x0[xs], x1[xs]
    wx1, wy1 = fx[xs, None], fy[ys, None]
    wx0, wy0 = 1 - wx1, 1 - wy1
    top, u1 = _fma(pixels[a + c], wx0, pixels[a + d] * wx1)
    bottom, u2 = _fma(pixels[b + c], wx0, pixels[b + d] * wx1)
    out, u3 = _fma(top, wy0, bottom * wy1)
    return out, (u1 | u2 | u3).any(1)


def _reference_values(x, pixels, size, ys, xs):
    """``_pytorch_bilinear`` where it is known to be the reference's arithmetic, else None."""
    k, h, w = x.shape
    generic = size[0] + size[1] > 128 and not (k == 3 and torch.get_num_threads() == 1)
    if x.device.type != "cpu" or not generic or not _arithmetic_reproduced():
        return None
    return _pytorch_bilinear(pixels, w, ys, xs, source_coordinates(h, size[0]), source_coordinates(w, size[1]))


_REPRODUCED = []


def _arithmetic_reproduced() -> bool:
    """Whether ``_pytorch_bilinear`` equals this build's ``F.interpolate`` bit for bit (checked
    once per process on random logits, integer and non-integer factors)."""
    if not _REPRODUCED:
        g = torch.Generator().manual_seed(0)
        ok = True
        for (h, w), size in [((15, 20), (60, 80)), ((11, 9), (97, 61)), ((40, 30), (23, 131))]:
            x = torch.randn(5, h, w, generator=g) * 8
            ref = F.interpolate(x[None], size=size, mode="bilinear", align_corners=False)[0]
            ys, xs = (t.reshape(-1) for t in torch.meshgrid(torch.arange(size[0]), torch.arange(size[1]),
                                                             indexing="ij"))
            values, unsure = _pytorch_bilinear(x.permute(1, 2, 0).reshape(h * w, 5), w, ys, xs,
                                               source_coordinates(h, size[0]), source_coordinates(w, size[1]))
            ok &= bool((values == ref[:, ys, xs].T)[~unsure].all())
        _REPRODUCED.append(ok)
    return _REPRODUCED[0]


def _exact_labels(x, size, ys, xs, contenders):
    """Labels at pixels (ys, xs) from the reference's own values: ``F.interpolate`` of just the
    contending classes, ``contenders = (classes (T, c), member (T, c))``."""
    k = x.shape[0]
    classes, member_of = contenders
    chosen = torch.unique(classes[member_of])
    if chosen.numel() == 3 < k:  # 3 channels can select another CPU kernel: add a 4th
        spare = torch.ones(k, dtype=torch.bool, device=x.device)
        spare[chosen] = False
        chosen = torch.sort(torch.cat([chosen, spare.nonzero()[0]])).values
    member = torch.zeros(chosen.numel(), ys.numel(), dtype=torch.bool, device=x.device)
    t, j = member_of.nonzero(as_tuple=True)
    member[torch.searchsorted(chosen, classes[t, j]), t] = True
    exact = F.interpolate(x[chosen][None], size=size, mode="bilinear", align_corners=False)[0]
    values = exact[:, ys, xs].masked_fill(~member, float("-inf"))
    return chosen[values.argmax(0)]


def labels_and_confidence(logits: torch.Tensor, size, strip_rows: int | None = None):
    """(K, h, w) logits -> (labels (H, W) int64, confidence (H, W) float32) at ``size = (H, W)``.

    Labels are ``resized_labels``'s (exact); confidence is resized separably (width, then rows)
    in strips of ``strip_rows`` output rows, classes last. ``strip_rows=None``: 32 on CPU, all
    rows at once on a GPU.
    """
    _check(logits, size)
    _, confidence, _ = _resize_in_strips(logits.float(), size, strip_rows, with_confidence=True)
    return resized_labels(logits, size), confidence


def _check(logits, size):
    if logits.dim() != 3:
        raise ValueError(f"logits must be (K, h, w); got shape {tuple(logits.shape)} "
                         "(pass logits[0] for a batch of one)")
    if not logits.is_floating_point():
        raise ValueError(f"logits must be a floating-point tensor; got {logits.dtype}")
    if len(size) != 2 or min(int(size[0]), int(size[1])) < 1 or min(logits.shape) < 1:
        raise ValueError(f"size must be (H, W) with H, W >= 1 and logits non-empty; got size={tuple(size)}, "
                         f"logits {tuple(logits.shape)}")


def _resize_in_strips(x, size, strip_rows, with_confidence: bool):
    """Resize (K, h, w) in strips of output rows (width first, then rows), classes last. Returns
    (labels (H, W), None, near ties) when ``with_confidence`` is False, else (unfilled labels,
    confidence (H, W), []); near ties: a list of (ys, xs, contending classes (T, K) bool)."""
    k, h = x.shape[0], x.shape[1]
    out_h, out_w = int(size[0]), int(size[1])
    # width first: (K, h, w) -> (h, W, K)
    rows = F.interpolate(x[None], size=(h, out_w), mode="bilinear",
                         align_corners=False)[0].permute(1, 2, 0).contiguous()
    top_row, bottom_row, frac = source_coordinates(h, out_h, x.device)
    frac = frac.view(-1, 1, 1)
    labels = torch.empty(out_h, out_w, dtype=torch.long, device=x.device)
    confidence = torch.empty(out_h, out_w, dtype=torch.float32, device=x.device) if with_confidence else None
    ties = []
    scale = float(x.abs().amax()) if not with_confidence else 0.0  # one margin for the frame
    step = strip_rows or (out_h if x.is_cuda else STRIP_ROWS)
    for start in range(0, out_h, step):
        sl = slice(start, min(start + step, out_h))
        v = torch.lerp(rows[top_row[sl]], rows[bottom_row[sl]], frac[sl])  # (S, W, K)
        if not with_confidence:
            if k == 1:
                labels[sl] = 0
                continue
            best2, arg2 = v.topk(2, 2)
            labels[sl] = arg2[..., 0]
            margin = torch.full_like(best2[..., 0], MARGIN * scale)
            ys, xs = (best2[..., 0] - best2[..., 1] <= margin).nonzero(as_tuple=True)
            if ys.numel():
                member = v[ys, xs] >= (best2[ys, xs, 0] - margin[ys, xs])[:, None]
                ties.append((ys + start, xs, member))
            continue
        top = v.amax(2, keepdim=True)
        # max softmax probability = 1 / sum_k exp(l_k - l_max)
        confidence[sl] = v.sub_(top).exp_().sum(2).reciprocal_()
    return labels, confidence, ties
