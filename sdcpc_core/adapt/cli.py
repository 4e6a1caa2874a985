"""Arguments of ``sdcpc adapt`` and the command itself."""

from __future__ import annotations

import argparse
import sys

from sdcpc_core.adapt.method import Recipe


def add_adapt_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("teacher", help="the teacher: any sdcpc checkpoint (per-frame or SD-CPC) or export directory")
    p.add_argument("sources", nargs="+", metavar="SOURCE",
                   help="unlabelled video: a video file, an image folder or a rosbag2 (folder, .mcap, "
                   ".db3); each source is one video in time order")
    p.add_argument("-o", "--output", required=True, help="adapted SD-CPC checkpoint to write (.pt); "
                   "OUT.md and OUT_loss.png are written beside it")
    budget = p.add_mutually_exclusive_group()
    budget.add_argument("--minutes", type=float, default=None, help="training time (default: 12)")
    budget.add_argument("--steps", type=int, default=None, help="training steps instead of a time budget")
    p.add_argument("--student", default=None, help="SD-CPC checkpoint to adapt (default: built from the "
                   "teacher, temporal modules at identity)")
    p.add_argument("--image-topic", default=None, help="a bag's image topic (default: its only one)")
    p.add_argument("--input-size", type=int, nargs=2, metavar=("H", "W"), default=None,
                   help="working resolution (default: the student's or teacher's recorded size, else "
                   "the first frame's)")
    p.add_argument("--every", type=int, default=1, help="keep every K-th frame (match the frame rate "
                   "the node will see; default 1)")
    p.add_argument("--max-frames", type=int, default=2000,
                   help="frames cached in all (disk and caching time, not memory): a longer recording is "
                   "sampled in clips spread over all of it (default 2000)")
    p.add_argument("--cache-dir", default=None, help="where the feature and pseudo-label cache goes "
                   "(default: OUT.adapt-cache beside the output; its size is said before it is written)")
    p.add_argument("--keep-cache", action="store_true", help="keep the cache after a finished run "
                   "(it is always kept after an interruption, for --resume)")
    p.add_argument("--memory-limit", type=float, default=None, metavar="GIB",
                   help="refuse up front when the estimated peak memory exceeds this (default: the "
                   "machine's available memory)")
    p.add_argument("--reference-offsets", type=int, nargs="+", default=[-3, -2, -1],
                   help="a built student's references (default: -3 -2 -1)")
    p.add_argument("--embed-dim", type=int, default=64, help="a built student's temporal width (default 64)")
    p.add_argument("--set", dest="recipe", action="append", default=[], metavar="KEY=VALUE",
                   help="change the recipe, e.g. --set radius=2 --set threshold=0.8 (fields: "
                   + ", ".join(Recipe().to_dict()) + ")")
    p.add_argument("--resume", action="store_true", help="continue OUT.pt (same teacher, sources, recipe) "
                   "up to the budget; after an interruption while caching, the finished part of the "
                   "cache is reused")
    p.add_argument("--device", default="cpu", help="cpu, cuda or auto (default cpu); under torchrun "
                   "each process trains on its share of batches (DDP)")
    p.add_argument("--threads", type=int, default=None, help="CPU threads for torch (default: torch's "
                   "choice; on a CPU shared with other busy processes, 1 can be several times faster)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-report", action="store_true", help="skip OUT.md / OUT_loss.png")


def cmd_adapt(args) -> int:
    from sdcpc_core.adapt.run import AdaptInterrupted, AdaptOptions, run_adapt

    recipe = Recipe().with_overrides(args.recipe)
    minutes = args.minutes if args.minutes is not None else (None if args.steps is not None else 12.0)
    opts = AdaptOptions(teacher=args.teacher, sources=list(args.sources), output=args.output,
                        minutes=minutes, steps=args.steps, student=args.student,
                        image_topic=args.image_topic,
                        input_size=tuple(args.input_size) if args.input_size else None,
                        every=args.every, max_frames=args.max_frames,
                        reference_offsets=tuple(args.reference_offsets), embed_dim=args.embed_dim,
                        recipe=recipe, resume=args.resume, seed=args.seed, device=args.device, threads=args.threads,
                        report=not args.no_report, cache_dir=args.cache_dir, keep_cache=args.keep_cache,
                        memory_limit=None if args.memory_limit is None else int(args.memory_limit * 2**30))
    try:
        meta = run_adapt(opts)
    except AdaptInterrupted as e:  # as sdcpc_core.cli reports its Interrupted (exit code 130)
        print(f"sdcpc adapt: interrupted (Ctrl-C) {e}", file=sys.stderr)
        return 130
    finally:
        import torch.distributed as dist

        if dist.is_initialized():  # under torchrun
            dist.destroy_process_group()
    if meta["rank"] != 0:
        return 0
    print(f"wrote {meta['checkpoint']} ({meta['steps']} steps, {meta['minutes']:.1f} min, pseudo-label "
          f"coverage {100 * meta['pseudo_label_coverage']:.1f} %)")
    return 0
