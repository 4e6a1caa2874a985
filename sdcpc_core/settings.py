"""Stream settings: every setting of the streaming engine, its allowed values and its checks, once.

``StreamSettings`` is the frozen, validated set of values an engine runs with. ``SETTINGS`` describes
each setting (type, default, range, description, whether it may change while streaming); the ROS
node builds its parameter descriptors from it, ``sdcpc`` and ``sdcpc-eval`` build their options from
it, and a bad value is refused everywhere with the same ``SettingError`` message::

    setting 'precision' = 'fp64' is refused: allowed: auto, fp32, fp16, bf16, int8

Also here, because inference needs them and must not import the dataset readers: the ImageNet
normalisation and the reference-frame rule (``reference_indices``).
"""

from __future__ import annotations

import argparse
import dataclasses
import re
from dataclasses import dataclass
from typing import Any

IMAGENET_MEAN = (123.675, 116.28, 103.53)
IMAGENET_STD = (58.395, 57.12, 57.375)
MIN_SIDE = 32  # stride 4 then spatial reduction 8 in MiT stage 1: smaller inputs cannot be encoded
MAX_SIDE = 8192
MAX_OFFSET = 1000  # references at most this many frames back
# int8: quantised graphs (sdcpc_core.quantize); auto: per backend and CPU (runtimes.choose_precision)
PRECISIONS = ("auto", "fp32", "fp16", "bf16", "int8")
STREAM_MAX_TIME_GAP = 0.5  # default of the node and sdcpc-eval: a camera's stamps, 0.5 s = a cut
BACKENDS = ("torch", "onnxruntime", "openvino", "auto")  # sdcpc_core.runtimes; auto: fastest installed
# What the node, `sdcpc segment`/`demo` and `sdcpc-eval` run with unless told otherwise: the fastest
# installed backend, its export cached (sdcpc_core.exports). The library's StreamSettings keep
# torch, the exact reference path.
TOOL_DEFAULTS = {"backend": "auto"}
DEVICE_PATTERN = re.compile(r"^(auto|cpu|cuda|cuda:\d+)$")


class SettingError(ValueError):
    """A setting value that is refused; the message names the setting and what is allowed."""

    def __init__(self, name: str, value, allowed: str):
        self.name, self.value, self.allowed = name, value, allowed
        super().__init__(f"setting '{name}' = {_show(value)} is refused: {allowed}")


def _show(value) -> str:
    return repr(list(value)) if isinstance(value, tuple) else repr(value)


@dataclass(frozen=True)
class Setting:
    """One setting: how it is typed, checked, described and shown to users.

    ``kind`` is one of string, bool, double, integer, integer_array, string_array, double_array
    (the ROS parameter types); ``default`` None means unset (taken from the checkpoint or the
    frame). ``minimum``/``maximum`` bound a number or every item of a numeric array. ``runtime``
    settings may change while streaming; the others need a new engine (node: read-only).
    """

    name: str
    kind: str
    default: Any
    description: str
    choices: tuple = ()
    minimum: float | None = None
    maximum: float | None = None
    runtime: bool = False
    check_extra: Any = None  # callable(value) -> allowed-words of a refusal, or None if fine

    @property
    def help(self) -> str:
        """The description users see (node parameter descriptor, CLI option)."""
        return self.description + (f" One of: {', '.join(self.choices)}." if self.choices else "")

    @property
    def allowed(self) -> str:
        """The words a refusal ends with."""
        if self.choices:
            return "allowed: " + ", ".join(self.choices)
        if self.kind == "bool":
            return "allowed: true, false"
        if self.check_extra is not None:
            return self.check_extra(None)
        if self.minimum is not None and self.maximum is not None:
            return f"allowed range: [{_num(self.minimum)}, {_num(self.maximum)}]"
        return f"a value of type {self.kind}"

    def check(self, value):
        """The value normalised (lists become tuples, ints of doubles become floats); raises
        SettingError naming the setting and what is allowed."""
        if value is None:
            return None
        value = self._coerce(value)
        words = self.check_extra(value) if self.check_extra is not None else None
        if words is None and ((self.choices and value not in self.choices)
                              or (self.kind in ("double", "integer") and not self._in_range(value))):
            words = self.allowed
        if words is not None:
            raise SettingError(self.name, value, words)
        return value

    def _in_range(self, x) -> bool:
        return ((self.minimum is None or x >= self.minimum)
                and (self.maximum is None or x <= self.maximum))

    def _coerce(self, value):
        kind, bad = self.kind, False
        if kind == "string":
            bad = not isinstance(value, str)
        elif kind == "bool":
            bad = not isinstance(value, bool)
        elif kind == "double":
            bad = isinstance(value, bool) or not isinstance(value, (int, float))
            value = value if bad else float(value)
        elif kind == "integer":
            bad = isinstance(value, bool) or not isinstance(value, int)
        elif kind.endswith("_array"):
            try:
                value = tuple(value)
            except TypeError:
                bad = True
            else:
                item = {"integer_array": int, "string_array": str, "double_array": (int, float)}[kind]
                bad = isinstance(value, str) or any(
                    isinstance(v, bool) or not isinstance(v, item) for v in value)
                if not bad and kind == "double_array":
                    value = tuple(float(v) for v in value)
                elif not bad and kind == "integer_array":
                    value = tuple(int(v) for v in value)
        if bad:
            raise SettingError(self.name, value, f"expected a value of type {kind}")
        return value


