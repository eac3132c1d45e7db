"""The control plane's requests for the preload shim (kbypass.cp.accel, kbypass.cp.shimpage), without a network:
the socket an app sends is the only source of the flow, and the counters page is mapped only when it is a
sealed memfd of the right layout."""

from __future__ import annotations

import errno
import fcntl
import json
import mmap
import os
import socket
import struct
import time
from types import SimpleNamespace

import pytest

from kbypass.cp import accel, protocol, shimpage, sockdiag
from kbypass.cp.accel import (
    bound_flow,
    check_exclusive,
    check_no_kernel_connections,
    connected_flow,
    exposure,
    flow_owners,
    flow_rule,
    handed_gone,
    kernel_connections,
    port_owners,
    socket_cookie,
    watch_proofs,
)
from kbypass.cp.protocol import ProtocolError
from kbypass.steer.rules import Rule


def test_accelerate_and_shim_page_take_exactly_one_fd():
    assert protocol.decode_request(b'{"op":"accelerate"}', 1).op == "accelerate"
    with pytest.raises(ProtocolError, match="send 1 file descriptor"):
        protocol.decode_request(b'{"op":"accelerate"}', 0)
    with pytest.raises(ProtocolError, match="unknown field"):
        protocol.decode_request(b'{"op":"accelerate","ip":"10.0.0.1"}', 1)  # the address is the socket's
    with pytest.raises(ProtocolError, match="send 1 file descriptor"):
        protocol.decode_request(b'{"op":"shim_page"}', 0)
    assert protocol.decode_request(b'{"op":"next_hop","iface":"x","dst":"10.0.0.1"}').args["dst"] == "10.0.0.1"
    with pytest.raises(ProtocolError, match="missing 'dst'"):
        protocol.decode_request(b'{"op":"next_hop","iface":"x"}')


def test_the_flow_is_read_from_the_bound_socket():
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        with pytest.raises(ProtocolError, match="bind the socket first"):
            bound_flow(s.fileno())
        s.bind(("127.0.0.1", 0))
        assert bound_flow(s.fileno()) == ("udp", "127.0.0.1", s.getsockname()[1])
        assert s.fileno() >= 0  # not closed by the check
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as t:  # kbypass run's TCP: listening or connecting
        t.bind(("127.0.0.1", 0))
        assert bound_flow(t.fileno()) == ("tcp", "127.0.0.1", t.getsockname()[1])
    with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as t6:
        t6.bind(("::1", 0))
        with pytest.raises(ProtocolError, match="only IPv4 UDP and TCP"):
            bound_flow(t6.fileno())
    r, w = os.pipe()
    try:
        with pytest.raises(ProtocolError, match="bound UDP or TCP socket"):
            bound_flow(r)
    finally:
        os.close(r)
        os.close(w)


def test_a_udp_proof_with_so_reuseaddr_keeps_its_port_to_itself():
    """The kernel lets any user bind a UDP port whose sockets all have SO_REUSEADDR: the control plane clears it on
    a non-root app's proof, so no later socket (root's neither) shares the port the rule steers; refused (another
    user's socket shares the port already), the app's socket is left as it was."""
    udp = socket.SOCK_DGRAM
    with socket.socket(socket.AF_INET, udp) as s, socket.socket(socket.AF_INET, udp) as late:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        check_exclusive(s.fileno(), "udp", port, 65534)  # s is root's, the client uid 65534's: s itself is left out
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        with socket.socket(socket.AF_INET, udp) as other:  # but another socket of root's on the port is not
            other.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            other.bind(("127.0.0.1", port))
            with pytest.raises(ProtocolError, match="another user's socket"):
                check_exclusive(s.fileno(), "udp", port, 65534)
        assert s.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR)
        check_exclusive(s.fileno(), "udp", port, os.getuid())
        assert not s.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR)
        late.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        with pytest.raises(OSError, match="Address already in use"):
            late.bind(("127.0.0.1", port))
    with socket.socket(socket.AF_INET, udp) as s:  # SO_REUSEPORT admits the same uid only: left alone
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        s.bind(("127.0.0.1", 0))
        check_exclusive(s.fileno(), "udp", s.getsockname()[1], os.getuid())
        assert s.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT)



