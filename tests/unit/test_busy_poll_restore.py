"""`kbypass bench latency`'s kernel-best row sets net.core.busy_read and busy_poll (machine-wide) for its
run: tune.busy_polling puts them back afterwards, also when the run fails or is sent SIGTERM."""

import os
import signal
import subprocess
import sys
import time

import pytest

from kbypass.errors import KbypassError
from kbypass.host import tune

PATHS = {k: f"{tune.SYSCTL_DIR}/{k}" for k in tune.SYSCTL_KNOBS}
pytestmark = pytest.mark.skipif(os.geteuid() != 0 or not os.path.exists(PATHS["busy_read"]),
                                reason="needs root in the root network namespace (the sysctls live there)")


def read() -> dict:
    return {k: open(p).read().strip() for k, p in PATHS.items()}


def write(values: dict) -> None:
    for k, p in PATHS.items():
        with open(p, "w") as f:
            f.write(values[k])


@pytest.fixture
def marked():
    """Distinctive values before the block (so 'put back' cannot pass by chance), the originals after."""
    original = read()
    write({"busy_read": "3", "busy_poll": "4"})
    yield {"busy_read": "3", "busy_poll": "4"}
    write(original)


def test_set_inside_put_back_after(marked):
    with tune.busy_polling(50) as before:
        assert before == marked and read() == {"busy_read": "50", "busy_poll": "50"}
    assert read() == marked


def test_put_back_when_the_block_fails(marked):
    with pytest.raises(KbypassError, match="sockperf died"):
        with tune.busy_polling(50):
            raise KbypassError("sockperf died")
    assert read() == marked


def test_put_back_on_sigterm(marked):
    code = ("import sys, time\nfrom kbypass.host import tune\nwith tune.busy_polling(50):\n"
            "    print('in', flush=True)\n    time.sleep(60)\n")
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "in"
        assert read() == {"busy_read": "50", "busy_poll": "50"}
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 128 + signal.SIGTERM
    finally:
        proc.kill()
    time.sleep(0.1)
    assert read() == marked


def test_refused_inside_a_network_namespace():
    ns = f"pbusy{os.getpid()}"
    subprocess.run(["ip", "netns", "add", ns], check=True)
    try:
        code = "from kbypass.host import tune\nwith tune.busy_polling(50):\n    pass\n"
        proc = subprocess.run(["ip", "netns", "exec", ns, sys.executable, "-c", code], capture_output=True, text=True)
        assert proc.returncode != 0 and "root network namespace" in proc.stderr
    finally:
        subprocess.run(["ip", "netns", "del", ns])
