"""``sdcpc-eval``: convert data to rosbag2, then evaluate a bag offline (the engine) or live (the node).

Both evaluations write report.json, report.md and plots, also when the bag is damaged or the run
is interrupted: every image is accounted for as scored, unlabelled, label_error, unreadable,
failed or dropped. Ctrl-C ends every command with one line (exit code 130) and keeps what was
written.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from sdcpc_core import bags
from sdcpc_core.bags import BagError
from sdcpc_core.propagation import PRESETS as FLOW_PRESETS
from sdcpc_core.settings import TOOL_DEFAULTS, add_arguments, settings_from_arguments
from sdcpc_ros.evaluation.live import evaluate_live
from sdcpc_ros.evaluation.offline import evaluate_offline
from sdcpc_ros.evaluation.scoring import DEFAULT_MAX_TIME_GAP


def _add_bag_options(p) -> None:
    p.add_argument("--fps", type=float, default=10.0, help="frame rate for the stamps (default 10)")
    p.add_argument("--storage", choices=sorted(bags.STORAGES), default="mcap")
    p.add_argument("--image-topic", default=bags.DEFAULT_IMAGE_TOPIC)
    p.add_argument("--label-topic", default=bags.DEFAULT_LABEL_TOPIC)
    p.add_argument("--frame-id", default=bags.DEFAULT_FRAME_ID)
    p.add_argument("--start-stamp", type=float, default=bags.DEFAULT_START_STAMP,
                   help="stamp of the first frame, seconds (default %(default)s)")
    p.add_argument("--video-gap", type=float, default=bags.DEFAULT_VIDEO_GAP,
                   help="stamp jump between videos, seconds (default 10; > the node's max_time_gap)")


def _add_eval_options(p) -> None:
    p.add_argument("bag", help="rosbag2 folder, or a .mcap / .db3 file")
    p.add_argument("--out", required=True, help="folder for report.json, report.md and the plots")
    p.add_argument("--checkpoint", default=None, help="sdcpc checkpoint, export directory, "
                   "Hugging Face SegFormer directory or Hub id, or published .pth (default: the embedded model)")
    p.add_argument("--image-topic", default=bags.DEFAULT_IMAGE_TOPIC)
    p.add_argument("--label-topic", default=None,
                   help=f"ground-truth mono8 topic (default {bags.DEFAULT_LABEL_TOPIC} if present; '' = none)")
    # engine settings, typed and checked by sdcpc_core.settings (cpu by default: reproducible)
    add_arguments(p, ("input_size", "device", "max_time_gap"),
                  defaults={"device": "cpu", "max_time_gap": DEFAULT_MAX_TIME_GAP})
    p.add_argument("--samples", type=int, default=4, help="sample frames in samples.png (default 4)")


def _convert(args) -> int:
    common = {"fps": args.fps, "storage": args.storage, "image_topic": args.image_topic,
              "label_topic": args.label_topic or None, "frame_id": args.frame_id,
              "start_stamp": args.start_stamp, "video_gap": args.video_gap}
    total = None
    problems: list[str] = []
    if args.source == "synthetic":
        frames = bags.synthetic_frames(args.videos, args.length, *args.size, seed=args.seed)
        total = args.videos * args.length
    elif args.source == "images":
        frames = bags.image_folder_frames(args.input, args.labels)
    elif args.source == "video":
        frames = bags.video_file_frames(args.input, args.labels, problems)
    elif args.source == "vspw":
        frames = bags.vspw_frames(args.input, args.videos, args.split)
    else:
        frames = bags.cityscapes_frames(args.input, args.split, args.cities)
    summary = bags.write_bag(args.output, frames, total=total, **common)
    for line in problems:
        print(f"sdcpc-eval: warning: {line}", file=sys.stderr)
    what = (f"{summary.path}: {summary.frames} frames ({summary.labelled} labelled) in "
            f"{len(summary.videos)} videos on {args.image_topic}"
            + (f" and {args.label_topic}" if summary.labelled else ""))
    if summary.interrupted:
        print(f"sdcpc-eval convert: interrupted (Ctrl-C); kept {what}", file=sys.stderr)
        return 130
    print(f"wrote {what}")
    return 0


def _print_outcome(report: dict, out) -> int:
    f = report["frames"]
    print(f"{report['mode']} evaluation {report['status']}: {f['scored']} frames scored, "
          f"{f['unlabelled']} unlabelled, {f['label_error']} label errors, {f['unreadable']} unreadable, "
          f"{f['dropped']} dropped; report in {Path(out) / 'report.md'}")
    for line in report["problems"][:10] + report["errors"]:
        print(f"sdcpc-eval: {line}", file=sys.stderr)
    return {"complete": 0, "partial": 1, "interrupted": 130}[report["status"]]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sdcpc-eval", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    convert = sub.add_parser("convert", help="image folders, videos, VSPW, Cityscapes, synthetic -> rosbag2")
    sources = convert.add_subparsers(dest="source", required=True)
    p = sources.add_parser("synthetic", help="the procedural labelled generator")
    p.add_argument("output")
    p.add_argument("--videos", type=int, default=3)
    p.add_argument("--length", type=int, default=30, help="frames per video")
    p.add_argument("--size", type=int, nargs=2, default=(120, 160), metavar=("H", "W"))
    p.add_argument("--seed", type=int, default=1000, help="video v uses seed + v (default 1000)")
    _add_bag_options(p)
    for name, what in (("images", "a folder of images (one video), name order"),
                       ("video", "a video file (OpenCV)")):
        p = sources.add_parser(name, help=what)
        p.add_argument("input")
        p.add_argument("output")
        p.add_argument("--labels", default=None, help="folder of label PNGs (class ids) by name/frame number")
        _add_bag_options(p)
    p = sources.add_parser("vspw", help="VSPW root (data/<video>/origin|mask), labels shifted")
    p.add_argument("input")
    p.add_argument("output")
    p.add_argument("--split", default="val")
    p.add_argument("--videos", nargs="*", default=None)
    _add_bag_options(p)
    p = sources.add_parser("cityscapes", help="Cityscapes leftImg8bit_sequence + gtFine train ids")
    p.add_argument("input")
    p.add_argument("output")
    p.add_argument("--split", default="val")
    p.add_argument("--cities", nargs="*", default=None)
    _add_bag_options(p)

    p = sub.add_parser("offline", help="replay every frame through the engine and score it")
    _add_eval_options(p)
    p.add_argument("--baseline", default=None, help="per-frame baseline checkpoint, scored side by side")
    add_arguments(p, ("precision", "backend"), TOOL_DEFAULTS)
    p.add_argument("--predict-gt", action="store_true",
                   help="score the label topic against itself (checks the bag and scoring: expect 1.0)")

    p = sub.add_parser("live", help="play the bag to sdcpc_node and score what it publishes")
    _add_eval_options(p)
    add_arguments(p, ("precision", "backend"), TOOL_DEFAULTS)  # of the node started here (not with --connect)
    p.add_argument("--rate", type=float, default=1.0, help="playback speed factor (default 1)")
    p.add_argument("--connect", action="store_true", help="use a running node instead of starting one")
    p.add_argument("--propagate", action="store_true",
                   help="start the node with propagate:=true (frames the network has no time for are "
                        "answered with carried labels; the report scores every frame three ways)")
    p.add_argument("--propagation-flow", choices=tuple(FLOW_PRESETS), default=None,
                   help="with --propagate: the node's propagation_flow (OpenCV DIS preset; default the "
                        "node's, medium)")
    p.add_argument("--node-name", default="sdcpc")
    p.add_argument("--labels-topic", default=None, help="the node's labels topic (default /<node>/labels)")
    p.add_argument("--publish-topic", default=None, help="topic the node reads images from (default the "
                   "bag's image topic)")
    p.add_argument("--max-pause", type=float, default=1.0,
                   help="longest wait between two frames in seconds (shortens video gaps; default 1)")
    p.add_argument("--drain-timeout", type=float, default=10.0)
    p.add_argument("--startup-timeout", type=float, default=120.0)

    p = sub.add_parser("quantize", help="add int8 graphs to an export directory, calibrated on a bag's images")
    p.add_argument("bag", help="rosbag2 folder, or a .mcap / .db3 file")
    p.add_argument("export", help="export directory (sdcpc export CKPT -o DIR) to add the int8 graphs to")
    p.add_argument("--image-topic", default=bags.DEFAULT_IMAGE_TOPIC)
    p.add_argument("--frames", type=int, default=48, help="images streamed for calibration (default 48)")
    return parser


def _quantize(args) -> int:
    """``sdcpc-eval quantize BAG DIR``: the bag's images (log-time order) calibrate DIR's int8 graphs."""
    from sdcpc_core.engine import StreamingSegmenter
    from sdcpc_core.quantize import RUNTIMES, quantize_export
    from sdcpc_ros.evaluation.pairing import paired_frames

    def say(line):
        print(f"sdcpc-eval quantize: {line}", file=sys.stderr, flush=True)

    problems: list[str] = []
    with bags.BagReader(args.bag) as bag:
        if args.image_topic not in bag.topics:
            raise BagError(f"bag {args.bag} has no topic {args.image_topic}; its topics: "
                           f"{', '.join(sorted(bag.topics)) or 'none'} (choose with --image-topic)")
        frames = (pair.image for pair in paired_frames(bag, args.image_topic, None, problems)
                  if pair.image is not None)
        runtimes = tuple(r for r in RUNTIMES if _installed(r))
        quantize_export(args.export, frames, runtimes=runtimes, frames=args.frames, progress=say,
                        segmenter_cls=StreamingSegmenter)
    for problem in problems:
        say(problem)
    print(f"wrote int8 graphs for {', '.join(runtimes)} into {args.export}; run it with --checkpoint "
          f"{args.export} --precision int8")
    return 0


def _installed(runtime: str) -> bool:
    import importlib.util

    needs = (runtime, "nncf") if runtime == "openvino" else (runtime,)
    return all(importlib.util.find_spec(n) is not None for n in needs)


def _resolve_checkpoints(args) -> None:
    """A Hub id, a Hugging Face directory or a published .pth: converted once (cached), then a file."""
    from sdcpc_core.checkpoints import resolve_checkpoint

    def say(line):
        print(f"sdcpc-eval: {line}", file=sys.stderr, flush=True)

    for name in ("checkpoint", "baseline"):
        if getattr(args, name, None):
            setattr(args, name, str(resolve_checkpoint(getattr(args, name), progress=say)))


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "propagation_flow", None) and not args.propagate:
        parser.error("--propagation-flow is the flow of --propagate: add --propagate")
    try:
        if args.command == "convert":
            return _convert(args)
        if args.command == "quantize":
            return _quantize(args)
        stream = settings_from_arguments(args)  # a refused value: the same message as the node's
        _resolve_checkpoints(args)
        explicit = args.label_topic is not None
        label_topic = (args.label_topic if explicit else bags.DEFAULT_LABEL_TOPIC) or None
        common = {"checkpoint": args.checkpoint, "image_topic": args.image_topic,
                  "label_topic": label_topic, "explicit_label_topic": explicit and bool(label_topic),
                  "input_size": stream.input_size, "device": stream.device,
                  "max_time_gap": stream.max_time_gap, "samples": args.samples}
        if args.command == "offline":
            report = evaluate_offline(args.bag, args.out, baseline=args.baseline,
                                      precision=stream.precision, backend=stream.backend,
                                      predict_gt=args.predict_gt,
                                      progress=True, **common)
        else:
            from sdcpc_ros.transport import use_default_profile

            use_default_profile()  # this process publishes large images (docs/transport.md)
            report = evaluate_live(args.bag, args.out, rate=args.rate, connect=args.connect,
                                   propagate=args.propagate, propagation_flow=args.propagation_flow,
                                   precision=stream.precision, backend=stream.backend,
                                   node_name=args.node_name, labels_topic=args.labels_topic,
                                   publish_topic=args.publish_topic, max_pause=args.max_pause,
                                   drain_timeout=args.drain_timeout,
                                   startup_timeout=args.startup_timeout, **common)
        return _print_outcome(report, args.out)
    except (BagError, FileNotFoundError, ValueError, RuntimeError) as exc:
        print(f"sdcpc-eval: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"sdcpc-eval {args.command}: interrupted (Ctrl-C)", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