def test_a_tcp_proof_with_so_reuseaddr_keeps_its_port_only_while_it_listens():
    """exposure: bound only, a TCP socket keeps its port unless it has SO_REUSEADDR (set after the check, it lets
    anyone bind the port); listening, it keeps it whatever its options; connected, SO_REUSEADDR opens it again: the
    kernel lets another SO_REUSEADDR socket bind and even listen beside it (shown here)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        assert exposure(s.fileno(), "tcp", port, 0) is None
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        assert "only while it listens" in exposure(s.fileno(), "tcp", port, 0)
        s.listen()
        assert exposure(s.fileno(), "tcp", port, 0) is None
        # s is root's: held by uid 65534 (a root master's listener in its worker), it is left out itself, ...
        assert exposure(s.fileno(), "tcp", port, 65534) is None
        with socket.create_connection(("127.0.0.1", port)):
            conn, _ = s.accept()  # ... not another socket of root's on the port
            with conn:
                assert "another user's socket" in exposure(s.fileno(), "tcp", port, 65534)
        with socket.socket() as c, socket.socket() as beside:
            c.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            c.bind(("127.0.0.1", 0))
            c.connect(("127.0.0.1", port))
            assert "only while it listens" in exposure(c.fileno(), "tcp", c.getsockname()[1], 0)
            beside.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            beside.bind(c.getsockname())
            beside.listen()  # what a connected proof would have let in
        assert "let go of tcp port" in exposure(s.fileno(), "tcp", port + 1, 0)


def test_a_udp_proof_whose_so_reuseaddr_comes_back_is_exposed():
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        check_exclusive(s.fileno(), "udp", port, 0)
        assert exposure(s.fileno(), "udp", port, 0) is None
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # the app, after the check
        assert "SO_REUSEADDR" in exposure(s.fileno(), "udp", port, 0)


def test_sock_diag_addresses():
    assert sockdiag.ipv4_of(socket.AF_INET, socket.inet_aton("127.0.0.1") + bytes(12)) == "127.0.0.1"
    assert sockdiag.ipv4_of(socket.AF_INET6, bytes(16)) == "0.0.0.0"  # :: (dual-stack: IPv4 too)
    mapped = socket.inet_pton(socket.AF_INET6, "::ffff:127.0.0.1")
    assert sockdiag.ipv4_of(socket.AF_INET6, mapped) == "127.0.0.1"
    assert sockdiag.ipv4_of(socket.AF_INET6, socket.inet_pton(socket.AF_INET6, "::1")) is None  # no IPv4 reaches it


def test_sock_diag_lists_what_proc_net_lists():
    """The dump against /proc/net/{tcp,udp}{,6} as the judge: every socket's address, port, uid and state."""
    udp = socket.SOCK_DGRAM
    with socket.socket() as t, socket.socket(socket.AF_INET6) as t6, socket.socket(socket.AF_INET, udp) as u:
        t.bind(("127.0.0.1", 0))
        t.listen()
        t6.bind(("::", 0))
        t6.listen()
        u.bind(("0.0.0.0", 0))
        for proto in ("tcp", "udp"):
            proc = set()
            for name in (proto, proto + "6"):
                with open(f"/proc/net/{name}") as f:
                    for line in list(f)[1:]:
                        fields = line.split()
                        addr, port = fields[1].rsplit(":", 1)
                        raw = b"".join(struct.pack("=I", int(addr[i:i + 8], 16)) for i in range(0, len(addr), 8))
                        family = socket.AF_INET if len(raw) == 4 else socket.AF_INET6
                        proc.add((sockdiag.ipv4_of(family, raw + bytes(16 - len(raw))), int(port, 16),
                                  int(fields[7]), int(fields[3], 16)))
            diag = set(sockdiag.sockets(proto))
            mine = {s.getsockname()[1] for s in (t, t6, u)}
            assert {e for e in proc if e[1] in mine} == {e for e in diag if e[1] in mine} != set()
        listening = 10
        assert ("127.0.0.1", t.getsockname()[1], os.getuid(), listening) in sockdiag.sockets("tcp")
        assert ("0.0.0.0", t6.getsockname()[1], os.getuid(), listening) in sockdiag.sockets("tcp")


