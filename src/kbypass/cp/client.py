"""A connection to a namespace's control plane, started on demand.

    with ControlPlaneClient() as cp:              # this namespace's; `netns="kb-b"` for another's
        rid = cp.add_rule("eth0", "udp dport 5000")
        group = cp.register_xsk("eth0", 0, port.fd)

Everything a client adds is tied to its connection: close it, or let the process die, and the control
plane removes its rules and sockets. When no control plane runs, the first client starts one
(`kbypass cp serve --idle-exit 10`, detached, its log in /run/kbypass/cp-NAME.log); it exits on its
own ten seconds after its last client leaves.
"""

from __future__ import annotations

import array
import contextlib
import fcntl
import os
import socket
import subprocess
import sys
import threading
import time

from kbypass import netns as _netns
from kbypass.errors import UsageError
from kbypass.steer.rules import Rule
from kbypass.steer.steering import SteerStats
from kbypass.xsk.pool_lock import SharedQueue

from . import paths, protocol
from .protocol import ControlPlaneError, ControlPlaneGone, ControlPlaneMissing

AUTO_IDLE_EXIT = 10.0  # seconds an auto-started control plane outlives its last client
LOG_KEEP = 1 << 20  # bytes of log after which a start moves it to cp-NAME.log.1
START_TIMEOUT = 10.0
REPLY_TIMEOUT = 10.0
_REPLY_FD_SPACE = socket.CMSG_SPACE(protocol.MAX_REPLY_FDS * 4)


def _connect(path: str) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
    try:
        sock.connect(path)
    except BaseException:
        sock.close()
        raise
    return sock


def start_detached(netns: str | None, name: str, options: tuple[str, ...] = ("--idle-exit", str(AUTO_IDLE_EXIT))
                   ) -> subprocess.Popen:
    """Start `kbypass cp serve OPTIONS` for the namespace in the background (its own session, so a Ctrl-C of
    the tool that started it does not reach it; working directory /), logging to /run/kbypass/cp-NAME.log
    (the previous log kept as .1 once it passes LOG_KEEP bytes)."""
    cmd = [sys.executable, "-m", "kbypass", "cp", "serve", *options]
    if netns is not None:
        cmd += ["--netns", netns]
    log_path = paths.log_path(name)
    paths.check_run_dir()
    try:
        if os.path.exists(log_path) and os.path.getsize(log_path) > LOG_KEEP:
            os.replace(log_path, log_path + ".1")
        log = os.fdopen(paths.open_private(log_path, os.O_WRONLY | os.O_APPEND), "ab")
    except OSError as e:
        raise UsageError(f"cannot start a control plane: {log_path}: {e.strerror}: remove it, or steer "
                         "in-process with --no-cp (control_plane=False)") from None
    # the child starts in our namespace (an unnamed one can only be inherited) or in `netns`
    with log, _netns.entered(netns):
        return subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True,
                                close_fds=True, cwd="/")


@contextlib.contextmanager
def _one_starter(name: str):
    """One process at a time starts a namespace's control plane; the others wait here, then connect to it
    (without this, two tools starting together would both spawn one, and the loser would log an error)."""
    paths.check_run_dir()
    fd = paths.open_private(paths.start_lock_path(name))
    try:
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise ControlPlaneError(f"another process has been starting the control plane of namespace "
                                            f"{name} for {START_TIMEOUT:g}s: see {paths.log_path(name)}") from None
                time.sleep(0.02)
        yield
    finally:
        os.close(fd)


def spawn_and_connect(netns: str | None, name: str, options: tuple[str, ...] | None = None) -> socket.socket:
    """Connect to the namespace's control plane, starting one (`start_detached`) if none answers."""
    path = paths.socket_path(name)
    with _one_starter(name):
        try:
            return _connect(path)  # started by whoever held the start lock before us
        except (FileNotFoundError, ConnectionRefusedError):
            pass
        child = start_detached(netns, name) if options is None else start_detached(netns, name, options)
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            try:
                return _connect(path)
            except (FileNotFoundError, ConnectionRefusedError):
                pass
            if child.poll() is not None:
                raise ControlPlaneError(f"the control plane of namespace {name} failed to start (exit "
                                        f"{child.returncode}): see {paths.log_path(name)}")
            if time.monotonic() > deadline:
                raise ControlPlaneError(f"the control plane of namespace {name} did not come up within "
                                        f"{START_TIMEOUT:g}s: see {paths.log_path(name)}")
            time.sleep(0.02)


