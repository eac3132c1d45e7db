"""Latency knobs of one interface and the host: read them, change them, refuse what the device cannot do.

Knobs (name -> where it lives):
  napi_defer_hard_irqs   /sys/class/net/IF/napi_defer_hard_irqs  (NAPI polls to run before re-arming IRQs)
  gro_flush_timeout      /sys/class/net/IF/gro_flush_timeout     (ns; with the above, the IRQ-suspension
                                                                  window SO_PREFER_BUSY_POLL relies on)
  threaded               /sys/class/net/IF/threaded              (1: NAPI runs as kernel threads
                                                                  "napi/IF-ID" you can pin; see kbypass.host.napi)
  busy_poll, busy_read   /proc/sys/net/core/{busy_poll,busy_read} (us of busy polling in poll()/read();
                                                                  system-wide)
  rx-usecs, rx-frames, tx-usecs, tx-frames, adaptive-rx, adaptive-tx
                         interrupt coalescing through `ethtool -c/-C` (what the driver supports; veth has
                         none, so they are refused with the driver's answer)
Per-interface files are read inside the interface's namespace (`ip netns exec` remounts /sys there).
SO_BUSY_POLL on a socket is the per-socket form of busy_read; kbypass sets it itself with --poll busy.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
from contextlib import contextmanager

from kbypass.errors import KbypassError, UsageError

SYSFS_KNOBS = ("napi_defer_hard_irqs", "gro_flush_timeout", "threaded")
SYSCTL_KNOBS = ("busy_poll", "busy_read")
COALESCE_KNOBS = ("rx-usecs", "rx-frames", "tx-usecs", "tx-frames", "adaptive-rx", "adaptive-tx")
KNOBS = SYSFS_KNOBS + SYSCTL_KNOBS + COALESCE_KNOBS
# Where a change lands. "interface": this interface only, gone with it (a testbed's veth goes at `testbed
# down`). "machine": net.core.busy_poll and busy_read are global sysctls (not per namespace): a change
# reaches every socket on the machine and outlives the testbed, until set back or reboot.
SCOPE = {**{k: "interface" for k in SYSFS_KNOBS + COALESCE_KNOBS}, **{k: "machine" for k in SYSCTL_KNOBS}}


def restore_command(before: dict[str, str], knobs) -> str:
    """The command that puts machine-wide `knobs` back to their `before` values: sysctl itself, which
    works after the testbed (and its interfaces) are gone."""
    return "sysctl -w " + " ".join(f"net.core.{k}={before[k]}" for k in knobs)


def _run(netns: str | None, argv: list[str]) -> subprocess.CompletedProcess:
    full = (["ip", "netns", "exec", netns] if netns else []) + argv
    return subprocess.run(full, capture_output=True, text=True)


def _coalescing(ifname: str, netns: str | None) -> dict[str, str]:
    proc = _run(netns, ["ethtool", "-c", ifname])
    out: dict[str, str] = {}
    if proc.returncode:
        return out
    for line in proc.stdout.splitlines():
        name, sep, value = line.partition(":")
        name = name.strip().lower().replace(" ", "-")
        if sep and name in COALESCE_KNOBS and value.strip() not in ("n/a", ""):
            out[name] = value.strip()
        if sep and name.startswith("adaptive-rx"):  # "Adaptive RX: off  TX: off"
            parts = value.split()
            if parts and parts[0] != "n/a":
                out["adaptive-rx"] = parts[0]
                if len(parts) >= 3:
                    out["adaptive-tx"] = parts[2]
    return out


def show(ifname: str, netns: str | None = None) -> dict[str, str]:
    """Every knob's current value as text ("unsupported" where the device or kernel has none)."""
    values: dict[str, str] = {}
    for knob in SYSFS_KNOBS:
        proc = _run(netns, ["cat", f"/sys/class/net/{ifname}/{knob}"])
        if proc.returncode and "No such file" in proc.stderr and knob == SYSFS_KNOBS[0]:
            missing = _run(netns, ["test", "-d", f"/sys/class/net/{ifname}"]).returncode
            if missing:
                raise UsageError(f"no interface {ifname!r}{' in namespace ' + netns if netns else ''}: check "
                                 "the name with 'ip link show'")
        values[knob] = proc.stdout.strip() if proc.returncode == 0 else "unsupported"
    for knob in SYSCTL_KNOBS:
        try:
            with open(f"/proc/sys/net/core/{knob}") as f:
                values[knob] = f.read().strip()
        except OSError:
            values[knob] = "unsupported"
    coal = _coalescing(ifname, netns)
    for knob in COALESCE_KNOBS:
        values[knob] = coal.get(knob, "unsupported")
    return values


MAX_VALUE = 2**31 - 1


