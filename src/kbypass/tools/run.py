"""`kbypass run [--spin US] [--iface IF] [--log] -- APP ARGS...`: an unmodified program's UDP and TCP sockets on
AF_XDP (TCP: kbypass's own, kbypass.sockapi.shimtcp, in a CPython the shim embeds when the first TCP socket
is accelerated).

Preloads libkbypass-preload.so (csrc/preload: the shim), makes sure this namespace's control plane runs
(starting one that lets unprivileged apps in: `--users all`, for the interfaces named with --iface or, by
default, every interface with an IPv4 address), and execs APP in place of this process (same pid, same
signals, its exit status). The shim asks the control plane for each UDP socket the app binds or sends from,
and each TCP socket it listens or connects on (kbypass.cp.accel); sockets it cannot accelerate stay kernel
sockets, said per socket with --log (KBYPASS_LOG=1). No control plane, and none can be started: the app runs
on the kernel, with one warning.

`kbypass run --status` lists the accelerated sockets of the apps running here, with their counters: UDP's in
datagrams; TCP's in bytes the app read and sent, with each connection's peer and state, each listener's accepted
count, and each app's TCP host counters (segments, predicted, retransmits).
"""

from __future__ import annotations

import argparse
import fcntl
import os
import re
import shutil
import socket
import stat
import sys

import kbypass
from kbypass.cp import client as cpclient
from kbypass.cp import paths
from kbypass.errors import KbypassError, UsageError
from kbypass.tools._options import add_json, int_range
from kbypass.tools._output import emit

SHIM = os.path.join(os.path.dirname(kbypass.__file__), "preload", "libkbypass-preload.so")
IDLE_EXIT = 60.0  # seconds a control plane started here outlives its last client (an app connects lazily)
COUNTERS = ("rx", "tx", "rx_kernel", "tx_kernel", "rx_dropped", "tx_failed")


def register(sub) -> None:
    p = sub.add_parser("run", help="run an unmodified program with its UDP and TCP sockets on AF_XDP (LD_PRELOAD)")
    p.add_argument("--spin", type=int_range(0, 10_000_000, "microseconds"), default=0, metavar="US",
                   help="blocking calls spin on the rings this long before sleeping (KBYPASS_SPIN_US; 0 never "
                        "spins)")
    p.add_argument("-i", "--iface", help="the interfaces to accelerate, comma-separated (default: every interface "
                                         "with an IPv4 address but lo; for a control plane this command starts)")
    p.add_argument("--log", action="store_true", help="say per socket why it is or is not accelerated "
                                                      "(KBYPASS_LOG=1)")
    p.add_argument("--status", action="store_true", help="list the accelerated sockets of running apps instead")
    add_json(p, "with --status: print it as JSON")
    p.add_argument("app", nargs=argparse.REMAINDER, metavar="-- APP ARGS", help="the program and its arguments")
    p.set_defaults(func=run)


def run(args) -> int:
    if args.status:
        if args.app:
            raise UsageError("--status lists running apps: give it no program")
        return _status(args.json)
    app = args.app[1:] if args.app[:1] == ["--"] else args.app
    if not app:
        raise UsageError("name the program to run: kbypass run -- APP ARGS...")
    if args.json:
        raise UsageError("--json goes with --status")
    linger = os.environ.get("KBYPASS_EXIT_LINGER_S", "")  # read by the shim at the app's exit (kbp_tcpexit.c)
    if linger and not re.fullmatch(r"\d+(\.\d*)?|\.\d+", linger):
        raise UsageError(f"KBYPASS_EXIT_LINGER_S={linger!r} is not a number of seconds >= 0 (how long the app's "
                         "exit waits for its closed TCP connections; 0: not at all)")
    exe = shutil.which(app[0])
    if exe is None:
        raise UsageError(f"no program {app[0]!r} on PATH")
    if not os.path.exists(SHIM):
        raise UsageError(f"the preload shim is not built ({SHIM}): run 'make setup'")
    for i in _wanted(args.iface):
        try:
            socket.if_nametoindex(i)
        except OSError:
            raise UsageError(f"no interface {i!r} here (--iface takes this namespace's interfaces: 'ip link')") from None
    env = dict(os.environ)
    name = paths.namespace_name(None)
    if _control_plane(name, args.iface):
        env["LD_PRELOAD"] = " ".join(w for w in (_shim_for_any_user(), env.get("LD_PRELOAD", "")) if w)
        env["KBYPASS_CP_SOCKET"] = paths.socket_path(name)
        env["KBYPASS_SPIN_US"] = str(args.spin)
        env.update(_python_for_tcp())
        if args.log:
            env["KBYPASS_LOG"] = "1"
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(exe, app, env)
    return 0  # not reached


def _python_for_tcp() -> dict[str, str]:
    """Where the shim's embedded CPython (csrc/preload/kbp_py.c, loaded at an app's first accelerated TCP socket)
    finds this interpreter's libpython, standard library and kbypass (this venv's paths, the src of an
    editable install): the same Python that runs this command, so kbypass's C modules fit it."""
    import sysconfig

    lib = os.path.join(sysconfig.get_config_var("LIBDIR") or "", sysconfig.get_config_var("INSTSONAME") or "")
    path = [p for p in sys.path if p and os.path.isdir(p)]
    out = {"KBYPASS_PYTHONHOME": sys.base_prefix, "KBYPASS_PYTHONPATH": os.pathsep.join(path)}
    if os.path.exists(lib):
        out["KBYPASS_LIBPYTHON"] = lib
    return out


