"""Stream settings: one definition of each setting's allowed values, checked once, used everywhere."""

import subprocess
import sys

import pytest

from sdcpc_core.settings import (
    SETTINGS,
    SettingError,
    StreamSettings,
    add_arguments,
    settings_from_arguments,
)


@pytest.mark.parametrize("name, value, words", [
    ("precision", "fp64", "allowed: auto, fp32, fp16, bf16"),
    ("device", "gpu0", "allowed: auto, cpu, cuda, cuda:N"),
    ("input_size", (8, 8), "each in [32, 8192]"),
    ("input_size", (64, 64, 3), "[height, width]"),
    ("reference_offsets", (3,), "negative offsets in [-1000, -1]"),
    ("reference_offsets", (), "non-empty"),
    ("reference_offsets", (-1001,), "[-1000, -1]"),
    ("max_time_gap", 0.0, "allowed range: [0.001, 3600]"),
    ("max_time_gap", "fast", "expected a value of type double"),
    ("channels_last", 1, "expected a value of type bool"),
    ("mean", (1.0, 2.0), "three positive numbers"),
])
def test_bad_values_are_refused_naming_the_setting_and_what_is_allowed(name, value, words):
    with pytest.raises(SettingError) as caught:
        StreamSettings(**{name: value})
    message = str(caught.value)
    assert message.startswith(f"setting '{name}' = ") and words in message, message


def test_values_are_normalised_and_frozen():
    s = StreamSettings(input_size=[64, 96], reference_offsets=[-3, -1], max_time_gap=1,
                       dynamic_classes=["person"])
    assert s.input_size == (64, 96) and s.reference_offsets == (-3, -1)
    assert s.max_time_gap == 1.0 and isinstance(s.max_time_gap, float)
    assert s.dynamic_classes == ("person",)
    with pytest.raises(AttributeError):
        s.precision = "bf16"
    assert s.replace(precision="bf16").precision == "bf16" and s.precision == "auto"
    assert s.changed(s.replace(max_time_gap=2.0)) == {"max_time_gap": 2.0}
    with pytest.raises(TypeError, match="unknown stream settings"):
        s.replace(backnd="torch")


def test_every_field_has_one_description_and_unset_defaults_where_the_checkpoint_decides():
    fields = set(StreamSettings.__dataclass_fields__)
    assert fields == set(SETTINGS)
    for name in ("input_size", "reference_offsets", "dynamic_classes", "mean", "std"):
        assert SETTINGS[name].default is None
    assert {n for n, s in SETTINGS.items() if s.runtime} == {"max_time_gap", "dynamic_classes"}


def test_command_line_options_are_built_and_checked_from_the_settings():
    import argparse

    parser = argparse.ArgumentParser()
    add_arguments(parser, ("precision", "input_size", "max_time_gap", "channels_last"),
                  defaults={"max_time_gap": 0.5})
    args = parser.parse_args(["--precision", "bf16", "--input-size", "64", "96", "--channels-last"])
    s = settings_from_arguments(args)
    assert (s.precision, s.input_size, s.max_time_gap, s.channels_last) == ("bf16", (64, 96), 0.5, True)
    with pytest.raises(SettingError, match="setting 'precision' = 'fp64' is refused"):
        settings_from_arguments(parser.parse_args(["--precision", "fp64"]))


def test_importing_the_engine_loads_no_dataset_reader():
    code = ("import sys, sdcpc_core.engine, sdcpc_core.checkpoints; "
            "print(sorted(m for m in sys.modules if m.startswith('sdcpc_core.data')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout
