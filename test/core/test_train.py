"""Trainer: schedule, parameter groups, configs, a few real steps, checkpoints and exact resume."""

import json
import math

import cv2
import numpy as np
import pytest
import torch

from sdcpc_core.checkpoints import load_checkpoint
from sdcpc_core.data import SYNTHETIC_LABELS, VSPW_LABELS, SyntheticClips
from sdcpc_core.models import SDCPCConfig, build_model
from sdcpc_core.train import Trainer, WarmupPoly, build_optimizer, build_scheduler, config_from_dict, load_config
from sdcpc_core.train.__main__ import main as train_main
from sdcpc_core.train.config import CONFIG_DIR, OptimConfig, ScheduleConfig
from sdcpc_core.train.data import build_datasets

TINY_MODEL = dict(variant="b0", num_classes=9, embed_dim=16, reference_offsets=[-1], window=3,
                  pool_scales=[1, 2], drop_path_rate=0.0)


def tiny_config(tmp_path, **sections):
    raw = {"model": dict(TINY_MODEL), "data": {"batch_size": 2, "num_workers": 0},
           "optim": {"lr": 1e-3}, "schedule": {"max_iters": 4, "warmup_iters": 1},
           "eval": {"interval": 0, "mvc": [2]}, "output_dir": str(tmp_path / "run"),
           "resume": None, "log_interval": 1, "checkpoint_interval": 2}
    for k, v in sections.items():
        raw[k] = {**raw[k], **v} if isinstance(v, dict) and isinstance(raw.get(k), dict) else v
    return config_from_dict(raw)


def clips(n_frames=2, seed=0, offsets=(-1,)):
    return SyntheticClips(num_videos=1, length=n_frames, height=32, width=32, seed=seed,
                          reference_offsets=offsets)


def test_warmup_poly_values():
    f = WarmupPoly(max_iters=100, warmup_iters=10, warmup_ratio=1e-6, power=1.0)
    assert f(0) == pytest.approx(1e-6)
    assert f(5) == pytest.approx(0.95 * (1 - 0.5 * (1 - 1e-6)))
    assert f(10) == pytest.approx(0.9)  # warm-up over, poly only
    assert f(55) == pytest.approx(0.45)
    assert f(100) == 0.0 and f(150) == 0.0
    assert WarmupPoly(100, power=2.0)(50) == pytest.approx(0.25)
    assert WarmupPoly(100, min_ratio=0.1)(100) == pytest.approx(0.1)


def test_param_group_lr_ratios_follow_schedule():
    model = build_model(SDCPCConfig(**TINY_MODEL))
    opt = build_optimizer(model, OptimConfig(lr=1e-4, weight_decay=0.01, head_lr_mult=10.0))
    names = {id(p): n for n, p in model.named_parameters()}
    for g in opt.param_groups:
        in_backbone = {names[id(p)].startswith("backbone.") for p in g["params"]}
        assert len(in_backbone) == 1
        assert g["lr"] == pytest.approx(1e-4 if in_backbone.pop() else 1e-3)
        assert g["weight_decay"] in (0.0, 0.01)
    assert sum(len(g["params"]) for g in opt.param_groups) == len(list(model.parameters()))
    sched = build_scheduler(opt, ScheduleConfig(max_iters=100, warmup_iters=10))
    for _ in range(20):
        opt.step()
        sched.step()
    lrs = sorted({round(g["lr"], 12) for g in opt.param_groups})
    assert lrs == pytest.approx([1e-4 * 0.8, 1e-3 * 0.8])
    # a resumed schedule starts where the step says
    resumed = build_scheduler(opt, ScheduleConfig(max_iters=100, warmup_iters=10), start_step=20)
    assert resumed.get_last_lr() == pytest.approx([g["lr"] for g in opt.param_groups])


