"""Start the managed sdcpc node and bring it up (configure, then activate).

ros2 launch sdcpc_ros sdcpc_lifecycle.launch.py image_topic:=/camera/image_raw
ros2 launch sdcpc_ros sdcpc_lifecycle.launch.py manager:=nav2   # under a Nav2 lifecycle manager
ros2 launch sdcpc_ros sdcpc_lifecycle.launch.py autostart:=false   # then, e.g.:
    ros2 lifecycle set /sdcpc configure && ros2 lifecycle set /sdcpc activate

The same parameters (params_file, config/sdcpc_lifecycle.yaml) and topics as sdcpc.launch.py;
the node loads its model in configure and subscribes in activate (docs/node.md, "Managed node").
With manager:=launch (the default) this launch file asks for configure at start and for activate
once configure has succeeded, through launch_ros's lifecycle events; nothing more is needed. With
manager:=nav2 a Nav2 lifecycle_manager (nav2_lifecycle_manager) does it and takes
`ros2 service call /lifecycle_manager_perception/manage_nodes ...`; a robot running Nav2 usually
adds "sdcpc" to the node_names of its own manager instead of starting a second one.
"""

# ruff: noqa: I001  (the repository's launch/ folder makes ruff take ROS 'launch' for first-party)
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, EmitEvent, LogInfo, RegisterEventHandler
from launch.conditions import IfCondition
from launch.events import matches_action
from launch.substitutions import (AndSubstitution, EqualsSubstitution, LaunchConfiguration,
                                  PathJoinSubstitution)
from launch_ros.actions import LifecycleNode, Node
from launch_ros.event_handlers import OnStateTransition
from launch_ros.events.lifecycle import ChangeState
from launch_ros.parameter_descriptions import ParameterValue
from launch_ros.substitutions import FindPackageShare
from lifecycle_msgs.msg import Transition


def transition(node: LifecycleNode, transition_id: int, **kwargs) -> EmitEvent:
    """Ask launch_ros to call the node's change_state service with this transition."""
    return EmitEvent(event=ChangeState(lifecycle_node_matcher=matches_action(node),
                                       transition_id=transition_id), **kwargs)


def generate_launch_description() -> LaunchDescription:
    image_topic = LaunchConfiguration("image_topic")
    use_sim_time = ParameterValue(LaunchConfiguration("use_sim_time"), value_type=bool)
    manager = LaunchConfiguration("manager")
    node = LifecycleNode(
        package="sdcpc_ros",
        executable="sdcpc_lifecycle_node",
        name="sdcpc",
        namespace="",
        output="screen",
        emulate_tty=True,
        # Ctrl-C: the node stops at once, but torch's own teardown at process exit then took 2-7 s
        # on a loaded 2-core CPU, and launch's default 5 s before SIGTERM cut such exits short.
        sigterm_timeout=LaunchConfiguration("sigterm_timeout", default="20"),
        parameters=[LaunchConfiguration("params_file"), {"use_sim_time": use_sim_time}],
        remappings=[
            ("image", image_topic),
            ("image/compressed", [image_topic, "/compressed"]),
        ],
    )
    launch_drives = IfCondition(AndSubstitution(LaunchConfiguration("autostart"),
                                                EqualsSubstitution(manager, "launch")))
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
        DeclareLaunchArgument("manager", default_value="launch", choices=["launch", "nav2"],
                              description="What configures and activates it: launch (this file, "
                                          "through launch_ros lifecycle events) or nav2 (a Nav2 "
                                          "lifecycle_manager, nav2_lifecycle_manager)"),
        DeclareLaunchArgument("use_sim_time", default_value="false",
                              description="Use /clock (bag replay with --clock)"),
        # activate once the start-up configure has succeeded (configuring -> inactive, once: a
        # later deactivate, or a configure by hand, is left as the user made it)
        RegisterEventHandler(OnStateTransition(
            target_lifecycle_node=node, start_state="configuring", goal_state="inactive",
            entities=[LogInfo(msg="sdcpc configured; activating"),
                      transition(node, Transition.TRANSITION_ACTIVATE)],
            handle_once=True),
            condition=launch_drives),
        node,
        transition(node, Transition.TRANSITION_CONFIGURE, condition=launch_drives),
        Node(
            condition=IfCondition(EqualsSubstitution(manager, "nav2")),
            package="nav2_lifecycle_manager",
            executable="lifecycle_manager",
            name="lifecycle_manager_perception",
            output="screen",
            parameters=[LaunchConfiguration("params_file"),
                        {"autostart": ParameterValue(LaunchConfiguration("autostart"), value_type=bool),
                         "use_sim_time": use_sim_time}],
        ),
    ])
