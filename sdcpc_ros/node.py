"""``sdcpc`` node: camera images in, per-pixel semantic labels out (see README.md, "Running the node").

The subscription callback only keeps the newest message; one worker thread converts, segments and
publishes it (latest frame wins: a frame replaced before the worker took it is counted as dropped,
and so is one that never reached the callback, seen as a gap in its publisher's sequence numbers).
``sdcpc_core.engine.StreamingSegmenter`` does all the model work, including the buffer resets.
"""

from __future__ import annotations

import json
import re
import sys
import threading
import time
from collections import deque
from pathlib import Path

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

from sdcpc_ros.conversions import (
    DEFAULT_MAX_PIXELS,
    ImageConversionError,
    array_to_image,
    compressed_to_array,
    image_to_array,
)
from sdcpc_ros.transport import use_default_profile

try:  # built by scripts/build_interfaces.sh or colcon; std_msgs/String JSON otherwise
    from sdcpc_interfaces.msg import ClassInfo, FrameInfo, LabelInfo
except ImportError:
    ClassInfo = FrameInfo = LabelInfo = None

DEVICE_PATTERN = re.compile(r"^(auto|cpu|cuda|cuda:\d+)$")
PRECISIONS = ("fp32", "fp16", "bf16")
TRANSPORTS = ("raw", "compressed")
THROTTLE_S = 5.0


class ParameterValueError(ValueError):
    """A parameter value the node refuses; the message starts with the parameter's name."""


def _string(description, read_only=True, choices=None):
    text = description + (f" One of: {', '.join(choices)}." if choices else "")
    return ParameterDescriptor(type=ParameterType.PARAMETER_STRING, description=text,
                               read_only=read_only)


def _bool(description, read_only=False):
    return ParameterDescriptor(type=ParameterType.PARAMETER_BOOL, description=description,
                               read_only=read_only)


# name -> (default; None = unset, typed by the descriptor), descriptor
PARAMETERS: dict[str, tuple] = {
    "checkpoint": ("", _string("sdcpc checkpoint file (.pt); empty = the embedded default model.")),
    "device": ("auto", _string("Torch device: auto, cpu, cuda or cuda:N.")),
    "precision": ("fp32", _string("Inference precision.", choices=PRECISIONS)),
    "input_size": (None, ParameterDescriptor(
        type=ParameterType.PARAMETER_INTEGER_ARRAY, read_only=True,
        description="[height, width] the network sees (each >= 32); unset = the image's own size. "
                    "Outputs are always at the input image's resolution.")),
    "reference_offsets": (None, ParameterDescriptor(
        type=ParameterType.PARAMETER_INTEGER_ARRAY, read_only=True,
        description="Past frames used as references, negative, e.g. [-9, -6, -3]; unset = the "
                    "checkpoint's.")),
    "max_time_gap": (0.5, ParameterDescriptor(
        type=ParameterType.PARAMETER_DOUBLE,
        description="Seconds between stamps above which the frame buffer is reset.",
        floating_point_range=[FloatingPointRange(from_value=0.001, to_value=3600.0)])),
    "publish_color": (True, _bool("Publish ~/color (palette-coloured labels) when subscribed.")),
    "publish_overlay": (False, _bool("Publish ~/overlay (labels over the image) when subscribed.")),
    "publish_confidence": (False, _bool("Publish ~/confidence (32FC1) when subscribed.")),
    "dynamic_classes": (None, ParameterDescriptor(
        type=ParameterType.PARAMETER_STRING_ARRAY,
        description="Class names marked 255 in ~/dynamic_mask; unset = the checkpoint's dynamic "
                    "classes (person, car, ...).")),
    "input_transport": ("raw", _string(
        "raw: subscribe to 'image' (sensor_msgs/Image); compressed: to 'image/compressed'.",
        choices=TRANSPORTS)),
    "reliable_qos": (False, _bool(
        "Subscribe reliable instead of the sensor-data (best effort) profile; for bag replay.",
        read_only=True)),
    "max_image_pixels": (DEFAULT_MAX_PIXELS, ParameterDescriptor(
        type=ParameterType.PARAMETER_INTEGER,
        description="Images with more pixels are refused before anything is allocated for them.",
        integer_range=[IntegerRange(from_value=1, to_value=2**31 - 1, step=1)])),
    "diagnostics_period": (1.0, ParameterDescriptor(
        type=ParameterType.PARAMETER_DOUBLE, read_only=True,
        description="Seconds between /diagnostics messages.",
        floating_point_range=[FloatingPointRange(from_value=0.1, to_value=60.0)])),
}


