"""The method's defining choices, each pinned by values worked out by hand or by a plain loop.

Every test names the section of ../shared/spec/sdcpc-method.md it checks ("Pipeline 3" is step 3
of the spec's Pipeline section, and so on). docs/method.md lists them. Loop formulations run in
float64, one location / one key / one prototype at a time, so that they share no vectorised
code (and no bug) with the modules they check.
"""

import math
import os
import tempfile

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

from sdcpc_core.losses import MCPContrastiveLoss, mcp_cl, spherical_kmeans
from sdcpc_core.losses.mcp_cl import farthest_point_init
from sdcpc_core.models import SDCPCConfig, build_model
from sdcpc_core.models.temporal import (
    DSSA,
    SSEA,
    ClassPrototypeAttention,
    FrameCache,
    WindowCrossFrameAttention,
    static_difference,
)


def frame(static, logits):
    return FrameCache((), static, logits)


def log_probs(*rows):
    """Logits whose softmax over the class dimension is the given distribution, one per location:
    rows of K probabilities -> (1, K, 1, len(rows))."""
    p = torch.tensor(rows, dtype=torch.float64).T  # (K, N)
    return p.log().float()[None, :, None, :]


# --- Pipeline 3: static perceptual difference ------------------------------------------------

def test_bhattacharyya_difference_on_known_distributions():
    """Pipeline 3: D = 1 - Σ_c sqrt(P_t,c · P_r,c), per location, on hand-worked distributions."""
    target = log_probs([0.64, 0.36, 0.0], [0.5, 0.5, 0.0], [1.0, 0.0, 0.0], [0.2, 0.3, 0.5])
    refer = log_probs([0.36, 0.64, 0.0], [0.5, 0.0, 0.5], [0.0, 0.0, 1.0], [0.2, 0.3, 0.5])
    # 1 - (0.48 + 0.48); 1 - sqrt(0.25); disjoint supports; identical distributions
    want = torch.tensor([0.04, 0.5, 1.0, 0.0]).view(1, 1, 1, 4)
    static = torch.zeros(1, 2, 1, 4)
    got = static_difference(frame(static, target), frame(static, refer))
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, want, atol=1e-6, rtol=0)


def test_difference_stays_in_bounds_exactly_and_unknown_kinds_are_named():
    """Pipeline 3: D in [0, 1] even where float rounding makes Σ_c sqrt(p·p) exceed 1."""
    g = torch.Generator().manual_seed(0)
    a = frame(None, torch.randn(1, 7, 8, 8, generator=g) * 3)
    p = a.static_logits.softmax(1)
    assert (1 - (p * p).sqrt().sum(1)).min() < 0  # the literal formula dips below zero here
    assert static_difference(a, a).min() >= 0
    # nearly one-hot, mostly disjoint distributions: ½ Σ (√p − √q)² exceeds 1 by rounding here
    far = [frame(None, torch.randn(1, 7, 32, 32, generator=g) * 30) for _ in range(2)]
    p, q = far[0].static_logits.softmax(1), far[1].static_logits.softmax(1)
    assert (0.5 * (p.sqrt() - q.sqrt()).square().sum(1)).max() > 1
    assert static_difference(*far).max() <= 1
    with pytest.raises(ValueError, match=r"^unknown difference kind 'l2'; choose one of \('bhattacharyya'"):
        static_difference(a, a, "l2")
    with pytest.raises(ValueError, match=r"^unknown difference kind 'l2'; choose one of \('bhattacharyya'"):
        DSSA(4, difference="l2")


def test_a_frame_compared_with_itself_differs_by_exactly_zero():
    """Pipeline 3 at a stream's first frame (its own reference): D = 0 exactly, not rounding noise,
    so the fine stage's selection does not depend on the precision (fp32 here; bf16 runtimes
    otherwise turned ~4e-3 of noise into a random choice of queries)."""
    g = torch.Generator().manual_seed(3)
    a = frame(None, torch.randn(2, 9, 12, 16, generator=g) * 4)
    p = a.static_logits.softmax(1)
    assert (1 - (p * p).sqrt().sum(1)).abs().max() > 0  # the literal formula keeps rounding noise
    assert torch.equal(static_difference(a, a), torch.zeros(2, 1, 12, 16))


def test_bhattacharyya_difference_equals_a_numpy_loop():
    """Pipeline 3: the same formula on random logits, location by location in numpy."""
    g = torch.Generator().manual_seed(0)
    lt, lr = torch.randn(2, 5, 3, 4, generator=g) * 3, torch.randn(2, 5, 3, 4, generator=g) * 3
    got = static_difference(frame(None, lt), frame(None, lr)).numpy()
    pt = np.exp(lt.double().numpy()) / np.exp(lt.double().numpy()).sum(1, keepdims=True)
    pr = np.exp(lr.double().numpy()) / np.exp(lr.double().numpy()).sum(1, keepdims=True)
    for b in range(2):
        for y in range(3):
            for x in range(4):
                bc = sum(math.sqrt(pt[b, c, y, x] * pr[b, c, y, x]) for c in range(5))
                assert got[b, 0, y, x] == pytest.approx(1 - bc, abs=1e-6)


