"""Shared test set-up: small thread counts so parallel helpers and CI stay responsive."""

import os
import tempfile

import pytest

os.environ.setdefault("OMP_NUM_THREADS", "2")
# Tests never write the user's caches and never use the network: converted models and exports go
# to a fresh directory per run (child processes inherit it), the Hugging Face cache too.
_CACHES = tempfile.mkdtemp(prefix="sdcpc-test-caches-")
os.environ["SDCPC_CACHE_DIR"] = os.path.join(_CACHES, "sdcpc")
os.environ["HF_HUB_CACHE"] = os.path.join(_CACHES, "huggingface")
os.environ["HF_HUB_OFFLINE"] = "1"



@pytest.fixture(autouse=True)
def _seed():
    import torch

    torch.manual_seed(0)
