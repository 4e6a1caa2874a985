"""Window-based cross-frame attention (SD-CPC §5).

A query at p in the target frame attends to the keys at p + dilation * (dy, dx), |dy|, |dx| <= window // 2,
in each of T reference frames. Keys outside the frame are excluded from the softmax (not zero-padded);
the softmax runs jointly over all T * window**2 valid keys of a query. The centre key always exists, so
every query has at least T valid keys.

Two implementations give the same numbers:
- ``_WindowAttentionTorch``: plain torch ops. Selected queries are grouped by 8 x 8 tile; a tile's
  queries attend to the tile's halo (the keys any of them can see) with batched matmuls, keys outside a
  query's window or the frame masked. Memory is O(inputs) plus per chunk of tiles the halos and
  O(queries * T * (8 + 2R)**2) logits; no dense N x N, no gathered (M, T, C, w*w) tensor; only the
  inputs and the (M, C) output are saved for autograd (backward recomputes halos and softmax).
- the CUDA extension ``sdcpc_core.ops._window_attention_cuda`` (sdcpc_core/csrc), used for CUDA tensors
  when it imports, window <= 15 and the dtype is fp32/fp16/bf16.
"""

import math

import torch
import torch.nn.functional as F

try:  # built by setup.py / cuda_build.py only when a CUDA torch and nvcc are present
    from sdcpc_core.ops import _window_attention_cuda as _ext
except ImportError:  # not built, or built against CUDA torch and imported under CPU torch
    _ext = None

MAX_CUDA_WINDOW = 15  # larger windows, and float64, use the PyTorch path also on CUDA
_CUDA_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def backend():
    """Which implementation ``window_attention`` uses for CUDA tensors: "cuda" when the extension
    imports, else "pytorch". Even with the extension, windows over ``MAX_CUDA_WINDOW`` and float64
    tensors use the PyTorch path; CPU tensors always do."""
    return "cuda" if _ext is not None else "pytorch"


TILE = 8  # query tile side of the PyTorch path (halo overhead (TILE + 2R)^2 / TILE^2 vs wasted logits)
FIXED_TILE = 4  # query block side of the fixed-shape path (window_attention_fixed)
FIXED_CHUNK = 15  # tiles per chunk of the fixed-shape path (their halos: about 3 MB in bf16 at C = 256)
FIXED_MAX_CHUNKS = 32  # at most this many chunks (a graph holds a gather and an attention per chunk)
CHUNK_ELEMS = 1 << 20  # per chunk of tiles: about this many elements of halos + logits (cache-sized)


