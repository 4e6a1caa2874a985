"""Every published SegFormer layout converts exactly: checked against the source framework itself.

Hugging Face: against ``transformers`` (a test dependency only), on directories it writes with
``save_pretrained``. mmsegmentation: against logits mmsegmentation 1.2.2 computed
(``scripts/mmseg_reference.py``; it cannot share this environment). NVlabs: test_checkpoints.py.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from published_sources import B0, B2, TINY, hf_logits, hf_segformer, put_in_hub_cache

from sdcpc_core import cli
from sdcpc_core.checkpoints import (
    CheckpointError,
    convert_checkpoint,
    load_checkpoint,
    load_pretrained,
    read_published,
    resolve_checkpoint,
)
from sdcpc_core.classes import ADE20K, CITYSCAPES
from sdcpc_core.models import SDCPCConfig, build_model

DATA = Path(__file__).resolve().parents[1] / "data"
TOLERANCE = 1e-4  # relative to the largest logit, as the issue asks


def ours(checkpoint, images):
    model, meta = load_checkpoint(checkpoint)
    with torch.no_grad():
        if meta["config"].temporal:  # a stream's first frame: its own reference
            return model.forward_cached(model.encode(images), [])["logits"], meta
        return model(images)["logits"], meta


def relative_error(got, want) -> float:
    return ((got - want).abs().max() / want.abs().max()).item()


@pytest.mark.parametrize("shape, num_labels", [(B0, 150), (B0, 19), (B2, 19)],
                         ids=["b0-150", "b0-19", "b2-19"])
def test_hugging_face_directory_equals_transformers(tmp_path, shape, num_labels):
    names = [f"class {chr(65 + i % 26)}{i}" for i in range(num_labels)]
    reference = hf_segformer(tmp_path / "hf", shape, num_labels, names)
    images = torch.randn(2, 3, 64, 96)
    want = hf_logits(reference, images)
    for temporal in (False, True):
        out = convert_checkpoint(tmp_path / "hf", tmp_path / f"ours_{temporal}.pt", temporal=temporal)
        got, meta = ours(out, images)
        assert got.shape == want.shape
        assert relative_error(got, want) <= TOLERANCE
        assert meta["labels"].names == tuple(names)  # id2label
        assert meta["config"].temporal is temporal
        assert meta["config"].variant == ("b0" if shape is B0 else "b2")
        assert meta["training"]["layout"] == "huggingface"


def test_any_segformer_shape_and_the_weight_file_alone(tmp_path):
    """A shape no published variant has, read from config.json; the weight file with config beside."""
    reference = hf_segformer(tmp_path / "hf", TINY, 7, preprocessor={
        "image_mean": [0.5, 0.5, 0.5], "image_std": [0.25, 0.25, 0.25], "rescale_factor": 1 / 255,
        "size": {"height": 96, "width": 128}})
    images = torch.randn(1, 3, 64, 64)
    out = convert_checkpoint(tmp_path / "hf" / "model.safetensors", tmp_path / "ours.pt", temporal=False)
    got, meta = ours(out, images)
    assert relative_error(got, hf_logits(reference, images)) <= TOLERANCE
    assert meta["config"].variant == "custom"
    assert meta["config"].encoder.embed_dims == (16, 32, 64, 128)
    assert meta["config"].encoder.num_heads == (1, 2, 4, 8)
    assert meta["mean"] == pytest.approx([127.5] * 3) and meta["std"] == pytest.approx([63.75] * 3)
    assert meta["input_size"] == [96, 128]


def test_pickled_weights_convert_like_safetensors(tmp_path):
    from safetensors.torch import load_file

    reference = hf_segformer(tmp_path / "hf", TINY, 5)
    state = load_file(str(tmp_path / "hf" / "model.safetensors"))
    (tmp_path / "hf" / "model.safetensors").unlink()
    torch.save(state, tmp_path / "hf" / "pytorch_model.bin")
    images = torch.randn(1, 3, 64, 64)
    got, _ = ours(convert_checkpoint(tmp_path / "hf", tmp_path / "ours.pt"), images)
    assert relative_error(got, hf_logits(reference, images)) <= TOLERANCE


def test_placeholder_label_names_take_the_published_set_by_count(tmp_path):
    from transformers import SegformerConfig, SegformerForSemanticSegmentation

    SegformerForSemanticSegmentation(SegformerConfig(num_labels=19, **TINY)).save_pretrained(tmp_path / "hf")
    _, meta = load_checkpoint(convert_checkpoint(tmp_path / "hf", tmp_path / "ours.pt"))
    assert meta["labels"].names == CITYSCAPES.names
    assert (meta["labels"].palette == CITYSCAPES.palette).all()
    assert "person" in [meta["labels"].names[i] for i in meta["labels"].dynamic]


def test_encoder_only_repository_needs_a_class_count(tmp_path):
    """nvidia/mit-b* is SegformerForImageClassification: an encoder for training, plus ImageNet's head."""
    from transformers import SegformerConfig, SegformerForImageClassification

    torch.manual_seed(0)
    model = SegformerForImageClassification(SegformerConfig(num_labels=10, **TINY)).eval()
    model.save_pretrained(tmp_path / "mit")
    with pytest.raises(CheckpointError, match="holds only an encoder.*num_classes"):
        convert_checkpoint(tmp_path / "mit", tmp_path / "x.pt")
    out = convert_checkpoint(tmp_path / "mit", tmp_path / "ours.pt", num_classes=4)
    net, meta = load_checkpoint(out)
    assert meta["config"].num_classes == 4
    images = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        want = model.segformer(images, output_hidden_states=True).hidden_states
        got = net.backbone(images)
    for g, w in zip(got, want):
        assert relative_error(g, w) <= TOLERANCE
    assert any("classifier" in k for k in read_published(tmp_path / "mit").ignored)


