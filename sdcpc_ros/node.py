"""``sdcpc`` node: camera images in, per-pixel semantic labels out (see README.md, "Running the node").

The subscription callback only keeps the newest message; one worker thread converts, segments and
publishes it (latest frame wins: a frame replaced before the worker took it is counted as dropped,
and so is one that never reached the callback, seen as a gap in its publisher's sequence numbers).
``sdcpc_core.engine.StreamingSegmenter`` does all the model work, including the buffer resets.
With ``propagate`` on, a frame the network has no time for is answered by a second thread instead:
the last network labels carried to it along the image motion (``sdcpc_core.propagation``).

The work is split into the steps of a managed node's transitions (:class:`Segmentation`):
configure (parameters, model, publishers), activate (worker, subscription), deactivate (stop
taking frames), cleanup (free the model). ``sdcpc_node`` (:class:`SegmentationNode`) runs all of
them at start-up; ``sdcpc_lifecycle_node`` (:mod:`sdcpc_ros.lifecycle_node`) on request.
"""

from __future__ import annotations

import faulthandler
import json
import signal
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass

import cv2
import numpy as np
import rclpy
import rclpy.exceptions
import rclpy.logging
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from rcl_interfaces.msg import (
    FloatingPointRange,
    IntegerRange,
    ParameterDescriptor,
    ParameterType,
    SetParametersResult,
)
from rclpy.executors import ExternalShutdownException
from rclpy.node import Node
from rclpy.parameter import Parameter
from rclpy.qos import (
    DurabilityPolicy,
    HistoryPolicy,
    QoSProfile,
    ReliabilityPolicy,
    qos_profile_sensor_data,
)
from sensor_msgs.msg import CompressedImage, Image
from std_msgs.msg import String
from std_srvs.srv import Trigger

from sdcpc_core.checkpoints.convert import checkpoint_problem
from sdcpc_core.propagation import PRESETS as FLOW_PRESETS
from sdcpc_core.propagation import LabelPropagator
from sdcpc_core.settings import SETTINGS, STREAM_MAX_TIME_GAP, TOOL_DEFAULTS, Setting, SettingError
from sdcpc_ros.conversions import (
    DEFAULT_MAX_PIXELS,
    ImageConversionError,
    array_to_image,
    compressed_to_array,
    image_to_array,
)
from sdcpc_ros.spinning import handle_interrupts, ignore_interrupts
from sdcpc_ros.transport import use_default_profile

try:  # built by scripts/build_interfaces.sh or colcon; std_msgs/String JSON otherwise
    from sdcpc_interfaces.msg import ClassInfo, FrameInfo, LabelInfo
except ImportError:
    ClassInfo = FrameInfo = LabelInfo = None

TRANSPORTS = ("raw", "compressed")
THROTTLE_S = 5.0
SHM_SEGMENT_BYTES = 512 * 1024  # Fast DDS's default shared-memory segment (docs/transport.md)
# a camera stream has stamps; the fastest installed backend, its export cached
NODE_DEFAULTS = {"max_time_gap": STREAM_MAX_TIME_GAP, **TOOL_DEFAULTS}


def _checkpoint_words(value):
    if value is None:
        return "must be a string"
    return checkpoint_problem(value)  # judged without loading or downloading anything


# The node's own parameters, described and checked like the engine's settings (sdcpc_core.settings).
NODE_SETTINGS: dict[str, Setting] = {s.name: s for s in (
    Setting("publish_color", "bool", True, "Publish ~/color (palette-coloured labels) when subscribed.",
            runtime=True),
    Setting("publish_overlay", "bool", False, "Publish ~/overlay (labels over the image) when subscribed.",
            runtime=True),
    Setting("publish_confidence", "bool", False, "Publish ~/confidence (32FC1) when subscribed.",
            runtime=True),
    Setting("input_transport", "string", "raw",
            "raw: subscribe to 'image' (sensor_msgs/Image); compressed: to 'image/compressed'.",
            choices=TRANSPORTS),
    Setting("reliable_qos", "bool", False,
            "Subscribe reliable instead of the sensor-data (best effort) profile; for bag replay."),
    Setting("max_image_pixels", "integer", DEFAULT_MAX_PIXELS,
            "Images with more pixels are refused before anything is allocated for them.",
            minimum=1, maximum=2**31 - 1, runtime=True),
    Setting("diagnostics_period", "double", 1.0, "Seconds between /diagnostics messages.",
            minimum=0.1, maximum=60.0),
    Setting("propagate", "bool", False,
            "Answer the frames the network has no time for with its last labels carried along the "
            "image motion (optical flow; ~/frame_info says which, from which network frame); "
            "false: drop them. Answers then leave out of stamp order (docs/propagation.md).",
            runtime=True),
    Setting("propagation_flow", "string", "medium",
            "Optical flow of propagate (OpenCV DIS presets): medium, or fast (about 0.4x the flow's "
            "CPU; follows the motion less well over long gaps between network frames), or "
            "ultrafast (docs/propagation.md).", choices=tuple(FLOW_PRESETS), runtime=True),
)}
CHECKPOINT = Setting("checkpoint", "string", "",
                     "sdcpc checkpoint file (.pt), export directory (sdcpc export), Hugging Face SegFormer "
                     "directory or Hub id (converted once, cached), or published .pth; empty = the "
                     "embedded default model.",
                     check_extra=_checkpoint_words)
