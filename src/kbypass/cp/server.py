"""`kbypass cp serve`: one control plane per network namespace, serving requests on a unix socket.

A single-threaded selectors loop (no asyncio: SCM_RIGHTS needs recvmsg, which asyncio's streams hide).
It runs inside the namespace it serves for its whole life (setns at start), so interface names resolve
there and the program attaches there.

Who may connect (`--users`): "root" (the default; socket mode 0600), "group NAME" (0660, owned by that
group) or "all" (0666). Root clients may do everything. Other clients may add and remove rules only for
UDP/TCP destination ports from 1024 up that no kernel socket of the namespace is bound to (unless the
server runs with `--allow-kernel-ports`), never drop/sample rules, and only their own rules; they cannot
register AF_XDP sockets (making one needs CAP_NET_RAW anyway). Nobody can remove another client's rules,
and an overlapping rule of another client is refused unless both share (kbypass.cp.state).

Robustness: every message is one datagram, checked before anything acts on it (kbypass.cp.protocol); a bad
one gets an error reply, never a crash. A reply that would block (a client that never reads) drops that
client and everything it owns. A client that dies is seen at once (end of file) and its rules and sockets
go in the same loop turn. If this process dies, the kernel closes its bpf_links: no interface keeps a
program that nobody serves, and the next start (after the lock is free) starts clean.
"""

from __future__ import annotations

import array
import contextlib
import errno
import fcntl
import grp
import logging
import os
import resource
import selectors
import signal
import socket
import struct
import time

from kbypass import netns as _netns
from kbypass.errors import KbypassError, UsageError
from kbypass.steer.rules import Rule

from . import paths, protocol
from .protocol import ProtocolError, Request
from .state import Client, ControlPlane

log = logging.getLogger("kbypass.cp")

USERS = ("root", "group", "all")
_CHANGES = {"hello", "add", "remove", "register", "unregister", "stop"}  # ops whose refusal is logged
_FD_SPACE = socket.CMSG_SPACE(protocol.MAX_FDS * 4)


