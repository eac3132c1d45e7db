"""The control plane's requests for the preload shim (kbypass.cp.accel, kbypass.cp.shimpage), without a network:
the socket an app sends is the only source of the flow, and the counters page is mapped only when it is a
sealed memfd of the right layout."""

from __future__ import annotations

import fcntl
import mmap
import os
import socket
import struct

import pytest

from kbypass.cp import protocol, shimpage
from kbypass.cp.accel import (
    bound_flow,
    check_exclusive,
    check_no_kernel_connections,
    kernel_connections,
)
from kbypass.cp.protocol import ProtocolError


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
        with pytest.raises(ProtocolError, match="another user's socket"):  # s is root's, the client uid 65534's
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


def test_a_tcp_slot_reads_as_bytes_peer_state_and_the_hosts_counters():
    """TCP slots (kbp.h struct kbp_slot's TCP half): bytes, the peer, the state code shimtcp puts in its changes
    (1 + the index in tcp.State), a listener's accepted count; the header's host counters (ShimTcp.tally)."""
    from kbypass.proto import tcp
    from kbypass.sockapi import shimtcp

    assert shimtcp.TALLY == shimpage.TCP_COUNTERS
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
