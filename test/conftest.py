"""Shared test set-up: small thread counts so parallel helpers and CI stay responsive."""

import os

import pytest

os.environ.setdefault("OMP_NUM_THREADS", "2")



@pytest.fixture(autouse=True)
def _seed():
    import torch

    torch.manual_seed(0)