def _num(x) -> str:
    return f"{x:g}" if isinstance(x, float) else str(x)


def _device_words(value):
    if value is None or not DEVICE_PATTERN.match(value):
        return "allowed: auto, cpu, cuda, cuda:N"
    return None


def _size_words(value):
    if value is None or len(value) != 2 or not all(MIN_SIDE <= s <= MAX_SIDE for s in value):
        return (f"allowed: [height, width] with each in [{MIN_SIDE}, {MAX_SIDE}], or unset for the "
                "image's size")
    return None


def _offsets_words(value):
    if value is None or not value or any(not -MAX_OFFSET <= o <= -1 for o in value):
        return (f"allowed: a non-empty list of negative offsets in [-{MAX_OFFSET}, -1], e.g. "
                "[-9, -6, -3] (a stream has only past frames), or unset for the checkpoint's")
    return None


def _normalisation_words(value):
    if value is None or len(value) != 3 or not all(0 < v < 1e4 for v in value):
        return "allowed: three positive numbers (R, G, B, on the 0-255 scale), or unset for the checkpoint's"
    return None


def _names_words(value):
    if value is None or any(not name for name in value):
        return "allowed: a list of class names of the checkpoint, or unset for the checkpoint's"
    return None


# name -> Setting. The order is the order users see (node parameters, CLI options).
SETTINGS: dict[str, Setting] = {s.name: s for s in (
    Setting("device", "string", "auto", "Torch device: auto, cpu, cuda or cuda:N.",
            check_extra=_device_words),
    Setting("precision", "string", "auto",
            "Inference precision: auto = the fastest that agrees with fp32 on this CPU (on OpenVINO "
            "bf16 with AVX512-BF16/AMX, int8 with VNNI where int8 graphs exist, else fp32; fp32 on "
            "onnxruntime and torch); fp16/bf16 autocast or compile hints; int8 runs the export's "
            "quantised graphs (backend openvino or onnxruntime; sdcpc export --int8).",
            choices=PRECISIONS),
    Setting("backend", "string", "torch",
            "Inference runtime: torch (eager, the exact reference), onnxruntime, openvino, or auto (the "
            "fastest installed: OpenVINO on a CPU); the graph backends run an export directory (sdcpc "
            "export), or export a checkpoint once into the cache.", choices=BACKENDS),
    Setting("channels_last", "bool", False, "Run the network with channels_last memory format."),
    Setting("input_size", "integer_array", None,
            f"[height, width] the network sees (each in [{MIN_SIDE}, {MAX_SIDE}]); unset = the "
            "checkpoint's training size, else the image's own. Outputs are always at the image's "
            "resolution.", check_extra=_size_words),
    Setting("reference_offsets", "integer_array", None,
            "Past frames used as references, negative, e.g. [-9, -6, -3]; unset = the checkpoint's.",
            check_extra=_offsets_words),
    Setting("max_time_gap", "double", None,
            "Seconds between the stamps of consecutive input images above which the frame buffer "
            "is reset (a scene cut); unset = no time rule.", minimum=0.001, maximum=3600.0,
            runtime=True),
    Setting("dynamic_classes", "string_array", None,
            "Class names marked dynamic (~/dynamic_mask); unset = the checkpoint's dynamic classes.",
            runtime=True, check_extra=_names_words),
    Setting("mean", "double_array", None,
            "Normalisation mean (R, G, B, 0-255 scale); unset = the checkpoint's.",
            check_extra=_normalisation_words),
    Setting("std", "double_array", None,
            "Normalisation standard deviation (R, G, B, 0-255 scale); unset = the checkpoint's.",
            check_extra=_normalisation_words),
)}


