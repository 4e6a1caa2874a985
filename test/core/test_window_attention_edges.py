"""window_attention edge cases: argument checks (each error names what is wrong), the tiling / chunking
plan against a plain loop over queries, dtype handling, empty and single selections, and the CUDA
autograd glue (with a stand-in extension, so it runs on CPU)."""

import importlib
import math

import pytest
import torch

from sdcpc_core.ops import window_attention

wa = importlib.import_module("sdcpc_core.ops.window_attention")  # the module (the package exports the function)


def rand(B, T, C, H, W, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(B, C, H, W, generator=g, dtype=torch.float64).to(dtype)
    k = torch.randn(B, T, C, H, W, generator=g, dtype=torch.float64).to(dtype)
    v = torch.randn(B, T, C, H, W, generator=g, dtype=torch.float64).to(dtype)
    return q, k, v


def close(got, want):
    """A float32 result against the float64 reference."""
    torch.testing.assert_close(got.double(), want, atol=1e-5, rtol=1e-5)


def loop_reference(q, k, v, window, dilation, query_index=None):
    """One query at a time: gather its in-frame window keys of all T frames, one softmax (float64)."""
    B, T, C, H, W = k.shape
    q, k, v = q.double(), k.double(), v.double()
    if query_index is None:
        query_index = torch.arange(H * W).expand(B, H * W)
    r = window // 2
    out = torch.zeros(B, C, query_index.shape[1], dtype=torch.float64)
    for b in range(B):
        for m, p in enumerate(query_index[b].tolist()):
            y, x = divmod(p, W)
            keys = [(yy, xx) for yy in range(y - r * dilation, y + r * dilation + 1, dilation)
                    for xx in range(x - r * dilation, x + r * dilation + 1, dilation)
                    if 0 <= yy < H and 0 <= xx < W]
            ks = torch.stack([k[b, t, :, yy, xx] for t in range(T) for yy, xx in keys])  # T*n, C
            vs = torch.stack([v[b, t, :, yy, xx] for t in range(T) for yy, xx in keys])
            a = (ks @ q[b, :, y, x] / math.sqrt(C)).softmax(0)
            out[b, :, m] = a @ vs
    return out


# ---------------------------------------------------------------------------------------------
# argument checks


def message(err, fn):
    with pytest.raises(err) as info:
        fn()
    return str(info.value)


@pytest.mark.parametrize("window", [0, -1, 2, 4, 3.0, "3", None])
def test_window_must_be_a_positive_odd_int(window):
    q, k, v = rand(1, 1, 2, 4, 4)
    assert message(ValueError, lambda: window_attention(q, k, v, window=window)) == \
        f"window must be a positive odd int, got {window!r}"


@pytest.mark.parametrize("dilation", [0, -2, 1.0, "1", None])
def test_dilation_must_be_a_positive_int(dilation):
    q, k, v = rand(1, 1, 2, 4, 4)
    assert message(ValueError, lambda: window_attention(q, k, v, window=3, dilation=dilation)) == \
        f"dilation must be a positive int, got {dilation!r}"


def test_smallest_valid_window_and_dilation():
    q, k, v = rand(1, 2, 3, 4, 5)
    out = window_attention(q, k, v, window=1, dilation=1)
    close(out.flatten(2), loop_reference(q, k, v, 1, 1))
    out = window_attention(q, k, v, window=3, dilation=2)
    close(out.flatten(2), loop_reference(q, k, v, 3, 2))


def test_shape_errors_name_the_shapes():
    q, k, v = rand(2, 3, 4, 5, 6)
    assert message(ValueError, lambda: window_attention(q[0], k, v)) == \
        "q must be (B, C, H, W), got shape (4, 5, 6)"
    assert message(ValueError, lambda: window_attention(q[None], k, v)) == \
        "q must be (B, C, H, W), got shape (1, 2, 4, 5, 6)"
    assert message(ValueError, lambda: window_attention(q, k[:, 0], v[:, 0])) == \
        "k must be (B, T, C, H, W), got shape (2, 4, 5, 6)"
    assert message(ValueError, lambda: window_attention(q, k[None], v[None])) == \
        "k must be (B, T, C, H, W), got shape (1, 2, 3, 4, 5, 6)"
    assert message(ValueError, lambda: window_attention(q, k, v[:, :2])) == \
        "v shape (2, 2, 4, 5, 6) != k shape (2, 3, 4, 5, 6)"


@pytest.mark.parametrize("axis", [0, 2, 3, 4])
def test_k_must_match_q_on_every_axis_but_t(axis):
    q, k, v = rand(2, 3, 4, 5, 6)
    k, v = k.narrow(axis, 0, 1), v.narrow(axis, 0, 1)
    assert message(ValueError, lambda: window_attention(q, k, v)) == \
        f"k/v (B, T, C, H, W) = {tuple(k.shape)} do not match q (B, C, H, W) = (2, 4, 5, 6)"


def test_k_may_have_any_number_of_frames_but_not_zero():
    q, k, v = rand(2, 3, 4, 5, 6)
    assert message(ValueError, lambda: window_attention(q, k[:, :0], v[:, :0])) == \
        "k/v need at least one reference frame (T >= 1)"
    out = window_attention(q, k[:, :1], v[:, :1], window=3)
    close(out.flatten(2), loop_reference(q, k[:, :1], v[:, :1], 3, 1))


@pytest.mark.parametrize("which", [0, 1, 2])
def test_integer_inputs_are_refused(which):
    qkv = list(rand(1, 1, 2, 3, 3))
    qkv[which] = qkv[which].long()
    dtypes = ", ".join(str(t.dtype) for t in qkv)
    assert message(TypeError, lambda: window_attention(*qkv, window=3)) == \
        f"q, k, v must be floating point, got {dtypes}"


@pytest.mark.parametrize("which", [0, 1, 2])
def test_inputs_on_different_devices_are_refused(which):
    qkv = list(rand(1, 1, 2, 3, 3))
    qkv[which] = qkv[which].to("meta")
    devices = ", ".join(str(t.device) for t in qkv)
    assert message(ValueError, lambda: window_attention(*qkv, window=3)) == \
        f"q, k, v must be on one device, got {devices}"


def test_query_index_errors_name_the_problem():
    q, k, v = rand(2, 1, 2, 3, 4)
    run = lambda idx: lambda: window_attention(q, k, v, window=3, query_index=idx)  # noqa: E731
    assert message(ValueError, run(torch.zeros(2, dtype=torch.long))) == \
        "query_index must be (B=2, M), got shape (2,)"
    assert message(ValueError, run(torch.zeros(2, 1, 1, dtype=torch.long))) == \
        "query_index must be (B=2, M), got shape (2, 1, 1)"
    assert message(ValueError, run(torch.zeros(3, 1, dtype=torch.long))) == \
        "query_index must be (B=2, M), got shape (3, 1)"
    assert message(TypeError, run(torch.zeros(2, 1))) == \
        "query_index must be an integer tensor, got torch.float32"
    assert message(TypeError, run(torch.zeros(2, 1, dtype=torch.bool))) == \
        "query_index must be an integer tensor, got torch.bool"
    assert message(ValueError, run(torch.zeros(2, 1, dtype=torch.long, device="meta"))) == \
        "query_index is on meta, q on cpu"
    assert message(IndexError, run(torch.tensor([[0, 12], [3, 4]]))) == \
        "query_index out of range: values must be in [0, H*W=12), got [0, 12]"
    assert message(IndexError, run(torch.tensor([[5, 6], [-1, 11]]))) == \
        "query_index out of range: values must be in [0, H*W=12), got [-1, 11]"


def test_query_index_at_both_ends_of_the_range_is_accepted():
    q, k, v = rand(2, 2, 3, 3, 4)
    idx = torch.tensor([[0, 11], [11, 0]])
    out = window_attention(q, k, v, window=3, query_index=idx)
    close(out, loop_reference(q, k, v, 3, 1, idx))


@pytest.mark.parametrize("dtype", [torch.int32, torch.int16, torch.uint8])
def test_any_integer_query_index_dtype(dtype):
    q, k, v = rand(2, 2, 3, 4, 5)
    idx = torch.tensor([[0, 19, 7], [12, 12, 3]])
    out = window_attention(q, k, v, window=3, query_index=idx.to(dtype))
    torch.testing.assert_close(out, window_attention(q, k, v, window=3, query_index=idx), rtol=0, atol=0)


# ---------------------------------------------------------------------------------------------
# selections, dtypes, autocast


def test_one_selected_query_and_its_gradients():
    q, k, v = (t.requires_grad_() for t in rand(1, 2, 3, 5, 6, dtype=torch.float64, seed=1))
    idx = torch.tensor([[13]])
    out = window_attention(q, k, v, window=3, query_index=idx)
    want = loop_reference(q, k, v, 3, 1, idx)
    torch.testing.assert_close(out, want)
    got = torch.autograd.grad(out.sum(), (q, k, v))
    ref = torch.autograd.grad(want.sum(), (q, k, v))
    for a, b in zip(got, ref):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
def test_empty_selection_has_zero_gradients_of_the_input_dtypes(dtype):
    q, k, v = (t.requires_grad_() for t in rand(2, 3, 4, 3, 5, dtype=dtype))
    out = window_attention(q, k, v, window=3, query_index=torch.zeros(2, 0, dtype=torch.long))
    assert out.shape == (2, 4, 0) and out.dtype == dtype
    grads = torch.autograd.grad(out.sum(), (q, k, v), allow_unused=False)
    for g, t in zip(grads, (q, k, v)):
        assert g.shape == t.shape and g.dtype == dtype and not g.any()


@pytest.mark.parametrize("dtypes,want", [
    ((torch.float16, torch.float32, torch.float32), torch.float32),
    ((torch.float32, torch.float16, torch.float32), torch.float32),
    ((torch.float32, torch.float32, torch.float16), torch.float32),
    ((torch.float32, torch.float32, torch.float64), torch.float64),
    ((torch.float32, torch.float64, torch.float32), torch.float64),
    ((torch.float64, torch.float32, torch.float32), torch.float64),
    ((torch.bfloat16, torch.bfloat16, torch.float16), torch.float32),
])
def test_inputs_are_promoted_to_one_dtype(dtypes, want):
    q, k, v = (t.to(d) for t, d in zip(rand(1, 2, 3, 4, 5, seed=2), dtypes))
    out = window_attention(q, k, v, window=3)
    assert out.dtype == want
    same = window_attention(q.to(want), k.to(want), v.to(want), window=3)
    torch.testing.assert_close(out, same, rtol=0, atol=0)
    fixed = wa.window_attention_fixed(q, k, v, 3, 1)
    assert fixed.dtype == want


def test_float64_accumulates_in_float64():
    q, k, v = rand(1, 2, 4, 5, 6, dtype=torch.float64, seed=3)
    want = loop_reference(q, k, v, 5, 1)
    out = window_attention(q, k, v, window=5).flatten(2)
    assert out.dtype == torch.float64
    torch.testing.assert_close(out, want, rtol=1e-12, atol=1e-12)
    idx = torch.tensor([[0, 7, 29]])
    torch.testing.assert_close(window_attention(q, k, v, 5, 1, idx), want[:, :, idx[0]], rtol=1e-12, atol=1e-12)
    fixed = wa.window_attention_fixed(q, k, v, 5, 1).flatten(2)
    torch.testing.assert_close(fixed, want, rtol=1e-12, atol=1e-12)


def test_half_inputs_accumulate_in_float32():
    # fp16 inputs whose logits overflow fp16 (|q.k| ~ 1e5): fp32 accumulation keeps them finite,
    # in forward and backward
    q, k, v = rand(1, 1, 4, 3, 3, seed=4)
    q, k, v = (q * 200).half().requires_grad_(), (k * 200).half().requires_grad_(), v.half().requires_grad_()
    out = window_attention(q, k, v, window=3)
    want = loop_reference(q, k, v, 3, 1).view(out.shape)
    assert out.dtype == torch.float16 and torch.isfinite(out).all()
    torch.testing.assert_close(out.double(), want, atol=2e-3, rtol=2e-3)
    g = torch.randn(out.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    got = torch.autograd.grad((out * g).sum(), (q, k, v))
    ref = torch.autograd.grad((want * g).sum(), (q, k, v))
    for a, b in zip(got, ref):
        assert a.dtype == torch.float16 and torch.isfinite(a).all()
        torch.testing.assert_close(a.double(), b.double(), atol=2e-2, rtol=2e-2)
    q, k, v = q.detach(), k.detach(), v.detach()
    fixed = wa.window_attention_fixed(q, k, v, 3, 1)
    assert fixed.dtype == torch.float16
    torch.testing.assert_close(fixed.double(), want, atol=2e-3, rtol=2e-3)


def test_autocast_does_not_change_the_result():
    # under CPU bf16 autocast the op still computes in fp32: bitwise the same as without autocast
    q, k, v = rand(1, 2, 8, 6, 7, seed=5)
    idx = torch.tensor([[0, 5, 20, 41]])
    for fn in (lambda: window_attention(q, k, v, 3, 1, idx), lambda: window_attention(q, k, v, 3, 1),
               lambda: wa.window_attention_fixed(q, k, v, 3, 1)):
        want = fn()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            got = fn()
        assert got.dtype == torch.float32
        torch.testing.assert_close(got, want, rtol=0, atol=0)


# ---------------------------------------------------------------------------------------------
# CUDA extension glue, on CPU: a stand-in extension and tensors that say they are on CUDA


class FakeExt:
    """Records the calls; forward returns the PyTorch path's output and a marked lse, backward
    returns marked gradients."""

    def __init__(self):
        self.calls = []

    def forward(self, q, k, v, query_index, window, dilation):
        self.calls.append(("forward", q, k, v, query_index, window, dilation))
        B, C, H, W = q.shape
        idx = torch.arange(H * W).expand(B, H * W) if query_index is None else query_index
        with torch._C.DisableTorchFunctionSubclass():
            out = wa._WindowAttentionTorch.apply(q, k, v, idx, window, dilation)
        self.lse = torch.full((B, idx.shape[1]), 7.0)
        return out, self.lse

    def backward(self, grad_out, q, k, v, query_index, out, lse, window, dilation):
        self.calls.append(("backward", grad_out, q, k, v, query_index, out, lse, window, dilation))
        self.grads = torch.full_like(q, 1.0), torch.full_like(k, 2.0), torch.full_like(v, 3.0)
        return self.grads


class OnCuda(torch.Tensor):
    """A CPU tensor whose ``is_cuda`` says True (the routing reads only that)."""

    @property
    def is_cuda(self):
        return True


def test_cuda_function_passes_its_arguments_and_returns_the_extension_gradients(monkeypatch):
    ext = FakeExt()
    monkeypatch.setattr(wa, "_ext", ext)
    q, k, v = (t.requires_grad_() for t in rand(2, 2, 3, 4, 5))
    idx = torch.tensor([[0, 3, 19], [4, 4, 7]])
    out = wa._WindowAttentionCUDA.apply(q, k, v, idx, 5, 2)
    assert [c[0] for c in ext.calls] == ["forward"]
    _, *args = ext.calls[0]
    assert all(a is b for a, b in zip(args, (q, k, v, idx))) and args[4:] == [5, 2]
    torch.testing.assert_close(out, window_attention(q, k, v, 5, 2, idx), rtol=0, atol=0)
    g = torch.randn(2, 3, 3).transpose(1, 2).contiguous().transpose(1, 2)  # B, C, M, not contiguous
    assert not g.is_contiguous()
    grads = torch.autograd.grad(out, (q, k, v), g)
    assert [c[0] for c in ext.calls] == ["forward", "backward"]
    _, grad_out, *args = ext.calls[1]
    assert grad_out.is_contiguous() and torch.equal(grad_out, g)
    assert all(torch.equal(a, b) for a, b in zip(args, (q, k, v, idx, out, ext.lse)))
    assert args[6:] == [5, 2]
    for got, want in zip(grads, ext.grads):
        assert torch.equal(got, want)


@pytest.mark.parametrize("window,dtype,cuda", [
    (3, torch.float32, True), (15, torch.float16, True), (1, torch.bfloat16, True),
    (17, torch.float32, False), (3, torch.float64, False)])
def test_cuda_tensors_use_the_extension_for_small_windows_and_its_dtypes(monkeypatch, window, dtype, cuda):
    ext = FakeExt()
    monkeypatch.setattr(wa, "_ext", ext)
    q, k, v = (t.as_subclass(OnCuda) for t in rand(1, 2, 3, 4, 5, dtype=dtype))
    plain = [t.as_subclass(torch.Tensor) for t in (q, k, v)]
    want, want_sparse = window_attention(*plain, window), window_attention(*plain, window, 1, torch.tensor([[19, 7]]))
    idx = torch.tensor([[19, 0, 7]], dtype=torch.int32)[:, ::2]  # not contiguous, not int64
    for query_index in (None, idx):
        ext.calls.clear()
        out = window_attention(q, k, v, window, 1, query_index).as_subclass(torch.Tensor)
        assert len(ext.calls) == int(cuda)
        if query_index is None:
            assert out.shape == (1, 3, 4, 5)
            torch.testing.assert_close(out, want, rtol=0, atol=0)
        else:
            torch.testing.assert_close(out, want_sparse, rtol=0, atol=0)
        if cuda:
            got = ext.calls[0][4]
            if query_index is None:
                assert got is None
            else:
                assert got.dtype == torch.long and got.is_contiguous() and got.tolist() == [[19, 7]]
            assert ext.calls[0][5:] == (window, 1)


def test_cpu_tensors_never_use_the_extension(monkeypatch):
    ext = FakeExt()
    monkeypatch.setattr(wa, "_ext", ext)
    q, k, v = rand(1, 1, 2, 3, 3)
    window_attention(q, k, v, 3)
    assert ext.calls == [] and wa.backend() == "cuda"


def test_cuda_tensors_without_the_extension_use_the_pytorch_path(monkeypatch):
    monkeypatch.setattr(wa, "_ext", None)
    q, k, v = (t.as_subclass(OnCuda) for t in rand(1, 2, 3, 4, 5))
    out = window_attention(q, k, v, 3).as_subclass(torch.Tensor)
    close(out.flatten(2), loop_reference(q, k, v, 3, 1))
    assert wa.backend() == "pytorch"


# ---------------------------------------------------------------------------------------------
# the PyTorch path's plan: tiles, chunks, rows, halos


def sparse_index(B, M, N, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, N, (B, M), generator=g)  # duplicates included


@pytest.mark.parametrize("T,C,window,dilation,budget", [
    (1, 4, 3, 1, 1),  # one tile per chunk
    (2, 3, 5, 1, 1 << 14),
    (3, 8, 3, 2, 1 << 16),
    (2, 5, 1, 1, 1 << 13),
    (1, 2, 7, 1, 1 << 30),  # all tiles in one chunk
])
def test_plan_chunks_take_the_most_tiles_that_fit_the_element_budget(monkeypatch, T, C, window, dilation, budget):
    monkeypatch.setattr(wa, "CHUNK_ELEMS", budget)
    B, H, W, b = 2, 19, 30, wa.TILE
    idx = torch.cat([sparse_index(B, 60, H * W, seed=T), torch.tensor([[0] * 5, [H * W - 1] * 5])], 1)
    plan = wa._Plan(idx, H, W, window, dilation, T, C)
    R = dilation * (window // 2)
    S = b + 2 * R
    assert (plan.R, plan.S) == (R, S)
    tile_of = [(bi, p // W // b, p % W // b) for bi in range(B) for p in idx[bi].tolist()]  # per query
    counts = {t: tile_of.count(t) for t in set(tile_of)}
    tiles = list(zip(plan.tile_batch, plan.tile_row, plan.tile_col))
    assert sorted(tiles) == sorted(counts)  # every tile with a query, once, and no other tile
    # most queries first; ties in (batch, row, col) order
    assert tiles == sorted(tiles, key=lambda t: (-counts[t], t))
    cnt = [counts[t] for t in tiles]
    g = r = 0
    for ch in plan.chunks:
        assert (ch.g0, ch.r0, ch.mc) == (g, r, cnt[g])  # padded to its first (largest) tile's count
        n = ch.g1 - ch.g0
        cost = T * S * S * (2 * C + 3 * ch.mc)  # halos of k and v, logits and softmax, per tile
        assert n >= 1 and (n == 1 or n * cost <= budget)
        assert ch.g1 == len(tiles) or (n + 1) * cost > budget
        assert ch.r1 == r + n * ch.mc
        g, r = ch.g1, ch.r1
    assert g == len(tiles) and plan.rows == r
    # each query has its own row in its tile's block, in query order; the other rows are padding
    rows = plan.row.tolist()
    assert len(set(rows)) == len(rows) == B * idx.shape[1]
    start = {}
    for ch in plan.chunks:
        for i in range(ch.g0, ch.g1):
            start[tiles[i]] = ch.r0 + (i - ch.g0) * ch.mc
    for t in counts:
        mine = [row for row, tq in zip(rows, tile_of) if tq == t]
        assert mine == list(range(start[t], start[t] + counts[t]))
    ry, rx = torch.full((plan.rows,), -1), torch.full((plan.rows,), -1)
    ry[plan.row], rx[plan.row] = (idx // W % b).view(-1), (idx % W % b).view(-1)
    assert torch.equal(plan.query_row, ry[:, None]) and torch.equal(plan.query_col, rx[:, None])
    kc = torch.zeros(B, T, H, W, C)
    assert plan.workspace(kc).numel() == max(ch.g1 - ch.g0 for ch in plan.chunks) * T * S * S * C


@pytest.mark.parametrize("window,dilation", [(3, 1), (5, 2), (1, 1)])
def test_halos_are_the_zero_padded_frame_whatever_the_buffer_held_and_fold_is_their_adjoint(
        monkeypatch, window, dilation):
    monkeypatch.setattr(wa, "CHUNK_ELEMS", 1 << 12)  # several chunks
    B, T, C, H, W, b = 2, 2, 3, 11, 20, wa.TILE
    k = torch.randn(B, T, C, H, W, dtype=torch.float64)
    idx = torch.arange(H * W).expand(B, H * W)
    plan = wa._Plan(idx, H, W, window, dilation, T, C)
    assert len(plan.chunks) > 1
    R, S = plan.R, plan.S
    kc = wa._channels_last(k, torch.float64)
    pad = lambda t: torch.nn.functional.pad(  # noqa: E731
        t, (R, plan.Lx * b - W + R, R, plan.Ly * b - H + R))
    kpad = pad(k)
    buf = plan.workspace(kc)
    gkc = torch.zeros_like(kc)
    gpad = torch.zeros_like(kpad)
    for ch in plan.chunks:
        buf.fill_(float("nan"))
        h = plan.halo(kc, ch, buf)
        assert h.shape == (ch.g1 - ch.g0, T * S * S, C)
        gh = torch.randn_like(h)
        plan.fold(gkc, gh, ch)
        for j, i in enumerate(range(ch.g0, ch.g1)):
            y0, x0, bi = plan.tile_row[i] * b, plan.tile_col[i] * b, plan.tile_batch[i]
            want = kpad[bi, :, :, y0:y0 + S, x0:x0 + S].permute(0, 2, 3, 1).reshape(T * S * S, C)
            assert torch.equal(h[j], want)
            gpad[bi, :, :, y0:y0 + S, x0:x0 + S] += gh[j].view(T, S, S, C).permute(0, 3, 1, 2)
    torch.testing.assert_close(gkc, gpad[..., R:R + H, R:R + W].permute(0, 1, 3, 4, 2))


# ---------------------------------------------------------------------------------------------
# the fixed-shape path


@pytest.mark.parametrize("H,W,window,dilation", [(9, 13, 1, 1), (5, 11, 3, 2), (17, 8, 5, 1)])
def test_fixed_path_gradients_equal_the_selected_queries_path(H, W, window, dilation):
    # frames that are not a multiple of the tile: padding queries must stay finite in backward too
    q, k, v = (t.requires_grad_() for t in rand(2, 2, 3, H, W, dtype=torch.float64, seed=H))
    g = torch.randn(2, 3, H, W, dtype=torch.float64)
    out = wa.window_attention_fixed(q, k, v, window, dilation)
    want = window_attention(q, k, v, window, dilation)
    torch.testing.assert_close(out, want)
    for a, b in zip(torch.autograd.grad((out * g).sum(), (q, k, v)), torch.autograd.grad((want * g).sum(), (q, k, v))):
        torch.testing.assert_close(a, b)


def test_fixed_path_is_stable_for_large_logits():
    # logits of a few thousand: exp overflows unless the maximum is subtracted (jointly over T and keys)
    q, k, v = rand(1, 3, 4, 6, 9, seed=6)
    q, k = q * 40, k * 40
    want = window_attention(q, k, v, 5, 1)
    got = wa.window_attention_fixed(q, k, v, 5, 1)
    assert torch.isfinite(got).all()
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_default_window_is_9_and_dilation_1():
    q, k, v = rand(1, 2, 3, 10, 11, seed=7)
    want = loop_reference(q, k, v, 9, 1).view(q.shape)
    close(window_attention(q, k, v), want)
    close(wa.window_attention_fixed(q, k, v), want)
    assert not torch.allclose(want, loop_reference(q, k, v, 7, 1).view(q.shape))
    assert not torch.allclose(want, loop_reference(q, k, v, 9, 2).view(q.shape))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_channels_last_rows_are_contiguous_in_the_accumulation_dtype(dtype):
    k = torch.randn(2, 3, 4, 5, 6).to(dtype)
    stored_as_rows = k.permute(0, 1, 3, 4, 2).contiguous().permute(0, 1, 4, 2, 3)
    for t in (k, stored_as_rows, k.transpose(3, 4).contiguous().transpose(3, 4)):
        rows = wa._channels_last(t, torch.float32)
        assert rows.dtype == torch.float32 and rows.is_contiguous() and rows.shape == (2, 3, 5, 6, 4)
        assert torch.equal(rows, k.float().permute(0, 1, 3, 4, 2))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_pytorch_and_fixed_paths_on_cuda_equal_cpu():
    """The index and mask tensors both paths build follow the inputs' device (the ``device=``
    arguments, which a CPU run cannot tell apart). float64 takes the PyTorch path also when the
    CUDA extension is built."""
    q, k, v = (t.requires_grad_() for t in rand(2, 2, 3, 11, 13, dtype=torch.float64, seed=8))
    qc, kc, vc = (t.detach().cuda().requires_grad_() for t in (q, k, v))
    idx = torch.tensor([[0, 142, 77, 77], [5, 6, 130, 64]])
    for fn in (lambda a, b, c, i: window_attention(a, b, c, 5, 2, i),
               lambda a, b, c, i: window_attention(a, b, c, 3, 1),
               lambda a, b, c, i: wa.window_attention_fixed(a, b, c, 5, 1)):
        want, got = fn(q, k, v, idx), fn(qc, kc, vc, idx.cuda())
        assert got.is_cuda
        torch.testing.assert_close(got.cpu(), want)
        for a, b in zip(torch.autograd.grad(got.sum(), (qc, kc, vc)), torch.autograd.grad(want.sum(), (q, k, v))):
            torch.testing.assert_close(a.cpu(), b)


def saved_for_backward(fn, *args):
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        fn(*args)
    return saved


def test_accumulation_dtype_is_float32_except_for_float64():
    for dtype in (torch.float32, torch.float16, torch.bfloat16):
        assert wa._acc_dtype(dtype) == torch.float32
    assert wa._acc_dtype(torch.float64) == torch.float64
    # the output kept for backward is in the accumulation dtype
    for dtype, acc in ((torch.bfloat16, torch.float32), (torch.float32, torch.float32), (torch.float64, torch.float64)):
        q, k, v = (t.requires_grad_() for t in rand(1, 2, 3, 4, 5, dtype=dtype))
        saved = saved_for_backward(window_attention, q, k, v, 3, 1, torch.tensor([[0, 7, 19]]))
        assert [t.dtype for t in saved if t.shape == (3, 3)] == [acc]


@pytest.mark.parametrize("dtypes", [(torch.bfloat16, torch.float32, torch.float32),
                                    (torch.float32, torch.bfloat16, torch.float32),
                                    (torch.float32, torch.float32, torch.float16)])
def test_cuda_extension_gets_inputs_of_one_dtype(monkeypatch, dtypes):
    ext = FakeExt()
    monkeypatch.setattr(wa, "_ext", ext)
    q, k, v = (t.to(d).as_subclass(OnCuda) for t, d in zip(rand(1, 2, 3, 4, 5), dtypes))
    window_attention(q, k, v, 3)
    assert [t.dtype for t in ext.calls[0][1:4]] == [torch.float32] * 3
