"""Launch files and config checked without ROS launch installed: syntax, arguments, parameters."""

import ast
from pathlib import Path

import yaml

from sdcpc_ros.node import NODE_DEFAULTS, PARAMETERS

REPO = Path(__file__).resolve().parents[2]


def declared_arguments(path: Path) -> dict[str, ast.Call]:
    tree = ast.parse(path.read_text(), filename=str(path))  # a syntax error fails here
    calls = [n for n in ast.walk(tree) if isinstance(n, ast.Call)
             and getattr(n.func, "id", None) == "DeclareLaunchArgument"]
    assert any(isinstance(n, ast.FunctionDef) and n.name == "generate_launch_description"
               for n in tree.body), f"{path.name} has no generate_launch_description()"
    return {c.args[0].value: c for c in calls}


def keywords(call: ast.Call) -> dict:
    return {k.arg: k.value for k in call.keywords}


def test_sdcpc_launch_declares_the_documented_arguments_and_remaps_image():
    path = REPO / "launch" / "sdcpc.launch.py"
    args = declared_arguments(path)
    assert set(args) == {"image_topic", "params_file", "checkpoint", "device", "use_sim_time"}
    assert all("description" in keywords(c) for c in args.values())
    default = ast.unparse(keywords(args["params_file"])["default_value"])
    assert "'config'" in default and "'sdcpc.yaml'" in default
    source = path.read_text()
    assert '("image", image_topic)' in source
    assert 'executable="sdcpc_node"' in source and 'name="sdcpc"' in source


def test_camera_launch_starts_a_driver_and_includes_the_node_launch():
    path = REPO / "launch" / "camera.launch.py"
    args = declared_arguments(path)
    assert {"driver", "video_device", "source", "device", "checkpoint"} <= set(args)
    choices = ast.literal_eval(keywords(args["driver"])["choices"])
    assert choices == ["v4l2_camera", "usb_cam", "sdcpc_camera"]
    source = path.read_text()
    assert "v4l2_camera_node" in source and "usb_cam_node_exe" in source
    assert 'ExecutableInPackage("sdcpc-camera", "sdcpc_ros")' in source
    assert '"sdcpc.launch.py"' in source and '"image_topic": IMAGE_TOPIC' in source


def test_config_yaml_sets_exactly_the_declared_parameters_to_their_defaults():
    config = yaml.safe_load((REPO / "config" / "sdcpc.yaml").read_text())
    params = config["sdcpc"]["ros__parameters"]
    assert set(params) == set(PARAMETERS) | {"use_sim_time"}
    for name, spec in PARAMETERS.items():
        default = NODE_DEFAULTS.get(name, spec.default)
        assert params[name] == ([] if default is None else default), name


def test_lifecycle_launch_starts_the_managed_node_driven_by_launch_or_a_nav2_lifecycle_manager():
    path = REPO / "launch" / "sdcpc_lifecycle.launch.py"
    args = declared_arguments(path)
    assert set(args) == {"image_topic", "params_file", "autostart", "manager", "use_sim_time"}
    manager = keywords(args["manager"])
    assert ast.literal_eval(manager["choices"]) == ["launch", "nav2"]
    assert ast.literal_eval(manager["default_value"]) == "launch"  # works without Nav2
    assert all("description" in keywords(c) for c in args.values())
    default = ast.unparse(keywords(args["params_file"])["default_value"])
    assert "'sdcpc_lifecycle.yaml'" in default
    source = path.read_text()
    assert 'executable="sdcpc_lifecycle_node"' in source and 'name="sdcpc"' in source
    assert 'package="nav2_lifecycle_manager"' in source and 'executable="lifecycle_manager"' in source
    assert '("image", image_topic)' in source


def test_lifecycle_config_manages_sdcpc_and_sets_the_node_parameters():
    config = yaml.safe_load((REPO / "config" / "sdcpc_lifecycle.yaml").read_text())
    manager = config["lifecycle_manager_perception"]["ros__parameters"]
    assert manager["node_names"] == ["sdcpc"] and manager["autostart"] is True
    assert manager["bond_timeout"] == 0.0  # the node creates no bond
    plain = yaml.safe_load((REPO / "config" / "sdcpc.yaml").read_text())
    assert config["sdcpc"] == plain["sdcpc"]  # the same parameters as sdcpc_node


def test_pip_route_doc_lists_every_launch_argument_with_its_description():
    doc = (REPO / "docs" / "pip-route.md").read_text()
    for name in ("sdcpc.launch.py", "camera.launch.py", "sdcpc_lifecycle.launch.py"):
        for argument, call in declared_arguments(REPO / "launch" / name).items():
            description = ast.literal_eval(keywords(call)["description"])
            assert f"    '{argument}':\n        {description}" in doc, (name, argument)
