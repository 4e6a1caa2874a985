"""Label propagation against ground truth: a labelled bag played at its recorded rate into
``sdcpc_node`` (``sdcpc-eval live --propagate``) at several network input sizes, every camera
frame scored three ways (network frames only; last labels held; as published, i.e. propagated).

    sdcpc-eval convert synthetic out/syn30.bag --videos 6 --length 150 --size 240 320 --fps 30
    python benchmarks/propagation_accuracy.py out/syn30.bag --input-sizes 240x320 360x480 480x640 \\
        --out out/propagation_accuracy

Each size runs into ``OUT/live_HxW`` (``--reuse`` keeps a run whose report.json exists). Writes
``propagation_accuracy.md`` (one table per size: mIoU, dynamic-mask recall, mVC8, flicker, share of
frames the network answered, latency of each answer kind) and ``propagation_accuracy.png`` (mIoU
and dynamic-mask recall per frames since the network frame, held against propagated).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

from sdcpc_core.propagation import PRESETS as FLOW_PRESETS

REPO = Path(__file__).resolve().parents[1]
STRATEGIES = (("network", "network frames only"), ("held", "every frame, last labels held"),
              ("node", "every frame, propagated"))


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("bag")
    ap.add_argument("--input-sizes", nargs="+", default=["240x320", "360x480", "480x640"],
                    help="network input sizes HxW (default %(default)s)")
    ap.add_argument("--out", type=Path, default=REPO / "out" / "propagation_accuracy")
    ap.add_argument("--reuse", action="store_true", help="keep runs whose report.json exists")
    ap.add_argument("--flow", choices=tuple(FLOW_PRESETS), default=None,
                    help="the node's propagation_flow (default: the node's)")
    args = ap.parse_args(argv)
    for size in args.input_sizes:
        parts = size.split("x")
        if len(parts) != 2 or not all(p.isdigit() for p in parts):
            ap.error(f"--input-sizes {size}: expected HxW, e.g. 480x640")
    return args


def run_live(bag: str, size: str, out: Path, flow: str | None = None) -> dict:
    h, w = size.split("x")
    cmd = [sys.executable, "-m", "sdcpc_ros.evaluation.cli", "live", bag, "--out", str(out),
           "--input-size", h, w, "--propagate", *(["--propagation-flow", flow] if flow else [])]
    print(f"{size}: {' '.join(cmd[2:])}  (load {os.getloadavg()[0]:.1f})", flush=True)
    subprocess.run(cmd, check=False, cwd=REPO)
    return json.loads((out / "report.json").read_text())


def size_table(size: str, report: dict) -> list[str]:
    def f(v, digits=3):
        return "–" if v is None else f"{v:.{digits}f}"

    st, models = report["strategies"], report["models"]
    frames = st["frames_per_bucket"]
    share = frames["0"] / max(sum(frames.values()), 1)
    lat = st["latency_ms"]
    lines = [f"**Network input {size}**: the network answered {100 * share:.0f} % of the answered "
             f"frames; publish to labels p50 / p95: network {f(lat['network']['p50'], 1)} / "
             f"{f(lat['network']['p95'], 1)} ms, propagated {f(lat['propagated']['p50'], 1)} / "
             f"{f(lat['propagated']['p95'], 1)} ms; {report['frames']['dropped']} of "
             f"{report['frames']['in_bag']} frames unanswered.", "",
             "| strategy | mIoU | dynamic-mask recall | mIoU, propagated frames | recall, propagated frames "
             "| mVC8 | label flicker |", "|---|---|---|---|---|---|---|"]
    for name, title in STRATEGIES:
        s = st[name]
        lines.append(f"| {title} | {f(s['all']['miou'])} | {f(s['all']['dynamic_recall'])} | "
                     f"{f(s['not_network_frames']['miou'])} | {f(s['not_network_frames']['dynamic_recall'])} | "
                     f"{f(models[name]['mvc8'])} | {f(models[name]['flicker'], 4)} |")
    buckets = list(frames)
    lines += ["", "| frames since the network frame | " + " | ".join(buckets) + " |",
              "|---|" + "---|" * len(buckets)]
    for name, title in STRATEGIES[1:]:
        lines.append(f"| mIoU / recall, {title.split(', ')[1]} | " + " | ".join(
            f"{f(st[name]['per_frames_since'][b]['miou'])} / "
            f"{f(st[name]['per_frames_since'][b]['dynamic_recall'])}" for b in buckets) + " |")
    lines.append("| frames | " + " | ".join(str(frames[b]) for b in buckets) + " |")
    return lines + [""]


def plot(reports: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
    for i, (size, report) in enumerate(reports.items()):
        st = report["strategies"]
        buckets = list(st["frames_per_bucket"])
        for key, ax in (("miou", axes[0]), ("dynamic_recall", axes[1])):
            for name, style in (("node", "-"), ("held", "--")):
                y = [st[name]["per_frames_since"][b][key] for b in buckets]
                y = [np.nan if v is None or st["frames_per_bucket"][b] < 5 else v
                     for v, b in zip(y, buckets, strict=True)]
                ax.plot(range(len(buckets)), y, style, marker="o" if name == "node" else "s",
                        color=f"C{i}", label=f"{size}, {'propagated' if name == 'node' else 'held'}")
            ax.set_xticks(range(len(buckets)), buckets)
    for ax, label in ((axes[0], "mIoU"), (axes[1], "dynamic-mask recall")):
        ax.set_xlabel("camera frames since the network frame (buckets with >= 5 frames)")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    axes[1].legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def main(argv=None) -> int:
    args = parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    reports = {}
    for size in args.input_sizes:
        run_dir = args.out / f"live_{size}"
        if args.reuse and (run_dir / "report.json").is_file():
            reports[size] = json.loads((run_dir / "report.json").read_text())
        else:
            reports[size] = run_live(args.bag, size, run_dir, args.flow)
        if not reports[size].get("strategies"):
            print(f"{size}: the report has no three-way scores (node without ~/frame_info?)", file=sys.stderr)
            return 1
    lines = [f"Bag `{args.bag}`, played at its recorded rate; node started by `sdcpc-eval live "
             "--propagate` (the node's defaults otherwise).", ""]
    for size, report in reports.items():
        lines += size_table(size, report)
    (args.out / "propagation_accuracy.md").write_text("\n".join(lines))
    plot(reports, args.out / "propagation_accuracy.png")
    print("\n".join(lines))
    print(f"wrote {args.out / 'propagation_accuracy.md'} and {args.out / 'propagation_accuracy.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