def check_setting(name: str, value):
    """Validate one setting's value (normalised) or raise SettingError."""
    return SETTINGS[name].check(value)


@dataclass(frozen=True)
class StreamSettings:
    """The validated settings an engine runs with (see ``SETTINGS`` for each one's meaning).

    ``None`` means unset: the engine takes the checkpoint's value (input_size, reference_offsets,
    mean, std, dynamic_classes) or disables the rule (max_time_gap). Build a changed copy with
    ``replace``; every construction validates.
    """

    device: str = "auto"
    precision: str = "auto"
    backend: str = "torch"
    channels_last: bool = False
    input_size: tuple[int, int] | None = None
    reference_offsets: tuple[int, ...] | None = None
    max_time_gap: float | None = None
    dynamic_classes: tuple[str, ...] | None = None
    mean: tuple[float, float, float] | None = None
    std: tuple[float, float, float] | None = None

    def __post_init__(self):
        for field in dataclasses.fields(self):
            object.__setattr__(self, field.name, check_setting(field.name, getattr(self, field.name)))

    def replace(self, **changes) -> StreamSettings:
        unknown = sorted(set(changes) - set(SETTINGS))
        if unknown:
            raise TypeError(f"unknown stream settings {unknown}; known: {list(SETTINGS)}")
        return dataclasses.replace(self, **changes)

    def changed(self, other: StreamSettings) -> dict:
        """Settings whose value differs in ``other``: name -> new value."""
        return {f.name: getattr(other, f.name) for f in dataclasses.fields(self)
                if getattr(other, f.name) != getattr(self, f.name)}


def reference_indices(index: int, offsets, length: int | None = None, first: int = 0) -> list[int]:
    """The reference-frame rule: frame indices ``index + o`` for o in ``offsets``, clamped to the
    frames that exist, ``[first, length)``: a missing reference becomes the nearest existing frame
    (the oldest one still available at stream start or after a reset; the first frame of a stream
    is its own reference). Training clips, clip-mode inference and the stream (``first`` = its
    first frame since a reset) share this rule."""
    last = index if length is None else length - 1
    return [min(max(index + int(o), first), last) for o in offsets]


# -- command-line options built from SETTINGS ---------------------------------------------------

def add_arguments(parser: argparse.ArgumentParser, names, defaults: dict | None = None) -> None:
    """Add ``--name`` options for the given settings, typed, described and checked from SETTINGS
    (a refused value is an argparse error carrying the SettingError message)."""
    defaults = defaults or {}
    for name in names:
        spec = SETTINGS[name]
        flag = "--" + name.replace("_", "-")
        default = defaults.get(name, spec.default)
        shown = "unset" if default is None else _show(default)
        help_text = f"{spec.help} (default: {shown})"
        if spec.kind == "bool":
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=default,
                                help=help_text)
            continue
        item_type = {"string": str, "double": float, "integer": int, "integer_array": int,
                     "string_array": str, "double_array": float}[spec.kind]
        kwargs: dict = {"default": default, "help": help_text, "type": item_type}
        if spec.kind.endswith("_array"):
            kwargs["nargs"] = 2 if name == "input_size" else "+"
            if name == "input_size":
                kwargs["metavar"] = ("H", "W")
        parser.add_argument(flag, **kwargs)


def settings_from_arguments(args: argparse.Namespace, base: StreamSettings | None = None,
                            parser: argparse.ArgumentParser | None = None) -> StreamSettings:
    """StreamSettings from the options ``add_arguments`` added (those present in ``args``).
    With ``parser``, a refused value ends the program as an argparse usage error."""
    values = {name: getattr(args, name) for name in SETTINGS if hasattr(args, name)}
    try:
        return (base or StreamSettings()).replace(**values)
    except SettingError as exc:
        if parser is None:
            raise
        parser.error(str(exc))
        raise  # unreachable: parser.error exits
