"""Evaluation report files: report.json (every number, NaN -> null), report.md (tables), PNG plots
(per-class IoU, VC8 per window, latency histogram) and samples.png (input | prediction | GT)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

MODEL_TITLES = {"sdcpc": "SD-CPC", "baseline": "baseline", "node": "node (live, as published)",
                "network": "network frames only", "held": "last labels held", "ground_truth": "GT vs GT"}
COUNT_TITLES = (("scored", "scored"), ("unlabelled", "unlabelled"), ("label_error", "label errors"),
                ("unreadable", "unreadable"), ("failed", "failed"), ("dropped", "dropped"),
                ("duplicate_stamp", "duplicate stamps"), ("not_read", "not read"))


def _fmt(v, digits: int = 3) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "–"
    return f"{v:.{digits}f}" if isinstance(v, float) else str(v)


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] + [
        "| " + " | ".join(r) + " |" for r in rows]


def markdown(report: dict, plots: list[str]) -> str:
    models = list(report["models"])
    titles = [MODEL_TITLES.get(m, m) for m in models]
    s = report["settings"]
    lines = [f"# Evaluation of `{report['bag']}` ({report['mode']})", "",
             f"Status: **{report['status']}**. Checkpoint: `{s.get('checkpoint')}`"
             + (f", baseline: `{s['baseline']}`" if s.get("baseline") else "")
             + f". Images `{s.get('image_topic')}`, ground truth `{s.get('label_topic') or 'none'}`. "
             f"{len(report['videos'])} videos (a stream reset starts a new one).", ""]
    m = report["models"]
    rows = [["mIoU"] + [_fmt(m[k]["miou"]) for k in models],
            ["pixel accuracy"] + [_fmt(m[k]["pixel_acc"]) for k in models],
            ["mVC8"] + [_fmt(m[k]["mvc8"]) for k in models],
            ["mVC16"] + [_fmt(m[k]["mvc16"]) for k in models],
            ["VC windows (8 / 16)"] + [f"{m[k]['mvc_windows']['8']} / {m[k]['mvc_windows']['16']}"
                                       for k in models],
            ["label flicker"] + [_fmt(m[k]["flicker"], 4) for k in models],
            ["latency p50 (ms)"] + [_fmt(m[k]["latency_ms"]["p50"], 1) for k in models],
            ["latency p95 (ms)"] + [_fmt(m[k]["latency_ms"]["p95"], 1) for k in models]]
    lines += _table(["metric"] + titles, rows) + ["", "## Frames", ""]
    f = report["frames"]
    lines += _table(["in bag"] + [t for _, t in COUNT_TITLES],
                    [[_fmt(f["in_bag"])] + [_fmt(f[k]) for k, _ in COUNT_TITLES]])
    lines += ["", "## Per-class IoU", ""]
    class_rows = [[name] + [_fmt(m[k]["per_class_iou"][i]) for k in models]
                  for i, name in enumerate(report["classes"])]
    lines += _table(["class"] + titles, class_rows)
    if report.get("strategies"):
        lines += _strategy_lines(report["strategies"])
    for title, items in (("Errors", report["errors"]), ("Problems", report["problems"])):
        if items:
            lines += ["", f"## {title}", ""] + [f"- {x}" for x in items[:50]]
            if len(items) > 50:
                lines.append(f"- … {len(items) - 50} more in report.json")
    bad = [fr for fr in report["frame_log"]
           if fr["status"] in ("unreadable", "label_error", "failed", "duplicate_stamp")]
    if bad:
        lines += ["", "## Frames not scored", ""] + [
            f"- frame {fr['index']} (stamp {fr['stamp']}): {fr['status']}: {fr['reason']}" for fr in bad[:50]]
    if plots:
        lines += ["", "## Plots", ""] + [f"![{p}]({p})" for p in plots]
    return "\n".join(lines) + "\n"


def _strategy_lines(st: dict) -> list[str]:
    """Every frame three ways, and by frames since the network frame (sdcpc_ros.evaluation.strategies)."""
    names = [("network", "network frames only"), ("held", "every frame, labels held"),
             ("node", "every frame, as published")]
    lines = ["", "## Every frame three ways", "",
             "Frames since the network frame whose labels were used (0: the network's own frame):"
             " mIoU / dynamic-mask recall.", ""]
    rows = [[title, _fmt(st[n]["all"]["miou"]), _fmt(st[n]["all"]["dynamic_recall"]),
             _fmt(st[n]["not_network_frames"]["miou"]), _fmt(st[n]["not_network_frames"]["dynamic_recall"])]
            for n, title in names]
    lines += _table(["strategy", "mIoU", "dynamic recall", "mIoU, frames >= 1 since",
                     "dynamic recall, frames >= 1 since"], rows) + [""]
    buckets = list(st["frames_per_bucket"])
    rows = [[title] + [f"{_fmt(st[n]['per_frames_since'][b]['miou'])} / "
                       f"{_fmt(st[n]['per_frames_since'][b]['dynamic_recall'])}" for b in buckets]
            for n, title in names[1:]]
    rows.append(["frames"] + [str(st["frames_per_bucket"][b]) for b in buckets])
    lines += _table(["frames since"] + buckets, rows)
    lat = st["latency_ms"]
    lines += ["", "Publish to `~/labels` received (ms): network answers p50 "
              f"{_fmt(lat['network']['p50'], 1)}, p95 {_fmt(lat['network']['p95'], 1)} "
              f"({lat['network']['count']}); propagated answers p50 {_fmt(lat['propagated']['p50'], 1)}, "
              f"p95 {_fmt(lat['propagated']['p95'], 1)} ({lat['propagated']['count']})."]
    return lines


def write_report(out_dir, report: dict, labels, samples: list[dict]) -> Path:
    """Write report.json, report.md and the plots into ``out_dir``; returns the report.md path."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    plots = _plots(out, report, labels, samples)  # first, so that report.json lists what failed
    (out / "report.json").write_text(json.dumps(report, indent=1, allow_nan=False) + "\n")
    path = out / "report.md"
    path.write_text(markdown(report, plots))
    return path


