"""`kbypass tune`: show, apply with before/after, unsupported values refused, input checked."""

import json

import pytest

from kbypass.errors import UsageError
from kbypass.host import tune
from tests.kb import kbypass, kbypass_for, one_real

pytestmark = pytest.mark.netns


def test_parse_settings_checks_names_and_values():
    assert tune.parse_settings(["napi_defer_hard_irqs=2", "adaptive-rx=on"]) == {
        "napi_defer_hard_irqs": "2", "adaptive-rx": "on"}
    for bad in (["foo=1"], ["busy_poll"], ["gro_flush_timeout=-5"], ["adaptive-tx=maybe"]):
        with pytest.raises(UsageError):
            tune.parse_settings(bad)


def test_show_and_apply_on_the_testbed(testbed_hosts):
    a, b = testbed_hosts
    shown = json.loads(kbypass("tune", "show", "--host", "b", "--json", check=True).stdout)["values"]
    assert set(shown) == set(tune.KNOBS)
    assert shown["napi_defer_hard_irqs"].isdigit() and shown["rx-usecs"] == "unsupported"  # veth: no coalescing
    old = {k: shown[k] for k in ("napi_defer_hard_irqs", "gro_flush_timeout", "threaded")}
    try:
        out = json.loads(kbypass("tune", "apply", "--host", "b", "napi_defer_hard_irqs=2",
                                 "gro_flush_timeout=200000", "threaded=1", "--json", check=True).stdout)
        assert out["before"]["napi_defer_hard_irqs"] == old["napi_defer_hard_irqs"]
        assert out["after"]["napi_defer_hard_irqs"] == "2" and out["after"]["gro_flush_timeout"] == "200000"
        assert out["after"]["threaded"] != "0"
    finally:
        tune.restore(b.iface, b.netns, old)
    assert tune.show(b.iface, b.netns)["napi_defer_hard_irqs"] == old["napi_defer_hard_irqs"]
    assert tune.show(b.iface, b.netns)["threaded"] == old["threaded"]


@pytest.mark.parametrize("real, args, words", one_real([
    (["apply", "--host", "b", "rx-usecs=10"], "not supported"),
    (["apply", "--host", "b", "foo=1"], "KNOB=VALUE"),
    (["show", "--iface", "nosuch0"], "no interface"),
]))
def test_refusals_one_line(testbed_hosts, real, args, words):
    proc = kbypass_for(real)("tune", *args)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and words in lines[0], proc.stderr
