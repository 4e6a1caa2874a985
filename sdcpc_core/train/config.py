"""Training configuration: explicit dataclasses, read from YAML with ``key.path=value`` overrides."""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from sdcpc_core.models import SDCPCConfig

CONFIG_DIR = Path(__file__).resolve().parent / "configs"


@dataclass
class DataConfig:
    """Which clips to train and validate on, and how to augment them."""

    dataset: str = "synthetic"  # synthetic | vspw | cityscapes
    root: str | None = None  # dataset folder (unused for synthetic)
    train_split: str = "train"
    val_split: str = "val"
    crop_size: tuple[int, int] = (480, 480)  # (H, W)
    scale_range: tuple[float, float] = (0.5, 2.0)  # random resize ratio
    flip: bool = True
    photometric: bool = True
    batch_size: int = 2  # clips per process (per GPU)
    num_workers: int = 2
    options: dict = field(default_factory=dict)  # extra keyword arguments for the dataset class
    val_options: dict = field(default_factory=dict)  # overrides of ``options`` for validation
    cat_max_ratio: float = 1.0  # crop retries while one class fills more than this share


@dataclass
class OptimConfig:
    """AdamW; ``head_lr_mult`` scales every non-encoder group; ``grad_clip`` is a max L2 norm."""

    lr: float = 6e-5
    betas: tuple[float, float] = (0.9, 0.999)
    weight_decay: float = 0.01
    head_lr_mult: float = 10.0
    grad_clip: float | None = None


@dataclass
class ScheduleConfig:
    """Per-iteration linear warm-up (from ``warmup_ratio``) then poly decay to ``min_lr_ratio``."""

    max_iters: int = 160_000
    warmup_iters: int = 1500
    warmup_ratio: float = 1e-6
    power: float = 1.0
    min_lr_ratio: float = 0.0


@dataclass
class LossConfig:
    """CE(final) + static_weight·CE(static) + mcp_weight·MCP-CL (the baseline uses CE only)."""

    static_weight: float = 0.4
    mcp_weight: float = 0.1
    prototypes_per_class: int = 4
    momentum: float = 0.99
    temperature: float = 0.1
    max_pixels_per_class: int = 1024
    kmeans_iters: int = 5
    mcp_pixels: str = "label"  # "label" | "prediction": which pixels make prototypes and anchors
    ignore_index: int = 255

    def __post_init__(self):
        if self.mcp_pixels not in ("label", "prediction"):
            raise ValueError(f"loss.mcp_pixels {self.mcp_pixels!r} is not one of 'label', 'prediction'")


@dataclass
class EvalConfig:
    """Validation every ``interval`` iterations (0: only at the end) on the target frames."""

    interval: int = 16_000
    max_clips: int | None = None  # None: the whole validation set
    batch_size: int = 1
    mvc: tuple[int, ...] = (8, 16)  # mVC_n, when the validation clips carry video names


@dataclass
class TrainConfig:
    """One training run. ``model`` is the network's own config; everything else is the protocol."""

    model: SDCPCConfig = field(default_factory=SDCPCConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    output_dir: str = "runs/sdcpc"
    pretrained: str | None = None  # mit_b*.pth or a SegFormer checkpoint; ignored when resuming
    resume: str | None = "auto"  # "auto": output_dir/last.pt if present; a path; or None
    seed: int = 0
    reference_grad: bool = True  # False: references encoded without autograd (cheaper; not the paper's)
    amp: str = "auto"  # auto (fp16 on CUDA, off on CPU) | fp16 | bf16 | off
    device: str = "auto"  # auto | cpu | cuda
    log_interval: int = 50
    checkpoint_interval: int = 4000
    find_unused_parameters: bool = False  # DDP option
    dist_timeout_min: float = 120  # process-group timeout; ranks > 0 wait while rank 0 validates

    def to_dict(self) -> dict:
        """Plain YAML/JSON types (tuples become lists)."""
        return _plain(dataclasses.asdict(self))


def _plain(obj):
    if isinstance(obj, dict):
        return {k: _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    return obj


def _build(cls, values: dict, where: str):
    """Dataclass ``cls`` from a dict; unknown keys raise, nested dataclasses and tuples are converted."""
    if not isinstance(values, dict):
        raise TypeError(f"config section {where or '<root>'} must be a mapping, got {values!r}")
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(f"unknown config keys {[f'{where}{k}' for k in unknown]}; "
                         f"known in {where or '<root>'}: {sorted(known)}")
    kwargs = {}
    for name, value in values.items():
        hint = hints[name]
        if dataclasses.is_dataclass(hint):
            value = _build(hint, value or {}, f"{where}{name}.")
        elif typing.get_origin(hint) is tuple and isinstance(value, list):
            value = tuple(value)
        elif float in (hint, *typing.get_args(hint)) and isinstance(value, str):
            value = float(value)  # YAML reads "1e-4" (no dot) as a string
        kwargs[name] = value
    return cls(**kwargs)


def apply_overrides(raw: dict, overrides) -> dict:
    """Apply ``["optim.lr=1e-4", "model.reference_offsets=[-6,-3]", ...]``; values parse as YAML."""
    for item in overrides or ():
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"override {item!r} must look like key.path=value")
        node = raw
        *parents, leaf = key.strip().split(".")
        for p in parents:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise TypeError(f"override {item!r}: {p!r} is not a section")
        node[leaf] = yaml.safe_load(value)
    return raw


def config_from_dict(raw: dict, overrides=()) -> TrainConfig:
    return _build(TrainConfig, apply_overrides(dict(raw), overrides), "")


def resolve_config_path(path) -> Path:
    """A file path, or the name of a bundled config (``vspw_b0`` / ``vspw_b0.yaml``)."""
    p = Path(path)
    if p.is_file():
        return p
    bundled = CONFIG_DIR / (p.name if p.suffix else p.name + ".yaml")
    if bundled.is_file():
        return bundled
    names = sorted(q.stem for q in CONFIG_DIR.glob("*.yaml"))
    raise FileNotFoundError(f"config {path} not found; bundled configs: {names}")


def load_config(path, overrides=()) -> TrainConfig:
    """Read a YAML config (path or bundled name) and apply ``key.path=value`` overrides."""
    path = resolve_config_path(path)
    raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    return config_from_dict(raw, overrides)