def parse_settings(items: list[str]) -> dict[str, str]:
    """["napi_defer_hard_irqs=2", ...] -> {knob: value}, checked for names and non-negative integers."""
    out: dict[str, str] = {}
    for item in items:
        name, sep, value = item.partition("=")
        name = name.strip()
        if not sep or name not in KNOBS:
            raise UsageError(f"{item!r}: give KNOB=VALUE with KNOB one of {', '.join(KNOBS)}")
        value = value.strip()
        if name.startswith("adaptive-"):
            if value not in ("on", "off"):
                raise UsageError(f"{name}={value}: use on or off")
        elif not (value.isascii() and value.isdigit()):  # '²'.isdigit() is True, and int() refuses it
            raise UsageError(f"{name}={value}: give a non-negative integer")
        elif int(value) > MAX_VALUE:  # the kernel keeps these in (signed) 32-bit fields
            raise UsageError(f"{name}={value}: give at most {MAX_VALUE}")
        elif name == "threaded" and value not in ("0", "1"):  # the kernel answers anything else with EIO
            raise UsageError(f"threaded={value}: use 0 (NAPI in softirq) or 1 (NAPI kernel threads)")
        out[name] = value
    return out


def apply(ifname: str, netns: str | None, settings: dict[str, str]) -> tuple[dict[str, str], dict[str, str]]:
    """Set the knobs; returns (before, after). A value the device refuses raises with its reason, after
    the knobs already set have been put back."""
    before = show(ifname, netns)
    for knob in settings:
        if before.get(knob) == "unsupported":
            raise KbypassError(f"{knob} is not supported by {ifname} (or this kernel): nothing changed")
    done: list[str] = []
    try:
        for knob, value in settings.items():
            if knob in SYSFS_KNOBS:
                proc = _run(netns, ["sh", "-c", f"echo {value} > /sys/class/net/{ifname}/{knob}"])
            elif knob in SYSCTL_KNOBS:
                proc = _run(None, ["sysctl", "-q", "-w", f"net.core.{knob}={value}"])
            else:
                proc = _run(netns, ["ethtool", "-C", ifname, knob, value])
            if proc.returncode:
                raise KbypassError(f"{ifname} refused {knob}={value}: {proc.stderr.strip() or proc.stdout.strip()} "
                                   "(the knobs set before it were restored)")
            done.append(knob)
    except KbypassError:
        restore(ifname, netns, {k: before[k] for k in done})
        raise
    return before, show(ifname, netns)


def restore(ifname: str, netns: str | None, values: dict[str, str]) -> None:
    for knob, value in values.items():
        if knob in SYSFS_KNOBS:
            _run(netns, ["sh", "-c", f"echo {value} > /sys/class/net/{ifname}/{knob}"])
        elif knob in SYSCTL_KNOBS:
            _run(None, ["sysctl", "-q", "-w", f"net.core.{knob}={value}"])
        else:
            _run(netns, ["ethtool", "-C", ifname, knob, value])


SYSCTL_DIR = "/proc/sys/net/core"


@contextmanager
def busy_polling(usecs: int):
    """net.core.busy_read and busy_poll at `usecs` for the block (every socket's blocking reads and
    poll/epoll spin that long before sleeping: the kernel's best latency), put back afterwards, also when
    the block raises or the process gets SIGTERM. They are machine-wide and exist only in the root
    network namespace (absent under `ip netns exec`): run from there. Yields the values before."""
    paths = {k: f"{SYSCTL_DIR}/{k}" for k in SYSCTL_KNOBS}
    before: dict[str, str] = {}
    for knob, path in paths.items():
        try:
            with open(path) as f:
                before[knob] = f.read().strip()
        except OSError:
            raise KbypassError(f"{path} is not there: net.core.{knob} is a machine-wide sysctl of the root "
                               "network namespace; run this from the root namespace, not under ip netns exec") from None
    main = threading.current_thread() is threading.main_thread()
    old_term = signal.getsignal(signal.SIGTERM) if main else None

    def on_term(signum, frame):  # unwind through the finally below, which puts the sysctls back
        raise SystemExit(128 + signum)

    if main:
        signal.signal(signal.SIGTERM, on_term)
    try:
        for knob, path in paths.items():
            try:
                with open(path, "w") as f:
                    f.write(str(int(usecs)))
            except OSError as e:
                raise KbypassError(f"cannot set net.core.{knob}={usecs}: {e.strerror} (needs root in the root "
                                   "namespace)") from None
        yield before
    finally:
        failed = []
        for knob, path in paths.items():
            try:
                with open(path, "w") as f:
                    f.write(before[knob])
            except OSError:
                failed.append(knob)
        if failed:
            print(f"kbypass: warning: could not put {', '.join(failed)} back: {restore_command(before, failed)}",
                  file=sys.stderr)
        if main:
            signal.signal(signal.SIGTERM, old_term)
