"""Live evaluation: the bag played to a running ``sdcpc_node``, what it publishes on ``~/labels``
recorded, matched by stamp and scored; frames never answered count as dropped. With the node's
``~/frame_info`` heard, every frame is also scored the three ways of
:mod:`sdcpc_ros.evaluation.strategies` (network frames only, last labels held, as published)."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np

from sdcpc_core import bags
from sdcpc_core.bags import BagError, BagReader, format_stamp, stamp_to_ns
from sdcpc_core.engine import continuity_break
from sdcpc_ros.conversions import labels_to_array
from sdcpc_ros.evaluation.pairing import Pair, paired_frames
from sdcpc_ros.evaluation.scoring import (
    DEFAULT_MAX_TIME_GAP,
    Evaluation,
    checkpoint_labels,
    open_bag,
    sample_targets,
)
from sdcpc_ros.evaluation.strategies import AnswerInfo, StrategyBreakdown, frame_info_entry


def _node_command(node_name, image_topic, checkpoint, input_size, device, max_time_gap,
                  precision="fp32", backend="torch", propagate=False, propagation_flow=None) -> list[str]:
    cmd = [sys.executable, "-m", "sdcpc_ros.node", "--ros-args", "-r", f"__node:={node_name}",
           "-r", f"image:={image_topic}", "-p", "reliable_qos:=true", "-p", "publish_color:=false",
           "-p", f"max_time_gap:={float(max_time_gap)}", "-p", f"device:={device}",
           "-p", f"precision:={precision}", "-p", f"backend:={backend}",
           "-p", f"propagate:={'true' if propagate else 'false'}"]
    if propagation_flow:
        cmd += ["-p", f"propagation_flow:={propagation_flow}"]
    if checkpoint:
        cmd += ["-p", f"checkpoint:={Path(checkpoint).resolve()}"]
    if input_size:
        cmd += ["-p", f"input_size:=[{int(input_size[0])}, {int(input_size[1])}]"]
    return cmd


class _Player:
    """A client node in its own rclpy context: publishes images reliably, records ``~/labels``
    (stamp -> (arrival time, labels)) from a spinning thread, stopped and joined by :meth:`close`
    before the node is destroyed."""

    def __init__(self, publish_topic: str, labels_topic: str, problems: list[str]):
        import rclpy
        from rclpy.executors import SingleThreadedExecutor
        from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy
        from sensor_msgs.msg import Image

        from sdcpc_ros.node import FrameInfo

        self.labels_topic, self.problems = labels_topic, problems
        self.answers: dict[int, tuple[float, np.ndarray]] = {}
        self.infos: dict[int, AnswerInfo] = {}  # stamp -> what ~/frame_info said
        self.sent: dict[int, float] = {}  # stamp -> publish time
        self.context = rclpy.Context()
        rclpy.init(context=self.context)
        self.node = rclpy.create_node("sdcpc_eval_player", context=self.context)
        reliable = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=50,
                              reliability=ReliabilityPolicy.RELIABLE)
        self.publisher = self.node.create_publisher(Image, publish_topic, reliable)
        self.node.create_subscription(Image, labels_topic, self._on_labels, reliable)
        from std_msgs.msg import String

        info_topic = labels_topic.rsplit("/", 1)[0] + "/frame_info"
        self.node.create_subscription(FrameInfo or String, info_topic, self._on_info, reliable)
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)
        from sdcpc_ros.spinning import BackgroundSpin

        self.spinner = BackgroundSpin(self.executor, self.context, name="eval_player_spin")

    def _on_labels(self, msg) -> None:
        arrival = time.perf_counter()
        try:
            self.answers[stamp_to_ns(msg.header.stamp)] = (arrival, labels_to_array(msg))
        except ValueError as exc:
            self.problems.append(f"unusable message on {self.labels_topic}: {exc}")

    def _on_info(self, msg) -> None:
        try:
            stamp, info = frame_info_entry(msg)
        except (KeyError, TypeError, ValueError) as exc:
            self.problems.append(f"unusable ~/frame_info message: {exc}")
            return
        self.infos[stamp] = info

    def node_ready(self) -> bool:
        """A node reads what we publish and publishes the labels topic."""
        return (self.publisher.get_subscription_count() > 0
                and self.node.count_publishers(self.labels_topic) > 0)

    def publish(self, stamp: int, raw: bytes) -> None:
        self.sent[stamp] = time.perf_counter()
        self.publisher.publish(raw)

    def drain(self, timeout: float) -> None:
        """Wait for answers until all are in or none came for ``timeout`` seconds."""
        quiet_since, seen = time.monotonic(), len(self.answers)
        while len(self.answers) < len(self.sent) and time.monotonic() - quiet_since < timeout:
            time.sleep(0.05)
            if len(self.answers) != seen:
                quiet_since, seen = time.monotonic(), len(self.answers)

    def close(self) -> None:
        import rclpy

        self.spinner.stop()
        self.executor.shutdown()
        self.node.destroy_node()
        rclpy.try_shutdown(context=self.context)


def _start_node(command: list[str], out_dir: Path):
    """``sdcpc_node`` as a child process (it inherits ROS_DOMAIN_ID), its output in ``OUT/node.log``;
    stop it with :func:`sdcpc_ros.node_process.stop_node`."""
    import subprocess

    log = open(out_dir / "node.log", "w+")  # noqa: SIM115 - closed by stop_node
    proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, text=True)
    proc.log = log
    return proc


def _wait_for_node(player: _Player, node, timeout: float, what: str) -> None:
    from sdcpc_ros.node_process import node_output

    deadline = time.monotonic() + timeout
    while not player.node_ready():
        if node is not None and node.poll() is not None:
            raise RuntimeError(f"sdcpc_node exited with {node.returncode} before it was ready; its log "
                               f"({node.log.name}):\n" + node_output(node)[-2000:])
        if time.monotonic() > deadline:
            raise RuntimeError(f"no node {what} within {timeout:.0f} s")
        time.sleep(0.1)


def _play(bag: BagReader, player: _Player, ev: Evaluation, pairs: list[Pair], image_topic: str,
          label_topic: str | None, rate: float, max_pause: float) -> None:
    """Publish the bag's images at recorded speed x ``rate`` (pauses capped at ``max_pause``); every
    image read is appended to ``pairs``. An image whose stamp was already published is skipped."""
    keep = list(ev.sample_targets)
    t_play = last_log = None
    for pair in paired_frames(bag, image_topic, label_topic, ev.problems):
        pairs.append(pair)
        if pair.error:
            continue
        if t_play is None:
            t_play = time.perf_counter()
        else:
            t_play += min(max(pair.log_time - last_log, 0) / 1e9 / rate, max_pause)
        last_log = pair.log_time
        if pair.stamp in player.sent:  # its answer could not be told from the earlier frame's
            continue
        time.sleep(max(0.0, t_play - time.perf_counter()))
        player.publish(pair.stamp, pair.raw)
        pair.raw = b""  # keep memory for labels only
        if not any(0 <= pair.index - t < 10 for t in keep):
            pair.image = None  # only frames near a sample target keep their pixels


def evaluate_live(bag_path, out_dir, *, rate=1.0, checkpoint=None, connect=False, node_name="sdcpc",
                  labels_topic=None, image_topic=bags.DEFAULT_IMAGE_TOPIC,
                  label_topic=bags.DEFAULT_LABEL_TOPIC, explicit_label_topic=False,
                  publish_topic=None, input_size=None, device="cpu", precision="fp32", backend="torch",
                  max_time_gap=DEFAULT_MAX_TIME_GAP, startup_timeout=120.0, drain_timeout=10.0,
                  max_pause=1.0, samples=4, propagate=False, propagation_flow=None) -> dict:
    """Play the bag's images to ``sdcpc_node`` (started here unless ``connect``) at recorded speed ×
    ``rate``, record ``~/labels`` and ``~/frame_info``, match by stamp and score; unanswered frames
    count as dropped. With ``propagate`` (the node started with it) or ``connect``, every frame is
    also scored three ways (models ``node`` as published, ``network`` its own frames only, ``held``
    the last network labels held; report["strategies"]); ``propagation_flow``: the node's
    ``propagation_flow`` parameter (None: its default)."""
    from sdcpc_ros.evaluation.report import write_report
    from sdcpc_ros.node_process import stop_node

    if rate <= 0:
        raise ValueError(f"rate must be > 0, got {rate}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    labelset = checkpoint_labels(checkpoint)
    labels_topic = labels_topic or f"/{node_name}/labels"
    publish_topic = publish_topic or image_topic
    settings = {"checkpoint": str(checkpoint or "embedded default"), "rate": rate,
                "image_topic": image_topic, "label_topic": label_topic, "publish_topic": publish_topic,
                "labels_topic": labels_topic, "node": "connected" if connect else "started",
                "max_time_gap": max_time_gap, "input_size": list(input_size) if input_size else None,
                "device": device, "precision": precision, "backend": backend,
                "propagate": None if connect else bool(propagate),
                "propagation_flow": None if connect else propagation_flow}
    three_ways = propagate or connect  # a connected node may propagate: ~/frame_info says
    ev = Evaluation(str(bag_path), "live", labelset, ["node", "network", "held"] if three_ways else ["node"],
                    settings)
    breakdown = StrategyBreakdown(labelset.num_classes, labelset.dynamic) if three_ways else None
    with BagReader(bag_path) as probe:  # fail fast, before a node is started
        probe.require(image_topic)
        if explicit_label_topic:
            probe.require(label_topic)

    player = _Player(publish_topic, labels_topic, ev.problems)
    node = None
    pairs: list[Pair] = []
    try:
        if not connect:
            node = _start_node(_node_command(node_name, publish_topic, checkpoint, input_size, device,
                                             max_time_gap, precision, backend, propagate, propagation_flow),
                                 out_dir)
        _wait_for_node(player, node, startup_timeout,
                       f"subscribed to {publish_topic} and publishing {labels_topic}")
        with BagReader(bag_path) as bag:
            label_topic = open_bag(bag, image_topic, label_topic, explicit_label_topic, ev)
            ev.sample_targets = sample_targets(ev.total, samples)
            _play(bag, player, ev, pairs, image_topic, label_topic, rate, max_pause)
        player.drain(drain_timeout)
    except BagError as exc:
        ev.errors.append(str(exc))
        ev.status = "partial"
    except KeyboardInterrupt:
        ev.errors.append(f"interrupted (Ctrl-C) after publishing {len(player.sent)} frames of {bag_path}")
        ev.status = "interrupted"
    finally:
        if node is not None:
            stop_node(node)
        player.close()
    score_live(ev, pairs, player.sent, player.answers, max_time_gap, player.infos, breakdown)
    report = ev.report()
    if breakdown is not None:
        report["strategies"] = breakdown.summary()
    write_report(out_dir, report, labelset, ev.samples)
    return report


def score_live(ev: Evaluation, pairs, sent, answers, max_time_gap, infos=None,
               breakdown: StrategyBreakdown | None = None) -> None:
    """Score each published frame against the node's answer with the same stamp. A frame whose
    stamp an earlier frame already had was not published: the node's labels carry only the
    stamp, so the two answers could not be told apart. Videos split where the node resets: the
    time rules on every published frame (the node judges gaps on its input stream), size and
    frame_id between answered frames. ``infos`` (stamp -> AnswerInfo) add the models ``network``
    and ``held`` where ``ev`` has them (:mod:`sdcpc_ros.evaluation.strategies`)."""
    previous_input = previous_answer = pending = None
    first_with_stamp = {}
    index_of = {}  # stamp -> frame index, for frames since the source network frame
    for pair in pairs:
        if pair.error:
            ev.skip(pair, "unreadable", pair.error)
            continue
        first = first_with_stamp.setdefault(pair.stamp, pair.index)
        index_of.setdefault(pair.stamp, pair.index)
        if first != pair.index:
            ev.skip(pair, "duplicate_stamp", f"not published: frame {first} has the same header stamp "
                    f"{format_stamp(pair.stamp)}, and labels are matched to images by stamp")
            continue
        if pair.stamp not in sent:
            ev.skip(pair, "dropped", "not published (run stopped)")
            continue
        current_input = (pair.stamp_s, None, None)
        pending = continuity_break(previous_input, current_input, max_time_gap) or pending
        previous_input = current_input
        answer = answers.get(pair.stamp)
        if answer is None:
            ev.skip(pair, "dropped", "published, never answered on ~/labels")
            continue
        arrival, pred = answer
        current = (None, pair.frame_id, pred.shape)
        reason = pending or continuity_break(previous_answer, current, None)
        pending = None
        if previous_answer is None or reason:
            ev.start_video(pair.index, reason)
        previous_answer = current
        if pair.labels is not None and pair.labels.shape != pred.shape:
            pair.label_error = f"node output {pred.shape} differs from the label {pair.labels.shape}"
            pair.labels = None
        latency = (arrival - sent[pair.stamp]) * 1e3
        preds, latencies = {"node": pred}, {"node": latency}
        info = (infos or {}).get(pair.stamp, AnswerInfo(False, pair.stamp))
        source = answers.get(info.source_stamp)
        held = source[1] if info.propagated and source is not None else pred
        if "held" in ev.scores and held.shape == pred.shape:
            preds["held"] = held
        if "network" in ev.scores and not info.propagated:
            preds["network"], latencies["network"] = pred, latency
        ev.add(pair, preds, latencies)
        if breakdown is not None:
            since = pair.index - index_of.get(info.source_stamp, pair.index) if info.propagated else 0
            breakdown.add(since, {k: preds[k] for k in preds if k in ("node", "network", "held")},
                          pair.labels, latency, info.propagated)


