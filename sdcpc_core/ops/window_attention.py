"""Window-based cross-frame attention (SD-CPC §5).

A query at p in the target frame attends to the keys at p + dilation * (dy, dx), |dy|, |dx| <= window // 2,
in each of T reference frames. Keys outside the frame are excluded from the softmax (not zero-padded);
the softmax runs jointly over all T * window**2 valid keys of a query. The centre key always exists, so
every query has at least T valid keys.

Two implementations give the same numbers:
- ``_WindowAttentionTorch``: plain torch ops, a loop over the window**2 offsets. Memory is O(M*T*w*w)
  for the attention weights plus O(inputs); no dense N x N and no per-offset gathered copy of k / v is
  saved for autograd (backward recomputes the gathers from the saved inputs).
- the CUDA extension ``sdcpc_core.ops._window_attention_cuda`` (sdcpc_core/csrc), used for CUDA tensors
  when it imports, window <= 15 and the dtype is fp32/fp16/bf16.
"""

import math

import torch

try:  # built by setup.py / cuda_build.py only when a CUDA torch and nvcc are present
    from sdcpc_core.ops import _window_attention_cuda as _ext
except ImportError:  # not built, or built against CUDA torch and imported under CPU torch
    _ext = None

MAX_CUDA_WINDOW = 15  # larger windows, and float64, use the PyTorch path also on CUDA
_CUDA_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def backend():
    """Which implementation ``window_attention`` uses for CUDA tensors: "cuda" or "pytorch"."""
    return "cuda" if _ext is not None else "pytorch"


def _offsets(window, dilation):
    r = window // 2
    return [(dilation * dy, dilation * dx) for dy in range(-r, r + 1) for dx in range(-r, r + 1)]


class _WindowAttentionTorch(torch.autograd.Function):
    """Forward/backward with plain torch ops on channels-last rows, one offset at a time.

    Per offset the keys / values of all queries are gathered as (B*M, T, C) so that the logits and the
    aggregation are small batched matmuls. Saved for backward: q, k, v (the inputs, no copy),
    query_index, the softmax weights (B*M, K, T) and the output (B*M, C), both in the accumulation
    dtype; the gathers of k / v are recomputed per offset in backward, never stored.
    """

    @staticmethod
    def forward(ctx, q, k, v, query_index, window, dilation):
        B, T, C, H, W = k.shape
        M = query_index.shape[1]
        scale = 1.0 / math.sqrt(C)
        acc = _acc_dtype(q.dtype)
        qs = _gather_queries(q, query_index).to(acc)  # B*M, C, 1
        k_rows, v_rows = _rows(k), _rows(v)  # B*T*N, C (input dtype)
        offsets = _offsets(window, dilation)
        rows, valid = _key_rows(query_index, T, H, W, offsets)  # K x (B*M*T,), K x (B*M, 1)

        logits = qs.new_empty((B * M, len(offsets), T))
        for o, (r, ok) in enumerate(zip(rows, valid)):
            kg = k_rows.index_select(0, r).view(B * M, T, C).to(acc)
            lo = torch.bmm(kg, qs).squeeze(-1) * scale  # B*M, T
            logits[:, o] = lo.masked_fill_(~ok, float("-inf"))
        attn = logits.view(B * M, len(offsets) * T).softmax(dim=1).view(logits.shape)  # joint over K * T

        out = qs.new_zeros((B * M, 1, C))
        for o, r in enumerate(rows):
            vg = v_rows.index_select(0, r).view(B * M, T, C).to(acc)
            out.baddbmm_(attn[:, o, None], vg)
        out = out.view(B, M, C)

        ctx.save_for_backward(q, k, v, query_index, attn, out)
        ctx.window, ctx.dilation = window, dilation
        res = q.new_empty((B, C, M))  # a fresh tensor, never a view of the saved out
        res.copy_(out.transpose(1, 2))
        return res  # B, C, M

    @staticmethod
    def backward(ctx, grad_out):
        q, k, v, query_index, attn, out = ctx.saved_tensors
        B, T, C, H, W = k.shape
        N, M = H * W, query_index.shape[1]
        scale = 1.0 / math.sqrt(C)
        acc = _acc_dtype(q.dtype)
        g = grad_out.transpose(1, 2).to(acc).reshape(B * M, C, 1)
        qs = _gather_queries(q, query_index).to(acc).view(B * M, 1, C)
        k_rows, v_rows = _rows(k), _rows(v)
        rows, _ = _key_rows(query_index, T, H, W, _offsets(ctx.window, ctx.dilation))

        # softmax backward: dlogit_j = a_j * (g.v_j - sum_i a_i g.v_i), and sum_i a_i v_i = out
        g_out = torch.bmm(out.view(B * M, 1, C), g).view(B * M, 1)
        gq = qs.new_zeros((B * M, 1, C))
        gk = qs.new_zeros((B * T * N, C))
        gv = torch.zeros_like(gk)
        for o, r in enumerate(rows):
            a = attn[:, o]  # B*M, T  (0 for keys outside the frame)
            vg = v_rows.index_select(0, r).view(B * M, T, C).to(acc)
            dl = a * (torch.bmm(vg, g).squeeze(-1) - g_out) * scale  # B*M, T
            kg = k_rows.index_select(0, r).view(B * M, T, C).to(acc)
            gq.baddbmm_(dl[:, None], kg)
            ri = r[:, None].expand(-1, C)  # scatter_add_: CPU index_add_ on rows loops per row
            gk.scatter_add_(0, ri, (dl[..., None] * qs).view(-1, C))
            gv.scatter_add_(0, ri, (a[..., None] * g.view(B * M, 1, C)).view(-1, C))

        grad_q = gq.new_zeros((B, C, N))
        grad_q.scatter_add_(2, query_index[:, None].expand(B, C, M), gq.view(B, M, C).transpose(1, 2))
        grad_q = grad_q.view(B, C, H, W).to(q.dtype)
        grad_k = gk.view(B, T, H, W, C).permute(0, 1, 4, 2, 3).to(k.dtype)
        grad_v = gv.view(B, T, H, W, C).permute(0, 1, 4, 2, 3).to(v.dtype)
        return grad_q, grad_k, grad_v, None, None, None