def _command_of(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            words = f.read().split(b"\0")
    except OSError:
        return "?"
    words = [w.decode(errors="replace") for w in words if w]
    if len(words) > 1 and os.path.basename(words[0]).startswith("python"):
        words = words[1:]  # "python -m kbypass sink" reads better as "kbypass sink"
        if words[:2] == ["-m", "kbypass"]:
            words = ["kbypass", *words[2:]]
    if words:
        words[0] = os.path.basename(words[0])
    return " ".join(words)[:120] or "?"


def kernel_ports(proto: str) -> set[int]:
    """Ports kernel sockets of this namespace have bound (from /proc/net/{udp,tcp}{,6})."""
    ports = set()
    for name in (proto, proto + "6"):
        try:
            with open(f"/proc/net/{name}") as f:
                next(f)
                for line in f:
                    ports.add(int(line.split()[1].rsplit(":", 1)[1], 16))
        except (OSError, StopIteration, ValueError, IndexError):
            pass
    return ports


class Server:
    def __init__(self, name: str, *, users: str = "root", group: str | None = None, idle_exit: float = 0.0,
                 allow_kernel_ports: bool = False) -> None:
        if users not in USERS:
            raise UsageError(f"--users {users!r}: one of {', '.join(USERS)}")
        self.name = name
        self.users = users
        self.group = group
        self.idle_exit = idle_exit
        self.allow_kernel_ports = allow_kernel_ports
        self.state = ControlPlane()
        self.sel = selectors.DefaultSelector()
        self.conns: dict[int, tuple[socket.socket, Client]] = {}
        self.running = True
        self._lock_fd: int | None = None
        self.listener: socket.socket | None = None
        self._idle_since = time.monotonic()
        self._spare: int | None = None  # an fd kept in reserve to turn clients away when fds run out
        self._fd_short = False
        self.stop_signal: str | None = None  # set by serve()'s signal handler

    # ---- start and stop --------------------------------------------------------------------------

    def start(self) -> None:
        os.makedirs(paths.RUN_DIR, mode=0o755, exist_ok=True)
        self._lock_fd = os.open(paths.lock_path(self.name), os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            other = os.pread(self._lock_fd, 32, 0).decode(errors="replace").strip() or "?"
            os.close(self._lock_fd)
            self._lock_fd = None
            raise AlreadyRunning(f"a control plane already serves namespace {self.name} (pid {other}): "
                                 f"'kbypass cp status' shows it, 'kbypass cp stop' stops it") from None
        os.ftruncate(self._lock_fd, 0)
        os.pwrite(self._lock_fd, f"{os.getpid()}\n".encode(), 0)
        path = paths.socket_path(self.name)
        try:
            os.unlink(path)  # a socket file left by a control plane that died (we hold the lock now)
        except FileNotFoundError:
            pass
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC)
        old = os.umask(0o177)  # no moment where the socket is more open than asked
        try:
            sock.bind(path)
        finally:
            os.umask(old)
        if self.users == "all":
            os.chmod(path, 0o666)
        elif self.users == "group":
            try:
                gid = grp.getgrnam(self.group or "").gr_gid
            except KeyError:
                sock.close()
                os.unlink(path)
                raise UsageError(f"--users group: no group {self.group!r} (create it, or name another)") from None
            os.chown(path, 0, gid)
            os.chmod(path, 0o660)
        sock.listen(128)
        self.listener = sock
        _raise_fd_limit()
        self._spare = _open_spare()
        self.sel.register(sock, selectors.EVENT_READ, None)
        log.info("serving namespace %s on %s (pid %d, users: %s)", self.name, path, os.getpid(),
                 self.users if self.users != "group" else f"group {self.group}")

    def close(self) -> None:
        if self.stop_signal is not None:
            log.info("stopping on %s with %d client(s) connected", self.stop_signal, len(self.conns))
        for fd in list(self.conns):
            self._drop(fd, "the control plane stops")
        self.state.close()
        if self.listener is not None:
            self.sel.unregister(self.listener)
            self.listener.close()
            self.listener = None
            try:
                os.unlink(paths.socket_path(self.name))
            except FileNotFoundError:
                pass
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None
        if self._spare is not None:
            os.close(self._spare)
            self._spare = None
        self.sel.close()
        log.info("stopped")

    # ---- the loop --------------------------------------------------------------------------------

    def run(self) -> None:
        while self.running:
            for key, _ in self.sel.select(timeout=0.5):
                if key.data is None:
                    self._accept()
                else:
                    self._serve_one(key.fd)
            if self.idle_exit and not self.conns and time.monotonic() - self._idle_since > self.idle_exit:
                log.info("no clients for %gs: exiting (--idle-exit)", self.idle_exit)
                self.running = False

    def _accept(self) -> None:
        for _ in range(64):
            try:
                conn, _ = self.listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as e:  # out of fds: keep serving the clients we have, turn the new one away
                if e.errno not in (errno.EMFILE, errno.ENFILE):
                    raise
                if not self._turn_away(e):
                    return
                continue
            if self._fd_short:
                log.info("accepting clients again (%d connected)", len(self.conns))
                self._fd_short = False
            conn.setblocking(False)
            pid, uid, _gid = struct.unpack("3i", conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12))
            client = self.state.new_client(pid, uid, _command_of(pid))
            self.conns[conn.fileno()] = (conn, client)
            self.sel.register(conn, selectors.EVENT_READ, client)

    def _turn_away(self, e: OSError) -> bool:
        """Out of file descriptors: accept the next client with the spare fd, tell it why and hang up. Left
        in the backlog it would wait for a reply that never comes, and the listener would wake the loop on
        every turn. One log line per shortage. False when there is no spare to do it with."""
        if not self._fd_short:
            log.warning("out of file descriptors (%s) with %d clients connected: turning new clients away until "
                        "some leave", e.strerror, len(self.conns))
            self._fd_short = True
        if self._spare is None:
            return False
        os.close(self._spare)
        self._spare = None
        try:
            conn, _ = self.listener.accept()
        except OSError:
            conn = None
        if conn is not None:
            with conn, contextlib.suppress(OSError):
                conn.send(protocol.error(None, f"the control plane has no file descriptor left for another client "
                                               f"({len(self.conns)} connected): try again when some have left"),
                          socket.MSG_DONTWAIT)
        self._spare = _open_spare()
        return conn is not None

    def _serve_one(self, fd: int) -> None:
        conn, client = self.conns[fd]
        fds = array.array("i")
        try:
            data, ancdata, flags, _ = conn.recvmsg(protocol.MAX_MESSAGE + 1, _FD_SPACE)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._drop(fd, "its connection failed")
            return
        for level, kind, cdata in ancdata:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                fds.frombytes(cdata[: len(cdata) - len(cdata) % fds.itemsize])
        try:
            if client.leaving or (not data and not ancdata):
                self._drop(fd, "it closed the connection")
                return
            if flags & (socket.MSG_TRUNC | socket.MSG_CTRUNC):
                reply = protocol.error(None, f"message too long (at most {protocol.MAX_MESSAGE} bytes and "
                                       f"{protocol.MAX_FDS} fd)")
            else:
                reply = self._answer(client, data, list(fds))
        finally:
            for f in fds:
                os.close(f)  # the map keeps its own reference to a registered socket
        if reply is not None:
            self._send(fd, reply)
        if client.leaving and fd in self.conns:
            self._drop(fd, "it said bye")

    def _answer(self, client: Client, data: bytes, fds: list[int]) -> bytes | None:
        req_id = op = None
        try:
            req = protocol.decode_request(data, len(fds))
            req_id, op = req.id, req.op
            fields = self._do(client, req, fds)
            if not self.running and req.op == "stop":
                log.info("%s asked to stop", client.describe())
            return protocol.ok(req_id, **fields)
        except (ProtocolError, KbypassError, OSError) as e:  # OSError: a map update the kernel refused, say
            message = (e.strerror or str(e)) if isinstance(e, OSError) else (str(e) or type(e).__name__)
            if op in _CHANGES:  # a refused change (a conflict, a permission) is part of the story the log tells
                log.info("%s: refused %s: %s", client.describe(), op, message)
            return protocol.error(req_id, message)
        except Exception:  # a bug of ours: one client's request must not take everyone's steering down
            log.exception("%s: internal error", client.describe())
            return protocol.error(req_id, "internal error in the control plane (see its log)")

    def _do(self, client: Client, req: Request, fds: list[int]) -> dict:
        a = req.args
        if not client.greeted:
            if req.op != "hello":
                raise ProtocolError(f'say hello first: {{"op": "hello", "version": {protocol.VERSION}}}')
            if a["version"] != protocol.VERSION:
                raise ProtocolError(f"protocol version {a['version']} is not spoken here (version "
                                    f"{protocol.VERSION}): use the kbypass that started this control plane")
            client.greeted = True
            if "command" in a and client.command == "?":
                client.command = a["command"][:120]
            log.info("%s connected (uid %d)", client.describe(), client.uid)
            return {"version": protocol.VERSION, "client": client.cid, "server_pid": os.getpid()}
        if req.op == "hello":
            raise ProtocolError("hello once per connection")
        if req.op == "add":
            self._may_add(client, a["rule"])
            return {"rule_id": self.state.add_rule(client, a["iface"], a["rule"], a.get("priority", 100),
                                                  a.get("share", False), a.get("xdp_mode"))}
        if req.op == "remove":
            self.state.remove_rule(client, a["iface"], a["rule_id"])
            return {}
        if req.op == "register":
            if client.uid != 0:
                raise ProtocolError("only root clients register AF_XDP sockets")
            holder = self.state.holder_of_queue(a["iface"], a["queue"], but=client)
            if holder is not None:
                raise ProtocolError(f"queue {a['queue']} of {a['iface']} has {holder.describe()}'s socket: AF_XDP "
                                    "takes one socket pool per queue, so pick another queue")
            return {"group": self.state.register(client, a["iface"], a["queue"], fds[0], a.get("xdp_mode"))}
        if req.op == "unregister":
            self.state.unregister(client, a["iface"], a["queue"])
            return {}
        if req.op == "counters":
            return {"rules": self.state.counters(a["iface"]), "stats": self.state.stats(a["iface"])}
        if req.op == "status":
            return self.state.status()
        if req.op == "bye":
            self.state.drop_client(client)  # everything it owns goes now; the connection after the reply
            client.leaving = True
            return {}
        if req.op == "stop":
            others = [c for c in self.state.clients.values() if c is not client and c.greeted]
            if others and not a.get("force", False):
                raise ProtocolError(f"{len(others)} other client(s) connected ({others[0].describe()}...): "
                                    "stop them first, or force it (kbypass cp stop --force)")
            self.running = False
            return {}
        raise ProtocolError(f"unknown op {req.op!r}")  # decode_request lets only known ops through

    def _may_add(self, client: Client, text: str) -> None:
        if client.uid == 0:
            return
        try:
            rule = Rule.parse(text)
        except KbypassError:
            return  # add_rule reports the syntax error
        if rule.action != "redirect":
            raise ProtocolError(f"only root clients add {rule.action} rules")
        if rule.proto not in ("udp", "tcp") or rule.dport is None or rule.dport < 1024:
            raise ProtocolError("a non-root client steers UDP or TCP destination ports from 1024 up only: "
                                "name one, e.g. 'udp dport 5000'")
        if not self.allow_kernel_ports and rule.dport in kernel_ports(rule.proto):
            raise ProtocolError(f"{rule.proto} port {rule.dport} belongs to a kernel socket here: a non-root client "
                                "may not take it (start the control plane with --allow-kernel-ports to allow it)")

    def _send(self, fd: int, reply: bytes) -> None:
        conn, _ = self.conns[fd]
        try:
            conn.send(reply)
        except (BlockingIOError, InterruptedError):
            self._drop(fd, "it does not read its replies")
        except OSError:
            self._drop(fd, "its connection failed")

    def _drop(self, fd: int, why: str) -> None:
        conn, client = self.conns.pop(fd)
        self.sel.unregister(conn)
        conn.close()
        if client.greeted or client.rules or client.sockets:
            log.info("%s left: %s", client.describe(), why)
        self.state.drop_client(client)
        if not self.conns:
            self._idle_since = time.monotonic()


def _open_spare() -> int | None:
    try:
        return os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None


def _raise_fd_limit() -> None:
    """Soft RLIMIT_NOFILE up to the hard one: each client holds an fd, and the soft limit a tool passes on
    (often 1024) is no limit on how many programs of a namespace may steer."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


class AlreadyRunning(KbypassError):
    """Another control plane holds this namespace's lock."""


def serve(netns: str | None, *, users: str = "root", group: str | None = None, idle_exit: float = 0.0,
          allow_kernel_ports: bool = False) -> None:
    """Run a control plane for namespace `netns` (None: this one) until stopped (SIGTERM, SIGINT, `stop`)."""
    name = paths.namespace_name(netns)
    if netns is not None:
        _netns.switch(netns)  # for good: the whole process serves that namespace
    server = Server(name, users=users, group=group, idle_exit=idle_exit, allow_kernel_ports=allow_kernel_ports)

    def stop(signum, frame):
        server.stop_signal = signal.Signals(signum).name  # logged by close(): not from a signal handler
        server.running = False

    server.start()
    old = {s: signal.signal(s, stop) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        server.run()
    finally:
        for s, h in old.items():
            signal.signal(s, h)
        server.close()
