"""Issue "The first hour", item 4: every command block of README.md runs as written, on this session's
testbed (kb-a/kb-b become its hosts, `kbypass` the venv's). Commands that run until stopped (sink,
reflect, capture, pingpong server, xfer recv) run in the background while the block's other lines run,
one at a time, and are stopped with SIGINT; they must have received traffic where the block sends some.
Long runs are shortened (gen --count, --duration, sockperf -t; a background receiver's to a minute at most,
since SIGINT stops it; stats and top sample every 0.2 s), nothing else is changed.

And no README line may send to a testbed address from the root namespace: copied literally, that
traffic leaves by the machine's default route."""

from __future__ import annotations

import json
import re
import shlex
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from kbypass import netns

pytestmark = pytest.mark.netns

README = Path(__file__).resolve().parents[2] / "README.md"
KBYPASS = str(Path(sys.executable).with_name("kbypass"))
SHELL_START = ("kbypass ", "ip netns exec ", "sockperf ", "make ")
SENDERS = r"(sockperf|ping|iperf3|curl|nc|netcat|socat|hping3|nping)"

# Blocks that cannot run here, keyed by a snippet of the block, with the reason. Kept small (asserted).
SKIP = {
    "make demo": "sets up the machine and runs the demo on the default testbed 'kb', not the test's own",
    "make test": "runs this test suite",
}
# Background receivers whose rules do not take the traffic their block sends (snippet -> why).
NO_TRAFFIC = {
    'reflect --host b --rule "udp dport 7"': "its rule takes port 7; the block's gen sends to port 4321",
}
BACKGROUND = re.compile(r"\bkbypass (sink|reflect|pingpong server|xfer recv|http serve)\b|\bkbypass capture\b(?!.*(-c|--count) )"
                        r"|\bkbypass run\b.*\bsockperf server\b")
SENDS = re.compile(r"\bkbypass (gen|pingpong client|xfer send)\b|^sockperf|sockperf ")  # a line that sends traffic
READY_WORDS = ("receiving on", "pingpong server on", "listening", "accelerated on", "http serve on")


def blocks() -> list[tuple[str, str]]:
    """(language, text) of every fenced block."""
    return re.findall(r"^```(\w*)\n(.*?)^```", README.read_text(), re.S | re.M)


def commands(text: str) -> list[str]:
    """The block's command lines, comments cut off."""
    out = []
    for line in text.splitlines():
        line = re.split(r"\s+#\s", line, maxsplit=1)[0].strip()
        if line:
            out.append(line)
    return out


def runnable() -> list[tuple[str, str]]:
    found = []
    for lang, text in blocks():
        if lang == "python" or (lang == "" and commands(text)
                                and all(c.startswith(SHELL_START) for c in commands(text))):
            found.append((lang, text))
    return found


def skip_reason(text: str) -> str | None:
    return next((why for snippet, why in SKIP.items() if snippet in text), None)


def block_id(block) -> str:
    lang, text = block
    return f"{lang or 'sh'}:{commands(text)[0][:50]}"


def test_skip_list_is_small_and_current() -> None:
    assert len(SKIP) <= 3, "the README should be runnable: more than a few skipped blocks"
    texts = [t for _, t in runnable()]
    for snippet in [*SKIP, *NO_TRAFFIC]:
        assert any(snippet in t for t in texts), f"stale entry {snippet!r}: no README block has it"
    assert len(runnable()) >= 8, "the README's blocks were not found: did the fence format change?"


def test_nothing_is_sent_to_the_testbed_from_the_root_namespace() -> None:
    """sockperf/ping/iperf3/... to 10.77.x.x without `ip netns exec` leaves by the default route."""
    text = README.read_text()
    spans = [ln for _, t in blocks() for ln in t.splitlines()] + re.findall(r"`([^`\n]+)`", text)
    wrong = [s.strip() for s in spans
             if re.match(rf"\s*(sudo\s+)?{SENDERS}\b", s) and "10.77." in s]
    assert not wrong, "README lines that send to the testbed from the root namespace (put " \
                      "'ip netns exec kb-a' in front):\n  " + "\n  ".join(wrong)


