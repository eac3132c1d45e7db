"""kbypass.testing.plugin's testbed names: short enough for the testbed's prefix cap, and owned by a pid."""

from __future__ import annotations

from kbypass.host import testbed
from kbypass.testing import plugin


def test_session_prefix_fits_the_cap_for_any_pid():
    for pid in (1, 35, 36, 99_999, 4_194_304):  # pid_max can be 2**22
        prefix = "t" + plugin.pid_tag(pid)
        assert len(prefix) <= 6
        testbed.TestbedConfig(prefix=prefix)  # accepted (the cap and the name rules)
        assert plugin.owner_pid(prefix) == pid


def test_owner_pid_knows_only_test_testbeds():
    assert plugin.owner_pid("kb") is None
    assert plugin.owner_pid("z" + plugin.pid_tag(4242)) is None  # not a letter asked for
    assert plugin.owner_pid("z" + plugin.pid_tag(4242), "tz") == 4242
    assert plugin.owner_pid("kt31337") == 31337  # an older kbypass's testbed, swept all the same
