"""The option vocabulary every command shares, and argparse types that refuse bad numbers and paths.

One name per concept across the tools (the README's "Options" table lists them and a test holds every
subcommand to it): `-i/--iface`, `--netns`, `--host`, `--prefix`, `--ip`, `-p/--port`, `--dst`,
`--dst-mac`, `-t/--duration`, `-c/--count`, `--idle-timeout`, `--reply-timeout`, `-w/--write`, `--out`,
`--backend`, `--json`, `--cpu`. The short options are the ones tcpdump, iperf3 and sockperf users already
type. The types below turn NaN, infinities, negative, zero and absurd values into argparse errors, which
the CLI prints as one line `kbypass: error: ...` with exit 2, before anything is opened or attached.
"""

from __future__ import annotations

import argparse
import math
import os

from kbypass.host import testbed

# Longer than any run anyone means (a year): catches 1e300 before it overflows a deadline computation.
MAX_SECONDS = 365 * 24 * 3600.0


def _number(text: str, kind, what: str):
    text = text.strip()
    if not text.isascii():
        raise argparse.ArgumentTypeError(f"{text!r} is not {what}: use ASCII digits")
    try:
        return kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not {what}") from None


def seconds(text: str) -> float:
    """A positive, finite number of seconds (at most a year)."""
    v = _number(text, float, "a number of seconds")
    if not math.isfinite(v) or v <= 0 or v > MAX_SECONDS:
        raise argparse.ArgumentTypeError(f"{text!r}: give a positive number of seconds up to {MAX_SECONDS:.0f}")
    return v


def int_range(lo: int, hi: int, what: str = "a whole number"):
    """An argparse type for a whole number in [lo, hi]."""

    def parse(text: str) -> int:
        v = _number(text, int, what)
        if not lo <= v <= hi:
            raise argparse.ArgumentTypeError(f"{text!r}: give {what} from {lo} to {hi}")
        return v

    parse.__name__ = what  # argparse names the type in its "invalid ... value" message
    return parse


def positive_int(limit: int = 2**62, what: str = "a positive whole number"):
    return int_range(1, limit, what)


def fraction(text: str) -> float:
    """A probability: 0 <= p <= 1."""
    v = _number(text, float, "a fraction")
    if not (math.isfinite(v) and 0.0 <= v <= 1.0):
        raise argparse.ArgumentTypeError(f"{text!r}: give a fraction from 0 to 1 (0.01 is 1%)")
    return v


def output_file(allow_stdout: bool = False):
    """A path to write: its directory must exist and it must not be a directory. '-' is standard output
    where the command can write there, and refused (rather than creating a file named '-') elsewhere."""

    def parse(text: str) -> str:
        if text == "-":
            if allow_stdout:
                return text
            raise argparse.ArgumentTypeError("'-' (standard output) is not supported here: give a file path")
        if not text:
            raise argparse.ArgumentTypeError("give a file path")
        if os.path.isdir(text):
            raise argparse.ArgumentTypeError(f"{text} is a directory: give a file path inside it")
        parent = os.path.dirname(os.path.abspath(text))
        if not os.path.isdir(parent):
            raise argparse.ArgumentTypeError(f"{text}: directory {parent} does not exist; create it first")
        if not os.access(parent, os.W_OK):
            raise argparse.ArgumentTypeError(f"{text}: directory {parent} is not writable")
        return text

    return parse


def output_dir(text: str) -> str:
    """A directory for result files: it may not exist yet (it is made), but must not be a file."""
    if not text or text == "-":
        raise argparse.ArgumentTypeError("give a directory path")
    if os.path.exists(text) and not os.path.isdir(text):
        raise argparse.ArgumentTypeError(f"{text} is a file, not a directory: give a directory")
    return text


def input_file(text: str) -> str:
    if os.path.isdir(text):
        raise argparse.ArgumentTypeError(f"{text} is a directory: give a file")
    if not os.access(text, os.R_OK):
        raise argparse.ArgumentTypeError(f"{text}: no such readable file")
    return text


# --- the shared options, each added the same way everywhere -------------------------------------------------

def testbed_prefix(text: str) -> str:
    """A testbed name prefix as `kbypass testbed up` makes them: an empty one is refused, never read as the
    default (`--prefix "$UNSET"` must not reach the default testbed)."""
    from kbypass.errors import UsageError
    from kbypass.host import testbed

    try:
        testbed.TestbedConfig(prefix=text).validate()
    except UsageError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return text


testbed_prefix.__name__ = "a testbed prefix"