def test_flow_owners_count_the_sockets_that_take_the_rules_packets_but_time_wait():
    """Another address's socket takes none of the rule's packets, a wildcard one does; a TIME_WAIT socket (uid 0 in
    /proc/net/tcp: it has none) takes no new connection and is left out."""
    with socket.socket() as lst, socket.socket() as wild:
        lst.bind(("127.0.0.1", 0))
        lst.listen()
        port = lst.getsockname()[1]
        assert flow_owners("tcp", port, "127.0.0.1") == {0}
        assert flow_owners("tcp", port, "127.0.0.2") == set()
        assert flow_owners("tcp", port) == {0}
        wild.bind(("0.0.0.0", 0))
        wild.listen()
        assert flow_owners("tcp", wild.getsockname()[1], "127.0.0.2") == {0}
        c = socket.create_connection(("127.0.0.1", port))
        a, _ = lst.accept()
    a.close()  # the server closes first: its side goes to TIME_WAIT once the client closes too
    assert c.recv(1) == b""
    c.close()
    for _ in range(100):
        if not flow_owners("tcp", port, "127.0.0.1"):
            break
        time.sleep(0.01)
    assert flow_owners("tcp", port, "127.0.0.1") == set()
    assert port_owners("tcp")[port] == {0}  # the TIME_WAIT socket, as /proc/net/tcp shows it


def test_watch_proofs_looks_at_the_non_root_proofs_only():
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)

        def state(uid):
            entry = SimpleNamespace(owner=SimpleNamespace(uid=uid), rule=Rule.parse(f"udp dst 127.0.0.1 dport {port}"),
                                    proof=s.fileno())
            return SimpleNamespace(served={"eth0": SimpleNamespace(rules={3: entry})})

        assert watch_proofs(state(0)) == ([], False)  # root may share its ports
        assert watch_proofs(state(65534), scan=False)[0]  # UDP's table is read at every look
        (owner, iface, rule_id, why), = watch_proofs(state(65534))[0]
        assert (owner.uid, iface, rule_id) == (65534, "eth0", 3) and "SO_REUSEADDR" in why



def test_flow_rule_is_the_port_or_an_active_opens_4_tuple():
    assert flow_rule("udp", "10.0.0.2", 5000) == "udp dst 10.0.0.2 dport 5000"
    rule = flow_rule("tcp", "10.0.0.2", 40000, "10.0.0.1", 80)
    assert Rule.parse(rule) == Rule.parse("tcp src 10.0.0.1 sport 80 dst 10.0.0.2 dport 40000")
    for args, why in [(("udp", "10.0.0.2", 5000, "10.0.0.1", 80), "TCP socket about to connect"),
                      (("tcp", "10.0.0.2", 5000, "10.0.0.1"), "go together"),
                      (("tcp", "10.0.0.2", 5000, "example.org", 80), "not an IPv4 address"),
                      (("tcp", "10.0.0.2", 5000, "10.0.0.1", 0), "1-65535")]:
        with pytest.raises(ProtocolError, match=why):
            flow_rule(*args)


def _page(seal: bool = True, magic: int = shimpage.MAGIC) -> int:
    fd = os.memfd_create("t", os.MFD_ALLOW_SEALING)
    os.ftruncate(fd, shimpage.PAGE_BYTES)
    with mmap.mmap(fd, shimpage.PAGE_BYTES) as m:
        struct.pack_into("<4I", m, 0, magic, shimpage.VERSION, shimpage.SLOTS, 0)
        shimpage.SLOT.pack_into(m, shimpage.HEADER + 3 * shimpage.SLOT.size, 1, 7, socket.inet_aton("10.0.0.2"),
                                11111, 0, 10, 9, 1, 2, 3, 4)
    if seal:
        fcntl.fcntl(fd, fcntl.F_ADD_SEALS, fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW)
    return fd


