"""MiT / SegFormer head / SD-CPC: shapes, published key layout, gradients, determinism."""

import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from sdcpc_core.models import SDCPC, SDCPCConfig, SegFormer, build_model, static_difference
from sdcpc_core.models.temporal import FrameCache, difference_basis

SPEC_KEYS = Path(__file__).resolve().parents[1] / "data" / "segformer_state_dict_keys.json"

PUBLISHED = json.load(open(SPEC_KEYS))


def tiny(**kw):
    base = dict(variant="b0", num_classes=5, embed_dim=32, reference_offsets=(-2, -1), window=3,
                drop_path_rate=0.0)
    base.update(kw)
    return SDCPCConfig(**base)


@pytest.mark.parametrize("variant", ["b0", "b1", "b2"])
def test_segformer_state_dict_matches_published_layout(variant):
    model = SegFormer(SDCPCConfig(variant=variant, num_classes=19, temporal=False))
    ours = {k: list(v.shape) for k, v in model.state_dict().items()}
    published = {k: v for k, v in PUBLISHED[variant].items() if not k.startswith("decode_head.conv_seg")}
    assert set(ours) == set(published)
    assert {k: ours[k] for k in published} == published


def test_sdcpc_contains_segformer_layout_plus_temporal_modules():
    model = SDCPC(SDCPCConfig(variant="b0", num_classes=19))
    keys = set(model.state_dict())
    published = {k for k in PUBLISHED["b0"] if not k.startswith("decode_head.conv_seg")}
    assert published <= keys
    assert {k.split(".")[0] for k in keys - published} == {"ssea", "dssa", "temporal_proj"}


def test_output_shapes_at_odd_size():
    model = build_model(tiny()).eval()
    out = model(torch.randn(2, 3, 3, 72, 100))
    assert out["logits"].shape == (2, 5, 18, 25)
    assert out["static_logits"].shape == (2, 5, 9, 13)
    assert out["embedding"].shape == (2, 32, 9, 13)
    assert out["difference"].min() >= 0 and out["difference"].max() <= 1


def test_fresh_sdcpc_equals_its_segformer():
    """temporal_proj starts at zero: SD-CPC computes exactly the per-frame model's logits."""
    sd = build_model(tiny()).eval()
    base = build_model(tiny(temporal=False)).eval()
    base.load_state_dict({k: v for k, v in sd.state_dict().items() if k in base.state_dict()})
    x = torch.randn(1, 3, 3, 64, 64)
    torch.testing.assert_close(sd(x)["logits"], base(x)["logits"])


def test_gradients_reach_every_parameter():
    model = build_model(tiny(selection_ratio=0.5)).train()
    torch.nn.init.normal_(model.temporal_proj.weight, std=0.1)  # open the zero gate
    out = model(torch.randn(2, 3, 3, 64, 64))
    (out["logits"].square().mean() + out["static_logits"].square().mean()).backward()
    dead = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert dead == []


def test_temporal_context_changes_output_and_uses_references():
    model = build_model(tiny()).eval()
    torch.nn.init.normal_(model.temporal_proj.weight, std=0.5)
    x = torch.randn(1, 3, 3, 64, 64)
    y = x.clone()
    y[:, 0] = torch.randn(3, 64, 64)  # change only the oldest reference
    assert not torch.allclose(model(x)["logits"], model(y)["logits"])


def test_deterministic_in_eval():
    model = build_model(tiny()).eval()
    x = torch.randn(1, 3, 3, 64, 64)
    torch.testing.assert_close(model(x)["logits"], model(x)["logits"], rtol=0, atol=0)


def test_static_difference_bounds_and_identity():
    logits = torch.randn(1, 4, 5, 5)
    a = FrameCache((), torch.randn(1, 8, 5, 5), logits)
    b = FrameCache((), torch.randn(1, 8, 5, 5), torch.randn(1, 4, 5, 5))
    for kind in ("bhattacharyya", "cosine", "argmax"):
        same = static_difference(a, a, kind)
        assert same.shape == (1, 1, 5, 5)
        assert same.abs().max() < 1e-5
        d = static_difference(a, b, kind)
        assert 0 <= d.min() and d.max() <= 1


@pytest.mark.parametrize("bad, message", [
    (dict(variant="b9"), "variant"), (dict(window=4), "window must be odd"),
    (dict(reference_offsets=(0, -1)), "must not contain 0"), (dict(selection_ratio=0.0), "selection_ratio"),
    (dict(difference="l2"), "difference")])
def test_config_errors_name_the_field(bad, message):
    with pytest.raises(ValueError, match=message):
        tiny(**bad)


def test_config_round_trip():
    cfg = tiny()
    assert SDCPCConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match="unknown SDCPCConfig fields"):
        SDCPCConfig.from_dict({**cfg.to_dict(), "bogus": 1})