class ControlPlaneClient:
    def __init__(self, netns: str | None = None, *, start: bool = True, command: str | None = None) -> None:
        self.name = paths.namespace_name(netns)
        self.netns = netns
        self.path = paths.socket_path(self.name)
        self._lock = threading.Lock()
        self._next_id = 1
        self._sock: socket.socket | None = None
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            self._sock = self._open(start)
            try:
                hello = self._call("hello", version=protocol.VERSION, command=command or _own_command())
                break
            except ControlPlaneGone:
                self._hang_up()
                # a control plane exiting (idle) as we connected: a fresh one will serve us
                if not (start and time.monotonic() < deadline):
                    raise
            except BaseException:
                self._hang_up()
                raise
        self.client_id = hello["client"]
        self.server_pid = hello["server_pid"]

    def _open(self, start: bool) -> socket.socket:
        try:
            return _connect(self.path)
        except PermissionError:
            raise ControlPlaneError(
                f"the control plane of namespace {self.name} admits root only: run as root, or have it "
                "started with 'kbypass cp start --users all' (or --users group NAME)") from None
        except (FileNotFoundError, ConnectionRefusedError):
            if not start:
                raise ControlPlaneMissing(f"no control plane serves namespace {self.name}: start one with "
                                          "'kbypass cp start'") from None
        if os.geteuid() != 0:
            raise ControlPlaneMissing(f"no control plane serves namespace {self.name} and only root can start "
                                      "one: ask root to run 'kbypass cp start --users all'")
        return spawn_and_connect(self.netns, self.name)

    # ---- requests --------------------------------------------------------------------------------

    def _call(self, op: str, fds: tuple[int, ...] = (), **args) -> dict:
        return self._call_fds(op, fds, 0, **args)[0]

    def _call_fds(self, op: str, fds: tuple[int, ...], want: int, **args) -> tuple[dict, list[int]]:
        """Send a request (with `fds`), return its reply and the `want` fds that came with it. Received fds
        are closed on any error, and any that come unasked."""
        with self._lock:
            if self._sock is None:
                raise ControlPlaneError("the control-plane connection is closed")
            req_id = self._next_id
            self._next_id += 1
            data = protocol.request(op, req_id, **args)
            anc = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))] if fds else []
            try:
                self._sock.sendmsg([data], anc)
                self._sock.settimeout(REPLY_TIMEOUT)
                reply, ancdata, flags, _ = self._sock.recvmsg(protocol.MAX_MESSAGE, _REPLY_FD_SPACE)
            except TimeoutError:
                # hang up: a late answer would otherwise be read as the answer to the next request
                self._sock.close()
                self._sock = None
                raise ControlPlaneError(f"the control plane of namespace {self.name} did not answer {op!r} within "
                                        f"{REPLY_TIMEOUT:g}s: see {paths.log_path(self.name)}") from None
            except OSError as e:
                if not isinstance(e, (BrokenPipeError, ConnectionResetError)):
                    raise
                reply, ancdata, flags = self._last_word()
            got = protocol.received_fds(ancdata) if reply else []
            try:
                if not reply:
                    raise ControlPlaneGone(
                        f"the control plane of namespace {self.name} went away: the rules and sockets it held for "
                        f"you are gone (nothing stays attached); start again (its log: {paths.log_path(self.name)})")
                msg = protocol.decode_reply(reply, req_id)
                if len(got) != want or flags & socket.MSG_CTRUNC:
                    raise ControlPlaneError(f"the control plane answered {op!r} with {len(got)} file descriptor(s), "
                                            f"not {want}: is it a kbypass cp of this version?")
            except BaseException:
                for fd in got:
                    os.close(fd)
                raise
            return msg, got

    def _last_word(self) -> tuple[bytes, list, int]:
        """What a control plane that hung up on us said before (why it turned us away), or b"": gone."""
        try:
            reply, ancdata, flags, _ = self._sock.recvmsg(protocol.MAX_MESSAGE, _REPLY_FD_SPACE, socket.MSG_DONTWAIT)
            return reply, ancdata, flags
        except OSError:
            return b"", [], 0

    def add_rule(self, iface: str, rule, *, priority: int = protocol.DEFAULT_PRIORITY, share: bool = False,
                 xdp_mode: str | None = None) -> int:
        args = {"iface": iface, "rule": str(rule), "priority": priority, "share": share}
        if xdp_mode is not None:
            args["xdp_mode"] = xdp_mode
        return self._call("add", **args)["rule_id"]

    def remove_rule(self, iface: str, rule_id: int) -> None:
        self._call("remove", iface=iface, rule_id=rule_id)

    def register_xsk(self, iface: str, queue: int, fd: int, *, xdp_mode: str | None = None) -> int:
        """Have this client's redirect rules send what arrives on `queue` to AF_XDP socket `fd`; returns the
        client's socket group."""
        args = {"iface": iface, "queue": queue}
        if xdp_mode is not None:
            args["xdp_mode"] = xdp_mode
        return self._call("register", fds=(fd,), **args)["group"]

    def open_socket(self, iface: str, queue: int, *, frames: int, frame_size: int, rx_size: int, tx_size: int,
                    fill_size: int, comp_size: int, headroom: int = 0, mode: str = "auto",
                    xdp_mode: str | None = None, share_queue: bool = False,
                    multi_buffer: bool = False) -> tuple[int, int, dict]:
        """Have the control plane make an AF_XDP socket on `queue` and its UMEM, registered for this client as
        register_xsk does; returns (socket fd, UMEM memfd, layout): the fds are the caller's to close, the
        layout the reply's sizes, group and bind `mode` (kbypass.cp.protocol open_socket). No root needed.
        share_queue: join (or make) the queue's shared pool; layout["shared_queue"] is then a SharedQueue
        whose lock_fd is the caller's to close too."""
        args = {"iface": iface, "queue": queue, "frames": frames, "frame_size": frame_size, "rx_size": rx_size,
                "tx_size": tx_size, "fill_size": fill_size, "comp_size": comp_size, "headroom": headroom, "mode": mode}
        if xdp_mode is not None:
            args["xdp_mode"] = xdp_mode
        if share_queue:
            args["share_queue"] = True
        if multi_buffer:
            args["multi_buffer"] = True
        layout, fds = self._call_fds("open_socket", (), 3 if share_queue else 2, **args)
        for key in ("ok", "id"):
            layout.pop(key, None)
        if share_queue:
            try:
                part = layout["shared_queue"]
                layout["shared_queue"] = SharedQueue(fds[2], int(part["first"]), int(part["count"]))
            except (KeyError, TypeError, ValueError):
                for fd in fds:
                    os.close(fd)
                raise ControlPlaneError("the control plane's shared-queue reply has no slice: is it a kbypass cp "
                                        "of this version?") from None
        layout.setdefault("multi_buffer", False)  # a pool's reply, or a control plane from before multi-buffer
        return fds[0], fds[1], layout

    def unregister_xsk(self, iface: str, queue: int) -> None:
        self._call("unregister", iface=iface, queue=queue)

    def counters(self, iface: str) -> list[dict]:
        """Every rule on the interface (everyone's: a client may see what else steers there) with its
        owner and the packets and bytes it decided."""
        return self._call("counters", iface=iface)["rules"]

    def stats(self, iface: str) -> dict:
        """What no rule decided on the interface: unmatched, parse_errors, not_ip."""
        return self._call("counters", iface=iface)["stats"]

    def status(self) -> dict:
        return self._call("status")

    def stop(self, force: bool = False) -> None:
        self._call("stop", force=force)

    def close(self) -> None:
        """Say bye (the control plane removes this client's rules and sockets before it answers), then hang
        up. A control plane that is gone already is no error here: closing leaves nothing either way."""
        if self._sock is None:
            return
        try:
            self._call("bye")
        except (ControlPlaneError, OSError):
            pass
        self._hang_up()

    def _hang_up(self) -> None:
        with self._lock:
            if self._sock is not None:
                self._sock.close()
                self._sock = None

    def __enter__(self) -> ControlPlaneClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        sock = getattr(self, "_sock", None)
        if sock is not None:
            sock.close()