def validate_parameter(name: str, value) -> None:
    """Raise ParameterValueError (naming ``name`` and what is allowed) for a value the node refuses.

    Checks what descriptors cannot express; ranges are checked here too, so start-up and dynamic
    updates give the same message.
    """
    def refuse(allowed):
        raise ParameterValueError(f"parameter '{name}' = {value!r} is refused: {allowed}")

    if value is None:
        return
    if name == "checkpoint" and value and not Path(value).is_file():
        refuse("must be an existing checkpoint file, or empty for the embedded default model")
    elif name == "device" and not DEVICE_PATTERN.match(value):
        refuse("allowed: auto, cpu, cuda, cuda:N")
    elif name == "precision" and value not in PRECISIONS:
        refuse(f"allowed: {', '.join(PRECISIONS)}")
    elif name == "input_transport" and value not in TRANSPORTS:
        refuse(f"allowed: {', '.join(TRANSPORTS)}")
    elif name == "input_size" and (len(value) != 2 or min(value) < 32 or max(value) > 8192):
        refuse("allowed: [height, width] with each in [32, 8192], or unset for the image's size")
    elif name == "reference_offsets" and (not value or any(o >= 0 or o < -1000 for o in value)):
        refuse("allowed: a non-empty list of negative offsets in [-1000, -1], e.g. [-9, -6, -3]")
    elif name == "max_time_gap" and not 0.001 <= value <= 3600.0:
        refuse("allowed range: [0.001, 3600] seconds")
    elif name == "max_image_pixels" and not 1 <= value <= 2**31 - 1:
        refuse(f"allowed range: [1, {2**31 - 1}] pixels")
    elif name == "diagnostics_period" and not 0.1 <= value <= 60.0:
        refuse("allowed range: [0.1, 60] seconds")


def _stamp_seconds(header) -> float | None:
    """Header stamp in seconds; None for an unset (zero) stamp, which disables the time rules."""
    stamp = header.stamp.sec + header.stamp.nanosec * 1e-9
    return stamp if stamp > 0.0 else None


