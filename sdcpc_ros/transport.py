"""The Fast DDS profile that lets best-effort camera images larger than 512 KB arrive.

Fast DDS hands a sample to another process on the same host through the publisher's shared
memory segment, 512 KB by default; a larger image is overwritten there while it is still being
sent, and a best-effort subscriber loses it (docs/transport.md has the measurements). The profile
``config/fastdds_large_images.xml`` enlarges the segment. ``use_default_profile`` points Fast DDS
at it before ``rclpy.init`` unless the user configured Fast DDS themselves. It must run in every
process that PUBLISHES large images (the camera side) and in the node, for its own outputs.
"""

from __future__ import annotations

import os
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

PROFILE_NAME = "fastdds_large_images.xml"
PROFILE_ENV = "FASTDDS_DEFAULT_PROFILES_FILE"
OPT_OUT_ENV = "SDCPC_FASTDDS_PROFILE"  # "off": leave Fast DDS at its own defaults
# Settings with which the user already chose a Fast DDS configuration of their own.
USER_SETTINGS = (PROFILE_ENV, "FASTRTPS_DEFAULT_PROFILES_FILE", "FASTDDS_BUILTIN_TRANSPORTS")
# Fast DDS loads this file from the working directory by itself.
CWD_PROFILE = "DEFAULT_FASTDDS_PROFILES.xml"
PACKAGE = "sdcpc_ros"


def profile_path() -> Path:
    """The installed profile: the source tree's config/ (editable install, running from the
    repository), else share/sdcpc_ros/config/ of the colcon or pip prefix."""
    candidates = [Path(__file__).resolve().parents[1] / "config" / PROFILE_NAME]
    try:
        from ament_index_python.packages import get_package_share_directory

        candidates.append(Path(get_package_share_directory(PACKAGE)) / "config" / PROFILE_NAME)
    except Exception:  # noqa: BLE001 - no ament index (pip install) or package not registered
        pass
    candidates.append(Path(sys.prefix) / "share" / PACKAGE / "config" / PROFILE_NAME)
    for path in candidates:
        if path.is_file():
            return path
    raise FileNotFoundError(
        f"{PROFILE_NAME} not found in {', '.join(str(p.parent) for p in candidates)}; "
        "reinstall sdcpc_ros (pip install -e . or colcon build)")


def check_profile(path: Path) -> None:
    """Raise ValueError unless ``path`` is a Fast DDS profile with a default participant."""
    try:
        root = ET.parse(path).getroot()
    except ET.ParseError as exc:
        raise ValueError(f"{path}: not valid XML: {exc}") from None
    ns = {"f": "http://www.eprosima.com"}
    if root.find(".//f:participant[@is_default_profile='true']", ns) is None:
        raise ValueError(f"{path}: no <participant is_default_profile=\"true\"> profile")


def choose_profile(environ=None, cwd: Path | None = None) -> tuple[Path | None, str]:
    """(profile to apply or None, one line saying why) for this environment and directory."""
    environ = os.environ if environ is None else environ
    cwd = Path.cwd() if cwd is None else cwd
    rmw = environ.get("RMW_IMPLEMENTATION", "")
    if environ.get(OPT_OUT_ENV, "").lower() in ("off", "0", "false", "no"):
        return None, f"Fast DDS defaults ({OPT_OUT_ENV}={environ[OPT_OUT_ENV]})"
    if rmw and not rmw.startswith("rmw_fastrtps"):
        return None, f"RMW_IMPLEMENTATION={rmw}: the Fast DDS profile does not apply"
    for name in USER_SETTINGS:
        if environ.get(name):
            return None, f"Fast DDS configuration of the user: {name}={environ[name]}"
    if (cwd / CWD_PROFILE).is_file():
        return None, f"Fast DDS configuration of the user: {cwd / CWD_PROFILE}"
    path = profile_path()
    return path, f"Fast DDS profile for large images: {path} (set {PROFILE_ENV} to use your own)"


def use_default_profile(environ=None, cwd: Path | None = None) -> str:
    """Point Fast DDS at our profile unless the user has their own; call before ``rclpy.init``.

    Returns the line to log (which profile is used).
    """
    environ = os.environ if environ is None else environ
    path, message = choose_profile(environ, cwd)
    if path is not None:
        environ[PROFILE_ENV] = str(path)
    return message