class _WindowAttentionTorch(torch.autograd.Function):
    """Forward/backward with plain torch ops: queries grouped by tile, batched matmuls per chunk of tiles.

    The frame is cut into TILE x TILE tiles. All keys a query of a tile can see lie in the tile's halo,
    the (TILE + 2R)^2 block around it (R = dilation * (window // 2)) in each reference frame, so a tile's
    selected queries attend to its halo with two small matmuls (logits, aggregation); keys outside the
    query's window or outside the frame get a -inf logit, and the softmax runs jointly over the T halos.
    Tiles without a selected query are skipped; the others are sorted by query count and processed in
    chunks (``_Plan.chunks``), each padded to its largest count (padding rows are dropped), so the
    temporaries stay O(chunk). Saved for backward: q, k, v (the inputs, no copy), query_index and the
    output (B*M, C) in the accumulation dtype; backward recomputes the halos and the softmax per chunk,
    so nothing of size M*T*w*w or larger is stored.
    """

    @staticmethod
    def forward(ctx, q, k, v, query_index, window, dilation):
        B, T, C, H, W = k.shape
        M = query_index.shape[1]
        acc = _acc_dtype(q.dtype)
        ctx.window, ctx.dilation = window, dilation
        if M == 0:
            ctx.save_for_backward(q, k, v, query_index, None)  # no output to keep: the gradients are 0
            return q.new_zeros((B, C, M))
        plan = _Plan(query_index, H, W, window, dilation, T, C)
        qp = plan.scatter(_gather_queries(q, query_index).to(acc))  # rows, C: tile-grouped, padded
        kc, vc = _channels_last(k, acc), _channels_last(v, acc)  # B, T, H, W, C
        op = torch.empty_like(qp)
        scale = 1.0 / math.sqrt(C)
        kbuf, vbuf = plan.workspace(kc), plan.workspace(vc)  # reused by every chunk (no page faults)
        for ch in plan.chunks:
            kh, vh = plan.halo(kc, ch, kbuf), plan.halo(vc, ch, vbuf)  # G, T*S*S, C
            attn = plan.softmax(torch.bmm(ch.view(qp) * scale, kh.transpose(1, 2)), ch)  # G, mc, T*S*S
            torch.bmm(attn, vh, out=ch.view(op))
        out = op.index_select(0, plan.row)  # B*M, C
        ctx.save_for_backward(q, k, v, query_index, out)
        res = q.new_empty((B, C, M))  # a fresh tensor, never a view of the saved out
        res.copy_(out.view(B, M, C).transpose(1, 2))
        return res  # B, C, M

    @staticmethod
    def backward(ctx, grad_out):
        q, k, v, query_index, out = ctx.saved_tensors
        B, T, C, H, W = k.shape
        M = query_index.shape[1]
        if M == 0:
            return torch.zeros_like(q), torch.zeros_like(k), torch.zeros_like(v), None, None, None
        acc = _acc_dtype(q.dtype)
        scale = 1.0 / math.sqrt(C)
        plan = _Plan(query_index, H, W, ctx.window, ctx.dilation, T, C)
        g = grad_out.transpose(1, 2).reshape(B * M, C).to(acc)
        qp = plan.scatter(_gather_queries(q, query_index).to(acc))
        gp = plan.scatter(g)  # padding rows: g = 0, so they add nothing below
        # softmax backward: dlogit_j = a_j * (g.v_j - g.out)
        gdo = plan.scatter((g * out).sum(1, True))
        kc, vc = _channels_last(k, acc), _channels_last(v, acc)  # B, T, H, W, C
        gkc, gvc = torch.zeros_like(kc), torch.zeros_like(vc)
        gq = torch.empty_like(qp)
        kbuf, vbuf, gbuf = plan.workspace(kc), plan.workspace(vc), plan.workspace(vc)
        for ch in plan.chunks:
            kh, vh = plan.halo(kc, ch, kbuf), plan.halo(vc, ch, vbuf)  # G, T*S*S, C
            qc, gc = ch.view(qp), ch.view(gp)
            attn = plan.softmax(torch.bmm(qc * scale, kh.transpose(1, 2)), ch)
            dl = torch.bmm(gc, vh.transpose(1, 2)).sub_(ch.view(gdo)).mul_(attn).mul_(scale)
            torch.bmm(dl, kh, out=ch.view(gq))  # dl: G, mc, T*S*S
            gh = gbuf[:kh.numel()].view(kh.shape)
            plan.fold(gkc, torch.bmm(dl.transpose(1, 2), qc, out=gh), ch)
            plan.fold(gvc, torch.bmm(attn.transpose(1, 2), gc, out=gh), ch)
        del kc, vc
        grad_q = gq.new_zeros((B * H * W, C))
        flat = (query_index + torch.arange(B, device=q.device)[:, None] * (H * W)).view(-1)
        grad_q.index_add_(0, flat, gq.index_select(0, plan.row))
        grad_q = grad_q.view(B, H, W, C).permute(0, 3, 1, 2).to(q.dtype)
        grad_k, grad_v = gkc.permute(0, 1, 4, 2, 3).to(k.dtype), gvc.permute(0, 1, 4, 2, 3).to(v.dtype)
        return grad_q, grad_k, grad_v, None, None, None