# Every parameter, in the order users see them: the model, the stream settings, the node's own.
PARAMETERS: dict[str, Setting] = {"checkpoint": CHECKPOINT, **SETTINGS, **NODE_SETTINGS}

_ROS_TYPES = {"string": ParameterType.PARAMETER_STRING, "bool": ParameterType.PARAMETER_BOOL,
              "double": ParameterType.PARAMETER_DOUBLE, "integer": ParameterType.PARAMETER_INTEGER,
              "integer_array": ParameterType.PARAMETER_INTEGER_ARRAY,
              "string_array": ParameterType.PARAMETER_STRING_ARRAY,
              "double_array": ParameterType.PARAMETER_DOUBLE_ARRAY}


def descriptor(spec: Setting, read_only: bool | None = None) -> ParameterDescriptor:
    """The ROS parameter descriptor of a setting: type, description, range, read-only (default:
    a setting that does not change at run time)."""
    d = ParameterDescriptor(type=_ROS_TYPES[spec.kind], description=spec.help,
                            read_only=not spec.runtime if read_only is None else read_only)
    if spec.minimum is not None and spec.maximum is not None:
        if spec.kind == "double":
            d.floating_point_range = [FloatingPointRange(from_value=float(spec.minimum),
                                                         to_value=float(spec.maximum))]
        elif spec.kind == "integer":
            d.integer_range = [IntegerRange(from_value=int(spec.minimum), to_value=int(spec.maximum),
                                            step=1)]
    return d


def parameters_markdown() -> str:
    """The parameter table of docs/node.md, from the same definitions the node declares."""
    rows = ["| parameter | type | default | allowed | changes at run time | what it does |",
            "|---|---|---|---|---|---|"]
    for name, spec in PARAMETERS.items():
        default = NODE_DEFAULTS.get(name, spec.default)
        shown = "unset" if default is None else f"`{json.dumps(default)}`"
        allowed = spec.allowed.removeprefix("allowed: ").removeprefix("allowed range: ")
        rows.append(f"| `{name}` | {spec.kind} | {shown} | {allowed} | "
                    f"{'yes' if spec.runtime else 'no (restart)'} | {spec.description} |")
    return "\n".join(rows) + "\n"


class ParameterValueError(ValueError):
    """A parameter value the node refuses; the message starts with the parameter's name."""


def validate_parameter(name: str, value) -> None:
    """Raise SettingError (naming ``name`` and what is allowed) for a value the node refuses."""
    PARAMETERS[name].check(value)


def _stamp_seconds(header) -> float | None:
    """Header stamp in seconds; None for an unset (zero) stamp, which disables the time rules."""
    stamp = header.stamp.sec + header.stamp.nanosec * 1e-9
    return stamp if stamp > 0.0 else None


NODE_NAME = "sdcpc"


@dataclass(eq=False)
class _Frame:
    """One received image on its way to an answer. ``propagating``: handed to the propagation
    thread, which counts its outcome (the network may still segment it, for its buffer and the next
    key frame, without publishing); ``taken``: the network worker took it."""

    msg: object
    received_at: float  # perf_counter at receipt
    number: int | None  # the engine's input number (StreamingSegmenter.observe)
    propagating: bool = False
    taken: bool = False