def test_a_sealed_page_lists_its_sockets():
    fd = _page()
    try:
        page = shimpage.ShimPage(fd)
        assert page.sockets() == [{"fd": 7, "proto": "udp", "local": "10.0.0.2:11111", "rx": 10, "tx": 9, "rx_kernel": 1,
                                   "tx_kernel": 2, "rx_dropped": 3, "tx_failed": 4}]
        page.close()
    finally:
        os.close(fd)


@pytest.mark.parametrize("seal, magic, why", [(False, shimpage.MAGIC, "seal the memfd"),
                                              (True, 0x1234, "not a version")])
def test_an_unsealed_or_foreign_page_is_refused(seal, magic, why):
    fd = _page(seal, magic)
    try:
        with pytest.raises(ProtocolError, match=why):
            shimpage.ShimPage(fd)
    finally:
        os.close(fd)
    r, w = os.pipe()
    try:
        with pytest.raises(ProtocolError, match="memfd"):
            shimpage.ShimPage(r)
    finally:
        os.close(r)
        os.close(w)


def test_the_page_layout_is_the_shims():
    """csrc/preload/kbp.h writes the page this module reads: the same magic, slot count, sizes."""
    header = open(os.path.join(os.path.dirname(__file__), "..", "..", "csrc", "preload", "kbp.h")).read()

    def define(name):
        import re

        return int(re.search(rf"#define {name} (0x[0-9A-Fa-f]+|\d+)", header).group(1), 0)

    assert define("KBP_PAGE_MAGIC") == shimpage.MAGIC
    assert define("KBP_PAGE_SLOTS") == shimpage.SLOTS
    assert define("KBP_PAGE_BYTES") == shimpage.PAGE_BYTES
    assert define("KBP_PAGE_VERSION") == shimpage.VERSION
    assert define("KBP_PAGE_TCP") == len(shimpage.TCP_COUNTERS) and 16 + 8 * define("KBP_PAGE_TCP") <= shimpage.HEADER
    assert define("KBP_TCP_LISTENER") == 1 and define("KBP_TCP_ACCEPTED") == 2 and define("KBP_TCP_ACTIVE") == 3
    assert shimpage.TCP_SLOT.size == shimpage.SLOT.size
    assert shimpage.SLOT.size == 64 and shimpage.HEADER + shimpage.SLOTS * shimpage.SLOT.size <= shimpage.PAGE_BYTES


def listening_proof(s: socket.socket) -> SimpleNamespace:
    """The control plane's state with one rule: s (root's, listening on 127.0.0.1) the proof of uid 65534."""
    s.bind(("127.0.0.1", 0))
    s.listen()
    entry = SimpleNamespace(owner=SimpleNamespace(uid=65534), proof=s.fileno(),
                            rule=Rule.parse(f"tcp dst 127.0.0.1 dport {s.getsockname()[1]}"))
    return SimpleNamespace(served={"eth0": SimpleNamespace(rules={1: entry})})


def test_watch_proofs_scans_the_tcp_sockets_only_when_asked():
    """A TCP proof's own socket is looked at every PROOF_TICK; the other users' TCP sockets on its port only at a
    scan (PROOF_SCAN, before a new rule): their dump walks the kernel's whole established hash."""
    with socket.socket() as s:
        state = listening_proof(s)
        assert watch_proofs(state, scan=True) == ([], True)  # s is root's, the proof uid 65534's: left out itself
        with socket.create_connection(s.getsockname()), s.accept()[0]:  # another socket of root's on the port
            assert watch_proofs(state, scan=False) == ([], True)
            (_, _, _, why), = watch_proofs(state, scan=True)[0]
            assert "another user's socket" in why
            check_exclusive(s.fileno(), "tcp", s.getsockname()[1], 65534, scan=False)
            with pytest.raises(ProtocolError, match="another user's socket") as refused:
                check_exclusive(s.fileno(), "tcp", s.getsockname()[1], 65534)
            assert not refused.value.retry  # for good: the shim's adopter stops looking (kbp_tcpadopt.c)


