"""Our checkpoint format round trip; published MiT/SegFormer loading; refusals that explain."""

import json
import pickle
import re
from pathlib import Path

import pytest
import torch

from sdcpc_core.checkpoints import CheckpointError, detect_variant, load_checkpoint, load_pretrained, save_checkpoint
from sdcpc_core.classes import LabelSet
from sdcpc_core.models import SDCPCConfig, build_model

PUBLISHED = json.load(open(Path(__file__).resolve().parents[1] / "data" / "segformer_state_dict_keys.json"))


def tiny(**kw):
    return SDCPCConfig(**{**dict(variant="b0", num_classes=4, embed_dim=16, reference_offsets=(-1,),
                                 window=3), **kw})


def labels(n=4):
    return LabelSet.from_names(["road", "wall", "person", "car"][:n])


def published_file(tmp_path, variant="b0", classes=19, prefix=True, wrap=True):
    """A file with exactly the published key layout and shapes, random values."""
    state = {}
    for k, shape in PUBLISHED[variant].items():
        shape = list(shape)
        if k.startswith(("decode_head.linear_pred", "decode_head.conv_seg")):
            shape[0] = classes
        state[k] = torch.rand(shape) + 0.5 if k.endswith("running_var") else (
            0.05 * torch.randn(shape) if shape else torch.tensor(0))
    if not prefix:  # ImageNet mit_b*.pth: encoder keys without prefix + a classifier head
        state = {k[len("backbone."):]: v for k, v in state.items() if k.startswith("backbone.")}
        state["head.weight"] = torch.randn(1000, PUBLISHED[variant]["backbone.norm4.weight"][0])
    obj = {"state_dict": state, "meta": {"CLASSES": list(range(classes))}} if wrap else state
    path = tmp_path / f"{variant}.pth"
    torch.save(obj, path)
    return path, state


def test_round_trip_same_outputs(tmp_path):
    model = build_model(tiny()).eval()
    torch.nn.init.normal_(model.temporal_proj.weight, std=0.1)
    path = save_checkpoint(tmp_path / "m.pt", model, model.config, labels(), training={"iters": 3})
    loaded, meta = load_checkpoint(path)
    assert meta["config"] == model.config and meta["labels"].names == labels().names
    assert meta["training"] == {"iters": 3}
    x = torch.randn(1, 2, 3, 64, 64)
    torch.testing.assert_close(loaded(x)["logits"], model(x)["logits"])


def test_half_storage_is_smaller_and_close(tmp_path):
    model = build_model(tiny()).eval()
    full = save_checkpoint(tmp_path / "f.pt", model, model.config, labels())
    half = save_checkpoint(tmp_path / "h.pt", model, model.config, labels(), half=True)
    assert half.stat().st_size < 0.6 * full.stat().st_size
    loaded, _ = load_checkpoint(half)
    x = torch.randn(1, 2, 3, 64, 64)
    torch.testing.assert_close(loaded(x)["logits"], model(x)["logits"], atol=2e-2, rtol=2e-2)


@pytest.mark.parametrize("variant", ["b0", "b1", "b2"])
def test_published_segformer_loads_into_both_models(tmp_path, variant):
    path, state = published_file(tmp_path, variant)
    for temporal in (False, True):
        model = build_model(SDCPCConfig(variant=variant, num_classes=19, temporal=temporal))
        report = load_pretrained(model, path)
        assert report["loaded"] == ["backbone", "decode_head"] and report["variant"] == variant
        assert any(k.startswith("decode_head.conv_seg") for k in report["ignored_keys"])
        torch.testing.assert_close(model.backbone.block1[0].attn.q.weight,
                                   state["backbone.block1.0.attn.q.weight"])
        torch.testing.assert_close(model.decode_head.linear_pred.weight, state["decode_head.linear_pred.weight"])


def test_sdcpc_from_segformer_starts_as_the_per_frame_model(tmp_path):
    path, _ = published_file(tmp_path, "b0")
    sd, base = (build_model(SDCPCConfig(num_classes=19, temporal=t)).eval() for t in (True, False))
    load_pretrained(sd, path)
    load_pretrained(base, path)
    x = torch.randn(1, 4, 3, 64, 64)
    torch.testing.assert_close(sd(x)["logits"], base(x)["logits"])


def test_imagenet_mit_loads_backbone_only(tmp_path):
    path, state = published_file(tmp_path, "b1", prefix=False, wrap=False)
    assert detect_variant(state) == "b1"
    model = build_model(SDCPCConfig(variant="b1", num_classes=7))
    report = load_pretrained(model, path)
    assert report["loaded"] == ["backbone"] and "head.weight" in report["ignored_keys"]
    torch.testing.assert_close(model.backbone.norm4.weight, state["norm4.weight"])


def test_wrong_variant_names_shapes_and_fix(tmp_path):
    path, _ = published_file(tmp_path, "b1")
    model = build_model(SDCPCConfig(variant="b0", num_classes=19))
    with pytest.raises(CheckpointError) as e:
        load_pretrained(model, path)
    msg = str(e.value)
    assert re.search(r"expected \(32[,)].*, found \(64[,)]", msg) and "variant='b1'" in msg


def test_wrong_class_count_names_it(tmp_path):
    path, _ = published_file(tmp_path, "b0", classes=150)
    model = build_model(SDCPCConfig(variant="b0", num_classes=19))
    with pytest.raises(CheckpointError, match="150 classes.*num_classes=150"):
        load_pretrained(model, path)
    assert load_pretrained(model, path, load_head=False)["loaded"] == ["backbone"]


def test_refuses_pickle_payload(tmp_path):
    path = tmp_path / "evil.pt"

    class Payload:
        def __reduce__(self):
            return (print, ("pwned",))

    with open(path, "wb") as f:
        pickle.dump({"state_dict": Payload()}, f)
    with pytest.raises(CheckpointError, match="not a readable PyTorch checkpoint|refusing to load"):
        load_checkpoint(path)
    torch.save({"x": Payload()}, tmp_path / "evil2.pt")
    with pytest.raises(CheckpointError, match="refusing to load"):
        load_checkpoint(tmp_path / "evil2.pt")


def test_truncated_and_missing_files(tmp_path):
    model = build_model(tiny())
    path = save_checkpoint(tmp_path / "m.pt", model, model.config, labels())
    data = path.read_bytes()
    (tmp_path / "cut.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        load_checkpoint(tmp_path / "cut.pt")
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "nope.pt")


def test_published_file_given_as_our_format_explains(tmp_path):
    path, _ = published_file(tmp_path, "b0")
    with pytest.raises(CheckpointError, match="sdcpc convert SOURCE"):
        load_checkpoint(path)


def test_state_dict_not_matching_its_own_config(tmp_path):
    model = build_model(tiny())
    path = save_checkpoint(tmp_path / "m.pt", model, model.config, labels())
    obj = torch.load(path, weights_only=True)
    obj["config"]["num_classes"] = 9
    obj["labels"] = LabelSet.from_names([f"c{i}" for i in range(9)]).to_dict()
    torch.save(obj, path)
    with pytest.raises(CheckpointError, match=r"expected \(9, 256, 1, 1\), found \(4, 256, 1, 1\)"):
        load_checkpoint(path)
