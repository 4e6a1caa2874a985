"""``sdcpc_lifecycle_node``: the ``sdcpc`` node as a managed (lifecycle) node.

Same node name, parameters, topics and services as ``sdcpc_node`` (:mod:`sdcpc_ros.node`, whose
:class:`~sdcpc_ros.node.Segmentation` does the work); a lifecycle manager (Nav2's
``lifecycle_manager``, ``ros2 lifecycle set``) drives it through ``~/change_state``:

* configure: declare (the first time) and validate the parameters, load the model (or its export)
  and create the outputs, lifecycle publishers that publish only while active;
* activate: start the worker, subscribe to the images, publish ``~/label_info``; the frame buffer
  starts empty (a stream seen before a deactivate is not continued);
* deactivate: unsubscribe; the frame being segmented is finished and published, one still waiting
  is counted as not taken (``not taken (deactivated)`` in diagnostics); the model stays loaded;
* cleanup: free the model and the outputs; the parameters may then be changed (also those that do
  not change at run time) before the next configure;
* shutdown (from any state): deactivate and clean up as needed, then the process exits (0).

A transition that raises (a refused parameter, a missing or corrupt checkpoint, an export the
runtime cannot load) logs the reason and returns FAILURE: the node stays in its previous state
and can be configured again once the parameter is fixed.
"""

from __future__ import annotations

import faulthandler
import signal
import sys

import rclpy
import rclpy.exceptions
import rclpy.logging
from lifecycle_msgs.msg import State
from rcl_interfaces.msg import SetParametersResult
from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
from rclpy.lifecycle import LifecycleNode, LifecycleState, TransitionCallbackReturn

from sdcpc_core.settings import SettingError
from sdcpc_ros.node import NODE_NAME, PARAMETERS, Segmentation
from sdcpc_ros.spinning import handle_interrupts, ignore_interrupts
from sdcpc_ros.transport import use_default_profile


class LifecycleSegmentationNode(Segmentation, LifecycleNode):
    """Semantic segmentation of a camera stream with SD-CPC, brought up by a lifecycle manager."""

    def __init__(self, **kwargs):
        super().__init__(NODE_NAME, **kwargs)
        self._init_counters(1.0)  # accounting() answers (zeros) before the first configure
        self.add_on_set_parameters_callback(self._on_set_parameters_managed)
        self.add_post_set_parameters_callback(self._after_set_parameters)

    # -- transitions --------------------------------------------------------------------------
    def on_configure(self, state: LifecycleState) -> TransitionCallbackReturn:
        try:
            # read_only=False: a parameter that does not change at run time may still be changed
            # while unconfigured (_on_set_parameters_managed refuses it once configured)
            self._configure(self._read_parameters(read_only=False), self.create_lifecycle_publisher)
        except Exception as exc:  # noqa: BLE001 - any reason is a failed transition, not a dead node
            self._fail("configure", exc)
            self._cleanup(self.destroy_lifecycle_publisher)  # what was created before the failure
            return TransitionCallbackReturn.FAILURE
        self.get_logger().info(f"configured: {self._seg.backend} ({self._seg.precision}) on "
                               f"{self._seg.device}, {self._seg.labels.num_classes} classes")
        return TransitionCallbackReturn.SUCCESS

    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        try:
            result = super().on_activate(state)  # enables the lifecycle publishers
            self._seg.reset(reason="activated")
            self._activate()
        except Exception as exc:  # noqa: BLE001
            self._fail("activate", exc)
            self._deactivate()
            super().on_deactivate(state)
            return TransitionCallbackReturn.FAILURE
        self._announce()
        return result

    def on_deactivate(self, state: LifecycleState) -> TransitionCallbackReturn:
        try:
            not_taken = self._deactivate()
        except Exception as exc:  # noqa: BLE001
            self._fail("deactivate", exc)
            return TransitionCallbackReturn.FAILURE
        self.get_logger().info("deactivated: not taking frames"
                               + (f" ({not_taken} waiting frame not taken)" if not_taken else ""))
        return super().on_deactivate(state)  # disables the lifecycle publishers

    def on_cleanup(self, state: LifecycleState) -> TransitionCallbackReturn:
        try:
            self._cleanup(self.destroy_lifecycle_publisher)
        except Exception as exc:  # noqa: BLE001
            self._fail("cleanup", exc)
            return TransitionCallbackReturn.FAILURE
        self.get_logger().info("cleaned up: model freed")
        return super().on_cleanup(state)

    def on_shutdown(self, state: LifecycleState) -> TransitionCallbackReturn:
        """From unconfigured, inactive or active: stop and free whatever is running."""
        try:
            if self._active:
                self._deactivate()
                super().on_deactivate(state)
            if self._seg is not None:
                self._cleanup(self.destroy_lifecycle_publisher)
        except Exception as exc:  # noqa: BLE001
            self._fail("shutdown", exc)
            return TransitionCallbackReturn.FAILURE
        self.get_logger().info(f"shut down from {state.label}")
        return TransitionCallbackReturn.SUCCESS

    def on_error(self, state: LifecycleState) -> TransitionCallbackReturn:
        """After a transition raised past its handler: back to unconfigured, model freed."""
        self.get_logger().error(f"error processing from {state.label}: freeing the model")
        try:
            return self.on_shutdown(state)
        except Exception:  # noqa: BLE001
            return TransitionCallbackReturn.FAILURE

    def _fail(self, transition: str, exc: Exception) -> None:
        self.get_logger().error(f"{transition} failed: {type(exc).__name__}: {exc}")

    # -- parameters ---------------------------------------------------------------------------
    def _on_set_parameters_managed(self, params) -> SetParametersResult:
        """While configured, a parameter that does not change at run time is refused (it is read
        at configure); the others are checked as in ``sdcpc_node``."""
        if self._seg is not None:
            fixed = [p.name for p in params if p.name in PARAMETERS and not PARAMETERS[p.name].runtime]
            if fixed:
                return SetParametersResult(successful=False, reason=(
                    f"parameter '{fixed[0]}' is read at configure: deactivate and clean up the "
                    "node, set it, then configure again"))
        return self._on_set_parameters(params)

    @property
    def state_id(self) -> int:
        return self._state_machine.current_state[0]


def main(args=None) -> int:
    """``sdcpc_lifecycle_node [--ros-args ...]``: spins until shut down (transition or SIGINT)."""
    faulthandler.register(signal.SIGUSR1, all_threads=True)  # `kill -USR1 PID`: every stack
    transport_note = use_default_profile()  # before rclpy.init: Fast DDS reads it then
    handle_interrupts()  # before rclpy.init, whose handler chains to it
    rclpy.init(args=args)
    rclpy.logging.get_logger(NODE_NAME).info(transport_note)
    node = None
    executor = SingleThreadedExecutor()
    try:
        node = LifecycleSegmentationNode()
        executor.add_node(node)
        while rclpy.ok() and node.state_id != State.PRIMARY_STATE_FINALIZED:
            executor.spin_once(timeout_sec=0.5)
        if node.state_id == State.PRIMARY_STATE_FINALIZED:
            executor.spin_once(timeout_sec=0.1)  # the last change_state response goes out
    except (SettingError, rclpy.exceptions.ParameterException) as exc:
        print(f"sdcpc_lifecycle_node: {exc}", file=sys.stderr)
        return 2
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        ignore_interrupts()  # a second Ctrl-C must not kill the teardown
        executor.shutdown(timeout_sec=5.0)
        if node is not None:
            node.destroy_node()
        rclpy.try_shutdown()
        ignore_interrupts()
    return 0


if __name__ == "__main__":
    sys.exit(main())