def test_a_refusal_says_whether_it_is_worth_asking_again():
    """protocol.error's "retry": true only for a refusal that may pass unchanged later (a sibling's rule has the
    port, live kernel connections use it): a fork's child looks again then, and only then."""
    assert json.loads(protocol.error(3, "no", retry=True)) == {"ok": False, "id": 3, "error": "no", "retry": True}
    assert "retry" not in json.loads(protocol.error(3, "no"))
    with socket.socket() as s, socket.socket() as c:
        s.bind(("127.0.0.1", 0))
        s.listen()
        c.connect(s.getsockname())
        with s.accept()[0], pytest.raises(ProtocolError, match="live kernel connection") as refused:
            check_no_kernel_connections(s.fileno(), "127.0.0.1", s.getsockname()[1])
        assert refused.value.retry


def test_an_active_opens_4_tuple_rule_is_checked_against_other_users_sockets_too():
    """Another user's socket bound beside the proof (SO_REUSEADDR on both, then cleared on the proof) and
    connected, or connecting later, to the same peer would have its segments steered by the proof's 4-tuple rule:
    an active open is no exception to the scan, at accelerate and at each PROOF_SCAN (review oq #1)."""
    with socket.socket() as victim, socket.socket() as proof:
        for sock in (victim, proof):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        victim.bind(("127.0.0.1", 0))  # root's (the test's) client socket, bound to a fixed port
        port = victim.getsockname()[1]
        proof.bind(("127.0.0.1", port))
        proof.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 0)  # the attacker's, "owned" by uid 65534
        with pytest.raises(ProtocolError, match="another user's socket"):
            check_exclusive(proof.fileno(), "tcp", port, 65534)
        entry = SimpleNamespace(owner=SimpleNamespace(uid=65534), proof=proof.fileno(),
                                rule=Rule.parse(f"tcp src 127.0.0.2 sport 80 dst 127.0.0.1 dport {port}"))
        state = SimpleNamespace(served={"eth0": SimpleNamespace(rules={1: entry})})
        assert watch_proofs(state, scan=False) == ([], True)
        (_, _, _, why), = watch_proofs(state, scan=True)[0]
        assert "another user's socket" in why


def test_an_ipv6_only_wildcard_is_no_rival_of_an_ipv4_proof():
    """An IPV6_V6ONLY [::]:port shares nothing with IPv4 sockets (the kernel lets anyone bind one beside an IPv4
    proof): counted as a wildcard, any user could get another's rule removed (review oq #4)."""
    with socket.socket(socket.AF_INET6) as only6, socket.socket(socket.AF_INET6) as dual:
        only6.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        only6.bind(("::", 0))
        only6.listen()
        dual.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        dual.bind(("::", 0))
        dual.listen()
        listed = {port: ip for ip, port, _, _ in sockdiag.sockets("tcp")}
        assert listed[only6.getsockname()[1]] is None and listed[dual.getsockname()[1]] == "0.0.0.0"
        assert flow_owners("tcp", only6.getsockname()[1], "127.0.0.1") == set()
    with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as u:
        u.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        u.bind(("::", 0))
        assert flow_owners("udp", u.getsockname()[1], "127.0.0.1") == set()


class _Replies:
    """A netlink socket that answers every request with the next of `replies` (bytes made by `msg`)."""

    def __init__(self, *replies: bytes) -> None:
        self.replies, self.seq = list(replies), 0

    def send(self, request: bytes) -> None:
        self.seq = struct.unpack_from("=I", request, 8)[0]

    def recv(self, _n: int) -> bytes:
        return self.replies.pop(0)(self.seq)


def msg(kind: int, body: bytes = b"", flags: int = 0, length: int | None = None):
    return lambda seq: struct.pack("=IHHII", 16 + len(body) if length is None else length, kind, flags, seq, 0) + body


