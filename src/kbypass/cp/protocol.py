"""The control plane's request protocol, sans-IO: messages in and out as bytes, checked field by field.

Transport: a unix SOCK_SEQPACKET socket (one datagram = one message, so there are no half-read
requests, and the kernel reports a client's death as end of file). A message is one UTF-8 JSON object of
at most MAX_MESSAGE bytes. AF_XDP socket fds travel beside a message as SCM_RIGHTS.

Requests: {"op": OP, "id": N, ...fields}. `id` (optional, any integer) is echoed in the reply so a
client can match them. The first request of a connection must be `hello` with the client's protocol
`version`; the server answers with its own and refuses a major version it does not speak.

    op           fields (? = optional)                               reply fields
    hello        version, command?                                   version, client, server_pid
    add          iface, rule, priority?, share?, xdp_mode?           rule_id
    remove       iface, rule_id                                      -
    register     iface, queue, xdp_mode?  + one AF_XDP socket fd     group
    open_socket  iface, queue, frames, frame_size, rx_size, tx_size,  group, mode, frames, frame_size, headroom,
                 fill_size, comp_size, headroom?, mode?, xdp_mode?,   rx_size, tx_size, fill_size, comp_size,
                 share_queue?, multi_buffer?                         shared_queue?, multi_buffer + two fds: the AF_XDP socket,
                                                                     its UMEM memfd (+ the pool lock's memfd)
    unregister   iface, queue                                        -
    accelerate   peer?, peer_port? + the app's bound UDP or TCP      iface, ifindex, mac, mtu, ip, prefixlen,
                 socket fd (peer: a TCP active open's, steered by    queues, port, rule_id   (kbypass.cp.accel)
                 its 4-tuple)
    handed       -  + a TCP connection's kernel socket fd (kbypass    rule_id   (a pass rule of its 4-tuple:
                 run handed it to the kernel's TCP)                  kbypass.cp.accel)
    next_hop     iface, dst                                          mac ("" while the kernel resolves it)
    shim_page    -  + a memfd of the shim's socket counters          -   (read by status; kbypass.cp.shimpage)
    counters     iface                                               rules: [{rule_id, rule, owner, packets,
                                                                     bytes}], stats: {unmatched, parse_errors,
                                                                     not_ip} (kbypass.steer.SteerStats)
    status       -                                                   clients, interfaces
    stop         force?                                              -
    bye          -                                                   -   (then the server hangs up)

`bye` removes the client's rules and sockets before the reply, so a client that says it before closing
knows they are gone (closing alone removes them too, a moment later).

Replies: {"ok": true, "id": N, ...} or {"ok": false, "id": N, "error": "one line naming the fix"}.
Every request that fails validation gets an error reply; the connection stays usable.

`open_socket` is `register` for a client that cannot make an AF_XDP socket (an unprivileged one): the
control plane makes the UMEM (`frames * frame_size` bytes in a sealed memfd) and the socket (rings of the
given sizes, bound to the queue with XDP_USE_NEED_WAKEUP in bind `mode` auto|copy|zerocopy, default
auto), registers it for the client as `register` does, and sends both fds with the reply; the reply's
`mode` is the bind mode in force (copy or zerocopy). The client maps the memfd MAP_SHARED and the four
rings from the socket (kbypass.xsk.socket.XskSocket with `fd=`). Bounds (checked here): queue 0-63,
frame_size 2048 or 4096, frames 64 to 2^18, headroom 0 to frame_size - 512, ring sizes powers of two
from 64 to 65536.

`multi_buffer`: bind with XDP_USE_SG too (packets larger than a frame arrive as chains of frames,
kbypass.xsk.multibuf); with share_queue, the pool's anchor is bound with it (its members take it from the
shared UMEM) and every member must ask the same (kbypass.cp.pool).

`share_queue`: several clients of one user receive on one queue, each on its own socket over one shared
UMEM (kbypass.cp.pool): the first one's request makes the pool, the others join it with the same frames,
frame_size and headroom. The reply's sizes are the pool's (`frames` is the whole pool), `shared_queue` is
{first, count}, the member's slice of frames to start from, and a third fd comes with it: the pool's lock
(kbypass.xsk.pool_lock), taken around the shared fill and completion rings. A queue is either shared by
all its sockets or held by one.

`rule` is a rule's text form (kbypass.steer.rules). `priority` orders rules across clients (lower first,
default 100; equal priorities keep arrival order). `share`: overlapping rules of other clients are
allowed only when both ask to share (then the first in priority order takes the packets).
"""