def test_bundled_configs_hold_the_paper_protocol():
    names = {p.stem for p in CONFIG_DIR.glob("*.yaml")}
    assert {f"vspw_b{i}" for i in range(6)} | {"cityscapes_b1", "cityscapes_b5", "synthetic_b0",
                                              "synthetic_b0_baseline"} <= names
    for name in names:
        cfg = load_config(name)
        if name.startswith(("vspw", "cityscapes")):
            assert (cfg.optim.lr, cfg.optim.weight_decay, cfg.optim.head_lr_mult) == (6e-5, 0.01, 10.0)
            assert (cfg.schedule.max_iters, cfg.schedule.warmup_iters, cfg.schedule.power) == (160000, 1500, 1.0)
            assert (cfg.loss.static_weight, cfg.loss.mcp_weight) == (0.4, 0.1)
            assert cfg.model.reference_offsets == (-9, -6, -3)
            assert cfg.pretrained == f"pretrained/mit_{cfg.model.variant}.pth"
    assert load_config("vspw_b5").model.num_classes == 124
    assert load_config("vspw_b2").data.crop_size == (480, 480)
    assert load_config("cityscapes_b1").data.crop_size == (1024, 1024)
    assert not load_config("synthetic_b0_baseline").model.temporal


def test_config_overrides_and_errors(tmp_path):
    cfg = load_config("synthetic_b0", ["optim.lr=1e-4", "model.reference_offsets=[-6, -3]",
                                       "data.options.num_videos=2"])
    assert cfg.optim.lr == 1e-4 and isinstance(cfg.optim.lr, float)  # YAML reads 1e-4 as a string
    assert cfg.model.reference_offsets == (-6, -3)
    assert cfg.data.options["num_videos"] == 2 and cfg.data.options["length"] == 30
    with pytest.raises(ValueError, match="optim.lrr"):
        load_config("synthetic_b0", ["optim.lrr=1"])
    with pytest.raises(ValueError, match="key.path=value"):
        load_config("synthetic_b0", ["optim.lr"])
    with pytest.raises(FileNotFoundError, match="synthetic_b0"):
        load_config(tmp_path / "missing.yaml")


def test_steps_reduce_loss_and_checkpoint_reloads(tmp_path):
    torch.manual_seed(0)
    cfg = tiny_config(tmp_path, schedule={"max_iters": 6}, eval={"interval": 3})
    trainer = Trainer(cfg, clips(), clips(n_frames=3, seed=1), labels=SYNTHETIC_LABELS)
    metrics = trainer.fit()  # one batch of 2 clips, seen at every step
    log = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    steps = [r for r in log if "loss" in r]
    assert [r["step"] for r in steps] == list(range(1, 7))
    assert {"ce", "static", "mcp", "lr", "grad_norm"} <= set(steps[0])
    assert steps[-1]["loss"] < 0.7 * steps[0]["loss"]
    assert [r["step"] for r in log if "val" in r] == [3, 6]
    assert 0.0 <= metrics["miou"] <= 1.0 and metrics["num_frames"] == 3

    model, meta = load_checkpoint(tmp_path / "run" / "last.pt")
    assert meta["training"]["step"] == 6 and meta["labels"].names == SYNTHETIC_LABELS.names
    assert meta["config"] == cfg.model
    for k, v in trainer.model.state_dict().items():
        torch.testing.assert_close(model.state_dict()[k], v.cpu())
    _, best = load_checkpoint(tmp_path / "run" / "best.pt")
    assert best["training"]["metrics"]["miou"] == pytest.approx(trainer.best_miou)
    assert "optimizer" not in best["training"]


def test_resume_continues_exactly(tmp_path):
    schedule = {"max_iters": 3}
    straight = Trainer(tiny_config(tmp_path / "a", schedule=schedule), clips(n_frames=4))
    straight.fit()  # 2 steps per epoch

    first = Trainer(tiny_config(tmp_path / "b", schedule=schedule), clips(n_frames=4))
    first.train_step(next(first.batches()))  # stop mid-epoch
    first.save("last.pt")

    resumed = Trainer(tiny_config(tmp_path / "b", schedule=schedule, resume="auto"), clips(n_frames=4))
    assert resumed.step == 1
    assert resumed.optimizer.param_groups[0]["lr"] == pytest.approx(first.optimizer.param_groups[0]["lr"])
    resumed.fit()  # finishes epoch 0, then one step of epoch 1
    assert resumed.step == 3
    for k, v in straight.model.state_dict().items():
        torch.testing.assert_close(resumed.model.state_dict()[k], v, msg=k)
    torch.testing.assert_close(resumed.criterion.prototypes, straight.criterion.prototypes)


