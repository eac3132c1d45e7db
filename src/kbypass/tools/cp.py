"""`kbypass cp serve | start | status | stop`: the control plane of a network namespace.

One per namespace owns the steering program of every interface kbypass steers there, and its rules;
tools and the Python API are its clients (kbypass.cp). Tools start one on demand; these commands are for
looking at it and for starting it with other permissions (`--users`)."""

from __future__ import annotations

import logging
import sys

from kbypass.cp import paths
from kbypass.cp.client import ControlPlaneClient, ControlPlaneMissing, spawn_and_connect
from kbypass.cp.paths import USERS
from kbypass.errors import UsageError, require_root
from kbypass.host import testbed
from kbypass.tools._options import add_json, add_prefix, seconds
from kbypass.tools._output import emit


def register(sub) -> None:
    p = sub.add_parser("cp", help="the control plane: one per namespace, owns the steering program and its rules")
    actions = p.add_subparsers(dest="action", metavar="ACTION")
    actions.required = True
    srv = actions.add_parser("serve", help="run the control plane in the foreground (its log on stderr)")
    start = actions.add_parser("start", help="start the control plane in the background, if none runs")
    status = actions.add_parser("status", help="clients, rules with their counters, sockets")
    stop = actions.add_parser("stop", help="stop it (refused while other clients are connected, unless --force)")
    for q in (srv, start, status, stop):
        q.add_argument("--netns", help="the namespace to serve (default: the one kbypass runs in)")
        q.add_argument("--host", choices=testbed.HOSTS, help="a testbed host: its namespace")
        add_prefix(q)
    for q in (srv, start):
        q.add_argument("--users", choices=USERS, default="root",
                       help="who may connect: root (socket mode 0600), group (0660, --group), all (0666); "
                            "non-root clients steer only their own UDP/TCP ports >= 1024")
        q.add_argument("--group", help="with --users group: the group whose members may connect")
        q.add_argument("--allow-kernel-ports", action="store_true",
                       help="let non-root clients steer ports a kernel socket is bound to")
        q.add_argument("-i", "--iface",
                       help="the interfaces non-root clients may steer, comma-separated (--host: its veth)")
    srv.add_argument("--idle-exit", type=seconds, default=None,
                     help="exit this many seconds after the last client left (default: never)")
    stop.add_argument("--force", action="store_true", help="stop even while clients are connected")
    add_json(status, "print the status as JSON")
    p.set_defaults(func=run)


def _netns(args) -> str | None:
    if args.host:
        if args.netns:
            raise UsageError("give --host or --netns, not both")
        return testbed.host(args.host).netns
    return args.netns


def _ifaces(args) -> list[str]:
    """The interfaces non-root clients may steer: -i/--iface, and a testbed host's veth."""
    ifaces = [i for i in (args.iface or "").split(",") if i]
    if args.host and not ifaces:
        ifaces.append(testbed.host(args.host).iface)
    return ifaces


def _options(args) -> list[str]:
    """serve's options, for `start` to hand to the control plane it starts."""
    out = ["--users", args.users, *(["--group", args.group] if args.group else [])]
    out += [w for i in _ifaces(args) for w in ("--iface", i)]
    return out + (["--allow-kernel-ports"] if args.allow_kernel_ports else [])


def run(args) -> int:
    ns = _netns(args)
    if args.action == "serve":
        # the server (AF_XDP sockets: numpy): loaded to serve, not to parse options or ask a running one
        from kbypass.cp import server

        require_root("kbypass cp serve")
        _check_users(args)
        logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s kbypass cp: %(message)s")
        server.serve(ns, users=args.users, group=args.group, idle_exit=args.idle_exit or 0.0,
                     allow_kernel_ports=args.allow_kernel_ports, ifaces=tuple(_ifaces(args)))
        return 0
    if args.action == "start":
        return _start(args, ns)
    if args.action == "status":
        return _status(args, ns)
    return _stop(args, ns)


