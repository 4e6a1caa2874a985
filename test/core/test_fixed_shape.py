"""The fixed-shape fine stage (export / torch.compile) against the selected-queries path."""

import pytest
import torch

from sdcpc_core.models import SDCPCConfig, build_model, temporal
from sdcpc_core.models.temporal import FrameCache, WindowCrossFrameAttention
from sdcpc_core.ops import window_attention, window_attention_fixed


@pytest.mark.parametrize("B,T,C,H,W,window,dilation", [
    (2, 3, 8, 13, 11, 9, 1),  # frame not a multiple of the tile, window wider than a tile's halo step
    (1, 2, 5, 7, 9, 3, 2),
    (1, 1, 4, 1, 8, 5, 1),  # one row
    (1, 3, 16, 20, 17, 7, 1),
    (1, 2, 6, 16, 16, 1, 1),  # window 1: the centre key only
    (1, 2, 4, 18, 21, 5, 3),  # radius 6: halos two blocks deep on each side
])
def test_fixed_equals_window_attention(B, T, C, H, W, window, dilation):
    g = torch.Generator().manual_seed(0)
    q = torch.randn(B, C, H, W, generator=g)
    k, v = torch.randn(2, B, T, C, H, W, generator=g)
    want = window_attention(q, k, v, window, dilation)
    got = window_attention_fixed(q, k, v, window, dilation)
    assert got.shape == want.shape and got.dtype == want.dtype
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_fixed_keeps_dtype_and_accumulates_in_fp32():
    g = torch.Generator().manual_seed(1)
    q = torch.randn(1, 8, 9, 10, generator=g)
    k, v = torch.randn(2, 1, 2, 8, 9, 10, generator=g)
    got = window_attention_fixed(q.bfloat16(), k.bfloat16(), v.bfloat16(), 5, 1)
    want = window_attention(q.bfloat16(), k.bfloat16(), v.bfloat16(), 5, 1)
    assert got.dtype == torch.bfloat16
    torch.testing.assert_close(got.float(), want.float(), atol=1e-2, rtol=1e-2)


def _mask_of(index, shape):
    mask = torch.zeros(shape[0], shape[2] * shape[3], dtype=torch.bool)
    mask.scatter_(1, index, True)
    return mask.view(shape)


@pytest.mark.parametrize("ratio", [0.05, 0.25, 0.5, 0.9])
def test_selection_mask_is_exactly_select(ratio):
    fine = WindowCrossFrameAttention(8, window=3, selection_ratio=ratio)
    g = torch.Generator().manual_seed(2)
    cases = [
        torch.rand(2, 1, 6, 7, generator=g),
        (torch.rand(2, 1, 6, 7, generator=g) - 0.5) * 2e-7,  # rounding noise only: all ties
        (torch.rand(2, 1, 6, 7, generator=g) > 0.6).float(),  # binary: many ties at the cut
        torch.randint(0, 3, (2, 1, 6, 7), generator=g).float() / 2,
    ]
    for d in cases:
        index = fine.select(d)
        assert torch.equal(fine.selection_mask(d), _mask_of(index, d.shape))


def test_selection_mask_counts_like_select_where_the_ratio_rounds_up_by_float_error():
    """0.3 * 20 is 6.000000000000001 in floating point: both paths select 6 of 20, not 7."""
    fine = WindowCrossFrameAttention(8, window=3, selection_ratio=0.3)
    d = torch.rand(1, 1, 4, 5, generator=torch.Generator().manual_seed(3))
    index = fine.select(d)
    assert index.shape == (1, 6)
    assert torch.equal(fine.selection_mask(d), _mask_of(index, d.shape))


def test_selection_mask_none_when_all_are_selected():
    fine = WindowCrossFrameAttention(8, window=3, selection_ratio=1.0)
    assert fine.selection_mask(torch.rand(1, 1, 4, 4)) is None


def _model_and_caches(size=(64, 96), frames=4, seed=0):
    torch.manual_seed(seed)
    model = build_model(SDCPCConfig(num_classes=7, embed_dim=32)).eval()
    torch.nn.init.normal_(model.temporal_proj.weight, std=0.2)  # fresh models ignore the context
    with torch.no_grad():
        caches = [model.encode(torch.randn(1, 3, *size)) for _ in range(frames)]
    return model, caches