class SegmentationNode(Node):
    """Semantic segmentation of a camera stream with SD-CPC."""

    def __init__(self, **kwargs):
        super().__init__("sdcpc", **kwargs)
        p = {}
        for name, (default, descriptor) in PARAMETERS.items():
            initial = Parameter.Type(descriptor.type) if default is None else default
            p[name] = self.declare_parameter(name, initial, descriptor).value  # None: unset
            validate_parameter(name, p[name])

        # torch is imported only once the parameters are known to be valid
        from sdcpc_core.engine import FrameError, StreamingSegmenter, resolve_device

        self._input_errors = (ImageConversionError, FrameError)  # the message's fault: "refused"

        try:
            resolve_device(p["device"])
        except ValueError as exc:
            raise ParameterValueError(f"parameter 'device': {exc}") from None
        try:
            self._seg = StreamingSegmenter.from_checkpoint(
                p["checkpoint"] or None, device=p["device"], precision=p["precision"],
                input_size=p["input_size"], reference_offsets=p["reference_offsets"],
                max_time_gap=p["max_time_gap"])
        except ValueError as exc:  # CheckpointError: missing, corrupt or unsafe file
            raise ParameterValueError(f"parameter 'checkpoint': {exc}") from None
        if p["dynamic_classes"] is not None:
            try:
                self._seg.labels = self._seg.labels.with_dynamic(p["dynamic_classes"])
            except ValueError as exc:
                raise ParameterValueError(f"parameter 'dynamic_classes': {exc}") from None

        self._max_pixels = p["max_image_pixels"]
        self._enabled = {"color": p["publish_color"], "overlay": p["publish_overlay"],
                         "confidence": p["publish_confidence"]}

        # Hand-over state: the newest message and counters, guarded by one condition.
        self._cv = threading.Condition()
        self._pending = None  # (msg, perf_counter at receipt)
        self._stopping = False
        self._received = self._dropped = self._rejected = self._failed = self._published = 0
        self._lost = 0  # part of _dropped: never reached the callback (queue overflow, transport)
        self._last_sequence: dict[bytes, int] = {}  # publisher gid -> last publication sequence
        self._latencies = deque(maxlen=200)  # (node latency ms, inference ms)
        self._last_reset = ""
        self._diag_counts = (0, 0, 0, 0, time.monotonic())  # received, published, failed, rejected, t
        self._last_receipt = None  # monotonic time of the last image received
        self._image_topic = ""  # resolved input topic, set with the subscription below
        self._stall_s = max(2.0, 2 * p["diagnostics_period"])  # input silent this long: WARN

        outputs = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=5,
                             reliability=ReliabilityPolicy.RELIABLE)
        latched = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=1,
                             reliability=ReliabilityPolicy.RELIABLE,
                             durability=DurabilityPolicy.TRANSIENT_LOCAL)
        self._pub = {name: self.create_publisher(Image, f"~/{name}", outputs)
                     for name in ("labels", "color", "overlay", "confidence", "dynamic_mask")}
        self._pub_label_info = self.create_publisher(
            LabelInfo or String, "~/label_info", latched)
        self._pub_frame_info = self.create_publisher(FrameInfo or String, "~/frame_info", outputs)
        self._pub_diag = self.create_publisher(DiagnosticArray, "/diagnostics", 10)

        self.create_service(Trigger, "~/reset", self._on_reset)
        self.add_on_set_parameters_callback(self._on_set_parameters)
        self.create_timer(p["diagnostics_period"], self._publish_diagnostics)

        self._worker = threading.Thread(target=self._work, name="sdcpc_worker", daemon=True)
        self._worker.start()

        if p["reliable_qos"]:
            qos = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=5,
                             reliability=ReliabilityPolicy.RELIABLE)
        else:
            qos = qos_profile_sensor_data
        compressed = p["input_transport"] == "compressed"
        topic = "image/compressed" if compressed else "image"
        self.create_subscription(CompressedImage if compressed else Image, topic, self._on_image, qos)
        self._image_topic = self.resolve_topic_name(topic)
        self._publish_label_info()
        self.get_logger().info(
            f"segmenting {self._image_topic} on {self._seg.device} ({p['precision']}), "
            f"{self._seg.labels.num_classes} classes, "
            f"custom messages: {'sdcpc_interfaces' if LabelInfo else 'no (std_msgs/String JSON)'}")

    # -- executor callbacks (cheap) ----------------------------------------------------------
    def _on_image(self, msg, info) -> None:
        lost = self._lost_before(info)
        with self._cv:
            self._last_receipt = time.monotonic()
            self._received += 1 + lost
            self._dropped += lost
            self._lost += lost
            if self._pending is not None:
                self._dropped += 1
            self._pending = (msg, time.perf_counter())
            self._cv.notify()

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
        response.success, response.message = True, "frame buffer cleared"
        self.get_logger().info("frame buffer cleared by ~/reset")
        return response

    def _on_set_parameters(self, params) -> SetParametersResult:
        try:
            for param in params:
                validate_parameter(param.name, param.value)
                if param.name == "dynamic_classes":
                    names = param.value if param.value is not None else ()
                    self._seg.labels.ids_for(names)  # raises on unknown names
        except ValueError as exc:
            return SetParametersResult(successful=False, reason=str(exc))
        for param in params:
            self._apply(param.name, param.value)
        return SetParametersResult(successful=True)

    def _apply(self, name, value) -> None:
        if name.startswith("publish_"):
            self._enabled[name[len("publish_"):]] = value
        elif name == "max_time_gap":
            self._seg.max_time_gap = value
        elif name == "max_image_pixels":
            self._max_pixels = value
        elif name == "dynamic_classes" and value is not None:
            self._seg.labels = self._seg.labels.with_dynamic(value)
            self._publish_label_info()

    # -- worker thread ----------------------------------------------------------------------
    def _work(self) -> None:
        while True:
            with self._cv:
                self._cv.wait_for(lambda: self._pending is not None or self._stopping)
                if self._stopping:
                    return
                (msg, received_at), self._pending = self._pending, None
            try:
                self._segment(msg, received_at)
            except self._input_errors as exc:
                self._rejected += 1
                self.get_logger().warning(f"image refused: {exc}",
                                          throttle_duration_sec=THROTTLE_S)
            except Exception as exc:  # noqa: BLE001 - keep segmenting the next frames
                self._failed += 1
                self.get_logger().error(f"segmentation failed: {type(exc).__name__}: {exc}",
                                        throttle_duration_sec=THROTTLE_S)

    def _segment(self, msg, received_at: float) -> None:
        if isinstance(msg, CompressedImage):
            rgb = compressed_to_array(msg, self._max_pixels)
        else:
            rgb = image_to_array(msg, self._max_pixels)
        # confidence costs a pass over every class at every pixel: only when someone listens
        res = self._seg.step(rgb, stamp=_stamp_seconds(msg.header), frame_id=msg.header.frame_id,
                             return_confidence=self._wanted("confidence"))
        if res.reset_reason:
            self._last_reset = res.reset_reason
            if self._published:
                self.get_logger().info(f"frame buffer reset: {res.reset_reason}")
        header = msg.header
        self._publish("labels", lambda: array_to_image(
            res.labels, "mono8" if res.labels.dtype == np.uint8 else "mono16", header))
        self._publish("dynamic_mask", lambda: array_to_image(
            res.dynamic_mask.view(np.uint8) * np.uint8(255), "mono8", header))
        want_color, want_overlay = self._wanted("color"), self._wanted("overlay")
        if want_color or want_overlay:
            color = self._seg.labels.colorize(res.labels)
            if want_color:
                self._pub["color"].publish(array_to_image(color, "rgb8", header))
            if want_overlay:
                overlay = cv2.addWeighted(rgb, 0.5, color, 0.5, 0.0)
                self._pub["overlay"].publish(array_to_image(overlay, "rgb8", header))
        if res.confidence is not None:  # a subscriber that arrived mid-frame gets the next one
            self._publish("confidence", lambda: array_to_image(res.confidence, "32FC1", header))
        latency_ms = (time.perf_counter() - received_at) * 1e3
        self._published += 1
        self._latencies.append((latency_ms, res.latency_ms))
        self._publish_frame_info(header, res, latency_ms)

    def _wanted(self, name: str) -> bool:
        return self._enabled.get(name, True) and self._pub[name].get_subscription_count() > 0

    def _publish(self, name: str, build) -> None:
        if self._wanted(name):
            self._pub[name].publish(build())

    def _publish_frame_info(self, header, res, latency_ms: float) -> None:
        if self._pub_frame_info.get_subscription_count() == 0:
            return
        fields = {"inference_ms": float(res.latency_ms), "node_latency_ms": float(latency_ms),
                  "frames_aggregated": int(res.frames_aggregated),
                  "dropped_frames": self._dropped, "rejected_frames": self._rejected,
                  "reset_reason": res.reset_reason or ""}
        if FrameInfo is None:
            stamp = {"sec": header.stamp.sec, "nanosec": header.stamp.nanosec}
            msg = String(data=json.dumps(
                {"header": {"stamp": stamp, "frame_id": header.frame_id}, **fields}))
        else:
            msg = FrameInfo(header=header, **fields)
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
        received, published, failed, rejected, since = self._diag_counts
        now = time.monotonic()
        period = max(now - since, 1e-6)
        self._diag_counts = (self._received, self._published, self._failed, self._rejected, now)
        node_ms = np.array([n for n, _ in self._latencies]) if self._latencies else np.zeros(1)
        infer_ms = np.array([i for _, i in self._latencies]) if self._latencies else np.zeros(1)
        values = {
            "input rate (Hz)": f"{(self._received - received) / period:.2f}",
            "output rate (Hz)": f"{(self._published - published) / period:.2f}",
            "latency p50 (ms)": f"{np.percentile(node_ms, 50):.1f}",
            "latency p95 (ms)": f"{np.percentile(node_ms, 95):.1f}",
            "inference p50 (ms)": f"{np.percentile(infer_ms, 50):.1f}",
            "dropped frames": str(self._dropped),
            "dropped before the node (queue, transport)": str(self._lost),
            "rejected frames": str(self._rejected),
            "failed frames": str(self._failed),
            "buffer length": str(self._seg.buffer_length),
            "device": str(self._seg.device),
            "last reset": self._last_reset,
        }
        status = DiagnosticStatus(name=f"{self.get_name()}: semantic segmentation",
                                  hardware_id=str(self._seg.device),
                                  values=[KeyValue(key=k, value=v) for k, v in values.items()])
        # The level describes this period (totals stay in the values), so one transient failure
        # does not leave the node at ERROR for the rest of the run.
        new_failed, new_rejected = self._failed - failed, self._rejected - rejected
        if new_failed:
            status.level = DiagnosticStatus.ERROR
            status.message = f"{new_failed} segmentation failures in the last {period:.1f} s"
        elif new_rejected:
            status.level = DiagnosticStatus.WARN
            status.message = f"{new_rejected} input images refused in the last {period:.1f} s"
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
        with self._cv:
            self._stopping = True
            self._cv.notify()
        self._worker.join(timeout=10.0)
        super().destroy_node()


def main(args=None) -> int:
    """``sdcpc_node [--ros-args ...]``; exits 2 on a refused parameter."""
    transport_note = use_default_profile()  # before rclpy.init: Fast DDS reads it then
    rclpy.init(args=args)
    rclpy.logging.get_logger("sdcpc").info(transport_note)
    node = None
    try:
        node = SegmentationNode()
        rclpy.spin(node)
    except (ParameterValueError, rclpy.exceptions.ParameterException) as exc:
        print(f"sdcpc_node: {exc}", file=sys.stderr)
        return 2
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        if node is not None:
            node.destroy_node()
        rclpy.try_shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
