"""Start the managed sdcpc node under a Nav2 lifecycle manager (configure, then activate).

ros2 launch sdcpc_ros sdcpc_lifecycle.launch.py image_topic:=/camera/image_raw
ros2 launch sdcpc_ros sdcpc_lifecycle.launch.py autostart:=false   # then, e.g.:
    ros2 lifecycle set /sdcpc configure && ros2 lifecycle set /sdcpc activate
    ros2 service call /lifecycle_manager_perception/manage_nodes nav2_msgs/srv/ManageLifecycleNodes "{command: 0}"

The same parameters (params_file, config/sdcpc_lifecycle.yaml) and topics as sdcpc.launch.py;
the node loads its model in configure and subscribes in activate (docs/node.md, "Managed node").
The lifecycle manager comes from Nav2 (nav2_lifecycle_manager); a robot running Nav2 usually adds
"sdcpc" to the node_names of its own manager instead of starting a second one.
"""

# ruff: noqa: I001  (the repository's launch/ folder makes ruff take ROS 'launch' for first-party)
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument
from launch.substitutions import LaunchConfiguration, PathJoinSubstitution
from launch_ros.actions import LifecycleNode, Node
from launch_ros.parameter_descriptions import ParameterValue
from launch_ros.substitutions import FindPackageShare


def generate_launch_description() -> LaunchDescription:
    image_topic = LaunchConfiguration("image_topic")
    use_sim_time = ParameterValue(LaunchConfiguration("use_sim_time"), value_type=bool)
    return LaunchDescription([
        DeclareLaunchArgument("image_topic", default_value="/camera/image_raw",
                              description="sensor_msgs/Image topic to segment "
                                          "(its /compressed sibling with input_transport=compressed)"),
        DeclareLaunchArgument(
            "params_file",
            default_value=PathJoinSubstitution([FindPackageShare("sdcpc_ros"), "config",
                                                "sdcpc_lifecycle.yaml"]),
            description="Parameters of the node and of its lifecycle manager (YAML)"),
        DeclareLaunchArgument("autostart", default_value="true",
                              description="Configure and activate the node at start-up"),
        DeclareLaunchArgument("use_sim_time", default_value="false",
                              description="Use /clock (bag replay with --clock)"),
        LifecycleNode(
            package="sdcpc_ros",
            executable="sdcpc_lifecycle_node",
            name="sdcpc",
            namespace="",
            output="screen",
            emulate_tty=True,
            parameters=[LaunchConfiguration("params_file"), {"use_sim_time": use_sim_time}],
            remappings=[
                ("image", image_topic),
                ("image/compressed", [image_topic, "/compressed"]),
            ],
        ),
        Node(
            package="nav2_lifecycle_manager",
            executable="lifecycle_manager",
            name="lifecycle_manager_perception",
            output="screen",
            parameters=[LaunchConfiguration("params_file"),
                        {"autostart": ParameterValue(LaunchConfiguration("autostart"), value_type=bool),
                         "use_sim_time": use_sim_time}],
        ),
    ])
