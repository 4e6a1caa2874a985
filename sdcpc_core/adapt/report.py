"""The report beside an adapted checkpoint: ``OUT.md`` and ``OUT_loss.png``.

Label-free measures on the source itself, both models streamed through the engine: label
flicker (share of pixels whose label changes from one frame to the next), how often the
student agrees with the teacher, and the pseudo-labels' coverage.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from sdcpc_core.metrics import LabelFlicker


def stream_labels_flicker(model, labels, frames_per_video, mean, std) -> tuple[float, list[np.ndarray]]:
    """Stream each video through a StreamingSegmenter; (pooled flicker, labels per frame)."""
    from sdcpc_core.engine import StreamingSegmenter

    engine = StreamingSegmenter(model, labels, device="cpu", mean=tuple(mean), std=tuple(std))
    flicker, out = LabelFlicker(), []
    for frames in frames_per_video:
        engine.reset("next source")
        flicker.start_video()
        for frame in frames:
            pred = engine.step(frame).labels
            flicker.update(pred)
            out.append(pred)
        flicker.end_video()
    return flicker.compute(), out


def source_measures(teacher, student, labels, videos, mean, std, max_frames: int = 50) -> dict:
    """Teacher and student flicker and their agreement on (at most ``max_frames`` of) each source."""
    clipped = [v[:max_frames] for v in videos]
    t_flicker, t_labels = stream_labels_flicker(teacher, labels, clipped, mean, std)
    s_flicker, s_labels = stream_labels_flicker(student, labels, clipped, mean, std)
    agree = float(np.mean([(a == b).mean() for a, b in zip(t_labels, s_labels)]))
    return {"teacher_flicker": t_flicker, "student_flicker": s_flicker, "agreement": agree,
            "frames_measured": sum(len(v) for v in clipped)}


def plot_history(history: dict, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.6), dpi=100)
    steps = history.get("step", [])
    ax.plot(steps, history.get("loss", []), color="tab:blue", lw=1, label="loss")
    ax.set_xlabel("step")
    ax.set_ylabel("loss", color="tab:blue")
    ax2 = ax.twinx()
    ax2.plot(steps, history.get("coverage", []), color="tab:orange", lw=1, alpha=0.7)
    ax2.set_ylabel("pseudo-label coverage", color="tab:orange")
    ax2.set_ylim(0, 1.05)
    ax.set_title("sdcpc adapt: training loss and pseudo-label coverage per step")
    fig.tight_layout()
    tmp = path.with_name(path.stem + ".tmp.png")
    fig.savefig(tmp)
    plt.close(fig)
    os.replace(tmp, path)
    return path


def _pct(x) -> str:
    return "n/a" if x is None or x != x else f"{100 * x:.1f} %"


def write_report(path: Path, training: dict, measures: dict | None, plot: Path | None) -> Path:
    """Markdown summary; written to a temporary name first, then renamed."""
    t = training
    lines = [f"# sdcpc adapt: {Path(t['output']).name}", "",
             f"- teacher: `{t['teacher']}`; student started from: `{t['student_init']}`",
             f"- sources ({t['frames']} frames at {t['input_size'][0]}x{t['input_size'][1]}):"]
    lines += [f"  - `{s['path']}`: {s['frames']} of its {s.get('recorded_frames', s['frames'])} frames "
              f"(recorded {s['size'][1]}x{s['size'][0]})" for s in t["sources"]]
    stopped = " (interrupted: Ctrl-C)" if t.get("interrupted") else ""
    lines += [f"- training: {t['steps']} steps in {t['minutes']:.1f} min{stopped}; the cache (encoder "
              f"features, teacher, pseudo-labels; {t.get('cache_gib', 0):.2f} GiB on disk) took {t['cache_s']:.0f} s",
              f"- pseudo-label coverage (ensemble probability >= {t['recipe']['threshold']}): "
              f"{_pct(t['pseudo_label_coverage'])}",
              f"- recipe: `{t['recipe']}`", ""]
    if measures:
        lines += ["## On the source itself (no labels needed; streaming engine, "
                  f"{measures['frames_measured']} frames)", "",
                  "| | label flicker |", "|---|---|",
                  f"| teacher | {_pct(measures['teacher_flicker'])} |",
                  f"| adapted student | {_pct(measures['student_flicker'])} |", "",
                  f"The student gives the teacher's label on {_pct(measures['agreement'])} of the pixels.",
                  "Less flicker with high agreement is the aim: labels that hold across frames "
                  "without drifting from what the teacher sees. Accuracy needs labelled video "
                  "(`sdcpc-eval offline`).", ""]
    if plot is not None:
        lines += [f"![loss and coverage]({plot.name})", ""]
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("\n".join(lines))
    os.replace(tmp, path)
    return path