def test_alternative_differences_cosine_and_argmax():
    """Pipeline 3 (alternatives): cosine of S mapped to [0, 1] as (1 - cos) / 2; argmax disagreement."""
    s_t = torch.tensor([[1.0, 0.0], [1.0, 0.0], [1.0, 1.0]]).T.reshape(1, 2, 1, 3)
    s_r = torch.tensor([[0.0, 1.0], [-1.0, 0.0], [2.0, 2.0]]).T.reshape(1, 2, 1, 3)
    got = static_difference(frame(s_t, None), frame(s_r, None), "cosine")
    torch.testing.assert_close(got, torch.tensor([0.5, 1.0, 0.0]).view(1, 1, 1, 3), atol=1e-6, rtol=0)
    l_t = log_probs([0.6, 0.4], [0.3, 0.7], [0.9, 0.1])
    l_r = log_probs([0.4, 0.6], [0.1, 0.9], [0.51, 0.49])
    got = static_difference(frame(None, l_t), frame(None, l_r), "argmax")
    assert got.flatten().tolist() == [1.0, 0.0, 0.0]


def tiny_dssa(dim=4, window=3, ratio=0.25, seed=0):
    torch.manual_seed(seed)
    return DSSA(dim, window=window, selection_ratio=ratio).eval()


def test_several_references_combine_by_max():
    """Pipeline 3-4: with several references a location's difference is the largest over them
    (a location needs cross-frame evidence if ANY reference disagrees)."""
    k = 3
    target = frame(torch.randn(1, 4, 2, 2), log_probs(*[[1 / 3] * 3] * 4).view(1, k, 2, 2))
    sure = [[0.98, 0.01, 0.01], [0.01, 0.98, 0.01]]
    probs = [(sure[0], [1 / 3] * 3, sure[1], [0.5, 0.25, 0.25]), ([1 / 3] * 3, sure[1], [0.4, 0.3, 0.3], sure[0])]
    refs = [frame(torch.randn(1, 4, 2, 2), log_probs(*p).view(1, k, 2, 2)) for p in probs]
    each = torch.stack([static_difference(target, r) for r in refs])  # (T, 1, 1, 2, 2)
    assert (each[0] > each[1]).any() and (each[1] > each[0]).any()  # neither reference dominates
    _, diff = tiny_dssa()(target, refs)
    torch.testing.assert_close(diff, torch.maximum(each[0], each[1]), rtol=0, atol=0)


# --- Pipeline 4, stage 2: which locations are selected ------------------------------------------

@pytest.mark.parametrize("ratio,n,want", [(0.25, 20, 5), (0.25, 10, 3), (0.3, 20, 6), (0.1, 30, 3),
                                          (0.01, 20, 1), (0.5, 7, 4)])
def test_selection_count_is_the_fraction_rounded_up(ratio, n, want):
    """Pipeline 4 (top-k fraction): ceil(ratio · locations), at least one; 0.3 · 20 is 6, not the 7
    that float rounding (6.000000000000001) would give."""
    fine = WindowCrossFrameAttention(4, selection_ratio=ratio)
    d = torch.arange(n, dtype=torch.float32).flip(0).view(1, 1, 1, n) + 1
    assert fine.select(d).tolist() == [list(range(want))]


def test_selection_keeps_all_when_the_fraction_covers_every_location():
    """Pipeline 4: ratio 1.0 (or a count reaching every location) selects all: no index at all."""
    assert WindowCrossFrameAttention(4, selection_ratio=1.0).select(torch.rand(1, 1, 3, 3)) is None
    assert WindowCrossFrameAttention(4, selection_ratio=0.95).select(torch.rand(1, 1, 2, 2)) is None
    assert WindowCrossFrameAttention(4, selection_ratio=0.7).select(torch.rand(1, 1, 2, 2)).shape == (1, 3)


