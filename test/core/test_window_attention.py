"""PyTorch path of window_attention against a naive dense-with-mask reference."""

import importlib
import math

import pytest
import torch

from sdcpc_core.ops import backend, window_attention
from sdcpc_core.ops.window_attention import _WindowAttentionTorch


def reference(q, k, v, window, dilation, query_index=None):
    """Dense (N x T*N) attention with a mask of the window, in float64."""
    B, T, C, H, W = k.shape
    N = H * W
    q, k, v = q.double(), k.double(), v.double()
    ys, xs = torch.meshgrid(torch.arange(H), torch.arange(W), indexing="ij")
    ys, xs = ys.flatten(), xs.flatten()
    dy, dx = ys[None, :] - ys[:, None], xs[None, :] - xs[:, None]  # N (queries), N (keys)
    r = window // 2
    ok = (dy % dilation == 0) & (dx % dilation == 0) & (dy.abs() <= r * dilation) & (dx.abs() <= r * dilation)
    logits = torch.einsum("bcn,btcm->bntm", q.flatten(2), k.flatten(3)) / math.sqrt(C)  # B, N, T, N
    logits = logits.masked_fill(~ok[None, :, None, :], float("-inf"))
    attn = logits.reshape(B, N, T * N).softmax(-1).view(B, N, T, N)
    out = torch.einsum("bntm,btcm->bcn", attn, v.flatten(3))  # B, C, N
    if query_index is None:
        return out.view(B, C, H, W)
    return out.gather(2, query_index[:, None].expand(B, C, query_index.shape[1]))


