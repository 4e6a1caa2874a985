"""SD-CPC temporal modules: SSEA, static perceptual difference and DSSA (coarse + fine stages).

A frame's *static perception* (``FrameCache``) depends on that frame alone, so a stream computes
it once per frame and reuses it while the frame serves as a reference.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from sdcpc_core.ops import window_attention, window_attention_fixed

DIFFERENCE_KINDS = ("bhattacharyya", "cosine", "argmax")


class FrameCache(NamedTuple):
    """Everything the model keeps about one frame (batch dimension B).

    The fields after ``static_logits`` summarise the frame in its role as a reference (and its
    difference basis as a target): computed once at encode, read by every later step that uses
    the frame (the fine stage reads ``static`` itself). Each may be None (a hand-built cache,
    training): the modules then derive it from ``static`` and ``static_logits``. A cache restored
    from an exported graph lacks ``static_logits``: it carries what aggregation reads.
    """

    features: tuple[torch.Tensor, ...]  # encoder maps at strides 4, 8, 16, 32
    static: torch.Tensor | None  # S: (B, C, H/8, W/8) aligned feature
    static_logits: torch.Tensor | None  # (B, K, H/8, W/8) static class prediction
    basis: torch.Tensor | None = None  # (B, D, H/8, W/8) fp32 difference basis (difference_basis)
    proto_keys: torch.Tensor | None = None  # (B, K, C) coarse-stage keys of the class prototypes
    proto_values: torch.Tensor | None = None  # (B, K, C) coarse-stage values of the prototypes
    proto_bias: torch.Tensor | None = None  # (B, K) log share of the frame of each class


class SSEA(nn.Module):
    """Static semantic alignment: multi-level then multi-scale, within one frame.

    Levels: the four maps are projected to width ``dim`` on the stride-8 grid and mixed with
    per-pixel level weights. Scales: each pixel attends to the frame's context pooled on grids
    ``pool_scales`` (1×1 … 8×8). Output: S and the static prediction's logits.
    """

    def __init__(self, in_channels, dim: int, num_classes: int, pool_scales=(1, 2, 4, 8)):
        super().__init__()
        self.dim = dim
        self.pool_scales = tuple(pool_scales)
        self.level_proj = nn.ModuleList(nn.Conv2d(c, dim, 1) for c in in_channels)
        self.level_gate = nn.Conv2d(len(in_channels) * dim, len(in_channels), 1)
        self.scale_query = nn.Conv2d(dim, dim, 1)
        self.scale_key = nn.Conv2d(dim, dim, 1)
        self.fuse = nn.Sequential(nn.Conv2d(2 * dim, dim, 1, bias=False), nn.BatchNorm2d(dim),
                                  nn.ReLU(inplace=True))
        self.classifier = nn.Conv2d(dim, num_classes, 1)

    def forward(self, features) -> tuple[torch.Tensor, torch.Tensor]:
        grid = features[1].shape[2:]  # stride-8 grid
        levels = []
        for proj, f in zip(self.level_proj, features):
            if f.shape[2] > grid[0]:  # finer than the grid: pool first (a 1×1 conv commutes with it)
                x = proj(_average_pool(f, grid))
            else:
                x = proj(f)
                if x.shape[2:] != grid:
                    x = F.interpolate(x, size=grid, mode="bilinear", align_corners=False)
            levels.append(x)  # (B, C, h, w)
        weights = self.level_gate(torch.cat(levels, 1)).softmax(1)  # (B, L, h, w)
        x = sum(weights[:, i: i + 1] * lv for i, lv in enumerate(levels))  # (B, C, h, w)

        # Each pixel attends to the pooled grids as bilinearly upsampled to (h, w). Upsampling a
        # grid is a fixed (h*w, s*s) matrix, and the 1×1 key projection commutes with it, so the
        # attention runs against the s*s pooled cells (85 in all for scales 1, 2, 4, 8) without
        # ever building the upsampled (B, S, C, h, w) context and key maps.
        b, c, h, w = x.shape
        pooled = [_average_pool(x, (s, s)).flatten(2) for s in self.pool_scales]  # (B, C, s*s)
        cells = torch.cat(pooled, 2)  # (B, C, ΣS²)
        upsample = [_upsampling_matrix(s, (h, w), x) for s in self.pool_scales]  # (h*w, s*s)
        # q·k = (W_q x + b_q)·k = x·(W_qᵀ k) + b_q·k: the query projection moves onto the ΣS²
        # keys, so no (C, C) projection runs over the h*w pixels
        wq, bq = self.scale_query.weight.flatten(1), self.scale_query.bias  # (C, C), (C,)
        keys = self.scale_key(cells.unsqueeze(3)).squeeze(3)  # (B, C, ΣS²)
        scores = torch.bmm(x.flatten(2).transpose(1, 2), torch.matmul(wq.T, keys))  # (B, N, ΣS²)
        scores = scores + torch.matmul(bq, keys).unsqueeze(1)
        per_scale = scores.split([s * s for s in self.pool_scales], 2)
        logits = torch.stack([(sc * m).sum(2) for sc, m in zip(per_scale, upsample)], 1)  # (B, S, N)
        scale_w = logits.div(math.sqrt(self.dim)).softmax(1)  # (B, S, N)
        mixing = torch.cat([scale_w[:, i, :, None] * m for i, m in enumerate(upsample)], 2)  # (B, N, ΣS²)
        # fuse = ReLU(BN(W · cat(x, context))): W's context half is applied to the ΣS² pooled cells
        # before they are mixed (the mixing is linear per channel), not to all h*w mixed pixels
        conv, norm, act = self.fuse
        w_x, w_context = conv.weight.flatten(1).split(c, 1)  # (C, C) each
        context = torch.bmm(torch.matmul(w_context, cells), mixing.transpose(1, 2)).view(b, c, h, w)
        static = act(norm(F.conv2d(x, w_x[:, :, None, None], conv.bias) + context))
        return static, self.classifier(static)


def _average_pool(x: torch.Tensor, size) -> torch.Tensor:
    """``adaptive_avg_pool2d(x, size)``, in forms exported graphs run fast: a plain average pool
    where the size divides evenly (the same bins), else the pooling as two small matrices
    (adaptive bins are products of a row bin and a column bin)."""
    (h, w), (sh, sw) = x.shape[2:], size
    if h % sh == 0 and w % sw == 0:
        return F.avg_pool2d(x, (h // sh, w // sw))
    rows, cols = _pooling_matrix(h, sh, x), _pooling_matrix(w, sw, x)  # (sh, h), (sw, w)
    return torch.matmul(torch.matmul(rows, x), cols.T)  # (B, C, sh, sw)


def _pooling_matrix(n: int, s: int, like: torch.Tensor) -> torch.Tensor:
    """(s, n) matrix whose row i averages adaptive pooling's i-th bin of n positions."""
    eye = torch.eye(n, dtype=like.dtype, device=like.device).unsqueeze(0)  # (1, n, n)
    return F.adaptive_avg_pool1d(eye, s)[0].T


