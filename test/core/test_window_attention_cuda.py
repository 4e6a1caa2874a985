"""CUDA window-attention extension against the PyTorch path (values and gradients)."""

import pytest
import torch

from sdcpc_core.ops import backend, window_attention
from sdcpc_core.ops.window_attention import _WindowAttentionTorch

pytestmark = [
    pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device"),
    pytest.mark.skipif(backend() != "cuda", reason="CUDA extension not built (backend() is 'pytorch')"),
]

TOL = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}


def fn_name(out):
    fn = out.grad_fn
    if type(fn).__name__ == "ViewBackward0":  # dense output is a view of (B, C, M)
        fn = fn.next_functions[0][0]
    return type(fn).__name__


def torch_path(q, k, v, window, dilation, idx):
    B, C, H, W = q.shape
    dense = idx is None
    if dense:
        idx = torch.arange(H * W, device=q.device).expand(B, H * W)
    out = _WindowAttentionTorch.apply(q, k, v, idx, window, dilation)
    return out.view(B, C, H, W) if dense else out


def inputs(B, T, C, H, W, dtype, seed=0):
    g = torch.Generator(device="cuda").manual_seed(seed)
    mk = lambda *s: torch.randn(*s, device="cuda", generator=g).to(dtype).requires_grad_()  # noqa: E731
    return mk(B, C, H, W), mk(B, T, C, H, W), mk(B, T, C, H, W)


def compare(B, T, C, H, W, window, dilation, dtype, M=None, seed=0):
    q, k, v = inputs(B, T, C, H, W, dtype, seed)
    idx = None
    if M is not None:
        g = torch.Generator(device="cuda").manual_seed(seed)
        idx = torch.randint(0, H * W, (B, M), device="cuda", generator=g)  # may repeat positions
    out = window_attention(q, k, v, window, dilation, idx)
    assert "CUDA" in fn_name(out)
    ref = torch_path(q, k, v, window, dilation, idx)
    assert out.dtype == dtype and out.shape == ref.shape
    tol = TOL[dtype]
    torch.testing.assert_close(out.float(), ref.float(), atol=tol, rtol=tol)
    g = torch.randn_like(out)
    got = torch.autograd.grad(out, (q, k, v), g)
    want = torch.autograd.grad(ref, (q, k, v), g)
    for name, a, b in zip("qkv", got, want):
        assert a.dtype == dtype, name
        torch.testing.assert_close(a.float(), b.float(), atol=4 * tol, rtol=4 * tol, msg=f"grad {name}")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("window,dilation", [(1, 1), (3, 1), (9, 1), (5, 3), (15, 1), (15, 2)])