def rewrite(line: str, hosts, tmp: Path, background: bool = False) -> list[str]:
    a, b = hosts
    line = re.sub(r"\bkb-a\b", a.netns, line)
    line = re.sub(r"\bkb-b\b", b.netns, line)
    line = line.replace("/tmp/", f"{tmp}/")
    argv = shlex.split(line)
    argv = [KBYPASS if w == "kbypass" else w for w in argv]
    if re.match(rf"{SENDERS}$", argv[0]) and "10.77." in line:
        raise AssertionError(f"refusing to run {line!r} from the root namespace")
    if "gen" in argv:  # a short run: enough to count, not a benchmark
        argv = _shorten(argv, ("--count", "-c"), 20000)
    # A background receiver keeps its duration (up to a minute): it is stopped with SIGINT while it runs, as
    # its user stops it. Cut to 2 s it could end by itself just as the SIGINT comes, a race of the test's.
    argv = _shorten(argv, ("--duration", "-t"), 60 if background else 1)
    # stats and top sample every fifth of a second instead of every second: the same lines, sooner
    sampler = next((i for i, w in enumerate(argv[:-1]) if w == KBYPASS and argv[i + 1] in ("stats", "top")), None)
    if sampler is not None:
        argv = (_shorten(argv, ("--interval",), 0.2) if "--interval" in argv
                else [*argv[:sampler + 2], "--interval", "0.2", *argv[sampler + 2:]])
    return argv


def _shorten(argv: list[str], names, most) -> list[str]:
    out = list(argv)
    for i, w in enumerate(out[:-1]):
        if w in names:
            try:
                out[i + 1] = str(min(float(out[i + 1]), most)).removesuffix(".0")
            except ValueError:
                pass
    return out


class Bg:
    def __init__(self, argv, tmp: Path, n: int) -> None:
        self.out_p, self.err_p = tmp / f"bg{n}.out", tmp / f"bg{n}.err"
        self.out_f, self.err_f = open(self.out_p, "w"), open(self.err_p, "w")  # noqa: SIM115
        self.argv = argv
        self.proc = subprocess.Popen(argv, stdout=self.out_f, stderr=self.err_f, stdin=subprocess.DEVNULL)

    def text(self) -> str:
        return self.out_p.read_text() + self.err_p.read_text()

    def wait_ready(self, timeout=20.0) -> None:
        deadline = time.monotonic() + timeout
        while not any(w in self.text() for w in READY_WORDS):
            assert self.proc.poll() is None, f"{self.argv} exited ({self.proc.returncode}):\n{self.text()}"
            assert time.monotonic() < deadline, f"{self.argv} not ready in {timeout} s:\n{self.text()}"
            time.sleep(0.05)

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
        try:
            return self.proc.wait(20)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()
            self.out_f.close()
            self.err_f.close()


def received_something(text: str) -> bool:
    dec, i, last = json.JSONDecoder(), 0, None
    while (i := text.find("{", i)) >= 0:
        try:
            last, i = dec.raw_decode(text, i)
        except json.JSONDecodeError:
            i += 1
    if isinstance(last, dict) and any(k in last for k in ("packets", "received", "bytes")):
        return any(isinstance(last.get(k), int) and last[k] > 0 for k in ("packets", "received", "bytes"))
    return bool(re.search(r"(packets|received|bytes)\W+[1-9]|Total [1-9]\d* messages received", text))  # sockperf


def run_fg(argv) -> None:
    out = None
    if ">" in argv:  # `cmd > FILE`, the one redirection the README uses: the file must get the output
        at = argv.index(">")
        argv, out = argv[:at], Path(argv[at + 1])
    if "|" in argv:  # `a | b`: a's stdout into b, both must succeed (capture -w - | tcpdump -r -)
        at = argv.index("|")
        left = subprocess.Popen(argv[:at], stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)
        r = subprocess.run(argv[at + 1:], stdin=left.stdout, capture_output=True, text=True, timeout=120)
        left.stdout.close()
        err = left.stderr.read().decode(errors="replace")
        assert left.wait(120) == 0, f"{shlex.join(argv[:at])} exited {left.returncode}:\n{err[-2000:]}"
        argv = argv[at + 1:]
    else:
        r = subprocess.run(argv, capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)
    assert r.returncode == 0, f"{shlex.join(argv)} exited {r.returncode}:\n{r.stdout[-2000:]}\n{r.stderr[-2000:]}"
    if out is not None:
        out.write_text(r.stdout)
        assert r.stdout.strip(), f"{shlex.join(argv)} wrote nothing for {out}"