from __future__ import annotations

import array
import json
import socket
from dataclasses import dataclass, field

from kbypass.errors import KbypassError

VERSION = 1
MAX_MESSAGE = 65536  # bytes of one message, either way
MAX_FDS = 1  # fds a request may carry (register's AF_XDP socket, accelerate's UDP socket, a shim page)
MAX_REPLY_FDS = 3  # fds a reply may carry (open_socket's AF_XDP socket, UMEM memfd and a shared queue's lock)
DEFAULT_PRIORITY = 100

_STR, _INT, _BOOL = "text", "integer", "true or false"

# op -> {field: (kind, required)}
OPS: dict[str, dict[str, tuple[str, bool]]] = {
    "hello": {"version": (_INT, True), "command": (_STR, False)},
    "add": {"iface": (_STR, True), "rule": (_STR, True), "priority": (_INT, False), "share": (_BOOL, False),
            "xdp_mode": (_STR, False)},
    "remove": {"iface": (_STR, True), "rule_id": (_INT, True)},
    "register": {"iface": (_STR, True), "queue": (_INT, True), "xdp_mode": (_STR, False)},
    "open_socket": {"iface": (_STR, True), "queue": (_INT, True), "frames": (_INT, True),
                    "frame_size": (_INT, True), "rx_size": (_INT, True), "tx_size": (_INT, True),
                    "fill_size": (_INT, True), "comp_size": (_INT, True), "headroom": (_INT, False),
                    "mode": (_STR, False), "xdp_mode": (_STR, False), "share_queue": (_BOOL, False),
                    "multi_buffer": (_BOOL, False)},
    "unregister": {"iface": (_STR, True), "queue": (_INT, True)},
    "accelerate": {"peer": (_STR, False), "peer_port": (_INT, False)},
    "handed": {},
    "next_hop": {"iface": (_STR, True), "dst": (_STR, True)},
    "shim_page": {},
    "counters": {"iface": (_STR, True)},
    "status": {},
    "stop": {"force": (_BOOL, False)},
    "bye": {},
}
TAKES_FD = {"register", "accelerate", "handed", "shim_page"}
_INT_RANGE = (-(2**63), 2**63 - 1)

# open_socket's bounds: the UMEM and rings the control plane makes (and pins, on its own account)
MAX_QUEUE = 63  # STEER_MAX_QUEUES - 1: the XSKMAP row of a socket group
FRAME_SIZES = (2048, 4096)
FRAMES = (64, 1 << 18)
RING_SIZES = (64, 1 << 16)
BIND_MODES = ("auto", "copy", "zerocopy")


def _power_of_two(v: int) -> bool:
    return RING_SIZES[0] <= v <= RING_SIZES[1] and not v & (v - 1)


_RING = (_power_of_two, f"a power of two from {RING_SIZES[0]} to {RING_SIZES[1]}")
# op -> {field: (check, what it must be)}: values the kind alone does not bound
VALUES: dict[str, dict] = {
    "open_socket": {
        "queue": (lambda v: 0 <= v <= MAX_QUEUE, f"a queue id from 0 to {MAX_QUEUE}"),
        "frames": (lambda v: FRAMES[0] <= v <= FRAMES[1], f"a number of frames from {FRAMES[0]} to {FRAMES[1]}"),
        "frame_size": (lambda v: v in FRAME_SIZES, "2048 or 4096"),
        "rx_size": _RING, "tx_size": _RING, "fill_size": _RING, "comp_size": _RING,
        "mode": (lambda v: v in BIND_MODES, "one of " + ", ".join(BIND_MODES)),
    },
}


class ProtocolError(KbypassError):
    """A request the server cannot act on; its message goes back to the client as the error. retry: the same
    request may succeed later without the client changing anything (another client's rule holds the flow, live
    kernel connections have it): the reply says `"retry": true`; without it a refusal is for good."""

    def __init__(self, message: str = "", retry: bool = False) -> None:
        super().__init__(message)
        self.retry = retry


class ControlPlaneError(KbypassError):
    """The control plane answered a request with an error (raised on the client side)."""


class ControlPlaneMissing(ControlPlaneError):
    """No control plane serves the namespace (and none was to be started)."""


class ControlPlaneGone(ControlPlaneError):
    """The control plane closed the connection (it stopped or died): what it held for the client is gone."""


