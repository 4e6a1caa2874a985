"""Labelled video for :func:`~sdcpc_core.bags.writer.write_bag`: image folders, video files, VSPW,
Cityscapes sequences and the synthetic generator, each as a stream of :class:`SourceFrame`."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from sdcpc_core.bags.writer import SourceFrame


def image_folder_frames(folder, label_folder=None, video: str | None = None,
                        label_map=None) -> Iterator[SourceFrame]:
    """Images in name order; labels are the label folder's PNG with the same stem (if any)."""
    from sdcpc_core.data.clips import read_label
    from sdcpc_core.frames import image_files, read_image

    folder = Path(folder)
    for path in image_files(folder):
        labels = None
        if label_folder is not None and (lp := Path(label_folder) / f"{path.stem}.png").is_file():
            labels = read_label(lp)
            labels = label_map(labels) if label_map else labels
        yield SourceFrame(video or folder.name, read_image(path), labels)


def video_file_frames(path, label_folder=None, problems: list[str] | None = None) -> Iterator[SourceFrame]:
    """Frames of a video file (OpenCV); label ``<n>.png`` (any zero padding) belongs to frame n.

    A video that ends before the frame count its container announces is described in ``problems``.
    """
    from sdcpc_core.data.clips import read_label
    from sdcpc_core.frames import VideoFrames

    labels_by_index = {}
    if label_folder is not None:
        for lp in Path(label_folder).glob("*.png"):
            digits = "".join(c for c in lp.stem if c.isdigit())
            if digits:
                labels_by_index[int(digits)] = lp
    video = VideoFrames(path)
    for index, image in enumerate(video):
        lp = labels_by_index.get(index)
        yield SourceFrame(Path(path).stem, image, read_label(lp) if lp else None)
    if video.shortfall and problems is not None:
        problems.append(video.shortfall)


def vspw_frames(root, videos=None, split: str | None = "val") -> Iterator[SourceFrame]:
    """VSPW ``data/<video>/origin/*.jpg`` + ``mask/*.png``, masks shifted (raw 0 -> 255, v -> v-1).

    The videos: ``videos`` if given, else those of ``<root>/<split>.txt`` (which must exist), else
    (``split=None``) every video under ``data/``."""
    from sdcpc_core.data.vspw import shift_vspw_labels, vspw_videos

    root = Path(root)
    if videos is None:
        videos = (vspw_videos(root, split) if split
                  else sorted(p.name for p in (root / "data").iterdir() if p.is_dir()))
    for name in videos:
        yield from image_folder_frames(root / "data" / name / "origin", root / "data" / name / "mask",
                                       video=name, label_map=shift_vspw_labels)


def cityscapes_frames(root, split: str = "val", cities=None) -> Iterator[SourceFrame]:
    """``leftImg8bit_sequence/<split>/<city>/<city>_<seq>_<frame>_leftImg8bit.png``; a run of
    consecutive frame numbers is one video; labels (train ids) from ``gtFine`` where they exist."""
    from sdcpc_core.data.cityscapes import IMAGE_SUFFIX, LABEL_SUFFIX, file_name, parse_name
    from sdcpc_core.data.clips import read_image, read_label

    base = Path(root) / "leftImg8bit_sequence" / split
    if not base.is_dir():
        raise FileNotFoundError(f"no Cityscapes sequence folder {base}")
    for city_dir in sorted(p for p in base.iterdir() if p.is_dir()):
        if cities and city_dir.name not in cities:
            continue
        previous = None
        for path in sorted(city_dir.glob(f"*{IMAGE_SUFFIX}")):
            city, seq, n = parse_name(path.name, IMAGE_SUFFIX)
            if previous is None or previous[0] != seq or n != previous[1] + 1:
                video = file_name(city, seq, n, "")
            previous = (seq, n)
            gt = Path(root) / "gtFine" / split / city / file_name(city, seq, n, LABEL_SUFFIX)
            yield SourceFrame(video, read_image(path), read_label(gt) if gt.is_file() else None)


def synthetic_frames(videos: int, length: int, height: int, width: int,
                     seed: int = 0) -> Iterator[SourceFrame]:
    """The procedural generator (labels = ``SYNTHETIC_LABELS`` ids); video v uses seed + v."""
    from sdcpc_core.data.synthetic import iter_video

    for v in range(videos):
        for image, labels in iter_video(seed + v, length, height, width):
            yield SourceFrame(f"synthetic_{seed + v}", image, labels)