def _own_command() -> str:
    argv = [os.path.basename(sys.argv[0])] + sys.argv[1:] if sys.argv and sys.argv[0] else ["python"]
    return " ".join(argv)[:120]


def running(netns: str | None = None) -> bool:
    """Does a control plane serve the namespace? (Connects and hangs up; starts nothing. One that admits
    only root runs too, for a non-root caller.)"""
    try:
        _connect(paths.socket_path(paths.namespace_name(netns))).close()
        return True
    except PermissionError:
        return True
    except OSError:
        return False


def _check_iface(iface: str, netns: str | None) -> None:
    """The interface must exist where the caller said; said from the caller's side (`ip -n NS`), which the
    control plane, looking from inside the namespace, could not."""
    with _netns.entered(netns):
        try:
            socket.if_nametoindex(iface)
        except OSError:
            where, ip = (f"namespace {netns!r}", f"ip -n {netns} link") if netns else ("this network namespace",
                                                                                        "ip link")
            raise UsageError(f"no interface {iface!r} in {where}: check the name with '{ip} show'") from None


class SteeringLease:
    """One interface's steering through the control plane, with the methods of kbypass.steer.Steering
    that a steered port uses (add, register_xsk, rules, counters, close), so kbypass.port.SteeredPort has
    one code path for both modes. It sees only its own rules. Closing it closes the connection, which
    removes every rule and socket it added."""

    def __init__(self, iface: str, netns: str | None = None, xdp_mode: str | None = None, *,
                 priority: int = protocol.DEFAULT_PRIORITY, share: bool = False) -> None:
        self.ifname = iface
        self.xdp_mode = xdp_mode
        self.priority = priority
        self.share = share
        _check_iface(iface, netns)  # before a control plane is started for a typo
        self.client = ControlPlaneClient(netns)
        self._rules: dict[int, object] = {}
        self._priorities: dict[int, int] = {}
        self.group: int | None = None

    def add(self, rule, *, index: int | None = None) -> int:
        """Add a rule after this lease's others, or before them all with index=0 (as Steering.add(index=0):
        a sample rule in front of the redirect it thins out). The control plane orders by priority, so
        index 0 is one priority step ahead of the lease's first rule."""
        if index not in (None, 0):
            raise UsageError("through the control plane a rule goes last (index None) or first (index 0) among "
                             "yours; other positions are a matter of priority between clients")
        priority = self.priority
        if index == 0:
            priority = max(0, min(self._priorities.values(), default=self.priority) - 1)
        rule_id = self.client.add_rule(self.ifname, rule, priority=priority, share=self.share,
                                       xdp_mode=self.xdp_mode)
        self._rules[rule_id] = rule if not isinstance(rule, str) else Rule.parse(rule)
        self._priorities[rule_id] = priority
        return rule_id

    def remove(self, rule_id: int) -> None:
        self.client.remove_rule(self.ifname, rule_id)
        del self._rules[rule_id]
        del self._priorities[rule_id]

    def register_xsk(self, queue_id: int, xsk_fd: int) -> None:
        self.group = self.client.register_xsk(self.ifname, queue_id, xsk_fd, xdp_mode=self.xdp_mode)

    def open_socket(self, queue_id: int, **layout) -> tuple[int, int, dict]:
        """An AF_XDP socket on `queue_id` and its UMEM memfd, made and registered by the control plane (for a
        process that may not make one, or one that shares the queue): ControlPlaneClient.open_socket."""
        xsk_fd, umem_fd, reply = self.client.open_socket(self.ifname, queue_id, xdp_mode=self.xdp_mode, **layout)
        self.group = reply["group"]
        return xsk_fd, umem_fd, reply

    def rules(self) -> dict:
        return dict(self._rules)

    def counters(self) -> dict[int, tuple[int, int]]:
        return {r["rule_id"]: (r["packets"], r["bytes"]) for r in self.client.counters(self.ifname)
                if r["rule_id"] in self._rules}

    def stats(self) -> SteerStats:
        return SteerStats(**self.client.stats(self.ifname))

    def close(self) -> None:
        self.client.close()


__all__ = ["ControlPlaneClient", "ControlPlaneError", "ControlPlaneGone", "ControlPlaneMissing", "SteeringLease",
           "running", "spawn_and_connect", "start_detached"]