def test_baseline_trains_with_ce_only(tmp_path):
    cfg = tiny_config(tmp_path, model={**TINY_MODEL, "temporal": False}, schedule={"max_iters": 1})
    trainer = Trainer(cfg, clips(offsets=()))
    record = trainer.train_step(next(trainer.batches()))
    assert trainer.criterion is None
    assert record["loss"] == pytest.approx(record["ce"]) and "mcp" not in record
    assert math.isfinite(record["grad_norm"])


def test_module_entry_point_trains_bundled_config(tmp_path):
    out = tmp_path / "synthetic"
    train_main(["synthetic_b0", "--output-dir", str(out), "--set", "schedule.max_iters=1",
                "--set", "data.num_workers=0", "--set", "data.batch_size=1",
                "--set", "data.crop_size=[32,32]", "--set", "data.scale_range=[1.0,1.0]",
                "--set", "data.options={num_videos: 1, length: 2, height: 32, width: 32}",
                "--set", "data.val_options={length: 1}", "--set", "model.embed_dim=16",
                "--set", "model.reference_offsets=[-1]", "--set", "model.window=3"])
    _, meta = load_checkpoint(out / "last.pt")
    assert meta["training"]["step"] == 1
    assert meta["training"]["train_config"]["output_dir"] == str(out)
    assert (out / "config.yaml").is_file() and (out / "best.pt").is_file()


def test_build_datasets_reads_vspw_layout(tmp_path):
    for video in ("v1", "v2"):
        for t in range(3):
            for sub, name, img in (("origin", f"{t:04d}.jpg", np.full((40, 48, 3), 60 * t, np.uint8)),
                                   ("mask", f"{t:04d}.png", np.full((40, 48), t + 1, np.uint8))):
                (tmp_path / "data" / video / sub).mkdir(parents=True, exist_ok=True)
                cv2.imwrite(str(tmp_path / "data" / video / sub / name), img)
    (tmp_path / "train.txt").write_text("v1\n")
    (tmp_path / "val.txt").write_text("v2\n")
    cfg = load_config("vspw_b0", [f"data.root={tmp_path}", "data.crop_size=[32,32]"])
    train, val, labels, mean, std = build_datasets(cfg)
    assert labels is VSPW_LABELS and len(train) == 3 and len(val) == 3
    item = train[2]
    assert item["frames"].shape == (4, 3, 32, 32) and item["label"].shape == (32, 32)
    assert set(item["label"].unique().tolist()) <= {2, 255}  # raw 3 -> 2, padding -> ignore
    assert val[0]["frames"].shape == (4, 3, 40, 48) and val[1]["video"] == "v2"
    with pytest.raises(ValueError, match="124 classes"):
        build_datasets(load_config("vspw_b0", [f"data.root={tmp_path}", "model.num_classes=19"]))
    with pytest.raises(ValueError, match="data.root"):
        build_datasets(load_config("vspw_b0", ["data.root=null"]))


def test_prediction_based_mcp_cl_trains(tmp_path):
    """loss.mcp_pixels=prediction: the trainer hands the predicted classes to MCP-CL."""
    torch.manual_seed(0)
    cfg = tiny_config(tmp_path, loss={"mcp_pixels": "prediction"}, schedule={"max_iters": 3})
    trainer = Trainer(cfg, clips())
    assert trainer.criterion.pixels == "prediction"
    records = [trainer.train_step(next(trainer.batches())) for _ in range(3)]
    assert all(math.isfinite(r["mcp"]) and math.isfinite(r["loss"]) for r in records)
    assert trainer.criterion.initialized.any()  # some class was predicted right: prototypes exist
    with pytest.raises(ValueError, match="loss.mcp_pixels 'both' is not one of"):
        tiny_config(tmp_path / "bad", loss={"mcp_pixels": "both"})