def _upsampling_matrix(s: int, size, like: torch.Tensor) -> torch.Tensor:
    """(h*w, s*s) matrix M with ``up(p).flatten() == M @ p.flatten()`` for bilinear
    (``align_corners=False``) upsampling of an s×s grid ``p`` to ``size = (h, w)``."""
    eye = torch.eye(s * s, dtype=like.dtype, device=like.device).view(s * s, 1, s, s)
    return F.interpolate(eye, size=size, mode="bilinear", align_corners=False).flatten(1).T


def difference_basis(static: torch.Tensor, static_logits: torch.Tensor, kind: str = "bhattacharyya",
                     probabilities: torch.Tensor | None = None) -> torch.Tensor:
    """A frame's side of ``static_difference``, computed once per frame: (B, D, h, w) fp32.

    bhattacharyya: √p of the static prediction (D = K); cosine: S normalised (D = C);
    argmax: the predicted class index (D = 1). ``probabilities``: softmax of the logits, when known.
    """
    if kind == "bhattacharyya":
        p = static_logits.float().softmax(1) if probabilities is None else probabilities
        return p.sqrt()
    if kind == "cosine":
        return F.normalize(static.float(), dim=1, eps=1e-8)
    if kind == "argmax":
        return static_logits.argmax(1, keepdim=True).float()
    raise ValueError(f"unknown difference kind {kind!r}; choose one of {DIFFERENCE_KINDS}")


def _basis(cache: FrameCache, kind: str) -> torch.Tensor:
    return difference_basis(cache.static, cache.static_logits, kind) if cache.basis is None else cache.basis


def static_difference(target: FrameCache, reference: FrameCache,
                      kind: str = "bhattacharyya") -> torch.Tensor:
    """Per-location difference of two frames' static perceptions, (B, 1, h, w) in [0, 1]."""
    if kind not in DIFFERENCE_KINDS:
        raise ValueError(f"unknown difference kind {kind!r}; choose one of {DIFFERENCE_KINDS}")
    a, b = _basis(target, kind), _basis(reference, kind)
    if kind == "bhattacharyya":
        # 1 - Σ sqrt(p_t p_r), written as the squared Hellinger distance ½ Σ (√p_t − √p_r)², equal
        # for distributions: exactly 0 for a frame compared with itself in any precision (the
        # stream's first frame is its own reference), where 1 - Σ loses everything to rounding
        return (0.5 * (a - b).square().sum(1, keepdim=True)).clamp(0, 1)
    if kind == "cosine":
        return (1.0 - (a * b).sum(1, keepdim=True)) / 2
    return (a != b).float()


