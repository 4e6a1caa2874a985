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