def test_selection_takes_the_largest_differences_ties_by_position_indices_sorted():
    """Pipeline 4: the most different locations; equal differences go to the earlier location;
    the indices come back in increasing order; differences below NOISE count as zero."""
    fine = WindowCrossFrameAttention(4, selection_ratio=0.25)
    d = torch.tensor([0.1, 0.9, 0.3, 0.9, 0.0, 0.5, 0.3, 0.3, 0.2, 0.3, 0.3, 0.7]).view(1, 1, 3, 4)
    assert fine.select(d).tolist() == [[1, 3, 11]]  # 0.9, 0.9, 0.7
    d[0, 0, 1, 1] = d[0, 0, 2, 3] = 0.3  # one place left for seven tied 0.3s: the earliest (2)
    assert fine.select(d).tolist() == [[1, 2, 3]]
    below = torch.tensor([5e-6, 2e-6, 9e-6, 0.0, 1e-5, 3e-6, 0.0, 0.0]).view(1, 1, 2, 4)
    assert fine.select(below).tolist() == [[0, 4]]  # only 1e-5 is above the noise; then the first
    # batch rows select independently
    two = torch.stack([d[0], d[0].flip(-1)])
    assert fine.select(two).tolist() == [[1, 2, 3], [0, 1, 2]]  # flipped rows: 0.9, 0.3, 0.9, 0.1


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_selection_runs_on_the_fp32_difference_under_autocast(dtype):
    """Pipeline 4: the selection depends on the differences, not on the engine's precision. Under
    bf16/fp16 autocast DSSA selects on the fp32 difference; rounding it first would merge
    distinct values into ties (and the ties would then favour the top-left)."""
    dssa = tiny_dssa(dim=8)
    g = torch.Generator().manual_seed(1)
    h, w = 30, 40
    target = frame(torch.randn(1, 8, h, w, generator=g), torch.randn(1, 6, h, w, generator=g))
    refs = [frame(torch.randn(1, 8, h, w, generator=g), torch.randn(1, 6, h, w, generator=g))]
    seen = []
    select = dssa.fine.select
    dssa.fine.select = lambda d: seen.append(d) or select(d)
    with torch.no_grad(), torch.autocast("cpu", dtype=dtype):
        _, diff = dssa(target, refs)
    assert seen[0].dtype == torch.float32 and diff.dtype == torch.float32
    want = static_difference(target, refs[0])
    torch.testing.assert_close(seen[0], want, rtol=0, atol=0)
    m = math.ceil(0.25 * h * w)
    order = np.argsort(-want.flatten().numpy(), kind="stable")[:m]
    assert select(seen[0]).tolist() == [sorted(order.tolist())]
    assert len(np.unique(want.numpy())) > 1000  # distinct values, which bf16 rounding merges:
    assert len(np.unique(want.to(dtype).float().numpy())) < (500 if dtype == torch.bfloat16 else 1100)
    if dtype == torch.bfloat16:  # (fp16's 11 bits happen to keep this selection)
        assert select(want.to(dtype)).tolist() != select(want).tolist()


# --- Pipeline 4, stage 1: class prototypes (coarse) ----------------------------------------------

def coarse_by_loops(mod: ClassPrototypeAttention, static, refs):
    """Stage 1, one query cell and one (reference, class) prototype at a time, float64."""
    wq, bq = mod.query.weight.double(), mod.query.bias.double()
    wk, bk = mod.key.weight.double(), mod.key.bias.double()
    wv, bv = mod.value.weight.double(), mod.value.bias.double()
    b_, c, h, w = static.shape
    cells = F.avg_pool2d(static.double(), mod.pool, ceil_mode=True)  # the stride-32 grid
    out = torch.zeros_like(cells)
    for b in range(b_):
        keys, values, bias = [], [], []
        for ref in refs:  # every (reference, class) pair is one key of ONE joint softmax
            s = ref.static[b].double().flatten(1)  # (C, N)
            p = ref.static_logits[b].double().flatten(1).softmax(0)  # (K, N)
            n = s.shape[1]
            for k in range(p.shape[0]):
                mass = p[k].sum()
                proto = sum(p[k, i] * s[:, i] for i in range(n)) / mass  # probability-weighted mean
                keys.append(wk @ proto + bk)
                values.append(wv @ proto + bv)
                bias.append(torch.log(mass / n))  # log of the class's share of the frame
        for y in range(cells.shape[2]):
            for x in range(cells.shape[3]):
                q = wq @ cells[b, :, y, x] + bq
                logits = torch.stack([q @ kk / math.sqrt(c) + bb for kk, bb in zip(keys, bias)])
                a = logits.softmax(0)
                out[b, :, y, x] = sum(a[j] * values[j] for j in range(len(values)))
    return F.interpolate(out, size=(h, w), mode="bilinear", align_corners=False)


@pytest.mark.parametrize("h,w,dtype", [(9, 7, torch.float32), (2, 3, torch.float32), (4, 5, torch.float64)])
def test_class_stage_equals_a_loop_over_prototypes(h, w, dtype):
    """Pipeline 4, stage 1: prototypes weighted by probability, log-mass bias on each class's
    logit, one softmax jointly over all T·K (reference, class) prototypes. (2, 3): classes with
    less than one pixel of mass; float64: the stage keeps the features' dtype."""
    torch.manual_seed(0)
    mod = ClassPrototypeAttention(6).to(dtype)
    static = torch.randn(2, 6, h, w, dtype=dtype)
    refs = [frame(torch.randn(2, 6, h, w, dtype=dtype), torch.randn(2, 5, h, w, dtype=dtype) * 2) for _ in range(3)]
    torch.testing.assert_close(mod(static, refs).double(), coarse_by_loops(mod, static, refs),
                               atol=1e-5, rtol=1e-5)