class ClassPrototypeAttention(nn.Module):
    """DSSA stage 1 (coarse, stride-32 grid): the target attends to each reference's class prototypes.

    Prototype of class k in reference r = mean of S_r weighted by the static probability of k.
    A class's logit gets the log of its share of the frame, so absent classes are not attended.
    """

    def __init__(self, dim: int, pool: int = 4):
        super().__init__()
        self.dim = dim
        self.pool = pool
        self.query = nn.Linear(dim, dim)
        self.key = nn.Linear(dim, dim)
        self.value = nn.Linear(dim, dim)

    def summarize(self, static: torch.Tensor, probabilities: torch.Tensor):
        """A reference's prototypes as the stage reads them, once per frame: keys, values (B, K, C)
        and the log-mass bias (B, K). ``probabilities``: the static prediction's softmax, fp32."""
        p = probabilities.flatten(2)  # (B, K, N)
        mass = p.sum(2, keepdim=True)  # (B, K, 1)
        protos = torch.bmm(p / mass.clamp_min(1e-6), static.float().flatten(2).transpose(1, 2))  # (B, K, C)
        protos = protos.to(static.dtype)
        bias = torch.log(mass.squeeze(2) / p.shape[2] + 1e-6).to(static.dtype)  # (B, K)
        return self.key(protos), self.value(protos), bias

    def _summary(self, ref: FrameCache):
        if ref.proto_keys is not None:
            return ref.proto_keys, ref.proto_values, ref.proto_bias
        return self.summarize(ref.static, ref.static_logits.float().softmax(1))

    def forward(self, static: torch.Tensor, references: list[FrameCache]) -> torch.Tensor:
        b, c, h, w = static.shape
        keys, values, biases = zip(*(self._summary(r) for r in references))
        k, v = torch.cat(keys, 1).to(static.dtype), torch.cat(values, 1).to(static.dtype)  # (B, T*K, C)
        bias = torch.cat(biases, 1).to(static.dtype)  # (B, T*K)

        coarse = F.avg_pool2d(static, self.pool, ceil_mode=True)  # (B, C, h/4, w/4)
        hc, wc = coarse.shape[2:]
        q = self.query(coarse.flatten(2).transpose(1, 2))  # (B, Nc, C)
        attn = (torch.bmm(q, k.transpose(1, 2)) / math.sqrt(c) + bias.unsqueeze(1)).softmax(-1)
        out = torch.bmm(attn, v).transpose(1, 2).reshape(b, c, hc, wc)
        return F.interpolate(out, size=(h, w), mode="bilinear", align_corners=False)


