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
