"""Evaluation of the model on a rosbag2 (``sdcpc-eval``).

- :mod:`~sdcpc_ros.evaluation.pairing`: the bag's images with their labels, matched by stamp;
- :mod:`~sdcpc_ros.evaluation.scoring`: every frame's fate and the per-model metrics;
- :mod:`~sdcpc_ros.evaluation.offline`: every frame through the engine (deterministic);
- :mod:`~sdcpc_ros.evaluation.live`: the bag played to ``sdcpc_node`` (needs rclpy);
- :mod:`~sdcpc_ros.evaluation.report`: report.json, report.md and the plots;
- :mod:`~sdcpc_ros.evaluation.cli`: the ``sdcpc-eval`` command line.
"""