@pytest.mark.parametrize("reply, why", [
    (msg(sockdiag.NLMSG_ERROR, b"\x00\x00"), "short"),  # an error message without its errno
    (msg(20, bytes(30)), "short"),  # an inet_diag_msg cut short
    (msg(20, bytes(80), length=500), "truncated"),  # a length past the datagram's end
    (msg(sockdiag.NLMSG_DONE, flags=sockdiag.NLM_F_DUMP_INTR), "interrupted"),
])
def test_a_malformed_sock_diag_reply_is_an_oserror_not_a_crash(reply, why):
    """watch_proofs catches OSError: a struct.error out of a short reply would reach the control plane's loop
    (review oq #9)."""
    with pytest.raises(OSError, match=why):
        sockdiag._dump(_Replies(reply), "tcp", socket.AF_INET, sockdiag.STATES)


def test_an_interrupted_dump_is_asked_again_once(monkeypatch):
    calls = []

    def dump(nl, proto, family, states):
        calls.append(family)
        if len(calls) == 1:
            raise OSError(errno.EAGAIN, "interrupted")
        return [("127.0.0.1", 1, 0, 10)] if family == socket.AF_INET else []

    monkeypatch.setattr(sockdiag, "_dump", dump)
    assert sockdiag.sockets("tcp") == [("127.0.0.1", 1, 0, 10)]
    assert calls == [socket.AF_INET, socket.AF_INET, socket.AF_INET6]


def test_a_socket_table_that_cannot_be_read_once_keeps_the_rules(monkeypatch):
    """EMFILE in the control plane for a moment must not take every non-root rule away: only LIST_FAILURES
    failed reads in a row do (review oq #9)."""
    with socket.socket() as s:
        state = listening_proof(s)

        def refused(proto, states=sockdiag.STATES, ids=False):
            raise OSError(errno.EMFILE, "Too many open files")

        monkeypatch.setattr(sockdiag, "sockets", refused)
        failures: dict[str, int] = {}
        for _ in range(accel.LIST_FAILURES - 1):
            assert watch_proofs(state, scan=True, failures=failures) == ([], True)
        (_, _, _, why), = watch_proofs(state, scan=True, failures=failures)[0]
        assert "cannot be listed" in why


def test_a_listener_over_live_kernel_connections_of_its_port_stays_the_kernels():
    """A fork's children serve kernel connections on the listener's port (kbypass run hands its own to the kernel
    at the fork): a rule for the port would take their segments, so accelerate refuses while they live."""
    lst = socket.socket()
    lst.bind(("127.0.0.1", 0))
    lst.listen()
    port = lst.getsockname()[1]
    check_no_kernel_connections(lst.fileno(), "127.0.0.1", port)  # none yet
    cli = socket.create_connection(("127.0.0.1", port))
    srv, _ = lst.accept()
    assert kernel_connections("127.0.0.1", port) == 1  # the accepted end (the client's local port is another)
    with pytest.raises(ProtocolError, match="1 live kernel connection"):
        check_no_kernel_connections(lst.fileno(), "127.0.0.1", port)
    srv.close()
    cli.close()
    check_no_kernel_connections(lst.fileno(), "127.0.0.1", port)  # closed: TIME_WAIT and FIN states aside
    lst.close()


def test_a_handed_connections_pass_rule_lives_as_long_as_the_kernels_connection():
    """`handed`: the connected socket gives its 4-tuple (never the message), and the rule goes once the kernel
    lists no socket of that 4-tuple but in TIME_WAIT."""
    assert protocol.decode_request(b'{"op":"handed"}', 1).op == "handed"
    with pytest.raises(ProtocolError):
        protocol.decode_request(b'{"op":"handed"}', 0)
    lst = socket.socket()
    lst.bind(("127.0.0.1", 0))
    lst.listen()
    cli = socket.create_connection(lst.getsockname())
    srv, peer = lst.accept()
    flow = connected_flow(srv.fileno())
    assert flow == ("127.0.0.1", lst.getsockname()[1], "127.0.0.1", peer[1])
    with pytest.raises(ProtocolError, match="not connected"):
        connected_flow(lst.fileno())
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u, pytest.raises(ProtocolError, match="TCP"):
        connected_flow(u.fileno())
    entry = SimpleNamespace(owner="app", kernel_flow=flow)
    other = SimpleNamespace(owner="app", kernel_flow=None)  # a redirect rule: never handed_gone's
    state = SimpleNamespace(served={"eth0": SimpleNamespace(rules={4: entry, 5: other})})
    assert handed_gone(state) == []
    srv.close()  # the server end closes first: FIN_WAIT, then TIME_WAIT, which counts as done
    cli.close()
    deadline = time.monotonic() + 2
    while not handed_gone(state) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert handed_gone(state) == [("app", "eth0", 4)]
    lst.close()


