"""``sdcpc-param``: get, set and list a running node's parameters, reset its frame buffer, and
drive a managed node's lifecycle.

A pip install (PyPI ROS 2 wheels) has rclpy but no ``ros2`` command line, unless set up with the
ROS 2 tools' wheels (``scripts/setup.sh --ros2-pip DIR``; use ``ros2`` there). This is the small part
of ``ros2 param`` / ``ros2 lifecycle`` / ``ros2 service call`` that operating the sdcpc node needs::

    sdcpc-param list /sdcpc
    sdcpc-param get /sdcpc max_time_gap
    sdcpc-param set /sdcpc max_time_gap 1.0          # values are YAML, as with ros2 param
    sdcpc-param set /sdcpc dynamic_classes "[person, car]"
    sdcpc-param reset /sdcpc                         # calls /sdcpc/reset (std_srvs/Trigger)
    sdcpc-param state /sdcpc                         # a managed node's state (ros2 lifecycle get)
    sdcpc-param lifecycle /sdcpc configure           # a transition by label (ros2 lifecycle set):
                                                     # configure, activate, deactivate, cleanup, shutdown

It talks to the node through the standard parameter and lifecycle services, so it works with any
ROS 2 node, in the domain given by ``ROS_DOMAIN_ID``. Exit status: 0 on success,
1 when the node is not found in time, does not answer, or refuses the change (its reason is
printed), 2 on a usage error.
"""

import argparse
import math
import sys

import rclpy
import yaml
from lifecycle_msgs.srv import ChangeState, GetAvailableTransitions, GetState
from rcl_interfaces.msg import Parameter as ParameterMsg
from rcl_interfaces.msg import ParameterType, ParameterValue
from rclpy.executors import SingleThreadedExecutor
from rclpy.parameter import get_parameter_value, parameter_value_to_python
from rclpy.parameter_client import AsyncParameterClient
from std_srvs.srv import Trigger

# A value typed from YAML may be narrower than the declared type: 1 for a double, [] for a string
# list. ros2 param refuses those; converting them is what the user meant.
_PROMOTIONS = {
    (ParameterType.PARAMETER_INTEGER, ParameterType.PARAMETER_DOUBLE),
    (ParameterType.PARAMETER_INTEGER_ARRAY, ParameterType.PARAMETER_DOUBLE_ARRAY),
}
_ARRAY_TYPES = {
    ParameterType.PARAMETER_BOOL_ARRAY: "bool_array_value",
    ParameterType.PARAMETER_INTEGER_ARRAY: "integer_array_value",
    ParameterType.PARAMETER_DOUBLE_ARRAY: "double_array_value",
    ParameterType.PARAMETER_STRING_ARRAY: "string_array_value",
    ParameterType.PARAMETER_BYTE_ARRAY: "byte_array_value",
}


class ToolError(Exception):
    """A failure to report on stderr with exit status 1."""


def absolute_node_name(name: str) -> str:
    name = name.strip()
    if not name or name == "/":
        raise ToolError("empty node name; give it as ros2 does, e.g. /sdcpc")
    return name if name.startswith("/") else "/" + name


def format_value(value) -> str:
    """A parameter value as one line of YAML, so that it can be passed back to ``set``."""
    if value is None:
        return "(not set)"
    text = yaml.safe_dump(value, default_flow_style=True, width=math.inf).strip()
    return text.removesuffix("\n...").strip()


def coerce(value: ParameterValue, declared: int) -> ParameterValue:
    """Convert a YAML-typed value to the node's declared type where that loses nothing."""
    if value.type == declared or declared == ParameterType.PARAMETER_NOT_SET:
        return value
    if (value.type, declared) in _PROMOTIONS:
        python = parameter_value_to_python(value)
        promoted = ParameterValue(type=declared)
        if declared == ParameterType.PARAMETER_DOUBLE:
            promoted.double_value = float(python)
        else:
            promoted.double_array_value = [float(v) for v in python]
        return promoted
    if value.type in _ARRAY_TYPES and declared in _ARRAY_TYPES and not parameter_value_to_python(value):
        return ParameterValue(type=declared)  # "[]": an empty list of the declared element type
    return value