def _loadable_by_anyone(path: str) -> bool:
    """Whether a process of any uid can open `path`: the file readable by others, every directory above it
    searchable by others."""
    if not os.stat(path).st_mode & stat.S_IROTH:
        return False
    for p in {os.path.abspath(path), os.path.realpath(path)}:  # the path as given is walked too, not only its target
        d = os.path.dirname(p)
        while d != "/":
            if not os.stat(d).st_mode & stat.S_IXOTH:
                return False
            d = os.path.dirname(d)
    return True


def _shim_for_any_user() -> str:
    """The path the app's dynamic loader preloads the shim from. An app that drops its privileges (`kbypass run
    -- setpriv --reuid=65534 ... APP`) cannot open a shim in a tree only root may enter (a clone under a 0700
    directory): the loader would skip it with one line and the app would run on the kernel. Then the shim's
    bytes go into a sealed memfd this process hands on through exec, and the loader opens it as
    /proc/self/fd/N, which any uid may (the memfd is the process's own; its children inherit it too)."""
    if _loadable_by_anyone(SHIM):
        return SHIM
    fd = os.memfd_create("libkbypass-preload.so", os.MFD_ALLOW_SEALING)  # no MFD_CLOEXEC: it must cross exec
    with open(SHIM, "rb") as f:
        data = memoryview(f.read())
    while data:
        data = data[os.write(fd, data):]
    fcntl.fcntl(fd, fcntl.F_ADD_SEALS, fcntl.F_SEAL_WRITE | fcntl.F_SEAL_GROW | fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_SEAL)
    os.set_inheritable(fd, True)
    return f"/proc/self/fd/{fd}"


def _wanted(iface: str | None) -> list[str]:
    return [i for i in (iface or "").split(",") if i]


def _ifaces(wanted: str | None) -> list[str]:
    if wanted:
        return _wanted(wanted)
    from pyroute2 import IPRoute

    with IPRoute() as ipr:
        names = {link["index"]: link.get_attr("IFLA_IFNAME") for link in ipr.get_links()}
        return sorted({names[a["index"]] for a in ipr.get_addr(family=socket.AF_INET)
                       if a["index"] in names and names[a["index"]] != "lo"})


def _control_plane(name: str, iface: str | None) -> bool:
    """A control plane serves this namespace (started here if needed): False after one warning line."""
    if cpclient.running(None):
        if iface:
            print(f"kbypass: note: a control plane already serves namespace {name}: --iface {iface} is not applied "
                  "(it serves the interfaces it was started with: 'kbypass cp status')", file=sys.stderr)
        return True
    if os.geteuid() != 0:
        print(f"kbypass: warning: no control plane serves namespace {name} and only root starts one ('kbypass cp "
              "start --users all --iface IF' as root): the app runs on kernel sockets", file=sys.stderr)
        return False
    options = ["--idle-exit", str(IDLE_EXIT), "--users", "all"]
    options += [w for i in _ifaces(iface) for w in ("--iface", i)]
    try:
        cpclient.spawn_and_connect(None, name, tuple(options)).close()
    except (KbypassError, OSError) as e:
        print(f"kbypass: warning: could not start the control plane ({e}): the app runs on kernel sockets",
              file=sys.stderr)
        return False
    return True


def _status(as_json: bool) -> int:
    name = paths.namespace_name(None)
    try:
        with cpclient.ControlPlaneClient(None, start=False, command="kbypass run --status") as cp:
            st = cp.status()
    except cpclient.ControlPlaneMissing:
        st = {"clients": []}
    apps = [{"pid": c["pid"], "command": c["command"], "sockets": c["shim"],
             **({"tcp": c["shim_tcp"]} if any(s["proto"] == "tcp" for s in c["shim"]) else {})}
            for c in st["clients"] if "shim" in c]
    if as_json:
        emit({"namespace": name, "apps": apps}, True)
        return 0
    tables = _status_tables(apps)
    if not tables:
        print(f"no accelerated sockets in namespace {name} (start an app with 'kbypass run -- APP')")
        return 0
    emit(tables, False, title=f"kbypass run: namespace {name}")
    return 0


def _status_tables(apps: list[dict]) -> dict:
    """--status's tables: UDP sockets (datagrams), TCP sockets (bytes, peer, state), each app's TCP host."""
    def app(a):
        return {"pid": str(a["pid"]), "command": a["command"]}

    udp = [{**app(a), "fd": str(s["fd"]), "local": s["local"], **{_UDP_HEADS[k]: str(s[k]) for k in COUNTERS}}
           for a in apps for s in a["sockets"] if s["proto"] == "udp"]
    tcp = [{**app(a), "fd": str(s["fd"]), "local": s["local"], "peer": s["peer"] or "-", "state": s["state"],
            "rx bytes": str(s["rx"]), "tx bytes": str(s["tx"]), "accepted": str(s.get("accepted", "-"))}
           for a in apps for s in a["sockets"] if s["proto"] == "tcp"]
    hosts = [{**app(a), **{k.replace("_", " "): str(v) for k, v in a["tcp"].items()}} for a in apps if "tcp" in a]
    return {k: v for k, v in (("UDP sockets (datagrams)", udp), ("TCP sockets (bytes)", tcp),
                              ("TCP host (segments)", hosts)) if v}


_UDP_HEADS = dict(zip(COUNTERS, ("rx", "tx", "rx kernel", "tx kernel", "rx dropped", "tx failed")))
