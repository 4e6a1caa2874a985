"""Hostile or damaged checkpoint files: every one ends in a clear CheckpointError, nothing else.

Random bytes, truncation at any point, flipped bytes, pickled code (which must not run), and
metadata that lies about the weights (other variant, other class count, missing or mistyped
fields). A flipped byte inside tensor data may still load (different weights, same shapes); that
is the only other outcome allowed. ``test/ros/test_fuzz_node.py`` checks the node refuses such
files at start-up.
"""

import io
import os
import zipfile

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sdcpc_core.checkpoints import CheckpointError, load_checkpoint, save_checkpoint
from sdcpc_core.classes import LabelSet
from sdcpc_core.data.synthetic import SYNTHETIC_LABELS
from sdcpc_core.engine import StreamingSegmenter
from sdcpc_core.models import SDCPCConfig, build_model

FUZZ = settings(max_examples=40, deadline=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture])


def tiny_config(**changes) -> SDCPCConfig:
    base = dict(variant="b0", num_classes=9, embed_dim=32, decoder_dim=32,
                reference_offsets=(-2, -1), window=3)
    return SDCPCConfig(**{**base, **changes})


class Good(bytes):
    """The bytes of a good checkpoint, with a short repr for hypothesis' failure reports."""

    def __repr__(self):
        return f"<good checkpoint, {len(self)} bytes>"


@pytest.fixture(scope="module")
def good(tmp_path_factory) -> bytes:
    torch.manual_seed(0)
    config = tiny_config()
    path = save_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny.pt", build_model(config),
                           config, SYNTHETIC_LABELS)
    return Good(path.read_bytes())


def load_bytes(tmp_path, data: bytes, name="fuzz.pt"):
    path = tmp_path / name
    path.write_bytes(data)
    return load_checkpoint(path)


@FUZZ
@given(junk=st.binary(max_size=2048),
       prefix=st.sampled_from([b"", b"PK\x03\x04", b"\x80\x02", b"\x80\x04\x95"]))
def test_random_bytes_raise_checkpoint_error(tmp_path, junk, prefix):
    with pytest.raises(CheckpointError):
        load_bytes(tmp_path, prefix + junk)


@FUZZ
@given(fraction=st.floats(0.0, 1.0, exclude_max=True))
def test_truncated_at_any_point_raises_checkpoint_error(tmp_path, good, fraction):
    with pytest.raises(CheckpointError, match="truncated or corrupt|not a readable"):
        load_bytes(tmp_path, good[: int(len(good) * fraction)])


@FUZZ
@given(data=st.data())
def test_flipped_bytes_load_or_raise_checkpoint_error(tmp_path, good, data):
    raw = bytearray(good)
    for _ in range(data.draw(st.integers(1, 8))):
        i = data.draw(st.integers(0, len(raw) - 1))
        raw[i] ^= data.draw(st.integers(1, 255))
    try:
        model, meta = load_bytes(tmp_path, bytes(raw))
    except CheckpointError:
        return
    # survived: a flip inside tensor data; the model still has the shapes its config says
    assert meta["config"].num_classes == len(meta["labels"].names)


class _RunsCode:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_pickled_code_is_refused_and_never_runs(tmp_path):
    marker = tmp_path / "pwned"
    torch.save({"format": "sdcpc", "version": 1, "state_dict": _RunsCode(marker)}, tmp_path / "a.pt")
    with pytest.raises(CheckpointError, match="refusing to load"):
        load_checkpoint(tmp_path / "a.pt")
    buf = io.BytesIO()
    import pickle

    pickle.dump(_RunsCode(marker), buf, protocol=2)  # a legacy (non-zip) pickle file
    with pytest.raises(CheckpointError):
        load_bytes(tmp_path, buf.getvalue(), "b.pt")
    assert not marker.exists()


def test_zip_with_a_foreign_member_is_refused(tmp_path, good):
    raw = io.BytesIO(good)
    out = io.BytesIO()
    with zipfile.ZipFile(raw) as zin, zipfile.ZipFile(out, "w") as zout:
        for item in zin.infolist():
            data = zin.read(item.filename)
            if item.filename.endswith("data.pkl"):
                data = b"\x80\x02cos\nsystem\nq\x00X\x04\x00\x00\x00trueq\x01\x85q\x02Rq\x03."
            zout.writestr(item, data)
    with pytest.raises(CheckpointError, match="refusing to load"):
        load_bytes(tmp_path, out.getvalue())


def _mutated(good: bytes, mutate) -> bytes:
    obj = torch.load(io.BytesIO(good), weights_only=True)
    mutate(obj)
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def _other_variant(obj):
    obj["config"]["variant"] = "b1"


def _other_class_count(obj):
    obj["config"]["num_classes"] = 5
    obj["labels"] = LabelSet.from_names(["a", "b", "c", "d", "e"]).to_dict()


def _labels_disagree_with_head(obj):
    obj["labels"] = LabelSet.from_names(["a", "b", "c", "d", "e"]).to_dict()


MUTATIONS = {
    "other variant": (_other_variant, "MiT-B0 encoder but the model is MiT-B1"),
    "other class count": (_other_class_count, "head has 9 classes, the model 5"),
    "labels disagree with the head": (_labels_disagree_with_head, "9 classes.*5 class names"),
    "no state_dict": (lambda o: o.pop("state_dict"), "state_dict"),
    "state_dict not a dict": (lambda o: o.update(state_dict=[1, 2]), "state_dict"),
    "state_dict holds a non-tensor": (
        lambda o: o["state_dict"].update({next(iter(o["state_dict"])): "weights"}), "state_dict"),
    "no config": (lambda o: o.pop("config"), "broken metadata"),
    "config not a dict": (lambda o: o.update(config="b0"), "broken metadata"),
    "unknown config field": (lambda o: o["config"].update(colour="red"), "broken metadata"),
    "no labels": (lambda o: o.pop("labels"), "broken metadata"),
    "other format version": (lambda o: o.update(version=2), "version 2 is not supported"),
    "not our format": (lambda o: o.update(format="other"), "not an sdcpc checkpoint"),
    "mean of two channels": (lambda o: o.update(mean=[1.0, 2.0]), "mean"),
    "std with a zero": (lambda o: o.update(std=[1.0, 0.0, 1.0]), "std"),
}


@pytest.mark.parametrize("name", list(MUTATIONS))
def test_metadata_that_lies_raises_a_clear_checkpoint_error(tmp_path, good, name):
    mutate, words = MUTATIONS[name]
    path = tmp_path / "lying.pt"
    path.write_bytes(_mutated(good, mutate))
    with pytest.raises(CheckpointError, match=words):
        # what the node does at start-up: load and build the engine
        StreamingSegmenter.from_checkpoint(path, device="cpu")


def test_good_checkpoint_still_loads(tmp_path, good):
    model, meta = load_bytes(tmp_path, good)
    assert meta["config"].variant == "b0" and meta["labels"].num_classes == 9