class _Chunk:
    """Tiles g0..g1 (in the plan's order), their padded rows r0..r1 = (g1 - g0) * mc."""

    def __init__(self, g0, g1, r0, mc):
        self.g0, self.g1, self.r0, self.mc = g0, g1, r0, mc
        self.r1 = r0 + (g1 - g0) * mc

    def view(self, t):
        """This chunk's rows of a (rows, X) buffer as (g1 - g0, mc, X)."""
        return t[self.r0:self.r1].view(self.g1 - self.g0, self.mc, t.shape[1])


class _Plan:
    """Grouping of the selected queries by tile, and the halo / mask / fold helpers for one call."""

    def __init__(self, query_index, H, W, window, dilation, T, C):
        dev = query_index.device
        B, M = query_index.shape
        self.H, self.W, self.R = H, W, dilation * (window // 2)
        b = self.b = TILE
        S = self.S = b + 2 * self.R
        self.Ly, self.Lx = -(-H // b), -(-W // b)
        L = self.Ly * self.Lx
        y, x = query_index // W, query_index % W
        grp = ((y // b) * self.Lx + x // b + torch.arange(B, device=dev)[:, None] * L).view(-1)  # B*M
        counts = torch.bincount(grp, minlength=B * L)
        order = torch.argsort(grp, stable=True)
        start = counts.cumsum(0) - counts
        slot = torch.empty_like(grp)  # rank of each query inside its tile
        slot[order] = torch.arange(B * M, device=dev) - start[grp[order]]
        # tiles with queries, most queries first; chunks of tiles padded to their first tile's count
        n_used = int((counts > 0).sum())
        used = torch.argsort(counts, descending=True, stable=True)[:n_used]
        cnt = counts[used].tolist()
        self.chunks, base, g, r = [], [], 0, 0
        while g < n_used:
            mc = cnt[g]
            step = max(1, CHUNK_ELEMS // (T * S * S * (2 * C + 3 * mc)))
            ch = _Chunk(g, min(g + step, n_used), r, mc)
            base += range(r, ch.r1, mc)
            self.chunks.append(ch)
            g, r = ch.g1, ch.r1
        self.rows = r
        pos = torch.empty_like(counts)  # a used tile's place in the plan order (other tiles are not read)
        pos[used] = torch.arange(n_used, device=dev)
        self.row = grp.new_tensor(base)[pos[grp]] + slot  # B*M: padded row
        self.tile_batch = (used // L).tolist()
        self.tile_row, self.tile_col = ((used % L) // self.Lx).tolist(), ((used % L) % self.Lx).tolist()
        # in-tile position of each padded row (padding rows: -1 -> see every in-frame halo key)
        ry = grp.new_full((self.rows,), -1)
        rx = torch.full_like(ry, -1)
        ry[self.row], rx[self.row] = (y % b).view(-1), (x % b).view(-1)
        self.query_row, self.query_col = ry[:, None], rx[:, None]
        s = torch.arange(S, device=dev)
        rel = s[None, :] - self.R - torch.arange(b, device=dev)[:, None]  # b, S: key offset from query
        win = (rel.abs() <= self.R) & (rel % dilation == 0)
        self.win = torch.cat([win, win.new_ones(1, S)])  # row -1: all
        ty = grp.new_tensor(self.tile_row)[:, None] * b + s - self.R  # tiles, S: frame row of halo key
        tx = grp.new_tensor(self.tile_col)[:, None] * b + s - self.R
        self.halo_row_in_frame, self.halo_col_in_frame = (ty >= 0) & (ty < H), (tx >= 0) & (tx < W)

    def scatter(self, x):
        """(B*M, X) per query -> (rows, X) in the padded tile order, zero on padding rows."""
        out = x.new_zeros((self.rows, x.shape[1]))
        return out.index_copy_(0, self.row, x)

    def _clip(self, i):
        """Tile i's halo rows / cols: frame slices and the matching slices inside the S x S halo."""
        S, R, b = self.S, self.R, self.b
        y0, x0 = self.tile_row[i] * b - R, self.tile_col[i] * b - R
        fy = slice(max(y0, 0), min(y0 + S, self.H))
        fx = slice(max(x0, 0), min(x0 + S, self.W))
        return fy, fx, slice(fy.start - y0, fy.stop - y0), slice(fx.start - x0, fx.stop - x0)

    def workspace(self, kc):
        """A flat buffer for the halos of the largest chunk."""
        G = max(ch.g1 - ch.g0 for ch in self.chunks)
        return kc.new_empty(G * kc.shape[1] * self.S * self.S * kc.shape[4])

    def halo(self, kc, ch, buf):
        """Halo blocks of the chunk's tiles from channels-last (B, T, H, W, C), written into buf:
        (G, T*S*S, C), zero outside the frame (those keys are masked; zeros keep 0 * value finite)."""
        T, C, S = kc.shape[1], kc.shape[4], self.S
        h = buf[:(ch.g1 - ch.g0) * T * S * S * C].view(ch.g1 - ch.g0, T, S, S, C)
        for j, i in enumerate(range(ch.g0, ch.g1)):
            fy, fx, hy, hx = self._clip(i)
            if fy.stop - fy.start < S or fx.stop - fx.start < S:
                h[j].zero_()
            h[j, :, hy, hx] = kc[self.tile_batch[i], :, fy, fx]
        return h.view(ch.g1 - ch.g0, T * S * S, C)

    def fold(self, gkc, gh, ch):
        """Add halo gradients (G, T*S*S, C) back into the channels-last (B, T, H, W, C) buffer."""
        S = self.S
        gh = gh.view(ch.g1 - ch.g0, gkc.shape[1], S, S, gkc.shape[4])
        for j, i in enumerate(range(ch.g0, ch.g1)):
            fy, fx, hy, hx = self._clip(i)
            gkc[self.tile_batch[i], :, fy, fx] += gh[j, :, hy, hx]

    def softmax(self, logits, ch):
        """Mask keys outside the window or the frame, softmax jointly over T*S*S."""
        G, S = ch.g1 - ch.g0, self.S
        ry, rx = ch.view(self.query_row).view(G, ch.mc), ch.view(self.query_col).view(G, ch.mc)
        my = self.win[ry] & self.halo_row_in_frame[ch.g0:ch.g1, None]  # G, mc, S
        mx = self.win[rx] & self.halo_col_in_frame[ch.g0:ch.g1, None]
        mask = my[..., :, None] & mx[..., None, :]  # G, mc, S, S
        logits = logits.view(G, ch.mc, -1, S, S).masked_fill_(~mask[:, :, None], float("-inf"))
        return logits.view(G, ch.mc, -1).softmax(-1)


def _acc_dtype(dtype):
    """fp32 accumulation for fp32/fp16/bf16; float64 stays float64 (gradcheck)."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def _channels_last(k, dtype):
    """(B, T, C, H, W) -> (B, T, H, W, C) contiguous in dtype: a view when k is stored that way
    already (SD-CPC stacks its references' S that way), else one transposing copy."""
    rows = k.permute(0, 1, 3, 4, 2)
    if rows.is_contiguous() and k.dtype == dtype:
        return rows
    B, T, C, H, W = k.shape
    # a 2-D transpose per frame: several times faster on CPU than copying the 5-D permuted view
    return k.reshape(B * T, C, H * W).transpose(1, 2).contiguous().to(dtype).view(B, T, H, W, C)


def _gather_queries(q, query_index):
    """(B, C, H, W), (B, M) -> (B*M, C) selected query vectors."""
    B, C = q.shape[:2]
    M = query_index.shape[1]
    qs = q.flatten(2).gather(2, query_index[:, None].expand(B, C, M))  # B, C, M
    return qs.transpose(1, 2).reshape(B * M, C)


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
        # The op accumulates in fp32 itself; autocast must not recast its matmuls (bf16/fp16 engines).
        with torch.autocast(q.device.type, enabled=False):
            out = _WindowAttentionTorch.apply(q, k, v, idx, window, dilation)
    return out.view(B, C, H, W) if dense else out


def window_attention_fixed(q, k, v, window=9, dilation=1):
    """Dense window attention whose every shape follows from the input shapes alone.

    Same arguments and result as ``window_attention(q, k, v, window, dilation)`` (dense), for
    ``torch.compile(fullgraph=True)`` and ONNX export: no data-dependent Python, no checks on
    values. The frame is cut into FIXED_TILE x FIXED_TILE blocks; every block of queries attends
    to the A x A blocks around it (its halo, A = 2 ceil(R / FIXED_TILE) + 1) in all T references
    at once: matmul, one softmax over the block's T * A^2 * FIXED_TILE^2 keys (those outside a
    query's window or the frame masked), matmul, which OpenVINO fuses into one attention kernel.
    Halos are gathered as whole blocks, not positions, for FIXED_CHUNK tiles at a time (at most
    FIXED_MAX_CHUNKS chunks), so that each chunk's halos are still in cache when attended to.
    Costs every query's attention (the sparse path costs only the selected ones), so a caller
    that needs a subset multiplies the result by a mask. Accumulates in fp32 (float64 stays
    float64).
    """
    B, C, H, W = q.shape
    T = k.shape[1]
    dtype = torch.promote_types(torch.promote_types(q.dtype, k.dtype), v.dtype)
    acc = _acc_dtype(dtype)
    t = FIXED_TILE
    tiles_y, tiles_x = -(-H // t), -(-W // t)
    Hp, Wp = tiles_y * t, tiles_x * t
    with torch.autocast(q.device.type, enabled=False):
        # queries as rows (B, Hp, Wp, C), then blocks: a transpose of t x C pieces
        qt = F.pad(q.to(acc).permute(0, 2, 3, 1), (0, 0, 0, Wp - W, 0, Hp - H))
        qt = qt.view(B, tiles_y, t, tiles_x, t, C).permute(0, 1, 3, 2, 4, 5)
        qt = qt.reshape(B, tiles_y * tiles_x, t * t, C)  # B, tiles, queries, C
        R = dilation * (window // 2)
        kb, index = _block_layout(k, acc, R, tiles_y, tiles_x)  # B, blocks, t*t*C; tiles, T*A*A
        vb = kb if v is k else _block_layout(v, acc, R, tiles_y, tiles_x)[0]  # one copy when k is v
        bias = _halo_bias(H, W, window, dilation, q.device, acc)  # tiles, queries, A*A*t*t
        bias = bias.unsqueeze(2).expand(-1, -1, T, -1).flatten(2)  # tiles, queries, T*A*A*t*t
        qt = qt * (1.0 / math.sqrt(C))
        n_tiles = tiles_y * tiles_x
        chunk = max(FIXED_CHUNK, -(-n_tiles // FIXED_MAX_CHUNKS))
        outs = []
        for a in range(0, n_tiles, chunk):  # chunks of tiles: their gathered halos stay cache-sized
            b = min(a + chunk, n_tiles)
            kh = kb.index_select(1, index[a:b].flatten()).view(B, b - a, -1, C)  # B, n, T*A*A*t*t, C
            vh = kh if vb is kb else vb.index_select(1, index[a:b].flatten()).view(B, b - a, -1, C)
            logits = torch.matmul(qt[:, a:b], kh.transpose(-1, -2)) + bias[a:b]  # B, n, q, keys
            outs.append(torch.matmul(logits.softmax(-1), vh))  # B, n, queries, C
        out = torch.cat(outs, 1)
        out = out.view(B, tiles_y, tiles_x, t, t, C).permute(0, 1, 3, 2, 4, 5)
        out = out.reshape(B, Hp, Wp, C)[:, :H, :W].permute(0, 3, 1, 2)  # B, C, H, W
    return out.to(dtype)


def _halo_blocks(R):
    """(lead, A): a halo starts ``lead`` positions (ceil(R / FIXED_TILE) whole blocks) before
    its tile and spans A x A blocks: the fewest that hold every window of the tile's queries."""
    lead = -(-R // FIXED_TILE) * FIXED_TILE
    return lead, 2 * lead // FIXED_TILE + 1


def _block_layout(k, dtype, R, tiles_y, tiles_x):
    """(B, T, C, H, W) -> (blocks (B, T*ny*nx, t*t*C) in dtype, index (tiles, T*A*A)), t =
    FIXED_TILE: the zero-padded frames laid out block by block (one copy), and for each tile the
    blocks of its halo in every reference, ordered (reference, block row, block column); a
    halo's keys are its blocks' t*t positions in turn. ``_halo_bias`` masks the padding."""
    B, T, C, H, W = k.shape
    t = FIXED_TILE
    lead, A = _halo_blocks(R)
    ny, nx = tiles_y + A - 1, tiles_x + A - 1  # blocks of the padded frame
    rows = F.pad(_channels_last(k, dtype), (0, 0, lead, nx * t - W - lead, lead, ny * t - H - lead))
    blocks = rows.view(B, T, ny, t, nx, t, C).transpose(3, 4).reshape(B, T * ny * nx, t * t * C)
    a = torch.arange(A, device=k.device)
    by = torch.arange(tiles_y, device=k.device)[:, None, None, None] + a[:, None]  # ty, 1, A, 1
    bx = torch.arange(tiles_x, device=k.device)[None, :, None, None] + a  # 1, tx, 1, A
    halo = (by * nx + bx).flatten(0, 1).flatten(1)  # tiles, A*A blocks of one frame
    first = torch.arange(T, device=k.device) * (ny * nx)
    return blocks, (first[None, :, None] + halo[:, None, :]).flatten(1)  # tiles, T*A*A


def _halo_bias(H, W, window, dilation, device, dtype):
    """(tiles, t*t, A*A*t*t), t = FIXED_TILE: 0 where a tile's query may see a halo key (in
    ``_block_layout`` order), -inf elsewhere.

    A key is seen when it is in the frame and in the query's window. Padding queries (outside
    the frame) see every in-frame key of the halo: finite numbers, dropped afterwards.
    """
    t = FIXED_TILE
    R = dilation * (window // 2)
    lead, A = _halo_blocks(R)
    tiles_y, tiles_x = -(-H // t), -(-W // t)
    p = torch.arange(t, device=device)
    s = torch.arange(A * t, device=device)
    rel = s[None, :] - lead - p[:, None]  # t, A*t: key offset from the query
    in_window = (rel.abs() <= R) & (rel % dilation == 0)

    def axis(n_tiles, size):  # n_tiles, t, A*t: may query p of tile i see halo position s
        start = torch.arange(n_tiles, device=device)[:, None, None] * t
        key_in = (start + s - lead >= 0) & (start + s - lead < size)  # n_tiles, 1, A*t
        query_in = start + p[:, None] < size  # n_tiles, t, 1
        return key_in & (in_window | ~query_in)

    ok_y, ok_x = axis(tiles_y, H), axis(tiles_x, W)
    ok = ok_y[:, None, :, None, :, None] & ok_x[None, :, None, :, None, :]  # ty, tx, py, px, sy, sx
    ok = ok.view(tiles_y, tiles_x, t, t, A, t, A, t).transpose(5, 6)  # …, block row, col, row, col
    ok = ok.reshape(tiles_y * tiles_x, t * t, A * A * t * t)
    return torch.where(ok, torch.zeros((), dtype=dtype, device=device),
                       torch.full((), float("-inf"), dtype=dtype, device=device))


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
