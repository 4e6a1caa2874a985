"""Start the sdcpc segmentation node.

ros2 launch sdcpc_ros sdcpc.launch.py image_topic:=/camera/image_raw device:=cuda
Arguments given here override the same parameters in params_file. The node applies the large-image
Fast DDS profile itself unless you have your own (docs/transport.md).
"""

# ruff: noqa: I001  (the repository's launch/ folder makes ruff take ROS 'launch' for first-party)
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument
from launch.substitutions import LaunchConfiguration, PathJoinSubstitution
from launch_ros.actions import Node
from launch_ros.parameter_descriptions import ParameterValue
from launch_ros.substitutions import FindPackageShare


def generate_launch_description() -> LaunchDescription:
    image_topic = LaunchConfiguration("image_topic")
    return LaunchDescription([
        DeclareLaunchArgument("image_topic", default_value="/camera/image_raw",
                              description="sensor_msgs/Image topic to segment "
                                          "(its /compressed sibling with input_transport=compressed)"),
        DeclareLaunchArgument(
            "params_file",
            default_value=PathJoinSubstitution([FindPackageShare("sdcpc_ros"), "config", "sdcpc.yaml"]),
            description="Node parameters (YAML)"),
        DeclareLaunchArgument("checkpoint", default_value="",
                              description="sdcpc checkpoint (.pt), export directory, Hugging Face SegFormer "
                                          "directory or Hub id (e.g. nvidia/segformer-b0-finetuned-ade-512-512), or "
                                          "published .pth; empty = embedded default"),
        DeclareLaunchArgument("device", default_value="auto",
                              description="auto, cpu, cuda or cuda:N"),
        DeclareLaunchArgument("use_sim_time", default_value="false",
                              description="Use /clock (bag replay with --clock)"),
        Node(
            package="sdcpc_ros",
            executable="sdcpc_node",
            name="sdcpc",
            output="screen",
            emulate_tty=True,
            # Ctrl-C: the node stops at once, but torch's own teardown at process exit then took 2-7 s
            # on a loaded 2-core CPU, and launch's default 5 s before SIGTERM cut such exits short.
            sigterm_timeout=LaunchConfiguration("sigterm_timeout", default="20"),
            parameters=[
                LaunchConfiguration("params_file"),
                {
                    "checkpoint": LaunchConfiguration("checkpoint"),
                    "device": LaunchConfiguration("device"),
                    "use_sim_time": ParameterValue(LaunchConfiguration("use_sim_time"),
                                                   value_type=bool),
                },
            ],
            remappings=[
                ("image", image_topic),
                ("image/compressed", [image_topic, "/compressed"]),
            ],
        ),
    ])