class Segmentation:
    """The node's work, in the steps of a managed node's transitions; mixed into a ``Node``
    (:class:`SegmentationNode`) or a ``LifecycleNode`` (``sdcpc_ros.lifecycle_node``).

    configure: :meth:`_read_parameters` then :meth:`_configure`; activate: :meth:`_activate`;
    deactivate: :meth:`_deactivate`; cleanup: :meth:`_cleanup`.
    """

    _seg = None  # the engine, from configure to cleanup
    _worker = None  # the worker thread, from activate to deactivate
    _propagation_worker = None  # the propagation thread, from activate to deactivate
    _subscription = None
    _active = False
    _pub: dict = {}
    _pub_label_info = _pub_frame_info = _pub_diag = _reset_service = _diag_timer = None

    # -- configure ----------------------------------------------------------------------------
    def _read_parameters(self, read_only: bool | None = None) -> dict:
        """Declare (the first time) every parameter from its Setting and validate its value;
        name -> value (None: unset). Raises SettingError / rclpy's parameter exceptions."""
        for name, spec in PARAMETERS.items():  # all declared first: a refused one can be fixed
            if not self.has_parameter(name):
                default = NODE_DEFAULTS.get(name, spec.default)
                initial = Parameter.Type(_ROS_TYPES[spec.kind]) if default is None else default
                self.declare_parameter(name, initial, descriptor(spec, read_only))
        values = {name: self._parameter_value(name) for name in PARAMETERS}
        for name, value in values.items():
            validate_parameter(name, value)
        return values

    def _parameter_value(self, name: str):
        try:
            return self.get_parameter(name).value
        except rclpy.exceptions.ParameterUninitializedException:  # declared by type, unset
            return None

    def _configure(self, p: dict, create_publisher) -> None:
        """Load the model and create the outputs (publishers, ~/reset, the diagnostics timer)."""
        self._seg = self._build_engine(p)
        self._max_pixels = p["max_image_pixels"]
        self._enabled = {"color": p["publish_color"], "overlay": p["publish_overlay"],
                         "confidence": p["publish_confidence"]}
        self._input = (p["input_transport"], p["reliable_qos"])
        self._init_counters(p["diagnostics_period"])
        self._propagator = LabelPropagator(p["propagation_flow"], ignore_id=self._seg.labels.ignore_index)
        self._propagate = p["propagate"]
        # OpenCV's own thread pool would wake on both cores for the small images it sees here
        # (flow, warps, colours), preempting the network's threads: one thread costs less CPU
        cv2.setNumThreads(1)
        self._create_publishers(create_publisher)
        self._reset_service = self.create_service(Trigger, "~/reset", self._on_reset)
        self._diag_timer = self.create_timer(p["diagnostics_period"], self._publish_diagnostics)

    def _announce(self) -> None:
        self.get_logger().info(
            f"segmenting {self._image_topic} on {self._seg.device} ({self._seg.backend}, "
            f"{self._seg.precision}), {self._seg.labels.num_classes} classes, "
            f"custom messages: {'sdcpc_interfaces' if LabelInfo else 'no (std_msgs/String JSON)'}")
        self.get_logger().info(self._seg.runtime_note)  # which backend and precision, and why
        if self._seg.precision_warning:  # a precision asked for that is slow or inexact on this CPU
            self.get_logger().warning(self._seg.precision_warning)

    # -- activate / deactivate ----------------------------------------------------------------
    def _activate(self) -> None:
        """Start the worker, then subscribe; the label metadata goes out (latched)."""
        with self._cv:
            self._stopping = False
            self._last_sequence.clear()  # frames sent while inactive were not lost by the node
        self._worker = threading.Thread(target=self._work, name="sdcpc_worker", daemon=True)
        self._worker.start()
        self._propagation_worker = threading.Thread(target=self._propagation_work,
                                                    name="sdcpc_propagation", daemon=True)
        self._propagation_worker.start()
        self._subscribe(*self._input)
        self._active = True
        self._publish_label_info()

    def _deactivate(self) -> int:
        """Stop taking frames: unsubscribe, let the worker finish the frame it is segmenting, and
        count a frame still waiting as not taken. Returns how many frames were not taken."""
        self._active = False
        if self._subscription is not None:
            self.destroy_subscription(self._subscription)
            self._subscription = None
        self._stop_worker()
        with self._cv:
            waiting = {f for f in (self._pending, self._to_propagate)
                       if f is not None and (f is self._to_propagate or not f.propagating)}
            self._pending = self._to_propagate = None
            self._key = None  # the next activation starts a new stream
            self._not_taken += len(waiting)
            self._dropped += len(waiting)
        return len(waiting)

    def _stop_worker(self, timeout: float = 10.0) -> None:
        if self._worker is None:
            return
        with self._cv:
            self._stopping = True
            self._cv.notify_all()
        for thread in (self._worker, self._propagation_worker):
            if thread is not None:
                thread.join(timeout=timeout)
                if thread.is_alive():
                    self.get_logger().error(f"{thread.name} did not stop within {timeout:.0f} s")
        self._worker = self._propagation_worker = None

    # -- cleanup ------------------------------------------------------------------------------
    def _cleanup(self, destroy_publisher) -> None:
        """Free the model and destroy what configure created (also after a configure that
        failed half-way)."""
        for pub in (*self._pub.values(), self._pub_label_info, self._pub_frame_info):
            if pub is not None:
                destroy_publisher(pub)
        for entity, destroy in ((self._pub_diag, self.destroy_publisher),
                                (self._reset_service, self.destroy_service),
                                (self._diag_timer, self.destroy_timer)):
            if entity is not None:
                destroy(entity)
        self._pub = {}
        self._pub_label_info = self._pub_frame_info = self._pub_diag = None
        self._reset_service = self._diag_timer = None
        self._seg = None

    def _build_engine(self, p: dict):
        # the engine is imported only once the parameters are known to be valid
        from sdcpc_core.engine import FrameError, StreamingSegmenter, continuity_break, resolve_device

        self._continuity_break = continuity_break
        self._input_errors = (ImageConversionError, FrameError)  # the message's fault: "refused"
        try:
            resolve_device(p["device"])
        except ValueError as exc:
            raise ParameterValueError(f"parameter 'device': {exc}") from None
        stream = {name: p[name] for name in SETTINGS}
        try:  # a plain checkpoint on a graph backend is exported first: its stages are logged
            return StreamingSegmenter.from_checkpoint(p["checkpoint"] or None,
                                                      export_progress=self.get_logger().info, **stream)
        except SettingError:
            raise
        except ValueError as exc:  # CheckpointError: missing, corrupt or unsafe file
            raise ParameterValueError(f"parameter 'checkpoint': {exc}") from None

    def _init_counters(self, diagnostics_period: float) -> None:
        """Hand-over state (the newest message) and the frame accounting, under one condition.

        Every image a publisher sent ends in exactly one count: published (answered by the
        network), propagated (answered with carried labels), replaced (a newer image arrived first
        and it could not be propagated: latest frame wins), lost (never reached the callback, seen
        as a gap in the publisher's sequence numbers), rejected (bad input), failed (segmentation
        or propagation raised or gave non-finite output), or is in flight (pending, being
        segmented, waiting for or in propagation).
        """
        self._cv = threading.Condition()
        self._stopping = False
        self._pending: _Frame | None = None  # the network's next frame (newest received)
        self._busy = False  # the worker is segmenting a frame
        self._busy_counts = False  # ... whose outcome it counts (not one propagation answers)
        self._busy_since = 0.0
        self._to_propagate: _Frame | None = None  # waiting for the propagation thread
        self._propagating = False  # the propagation thread is working on a frame
        self._key = None  # sdcpc_core.propagation.KeyFrame of the last network frame
        self._last_input, self._stream_start = None, 0  # continuity of the input stream
        self._propagate = False
        self._step_s = deque(maxlen=20)  # wall time of the last network steps
        self._arrival_s = deque(maxlen=20)  # time between the last images received
        self._network_steps = self._propagated = 0
        self._propagation_cpu_s = 0.0  # CPU time of the propagation thread
        self._propagation_ms = deque(maxlen=200)  # (node latency ms, propagation ms)
        self._received = self._dropped = self._rejected = self._failed = self._published = 0
        self._lost = 0  # part of _dropped: never reached the callback (queue overflow, transport)
        self._not_taken = 0  # waiting for the worker when the node was deactivated
        self._last_sequence: dict[bytes, int] = {}  # publisher gid -> last publication sequence
        self._latencies = deque(maxlen=200)  # (node latency ms, inference ms)
        self._last_reset = ""
        self._resets = 0
        # received, published, failed, rejected, propagated, network steps, propagation CPU s, t
        self._diag_counts = (0, 0, 0, 0, 0, 0, 0.0, time.monotonic())
        self._last_receipt = None  # monotonic time of the last image received
        self._image_topic = ""  # resolved input topic, set with the subscription
        self._stall_s = max(2.0, 2 * diagnostics_period)  # input silent this long: WARN

    def _create_publishers(self, create_publisher) -> None:
        outputs = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=5,
                             reliability=ReliabilityPolicy.RELIABLE)
        latched = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=1,
                             reliability=ReliabilityPolicy.RELIABLE,
                             durability=DurabilityPolicy.TRANSIENT_LOCAL)
        self._pub = {name: create_publisher(Image, f"~/{name}", outputs)
                     for name in ("labels", "color", "overlay", "confidence", "dynamic_mask")}
        self._pub_label_info = create_publisher(LabelInfo or String, "~/label_info", latched)
        self._pub_frame_info = create_publisher(FrameInfo or String, "~/frame_info", outputs)
        # diagnostics also while inactive (a plain publisher): "inactive" is worth reporting
        self._pub_diag = self.create_publisher(DiagnosticArray, "/diagnostics", 10)

    def _subscribe(self, transport: str, reliable: bool) -> None:
        if reliable:
            qos = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=5,
                             reliability=ReliabilityPolicy.RELIABLE)
        else:
            qos = qos_profile_sensor_data
        compressed = transport == "compressed"
        topic = "image/compressed" if compressed else "image"
        self._subscription = self.create_subscription(CompressedImage if compressed else Image,
                                                      topic, self._on_image, qos)
        self._image_topic = self.resolve_topic_name(topic)

    # -- executor callbacks (cheap) ----------------------------------------------------------
    def _on_image(self, msg, info) -> None:
        lost = self._lost_before(info)
        if lost and len(msg.data) > SHM_SEGMENT_BYTES:
            self.get_logger().warning(
                f"{lost} image(s) lost before the node; images of {len(msg.data)} bytes need a "
                "publisher whose Fast DDS shared-memory segment is larger than 512 KB: start the "
                "camera driver with FASTDDS_DEFAULT_PROFILES_FILE pointing at the profile the node "
                "logged at start-up (docs/transport.md)", throttle_duration_sec=30.0)
        # continuity is judged on every image received, segmented or not (engine.observe)
        stamp = _stamp_seconds(msg.header)
        number = self._seg.observe(stamp)
        frame = _Frame(msg, time.perf_counter(), number)
        with self._cv:
            if self._continuity_break(self._last_input, (stamp, None, None), self._seg.max_time_gap):
                self._stream_start = number  # a cut: nothing before it is carried past it
            self._last_input = (stamp, None, None)
            if self._last_receipt is not None:
                self._arrival_s.append(time.monotonic() - self._last_receipt)
            self._last_receipt = time.monotonic()
            self._received += 1 + lost
            self._dropped += lost
            self._lost += lost
            replaced, self._pending = self._pending, frame
            if replaced is not None and not replaced.propagating and not self._hand_over(replaced):
                self._dropped += 1  # latest frame wins, and it could not be propagated
            if self._busy and not self._network_free_soon(frame.received_at):
                self._hand_over(frame)  # answered now; the network may still take it for its buffer
            self._cv.notify_all()

    def _network_free_soon(self, now: float) -> bool:
        """Whether the network will likely be free before the next image arrives (then it takes
        this one, and the frame is left to it). Called under the lock."""
        if not self._step_s or not self._arrival_s:
            return False
        remaining = float(np.percentile(self._step_s, 75)) - (now - self._busy_since)
        return remaining < float(np.median(self._arrival_s))

    def _hand_over(self, frame: _Frame) -> bool:
        """Give ``frame`` to the propagation thread if its labels can be carried from the last key
        frame (same frame_id and size, stamp not before it, no cut of the input stream since it:
        a gap above max_time_gap between consecutive images or a stamp going backwards); a frame
        waiting there is replaced (and given back to the network if still its next, else
        dropped). Called under the lock; False: not handed over."""
        key, header = self._key, frame.msg.header
        if not self._propagate or key is None or header.frame_id != key.meta["frame_id"]:
            return False
        if isinstance(frame.msg, Image) and (frame.msg.height, frame.msg.width) != key.size:
            return False
        if key.meta["number"] is None or key.meta["number"] < self._stream_start:
            return False
        stamp, key_stamp = _stamp_seconds(header), key.meta["stamp"]
        if (stamp is None) != (key_stamp is None) or (stamp is not None and stamp < key_stamp):
            return False
        if self._to_propagate is not None:
            self._give_back(self._to_propagate)
        frame.propagating = True
        self._to_propagate = frame
        return True

    def _give_back(self, frame: _Frame) -> None:
        """A frame the propagation thread will not answer: the network's again if it is still the
        pending one, else dropped. Called under the lock."""
        frame.propagating = False
        if frame is not self._pending or frame.taken:
            self._dropped += 1

    def _lost_before(self, info) -> int:
        """Messages of this publisher that never reached the callback, from gaps in its publication
        sequence numbers: the subscription queue overflowed (a burst faster than the executor) or
        the transport lost them (best effort). 0 where the RMW gives no sequence numbers."""
        try:
            seq = int(info["publication_sequence_number"])
            gid = bytes(info["publisher_gid"]["data"])
        except (KeyError, TypeError, ValueError):
            return 0
        if not 0 < seq < 2**63:  # unsupported by this RMW
            return 0
        last = self._last_sequence.pop(gid, None)
        self._last_sequence[gid] = seq  # most recent publisher last; a few are kept
        if len(self._last_sequence) > 64:
            del self._last_sequence[next(iter(self._last_sequence))]
        return seq - last - 1 if last is not None and seq > last + 1 else 0

    def _on_reset(self, request, response):
        self._seg.reset(reason="service")
        with self._cv:
            self._key = None  # nothing is carried across a reset
        response.success, response.message = True, "frame buffer cleared"
        self.get_logger().info("frame buffer cleared by ~/reset")
        return response

    def _on_set_parameters(self, params) -> SetParametersResult:
        """Validate a parameter change (no side effects: the post-set callback applies it)."""
        if self._seg is None:  # unconfigured managed node: configure reads and checks them all
            return SetParametersResult(successful=True)
        try:
            stream = {}
            for param in params:
                if param.name in SETTINGS:
                    stream[param.name] = param.value
                elif param.name in PARAMETERS:
                    validate_parameter(param.name, param.value)
            if stream:
                self._seg.check_update(**stream)
        except ValueError as exc:
            return SetParametersResult(successful=False, reason=str(exc))
        return SetParametersResult(successful=True)

    def _after_set_parameters(self, params) -> None:
        """Apply a validated parameter change."""
        if self._seg is None:
            return
        stream = {p.name: p.value for p in params if p.name in SETTINGS}
        if stream:
            self._seg.update(**stream)
            if "dynamic_classes" in stream:
                self._publish_label_info()
        for param in params:
            if param.name.startswith("publish_"):
                self._enabled[param.name[len("publish_"):]] = param.value
            elif param.name == "max_image_pixels":
                self._max_pixels = param.value
            elif param.name == "propagate":
                with self._cv:
                    self._propagate, self._key = param.value, None
            elif param.name == "propagation_flow":  # the frame being propagated keeps the old one
                self._propagator = LabelPropagator(param.value, ignore_id=self._seg.labels.ignore_index)

    # -- worker thread ----------------------------------------------------------------------
    def _work(self) -> None:
        """The network worker: segments the newest frame; publishes it unless the propagation
        thread answers it, and leaves it as the next key frame either way."""
        while True:
            with self._cv:
                self._cv.wait_for(lambda: self._pending is not None or self._stopping)
                if self._stopping:
                    return
                frame, self._pending = self._pending, None
                frame.taken = True
                counts = not frame.propagating
                self._busy, self._busy_counts, self._busy_since = True, counts, time.perf_counter()
            outcome, _ = self._run_guarded("segmentation", self._segment, frame.msg, frame.received_at,
                                           frame.number, publish=counts, log=counts)
            with self._cv:
                self._busy = self._busy_counts = False
                self._step_s.append(time.perf_counter() - self._busy_since)
                if outcome != "refused":
                    self._network_steps += 1
                if counts:
                    self._count(outcome)

    def _run_guarded(self, what: str, work, *args, log: bool = True, **kwargs) -> tuple[str, object]:
        """``work(*args, **kwargs)`` -> ("done", its result), ("refused", None) (the image's fault)
        or ("failed", None) (logged, throttled)."""
        try:
            return "done", work(*args, **kwargs)
        except self._input_errors as exc:
            if log:
                self.get_logger().warning(f"image refused: {exc}", throttle_duration_sec=THROTTLE_S)
            return "refused", None
        except Exception as exc:  # noqa: BLE001 - keep answering the next frames
            if log:
                self.get_logger().error(f"{what} failed: {type(exc).__name__}: {exc}",
                                        throttle_duration_sec=THROTTLE_S)
            return "failed", None

    def _count(self, outcome: str) -> None:
        if outcome == "refused":
            self._rejected += 1
        elif outcome == "failed":
            self._failed += 1

    def _decode(self, msg) -> np.ndarray:
        if isinstance(msg, CompressedImage):
            return compressed_to_array(msg, self._max_pixels)
        return image_to_array(msg, self._max_pixels)

    def _segment(self, msg, received_at: float, input_number: int | None = None,
                 publish: bool = True) -> None:
        rgb = self._decode(msg)
        # confidence costs a pass over every class at every pixel: only when someone listens
        res = self._seg.step(rgb, stamp=_stamp_seconds(msg.header), frame_id=msg.header.frame_id,
                             return_confidence=self._wanted("confidence"), input_number=input_number)
        if res.reset_reason:
            self._last_reset = res.reset_reason
            self._resets += 1
            if self._published:
                self.get_logger().info(f"frame buffer reset: {res.reset_reason}")
        header = msg.header
        if publish:
            self._publish_outputs(header, rgb, res.labels, res.dynamic_mask, res.confidence)
            latency_ms = (time.perf_counter() - received_at) * 1e3
            with self._cv:
                self._published += 1
            self._latencies.append((latency_ms, res.latency_ms))
            self._publish_frame_info(header, res, latency_ms)
        if self._propagate:  # the next frames' labels are carried from this one
            key = self._propagator.key_frame(
                rgb, res.labels, res.confidence, stamp=_stamp_seconds(header),
                frame_id=header.frame_id, number=input_number, header=header,
                frames_since_reset=int(res.frames_since_reset))
            with self._cv:
                self._key = key

    def _publish_outputs(self, header, rgb, labels, dynamic_mask, confidence) -> None:
        """Every enabled and subscribed output of one frame, with the frame's own header."""
        self._publish("labels", lambda: array_to_image(
            labels, "mono8" if labels.dtype == np.uint8 else "mono16", header))
        self._publish("dynamic_mask", lambda: array_to_image(
            dynamic_mask.view(np.uint8) * np.uint8(255), "mono8", header))
        want_color, want_overlay = self._wanted("color"), self._wanted("overlay")
        if want_color or want_overlay:
            color = self._seg.labels.colorize(labels)
            if want_color:
                self._pub["color"].publish(array_to_image(color, "rgb8", header))
            if want_overlay:
                overlay = cv2.addWeighted(rgb, 0.5, color, 0.5, 0.0)
                self._pub["overlay"].publish(array_to_image(overlay, "rgb8", header))
        if confidence is not None:  # a subscriber that arrived mid-frame gets the next one
            self._publish("confidence", lambda: array_to_image(confidence, "32FC1", header))

    # -- propagation thread -------------------------------------------------------------------
    def _propagation_work(self) -> None:
        """Answers each frame handed over with the last key frame's labels carried to it."""
        while True:
            with self._cv:
                self._cv.wait_for(lambda: self._to_propagate is not None or self._stopping)
                if self._stopping:
                    return
                frame, self._to_propagate = self._to_propagate, None
                self._propagating, key = True, self._key
            cpu = time.thread_time()
            outcome, answered = self._run_guarded("propagation", self._propagate_frame, frame, key)
            with self._cv:
                self._propagation_cpu_s += time.thread_time() - cpu
                self._propagating = False
                if outcome == "done" and answered:
                    self._propagated += 1
                elif outcome == "done":  # the key frame's size differs (compressed input)
                    self._give_back(frame)
                else:
                    self._count(outcome)

    def _dynamic_mask(self, labels: np.ndarray) -> np.ndarray:
        """(H, W) bool: the label is a dynamic class (a table lookup, cv2.LUT for mono8)."""
        table = np.zeros(65536 if labels.dtype == np.uint16 else 256, np.uint8)
        table[list(self._seg.labels.dynamic)] = 1
        if labels.dtype == np.uint8:
            return cv2.LUT(labels, table).view(bool)
        return table[labels].view(bool)

    def _propagate_frame(self, frame: _Frame, key) -> bool:
        """Carry ``key``'s labels to ``frame`` and publish them; False if they cannot be carried."""
        rgb = self._decode(frame.msg)
        if key is None or rgb.shape[:2] != key.size:
            return False
        out = self._propagator.propagate(key, rgb, confidence=self._wanted("confidence"))
        header = frame.msg.header
        self._publish_outputs(header, rgb, out.labels, self._dynamic_mask(out.labels), out.confidence)
        latency_ms = (time.perf_counter() - frame.received_at) * 1e3
        self._propagation_ms.append((latency_ms, out.elapsed_ms))
        self._publish_frame_info(header, None, latency_ms, propagated=(key, frame.number, out))
        return True

    def accounting(self) -> dict:
        """The frame counts (one consistent snapshot): received = published (by the network) +
        propagated + replaced + lost + not_taken + rejected + failed + in_flight (not_taken:
        waiting when the node was deactivated; part of the dropped frames)."""
        with self._cv:
            waiting = {f for f in (self._pending, self._to_propagate)
                       if f is not None and (f is self._to_propagate or not f.propagating)}
            return {"received": self._received, "published": self._published,
                    "propagated": self._propagated,
                    "replaced": self._dropped - self._lost - self._not_taken, "lost": self._lost,
                    "not_taken": self._not_taken, "rejected": self._rejected,
                    "failed": self._failed,
                    "in_flight": len(waiting) + int(self._busy_counts) + int(self._propagating)}

    def _wanted(self, name: str) -> bool:
        return self._enabled.get(name, True) and self._pub[name].get_subscription_count() > 0

    def _publish(self, name: str, build) -> None:
        if self._wanted(name):
            self._pub[name].publish(build())

    def _publish_frame_info(self, header, res, latency_ms: float, propagated=None) -> None:
        """``res``: the network's step result; ``propagated``: (key frame, input number,
        sdcpc_core.propagation.Propagated) for a frame answered by propagation."""
        if self._pub_frame_info.get_subscription_count() == 0:
            return
        with self._cv:
            fields = {"node_latency_ms": float(latency_ms), "dropped_frames": self._dropped,
                      "rejected_frames": self._rejected, "received_frames": self._received,
                      "lost_frames": self._lost, "failed_frames": self._failed,
                      "propagated_frames": self._propagated + (propagated is not None)}
        if propagated is None:
            source, source_age, frames_ago, propagation_ms, uncertain = header, 0.0, 0, 0.0, 0.0
            fields.update(inference_ms=float(res.latency_ms), frames_aggregated=int(res.frames_aggregated),
                          reference_age_s=float(res.reference_age_s or 0.0),
                          frames_since_reset=int(res.frames_since_reset),
                          reset_reason=res.reset_reason or "")
        else:
            key, number, out = propagated
            source, propagation_ms, uncertain = key.meta["header"], out.elapsed_ms, out.uncertain_fraction
            stamps = _stamp_seconds(header), key.meta["stamp"]
            source_age = stamps[0] - stamps[1] if None not in stamps else 0.0
            frames_ago = max(number - key.meta["number"], 0) if None not in (number, key.meta["number"]) else 0
            fields.update(inference_ms=0.0, frames_aggregated=0, reference_age_s=0.0,
                          frames_since_reset=key.meta["frames_since_reset"] + frames_ago, reset_reason="")
        fields.update(propagated=propagated is not None, source_age_s=float(source_age),
                      source_frames_ago=int(frames_ago), propagation_ms=float(propagation_ms),
                      uncertain_fraction=float(uncertain))
        if FrameInfo is None:
            def as_dict(h):
                return {"stamp": {"sec": h.stamp.sec, "nanosec": h.stamp.nanosec}, "frame_id": h.frame_id}
            msg = String(data=json.dumps({"header": as_dict(header), "source_header": as_dict(source),
                                          **fields}))
        else:  # an sdcpc_interfaces built before a field was added lacks it
            known = FrameInfo.get_fields_and_field_types()
            fields["source_header"] = source
            msg = FrameInfo(header=header, **{k: v for k, v in fields.items() if k in known})
        self._pub_frame_info.publish(msg)

    # -- metadata and diagnostics -----------------------------------------------------------
    def _publish_label_info(self) -> None:
        labels = self._seg.labels
        mono8 = labels.num_classes <= 255
        info = {"ignore_id": 255 if mono8 else 65535, "dynamic_ids": list(labels.dynamic),
                "labels_encoding": "mono8" if mono8 else "mono16"}
        if LabelInfo is None:
            classes = [{"id": i, "name": n, "color": [int(c) for c in labels.palette[i]],
                        "dynamic": i in labels.dynamic} for i, n in enumerate(labels.names)]
            msg = String(data=json.dumps({"classes": classes, **info}))
        else:
            msg = LabelInfo(classes=[
                ClassInfo(id=i, name=n, red=int(labels.palette[i][0]),
                          green=int(labels.palette[i][1]), blue=int(labels.palette[i][2]),
                          dynamic=i in labels.dynamic) for i, n in enumerate(labels.names)], **info)
            msg.header.stamp = self.get_clock().now().to_msg()
        self._pub_label_info.publish(msg)

    def _publish_diagnostics(self) -> None:
        received, published, failed, rejected, propagated, steps, cpu_s, since = self._diag_counts
        now = time.monotonic()
        period = max(now - since, 1e-6)
        counts = self.accounting()
        network_steps, propagation_cpu_s = self._network_steps, self._propagation_cpu_s
        self._diag_counts = (counts["received"], counts["published"], counts["failed"],
                             counts["rejected"], counts["propagated"], network_steps,
                             propagation_cpu_s, now)

        def column(rows, i):
            return np.array([r[i] for r in rows]) if rows else np.zeros(1)

        node_ms, infer_ms = column(self._latencies, 0), column(self._latencies, 1)
        carried_ms, flow_ms = column(self._propagation_ms, 0), column(self._propagation_ms, 1)
        values = {
            "input rate (Hz)": f"{(counts['received'] - received) / period:.2f}",
            "output rate (Hz)": f"{(counts['published'] - published) / period:.2f}",
            "propagated rate (Hz)": f"{(counts['propagated'] - propagated) / period:.2f}",
            "network rate (Hz)": f"{(network_steps - steps) / period:.2f}",
            "latency p50 (ms)": f"{np.percentile(node_ms, 50):.1f}",
            "latency p95 (ms)": f"{np.percentile(node_ms, 95):.1f}",
            "inference p50 (ms)": f"{np.percentile(infer_ms, 50):.1f}",
            "propagated latency p50 (ms)": f"{np.percentile(carried_ms, 50):.1f}",
            "propagated latency p95 (ms)": f"{np.percentile(carried_ms, 95):.1f}",
            "propagation p50 (ms)": f"{np.percentile(flow_ms, 50):.1f}",
            "propagation CPU (% of one core)": f"{100 * (propagation_cpu_s - cpu_s) / period:.1f}",
            "propagation CPU (s)": f"{propagation_cpu_s:.3f}",
            "received frames": str(counts["received"]),
            "published frames": str(counts["published"]),
            "propagated frames": str(counts["propagated"]),
            "network steps": str(network_steps),
            "dropped frames": str(counts["replaced"] + counts["lost"]),
            "dropped before the node (queue, transport)": str(counts["lost"]),
            "not taken (deactivated)": str(counts["not_taken"]),
            "rejected frames": str(counts["rejected"]),
            "failed frames": str(counts["failed"]),
            "in flight": str(counts["in_flight"]),
            "unseen losses": "frames lost after the last one received are counted when the same "
                             "publisher's next frame arrives",
            "buffer length": str(self._seg.buffer_length),
            "buffer resets": str(self._resets),
            "device": str(self._seg.device),
            "last reset": self._last_reset,
        }
        status = DiagnosticStatus(name=f"{self.get_name()}: semantic segmentation",
                                  hardware_id=str(self._seg.device),
                                  values=[KeyValue(key=k, value=v) for k, v in values.items()])
        # The level describes this period (totals stay in the values), so one transient failure
        # does not leave the node at ERROR for the rest of the run.
        new_failed, new_rejected = counts["failed"] - failed, counts["rejected"] - rejected
        if new_failed:
            status.level = DiagnosticStatus.ERROR
            status.message = f"{new_failed} segmentation failures in the last {period:.1f} s"
        elif new_rejected:
            status.level = DiagnosticStatus.WARN
            status.message = f"{new_rejected} input images refused in the last {period:.1f} s"
        elif not self._active:
            status.level, status.message = DiagnosticStatus.OK, "inactive: not taking frames"
        elif self._last_receipt is None or now - self._last_receipt > self._stall_s:
            status.level = DiagnosticStatus.WARN
            status.message = (f"no images on {self._image_topic} for {now - self._last_receipt:.1f} s"
                              if self._last_receipt else f"no images on {self._image_topic} yet")
        else:
            status.level, status.message = DiagnosticStatus.OK, "segmenting"
        array = DiagnosticArray(status=[status])
        array.header.stamp = self.get_clock().now().to_msg()
        self._pub_diag.publish(array)

    def destroy_node(self) -> None:
        self._stop_worker()
        super().destroy_node()


