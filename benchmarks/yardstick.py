"""The yardstick in a process of its own: SegFormer-B0 network alone, torch fp32 eager.

    python benchmarks/yardstick.py --size 480 --threads 2     # one line in, one time out

Started by ``benchmarks/engine.py`` with OpenMP's default wait policy (PyTorch eager at its best),
while the engine rows run in a process whose OpenMP threads sleep when idle, as the node's do
(``sdcpc_core.openmp``). Prints ``ready``, then for each line read from stdin runs the network once
on a fixed random input and prints its time in ms; ends at end of input.
"""

from __future__ import annotations

import argparse
import sys
import time

import torch

from sdcpc_core.models import SDCPCConfig, build_model


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", type=int, default=480)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = build_model(SDCPCConfig(variant="b0", num_classes=150, temporal=False)).eval()
    x = torch.randn(1, 3, args.size, args.size)
    print("ready", flush=True)
    for _ in sys.stdin:
        with torch.inference_mode():
            start = time.perf_counter()
            model(x)
            print(f"{(time.perf_counter() - start) * 1e3:.3f}", flush=True)


if __name__ == "__main__":
    main()
