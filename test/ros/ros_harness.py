"""Helpers for the end-to-end tests: the node process and client (:mod:`sdcpc_ros.node_process`)
and the class names of the tests' tiny checkpoint."""

from sdcpc_ros.node_process import (  # noqa: F401  (re-exported for the tests)
    REPO,
    WAIT_S,
    Client,
    domain_id_for,
    node_env,
    node_output,
    run_node,
    stop_node,
)

CLASS_NAMES = ("road", "person", "car", "sky", "building")