class SegmentationNode(Segmentation, Node):
    """Semantic segmentation of a camera stream with SD-CPC: configured and active from start-up."""

    def __init__(self, **kwargs):
        super().__init__(NODE_NAME, **kwargs)
        self._configure(self._read_parameters(), self.create_publisher)
        self.add_on_set_parameters_callback(self._on_set_parameters)
        self.add_post_set_parameters_callback(self._after_set_parameters)
        self._activate()
        self._announce()


def main(args=None) -> int:
    """``sdcpc_node [--ros-args ...]``; exits 2 on a refused parameter."""
    faulthandler.register(signal.SIGUSR1, all_threads=True)  # `kill -USR1 PID`: every stack
    transport_note = use_default_profile()  # before rclpy.init: Fast DDS reads it then
    handle_interrupts()  # before rclpy.init, whose handler chains to it
    rclpy.init(args=args)
    rclpy.logging.get_logger("sdcpc").info(transport_note)
    node = None
    try:
        node = SegmentationNode()
        rclpy.spin(node)
    except (ParameterValueError, SettingError, rclpy.exceptions.ParameterException) as exc:
        print(f"sdcpc_node: {exc}", file=sys.stderr)
        return 2
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        ignore_interrupts()  # a second Ctrl-C must not kill the teardown
        if node is not None:
            node.destroy_node()
        rclpy.try_shutdown()
        ignore_interrupts()
    return 0


if __name__ == "__main__":
    sys.exit(main())