def rand(B, T, C, H, W, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(B, C, H, W, generator=g).to(dtype)
    k = torch.randn(B, T, C, H, W, generator=g).to(dtype)
    v = torch.randn(B, T, C, H, W, generator=g).to(dtype)
    return q, k, v


def sparse_index(B, M, N, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.stack([torch.randperm(N, generator=g)[:M] for _ in range(B)])


@pytest.mark.parametrize("T,C,H,W,window,dilation", [
    (1, 4, 5, 6, 3, 1),
    (2, 8, 7, 5, 5, 1),
    (3, 5, 6, 7, 3, 2),
    (2, 16, 9, 9, 9, 1),   # window as big as the frame: every query sees border exclusion
    (1, 3, 4, 4, 7, 3),    # window far bigger than the frame
    (3, 6, 1, 8, 5, 1),    # one row
])
def test_dense_matches_reference(T, C, H, W, window, dilation):
    q, k, v = rand(2, T, C, H, W)
    out = window_attention(q, k, v, window=window, dilation=dilation)
    assert out.shape == q.shape and out.dtype == q.dtype
    torch.testing.assert_close(out.double(), reference(q, k, v, window, dilation), atol=1e-5, rtol=1e-5)


def test_borders_are_excluded_not_zero_padded():
    # All keys equal, so every valid key has the same logit: the output at a pixel is the mean of the
    # values in the in-frame part of its window. Zero-padding would add logit-0 keys with value 0.
    B, T, C, H, W = 1, 1, 2, 4, 4
    q = torch.ones(B, C, H, W)
    k = torch.ones(B, T, C, H, W)
    v = torch.arange(H * W, dtype=torch.float32).view(1, 1, 1, H, W).expand(B, T, C, H, W).contiguous()
    out = window_attention(q, k, v, window=3)
    # corner (0, 0): keys (0,0), (0,1), (1,0), (1,1) -> values 0, 1, 4, 5
    assert out[0, 0, 0, 0].item() == pytest.approx(2.5)
    # interior (1, 1): 3x3 block around value 5 -> mean 5
    assert out[0, 0, 1, 1].item() == pytest.approx(5.0)


def test_softmax_is_joint_over_frames():
    # Frame 1 has a huge logit at the centre: its value wins over every key of frame 0.
    B, T, C, H, W = 1, 2, 1, 3, 3
    q = torch.ones(B, C, H, W)
    k = torch.zeros(B, T, C, H, W)
    k[0, 1, 0, 1, 1] = 50.0
    v = torch.zeros(B, T, C, H, W)
    v[0, 1, 0, 1, 1] = 7.0
    out = window_attention(q, k, v, window=3)
    assert out[0, 0, 1, 1].item() == pytest.approx(7.0, abs=1e-4)


@pytest.mark.parametrize("window,dilation,T", [(3, 1, 1), (5, 2, 3), (7, 1, 2)])
def test_sparse_matches_reference(window, dilation, T):
    B, C, H, W, M = 2, 6, 7, 9, 17
    q, k, v = rand(B, T, C, H, W, seed=1)
    idx = sparse_index(B, M, H * W)
    out = window_attention(q, k, v, window=window, dilation=dilation, query_index=idx)
    assert out.shape == (B, C, M)
    torch.testing.assert_close(out.double(), reference(q, k, v, window, dilation, idx), atol=1e-5, rtol=1e-5)


def test_sparse_equals_dense_at_selected_positions():
    B, T, C, H, W = 2, 2, 4, 6, 6
    q, k, v = rand(B, T, C, H, W, seed=2)
    idx = torch.tensor([[0, 5, 35, 14], [35, 35, 1, 20]])  # corners, duplicates
    dense = window_attention(q, k, v, window=5).flatten(2)
    sparse = window_attention(q, k, v, window=5, query_index=idx)
    torch.testing.assert_close(sparse, dense.gather(2, idx[:, None].expand(B, C, 4)))


@pytest.mark.parametrize("dtype,tol", [(torch.float16, 2e-3), (torch.bfloat16, 2e-2)])
def test_half_precision_inputs(dtype, tol):
    q, k, v = rand(2, 3, 8, 6, 7, dtype=dtype, seed=3)
    out = window_attention(q, k, v, window=5)
    assert out.dtype == dtype
    # the reference sees the same rounded inputs; only accumulation and output rounding differ
    torch.testing.assert_close(out.double(), reference(q, k, v, 5, 1), atol=tol, rtol=tol)


def test_half_precision_grads_have_input_dtype():
    q, k, v = (t.requires_grad_() for t in rand(1, 2, 4, 5, 5, dtype=torch.bfloat16, seed=4))
    window_attention(q, k, v, window=3).float().square().sum().backward()
    assert q.grad.dtype == k.grad.dtype == v.grad.dtype == torch.bfloat16
    assert q.grad.shape == q.shape and k.grad.shape == k.shape and v.grad.shape == v.shape
    assert torch.isfinite(q.grad.float()).all() and q.grad.float().abs().sum() > 0


def test_mixed_dtypes_are_promoted():
    q, k, v = rand(1, 2, 4, 5, 5, seed=5)
    out = window_attention(q.half(), k, v, window=3)
    assert out.dtype == torch.float32


def test_gradcheck_dense():
    q, k, v = (t.double().requires_grad_() for t in rand(1, 2, 3, 4, 5, seed=6))
    assert torch.autograd.gradcheck(lambda a, b, c: window_attention(a, b, c, window=3, dilation=1),
                                    (q, k, v))
    assert torch.autograd.gradcheck(lambda a, b, c: window_attention(a, b, c, window=5, dilation=2),
                                    (q, k, v))


def test_gradcheck_sparse_with_duplicates():
    q, k, v = (t.double().requires_grad_() for t in rand(2, 2, 3, 4, 4, seed=7))
    idx = torch.tensor([[0, 15, 6, 6], [3, 12, 9, 10]])
    assert torch.autograd.gradcheck(lambda a, b, c: window_attention(a, b, c, window=3, query_index=idx),
                                    (q, k, v))


def test_grads_match_reference():
    q, k, v = (t.double().requires_grad_() for t in rand(2, 3, 5, 6, 5, seed=8))
    idx = sparse_index(2, 11, 30, seed=8)
    g = torch.randn(2, 5, 11, dtype=torch.float64)
    got = torch.autograd.grad((window_attention(q, k, v, 5, 1, idx) * g).sum(), (q, k, v))
    want = torch.autograd.grad((reference(q, k, v, 5, 1, idx) * g).sum(), (q, k, v))
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b)


def test_backward_saves_weights_not_gathered_copies():
    # Everything saved for backward is an input or a tensor of at most B*T*w*w*M (weights) or B*M*C.
    B, T, C, H, W, w = 1, 2, 16, 8, 8, 3
    q, k, v = (t.requires_grad_() for t in rand(B, T, C, H, W))
    idx = sparse_index(B, 10, H * W)
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        window_attention(q, k, v, window=w, query_index=idx)
    inputs = {q.data_ptr(), k.data_ptr(), v.data_ptr(), idx.data_ptr()}
    extra = [t for t in saved if t.data_ptr() not in inputs]
    assert sum(t.numel() for t in extra) <= B * T * w * w * 10 + B * 10 * C


def test_pytorch_function_used_on_cpu():
    module = importlib.import_module("sdcpc_core.ops.window_attention")  # the module, not the function
    assert backend() == ("pytorch" if module._ext is None else "cuda")
    q, k, v = (t.requires_grad_() for t in rand(1, 1, 2, 3, 3))
    out = window_attention(q, k, v, window=3, query_index=torch.tensor([[4]]))
    assert type(out.grad_fn).__name__.startswith(_WindowAttentionTorch.__name__)


def test_empty_selection():
    q, k, v = rand(2, 1, 4, 3, 3)
    out = window_attention(q, k, v, window=3, query_index=torch.zeros(2, 0, dtype=torch.long))
    assert out.shape == (2, 4, 0)


@pytest.mark.parametrize("kwargs,err,match", [
    ({"window": 4}, ValueError, "odd"),
    ({"window": 0}, ValueError, "odd"),
    ({"dilation": 0}, ValueError, "dilation"),
    ({"query_index": torch.tensor([[0, 25]])}, IndexError, "out of range"),
    ({"query_index": torch.tensor([[-1]])}, IndexError, "out of range"),
    ({"query_index": torch.tensor([[0.0]])}, TypeError, "integer"),
    ({"query_index": torch.tensor([[0], [1]])}, ValueError, "query_index must be"),
])
def test_argument_errors(kwargs, err, match):
    q, k, v = rand(1, 2, 3, 5, 5)
    with pytest.raises(err, match=match):
        window_attention(q, k, v, **{"window": 3, **kwargs})


def test_shape_errors():
    q, k, v = rand(1, 2, 3, 5, 5)
    with pytest.raises(ValueError, match="do not match"):
        window_attention(q, k[..., :4], v[..., :4])
    with pytest.raises(ValueError, match="v shape"):
        window_attention(q, k, v[:, :1])
    with pytest.raises(ValueError, match=r"\(B, C, H, W\)"):
        window_attention(q[0], k, v)
    with pytest.raises(ValueError, match=r"\(B, T, C, H, W\)"):
        window_attention(q, k[:, 0], v[:, 0])


@pytest.mark.parametrize("tile,chunk_elems", [(3, 1), (4, 1 << 12), (8, 1 << 30)])
@pytest.mark.parametrize("window,dilation", [(5, 1), (3, 2)])
def test_tiles_and_chunks_match_reference(monkeypatch, tile, chunk_elems, window, dilation):
    # Many tiles (partial ones at the right / bottom border), tiles with different query counts, one
    # tile per chunk up to all tiles in one chunk, duplicates, batch items with different layouts:
    # forward and all three gradients against the dense reference.
    wa = __import__("sys").modules[_WindowAttentionTorch.__module__]
    monkeypatch.setattr(wa, "TILE", tile)
    monkeypatch.setattr(wa, "CHUNK_ELEMS", chunk_elems)
    B, T, C, H, W = 2, 2, 3, 11, 13
    q, k, v = (t.double().requires_grad_() for t in rand(B, T, C, H, W, seed=9))
    idx = torch.cat([sparse_index(B, 40, H * W, seed=9), torch.tensor([[0, 0, 142], [142, 12, 12]])], 1)
    g = torch.randn(B, C, idx.shape[1], dtype=torch.float64)
    out = window_attention(q, k, v, window, dilation, idx)
    want = reference(q, k, v, window, dilation, idx)
    torch.testing.assert_close(out, want)
    got_g = torch.autograd.grad((out * g).sum(), (q, k, v))
    want_g = torch.autograd.grad((want * g).sum(), (q, k, v))
    for a, b in zip(got_g, want_g):
        torch.testing.assert_close(a, b)
    dense = window_attention(q, k, v, window, dilation)
    torch.testing.assert_close(dense, reference(q, k, v, window, dilation))


def test_runs_under_cpu_autocast_like_a_bf16_engine():
    torch.manual_seed(0)
    q, k, v = torch.randn(1, 8, 6, 7), torch.randn(1, 2, 8, 6, 7), torch.randn(1, 2, 8, 6, 7)
    idx = torch.tensor([[0, 5, 20, 41]])
    ref = window_attention(q, k, v, window=3, dilation=1, query_index=idx)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = window_attention(q.bfloat16(), k.bfloat16(), v, window=3, dilation=1, query_index=idx)
    assert out.dtype == torch.float32  # promoted to the widest input dtype
    torch.testing.assert_close(out, ref, atol=5e-2, rtol=5e-2)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_channels_last_keys_values_are_read_in_place_and_give_the_same_result(dtype):
    """k, v stored (B, T, H, W, C), as SD-CPC's frame cache holds them: no transposing copy (the
    op's rows are a view of the input), same values and gradients as contiguous inputs."""
    from sdcpc_core.ops.window_attention import _channels_last

    q, k, v = (t.to(dtype) for t in rand(2, 3, 6, 7, 9, seed=4))
    as_rows = lambda t: t.permute(0, 1, 3, 4, 2).contiguous().permute(0, 1, 4, 2, 3)  # noqa: E731
    kl, vl = as_rows(k), as_rows(v)
    assert _channels_last(kl, dtype).data_ptr() == kl.data_ptr()  # a view, not a copy
    assert _channels_last(k, dtype).data_ptr() != k.data_ptr()
    torch.testing.assert_close(_channels_last(k, dtype), _channels_last(kl, dtype), rtol=0, atol=0)
    idx = sparse_index(2, 20, 63, seed=4)
    grads = []
    for kk, vv in ((k, v), (kl, vl)):
        qq, kk, vv = (t.detach().requires_grad_() for t in (q, kk, vv))
        out = window_attention(qq, kk, vv, 5, 1, idx)
        grads.append((out, *torch.autograd.grad(out.square().sum(), (qq, kk, vv))))
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b)