def test_mmsegmentation_checkpoint_equals_mmsegmentation(tmp_path):
    reference = torch.load(DATA / "mmseg_segformer_tiny_reference.pt", weights_only=True)
    for temporal in (False, True):
        out = convert_checkpoint(DATA / "mmseg_segformer_tiny.pth", tmp_path / f"mm_{temporal}.pt",
                                 temporal=temporal)
        got, meta = ours(out, reference["image"])
        assert relative_error(got, reference["logits"]) <= TOLERANCE
        assert meta["labels"].names == ("road", "person", "car", "tree", "sky")  # meta.dataset_meta
        assert meta["labels"].palette[1].tolist() == [220, 20, 60]
        assert meta["config"].encoder.num_heads == (1, 2, 4, 8)  # read from meta.cfg
        assert meta["config"].head_stage_relu
        assert meta["training"]["layout"] == "mmsegmentation"


def test_nvlabs_file_without_names_gets_ade20k_by_class_count(tmp_path):
    torch.manual_seed(0)
    model = build_model(SDCPCConfig(variant="b0", num_classes=150, temporal=False))
    state = {f"backbone.{k}": v for k, v in model.backbone.state_dict().items()}
    state.update({f"decode_head.{k}": v for k, v in model.decode_head.state_dict().items()})
    torch.save({"state_dict": state, "meta": {}}, tmp_path / "segformer.b0.512x512.ade.160k.pth")
    _, meta = load_checkpoint(convert_checkpoint(tmp_path / "segformer.b0.512x512.ade.160k.pth",
                                                 tmp_path / "ours.pt"))
    assert meta["labels"].names == ADE20K.names and meta["labels"].names[12] == "person"
    dynamic = {meta["labels"].names[i] for i in meta["labels"].dynamic}
    assert {"person", "car", "bus", "truck", "bicycle"} <= dynamic and "wall" not in dynamic


def test_trainer_initialises_from_a_hugging_face_directory(tmp_path):
    hf_segformer(tmp_path / "hf", B0, 19)
    model = build_model(SDCPCConfig(variant="b0", num_classes=19))
    report = load_pretrained(model, tmp_path / "hf")
    assert report["loaded"] == ["backbone", "decode_head"] and report["layout"] == "huggingface"


# --- Hub ids, the converted-model cache, and bad input ---------------------------------------------

def test_hub_id_in_the_cache_converts_offline_once(tmp_path, capsys):
    assert os.environ.get("HF_HUB_OFFLINE") == "1"  # test/conftest.py: no network in tests
    reference = hf_segformer(tmp_path / "hf", TINY, 6, names=list("abcdef"))
    put_in_hub_cache(tmp_path / "hf", "someone/segformer-tiny-test")
    lines = []
    first = resolve_checkpoint("someone/segformer-tiny-test", progress=lines.append)
    assert any("found in the Hugging Face cache" in line and "no network used" in line for line in lines)
    assert any("converted to" in line for line in lines)
    again = []
    assert resolve_checkpoint("someone/segformer-tiny-test", progress=again.append) == first
    assert any("cached" in line for line in again)
    images = torch.randn(1, 3, 64, 64)
    got, meta = ours(first, images)
    assert relative_error(got, hf_logits(reference, images)) <= TOLERANCE
    assert meta["config"].temporal is False  # the per-frame model unless a temporal one is asked for
    assert meta["labels"].names == tuple("abcdef")
    # the CLI takes it as well
    assert cli.main(["convert", "someone/segformer-tiny-test", "-o", str(tmp_path / "sdcpc.pt")]) == 0
    out = capsys.readouterr().out
    assert "SD-CPC (temporal modules at identity)" in out and "6 classes (a, b, c, d" in out
    assert cli.main(["palette", "someone/segformer-tiny-test"]) == 0
    assert "0,a," in capsys.readouterr().out


def test_conversion_cache_is_keyed_by_content(tmp_path):
    hf_segformer(tmp_path / "hf", TINY, 3, seed=1)
    first = resolve_checkpoint(tmp_path / "hf")
    hf_segformer(tmp_path / "hf", TINY, 3, seed=2)  # same path, other weights
    second = resolve_checkpoint(tmp_path / "hf")
    assert first != second
    assert resolve_checkpoint(tmp_path / "hf", temporal=True) not in (first, second)