def test_class_stage_does_not_attend_to_absent_classes():
    """Pipeline 4, stage 1: a class with no mass in the reference gets (almost) no attention even
    when its prototype matches the query best (the log-mass bias)."""
    mod = ClassPrototypeAttention(2, pool=1)
    with torch.no_grad():
        for lin in (mod.query, mod.key, mod.value):
            lin.weight.copy_(torch.eye(2) * 2)
            lin.bias.zero_()
    static = torch.tensor([1.0, 0.0]).view(1, 2, 1, 1).expand(1, 2, 1, 4).contiguous()
    s_ref = torch.tensor([[0.0, 1.0], [0.0, 1.0], [0.0, 1.0], [1.0, 0.0]]).T.reshape(1, 2, 1, 4)
    # class 0 holds (almost) every pixel: prototype (0.25, 0.75), key and value (0.5, 1.5), logit
    # q·k / sqrt(2) = 0.71. Class 1 has about 1e-11 of the frame, but its probability-weighted
    # mean is the last pixel, the one equal to the query: key and value (2, 0), logit 2.83, which
    # would take 89 % of the attention; its log share (log 1e-6 at the floor) leaves it 1e-5.
    logits = torch.tensor([[0.0, -30.0], [0.0, -30.0], [0.0, -30.0], [0.0, -25.0]]).T.reshape(1, 2, 1, 4)
    out = mod(static, [frame(s_ref, logits)])
    torch.testing.assert_close(out[0, :, 0, 0], torch.tensor([0.5, 1.5]), atol=1e-4, rtol=0)


# --- Pipeline 4, stage 2 and Pipeline 5: the fine stage -------------------------------------------

def fine_by_loops(mod: WindowCrossFrameAttention, x, refs, index):
    """Stage 2 for the selected locations: each query's keys are the in-frame positions of a
    w×w (dilated) window in every reference; ONE softmax over all of them; zero elsewhere."""
    b_, c, h, w = x.shape
    r = mod.window // 2
    proj = lambda conv, t: torch.einsum("oc,chw->ohw", conv.weight.double()[:, :, 0, 0], t.double()) \
        + conv.bias.double()[:, None, None]  # noqa: E731
    out = torch.zeros(b_, c, h * w, dtype=torch.float64)
    for b in range(b_):
        q = proj(mod.query, x[b])
        keys = [proj(mod.key, ref.static[b]) for ref in refs]
        values = [proj(mod.value, ref.static[b]) for ref in refs]
        for i in index[b].tolist():
            y, xx = divmod(i, w)
            logits, vals = [], []
            for t in range(len(refs)):
                for dy in range(-r, r + 1):
                    for dx in range(-r, r + 1):
                        ky, kx = y + mod.dilation * dy, xx + mod.dilation * dx
                        if 0 <= ky < h and 0 <= kx < w:  # out-of-frame keys are excluded
                            logits.append(q[:, y, xx] @ keys[t][:, ky, kx] / math.sqrt(c))
                            vals.append(values[t][:, ky, kx])
            a = torch.stack(logits).softmax(0)
            out[b, :, i] = sum(a[j] * vals[j] for j in range(len(vals)))
    return out.view(b_, c, h, w)


