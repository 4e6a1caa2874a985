"""Command line: ``sdcpc segment | demo | info | palette | convert | export | train | adapt``.

Ctrl-C ends any command with one line (exit code 130); what was written so far is kept."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import cv2
import numpy as np

from sdcpc_core.openmp import backend_argument, sleep_when_idle

DEFAULT_FPS = 10.0  # of an MP4 output when the input is an image folder


class Interrupted(Exception):
    """Ctrl-C during a command; the message says what was kept."""


class OutputWriter:
    """Writes colour-mapped results as numbered PNGs (a folder) or one MP4 (``*.mp4``)."""

    def __init__(self, out: Path, fps: float = 10.0):
        self.out, self.fps, self.video, self.count = out, fps, None, 0
        if out.suffix.lower() != ".mp4":
            out.mkdir(parents=True, exist_ok=True)

    def write(self, rgb: np.ndarray) -> None:
        bgr = cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)
        if self.out.suffix.lower() == ".mp4":
            if self.video is None:
                self.out.parent.mkdir(parents=True, exist_ok=True)
                self.video = cv2.VideoWriter(str(self.out), cv2.VideoWriter_fourcc(*"mp4v"), self.fps,
                                             (bgr.shape[1], bgr.shape[0]))
            self.video.write(bgr)
        else:
            cv2.imwrite(str(self.out / f"{self.count:06d}.png"), bgr)
        self.count += 1

    def close(self) -> None:
        if self.video is not None:
            self.video.release()


def render(frame: np.ndarray, labels_rgb: np.ndarray, style: str) -> np.ndarray:
    """``color``: labels only; ``overlay``: blended; ``side``: input | labels."""
    if style == "color":
        return labels_rgb
    if style == "overlay":
        return cv2.addWeighted(frame, 0.5, labels_rgb, 0.5, 0)
    return np.concatenate([frame, labels_rgb], axis=1)


def _engine(args):
    from sdcpc_core.engine import StreamingSegmenter
    from sdcpc_core.settings import settings_from_arguments

    engine = StreamingSegmenter.from_checkpoint(args.checkpoint or None, settings_from_arguments(args),
                                                export_progress=_announce)
    _announce(engine.runtime_note)  # which backend and precision run, and why
    if engine.precision_warning:
        _announce(f"warning: {engine.precision_warning}")
    return engine


def cmd_segment(args) -> int:
    from tqdm import tqdm

    from sdcpc_core.frames import FrameSourceError, open_frames

    engine = _engine(args)
    try:
        frames = open_frames(args.input)
    except FrameSourceError as e:
        raise SystemExit(f"error: {e}") from None
    writer = OutputWriter(Path(args.output), args.fps or frames.fps or DEFAULT_FPS)
    latencies = []
    try:
        for frame in tqdm(frames, total=frames.announced, unit="frame", desc="segment"):
            res = engine.step(frame)
            latencies.append(res.latency_ms)
            writer.write(render(frame, engine.labels.colorize(res.labels), args.style))
    except FrameSourceError as e:
        raise SystemExit(f"error: {e}") from None
    except KeyboardInterrupt:
        raise Interrupted(f"after {writer.count} frames; they are in {args.output}") from None
    finally:
        writer.close()
    if frames.shortfall:
        print(f"warning: {frames.shortfall}", file=sys.stderr)
    if latencies:
        print(f"wrote {writer.count} frames to {args.output}; median latency "
              f"{np.median(latencies):.1f} ms/frame on {engine.device}")
    return 0


def cmd_demo(args) -> int:
    """Generate a synthetic clip, segment it with the embedded model, write PNGs and a score."""
    from tqdm import tqdm

    from sdcpc_core.data.synthetic import generate_video
    from sdcpc_core.metrics import VideoMetrics

    engine = _engine(args)
    size = engine.input_size or (256, 256)
    frames, gt = generate_video(seed=args.seed, length=args.frames, height=size[0], width=size[1])
    out = Path(args.output)
    writer = OutputWriter(out)
    metrics = VideoMetrics(engine.labels.num_classes)
    metrics.start_video()
    try:
        for frame, label in tqdm(zip(frames, gt), total=len(frames), unit="frame", desc="demo"):
            res = engine.step(frame)
            metrics.update(res.labels, label)
            writer.write(np.concatenate([frame, engine.labels.colorize(res.labels),
                                         engine.labels.colorize(label)], axis=1))
    except KeyboardInterrupt:
        raise Interrupted(f"after {writer.count} frames; they are in {out}/") from None
    finally:
        writer.close()
    metrics.end_video()
    scores = metrics.compute()
    print(f"wrote {writer.count} frames (input | prediction | ground truth) to {out}/")
    print(f"synthetic clip seed {args.seed}: mIoU {scores['miou']:.3f}, "
          f"mVC8 {_fmt(scores.get('mvc8'))}, flicker {scores['flicker']:.3f}")
    return 0


def _fmt(x) -> str:
    return "n/a" if x is None or x != x else f"{x:.3f}"


def _announce(line: str) -> None:
    print(f"sdcpc: {line}", file=sys.stderr, flush=True)


def cmd_info(args) -> int:
    from sdcpc_core.checkpoints import load_checkpoint, resolve_checkpoint

    path = resolve_checkpoint(args.checkpoint, progress=_announce)
    model, meta = load_checkpoint(path)
    info = {"checkpoint": str(path), "config": meta["config"].to_dict(),
            "classes": list(meta["labels"].names),
            "dynamic_classes": [meta["labels"].names[i] for i in meta["labels"].dynamic],
            "parameters": sum(p.numel() for p in model.parameters()),
            "mean": meta["mean"], "std": meta["std"], "training": meta.get("training", {})}
    print(json.dumps(info, indent=2, default=str))
    return 0


def cmd_palette(args) -> int:
    from sdcpc_core.checkpoints import load_checkpoint, resolve_checkpoint

    _, meta = load_checkpoint(resolve_checkpoint(args.checkpoint, progress=_announce))
    text = meta["labels"].to_csv()
    if args.output:
        Path(args.output).write_text(text)
    else:
        sys.stdout.write(text)
    return 0


def cmd_convert(args) -> int:
    from sdcpc_core.checkpoints import convert_checkpoint
    from sdcpc_core.classes import LabelSet

    labels = None
    if args.class_names:
        names = [n.strip() for n in Path(args.class_names).read_text().splitlines() if n.strip()]
        labels = LabelSet.from_names(names)
    overrides = {k: v for k, v in (("num_classes", args.num_classes),
                                   ("reference_offsets", args.reference_offsets)) if v}
    if labels is not None:
        overrides.setdefault("num_classes", labels.num_classes)
    out = convert_checkpoint(args.source, args.output, temporal=not args.per_frame, labels=labels,
                             half=args.half, input_size=args.input_size, progress=_announce, **overrides)
    from sdcpc_core.checkpoints import load_checkpoint

    _, meta = load_checkpoint(out)
    config, training = meta["config"], meta.get("training", {})
    names = meta["labels"].names
    print(f"wrote {out} ({out.stat().st_size / 1e6:.1f} MB): {config.variant.upper()} "
          f"{'SD-CPC (temporal modules at identity)' if config.temporal else 'per-frame SegFormer'}, "
          f"{config.num_classes} classes ({', '.join(names[:4])}{', …' if len(names) > 4 else ''}) "
          f"from a {training.get('layout', 'sdcpc')} source"
          + (f", input {meta['input_size'][0]}x{meta['input_size'][1]}" if meta.get("input_size") else ""))
    for note in training.get("conversion_notes", []):
        print(f"  note: {note}")
    return 0


def cmd_export(args) -> int:
    from sdcpc_core.checkpoints import resolve_checkpoint
    from sdcpc_core.export import export_model, read_export

    checkpoint = resolve_checkpoint(args.checkpoint, progress=_announce) if args.checkpoint else None
    calibration = _int8_calibration(args, checkpoint)  # refused before anything is exported
    progress = lambda line: print(f"sdcpc export: {line}", file=sys.stderr, flush=True)  # noqa: E731
    out = export_model(checkpoint, args.output, args.input_size, openvino=args.openvino, progress=progress)
    int8 = ""
    if args.int8:
        from sdcpc_core.engine import StreamingSegmenter
        from sdcpc_core.quantize import quantize_export

        runtimes = _int8_runtimes()
        quantize_export(out, calibration, runtimes=runtimes, frames=args.calibration_frames, progress=progress,
                        segmenter_cls=StreamingSegmenter)
        int8 = f" + int8 graphs for {', '.join(runtimes)}"
    meta = read_export(out)
    print(f"wrote {out}: encode.onnx, aggregate.onnx{' + OpenVINO IR' if args.openvino else ''}{int8} for "
          f"{meta['config'].variant.upper()} {'SD-CPC' if meta['config'].temporal else 'SegFormer'}, "
          f"input {meta['input_size'][0]}x{meta['input_size'][1]}, {meta['num_references']} references; "
          f"run it with --checkpoint {out} --backend onnxruntime|openvino"
          f"{' --precision int8' if args.int8 else ''}")
    return 0


def _int8_runtimes() -> tuple[str, ...]:
    """The runtimes installed here that int8 graphs are made for (OpenVINO needs NNCF too)."""
    import importlib.util

    from sdcpc_core.quantize import RUNTIMES

    found = tuple(r for r in RUNTIMES if importlib.util.find_spec(r) is not None
                  and (r != "openvino" or importlib.util.find_spec("nncf") is not None))
    if not found:
        raise ValueError("--int8 needs OpenVINO with NNCF, or ONNX Runtime: pip install 'sdcpc[deploy]'")
    return found


def _int8_calibration(args, checkpoint):
    """The calibration source of ``sdcpc export --int8`` (checked), or None without --int8."""
    from sdcpc_core.exports import is_embedded
    from sdcpc_core.quantize import SYNTHETIC

    if not args.int8:
        if args.calibration:
            raise ValueError("--calibration is for --int8 (sdcpc export CKPT -o DIR --int8 --calibration SOURCE)")
        return None
    _int8_runtimes()
    if args.calibration is None:
        from sdcpc_core.checkpoints import DEFAULT_CHECKPOINT

        if not is_embedded(checkpoint or DEFAULT_CHECKPOINT):
            raise ValueError("--int8 needs --calibration SOURCE: a video or an image folder of the scenes "
                             "the model will see (a bag: sdcpc-eval convert it to a video first, or "
                             "pass its frames to sdcpc_core.quantize.quantize_export)")
        return SYNTHETIC
    if args.calibration != SYNTHETIC:
        from sdcpc_core.frames import open_frames

        open_frames(args.calibration)  # a missing or unreadable source: its FrameSourceError now
    return args.calibration


def cmd_train(args) -> int:
    from sdcpc_core.train import run_training

    run_training(args)
    return 0


ENGINE_OPTIONS = ("device", "precision", "backend", "channels_last", "input_size", "reference_offsets")


def _add_engine_args(p: argparse.ArgumentParser) -> None:
    from sdcpc_core.settings import TOOL_DEFAULTS, add_arguments

    p.add_argument("--checkpoint", default="", help="sdcpc checkpoint, export directory, Hugging Face "
                   "SegFormer directory or Hub id, or published .pth (default: the embedded model)")
    add_arguments(p, ENGINE_OPTIONS, TOOL_DEFAULTS)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sdcpc", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("segment", help="segment a video file or an image folder")
    p.add_argument("input", help="video file (.mp4, .avi, …) or folder of images")
    p.add_argument("-o", "--output", required=True, help="output folder of PNGs, or a .mp4 file")
    p.add_argument("--style", choices=["color", "overlay", "side"], default="side")
    p.add_argument("--fps", type=float, default=None,
                   help="frame rate of an MP4 output (default: the input video's, 10 for a folder)")
    _add_engine_args(p)
    p.set_defaults(func=cmd_segment)

    p = sub.add_parser("demo", help="segment a generated synthetic clip with the embedded model")
    p.add_argument("-o", "--output", default="sdcpc-demo", help="output folder")
    p.add_argument("--frames", type=int, default=24)
    p.add_argument("--seed", type=int, default=2024)
    _add_engine_args(p)
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("info", help="print a checkpoint's config, classes and training summary")
    p.add_argument("checkpoint", nargs="?", default="", help="any checkpoint --checkpoint takes "
                   "(default: the embedded model)")
    p.set_defaults(func=cmd_info)

    p = sub.add_parser("palette", help="export a checkpoint's class palette as CSV")
    p.add_argument("checkpoint", nargs="?", default="", help="any checkpoint --checkpoint takes "
                   "(default: the embedded model)")
    p.add_argument("-o", "--output", help="CSV file (default: stdout)")
    p.set_defaults(func=cmd_palette)

    p = sub.add_parser("convert", help="any published SegFormer (Hugging Face Hub id or directory, NVlabs "
                       "or mmsegmentation .pth, mit_b*.pth) -> sdcpc checkpoint")
    p.add_argument("source", help="a Hub id (nvidia/segformer-b0-finetuned-ade-512-512), a Hugging Face "
                   "directory or its model.safetensors / pytorch_model.bin, an NVlabs SegFormer .pth, an "
                   "ImageNet mit_b*.pth, an mmsegmentation 1.x SegFormer .pth, or an sdcpc checkpoint")
    p.add_argument("-o", "--output", required=True, help="sdcpc checkpoint to write")
    p.add_argument("--per-frame", action="store_true", help="the SegFormer baseline instead of SD-CPC")
    p.add_argument("--num-classes", type=int, help="needed for an encoder-only mit_b*.pth")
    p.add_argument("--class-names", help="text file, one class name per line (default: the source's own "
                   "names, else ADE20K for 150 classes and Cityscapes for 19, else class_000…)")
    p.add_argument("--reference-offsets", type=int, nargs="+", help="e.g. -9 -6 -3")
    p.add_argument("--input-size", type=int, nargs=2, metavar=("H", "W"),
                   help="resolution the engine should use by default")
    p.add_argument("--half", action="store_true", help="store weights as fp16 (half the size)")
    p.set_defaults(func=cmd_convert)

    p = sub.add_parser("export", help="checkpoint -> ONNX graphs (+ OpenVINO IR) for deployment")
    p.add_argument("checkpoint", nargs="?", default="", help="default: the embedded model")
    p.add_argument("-o", "--output", required=True, help="export directory to write")
    p.add_argument("--input-size", type=int, nargs=2, metavar=("H", "W"),
                   help="the graphs' fixed input size (default: the checkpoint's training size)")
    p.add_argument("--openvino", action="store_true", help="also write OpenVINO IR (.xml/.bin)")
    p.add_argument("--int8", action="store_true", help="also write int8 graphs (NNCF for OpenVINO, "
                   "static quantisation for ONNX Runtime), run with --precision int8")
    p.add_argument("--calibration", metavar="SOURCE", help="int8 calibration frames: a video, an image "
                   "folder, or 'synthetic' (the embedded models' world; their default)")
    p.add_argument("--calibration-frames", type=int, default=48, metavar="N",
                   help="frames streamed for calibration (default: 48)")
    p.set_defaults(func=cmd_export)

    from sdcpc_core.train import add_train_arguments

    p = sub.add_parser("train", help="train SD-CPC or the baseline from a YAML config")
    add_train_arguments(p)
    p.set_defaults(func=cmd_train)

    from sdcpc_core.adapt.cli import add_adapt_arguments, cmd_adapt

    p = sub.add_parser("adapt", help="learn SD-CPC's temporal modules on unlabelled video from a teacher")
    add_adapt_arguments(p)
    p.set_defaults(func=cmd_adapt)
    return parser


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] in (["segment"], ["demo"]):  # before PyTorch is imported (sdcpc_core.openmp)
        sleep_when_idle(backend_argument(argv))
    from sdcpc_core.checkpoints import CheckpointError
    from sdcpc_core.engine import FrameError

    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (CheckpointError, FrameError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except Interrupted as e:
        print(f"sdcpc {args.command}: interrupted (Ctrl-C) {e}", file=sys.stderr)
        return 130
    except KeyboardInterrupt:
        print(f"sdcpc {args.command}: interrupted (Ctrl-C)", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