def test_param_groups_head_lr_and_no_decay():
    model = build_model(tiny())
    groups = model.param_groups(lr=1e-4, weight_decay=0.01)
    names = {id(p): n for n, p in model.named_parameters()}
    for g in groups:
        for p in g["params"]:
            name = names[id(p)]
            assert g["lr"] == pytest.approx(1e-4 if name.startswith("backbone.") else 1e-3)
            is_norm = "norm" in name or ".bn." in name or name.startswith("ssea.fuse.1.")
            assert g["weight_decay"] == (0.0 if is_norm else 0.01), name
    assert sum(len(g["params"]) for g in groups) == len(list(model.parameters()))


def test_reference_grad_off_same_output_no_grad_through_references():
    model = build_model(tiny()).eval()
    torch.nn.init.normal_(model.temporal_proj.weight, std=0.1)
    x = torch.randn(1, 3, 3, 64, 64, requires_grad=True)
    full = model(x)["logits"]
    cheap = model(x, reference_grad=False)["logits"]
    torch.testing.assert_close(full, cheap, atol=1e-5, rtol=1e-5)
    cheap.sum().backward()
    assert x.grad[:, :-1].abs().sum() == 0 and x.grad[:, -1].abs().sum() > 0
    for layer in (model.dssa.fine.key, model.dssa.fine.value,  # reference projections still learn
                  model.dssa.coarse.key, model.dssa.coarse.value):
        assert layer.weight.grad is not None and layer.weight.grad.abs().sum() > 0


def test_cached_reference_projections_equal_recomputed_ones():
    model = build_model(tiny()).eval()
    torch.nn.init.normal_(model.temporal_proj.weight, std=0.1)
    frames = torch.randn(3, 1, 3, 64, 64)
    with torch.no_grad():
        caches = [model.encode(f) for f in frames]
        cached = model.forward_cached(caches[-1], caches[:-1])["logits"]
        summary = ("basis", "proto_keys", "proto_values", "proto_bias")
        bare = [c._replace(**dict.fromkeys(summary)) for c in caches]
        recomputed = model.forward_cached(bare[-1], bare[:-1])["logits"]
    assert all(getattr(c, f) is not None for c in caches for f in summary)
    torch.testing.assert_close(cached, recomputed)


@pytest.mark.parametrize("difference", ["bhattacharyya", "cosine", "argmax"])
def test_cached_difference_basis_equals_direct_definition(difference):
    """static_difference from the cached bases equals its definition on the static perceptions."""
    model = build_model(tiny(difference=difference)).eval()
    with torch.no_grad():
        a, b = (model.encode(torch.randn(1, 3, 64, 64)) for _ in range(2))
        got = static_difference(a, b, difference)
        p, q = a.static_logits.softmax(1), b.static_logits.softmax(1)
        want = {"bhattacharyya": 1 - (p * q).sqrt().sum(1, keepdim=True),
                "cosine": (1 - F.cosine_similarity(a.static, b.static, dim=1).unsqueeze(1)) / 2,
                "argmax": (p.argmax(1, keepdim=True) != q.argmax(1, keepdim=True)).float()}[difference]
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)
    # a cache restored from an exported graph carries the basis but no static logits
    restored = [c._replace(static_logits=None) for c in (a, b)]
    torch.testing.assert_close(static_difference(*restored, difference), got, atol=0, rtol=0)
    with pytest.raises(ValueError, match="unknown difference kind 'hamming'.*bhattacharyya"):
        difference_basis(a.static, a.static_logits, "hamming")


def test_folded_class_context_equals_projection_then_classifier():
    """In eval the temporal context enters as ``(linear_pred ∘ temporal_proj)`` at stride 8, then
    upsampled (K channels); training keeps the published order (project, upsample, add, dropout,
    classify). Both give the same logits without dropout."""
    model = build_model(tiny()).eval()
    torch.nn.init.normal_(model.temporal_proj.weight, std=0.1)
    torch.nn.init.normal_(model.temporal_proj.bias, std=0.1)
    with torch.no_grad():
        caches = [model.encode(torch.randn(1, 3, 64, 64)) for _ in range(3)]
        out = model.forward_cached(caches[-1], caches[:-1])
        fused = model.decode_head.fuse(list(caches[-1].features))
        context = F.interpolate(model.temporal_proj(out["embedding"]), size=fused.shape[2:],
                                mode="bilinear", align_corners=False)
        want = model.decode_head.linear_pred(fused + context)
    assert context.abs().amax() > 0.1  # the context really moves the logits
    torch.testing.assert_close(out["logits"], want, atol=1e-5, rtol=1e-5)


def _fuse_in_published_order(head, features):
    """The SegFormer head's fuse as published (project, upsample, concatenate, fuse conv): the
    definition the folded ``SegFormerHead.fuse`` is tested against."""
    size = features[0].shape[2:]
    maps = []
    for i in (4, 3, 2, 1):
        f = features[i - 1]
        b, _, h, w = f.shape
        x = getattr(head, f"linear_c{i}")(f).transpose(1, 2).reshape(b, -1, h, w)
        if (h, w) != tuple(size):
            x = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
        maps.append(x)
    return head.linear_fuse(torch.cat(maps, dim=1))


