import os

import pytest

pytest_plugins = ["kbypass.testing.plugin"]


def pytest_addoption(parser):
    parser.addoption("--slow", action="store_true", help="also run long soak and fuzz tests")


def pytest_collection_modifyitems(config, items):
    if config.getoption("--slow") or os.environ.get("KBYPASS_SLOW") == "1":
        return
    skip = pytest.mark.skip(reason="long run: use --slow or KBYPASS_SLOW=1")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)