class WindowCrossFrameAttention(nn.Module):
    """DSSA stage 2 (fine, stride-8 grid): window attention into every reference, selected queries only.

    The ``selection_ratio`` fraction of locations with the largest perceptual difference are
    queried (1.0 = all); the others receive zero context.

    Two paths give the same numbers: eager inference and training attend from the selected
    queries only (``select``, data-dependent shapes); under ``torch.compile``/export, or with
    ``fixed_shape = True``, every query attends and the unselected ones are masked
    (``selection_mask``), so every shape follows from the frame size.
    """

    NOISE = 1e-5  # perceptual differences below this are treated as zero when selecting
    fixed_shape = False  # set by sdcpc_core.export; not part of the state_dict

    def __init__(self, dim: int, window: int = 9, dilation: int = 1, selection_ratio: float = 0.25):
        super().__init__()
        self.window, self.dilation, self.selection_ratio = window, dilation, selection_ratio
        self.query = nn.Conv2d(dim, dim, 1)
        self.key = nn.Conv2d(dim, dim, 1)
        self.value = nn.Conv2d(dim, dim, 1)

    def attention_query(self, x: torch.Tensor) -> torch.Tensor:
        """q' = W_kᵀ (W_q x + b_q), what each query dots with the references' S rows.

        The published form is softmax_j(q · (W_k s_j + b_k) / √C) · (W_v s_j + b_v). The term
        q · b_k is the same for every key of a query, which the softmax ignores, so
        q · k_j = q' · s_j up to it; and the weights sum to one, so the values' projection
        applies once, to the attended S. The queries attend to S itself: one tensor per
        reference instead of projected keys and values, and one gathered window instead of two.
        """
        wq, wk = self.query.weight.flatten(1), self.key.weight.flatten(1)  # (C, C) each
        with torch.autocast(x.device.type, enabled=False):  # fold the weights in fp32
            weight = wk.float().T @ wq.float()
            bias = wk.float().T @ self.query.bias.float()
        return F.conv2d(x, weight[:, :, None, None].to(x.dtype), bias.to(x.dtype))

    def _ranked(self, difference: torch.Tensor) -> tuple[torch.Tensor, int] | None:
        """(B, 1, h, w) -> ((B, h*w) differences with rounding noise zeroed, how many to select),
        or None when every location is selected.

        Differences below ``NOISE`` are float rounding (a frame compared with itself at stream
        start gives 1 - Σp ≈ ±1e-7), so the selection depends on real differences only.
        """
        n = difference.shape[2] * difference.shape[3]
        # the count rounds up, but a product like 0.3 * 20 = 6.000000000000001 is 6, not 7
        m = max(1, math.ceil(self.selection_ratio * n - 1e-9))
        if m >= n:
            return None
        d = difference.flatten(1)
        return d.masked_fill(d < self.NOISE, 0.0), m

    def select(self, difference: torch.Tensor) -> torch.Tensor | None:
        """(B, 1, h, w) -> (B, M) flat indices of the most different locations, or None for all;
        ties go to the earlier location (independent of memory layout, BLAS or device)."""
        ranked = self._ranked(difference)
        if ranked is None:
            return None
        d, m = ranked
        return d.sort(dim=1, descending=True, stable=True).indices[:, :m].sort(1).values

    def selection_mask(self, difference: torch.Tensor) -> torch.Tensor | None:
        """(B, 1, h, w) -> (B, 1, h, w) bool of exactly the locations ``select`` picks, or None
        for all; static shapes (a top-k value, comparisons and a cumulative sum, no sort)."""
        ranked = self._ranked(difference)
        if ranked is None:
            return None
        d, m = ranked
        kth = d.topk(m, dim=1).values[:, m - 1:]  # (B, 1): the m-th largest difference
        above, tied = d > kth, d == kth
        room = m - above.sum(1, keepdim=True)  # tied locations still to take, earliest first
        return (above | (tied & (tied.cumsum(1) <= room))).view_as(difference)

    def forward(self, x: torch.Tensor, references: list[FrameCache],
                difference: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        rows = torch.stack([r.static.permute(0, 2, 3, 1) for r in references], 1)  # (B, T, h, w, C)
        as_maps = lambda t: t.permute(0, 1, 4, 2, 3)  # noqa: E731  (B, T, C, h, w) views of rows
        if self.training:  # the published order, so that b_k keeps its (zero) gradient under DDP
            k, v = (as_maps(F.linear(rows, conv.weight.flatten(1), conv.bias)) for conv in (self.key, self.value))
            q, project = self.query(x), False
        else:  # queries attend to S itself (``attention_query``), values projected afterwards
            k = v = as_maps(rows)
            q, project = self.attention_query(x), True
        if self.fixed_shape or torch.compiler.is_compiling():
            out = window_attention_fixed(q, k, v, window=self.window, dilation=self.dilation)
            out = self.value(out) if project else out
            mask = self.selection_mask(difference)
            return out if mask is None else torch.where(mask, out, torch.zeros((), dtype=out.dtype))
        index = self.select(difference)
        out = window_attention(q, k, v, window=self.window, dilation=self.dilation, query_index=index)
        if index is None:
            return self.value(out) if project else out  # (B, C, h, w)
        if project:
            out = F.conv1d(out, self.value.weight.flatten(2), self.value.bias)  # (B, C, M)
        dense = out.new_zeros(b, c, h * w)
        return dense.scatter(2, index.unsqueeze(1).expand(-1, c, -1), out).view(b, c, h, w)


class DSSA(nn.Module):
    """Dynamic semantic alignment: coarse class-level context, then fine window context where needed."""

    def __init__(self, dim: int, window: int = 9, dilation: int = 1, selection_ratio: float = 0.25,
                 difference: str = "bhattacharyya"):
        super().__init__()
        if difference not in DIFFERENCE_KINDS:
            raise ValueError(f"unknown difference kind {difference!r}; choose one of {DIFFERENCE_KINDS}")
        self.difference = difference
        self.coarse = ClassPrototypeAttention(dim)
        self.fine = WindowCrossFrameAttention(dim, window, dilation, selection_ratio)
        self.norm = nn.GroupNorm(1, dim)

    def forward(self, target: FrameCache, references: list[FrameCache]):
        """-> (enriched target feature (B, C, h, w), perceptual difference (B, 1, h, w))."""
        diff = torch.stack([static_difference(target, r, self.difference) for r in references]).amax(0)
        x = target.static + self.coarse(target.static, references)
        # select on the fp32 difference: rounding it to bf16/fp16 first would merge distinct
        # values into ties (which then favour the top-left locations)
        x = x + self.fine(x, references, diff)
        return self.norm(x), diff