def add_prefix(p) -> None:
    p.add_argument("--prefix", type=testbed_prefix, default=None,
                   help="testbed name prefix (default: $KBYPASS_TESTBED or 'kb')")


def add_where(p, *, iface_help: str = "interface to work on (or --host for a testbed host's veth)",
              host_help: str = "a testbed host: sets --iface and --netns from 'kbypass testbed status'",
              netns_help: str = "network namespace of --iface (default: where kbypass runs)") -> None:
    """-i/--iface, --netns, --host and --prefix: where a command works."""
    p.add_argument("-i", "--iface", help=iface_help)
    p.add_argument("--netns", help=netns_help)
    p.add_argument("--host", choices=testbed.HOSTS, help=host_help)
    add_prefix(p)


def add_duration(p, help: str = "stop after this many seconds") -> None:
    p.add_argument("-t", "--duration", type=seconds, help=help)


def add_count(p, help: str = "stop after this many packets", limit: int = 2**62) -> None:
    p.add_argument("-c", "--count", type=positive_int(limit), help=help)


def add_idle_timeout(p, help: str = "stop after this many seconds without a packet", default=None) -> None:
    p.add_argument("--idle-timeout", type=seconds, default=default, metavar="S", help=help)


def add_cpu(p) -> None:
    p.add_argument("--cpu", type=int_range(0, 4095, "a CPU number"), help="pin to this CPU")


def add_json(p, help: str = "print the summary as JSON") -> None:
    p.add_argument("--json", action="store_true", help=help)


def add_port(p, help: str, default: int | None, what: str = "a UDP port") -> None:
    p.add_argument("-p", "--port", type=int_range(0 if default == 0 else 1, 65535, what),
                   default=default, help=help)


def add_dst(p, help: str, required: bool = False, metavar: str = "IP:PORT") -> None:
    p.add_argument("--dst", metavar=metavar, required=required, help=help)


def apply_prefix(args) -> None:
    """--prefix selects the testbed for everything this command looks up (testbed.host() and friends, and
    the processes it starts); cli.main restores the environment afterwards."""
    prefix = getattr(args, "prefix", None)
    if prefix:
        os.environ["KBYPASS_TESTBED"] = prefix


def mac_address(text: str) -> str:
    """An Ethernet MAC address, six bytes in hex separated by ':' (or '-'): 02:00:00:00:00:02."""
    parts = text.strip().replace("-", ":").split(":")
    if len(parts) != 6 or not all(len(p) in (1, 2) and p.isascii() and all(c in "0123456789abcdefABCDEF" for c in p)
                                  for p in parts):
        raise argparse.ArgumentTypeError(f"{text!r} is not a MAC address: give six hex bytes like 02:00:00:00:00:02")
    return ":".join(f"{int(p, 16):02x}" for p in parts)


mac_address.__name__ = "a MAC address"


def power_of_two(hi: int, what: str = "a power of two"):
    """An argparse type for a power of two from 1 to `hi`."""
    within = int_range(1, hi, what)

    def parse(text: str) -> int:
        v = within(text)
        if v & (v - 1):
            raise argparse.ArgumentTypeError(f"{text!r}: give {what} (1, 2, 4, ... {hi})")
        return v

    parse.__name__ = what
    return parse


def seconds_up_to(hi: float, what: str = "seconds"):
    """Like `seconds`, with a tighter upper bound `hi` where a year makes no sense (a sampling interval)."""

    def parse(text: str) -> float:
        v = _number(text, float, "a number of seconds")
        if not math.isfinite(v) or v <= 0 or v > hi:
            raise argparse.ArgumentTypeError(f"{text!r}: give a positive number of {what} up to {hi:g}")
        return v

    parse.__name__ = what
    return parse


def add_no_cp(p, *, share: bool = False) -> None:
    """--no-cp (and --share, --share-queue): who owns the interface's steering program (kbypass.cp)."""
    p.add_argument("--no-cp", action="store_true",
                   help="afxdp: steer in-process instead of through the namespace's control plane (kbypass cp, "
                        "started on demand); this command then owns the interface's XDP program alone")
    if share:
        p.add_argument("--share", action="store_true",
                       help="afxdp: let rules of other kbypass programs overlap ours when they share too (the first "
                            "in priority order takes the packets)")
        p.add_argument("--share-queue", action="store_true",
                       help="afxdp: receive on a queue other kbypass programs of this user receive on too (each its "
                            "own rules' packets; one UMEM shared through the control plane): all of them must ask")
