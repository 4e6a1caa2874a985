"""One distribution, two Python packages (sdcpc_core, sdcpc_ros), and an ament_python ROS 2 package.

The distribution is named ``sdcpc_ros`` because ``ros2 run sdcpc_ros sdcpc_node`` needs the ROS
package name, and colcon requires setup.py and package.xml to agree on it.
The CUDA window-attention extension is built only when a CUDA torch and nvcc are present
(see ``cuda_build.py``); otherwise the pure-PyTorch path is used.
"""

import os
import sys
from glob import glob

from setuptools import find_packages, setup

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import cuda_build  # noqa: E402  (top-level helper that decides about the CUDA extension)

PACKAGE = "sdcpc_ros"

ext_modules = cuda_build.ext_modules()
cmdclass = cuda_build.cmdclass()

setup(
    name=PACKAGE,
    version="0.1.0",
    description="SD-CPC video semantic segmentation for robots: a PyTorch library and a ROS 2 node",
    long_description=open("README.md", encoding="utf-8").read() if os.path.exists("README.md") else "",
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.10",
    packages=find_packages(include=["sdcpc_core", "sdcpc_core.*", "sdcpc_ros", "sdcpc_ros.*"]),
    package_data={
        "sdcpc_core": ["assets/*.pt", "assets/*.json", "assets/*.md", "assets/*.png",
                       "train/configs/*.yaml", "csrc/*.cu", "csrc/*.cpp", "csrc/*.h"],
    },
    data_files=[
        ("share/ament_index/resource_index/packages", [f"resource/{PACKAGE}"]),
        (f"share/{PACKAGE}", ["package.xml"]),
        (f"share/{PACKAGE}/launch", glob("launch/*.launch.py")),
        (f"share/{PACKAGE}/config", glob("config/*.yaml") + glob("config/*.xml")),
    ],
    install_requires=[
        "torch>=2.4",  # CI and the README pin torch==2.13.0 (the CPU build) before installing this
        "numpy>=1.24",
        "opencv-python-headless>=4.8",
        "pyyaml>=6",
        "tqdm>=4.60",
        "matplotlib>=3.7",
        "rosbags>=0.10",
        "psutil>=5.9",
        "numba>=0.60",  # the fused CPU label kernel (sdcpc_core/ops/label_kernel.py)
        "safetensors>=0.4",  # Hugging Face weight files (sdcpc_core/checkpoints/huggingface.py)
        "huggingface_hub>=0.23",  # Hub ids: download into, or read from, its cache
    ],
    extras_require={
        # The PyPI ROS 2 (kilted) wheels. Do not install on a machine with ROS 2 from apt.
        "ros": [
            "ros-rclpy", "ros-sensor-msgs", "ros-std-msgs", "ros-std-srvs",
            "ros-diagnostic-msgs", "ros-rmw-fastrtps-cpp", "ros-lifecycle-msgs",
        ],
        # transformers: the reference the Hugging Face conversion is tested against (never imported
        # by sdcpc itself). pytest < 8.4: launch_pytest 3.7.1 (the launch tests) fails at collection
        # with pytest >= 8.4 (docs/pip-route.md, "pytest version").
        "dev": ["pytest>=8,<8.4", "pytest-timeout", "hypothesis>=6", "ruff", "mutmut>=3.8,<4", "transformers>=4.40"],
        # export and the onnxruntime / openvino backends (docs/deployment.md); on a GPU machine
        # install onnxruntime-gpu instead of onnxruntime for the CUDA / TensorRT providers;
        # nncf: int8 quantisation for OpenVINO (sdcpc export --int8, precision int8)
        "deploy": ["onnx>=1.16", "onnxscript>=0.2", "onnxruntime>=1.18", "openvino>=2024.0", "nncf>=2.14"],
    },
    ext_modules=ext_modules,
    cmdclass=cmdclass,
    zip_safe=False,
    entry_points={
        "console_scripts": [
            "sdcpc = sdcpc_core.cli:main",
            "sdcpc_node = sdcpc_ros.node:main",
            "sdcpc_lifecycle_node = sdcpc_ros.lifecycle_node:main",
            "sdcpc-eval = sdcpc_ros.evaluation.cli:main",
            "sdcpc-param = sdcpc_ros.param_tool:main",
            "sdcpc-camera = sdcpc_ros.video_publisher:main",
        ],
    },
)
