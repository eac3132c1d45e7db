import pytest

from kbypass.errors import UsageError
from kbypass.host.testbed import TestbedConfig


def test_defaults_are_valid_and_names_derive_from_prefix():
    c = TestbedConfig(prefix="kq")
    c.validate()
    assert c.netns_name("a") == "kq-a" and c.iface_name("b") == "kq-b"
    assert c.ipv4("a") == "10.77.0.1" and c.ipv4("b") == "10.77.0.2" and c.prefixlen() == 24
    assert c.mac("a") != c.mac("b")
    assert int(c.mac("a").split(":")[0], 16) & 0b11 == 0b10  # locally administered, unicast


@pytest.mark.parametrize(
    "kwargs, words",
    [
        ({"queues": 0}, "--queues 0"),
        ({"queues": 65}, "--queues 65"),
        ({"mtu": 67}, "--mtu 67"),
        ({"mtu": 70000}, "--mtu 70000"),
        ({"subnet": "10.0.0.1/24"}, "--subnet"),
        ({"subnet": "10.0.0.0/31"}, "/30 or larger"),
        ({"prefix": "bad name"}, "prefix"),
        ({"prefix": "x" * 7}, "at most 6"),
        ({"prefix": "kb/../x"}, "prefix"),
    ],
)
def test_bad_config_names_the_fix(kwargs, words):
    with pytest.raises(UsageError) as e:
        TestbedConfig(**kwargs).validate()
    assert words in str(e.value)
    assert "\n" not in str(e.value)


def test_prefix_cap_keeps_napi_names_apart():
    """Six characters is the most for which "napi/<prefix>-a-" and one digit of the NAPI id survive a
    kernel's 15-character cut of thread names (what kbypass.host.napi needs to tell host a's from host b's)."""
    from kbypass.host import napi, testbed

    longest = TestbedConfig(prefix="x" * testbed.MAX_PREFIX)
    longest.validate()
    head = f"napi/{longest.iface_name('a')}-"
    assert len(head) < napi.COMM_LEN  # at least one digit of the id follows
    cut_a = (head + "8193")[: napi.COMM_LEN]
    assert napi.is_thread_of(cut_a, longest.iface_name("a"))
    assert not napi.is_thread_of(cut_a, longest.iface_name("b"))