@dataclass(frozen=True)
class Request:
    op: str
    args: dict = field(default_factory=dict)
    id: int | None = None


def _kind_ok(value, kind: str) -> bool:
    if kind == _BOOL:
        return isinstance(value, bool)
    if kind == _INT:
        return isinstance(value, int) and not isinstance(value, bool) and _INT_RANGE[0] <= value <= _INT_RANGE[1]
    return isinstance(value, str) and 0 < len(value) <= 1024 and "\0" not in value


def decode_request(data: bytes, nfds: int = 0) -> Request:
    """Check one request message (and how many fds came with it); ProtocolError says what is wrong."""
    if len(data) > MAX_MESSAGE:
        raise ProtocolError(f"request of {len(data)} bytes: at most {MAX_MESSAGE}")
    try:
        msg = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise ProtocolError("a request is one UTF-8 JSON object, e.g. {\"op\": \"status\"}") from None
    if not isinstance(msg, dict):
        raise ProtocolError("a request is a JSON object with an \"op\" field")
    req_id = msg.pop("id", None)
    if req_id is not None and not _kind_ok(req_id, _INT):
        raise ProtocolError("\"id\" must be an integer")
    op = msg.pop("op", None)
    if op not in OPS:
        raise ProtocolError(f"unknown op {op!r}: one of {', '.join(OPS)}")
    spec = OPS[op]
    for name, value in msg.items():
        if name not in spec:
            raise ProtocolError(f"{op}: unknown field {name!r} (fields: {', '.join(spec) or 'none'})")
        kind = spec[name][0]
        if not _kind_ok(value, kind):
            raise ProtocolError(f"{op}: {name!r} must be {kind}")
    missing = [name for name, (_, required) in spec.items() if required and name not in msg]
    if missing:
        raise ProtocolError(f"{op}: missing {', '.join(repr(m) for m in missing)}")
    for name, (check, what) in VALUES.get(op, {}).items():
        if name in msg and not check(msg[name]):
            raise ProtocolError(f"{op}: {name} {msg[name]!r}: use {what}")
    if op == "open_socket" and not 0 <= msg.get("headroom", 0) <= msg["frame_size"] - 512:
        raise ProtocolError(f"open_socket: headroom {msg['headroom']!r}: use 0 to frame_size - 512 "
                            f"({msg['frame_size'] - 512}), which leaves room for a packet")
    want = 1 if op in TAKES_FD else 0
    if nfds != want:
        raise ProtocolError(f"{op}: send {want} file descriptor(s) with it, not {nfds}")
    return Request(op, msg, req_id)


def received_fds(ancdata) -> list[int]:
    """The file descriptors of a recvmsg's SCM_RIGHTS ancillary data (whoever receives them closes them)."""
    fds = array.array("i")
    for level, kind, cdata in ancdata:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds.frombytes(cdata[: len(cdata) - len(cdata) % fds.itemsize])
    return list(fds)


def encode(msg: dict) -> bytes:
    data = json.dumps(msg, separators=(",", ":")).encode()
    if len(data) > MAX_MESSAGE:
        raise ProtocolError(f"message of {len(data)} bytes: at most {MAX_MESSAGE}")
    return data


def request(op: str, req_id: int | None = None, **args) -> bytes:
    msg = {"op": op, **args}
    if req_id is not None:
        msg["id"] = req_id
    return encode(msg)


def ok(req_id: int | None, **fields) -> bytes:
    return encode({"ok": True, "id": req_id, **fields})


def error(req_id: int | None, message: str, retry: bool = False) -> bytes:
    return encode({"ok": False, "id": req_id, "error": message, **({"retry": True} if retry else {})})


def decode_reply(data: bytes, req_id: int | None = None) -> dict:
    """The reply's fields; an error reply raises ControlPlaneError with the server's message. With `req_id`,
    a reply to another request is an error too (requests are answered in order, one at a time)."""
    try:
        msg = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise ControlPlaneError("the control plane sent a reply that is not JSON: is it a kbypass cp?") from None
    if not isinstance(msg, dict) or "ok" not in msg:
        raise ControlPlaneError("the control plane sent a malformed reply: is it a kbypass cp of this version?")
    if req_id is not None and msg.get("id") not in (req_id, None):
        raise ControlPlaneError(f"the control plane answered request {msg.get('id')} when {req_id} was asked: "
                                "one connection, one thread at a time")
    if not msg["ok"]:
        raise ControlPlaneError(str(msg.get("error", "the control plane refused the request")))
    return msg