def test_dense(dtype, window, dilation):
    compare(2, 3, 40, 13, 11, window, dilation, dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("C", [1, 31, 33, 256])
def test_sparse_odd_channels(dtype, C):
    compare(2, 2, C, 9, 17, 7, 1, dtype, M=29, seed=C)


@pytest.mark.parametrize("T,H,W", [(1, 1, 1), (1, 3, 40), (4, 17, 5), (3, 60, 60)])
def test_odd_sizes_and_borders(T, H, W):
    compare(1, T, 24, H, W, 9, 1, torch.float32, M=(H * W + 3) // 4)


def test_large_channels_use_opt_in_shared_memory():
    # one warp holds 2*C floats forward and 3*C backward; the default 48 KiB per block is passed
    # (so the kernels must opt in) above C = 6144 forward and C = 4096 backward
    assert 2 * 6400 * 4 > 48 * 1024 and 3 * 6400 * 4 > 48 * 1024
    compare(1, 1, 6400, 5, 6, 3, 1, torch.float32, M=17)
    compare(1, 2, 5000, 4, 5, 3, 1, torch.float32)  # backward only above the default


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_large_logits_stay_finite_and_match(dtype):
    q, k, v = inputs(2, 3, 64, 9, 10, torch.float32, seed=5)
    scale = 30.0 if dtype == torch.float32 else 8.0  # logits in the hundreds (fp16 max is 65504)
    q, k = (t.detach() * scale for t in (q, k))
    q, k, v = (t.to(dtype).requires_grad_() for t in (q, k, v.detach()))
    out = window_attention(q, k, v, 5)
    assert torch.isfinite(out.float()).all()
    ref = torch_path(q, k, v, 5, 1, None)
    tol = TOL[dtype]
    torch.testing.assert_close(out.float(), ref.float(), atol=tol * scale, rtol=tol)
    got = torch.autograd.grad(out, (q, k, v), torch.ones_like(out))
    want = torch.autograd.grad(ref, (q, k, v), torch.ones_like(ref))
    for name, a, b in zip("qkv", got, want):
        assert torch.isfinite(a.float()).all(), name
        torch.testing.assert_close(a.float(), b.float(), atol=4 * tol * scale, rtol=4 * tol, msg=f"grad {name}")


@pytest.mark.parametrize("bad", [-1, 30, 1 << 40])
def test_binding_rejects_out_of_range_query_index(bad):
    """A direct call into the extension (no Python-side check) must raise, not read or atomicAdd
    out of bounds."""
    from sdcpc_core.ops.window_attention import _ext

    q, k, v = (t.detach() for t in inputs(1, 2, 8, 5, 6, torch.float32))
    idx = torch.tensor([[0, 3, bad]], device="cuda")
    with pytest.raises(RuntimeError, match="query_index values must be in"):
        _ext.forward(q, k, v, idx, 3, 1)
    good = torch.tensor([[0, 3, 29]], device="cuda")
    out, lse = _ext.forward(q, k, v, good, 3, 1)
    with pytest.raises(RuntimeError, match="query_index values must be in"):
        _ext.backward(torch.ones_like(out), q, k, v, idx, out, lse, 3, 1)
    torch.cuda.synchronize()  # nothing went wrong on the device either


@pytest.mark.parametrize("train", [False, True])
def test_whole_model_on_cuda_matches_cpu(train, monkeypatch):
    from sdcpc_core.models import SDCPCConfig, build_model

    # fp32 on both sides: cuDNN convolutions would otherwise run in TF32 (10-bit mantissa)
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)

    torch.manual_seed(0)
    # every location selected: a near-tie of differences cannot select other places on the two
    # devices (the engine check of scripts/gpu_check.sh covers the default 25 % end to end)
    cfg = SDCPCConfig(variant="b0", num_classes=7, embed_dim=32, reference_offsets=(-2, -1), window=5,
                      drop_path_rate=0.0, selection_ratio=1.0)
    cpu = build_model(cfg).train(train)
    gpu = build_model(cfg).train(train)
    gpu.load_state_dict(cpu.state_dict())
    cpu.decode_head.dropout.eval(), gpu.decode_head.dropout.eval()  # training: batch-norm statistics, no dropout
    gpu = gpu.cuda()
    x = torch.randn(2, 3, 3, 96, 128)
    want = cpu(x)
    got = gpu(x.cuda())
    for key in ("logits", "static_logits", "difference"):
        torch.testing.assert_close(got[key].cpu(), want[key], atol=2e-4, rtol=2e-4, msg=key)
    if train:  # the kernel's backward inside the model: gradients as on CPU
        want["logits"].square().mean().backward()
        got["logits"].square().mean().backward()
        for (name, a), b in zip(cpu.named_parameters(), gpu.parameters()):
            if a.grad is not None:
                torch.testing.assert_close(b.grad.cpu(), a.grad, atol=1e-3, rtol=1e-2, msg=name)


def test_vspw_scale_sparse():
    compare(1, 3, 256, 60, 60, 9, 1, torch.float32, M=900)


def test_non_contiguous_and_channels_last_inputs():
    q, k, v = inputs(1, 2, 16, 8, 9, torch.float32)
    qc = q.detach().to(memory_format=torch.channels_last)
    kt = k.detach().transpose(3, 4).contiguous().transpose(3, 4)
    out = window_attention(qc, kt, v.detach(), 5)
    torch.testing.assert_close(out, torch_path(q.detach(), k.detach(), v.detach(), 5, 1, None), atol=1e-5, rtol=1e-5)


def test_current_stream_is_used():
    q, k, v = (t.detach() for t in inputs(1, 2, 16, 8, 9, torch.float32))
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        out = window_attention(q, k, v, 3)
    torch.cuda.current_stream().wait_stream(s)
    torch.testing.assert_close(out, torch_path(q, k, v, 3, 1, None), atol=1e-5, rtol=1e-5)


def test_window_above_cuda_limit_falls_back_to_pytorch():
    q, k, v = inputs(1, 1, 4, 20, 20, torch.float32)
    out = window_attention(q, k, v, 17)
    assert "Torch" in fn_name(out)


def test_float64_uses_pytorch_path_and_gradchecks():
    q, k, v = (t.detach().double().requires_grad_() for t in inputs(1, 2, 3, 4, 4, torch.float32))
    assert "Torch" in fn_name(window_attention(q, k, v, 3))
    assert torch.autograd.gradcheck(lambda a, b, c: window_attention(a, b, c, 3), (q, k, v))