@pytest.mark.parametrize("fixed_shape", [False, True])
@pytest.mark.parametrize("ratio", [0.25, 1.0])
@pytest.mark.parametrize("train", [True, False])
@pytest.mark.parametrize("window,dilation", [(3, 1), (3, 2), (5, 1)])
def test_fine_stage_equals_a_loop_over_window_keys(window, dilation, train, ratio, fixed_shape):
    """Pipeline 4 stage 2 + Pipeline 5: logit = Σ_c q⊙k / sqrt(C); a joint softmax over the
    T·w² keys with the out-of-frame ones excluded (not zero-padded); unselected locations get
    zero context. In training as published (keys and values projected); at inference the
    queries attend to S through W_kᵀ q and the values are projected after: the same numbers,
    on the selected-queries path and the fixed-shape one, with some or all queries selected."""
    torch.manual_seed(window + dilation)
    mod = WindowCrossFrameAttention(4, window=window, dilation=dilation, selection_ratio=ratio).train(train)
    torch.nn.init.normal_(mod.key.bias)  # b_k cancels in the softmax: it must not matter either way
    mod.fixed_shape = fixed_shape
    x = torch.randn(2, 4, 5, 6)
    refs = [frame(torch.randn(2, 4, 5, 6), None) for _ in range(2)]
    diff = torch.rand(2, 1, 5, 6)
    index = mod.select(diff)
    if ratio < 1:
        assert index.shape == (2, 8)
    else:
        assert index is None
        index = torch.arange(30).expand(2, -1)
    got = mod(x, refs, diff)
    torch.testing.assert_close(got.double(), fine_by_loops(mod, x, refs, index), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("kind", ["bhattacharyya", "cosine"])
def test_dssa_adds_coarse_then_fine_context_and_normalises(kind):
    """Pipeline 4: DSSA output = GroupNorm(S + coarse(S) + fine(S + coarse(S))), the fine stage
    selecting on the configured difference (max over references)."""
    torch.manual_seed(1)
    dssa = DSSA(4, window=3, selection_ratio=0.5, difference=kind).eval()
    assert (dssa.fine.window, dssa.fine.selection_ratio) == (3, 0.5)
    target = frame(torch.randn(1, 4, 6, 5), torch.randn(1, 3, 6, 5))
    refs = [frame(torch.randn(1, 4, 6, 5), torch.randn(1, 3, 6, 5)) for _ in range(2)]
    out, diff = dssa(target, refs)
    want_diff = torch.maximum(*(static_difference(target, r, kind) for r in refs))
    torch.testing.assert_close(diff, want_diff, rtol=0, atol=0)
    x = target.static + dssa.coarse(target.static, refs)
    x = x + dssa.fine(x, refs, want_diff)
    mean, var = x.mean((1, 2, 3), keepdim=True), x.var((1, 2, 3), unbiased=False, keepdim=True)
    norm = (x - mean) / torch.sqrt(var + 1e-5)  # one group over all channels
    torch.testing.assert_close(out, norm * dssa.norm.weight[:, None, None] + dssa.norm.bias[:, None, None])
    assert not torch.allclose(want_diff, torch.maximum(*(static_difference(target, r) for r in refs))) \
        or kind == "bhattacharyya"


# --- Pipeline 2: SSEA --------------------------------------------------------------------------

def ssea_by_loops(ssea: SSEA, feats):
    """SSEA per pixel: a softmax over the four levels from the gate, then a softmax over the
    pooled scales of q·key / sqrt(C) and the weighted sum of the scales' contexts."""
    grid = feats[1].shape[2:]
    up = lambda t: F.interpolate(t, size=grid, mode="bilinear", align_corners=False)  # noqa: E731
    levels = []
    for i, (proj, f) in enumerate(zip(ssea.level_proj, feats)):  # resampling to the stride-8 grid
        f = F.adaptive_avg_pool2d(f, grid) if i == 0 else f  # the stride-4 map is averaged down
        lv = proj(f).double()
        levels.append(lv if lv.shape[2:] == grid else up(lv))
    b_, c, h, w = levels[0].shape
    gate_w = ssea.level_gate.weight.double()[:, :, 0, 0]
    gate_b = ssea.level_gate.bias.double()
    x = torch.zeros(b_, c, h, w, dtype=torch.float64)
    for b in range(b_):
        for y in range(h):
            for xx in range(w):
                z = torch.cat([lv[b, :, y, xx] for lv in levels])
                e = torch.exp(gate_w @ z + gate_b)
                x[b, :, y, xx] = sum(e[i] / e.sum() * lv[b, :, y, xx] for i, lv in enumerate(levels))
    contexts = [up(F.adaptive_avg_pool2d(x, s)) for s in ssea.pool_scales]  # (B, C, h, w) each
    wq, bq = ssea.scale_query.weight.double()[:, :, 0, 0], ssea.scale_query.bias.double()
    wk, bk = ssea.scale_key.weight.double()[:, :, 0, 0], ssea.scale_key.bias.double()
    context = torch.zeros_like(x)
    for b in range(b_):
        for y in range(h):
            for xx in range(w):
                q = wq @ x[b, :, y, xx] + bq
                logits = torch.stack([q @ (wk @ ctx[b, :, y, xx] + bk) / math.sqrt(c) for ctx in contexts])
                a = logits.softmax(0)
                context[b, :, y, xx] = sum(a[i] * ctx[b, :, y, xx] for i, ctx in enumerate(contexts))
    static = ssea.fuse.double()(torch.cat([x, context], 1))
    return static, ssea.classifier.double()(static)


@pytest.mark.parametrize("size,dtype", [((12, 12), torch.float32), ((4, 40), torch.float32),
                                        ((40, 4), torch.float32), ((8, 8), torch.float64)])
def test_ssea_level_gate_and_scale_attention_equal_a_loop_formulation(size, dtype):
    """Pipeline 2: multi-level (per-pixel softmax over the levels) then multi-scale (per-pixel
    attention to the frame pooled on grids 1, 2, 4), on tiny maps at strides 4, 8, 16, 32 of
    square, wide and tall frames (only the stride-4 map is finer than the grid)."""
    torch.manual_seed(0)
    ssea = SSEA((3, 5, 6, 7), dim=4, num_classes=3, pool_scales=(1, 2, 4)).eval().to(dtype)
    h, w = size
    feats = tuple(torch.randn(2, c, max(1, h // f), max(1, w // f), dtype=dtype)
                  for c, f in zip((3, 5, 6, 7), (1, 2, 4, 8)))
    static, logits = ssea(feats)
    want_static, want_logits = ssea_by_loops(ssea, feats)
    torch.testing.assert_close(static.double(), want_static, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(logits.double(), want_logits, atol=1e-5, rtol=1e-5)


def test_ssea_fuse_is_conv_without_bias_batchnorm_relu():
    """Pipeline 2: S = ReLU(BN(Conv1×1(cat(levels mixed, context)))), the SegFormer fuse block."""
    ssea = SSEA((3, 5, 6, 7), dim=4, num_classes=3)
    conv, bn, relu = ssea.fuse
    assert (conv.in_channels, conv.out_channels, conv.kernel_size, conv.bias) == (8, 4, (1, 1), None)
    assert isinstance(bn, torch.nn.BatchNorm2d) and isinstance(relu, torch.nn.ReLU)


# --- Pipeline 6: MCP-CL ----------------------------------------------------------------------------

def info_nce_by_loops(feats, labels, protos, initialized, tau):
    """Per pixel: -log(exp(pos) / (exp(pos) + Σ exp(neg))) with pos = the NEAREST own prototype
    and neg = every prototype of every other initialised class; mean over pixels."""
    losses = []
    for f, y in zip(feats, labels):
        f = f / np.linalg.norm(f)
        pos = max(f @ p for p in protos[y]) / tau
        negs = [f @ p / tau for c in range(len(protos)) if c != y and initialized[c] for p in protos[c]]
        losses.append(-pos + math.log(math.exp(pos) + sum(math.exp(n) for n in negs)))
    return float(np.mean(losses))


@pytest.mark.parametrize("tau", [0.1, 0.5])
def test_mcp_cl_loss_pulls_to_the_nearest_own_prototype_and_pushes_other_classes(tau):
    """Pipeline 6: the InfoNCE of each pixel against its nearest own prototype (positive) and all
    prototypes of the other initialised classes (negatives), temperature τ. Class 2 has no
    prototypes yet and is no negative."""
    crit = MCPContrastiveLoss(num_classes=3, feat_dim=2, prototypes_per_class=2, momentum=1.0,
                              temperature=tau)
    protos = np.array([[[1.0, 0.0], [0.0, 1.0]], [[-1.0, 0.0], [0.0, -1.0]], [[0.0, 0.0], [0.0, 0.0]]])
    crit.prototypes.copy_(torch.tensor(protos, dtype=torch.float32))
    crit.initialized.copy_(torch.tensor([True, True, False]))
    feats = np.array([[1.0, 0.2], [0.3, 1.0], [0.3, -1.0], [-1.0, 0.6]])
    labels = [0, 0, 1, 1]
    loss = crit(torch.tensor(feats, dtype=torch.float32).T.reshape(1, 2, 1, 4), torch.tensor([[labels]]))
    want = info_nce_by_loops(feats, labels, protos, [True, True, False], tau)
    assert loss.item() == pytest.approx(want, rel=1e-5)
    if tau == 0.1:  # the hand value of pixel 0: pos = cos(0, 11.3°) / 0.1, negs -9.81 and -1.96
        f = np.array([1.0, 0.2]) / math.hypot(1.0, 0.2)
        first = -f[0] / tau + math.log(math.exp(f[0] / tau) + math.exp(-f[0] / tau) + math.exp(-f[1] / tau))
        assert info_nce_by_loops(feats[:1], labels[:1], protos, [True, True, False], tau) == pytest.approx(first)


def test_dssa_defaults_are_the_spec_values():
    """Pipeline 4: the coarse stage on the stride-32 grid (the stride-8 feature pooled by 4); the
    fine stage selects 25 % and attends in a 9×9 window, dilation 1. The modules and the model
    config agree."""
    dssa, config = DSSA(8), SDCPCConfig()
    assert (dssa.fine.window, dssa.fine.dilation, dssa.fine.selection_ratio) == (9, 1, 0.25)
    assert (config.window, config.dilation, config.selection_ratio) == (9, 1, 0.25)
    assert dssa.coarse.pool == 4
    fine = WindowCrossFrameAttention(8)
    assert (fine.window, fine.dilation, fine.selection_ratio) == (9, 1, 0.25)


def test_mcp_cl_defaults_are_the_spec_values():
    """Pipeline 6: K = 4 prototypes per class, momentum 0.99, temperature 0.1 (and the project's
    own bounds: 1024 sampled pixels per class, 5 k-means iterations, ignore id 255)."""
    crit = MCPContrastiveLoss(num_classes=2, feat_dim=3)
    assert (crit.prototypes_per_class, crit.momentum, crit.temperature) == (4, 0.99, 0.1)
    assert (crit.max_pixels_per_class, crit.kmeans_iters, crit.ignore_index) == (1024, 5, 255)
    assert crit.prototypes.shape == (2, 4, 3)
    assert "num_classes=2, feat_dim=3, prototypes_per_class=4" in repr(crit)


def _bank(tau=0.1, **kw):
    """Three classes with two fixed prototypes each (momentum 1: the bank does not move)."""
    crit = MCPContrastiveLoss(num_classes=3, feat_dim=2, prototypes_per_class=2, momentum=1.0,
                              temperature=tau, **kw)
    protos = np.array([[[1.0, 0.0], [0.0, 1.0]], [[-1.0, 0.0], [0.0, -1.0]], [[0.6, -0.8], [-0.8, 0.6]]])
    crit.prototypes.copy_(torch.tensor(protos, dtype=torch.float32))
    crit.initialized.fill_(True)
    return crit, protos


def test_mcp_cl_one_anchor_and_ignored_labels():
    """Pipeline 6: a single anchor pixel gives its own InfoNCE; labels equal to ignore_index or
    outside [0, classes) are no anchors (ignore_index inside the class range included)."""
    crit, protos = _bank()
    f = np.array([[0.3, 0.9]])
    loss = crit(torch.tensor(f, dtype=torch.float32).view(1, 2, 1, 1), torch.tensor([[[2]]]))
    assert loss.item() == pytest.approx(info_nce_by_loops(f, [2], protos, [True] * 3, 0.1), rel=1e-4, abs=1e-6)
    crit, protos = _bank(ignore_index=1)
    feats = np.array([[0.3, 0.9], [1.0, 0.1], [0.2, -1.0], [0.5, 0.5]])
    labels = torch.tensor([[[0, 1, 3, -1]]])  # 1 is the ignore id here; 3 and -1 are no classes
    loss = crit(torch.tensor(feats, dtype=torch.float32).T.reshape(1, 2, 1, 4), labels)
    assert loss.item() == pytest.approx(info_nce_by_loops(feats[:1], [0], protos, [True] * 3, 0.1), rel=1e-4, abs=1e-6)


def test_mcp_cl_samples_a_random_subset_of_a_large_class():
    """Pipeline 6 (bounded cost): a class with more pixels than max_pixels_per_class contributes a
    random sample of them, not the first ones."""
    crit = MCPContrastiveLoss(num_classes=1, feat_dim=2, max_pixels_per_class=4)
    picks = set()
    for seed in range(5):
        torch.manual_seed(seed)
        index, _ = crit._sample(torch.zeros(100, dtype=torch.long))
        assert index.numel() == 4 and len(set(index.tolist())) == 4
        picks.add(tuple(sorted(index.tolist())))
    assert len(picks) > 1 and (0, 1, 2, 3) not in picks


def test_mcp_cl_prediction_variant_anchors_are_the_wrong_pixels_first():
    """Pipeline 6, prediction-based variant: with a budget of one anchor per class, the anchor
    is the wrongly predicted pixel, so the loss is that pixel's InfoNCE alone."""
    crit, protos = _bank(pixels="prediction", max_pixels_per_class=1)
    feats = np.array([[1.0, 0.1], [0.9, 0.2], [0.2, 1.0], [1.0, -0.1]])
    labels = torch.tensor([[[0, 0, 0, 0]]])
    predicted = torch.tensor([[[0, 0, 1, 0]]])  # pixel 2 is the wrong one
    for _ in range(3):  # whatever the random order within the groups
        loss = crit(torch.tensor(feats, dtype=torch.float32).T.reshape(1, 2, 1, 4), labels, predicted)
        assert loss.item() == pytest.approx(info_nce_by_loops(feats[2:3], [0], protos, [True] * 3, 0.1),
                                            rel=1e-4, abs=1e-6)
    with pytest.raises(ValueError, match='^MCP-CL with pixels="prediction" needs the predicted classes$'):
        crit(torch.zeros(1, 2, 1, 4), labels)


def test_mcp_cl_momentum_update_by_hand():
    """Pipeline 6: p <- normalise(0.99 p + 0.01 c) for the slot a batch cluster refines; a slot
    that receives no pixel keeps its prototype."""
    crit = MCPContrastiveLoss(num_classes=1, feat_dim=2, prototypes_per_class=2)
    crit.prototypes.copy_(torch.tensor([[[1.0, 0.0], [0.0, 1.0]]]))
    crit.initialized.fill_(True)
    x = np.array([0.8, -0.6])  # unit, nearest to slot 0
    crit(torch.tensor(x, dtype=torch.float32).view(1, 2, 1, 1), torch.zeros(1, 1, 1, dtype=torch.long))
    p0 = 0.99 * np.array([1.0, 0.0]) + 0.01 * x
    torch.testing.assert_close(crit.prototypes[0, 0].double(), torch.tensor(p0 / np.linalg.norm(p0)))
    torch.testing.assert_close(crit.prototypes[0, 1], torch.tensor([0.0, 1.0]))


def test_spherical_kmeans_equals_a_loop():
    """Pipeline 6: spherical k-means = assign each unit point to the most similar centre, the new
    centre is the normalised sum of its points (an empty cluster keeps its centre)."""
    g = torch.Generator().manual_seed(3)
    x = F.normalize(torch.randn(40, 3, generator=g), dim=1)
    init = F.normalize(torch.randn(4, 3, generator=g), dim=1)
    init[3] = -init[2]  # likely empty after the first step on some seeds; either way the loop agrees
    got = spherical_kmeans(x, init, iters=3)
    c = init.double().numpy()
    pts = x.double().numpy()
    for _ in range(3):
        sums = np.zeros_like(c)
        count = [0] * len(c)
        for p in pts:
            j = int(np.argmax([p @ cc for cc in c]))
            sums[j] += p
            count[j] += 1
        c = np.array([s / np.linalg.norm(s) if n else cc for s, n, cc in zip(sums, count, c)])
    np.testing.assert_allclose(got.numpy(), c, atol=1e-5)


def test_kmeans_initialisation_is_farthest_first(monkeypatch):
    """Pipeline 6: seeds = a random first point, then each next point the one least similar to
    all chosen seeds (points on the unit circle at 0°, 10°, 90°, 180°, 185°)."""
    deg = torch.tensor([0.0, 10.0, 90.0, 180.0, 185.0]) * math.pi / 180
    x = torch.stack([deg.cos(), deg.sin()], 1)
    monkeypatch.setattr(mcp_cl.torch, "randint", lambda n, size: torch.tensor([0]))
    # from 0°: 180° (cos -1) before 185°; then 90° (max similarity 0) before 10° (0.98), 185° (0.996)
    torch.testing.assert_close(farthest_point_init(x, 3), x[[0, 3, 2]])
    monkeypatch.setattr(mcp_cl.torch, "randint", lambda n, size: torch.tensor([2]))
    # from 90°: 185° (cos 95° < 0); then 0° (max(cos 90°, cos 185°) = 0 < 0.17 for 10°, 0.996
    # for 180°); then 10° (0.985 < 0.996)
    torch.testing.assert_close(farthest_point_init(x, 4), x[[2, 4, 0, 1]])


def _ddp_rank(rank, store, feats, labels, out):
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=2)
    torch.manual_seed(rank)  # as the trainer does: every rank draws different k-means seeds
    crit = MCPContrastiveLoss(num_classes=3, feat_dim=4, prototypes_per_class=2, momentum=0.5)
    crit(feats[rank][0], labels[rank][0])
    first = crit.prototypes.clone()
    crit(feats[rank][1], labels[rank][1])
    torch.save({"first": first, "second": crit.prototypes.clone()}, f"{out}/rank{rank}.pt")
    dist.destroy_process_group()


def test_mcp_cl_first_initialisation_is_identical_on_all_ranks():
    """Pipeline 6 under DDP: a class's first prototypes come from the lowest rank that sees it
    (slots of two ranks' k-means do not correspond, so averaging them would blur the modes);
    later batches average the centres of corresponding slots."""
    g = torch.Generator().manual_seed(0)
    modes = F.normalize(torch.randn(6, 4, generator=g), dim=1)  # two modes per class
    labels = [[torch.tensor([[[0, 0, 1, 1, 0, 0, 1, 1]]]), torch.tensor([[[0, 1, 2, 0, 1, 2, 0, 1]]])],
              [torch.tensor([[[1, 1, 2, 2, 1, 1, 2, 2]]]), torch.tensor([[[2, 1, 0, 2, 1, 0, 2, 1]]])]]
    feats = [[F.normalize(modes[2 * lab.flatten() + torch.arange(8) % 2]
                          + 0.1 * torch.randn(8, 4, generator=g), dim=1).T.reshape(1, 4, 1, 8)
              for lab in pair] for pair in labels]
    with tempfile.TemporaryDirectory() as tmp:
        os.environ.setdefault("OMP_NUM_THREADS", "1")
        mp.spawn(_ddp_rank, args=(f"{tmp}/store", feats, labels, tmp), nprocs=2, join=True)
        r0, r1 = (torch.load(f"{tmp}/rank{r}.pt", weights_only=True) for r in (0, 1))
    torch.testing.assert_close(r0["first"], r1["first"], rtol=0, atol=0)
    torch.testing.assert_close(r0["second"], r1["second"], rtol=0, atol=0)

    def alone(seed, f, lab):
        torch.manual_seed(seed)
        crit = MCPContrastiveLoss(num_classes=3, feat_dim=4, prototypes_per_class=2, momentum=0.5)
        crit(f, lab)
        return crit.prototypes

    # classes 0 and 1: rank 0's own k-means; class 2 (only on rank 1): rank 1's
    from_rank0 = alone(0, feats[0][0], labels[0][0])
    torch.testing.assert_close(r0["first"][:2], from_rank0[:2])
    class2 = labels[1][0] == 2
    from_rank1 = alone(1, feats[1][0][..., class2[0, 0]], labels[1][0][class2].view(1, 1, -1))
    torch.testing.assert_close(r0["first"][2], from_rank1[2])


# --- Training protocol: weight decay groups -------------------------------------------------------

def test_no_weight_decay_exactly_on_norms_and_position_blocks():
    """Training protocol: AdamW weight decay 0.01 except on normalisation layers (LayerNorm,
    BatchNorm, GroupNorm; weight and bias) and position blocks; biases of convs and linears decay."""
    model = build_model(SDCPCConfig(variant="b0", num_classes=5, embed_dim=16, window=3))
    names = {id(p): n for n, p in model.named_parameters()}
    decay = {names[id(p)]: g["weight_decay"] for g in model.param_groups(1e-4, 0.01) for p in g["params"]}
    for name in ("backbone.norm1.weight", "backbone.block1.0.norm2.bias", "backbone.patch_embed1.norm.weight",
                 "backbone.block1.0.attn.norm.weight", "decode_head.linear_fuse.bn.weight",
                 "ssea.fuse.1.bias", "dssa.norm.weight"):
        assert decay[name] == 0.0, name
    for name in ("backbone.block1.0.attn.q.weight", "backbone.block1.0.attn.q.bias",
                 "backbone.block1.0.mlp.dwconv.dwconv.bias", "decode_head.linear_c4.proj.bias",
                 "ssea.level_gate.bias", "dssa.fine.query.weight", "temporal_proj.bias"):
        assert decay[name] == 0.01, name
    assert len(decay) == len(list(model.parameters()))