def test_a_tcp_slot_reads_as_bytes_peer_state_and_the_hosts_counters():
    """TCP slots (kbp.h struct kbp_slot's TCP half): bytes, the peer, the state code shimtcp puts in its changes
    (1 + the index in tcp.State), a listener's accepted count; the header's host counters (ShimTcp.tally)."""
    from kbypass.proto import tcp
    from kbypass.sockapi import shimconn, shimtcp

    assert shimconn.TALLY == shimpage.TCP_COUNTERS
    fd = _page()
    try:
        with mmap.mmap(fd, shimpage.PAGE_BYTES) as m:
            at = shimpage.HEADER + 5 * shimpage.SLOT.size
            established = shimtcp._STATE_BITS[tcp.State.ESTABLISHED] >> shimtcp.STATE_SHIFT
            shimpage.TCP_SLOT.pack_into(m, at, 1, 9, socket.inet_aton("10.0.0.2"), 80, socket.IPPROTO_TCP, 500, 70,
                                        socket.inet_aton("10.0.0.1"), 40000, established, 2, 0)
            shimpage.TCP_SLOT.pack_into(m, at + 64, 1, 8, socket.inet_aton("10.0.0.2"), 80, socket.IPPROTO_TCP, 0,
                                        0, bytes(4), 0, 0, 1, 3)
            struct.pack_into("<6Q", m, 16, 100, 60, 90, 2, 1, 0)
        page = shimpage.ShimPage(fd)
        udp, conn, lst = page.sockets()
        assert udp["proto"] == "udp" and udp["rx"] == 10
        assert conn == {"fd": 9, "proto": "tcp", "local": "10.0.0.2:80", "role": "accepted", "peer": "10.0.0.1:40000",
                        "state": "ESTABLISHED", "rx": 500, "tx": 70}
        assert lst["role"] == "listener" and lst["state"] == "LISTEN" and lst["accepted"] == 3 and lst["peer"] == ""
        assert page.tcp_counters() == {"rx_segments": 100, "rx_predicted": 60, "tx_segments": 90, "retransmits": 2,
                                       "connections": 1, "rx_no_socket": 0}
        page.close()
    finally:
        os.close(fd)


def test_sockets_no_file_holds_are_no_rivals_of_a_proof_and_the_proof_is_left_out_by_cookie():
    """A root master's listener handed down to a worker of another uid (nginx's `user`): its queued, not yet
    accepted connection shows uid 0 and inode 0 (review pe). It takes no new connection, so it must not count as
    another user's socket (a refusal for good, though it is accepted a moment later); the listener itself, the
    proof, is left out by its cookie, which no other socket ever has."""
    lst = socket.socket()
    lst.bind(("127.0.0.1", 0))
    lst.listen()
    port = lst.getsockname()[1]
    cli = socket.create_connection(("127.0.0.1", port))  # queued in lst's backlog: not accepted
    try:
        assert flow_owners("tcp", port, "127.0.0.1") == {0}  # the listener
        assert flow_owners("tcp", port, "127.0.0.1", besides=socket_cookie(lst.fileno())) == set()
        with socket.socket() as other:
            assert socket_cookie(other.fileno()) != socket_cookie(lst.fileno())
    finally:
        cli.close()
        lst.close()


def test_a_socket_table_that_cannot_be_read_at_accelerate_is_a_refusal_worth_retrying(monkeypatch):
    def refused(proto, states=sockdiag.STATES, ids=False):
        raise OSError(errno.EMFILE, "Too many open files")

    monkeypatch.setattr(sockdiag, "sockets", refused)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        with pytest.raises(ProtocolError, match="cannot be listed") as e:
            check_exclusive(s.fileno(), "tcp", s.getsockname()[1], 65534, "127.0.0.1")
    assert e.value.retry
