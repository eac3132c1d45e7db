"""`kbypass tune apply` settings: parsed and refused without touching an interface."""

from __future__ import annotations

import pytest

from kbypass.errors import UsageError
from kbypass.host.tune import KNOBS, parse_settings


def test_good_settings_parse():
    knob = next(k for k in KNOBS if not k.startswith("adaptive-"))
    assert parse_settings([f"{knob}=200"]) == {knob: "200"}


@pytest.mark.parametrize("value", ["-1", "1.5", "²", "٣", "", "ten"])
def test_a_value_that_is_not_a_plain_non_negative_integer_is_one_clear_error(value):
    knob = next(k for k in KNOBS if not k.startswith("adaptive-"))
    with pytest.raises(UsageError, match="non-negative integer"):
        parse_settings([f"{knob}={value}"])


def test_unknown_knob_names_the_known_ones():
    with pytest.raises(UsageError, match="KNOB=VALUE"):
        parse_settings(["warp-speed=9"])


@pytest.mark.parametrize("value", ["2", "7"])
def test_threaded_is_0_or_1_before_the_kernel_is_asked(value):
    """threaded=2 reached the sysfs write, and the shell's 'echo: I/O error' leaked into the error line."""
    with pytest.raises(UsageError, match="use 0 .* or 1"):
        parse_settings([f"threaded={value}"])
    assert parse_settings(["threaded=1"]) == {"threaded": "1"}