def _acc_dtype(dtype):
    """fp32 accumulation for fp32/fp16/bf16; float64 stays float64 (gradcheck)."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def _gather_queries(q, query_index):
    """(B, C, H, W), (B, M) -> (B*M, C, 1) selected query vectors."""
    B, C = q.shape[:2]
    M = query_index.shape[1]
    qs = q.flatten(2).gather(2, query_index[:, None].expand(B, C, M))  # B, C, M
    return qs.transpose(1, 2).reshape(B * M, C, 1)


def _rows(k):
    """(B, T, C, H, W) -> (B*T*H*W, C) channels-last rows (a copy unless k is already laid out so)."""
    return k.permute(0, 1, 3, 4, 2).reshape(-1, k.shape[2])


def _key_rows(query_index, T, H, W, offsets):
    """Per offset: row in (B*T*H*W) of each (query, frame) key, ordered (B, M, T), clamped inside the
    frame; and whether the key is inside, (B*M, 1)."""
    B = query_index.shape[0]
    y, x = query_index // W, query_index % W  # B, M
    base = (torch.arange(B * T, device=query_index.device) * (H * W)).view(B, 1, T)
    rows, valid = [], []
    for dy, dx in offsets:
        ny, nx = y + dy, x + dx
        ok = (ny >= 0) & (ny < H) & (nx >= 0) & (nx < W)
        n = ny.clamp(0, H - 1) * W + nx.clamp(0, W - 1)
        rows.append((base + n[..., None]).reshape(-1))
        valid.append(ok.reshape(-1, 1))
    return rows, valid


def _check(q, k, v, window, dilation, query_index):
    if not isinstance(window, int) or window < 1 or window % 2 == 0:
        raise ValueError(f"window must be a positive odd int, got {window!r}")
    if not isinstance(dilation, int) or dilation < 1:
        raise ValueError(f"dilation must be a positive int, got {dilation!r}")
    if q.dim() != 4:
        raise ValueError(f"q must be (B, C, H, W), got shape {tuple(q.shape)}")
    if k.dim() != 5:
        raise ValueError(f"k must be (B, T, C, H, W), got shape {tuple(k.shape)}")
    if v.shape != k.shape:
        raise ValueError(f"v shape {tuple(v.shape)} != k shape {tuple(k.shape)}")
    B, C, H, W = q.shape
    if (k.shape[0], k.shape[2], k.shape[3], k.shape[4]) != (B, C, H, W):
        raise ValueError(f"k/v (B, T, C, H, W) = {tuple(k.shape)} do not match q (B, C, H, W) = {tuple(q.shape)}")
    if k.shape[1] < 1:
        raise ValueError("k/v need at least one reference frame (T >= 1)")
    if not (q.is_floating_point() and k.is_floating_point() and v.is_floating_point()):
        raise TypeError(f"q, k, v must be floating point, got {q.dtype}, {k.dtype}, {v.dtype}")
    if not (q.device == k.device == v.device):
        raise ValueError(f"q, k, v must be on one device, got {q.device}, {k.device}, {v.device}")
    if query_index is not None:
        if query_index.dim() != 2 or query_index.shape[0] != B:
            raise ValueError(f"query_index must be (B={B}, M), got shape {tuple(query_index.shape)}")
        if query_index.dtype.is_floating_point or query_index.dtype == torch.bool:
            raise TypeError(f"query_index must be an integer tensor, got {query_index.dtype}")
        if query_index.device != q.device:
            raise ValueError(f"query_index is on {query_index.device}, q on {q.device}")
        if query_index.numel() and (query_index.min() < 0 or query_index.max() >= H * W):
            raise IndexError(
                f"query_index out of range: values must be in [0, H*W={H * W}), got "
                f"[{int(query_index.min())}, {int(query_index.max())}]")


def window_attention(q, k, v, window=9, dilation=1, query_index=None):
    """Window attention of target queries into T reference frames.

    q: (B, C, H, W); k, v: (B, T, C, H, W); query_index: None or integer (B, M) flat positions y*W + x.
    Returns (B, C, H, W) if query_index is None, else (B, C, M). Mixed input dtypes are promoted to a
    common dtype; accumulation is fp32 and the output has the (promoted) input dtype.
    """
    _check(q, k, v, window, dilation, query_index)
    B, C, H, W = q.shape
    dtype = torch.promote_types(torch.promote_types(q.dtype, k.dtype), v.dtype)
    q, k, v = q.to(dtype), k.to(dtype), v.to(dtype)
    dense = query_index is None
    if q.is_cuda and _ext is not None and window <= MAX_CUDA_WINDOW and dtype in _CUDA_DTYPES:
        idx = None if dense else query_index.long().contiguous()
        out = _WindowAttentionCUDA.apply(q, k, v, idx, window, dilation)
    else:
        idx = torch.arange(H * W, device=q.device).expand(B, H * W) if dense else query_index.long()
        out = _WindowAttentionTorch.apply(q, k, v, idx, window, dilation)
    return out.view(B, C, H, W) if dense else out


class _WindowAttentionCUDA(torch.autograd.Function):
    """The fused CUDA kernels; forward saves the per-query log-sum-exp (B, M) fp32 and the output,
    backward recomputes the logits from them (see sdcpc_core/csrc/window_attention_kernel.cu)."""

    @staticmethod
    def forward(ctx, q, k, v, query_index, window, dilation):
        out, lse = _ext.forward(q, k, v, query_index, window, dilation)  # (B, C, M), (B, M)
        ctx.save_for_backward(q, k, v, query_index, out, lse)
        ctx.window, ctx.dilation = window, dilation
        return out

    @staticmethod
    def backward(ctx, grad_out):
        q, k, v, query_index, out, lse = ctx.saved_tensors
        gq, gk, gv = _ext.backward(grad_out.contiguous(), q, k, v, query_index, out, lse,
                                   ctx.window, ctx.dilation)
        return gq, gk, gv, None, None, None