@pytest.mark.parametrize("train", [False, True])
def test_head_fuse_equals_published_order_of_operations(train):
    """The folded fuse (project+fuse at each map's own stride, then upsample and sum) computes
    what the published head computes (project, upsample, concatenate, fuse), gradients included."""
    torch.manual_seed(0)
    model = SegFormer(SDCPCConfig(variant="b0", num_classes=7)).train(train)
    head = model.decode_head
    with torch.no_grad():  # non-trivial BN statistics and biases
        head.linear_fuse.bn.running_mean.normal_()
        head.linear_fuse.bn.running_var.uniform_(0.5, 2.0)
        for i in (1, 2, 3, 4):
            getattr(head, f"linear_c{i}").proj.bias.normal_()
    feats = [f.detach().requires_grad_() for f in model.backbone(torch.randn(2, 3, 70, 94))]
    fast, slow = head.fuse(feats), _fuse_in_published_order(head, feats)
    assert fast.shape == slow.shape == (2, 256, 18, 24)
    torch.testing.assert_close(fast, slow, rtol=1e-4, atol=1e-4)
    g_fast = torch.autograd.grad(fast.square().sum(), [*feats, head.linear_c4.proj.weight])
    g_slow = torch.autograd.grad(slow.square().sum(), [*feats, head.linear_c4.proj.weight])
    for a, b in zip(g_fast, g_slow):  # fp32 rounding grows with the gradient's scale (~190 here)
        torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-5 * float(b.abs().max()))


def _ssea_by_upsampling(ssea, features):
    """SSEA's scale attention as first written: upsample every pooled grid and its keys to the
    stride-8 grid, then attend per pixel (the definition the matrix form is tested against)."""
    grid = features[1].shape[2:]
    up = lambda t: F.interpolate(t, size=grid, mode="bilinear", align_corners=False)  # noqa: E731
    levels = []
    for proj, f in zip(ssea.level_proj, features):
        x = proj(F.adaptive_avg_pool2d(f, grid)) if f.shape[2] > grid[0] else proj(f)
        levels.append(x if x.shape[2:] == grid else up(x))
    weights = ssea.level_gate(torch.cat(levels, 1)).softmax(1)
    x = sum(weights[:, i: i + 1] * lv for i, lv in enumerate(levels))
    pooled = [F.adaptive_avg_pool2d(x, s) for s in ssea.pool_scales]
    contexts = torch.stack([up(p) for p in pooled], 1)  # (B, S, C, h, w)
    keys = torch.stack([up(ssea.scale_key(p)) for p in pooled], 1)
    q = ssea.scale_query(x).unsqueeze(1)
    scale_w = (q * keys).sum(2, keepdim=True).div(math.sqrt(ssea.dim)).softmax(1)
    static = ssea.fuse(torch.cat([x, (scale_w * contexts).sum(1)], 1))
    return static, ssea.classifier(static)


@pytest.mark.parametrize("size", [(64, 64), (70, 94), (32, 40)])
def test_ssea_scale_attention_equals_attending_to_upsampled_grids(size):
    torch.manual_seed(0)
    model = SDCPC(SDCPCConfig(variant="b0", num_classes=5, embed_dim=32)).eval()
    feats = tuple(model.backbone(torch.randn(2, 3, *size)))
    static, logits = model.ssea(feats)
    want_static, want_logits = _ssea_by_upsampling(model.ssea, feats)
    torch.testing.assert_close(static, want_static, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(logits, want_logits, rtol=1e-4, atol=1e-5)


def test_selection_ignores_rounding_noise_and_breaks_ties_by_position():
    from sdcpc_core.models.temporal import WindowCrossFrameAttention

    fine = WindowCrossFrameAttention(8, window=3, selection_ratio=0.25)
    noise = (torch.rand(2, 1, 4, 5) - 0.5) * 2e-7  # a frame compared with itself: 1 - Σp ≈ ±1e-7
    assert fine.select(noise).tolist() == [[0, 1, 2, 3, 4]] * 2  # all ties: the first locations
    binary = torch.zeros(1, 1, 4, 5)
    binary[0, 0, 2:, :] = 1.0  # "argmax"-like differences: ten tied 1s for five places
    assert fine.select(binary).tolist() == [[10, 11, 12, 13, 14]]
    binary[0, 0, 0, 1] = 2.0
    assert fine.select(binary).tolist() == [[1, 10, 11, 12, 13]]


@pytest.mark.parametrize("shape,size", [((2, 5, 60, 60), (8, 8)), ((1, 3, 61, 47), (4, 4)),
                                        ((1, 3, 60, 60), (4, 4)), ((1, 2, 9, 13), (8, 8))])
def test_average_pool_equals_adaptive_pooling(shape, size):
    """SSEA's pooling (a plain pool where sizes divide, two bin matrices where not) is adaptive
    average pooling, bins and all."""
    from sdcpc_core.models.temporal import _average_pool

    x = torch.randn(shape, dtype=torch.float64)
    torch.testing.assert_close(_average_pool(x, size), F.adaptive_avg_pool2d(x, size), atol=1e-12, rtol=0)