def test_forward_cached_fixed_shape_equals_selected_queries():
    model, caches = _model_and_caches()
    with torch.no_grad():
        want = model.forward_cached(caches[-1], caches[:-1])
        model.dssa.fine.fixed_shape = True
        got = model.forward_cached(caches[-1], caches[:-1])
        at_start = model.forward_cached(caches[0], [caches[0]] * 3)  # stream start: own reference
        model.dssa.fine.fixed_shape = False
        want_start = model.forward_cached(caches[0], [caches[0]] * 3)
    for key in ("logits", "embedding", "difference"):
        torch.testing.assert_close(got[key], want[key], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(at_start["logits"], want_start["logits"], atol=1e-5, rtol=1e-5)
    assert (got["logits"] - model.forward_cached(caches[-1], caches[:1] * 3)["logits"]).abs().max() > 1e-3


@pytest.mark.parametrize("window, dilation, ratio", [(5, 2, 0.25), (3, 1, 1.0)])
def test_fixed_shape_module_runs_the_fixed_op_with_its_window(window, dilation, ratio, monkeypatch):
    """``fixed_shape = True`` (set by the export) takes the fixed-shape op alone, with the module's
    window and dilation, also when every location is selected (no mask)."""
    fine = WindowCrossFrameAttention(8, window=window, dilation=dilation, selection_ratio=ratio).eval()
    g = torch.Generator().manual_seed(window)
    x = torch.randn(1, 8, 10, 13, generator=g)
    refs = [FrameCache((), torch.randn(1, 8, 10, 13, generator=g), None) for _ in range(2)]
    diff = torch.rand(1, 1, 10, 13, generator=g)
    with torch.no_grad():
        want = fine(x, refs, diff)
        calls = []
        fixed = temporal.window_attention_fixed
        monkeypatch.setattr(temporal, "window_attention", lambda *a, **k: calls.append("sparse"))
        monkeypatch.setattr(temporal, "window_attention_fixed",
                            lambda *a, **k: calls.append(("fixed", k)) or fixed(*a, **k))
        fine.fixed_shape = True
        got = fine(x, refs, diff)
    assert calls == [("fixed", {"window": window, "dilation": dilation})]
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_encode_and_forward_cached_compile_with_fullgraph():
    """Graph capture without breaks (``backend="eager"``: dynamo's graph, no code generation,
    so the test stays fast; the benchmark compiles with inductor)."""
    torch._dynamo.reset()
    model, caches = _model_and_caches(size=(48, 64))
    x = torch.randn(1, 3, 48, 64)
    encode = torch.compile(model.encode, fullgraph=True, backend="eager")
    forward_cached = torch.compile(model.forward_cached, fullgraph=True, backend="eager")
    with torch.no_grad():
        got_cache = encode(x)
        want_cache = model.encode(x)
        got = forward_cached(got_cache, caches[:3])
        want = model.forward_cached(want_cache, caches[:3])
    torch.testing.assert_close(got_cache.static, want_cache.static)
    torch.testing.assert_close(got["logits"], want["logits"], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("radius,lead,blocks", [(0, 0, 1), (1, 4, 3), (4, 4, 3), (5, 8, 5), (8, 8, 5), (9, 12, 7)])
def test_fixed_halos_are_the_fewest_blocks_that_hold_every_window(radius, lead, blocks):
    """A 4×4 block's halo starts ceil(R / 4) blocks before it and spans the blocks up to as many
    after it: no window key outside, no block more than that (each costs a 16th of the logits)."""
    wa = __import__("sys").modules[window_attention_fixed.__module__]
    assert wa.FIXED_TILE == 4
    assert wa._halo_blocks(radius) == (lead, blocks)


@pytest.mark.parametrize("chunk,max_chunks", [(1, 100), (4, 100), (2, 3), (100, 1)])
def test_fixed_path_in_chunks_of_tiles_equals_window_attention(monkeypatch, chunk, max_chunks):
    """Chunks of one tile, a ragged last chunk, the chunk grown to respect the chunk cap, one
    chunk: every tile attends exactly once, with its own bias rows (frames of 5 x 4 tiles)."""
    wa = __import__("sys").modules[window_attention_fixed.__module__]
    monkeypatch.setattr(wa, "FIXED_CHUNK", chunk)
    monkeypatch.setattr(wa, "FIXED_MAX_CHUNKS", max_chunks)
    g = torch.Generator().manual_seed(3)
    q = torch.randn(2, 6, 19, 14, generator=g)
    k, v = torch.randn(2, 2, 2, 6, 19, 14, generator=g)
    for keys, values in ((k, v), (k, k)):  # separate values, and values that are the keys
        want = window_attention(q, keys, values, 7, 1)
        got = window_attention_fixed(q, keys, values, 7, 1)
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_fixed_path_chunk_count_is_capped(monkeypatch):
    wa = __import__("sys").modules[window_attention_fixed.__module__]
    monkeypatch.setattr(wa, "FIXED_CHUNK", 1)
    monkeypatch.setattr(wa, "FIXED_MAX_CHUNKS", 3)
    calls = []
    select = torch.Tensor.index_select
    monkeypatch.setattr(torch.Tensor, "index_select", lambda self, *a: calls.append(1) or select(self, *a))
    q = torch.randn(1, 4, 19, 14)
    k = torch.randn(1, 2, 4, 19, 14)
    window_attention_fixed(q, k, k, 3, 1)  # 20 tiles: 3 chunks of 7, 7, 6 (one gather each: v is k)
    assert len(calls) == 3