def _plots(out: Path, report: dict, labels, samples) -> list[str]:
    """Write every plot that applies; a plot that fails is recorded in ``report["problems"]``
    (numbers matter more than pictures). Returns the file names written."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = list(report["models"])
    lat = {m: [fr["latency_ms"][m] for fr in report["frame_log"] if m in fr.get("latency_ms", {})]
           for m in models}
    wanted = [("per_class_iou.png", any(report["models"][m]["miou"] is not None for m in models),
               lambda path: _per_class_plot(path, report, plt)),
              ("vc_windows.png", any(report["models"][m]["vc8_windows"] for m in models),
               lambda path: _vc_plot(path, report, plt)),
              ("latency.png", any(lat.values()), lambda path: _latency_plot(path, report, lat, plt)),
              ("samples.png", bool(samples), lambda path: _strip(path, samples, labels, plt)),
              ("frames_since.png", bool(report.get("strategies")),
               lambda path: _frames_since_plot(path, report["strategies"], plt))]
    written = []
    for name, applies, draw in wanted:
        if not applies:
            continue
        try:
            written.append(draw(out / name))
        except Exception as exc:  # noqa: BLE001 - numbers matter more than pictures
            plt.close("all")
            report.setdefault("problems", []).append(f"plot {name} not written: {type(exc).__name__}: {exc}")
    return written


def _per_class_plot(path: Path, report: dict, plt) -> str:
    models, names = list(report["models"]), report["classes"]
    fig, ax = plt.subplots(figsize=(max(6, 0.5 * len(names) * len(models)), 4))
    width = 0.8 / len(models)
    for j, m in enumerate(models):
        iou = [np.nan if v is None else v for v in report["models"][m]["per_class_iou"]]
        ax.bar(np.arange(len(names)) + j * width, iou, width, label=MODEL_TITLES.get(m, m))
    ax.set_xticks(np.arange(len(names)) + 0.4 - width / 2, names, rotation=60, ha="right")
    ax.set_ylim(0, 1)
    ax.set_ylabel("IoU")
    ax.legend()
    return _save(fig, path)


def _vc_plot(path: Path, report: dict, plt) -> str:
    fig, ax = plt.subplots(figsize=(8, 3))
    for m in report["models"]:
        w = np.asarray(report["models"][m]["vc8_windows"], dtype=float).reshape(-1, 2)
        ax.plot(w[:, 0], w[:, 1], ".-", ms=3, label=MODEL_TITLES.get(m, m))
    for v in report["videos"][1:]:
        ax.axvline(v["first_frame"], color="grey", lw=0.5)
    ax.set_xlabel("frame index (end of the 8-frame window)")
    ax.set_ylabel("VC8 of the window")
    ax.set_ylim(0, 1.02)
    ax.legend()
    return _save(fig, path)


def _latency_plot(path: Path, report: dict, lat: dict, plt) -> str:
    fig, ax = plt.subplots(figsize=(6, 3))
    for m, values in lat.items():
        if values:
            ax.hist(values, bins=30, alpha=0.6, label=MODEL_TITLES.get(m, m))
    ax.set_xlabel("latency (ms)" + (", publish to ~/labels" if report["mode"] == "live" else
                                    ", engine step"))
    ax.set_ylabel("frames")
    ax.legend()
    return _save(fig, path)


def _strip(path: Path, samples, labels, plt) -> str:
    keys = list(dict.fromkeys(k for s in samples for k in s["preds"]))  # a model may skip a frame
    with_gt = any(s["gt"] is not None for s in samples)  # no ground-truth column for an unlabelled bag
    cols = 1 + len(keys) + with_gt
    fig, axes = plt.subplots(len(samples), cols, figsize=(2.6 * cols, 2.0 * len(samples)), squeeze=False)
    for r, s in enumerate(samples):
        panels = [("input", s["image"])] + [
            (MODEL_TITLES.get(k, k), labels.colorize(s["preds"][k]) if k in s["preds"]
             else np.zeros_like(s["image"])) for k in keys]
        if with_gt:
            panels.append(("ground truth", labels.colorize(s["gt"]) if s["gt"] is not None
                           else np.zeros_like(s["image"])))
        for c, (title, img) in enumerate(panels):
            ax = axes[r][c]
            ax.imshow(img)
            ax.set_xticks([])
            ax.set_yticks([])
            if c == 0:
                ax.set_ylabel(f"frame {s['index']}", fontsize=8)
            if r == 0:
                ax.set_title(title, fontsize=9)
    return _save(fig, path)


def _frames_since_plot(path: Path, st: dict, plt) -> str:
    buckets = list(st["frames_per_bucket"])
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.4))
    for key, ax, label in (("miou", axes[0], "mIoU"), ("dynamic_recall", axes[1], "dynamic-mask recall")):
        for name, title, style in (("node", "propagated", "o-"), ("held", "last labels held", "s--")):
            y = [np.nan if st[name]["per_frames_since"][b][key] is None else st[name]["per_frames_since"][b][key]
                 for b in buckets]
            ax.plot(range(len(buckets)), y, style, label=title)
        own = st["network"]["all"][key]
        if own is not None:
            ax.axhline(own, color="grey", lw=1, ls=":", label="network frames (all)")
        ax.set_xticks(range(len(buckets)), buckets)
        ax.set_xlabel("camera frames since the network frame")
        ax.set_ylabel(label)
        ax.legend(fontsize=8)
    return _save(fig, path)


def _save(fig, path: Path) -> str:
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    import matplotlib.pyplot as plt

    plt.close(fig)
    return path.name
