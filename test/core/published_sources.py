"""Published SegFormer sources made in the test: Hugging Face directories (by transformers itself)
and a Hugging Face Hub cache holding one, laid out as huggingface_hub lays it out."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch

TINY = dict(hidden_sizes=[16, 32, 64, 128], num_attention_heads=[1, 2, 4, 8], depths=[1, 1, 1, 1],
            decoder_hidden_size=32)  # a SegFormer shape no published variant has
B0 = dict(hidden_sizes=[32, 64, 160, 256], num_attention_heads=[1, 2, 5, 8], depths=[2, 2, 2, 2],
          decoder_hidden_size=256)
B2 = dict(hidden_sizes=[64, 128, 320, 512], num_attention_heads=[1, 2, 5, 8], depths=[3, 4, 6, 3],
          decoder_hidden_size=768)


def perturb_norms(model: torch.nn.Module, seed: int = 0) -> None:
    """Non-trivial LayerNorm / BatchNorm weights and batch-norm statistics (fresh ones are 1, 0)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (torch.nn.LayerNorm, torch.nn.BatchNorm2d)):
                m.weight.copy_(1 + 0.2 * torch.randn(m.weight.shape, generator=g))
                m.bias.copy_(0.2 * torch.randn(m.bias.shape, generator=g))
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.copy_(0.5 * torch.randn(m.running_mean.shape, generator=g))
                m.running_var.copy_(0.5 + 1.5 * torch.rand(m.running_var.shape, generator=g))


def hf_segformer(directory: Path, shape: dict, num_labels: int, names=None, seed: int = 0,
                 preprocessor: dict | None = None):
    """``SegformerForSemanticSegmentation(config).save_pretrained(directory)``; returns the model."""
    from transformers import SegformerConfig, SegformerForSemanticSegmentation

    torch.manual_seed(seed)
    names = names or [f"thing {i}" for i in range(num_labels)]
    config = SegformerConfig(num_labels=num_labels, id2label=dict(enumerate(names)),
                             label2id={n: i for i, n in enumerate(names)}, **shape)
    model = SegformerForSemanticSegmentation(config).eval()
    perturb_norms(model, seed)
    model.save_pretrained(directory)
    if preprocessor is not None:
        (Path(directory) / "preprocessor_config.json").write_text(json.dumps(preprocessor))
    return model


def hf_logits(model, images: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(pixel_values=images).logits  # (B, K, H/4, W/4)


def put_in_hub_cache(directory: Path, repo_id: str, cache: Path | None = None) -> Path:
    """Place a model directory in the Hugging Face cache as a download would (refs/main -> snapshot)."""
    cache = Path(cache or os.environ["HF_HUB_CACHE"])
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    commit = "0123456789abcdef0123456789abcdef01234567"
    snapshot = repo / "snapshots" / commit
    shutil.copytree(directory, snapshot, dirs_exist_ok=True)
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / "main").write_text(commit)
    return snapshot
