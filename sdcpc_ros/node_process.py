"""``sdcpc_node`` as a child process on a private ROS domain, and a client node to talk to it.

Used by the end-to-end tests (test/ros) and the soak benchmark (benchmarks/soak.py). A node that
does not answer in time has every thread's stack written to its log (faulthandler on SIGUSR1,
registered by the node's ``main``), and the error raised here ends with that log.
"""

import fcntl
import os
import signal
import subprocess
import sys
import tempfile
import time
import zlib
from pathlib import Path

import rclpy
from rclpy.executors import SingleThreadedExecutor

from sdcpc_ros.spinning import BackgroundSpin

REPO = Path(__file__).resolve().parents[1]  # the folder that holds sdcpc_ros (a checkout)
# Safety limit for waiting on the node (start-up imports torch on a busy 2-core machine).
WAIT_S = 90.0


DOMAINS = range(1, 101)
MAX_CLAIMS = 8  # domains one process holds at once (tests using different names run in turn)
_claims: dict[str, tuple[int, object]] = {}  # name -> (domain, its lock file, None once released)


def domain_id_for(name: str) -> int:
    """A ROS domain of its own for ``name`` in this process, that no other run of these tools on
    this host is using: each domain is claimed with an exclusive lock on
    ``$TMPDIR/sdcpc-ros-domain-N.lock``, held until this process exits (or, past MAX_CLAIMS names,
    until it is the longest unused claim). A hash of the name and the pid only picks where the
    search starts: by the hash alone, two runs met on one domain about once in a hundred (seen: a
    soak test's node answering another run's camera, 2026-12-07)."""
    if name in _claims:
        domain, lock = _claims.pop(name)
        _claims[name] = (domain, lock if lock is not None else _try_lock(domain))
        return domain
    start = (zlib.crc32(name.encode()) + os.getpid()) % len(DOMAINS)
    for k in range(len(DOMAINS)):
        domain = DOMAINS[(start + k) % len(DOMAINS)]
        if any(d == domain for d, _ in _claims.values()):
            continue
        lock = _try_lock(domain)
        if lock is not None:
            _claims[name] = (domain, lock)
            _release_oldest()
            return domain
    raise RuntimeError(f"every ROS domain {DOMAINS[0]}-{DOMAINS[-1]} is claimed by another sdcpc "
                       f"run on this host (locks in {tempfile.gettempdir()})")


def _try_lock(domain: int):
    lock = open(Path(tempfile.gettempdir()) / f"sdcpc-ros-domain-{domain}.lock", "a")  # noqa: SIM115
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        lock.close()
        return None
    return lock


def _release_oldest() -> None:
    held = [name for name, (_, lock) in _claims.items() if lock is not None]
    for name in held[:max(0, len(held) - MAX_CLAIMS)]:
        domain, lock = _claims[name]
        lock.close()
        _claims[name] = (domain, None)


def node_env(domain_id: int) -> dict:
    env = dict(os.environ, ROS_DOMAIN_ID=str(domain_id), ROS_AUTOMATIC_DISCOVERY_RANGE="LOCALHOST",
               OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    return env


def run_node(params: dict, domain_id: int, log_dir: Path, wait: bool = False,
             module: str = "sdcpc_ros.node"):
    """Start ``python -m MODULE --ros-args -p k:=v ...`` (``sdcpc_ros.node``: ``sdcpc_node``;
    ``sdcpc_ros.lifecycle_node``: ``sdcpc_lifecycle_node``); stdout+stderr go to a log file."""
    args = [sys.executable, "-X", "faulthandler", "-m", module, "--ros-args"]
    for key, value in params.items():
        args += ["-p", f"{key}:={value}"]
    log = open(log_dir / f"node_{domain_id}_{time.monotonic_ns()}.log", "w+")  # noqa: SIM115
    proc = subprocess.Popen(args, env=node_env(domain_id), cwd=REPO, stdout=log,
                            stderr=subprocess.STDOUT, text=True)
    proc.log = log
    if wait:
        try:
            proc.wait(timeout=WAIT_S)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"node still running after {WAIT_S:.0f} s; its stacks:\n"
                                 + dump_stacks(proc)) from None
    return proc


def dump_stacks(proc, settle: float = 2.0) -> str:
    """Every thread's Python stack of a running node (SIGUSR1 -> faulthandler, into its log),
    returned with the end of its log; the log alone once it has exited."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGUSR1)
        time.sleep(settle)
    return node_output(proc)[-12000:]


def node_output(proc) -> str:
    proc.log.flush()
    proc.log.seek(0)
    return proc.log.read()


def stop_node(proc) -> None:
    if proc.poll() is None:
        proc.send_signal(2)  # SIGINT, as Ctrl-C / ros2 launch do
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            stacks = dump_stacks(proc)
            proc.kill()
            proc.wait()
            print(f"node {proc.pid} did not stop on SIGINT within 20 s; killed. Its stacks:\n{stacks}",
                  file=sys.stderr)
    proc.log.close()


class Client:
    """A client node in the test process; ``wait_for`` spins it until a condition holds."""

    def __init__(self, domain_id: int):
        self.context = rclpy.Context()
        rclpy.init(context=self.context, domain_id=domain_id)
        self.node = rclpy.create_node("sdcpc_test_client", context=self.context)
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)
        self._spinner = None

    def wait_for(self, condition, what: str, timeout: float = WAIT_S, proc=None):
        deadline = time.monotonic() + timeout
        while not condition():
            if proc is not None and proc.poll() is not None:
                raise AssertionError(f"node exited ({proc.returncode}) while waiting for {what}:\n"
                                     + node_output(proc)[-3000:])
            if time.monotonic() > deadline:
                stacks = f"; the node's stacks:\n{dump_stacks(proc)}" if proc is not None else ""
                raise AssertionError(f"gave up waiting for {what}{stacks}")
            self.executor.spin_once(timeout_sec=0.05)

    def spin_in_background(self) -> None:
        """Spin in a thread until :meth:`close`, which stops and joins it before it destroys
        anything (see :mod:`sdcpc_ros.spinning`)."""
        self._spinner = BackgroundSpin(self.executor, self.context)

    def close(self):
        if self._spinner is not None:
            self._spinner.stop()
        self.executor.shutdown(timeout_sec=5.0)
        self.node.destroy_node()
        rclpy.shutdown(context=self.context)
