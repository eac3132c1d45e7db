"""`kbypass cp serve`: one control plane per network namespace, serving requests on a unix socket.

A single-threaded selectors loop (no asyncio: SCM_RIGHTS needs recvmsg, which asyncio's streams hide).
It runs inside the namespace it serves for its whole life (setns at start), so interface names resolve
there and the program attaches there.

Who may connect (`--users`): "root" (the default; socket mode 0600), "group NAME" (0660, owned by that
group) or "all" (0666). Root clients may do everything. Other clients may, on the interfaces the server
was started with (`--iface`, repeatable) only, add up to USER_RULES redirect rules for UDP/TCP destination
ports from 1024 up that no kernel socket of the namespace is bound to (unless the server runs with
`--allow-kernel-ports`), and remove their own; they cannot add drop/sample rules, attach the program to
any other interface, register AF_XDP sockets of their own (making one needs CAP_NET_RAW) or stop the
control plane, but they may have it make their sockets (`open_socket`, kbypass.cp.sockets: the socket and
its UMEM come back as fds). Nobody can remove another client's rules, and an overlapping rule of another
client is refused unless both share (kbypass.cp.state). A non-root client's `accelerate` rule goes when its proof
socket no longer keeps the port to itself (looked at every PROOF_TICK: kbypass.cp.accel.watch_proofs).

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
from .accel import (
    PROOF_SCAN,
    PROOF_TICK,
    Routes,
    bound_flow,
    check_exclusive,
    check_no_kernel_connections,
    connected_flow,
    flow_rule,
    handed_gone,
    port_owners,
    watch_proofs,
)
from .closer import Closer
from .paths import USERS
from .pool import SLICES as POOL_SLICES
from .pool import Member
from .protocol import DEFAULT_PRIORITY, ProtocolError, Request
from .shimpage import ShimPage
from .sockets import MadeSocket
from .state import Client, ControlPlane, parse_rule

log = logging.getLogger("kbypass.cp")

USER_RULES = 16  # rules one non-root user may hold (128 slots are shared by everyone)
USER_CONNECTIONS = 16  # connections one non-root user may have open
USER_SOCKETS = 4  # sockets the control plane makes for one non-root user ...
USER_UMEM = 64 << 20  # ... each with at most this much UMEM (pinned, and charged to root)
ACCEPT_PAUSE = 1.0  # seconds without accepting after running out of fds
_WAKE = object()  # the selector key's data of the wake-up pipe (Server.stop)
HELLO_TIMEOUT = 10.0  # seconds a connection may stay without its hello (it would keep an idle exit off)
LOCK_WAIT = 2.0  # seconds a starting control plane waits for one that is exiting
# Room for the most fds one message can carry (SCM_MAX_FD): fds that did not fit would be closed by the
# kernel inside recvmsg, where a lingering socket could block this loop (see kbypass.cp.closer).
_FD_SPACE = socket.CMSG_SPACE(253 * 4)
_CHANGES = {"hello", "add", "remove", "register", "unregister", "open_socket", "accelerate", "stop"}  # refusals logged


def _parent_of(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return int(f.read().rsplit(b")", 1)[1].split()[1])  # the field after the state; comm may hold ')'
    except (OSError, ValueError, IndexError):
        return 0


def _command_of(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            words = f.read().split(b"\0")
    except OSError:
        return "?"
    words = [w.decode(errors="replace") for w in words if w]
    if any("multiprocessing.spawn" in w for w in words):  # a worker (kbypass.apps.workers): its parent's command
        parent = _parent_of(pid)
        return f"{_command_of(parent)} [worker of pid {parent}]" if parent > 1 else "?"
    if len(words) > 1 and os.path.basename(words[0]).startswith("python"):
        words = words[1:]  # "python -m kbypass sink" reads better as "kbypass sink"
        if words[:2] == ["-m", "kbypass"]:
            words = ["kbypass", *words[2:]]
    if words:
        words[0] = os.path.basename(words[0])
    return printable(" ".join(words)) or "?"


def printable(text: str, limit: int = 120) -> str:
    """A client's words for our log and replies: one line, no control characters (a newline in a command
    line must not forge a log line)."""
    return "".join(c if c.isprintable() else "?" for c in text[:limit])


def kernel_ports(proto: str, except_uid: int | None = None) -> set[int]:
    """Ports kernel sockets of this namespace have bound, leaving out those whose every socket belongs to
    `except_uid`: a client's own placeholder socket (the UDP endpoint and kbypass.socket hold the port in the
    kernel while they serve it) does not bar it from its port."""
    return {port for port, uids in port_owners(proto).items() if uids != {except_uid}}


class Server:
    def __init__(self, name: str, *, users: str = "root", group: str | None = None, idle_exit: float = 0.0,
                 allow_kernel_ports: bool = False, ifaces: tuple[str, ...] = ()) -> None:
        if users not in USERS:
            raise UsageError(f"--users {users!r}: one of {', '.join(USERS)}")
        self.name = name
        self.users = users
        self.group = group
        self.idle_exit = idle_exit
        self.allow_kernel_ports = allow_kernel_ports
        self.ifaces = set(ifaces)  # the interfaces non-root clients may steer
        self.state = ControlPlane()
        self.closer = Closer()  # the fds clients send and the rules' proofs, closed off the loop
        self.state.close_fd = self.closer.close
        self.routes = Routes()  # the preload shim's addresses and next hops (kbypass.cp.accel)
        self.sel = selectors.DefaultSelector()
        self.conns: dict[int, tuple[socket.socket, Client]] = {}
        self.running = True
        self._lock_fd: int | None = None
        self.listener: socket.socket | None = None
        self._idle_since = time.monotonic()
        self._paused_until: float | None = None  # accepting paused (out of fds) until then
        self._spare: int | None = None  # an fd kept in reserve to turn clients away when fds run out
        self._fd_short = False
        self.stop_signal: str | None = None  # set by serve()'s signal handler
        self._wake: tuple[int, int] | None = None  # a pipe: Server.stop wakes the loop's select through it
        self._proofs_due = self._scan_due = 0.0  # when the non-root proofs are next looked at (_watch_proofs)
        self._list_failures: dict[str, int] = {}  # ticks in a row a socket table could not be read, by protocol

    # ---- start and stop --------------------------------------------------------------------------

    def start(self) -> None:
        paths.check_run_dir()
        # 0600 and no symlink: a lock anyone can open is a lock anyone can hold, and keep every control
        # plane of the namespace from starting (flock works on a read-only fd)
        self._lock_fd = paths.open_private(paths.lock_path(self.name))
        deadline = time.monotonic() + LOCK_WAIT
        while True:  # a control plane that is on its way out (idle exit, stop) lets go of the lock soon
            try:
                fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() < deadline:
                    time.sleep(0.02)
                    continue
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
        self._wake = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self.sel.register(self._wake[0], selectors.EVENT_READ, _WAKE)
        log.info("serving namespace %s on %s (pid %d, users: %s)", self.name, path, os.getpid(),
                 self.users if self.users != "group" else f"group {self.group}")

    def close(self) -> None:
        if self.stop_signal is not None:
            log.info("stopping on %s with %d client(s) connected", self.stop_signal, len(self.conns))
        for fd in list(self.conns):
            self._drop(fd, "the control plane stops")
        self.state.close()
        self.routes.close()
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
        if self._wake is not None:
            for fd in self._wake:
                os.close(fd)
            self._wake = None
        log.info("stopped")

    def stop(self, signal_name: str) -> None:
        """End the loop now (from a signal handler). select() resumes after a handler returns (PEP 475), so
        the pipe wakes it: without it every stop waited out select's timeout (0.5 s)."""
        self.stop_signal = signal_name  # logged by close(): not from a signal handler
        self.running = False
        if self._wake is not None:
            with contextlib.suppress(OSError):  # full: a wake-up is already pending
                os.write(self._wake[1], b"\0")

    # ---- the loop --------------------------------------------------------------------------------

    def run(self) -> None:
        while self.running:
            for key, _ in self.sel.select(timeout=min(0.5, self._watch_proofs())):
                if key.data is _WAKE:
                    continue  # stop() was called: self.running is False
                if key.data is None:
                    self._accept()
                else:
                    self._serve_one(key.fd)
            self._drop_silent()
            self._resume_accepting()
            if self.idle_exit and not self.conns and time.monotonic() - self._idle_since > self.idle_exit:
                self._accept()  # one that connected just now keeps us (a later one starts a new control plane)
                if not self.conns:
                    log.info("no clients for %gs: exiting (--idle-exit)", self.idle_exit)
                    self.running = False

    def _watch_proofs(self, now: bool = False) -> float:
        """Remove each non-root app's `accelerate` rule whose proof no longer keeps its port to itself (kbypass.cp.
        accel.watch_proofs: the app shares that socket and may open its port to other users after the check): every
        PROOF_TICK while there are such proofs, with a scan of the TCP sockets every PROOF_SCAN, and `now` (before
        a new rule: one exposed since the last look must not keep it out; no scan here: check_exclusive scans the
        new rule's own port). The seconds until the next look."""
        t = time.monotonic()
        if now or t >= self._proofs_due:
            scan = t >= self._scan_due
            exposed, watching = watch_proofs(self.state, scan, self._list_failures)
            self._proofs_due = t + (PROOF_TICK if watching or now else 0.5)  # now: a rule may follow
            if scan:
                self._scan_due = t + PROOF_SCAN
            gone = [(c, i, r, None) for c, i, r in handed_gone(self.state)] if scan else []
            for client, iface, rule_id, why in exposed + gone:
                if why is None:
                    log.info("%s: removed pass rule %d on %s: its kernel connection is gone", client.describe(),
                             rule_id, iface)
                else:
                    log.warning("%s: removed rule %d on %s, its port no longer the app's alone: %s",
                                client.describe(), rule_id, iface, why)
                try:
                    self.state.remove_rule(client, iface, rule_id)
                except (ProtocolError, KbypassError, OSError) as e:  # the books follow anyway (state._remove_rule)
                    log.error("%s: could not remove rule %d on %s: %s", client.describe(), rule_id, iface, e)
        return max(0.0, self._proofs_due - t)

    def _pause_accepting(self, why: str) -> None:
        """The listener stays readable while accept fails: unwatched for a second, it cannot spin the loop."""
        if self._paused_until is None:
            log.warning("cannot accept clients (%s): not accepting for %gs", why, ACCEPT_PAUSE)
            self.sel.unregister(self.listener)
        self._paused_until = time.monotonic() + ACCEPT_PAUSE

    def _resume_accepting(self) -> None:
        if self._paused_until is not None and time.monotonic() >= self._paused_until:
            self._paused_until = None
            self.sel.register(self.listener, selectors.EVENT_READ, None)

    def _drop_silent(self) -> None:
        now = time.monotonic()
        for fd, (_, client) in list(self.conns.items()):
            if not client.greeted and now - client.since > HELLO_TIMEOUT:
                self._drop(fd, f"no hello within {HELLO_TIMEOUT:g}s")

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
                    self._pause_accepting(e.strerror)  # no spare fd either: stop listening a while
                    return
                continue
            if self._fd_short:
                log.info("accepting clients again (%d connected)", len(self.conns))
                self._fd_short = False
            conn.setblocking(False)
            pid, uid, _gid = struct.unpack("3i", conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12))
            if uid != 0 and sum(1 for _, c in self.conns.values() if c.uid == uid) >= USER_CONNECTIONS:
                conn.close()  # one user cannot use up the fds (and socket groups) everyone shares
                log.warning("refused a connection of uid %d: it has %d already", uid, USER_CONNECTIONS)
                continue
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
        try:
            data, ancdata, flags, _ = conn.recvmsg(protocol.MAX_MESSAGE + 1, _FD_SPACE)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._drop(fd, "its connection failed")
            return
        fds = protocol.received_fds(ancdata)
        made = None
        try:
            if client.leaving or (not data and not ancdata):
                self._drop(fd, "it closed the connection")
                return
            if flags & (socket.MSG_TRUNC | socket.MSG_CTRUNC):
                reply = protocol.error(None, f"message too long (at most {protocol.MAX_MESSAGE} bytes and "
                                       f"{protocol.MAX_FDS} fd)")
                made = None
            else:
                reply, made = self._answer(client, data, fds)
        finally:
            for f in fds:
                self.closer.close(f)  # the map keeps its own reference to a registered socket
        try:
            if reply is not None:
                self._send(fd, reply, made.fds if made is not None else ())
        finally:
            if made is not None:
                made.close()  # the client's fds and the map keep the socket (kbypass.cp.sockets)
        if client.leaving and fd in self.conns:
            self._drop(fd, "it said bye")

    def _answer(self, client: Client, data: bytes, fds: list[int]) -> tuple[bytes, MadeSocket | Member | None]:
        """The reply, and the socket made for it (open_socket) whose fds go with it."""
        req_id = op = None
        try:
            req = protocol.decode_request(data, len(fds))
            req_id, op = req.id, req.op
            if req.op == "open_socket" and client.greeted:
                made = self._open_socket(client, req.args)
                return protocol.ok(req_id, **made.reply(client.group)), made
            fields = self._do(client, req, fds)
            if not self.running and req.op == "stop":
                log.info("%s asked to stop", client.describe())
            return protocol.ok(req_id, **fields), None
        except (ProtocolError, KbypassError, OSError) as e:  # OSError: a map update the kernel refused, say
            message = (e.strerror or str(e)) if isinstance(e, OSError) else (str(e) or type(e).__name__)
            if op in _CHANGES:  # a refused change (a conflict, a permission) is part of the story the log tells,
                # once: an app that asks again (a fork's child looking to adopt its listener) repeats it at debug
                seen = (op, message) in client.refusals
                if len(client.refusals) < 64:  # bounded: a client's varied refusals, past that, each at info
                    client.refusals.add((op, message))
                log.log(logging.DEBUG if seen else logging.INFO, "%s: refused %s: %s%s", client.describe(), op,
                        message, " (again)" if seen else "")
            return protocol.error(req_id, message, getattr(e, "retry", False)), None
        except Exception:  # a bug of ours: one client's request must not take everyone's steering down
            log.exception("%s: internal error", client.describe())
            return protocol.error(req_id, "internal error in the control plane (see its log)"), None

    def _open_socket(self, client: Client, a: dict):
        """Make an AF_XDP socket and its UMEM for the client (or its member socket of the queue's shared pool:
        share_queue) and register it as `register` does; the caller sends its fds with the reply and closes
        ours."""
        share = a.get("share_queue", False)
        self._queue_free(client, a["iface"], a["queue"], share)
        if client.uid != 0:
            self._may_open(client, a, share)
        sizes = {k: a[k] for k in ("frames", "frame_size", "rx_size", "tx_size", "fill_size", "comp_size")}
        if share:
            return self.state.join_pool(client, a["iface"], a["queue"], {**sizes, "headroom": a.get("headroom", 0),
                                                                          "multi_buffer": a.get("multi_buffer", False)},
                                        a.get("mode", "auto"), a.get("xdp_mode"))
        made = MadeSocket(a["iface"], a["queue"], headroom=a.get("headroom", 0), mode=a.get("mode", "auto"),
                          multi_buffer=a.get("multi_buffer", False), **sizes)
        try:
            self.state.register(client, a["iface"], a["queue"], made.fd, a.get("xdp_mode"))
        except BaseException:
            made.close()
            raise
        log.info("%s: made the socket of queue %d of %s (%s mode, %d frames of %d bytes)", client.describe(),
                 a["queue"], a["iface"], made.xsk.mode, a["frames"], a["frame_size"])
        return made

    def _may_use(self, iface: str) -> None:
        """A non-root client's interface: one the control plane was started to let users steer."""
        if iface not in self.ifaces:
            raise ProtocolError(f"a non-root client may steer only the interfaces the control plane was started "
                                f"with (--iface: {', '.join(sorted(self.ifaces)) or 'none'}), not {iface!r}")

    def _may_open(self, client: Client, a: dict, share: bool = False) -> None:
        """A non-root user's sockets pin memory charged to the control plane (root): bounded per user, and
        only on the interfaces it may steer. A shared queue's UMEM is the pool's, all its slices."""
        self._may_use(a["iface"])
        umem = a["frames"] * a["frame_size"] * (POOL_SLICES if share else 1)
        if umem > USER_UMEM:
            more = f" ({POOL_SLICES} slices of --frames for a shared queue)" if share else ""
            raise ProtocolError(f"a non-root client's UMEM is {USER_UMEM >> 20} MiB at most{more}: fewer --frames")
        if sum(len(c.sockets) for _, c in self.conns.values() if c.uid == client.uid) >= USER_SOCKETS:
            raise ProtocolError(f"a non-root user has {USER_SOCKETS} sockets at most: close one first")

    def _queue_free(self, client: Client, iface: str, queue: int, share: bool = False) -> None:
        """The client may put a socket on the queue: nobody holds it, or (share) its holders share it."""
        if (iface, queue) in client.sockets:
            raise ProtocolError(f"you have a socket for queue {queue} of {iface} already: unregister it first")
        pool = self.state.pool_of(iface, queue)
        if share and pool is not None:
            if pool.uid != client.uid:  # members see each other's packets in the shared UMEM
                raise ProtocolError(f"queue {queue} of {iface} is shared by uid {pool.uid}'s programs, which see "
                                    "each other's packets: pick another queue")
            return
        holder = self.state.holder_of_queue(iface, queue, but=client)
        if holder is None:
            return
        if pool is not None:
            raise ProtocolError(f"queue {queue} of {iface} is shared by {holder.describe()} and its other members: "
                                "ask to share it too (--share-queue), or pick another queue")
        why = ("which does not share it: start both with --share-queue, or pick another queue" if share else
               "AF_XDP takes one socket pool per queue, so pick another queue, or have both share it "
               "(--share-queue)")
        raise ProtocolError(f"queue {queue} of {iface} has {holder.describe()}'s socket, {why}")

    def _do(self, client: Client, req: Request, fds: list[int]) -> dict:
        a = req.args
        if not client.greeted:
            if req.op != "hello":
                raise ProtocolError(f'say hello first: {{"op": "hello", "version": {protocol.VERSION}}}')
            if a["version"] != protocol.VERSION:
                raise ProtocolError(f"protocol version {a['version']} is not spoken here (version "
                                    f"{protocol.VERSION}): use the kbypass that started this control plane")
            client.greeted = True
            if "command" in a and client.command == "?":  # its own word: only when /proc had none
                client.command = f"({printable(a['command'])})"
            log.info("%s connected (uid %d)", client.describe(), client.uid)
            return {"version": protocol.VERSION, "client": client.cid, "server_pid": os.getpid()}
        if req.op == "hello":
            raise ProtocolError("hello once per connection")
        if req.op in ("add", "accelerate", "handed"):
            self._watch_proofs(now=True)  # a rule exposed since the last tick must not keep a new one out
        if req.op == "add":
            rule = parse_rule(a["rule"])
            self._may_add(client, a["iface"], rule)
            priority, share, xdp_mode = a.get("priority", DEFAULT_PRIORITY), a.get("share", False), a.get("xdp_mode")
            if client.uid != 0:
                # never ahead of root's default, never shared, and the attach mode is root's to choose
                priority, share, xdp_mode = max(priority, DEFAULT_PRIORITY), False, None
            return {"rule_id": self.state.add_rule(client, a["iface"], rule, priority, share, xdp_mode)}
        if req.op == "remove":
            self.state.remove_rule(client, a["iface"], a["rule_id"])
            return {}
        if req.op == "register":
            if client.uid != 0:
                raise ProtocolError("only root clients register AF_XDP sockets")
            self._queue_free(client, a["iface"], a["queue"])
            return {"group": self.state.register(client, a["iface"], a["queue"], fds[0], a.get("xdp_mode"))}
        if req.op == "unregister":
            self.state.unregister(client, a["iface"], a["queue"])
            return {}
        if req.op == "accelerate":
            return self._accelerate(client, fds[0], a.get("peer"), a.get("peer_port"))
        if req.op == "handed":
            return self._handed(client, fds[0])
        if req.op == "next_hop":
            if (a["iface"], 0) not in client.sockets:
                raise ProtocolError(f"next_hop: open a socket on {a['iface']!r} first")
            return {"mac": self.routes.next_hop(a["iface"], a["dst"])}
        if req.op == "shim_page":
            if client.shim_page is not None:
                raise ProtocolError("shim_page: once per connection")
            client.shim_page = ShimPage(fds[0])
            return {}
        if req.op == "counters":
            return {"rules": self.state.counters(a["iface"]), "stats": self.state.stats(a["iface"])}
        if req.op == "status":
            return {**self.state.status(), "users": self.users, "group": self.group, "idle_exit": self.idle_exit,
                    "ifaces": sorted(self.ifaces)}
        if req.op == "bye":
            self.state.drop_client(client)  # everything it owns goes now; the connection after the reply
            client.leaving = True
            return {}
        if req.op == "stop":
            if client.uid != 0:
                raise ProtocolError("only root stops the control plane")
            others = [c for c in self.state.clients.values() if c is not client and c.greeted]
            if others and not a.get("force", False):
                raise ProtocolError(f"{len(others)} other client(s) connected ({others[0].describe()}...): "
                                    "stop them first, or force it (kbypass cp stop --force)")
            self.running = False
            return {}
        raise ProtocolError(f"unknown op {req.op!r}")  # decode_request lets only known ops through

    def _accelerate(self, client: Client, fd: int, peer: str | None = None, peer_port: int | None = None) -> dict:
        """Steer the flow of the app's own bound UDP or TCP socket to its sockets (kbypass.cp.accel): the socket
        proves the port is the app's, so it needs no --allow-kernel-ports; the rest is `add`'s policy."""
        proto, ip, port = bound_flow(fd)
        iface, addr = self.routes.place(ip, self.ifaces)
        if client.uid != 0:
            self._may_use(iface)
            if sum(len(c.rules) for _, c in self.conns.values() if c.uid == client.uid) >= USER_RULES:
                raise ProtocolError(f"a non-root user has {USER_RULES} rules at most: close a socket first")
        rule = flow_rule(proto, str(addr.ip), port, peer, peer_port)
        if self.state.has_rule(client, iface, rule):  # the other clients' are refused by add_rule's overlap check
            raise ProtocolError(f"{proto} {addr.ip}:{port} is accelerated for another socket of this app already "
                                "(SO_REUSEPORT): this one stays on the kernel, and that one gets all the port's "
                                "datagrams")
        if client.uid != 0:
            check_exclusive(fd, proto, port, client.uid, str(addr.ip))
        if proto == "tcp" and peer is None:  # a 4-tuple's rule takes no other connection's segments
            check_no_kernel_connections(fd, str(addr.ip), port)
        proof = os.dup(fd)  # the rule's: the port stays taken in the kernel for as long as the rule steers it
        try:
            rule_id = self.state.add_rule(client, iface, rule, proof=proof)
        except BaseException:
            self.closer.close(proof)
            raise
        return {**self.routes.describe(iface, addr), "port": port, "rule_id": rule_id}

    def _handed(self, client: Client, fd: int) -> dict:
        """A pass rule for a connection the app handed to the kernel's TCP while its own rule steers the connection's
        segments (kbypass.cp.accel's doc), just ahead of the default priority: the connected socket proves the
        4-tuple, the client's own redirect rule over it that the handoff needs one. Root's only (a handoff takes
        TCP_REPAIR, CAP_NET_ADMIN: a non-root app never has one to ask for), once per 4-tuple."""
        if client.uid != 0:
            raise ProtocolError("only root clients hand connections to the kernel (TCP_REPAIR needs CAP_NET_ADMIN)")
        ip, port, peer, peer_port = connected_flow(fd)
        iface, _ = self.routes.place(ip, self.ifaces)
        rule = parse_rule(flow_rule("tcp", ip, port, peer, peer_port) + " pass")
        if self.state.has_rule(client, iface, rule):
            raise ProtocolError(f"handed: tcp {peer}:{peer_port} -> {ip}:{port} has its pass rule already")
        if not self.state.steers(client, iface, rule):
            raise ProtocolError(f"handed: no rule of yours steers tcp {peer}:{peer_port} -> {ip}:{port}: its "
                                "segments reach the kernel already")
        return {"rule_id": self.state.add_rule(client, iface, rule, DEFAULT_PRIORITY - 1,
                                               kernel_flow=(ip, port, peer, peer_port))}

    def _may_add(self, client: Client, iface: str, rule: Rule) -> None:
        """What a non-root client may steer (the module doc): root clients may add anything."""
        if client.uid == 0:
            return
        self._may_use(iface)
        if sum(len(c.rules) for _, c in self.conns.values() if c.uid == client.uid) >= USER_RULES:
            raise ProtocolError(f"a non-root user has {USER_RULES} rules at most: remove one first")
        if rule.action != "redirect":
            raise ProtocolError(f"only root clients add {rule.action} rules")
        if rule.proto not in ("udp", "tcp") or rule.dport is None or rule.dport < 1024:
            raise ProtocolError("a non-root client steers UDP or TCP destination ports from 1024 up only: "
                                "name one, e.g. 'udp dport 5000'")
        if not self.allow_kernel_ports and rule.dport in kernel_ports(rule.proto, client.uid):
            raise ProtocolError(f"{rule.proto} port {rule.dport} belongs to a kernel socket here: a non-root client "
                                "may not take it (start the control plane with --allow-kernel-ports to allow it)")

    def _send(self, fd: int, reply: bytes, fds: tuple[int, ...] = ()) -> None:
        conn, _ = self.conns[fd]
        anc = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))] if fds else []
        try:
            conn.sendmsg([reply], anc)
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
          allow_kernel_ports: bool = False, ifaces: tuple[str, ...] = ()) -> None:
    """Run a control plane for namespace `netns` (None: this one) until stopped (SIGTERM, SIGINT, `stop`)."""
    name = paths.namespace_name(netns)
    if netns is not None:
        _netns.switch(netns)  # for good: the whole process serves that namespace
    _leave_the_starters_cpu()
    server = Server(name, users=users, group=group, idle_exit=idle_exit, allow_kernel_ports=allow_kernel_ports,
                    ifaces=ifaces)

    def stop(signum, frame):
        server.stop(signal.Signals(signum).name)

    server.start()
    old = {s: signal.signal(s, stop) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        server.run()
    finally:
        for s, h in old.items():
            signal.signal(s, h)
        server.close()


def _leave_the_starters_cpu() -> None:
    """A tool that starts the control plane may be pinned to an isolated, busy-polled core (`--cpu`) or run
    at real-time priority: its daemon must not inherit that."""
    try:
        os.sched_setaffinity(0, range(os.cpu_count() or 1))
        os.sched_setscheduler(0, os.SCHED_OTHER, os.sched_param(0))
        os.setpriority(os.PRIO_PROCESS, 0, 0)
    except OSError as e:
        log.warning("could not reset CPU affinity and scheduling: %s", e.strerror)