def run_shell_block(text: str, hosts, tmp: Path) -> None:
    lines = [c for c in commands(text) if not c.endswith("...")]  # `kbypass ...`: a placeholder
    # the fixture's testbed; a block that sets the MTU (`up --mtu N`: changed in place) gets it first, and
    # the fixture's MTU back at the end
    mtu = next((int(m[1]) for c in lines if (m := re.match(r"kbypass testbed up --mtu (\d+)$", c))), None)
    lines = [c for c in lines if not re.match(r"kbypass testbed (up|down)\b", c)]
    if mtu is not None:
        run_fg([KBYPASS, "testbed", "up", "--mtu", str(mtu)])
        try:
            run_lines(lines, hosts, tmp)
        finally:
            run_fg([KBYPASS, "testbed", "up", "--mtu", str(hosts[0].mtu)])
        return
    run_lines(lines, hosts, tmp)


def run_lines(lines: list[str], hosts, tmp: Path) -> None:
    bg = [c for c in lines if BACKGROUND.search(c)]
    fg = [c for c in lines if c not in bg]
    senders = [c for c in fg if SENDS.search(c)]
    for n, line in enumerate(bg or [None]):
        receiver = Bg(rewrite(line, hosts, tmp, background=True), tmp, n) if line else None
        try:
            if receiver:
                receiver.wait_ready()
            # every line runs with the first receiver; the next ones need only traffic for them (stats, top
            # or cp status again would show nothing new; every sender already ran once), and one whose rule
            # takes none of it needs none
            quiet = any(s in line for s in NO_TRAFFIC) if line else False
            for c in fg if n == 0 else [] if quiet else senders_for(line, senders):
                run_fg(rewrite(c, hosts, tmp))
        finally:
            rc = receiver.stop() if receiver else 0
        if receiver:
            assert rc == 0, f"{line}: exit {rc} after SIGINT:\n{receiver.text()[-3000:]}"
            if senders and not any(s in line for s in NO_TRAFFIC):
                assert received_something(receiver.text()), f"{line} received nothing:\n{receiver.text()[-3000:]}"


def senders_for(receiver: str, senders: list[str]) -> list[str]:
    """The senders a block's later receiver gets: those that name its rule's port, or else the first."""
    port = re.search(r"\bdport (\d+)", receiver)
    named = [c for c in senders if port and re.search(rf":{port[1]}\b", c)]
    return named or senders[:1]


def run_python_block(text: str, hosts, tmp: Path) -> None:
    a, b = hosts
    code = re.sub(r"\bkb-b\b", b.netns, re.sub(r"\bkb-a\b", a.netns, text))
    stop = threading.Event()

    def feed(port: int) -> None:  # a kernel peer in host a for a block that waits for a datagram
        import socket

        with netns.entered(a.netns):
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        with s:
            while not stop.wait(0.1):
                s.sendto(b"hello", (b.ipv4, port))

    feeders = [threading.Thread(target=feed, args=(int(p),), daemon=True)
               for p in set(re.findall(r"UdpEndpoint\([^,]+,[^,]+,\s*(\d+)\s*,", code))]
    for t in feeders:
        t.start()
    try:
        r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    finally:
        stop.set()
    assert r.returncode == 0, f"python block failed:\n{code}\n{r.stderr[-3000:]}"


@pytest.mark.parametrize("block", runnable(), ids=block_id)
def test_readme_block_runs(testbed_hosts, tmp_path, block) -> None:
    lang, text = block
    why = skip_reason(text)
    if why:
        pytest.skip(why)
    if lang == "python":
        run_python_block(text, testbed_hosts, tmp_path)
    else:
        run_shell_block(text, testbed_hosts, tmp_path)
