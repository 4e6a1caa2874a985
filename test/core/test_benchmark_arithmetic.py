"""The engine benchmark's arithmetic count (benchmarks/engine.py), which bounds the temporal overhead."""

import importlib.util
from pathlib import Path

import pytest
import torch

from sdcpc_core.models import SDCPCConfig, build_model

pytest.importorskip("torch.utils.flop_counter")
SPEC = importlib.util.spec_from_file_location("bench_engine", Path(__file__).parents[2] / "benchmarks" / "engine.py")
bench = importlib.util.module_from_spec(SPEC)
SPEC.loader.exec_module(bench)


def _model(**config):
    torch.manual_seed(0)
    return build_model(SDCPCConfig(variant="b0", num_classes=5, embed_dim=32, decoder_dim=32, **config)).eval()


def test_only_the_fine_stage_depends_on_the_window_and_the_mode_is_restored():
    small, large = _model(window=3), _model(window=11)  # halos of 3x3, 5x5 blocks
    (total3, fine3), (total11, fine11) = bench.arithmetic(small, 64), bench.arithmetic(large, 64)
    assert 0 < fine3 < fine11
    assert total3 - fine3 == pytest.approx(total11 - fine11, rel=1e-12)
    assert large.dssa.fine.fixed_shape is False  # counted as exported, then put back


def test_the_baseline_has_no_fine_stage_and_less_arithmetic():
    temporal, _ = bench.arithmetic(_model(), 64)
    base, fine = bench.arithmetic(_model(temporal=False), 64)
    assert fine == 0 and 0 < base < temporal
