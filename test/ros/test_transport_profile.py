"""The large-image Fast DDS profile: the file, where it is found, and when it is applied."""

import ast
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from sdcpc_ros import transport
from sdcpc_ros.transport import (
    PROFILE_ENV,
    PROFILE_NAME,
    check_profile,
    choose_profile,
    profile_path,
    use_default_profile,
)

REPO = Path(__file__).resolve().parents[2]
NS = {"f": "http://www.eprosima.com"}
FULL_HD_RGB8 = 1920 * 1080 * 3


def test_the_profile_is_valid_xml_with_a_default_participant_and_a_large_segment():
    path = REPO / "config" / PROFILE_NAME
    check_profile(path)
    root = ET.parse(path).getroot()
    descriptors = {d.findtext("f:transport_id", namespaces=NS): d
                   for d in root.iterfind(".//f:transport_descriptor", NS)}
    kinds = {d.findtext("f:type", namespaces=NS): d for d in descriptors.values()}
    assert set(kinds) == {"SHM", "UDPv4"}  # UDP kept: other hosts are reached as before
    assert int(kinds["SHM"].findtext("f:segment_size", namespaces=NS)) >= 2 * FULL_HD_RGB8
    participant = root.find(".//f:participant[@is_default_profile='true']", NS)
    used = [t.text for t in participant.iterfind("f:rtps/f:userTransports/f:transport_id", NS)]
    assert sorted(used) == sorted(descriptors)
    # without this, Fast DDS adds its own 512 KB segment and keeps using it
    assert participant.findtext("f:rtps/f:useBuiltinTransports", namespaces=NS) == "false"


def test_check_profile_names_what_is_wrong(tmp_path):
    broken = tmp_path / "broken.xml"
    broken.write_text("<dds><profiles>")
    with pytest.raises(ValueError, match="not valid XML"):
        check_profile(broken)
    empty = tmp_path / "empty.xml"
    empty.write_text('<dds xmlns="http://www.eprosima.com"><profiles/></dds>')
    with pytest.raises(ValueError, match="is_default_profile"):
        check_profile(empty)


def test_ours_is_applied_when_the_user_has_no_fast_dds_configuration(tmp_path):
    env = {"RMW_IMPLEMENTATION": "rmw_fastrtps_cpp", "ROS_DOMAIN_ID": "3"}
    message = use_default_profile(env, cwd=tmp_path)
    assert env[PROFILE_ENV] == str(REPO / "config" / PROFILE_NAME)
    assert str(REPO / "config" / PROFILE_NAME) in message and PROFILE_ENV in message
    assert use_default_profile({}, cwd=tmp_path).startswith("Fast DDS profile for large images")


@pytest.mark.parametrize("name", ["FASTDDS_DEFAULT_PROFILES_FILE", "FASTRTPS_DEFAULT_PROFILES_FILE",
                                  "FASTDDS_BUILTIN_TRANSPORTS"])
def test_the_users_own_configuration_is_never_overridden(tmp_path, name):
    env = {name: "/home/me/my_profile.xml" if "FILE" in name else "LARGE_DATA"}
    before = dict(env)
    message = use_default_profile(env, cwd=tmp_path)
    assert env == before
    assert name in message and env[name] in message


def test_a_default_profile_file_in_the_working_directory_is_the_users(tmp_path):
    (tmp_path / "DEFAULT_FASTDDS_PROFILES.xml").write_text("<dds/>")
    env = {}
    message = use_default_profile(env, cwd=tmp_path)
    assert env == {} and "DEFAULT_FASTDDS_PROFILES.xml" in message


@pytest.mark.parametrize("value", ["off", "0", "OFF", "false"])
def test_opting_out_leaves_fast_dds_at_its_defaults(tmp_path, value):
    env = {"SDCPC_FASTDDS_PROFILE": value}
    assert "Fast DDS defaults" in use_default_profile(env, cwd=tmp_path)
    assert PROFILE_ENV not in env


def test_other_middlewares_are_left_alone_and_fast_dds_variants_get_it(tmp_path):
    env = {"RMW_IMPLEMENTATION": "rmw_cyclonedds_cpp"}
    assert "rmw_cyclonedds_cpp" in use_default_profile(env, cwd=tmp_path)
    assert PROFILE_ENV not in env
    path, _ = choose_profile({"RMW_IMPLEMENTATION": "rmw_fastrtps_dynamic_cpp"}, cwd=tmp_path)
    assert path == REPO / "config" / PROFILE_NAME


def _installed_elsewhere(monkeypatch, tmp_path):
    """Pretend the module is installed outside the source tree (no config/ beside it)."""
    fake = tmp_path / "site-packages" / "sdcpc_ros" / "transport.py"
    monkeypatch.setattr(transport, "__file__", str(fake))
    monkeypatch.setattr(sys, "prefix", str(tmp_path / "venv"))


def _share(prefix: Path) -> Path:
    config = prefix / "share" / "sdcpc_ros" / "config"
    config.mkdir(parents=True)
    (config / PROFILE_NAME).write_text((REPO / "config" / PROFILE_NAME).read_text())
    return config / PROFILE_NAME


def test_found_in_a_colcon_install_through_the_ament_index(monkeypatch, tmp_path):
    pytest.importorskip("ament_index_python", reason="ament_index_python not installed")
    _installed_elsewhere(monkeypatch, tmp_path)
    prefix = tmp_path / "install"
    installed = _share(prefix)
    index = prefix / "share" / "ament_index" / "resource_index" / "packages"
    index.mkdir(parents=True)
    (index / "sdcpc_ros").write_text("")
    monkeypatch.setenv("AMENT_PREFIX_PATH", str(prefix))
    assert profile_path() == installed


def test_found_in_a_pip_install_under_the_prefix(monkeypatch, tmp_path):
    _installed_elsewhere(monkeypatch, tmp_path)
    monkeypatch.setenv("AMENT_PREFIX_PATH", str(tmp_path / "nothing"))
    installed = _share(tmp_path / "venv")
    assert profile_path() == installed


def test_a_missing_profile_says_where_it_looked_and_what_to_do(monkeypatch, tmp_path):
    _installed_elsewhere(monkeypatch, tmp_path)
    monkeypatch.setenv("AMENT_PREFIX_PATH", str(tmp_path / "nothing"))
    with pytest.raises(FileNotFoundError, match="reinstall sdcpc_ros"):
        profile_path()


def test_setup_installs_the_profile_beside_the_parameters():
    tree = ast.parse((REPO / "setup.py").read_text())
    data_files = next(k.value for n in ast.walk(tree) if isinstance(n, ast.Call)
                      for k in n.keywords if k.arg == "data_files")
    config = [e for e in data_files.elts if "config" in ast.unparse(e.elts[0])]
    assert len(config) == 1 and "'config/*.xml'" in ast.unparse(config[0].elts[1])


def test_the_node_applies_it_before_rclpy_init():
    tree = ast.parse((REPO / "sdcpc_ros" / "node.py").read_text())
    main = next(n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "main")
    calls = [ast.unparse(n.func) for n in ast.walk(main) if isinstance(n, ast.Call)]
    assert calls.index("use_default_profile") < calls.index("rclpy.init")