def _stop(args, ns) -> int:
    name = paths.namespace_name(ns)
    try:
        cp = ControlPlaneClient(ns, start=False, command="kbypass cp stop")
    except ControlPlaneMissing:  # no error, as 'testbed down' of a testbed that is not up
        print(f"no control plane serves namespace {name}: nothing to stop")
        return 0
    with cp:
        pid = cp.server_pid
        cp.stop(force=args.force)
    print(f"stopped the control plane of namespace {name} (pid {pid})")
    return 0


def _check_users(args) -> None:
    if args.users == "group" and not args.group:
        raise UsageError("--users group needs --group NAME")
    if args.group and args.users != "group":
        raise UsageError("--group goes with --users group")


def _start(args, ns) -> int:
    require_root("kbypass cp start")
    _check_users(args)
    name = paths.namespace_name(ns)
    try:
        with ControlPlaneClient(ns, start=False, command="kbypass cp start") as cp:
            st = cp.status()
    except ControlPlaneMissing:
        sock = spawn_and_connect(ns, name, tuple(_options(args)))
        sock.close()
        with ControlPlaneClient(ns, start=False, command="kbypass cp start") as cp:
            print(f"started the control plane of namespace {name} (pid {cp.server_pid}, socket "
                  f"{paths.socket_path(name)}, log {paths.log_path(name)})")
        return 0
    have = (st["users"], st["group"], sorted(st["ifaces"]), bool(st["idle_exit"]))
    want = (args.users, args.group, sorted(_ifaces(args)), False)
    if have != want:
        raise UsageError(
            f"a control plane already serves namespace {name} (pid {st['server_pid']}) with --users {st['users']}"
            f"{' --group ' + st['group'] if st['group'] else ''}, interfaces for non-root clients "
            f"{', '.join(st['ifaces']) or 'none'}"
            f"{', exiting when idle (started by a tool)' if st['idle_exit'] else ''}:"
            " stop it first ('kbypass cp stop', --force if clients are connected), then start again")
    print(f"a control plane already serves namespace {name} (pid {st['server_pid']}), as asked")
    return 0


def _status(args, ns) -> int:
    name = paths.namespace_name(ns)
    try:
        cp = ControlPlaneClient(ns, start=False, command="kbypass cp status")
    except ControlPlaneMissing:
        if args.json:
            emit({"namespace": name, "running": False}, True)
        else:
            print(f"no control plane serves namespace {name} (tools start one when they steer; "
                  f"'kbypass cp start' starts one now)")
        return 0
    with cp:
        st = cp.status()
    me = cp.client_id
    st.pop("ok", None)
    st.pop("id", None)
    st["clients"] = [c for c in st["clients"] if c["client"] != me]  # not this status request itself
    out = {"namespace": name, "running": True, **st}
    if args.json:
        emit(out, True)
        return 0
    emit({"namespace": name, "server_pid": str(st["server_pid"]),
          "clients": len(st["clients"]) + st["clients_not_listed"],
          "interfaces": len(st["interfaces"])}, False, title="control plane")
    if st["clients"]:
        emit({"clients": [{k: str(c[k]) for k in ("client", "pid", "uid")} | {k: c[k] for k in ("command", "rules")} | {
            "sockets": " ".join(c["sockets"]) or "-"} for c in st["clients"]]}, False)
    for i in st["interfaces"]:
        emit({"rules": [{k: r[k] for k in ("rule_id", "owner", "priority", "rule", "packets", "bytes")}
                        for r in i["rules"]] or [{"rule": "(none)"}]},
             False, title=f"{i['iface']} ({i['xdp_mode']} XDP, program {i['prog_id']}; unmatched {i['unmatched']}, "
                          f"not IP {i['not_ip']})")
        if i.get("pools"):
            emit({"shared queues": [{"queue": str(p["queue"]), "uid": str(p["uid"]),
                                     "members": " ".join(map(str, p["members"])),
                                     "slices used": f"{p['slices_used']} of {p['slices']}",
                                     "umem": f"{p['frames']} x {p['frame_size']} B", "mode": p["mode"]}
                                    for p in i["pools"]]}, False)
    return 0

