"""A camera and the sdcpc node together.

ros2 launch sdcpc_ros camera.launch.py driver:=v4l2_camera video_device:=/dev/video0
ros2 launch sdcpc_ros camera.launch.py driver:=sdcpc_camera source:=video.avi   # no driver package
The driver package (v4l2_camera or usb_cam) must be installed: apt install ros-$ROS_DISTRO-v4l2-camera;
sdcpc_camera is this package's sdcpc-camera (a video file, looped, a camera index or synthetic:WxH),
for the pip route, which has no camera driver packages.
The driver is started with the large-image Fast DDS profile (config/fastdds_large_images.xml;
without it best-effort images over 512 KB are lost on their way to the node, docs/transport.md),
unless FASTDDS_DEFAULT_PROFILES_FILE or another Fast DDS setting of yours is in the environment;
sdcpc-camera, like the node, applies it to itself.
"""

# ruff: noqa: I001  (the repository's launch/ folder makes ruff take ROS 'launch' for first-party)
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, ExecuteProcess, IncludeLaunchDescription, LogInfo
from launch.conditions import IfCondition
from launch.launch_description_sources import PythonLaunchDescriptionSource
from launch.substitutions import EqualsSubstitution, LaunchConfiguration, PathJoinSubstitution
from launch_ros.actions import Node
from launch_ros.substitutions import ExecutableInPackage, FindPackageShare

from sdcpc_ros.transport import PROFILE_ENV, choose_profile

IMAGE_TOPIC = "/camera/image_raw"


def driver_is(name: str) -> IfCondition:
    return IfCondition(EqualsSubstitution(LaunchConfiguration("driver"), name))


def generate_launch_description() -> LaunchDescription:
    video_device = LaunchConfiguration("video_device")
    profile, note = choose_profile()  # the publishing side needs it: the writer's segment counts
    driver_env = {PROFILE_ENV: str(profile)} if profile else {}
    return LaunchDescription([
        LogInfo(msg=f"camera driver: {note}"),
        DeclareLaunchArgument("driver", default_value="v4l2_camera",
                              choices=["v4l2_camera", "usb_cam", "sdcpc_camera"],
                              description="Camera driver package, or sdcpc_camera (sdcpc-camera: "
                                          "no driver package needed)"),
        DeclareLaunchArgument("video_device", default_value="/dev/video0",
                              description="V4L2 device (v4l2_camera, usb_cam)"),
        DeclareLaunchArgument("source", default_value="0",
                              description="What sdcpc_camera publishes: a video file (looped), a "
                                          "camera index (0 = /dev/video0) or synthetic:WxH"),
        DeclareLaunchArgument("device", default_value="auto",
                              description="Torch device for the node: auto, cpu, cuda, cuda:N"),
        DeclareLaunchArgument("checkpoint", default_value="",
                              description="sdcpc checkpoint (.pt), export directory, Hugging Face SegFormer "
                                          "directory or Hub id (e.g. nvidia/segformer-b0-finetuned-ade-512-512), or "
                                          "published .pth; empty = embedded default"),
        Node(
            condition=driver_is("v4l2_camera"),
            package="v4l2_camera", executable="v4l2_camera_node", name="camera",
            namespace="camera", output="screen", additional_env=driver_env,
            parameters=[{"video_device": video_device, "image_size": [640, 480]}],
        ),
        Node(
            condition=driver_is("usb_cam"),
            package="usb_cam", executable="usb_cam_node_exe", name="camera",
            namespace="camera", output="screen", additional_env=driver_env,
            parameters=[{"video_device": video_device, "image_width": 640, "image_height": 480,
                         "pixel_format": "yuyv2rgb"}],
        ),
        # sdcpc-camera takes plain arguments, no --ros-args (which a launch_ros Node always adds)
        ExecuteProcess(
            condition=driver_is("sdcpc_camera"),
            cmd=[ExecutableInPackage("sdcpc-camera", "sdcpc_ros"), LaunchConfiguration("source"),
                 "--topic", IMAGE_TOPIC, "--loop"],
            name="camera", output="screen",
        ),
        IncludeLaunchDescription(
            PythonLaunchDescriptionSource(
                PathJoinSubstitution([FindPackageShare("sdcpc_ros"), "launch", "sdcpc.launch.py"])),
            launch_arguments={"image_topic": IMAGE_TOPIC,
                              "device": LaunchConfiguration("device"),
                              "checkpoint": LaunchConfiguration("checkpoint")}.items(),
        ),
    ])
