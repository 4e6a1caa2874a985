"""DistributedDataParallel on CPU: torchrun starts 2 gloo processes that train a tiny SD-CPC.

Run as a script (``torchrun --nproc_per_node 2 test/core/test_ddp.py OUT``) each rank trains a
few steps through the real ``Trainer`` and dumps its own weights and MCP-CL bank to OUT.
"""

import os
import subprocess
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]


def rank_main(out: Path) -> None:
    import torch.distributed as dist

    from sdcpc_core.data import SyntheticClips
    from sdcpc_core.train import Trainer, config_from_dict

    cfg = config_from_dict({
        "model": {"variant": "b0", "num_classes": 9, "embed_dim": 16, "reference_offsets": [-1],
                  "window": 3, "pool_scales": [1, 2], "drop_path_rate": 0.1},
        "data": {"batch_size": 1, "num_workers": 0},
        "optim": {"lr": 1e-3, "grad_clip": 1.0},
        "schedule": {"max_iters": 2, "warmup_iters": 1},
        "eval": {"interval": 0, "mvc": []},
        "output_dir": str(out / "run"), "resume": None, "log_interval": 1, "checkpoint_interval": 0,
    })
    clips = SyntheticClips(num_videos=1, length=4, height=32, width=32, reference_offsets=(-1,))
    trainer = Trainer(cfg, clips, clips)
    assert trainer.world_size == 2 and trainer.ddp is not None
    first_batch = next(trainer.batches())
    trainer.fit()
    torch.save({"params": dict(trainer.model.named_parameters()), "bank": trainer.criterion.prototypes,
                "first_index": first_batch["index"], "metrics": trainer.last_metrics},
               out / f"rank{trainer.rank}.pt")
    dist.destroy_process_group()


def test_two_cpu_processes_stay_in_sync(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           __file__, str(tmp_path)]
    proc = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    assert r0["first_index"] != r1["first_index"]  # DistributedSampler: different clips per rank
    # gradients are averaged, so every parameter matches bit for bit (BatchNorm running stats are
    # broadcast from rank 0 at each forward, and differ only by each rank's last local update)
    for k, v in r0["params"].items():
        torch.testing.assert_close(r1["params"][k], v, rtol=0, atol=0, msg=k)
    torch.testing.assert_close(r1["bank"], r0["bank"])
    assert r0["metrics"] == r1["metrics"] and "miou" in r0["metrics"]
    assert (tmp_path / "run" / "last.pt").is_file()  # written by rank 0


if __name__ == "__main__":
    rank_main(Path(sys.argv[1]))
