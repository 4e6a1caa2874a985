"""Spinning a client node's executor in a thread that can be stopped and joined.

rclpy does not support destroying a node or its context while another thread spins it, and
``Executor.shutdown(timeout_sec)`` returns without waiting for that thread (ros2/rclpy#663, #968):
a client that spins ``executor.spin`` in a daemon thread and then destroys its node can crash or
hang at exit. :class:`BackgroundSpin` spins with ``spin_once`` until asked to stop, and
:meth:`BackgroundSpin.stop` joins the thread before the caller destroys anything.
"""

from __future__ import annotations

import faulthandler
import threading

from rclpy.executors import ExternalShutdownException


class BackgroundSpin:
    """``executor`` spun in a thread named ``name`` until :meth:`stop` or the context shuts down."""

    def __init__(self, executor, context, name: str = "client_spin", period: float = 0.1):
        self._executor, self._context, self._period = executor, context, period
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._spin, name=name, daemon=True)
        self._thread.start()

    def _spin(self) -> None:
        try:
            while not self._stop.is_set() and self._context.ok():
                self._executor.spin_once(timeout_sec=self._period)
        except ExternalShutdownException:
            pass

    def stop(self, timeout: float = 10.0) -> None:
        """Stop spinning and wait for the thread; raise (with every thread's stack on stderr)
        rather than let the caller destroy the node under a thread that is still running."""
        self._stop.set()
        self._thread.join(timeout=timeout)
        if self._thread.is_alive():
            faulthandler.dump_traceback(all_threads=True)
            raise RuntimeError(f"the spin thread {self._thread.name!r} did not stop within "
                               f"{timeout:g} s (every thread's stack is on stderr)")


_STOPPING = threading.Event()


def handle_interrupts() -> None:
    """Install before ``rclpy.init`` (whose handler chains to it) in a process's ``main``: the first
    SIGINT raises KeyboardInterrupt as Python's own handler does; once the process is stopping
    (that first one, or ``ignore_interrupts``) further SIGINTs are ignored. Ctrl-C under
    ``ros2 launch`` signals the whole process group and launch forwards a second SIGINT; without
    this, the second one lands in the teardown (``destroy_node``, ``try_shutdown``) and the process
    dies with -2 instead of exiting 0 (test_ros2_launch)."""
    import signal

    def on_interrupt(signum, frame):
        if _STOPPING.is_set():
            return
        _STOPPING.set()
        raise KeyboardInterrupt

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, on_interrupt)


def ignore_interrupts() -> None:
    """The process is stopping: SIGINT is ignored from here on. Call it first in ``main``'s
    teardown and again after ``rclpy.try_shutdown`` (which puts the handler from before
    ``rclpy.init`` back). SIG_IGN also outlives the interpreter's finalization, which resets other
    handlers to the default (a SIGINT in torch's seconds-long teardown after that killed the
    process with -2)."""
    import signal

    _STOPPING.set()
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, signal.SIG_IGN)