@pytest.mark.parametrize("case, words", [
    ("missing hub id", "not in the Hugging Face cache"),
    ("no config", "no config.json|without config.json"),
    ("shapes disagree", "config.json does not describe these weights"),
    ("not a segformer", "not a SegFormer"),
    ("damaged weights", "not a readable safetensors file"),
    ("plain directory", "directory without config.json"),
    ("missing path", "does not exist"),
])
def test_bad_sources_get_one_clear_line_and_leave_nothing_in_the_cache(tmp_path, case, words):
    source = tmp_path / "hf"
    if case not in ("missing hub id", "missing path"):
        hf_segformer(source, TINY, 4)
    if case == "missing hub id":
        source = "nobody/segformer-that-is-not-cached"
    elif case == "no config":
        (source / "config.json").unlink()
        source = source / "model.safetensors"
    elif case == "shapes disagree":
        config = json.loads((source / "config.json").read_text())
        config["hidden_sizes"] = [32, 64, 160, 256]
        (source / "config.json").write_text(json.dumps(config))
    elif case == "not a segformer":
        config = json.loads((source / "config.json").read_text())
        config.update(model_type="deeplabv3", architectures=["MobileViTForSemanticSegmentation"])
        (source / "config.json").write_text(json.dumps(config))
    elif case == "damaged weights":
        data = (source / "model.safetensors").read_bytes()
        (source / "model.safetensors").write_bytes(data[: len(data) // 2])
    elif case == "plain directory":
        (source / "config.json").unlink()
    elif case == "missing path":
        source = tmp_path / "nowhere" / "model.pth"
    cache_dir = Path(os.environ["SDCPC_CACHE_DIR"]) / "converted"
    before = set(cache_dir.glob("*")) if cache_dir.exists() else set()
    with pytest.raises(CheckpointError, match=words) as info:
        resolve_checkpoint(source)
    assert "\n" not in str(info.value)
    after = set(cache_dir.glob("*")) if cache_dir.exists() else set()
    assert {p for p in after - before if not p.name.endswith(".lock")} == set()  # nothing half-written
    assert cli.main(["convert", str(source), "-o", str(tmp_path / "out.pt")]) == 2
    assert not (tmp_path / "out.pt").exists()


@pytest.mark.parametrize("failure, words", [
    ("missing repository", "does not exist on the Hugging Face Hub"),
    ("no network", "cannot download .* on a machine with network run `hf download"),
])
def test_hub_failures_online_are_one_clear_line(monkeypatch, failure, words):
    """What the Hub answers when online, mapped to our errors (the calls are huggingface_hub's own
    exceptions; CI has no network to provoke them for real)."""
    import httpx2
    import huggingface_hub
    from huggingface_hub import constants
    from huggingface_hub.errors import LocalEntryNotFoundError, RepositoryNotFoundError

    def snapshot_download(repo_id, allow_patterns=None, local_files_only=False):
        if local_files_only:
            raise LocalEntryNotFoundError("not in the cache")
        if failure == "missing repository":
            request = httpx2.Request("GET", f"https://huggingface.co/api/models/{repo_id}")
            raise RepositoryNotFoundError("404 Client Error", response=httpx2.Response(404, request=request))
        raise LocalEntryNotFoundError("An error happened while trying to locate the files on the Hub "
                                      "and we cannot find the requested files in the local cache.")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    with pytest.raises(CheckpointError, match=words) as info:
        resolve_checkpoint("nvidia/segformer-b7-imaginary")
    assert "\n" not in str(info.value)


def test_mmseg_0x_meta_classes_and_palette(tmp_path):
    """The 1.x model zoo still links mmseg 0.x files: class names in meta.CLASSES / meta.PALETTE."""
    obj = torch.load(DATA / "mmseg_segformer_tiny.pth", weights_only=True)
    obj["meta"] = {"CLASSES": ["a", "b", "c", "d", "e"], "PALETTE": [[i, i, i] for i in range(5)]}
    torch.save(obj, tmp_path / "mm0x.pth")
    _, meta = load_checkpoint(convert_checkpoint(tmp_path / "mm0x.pth", tmp_path / "ours.pt"))
    assert meta["labels"].names == tuple("abcde") and meta["labels"].palette[3].tolist() == [3, 3, 3]
    assert meta["config"].encoder.num_heads == (1, 2, 4, 8)  # no cfg in meta: from the widths
    assert any("head counts not in the file" in n for n in meta["training"]["conversion_notes"])


def test_converted_sd_cpc_with_references_still_equals_the_source(tmp_path):
    """Mid-stream, with real references in the buffer, a converted SD-CPC (temporal modules at
    identity) computes the published per-frame logits."""
    reference = hf_segformer(tmp_path / "hf", TINY, 6)
    model, meta = load_checkpoint(convert_checkpoint(tmp_path / "hf", tmp_path / "ours.pt",
                                                     reference_offsets=(-3, -2, -1)))
    frames = torch.randn(4, 1, 3, 64, 80)
    with torch.no_grad():
        caches = [model.encode(f) for f in frames]
        got = model.forward_cached(caches[-1], caches[:-1])["logits"]
    assert meta["config"].reference_offsets == (-3, -2, -1)
    assert relative_error(got, hf_logits(reference, frames[-1])) <= TOLERANCE