class ParamTool:
    """A short-lived client node talking to one remote node."""

    def __init__(self, node_name: str, timeout: float):
        self.target = absolute_node_name(node_name)
        self.timeout = timeout
        self.context = rclpy.Context()
        rclpy.init(context=self.context)
        self.node = rclpy.create_node("sdcpc_param", context=self.context,
                                      start_parameter_services=False)
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)
        self._clients = {}  # service name -> client, see _service

    def close(self) -> None:
        self.executor.shutdown()
        self.node.destroy_node()
        rclpy.shutdown(context=self.context)

    def _call(self, future, what: str):
        self.executor.spin_until_future_complete(future, timeout_sec=self.timeout)
        if not future.done():
            future.cancel()
            raise ToolError(f"{self.target} did not answer {what} within {self.timeout:g} s")
        return future.result()

    def _parameters(self) -> AsyncParameterClient:
        client = AsyncParameterClient(self.node, self.target)
        if not client.wait_for_services(timeout_sec=self.timeout):
            raise ToolError(self._not_found())
        return client

    def _not_found(self) -> str:
        return (f"node {self.target} not found within {self.timeout:g} s (is it running, in the same "
                "ROS_DOMAIN_ID and discovery range as this shell?)")

    def list(self) -> list[str]:
        response = self._call(self._parameters().list_parameters(), "list_parameters")
        return sorted(response.result.names)

    def get(self, name: str):
        response = self._call(self._parameters().get_parameters([name]), "get_parameters")
        value = response.values[0] if response.values else ParameterValue()
        if value.type == ParameterType.PARAMETER_NOT_SET:
            raise ToolError(f"{self.target} has no parameter {name!r} (see: sdcpc-param list "
                            f"{self.target})")
        return parameter_value_to_python(value)

    def set(self, name: str, text: str):
        """Set ``name`` from its YAML text; returns the value the node now holds."""
        client = self._parameters()
        types = self._call(client.get_parameter_types([name]), "get_parameter_types").types
        value = coerce(get_parameter_value(text), types[0] if types else ParameterType.PARAMETER_NOT_SET)
        response = self._call(client.set_parameters([ParameterMsg(name=name, value=value)]),
                              "set_parameters")
        result = response.results[0]
        if not result.successful:
            raise ToolError(f"{self.target} refused {name} = {text}: {result.reason or 'no reason given'}")
        return parameter_value_to_python(value)

    def reset(self) -> str:
        response = self._call(self._service(Trigger, "reset").call_async(Trigger.Request()), "reset")
        if not response.success:
            raise ToolError(f"{self.target} refused the reset: {response.message or 'no reason given'}")
        return response.message


    def _service(self, srv_type, name: str, what: str = "the node"):
        """A ready client of the target's service ``name`` (one per service, made once)."""
        if name not in self._clients:
            client = self.node.create_client(srv_type, f"{self.target}/{name}")
            if not client.wait_for_service(timeout_sec=self.timeout):
                raise ToolError(f"service {self.target}/{name} not found within {self.timeout:g} s "
                                f"(is {what} running, in the same ROS_DOMAIN_ID as this shell?)")
            self._clients[name] = client
        return self._clients[name]

    def _lifecycle(self, srv_type, name: str):
        return self._service(srv_type, name, f"{self.target} a managed node (sdcpc_lifecycle_node, "
                                             "not sdcpc_node),")

    def state(self) -> str:
        """The managed node's current state label: unconfigured, inactive, active, finalized."""
        response = self._call(self._lifecycle(GetState, "get_state").call_async(GetState.Request()),
                              "get_state")
        return response.current_state.label

    def transition(self, label: str) -> str:
        """Trigger the transition ``label`` available from the current state; returns the new
        state. A transition the node refuses or fails is a ToolError naming the state it is in."""
        available = self._call(
            self._lifecycle(GetAvailableTransitions, "get_available_transitions")
            .call_async(GetAvailableTransitions.Request()), "get_available_transitions")
        choices = {t.transition.label: t.transition for t in available.available_transitions}
        if label not in choices:
            raise ToolError(f"{self.target} is {self.state()}: transition {label!r} is not available "
                            f"from there (available: {', '.join(sorted(choices)) or 'none'})")
        request = ChangeState.Request(transition=choices[label])
        response = self._call(self._lifecycle(ChangeState, "change_state").call_async(request),
                              f"change_state {label}")
        state = self.state()
        if not response.success:
            raise ToolError(f"{self.target} failed {label} and is {state} (the node's log says why)")
        return state


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sdcpc-param", description="Get, set and list a running ROS 2 node's parameters "
        "(ros2 param for the pip route), reset the sdcpc node's frame buffer, and drive a managed "
        "node's lifecycle (ros2 lifecycle get/set).")
    parser.add_argument("--timeout", type=float, default=5.0,
                        help="seconds to wait for the node and for each answer (default 5)")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("list", help="names of the node's parameters").add_argument("node")
    get = commands.add_parser("get", help="print one parameter's value (YAML)")
    get.add_argument("node")
    get.add_argument("name")
    set_ = commands.add_parser("set", help="set one parameter; VALUE is YAML: 1.0, true, '[person, car]'")
    set_.add_argument("node")
    set_.add_argument("name")
    set_.add_argument("value")
    commands.add_parser("reset", help="clear the node's frame buffer (its ~/reset service)") \
        .add_argument("node")
    commands.add_parser("state", help="a managed node's lifecycle state").add_argument("node")
    lifecycle = commands.add_parser("lifecycle", help="trigger a managed node's transition")
    lifecycle.add_argument("node")
    lifecycle.add_argument("transition", help="configure, activate, deactivate, cleanup or shutdown")
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if not args.timeout > 0:
        print("sdcpc-param: --timeout must be a positive number of seconds", file=sys.stderr)
        return 2
    tool = None
    try:
        tool = ParamTool(args.node, args.timeout)
        if args.command == "list":
            print("\n".join(tool.list()))
        elif args.command == "get":
            print(format_value(tool.get(args.name)))
        elif args.command == "set":
            value = tool.set(args.name, args.value)
            print(f"set {args.name} = {format_value(value)}")
        elif args.command == "state":
            print(tool.state())
        elif args.command == "lifecycle":
            print(f"{args.transition}: {tool.target} is {tool.transition(args.transition)}")
        else:
            message = tool.reset()
            print(f"reset {tool.target}" + (f": {message}" if message else ""))
    except ToolError as exc:
        print(f"sdcpc-param: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    finally:
        if tool is not None:
            tool.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
