"""TcpHost.batched (what `kbypass http serve` runs in), with a kernel peer in netns: a socket's sends inside wait
for transmit(), which sends each connection's data in one segment (the ACK of what came riding on it) and
kicks the TX ring once for the whole batch; receive() makes what came readable without sending anything."""

from __future__ import annotations

import select
import socket
import time

import pytest

from kbypass import netns
from kbypass.endpoint.tcp import MAX_UNREAD
from kbypass.endpoint.tcpio import TcpHost
from tests.kb import needs_c

pytestmark = pytest.mark.netns
PORT = 5011


def connected(host, lst, a, b, n: int) -> tuple[list[socket.socket], list]:
    """n kernel clients in host a and their accepted TcpSockets (the host pumped while they connect)."""
    clients = []
    for _ in range(n):
        with netns.entered(a.netns):
            c = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        c.setblocking(False)
        c.connect_ex((b.ipv4, PORT))
        clients.append(c)
    by_port = {sock.peer[1]: sock for sock in (lst.accept(timeout=5)[0] for _ in clients)}
    for c in clients:
        c.settimeout(5)
    return clients, [by_port[c.getsockname()[1]] for c in clients]  # in the clients' order


def recv_exactly(c: socket.socket, n: int) -> bytes:
    got = b""
    while len(got) < n:
        piece = c.recv(n - len(got))
        assert piece, "the peer closed early"
        got += piece
    return got


@pytest.mark.parametrize("native", [pytest.param(None, id="c-lane", marks=needs_c),
                                    pytest.param(False, id="python-lane")])
def test_a_batch_goes_out_at_transmit_one_segment_a_connection_one_kick(testbed_hosts, native):
    a, b = testbed_hosts
    with TcpHost(b.iface, b.ipv4, netns=b.netns, native=native) as host:
        lst = host.listen(PORT)
        clients, socks = connected(host, lst, a, b, 3)
        for s in socks:
            s.setblocking(False)
        with host.batched():
            for i, c in enumerate(clients):
                c.sendall(b"req%d" % i)
            end = time.monotonic() + 5
            while not all(s.readable for s in socks) and time.monotonic() < end:
                host.receive()  # what came is readable at once; nothing is sent yet
                time.sleep(0.01)
            assert [s.recv(100) for s in socks] == [b"req0", b"req1", b"req2"]
            tx, kicks = host.counters["tx_segments"], host.stats["port"]["tx_kicks"]
            for i, s in enumerate(socks):
                for part in (b"an", b"sw", b"er%d" % i):
                    assert s.send(part) == len(part)
            assert host.counters["tx_segments"] == tx  # held for transmit()
            host.transmit()
            assert host.counters["tx_segments"] == tx + 3  # one segment per connection, data and ACK in it
            # one syscall for the batch's frames (veth: copy mode, where every batch needs its kick)
            assert host.stats["port"]["tx_kicks"] - kicks == 1
            for i, c in enumerate(clients):  # inside: the kick sent them, not batched()'s exit
                assert recv_exactly(c, 7) == b"answer%d" % i
        # outside batched(), a send goes out at once, as a kernel send() does
        socks[0].setblocking(True)
        tx = host.counters["tx_segments"]
        socks[0].send(b"now")
        assert host.counters["tx_segments"] == tx + 1 and recv_exactly(clients[0], 3) == b"now"
        for c in clients:
            c.close()
        for s in socks:
            s.close()


def test_a_send_that_would_block_inside_batched_sends_nothing_of_the_batch(testbed_hosts):
    """Inside batched(), a non-blocking send() the send buffer cannot take raises BlockingIOError at once: no
    pump, which would put the batch's other answers on the wire mid-batch (the loop's WindowOpened wakes it)."""
    a, b = testbed_hosts
    with TcpHost(b.iface, b.ipv4, netns=b.netns) as host:
        lst = host.listen(PORT)
        clients, socks = connected(host, lst, a, b, 2)
        for s in socks:
            s.setblocking(False)
        with host.batched():
            assert socks[0].send(b"early") == 5
            tx = host.counters["tx_segments"]
            chunk = b"x" * 65536
            with pytest.raises(BlockingIOError):
                for _ in range(1000):  # fills socks[1]'s send buffer (nothing leaves before transmit())
                    socks[1].send(chunk)
            assert host.counters["tx_segments"] == tx  # socks[0]'s answer still held for transmit()
            host.transmit()
            assert recv_exactly(clients[0], 5) == b"early"
        for c in clients:
            c.close()
        for s in socks:
            s.close()


@pytest.mark.parametrize("native", [pytest.param(None, id="c-lane", marks=needs_c),
                                    pytest.param(False, id="python-lane")])
def test_wait_kicks_frames_transmit_left_on_the_ring(testbed_hosts, native, monkeypatch):
    """transmit()'s flush_tx stops when the kernel makes no progress (EBUSY/ENOBUFS, no completion room),
    leaving the batch's frames on the TX ring unkicked: the loop's next wait() reaps completions and kicks
    them, or they would sit there until some later transmit."""
    a, b = testbed_hosts
    with TcpHost(b.iface, b.ipv4, netns=b.netns, native=native) as host:
        lst = host.listen(PORT)
        clients, socks = connected(host, lst, a, b, 1)
        socks[0].setblocking(False)
        lane = host._lanes[0]
        with host.batched():
            assert socks[0].send(b"held") == 4
            monkeypatch.setattr(lane, "flush_tx", lambda: 0)  # the kick that gave up
            host.transmit()
            assert lane.tx_pending > 0  # on the ring, not sent
            monkeypatch.undo()
            # wait() must kick them itself: a poll() on the AF_XDP socket drives copy-mode TX only while the
            # kernel finds completion room (and a busy loop does not poll), so here it sleeps on nothing
            monkeypatch.setattr(host, "_poller", select.poll())
            host.wait(time.monotonic() + 0.2)
            assert lane.tx_pending == 0
            assert recv_exactly(clients[0], 4) == b"held"  # before batched()'s exit transmit
        clients[0].close()
        socks[0].close()


def test_a_blocked_writer_is_woken_when_room_returns_even_with_its_events_held(testbed_hosts):
    """A socket holding MAX_UNREAD bytes unread takes no more events (backpressure on Data), so its
    WindowOpened waits in the queue: inside batched(), a send() that would block still gets the socket into
    take_woken once the peer's ACKs make room, or a loop (http serve) would not write to it again."""
    a, b = testbed_hosts
    with TcpHost(b.iface, b.ipv4, netns=b.netns) as host:
        lst = host.listen(PORT)
        clients, socks = connected(host, lst, a, b, 1)
        c, s = clients[0], socks[0]
        s.setblocking(False)
        c.setblocking(False)
        flood = memoryview(b"r" * (MAX_UNREAD + (256 << 10)))
        with host.batched():
            end = time.monotonic() + 20
            while s._rx_len < MAX_UNREAD and time.monotonic() < end:  # the peer's requests, unread
                try:
                    flood = flood[c.send(flood):]
                except BlockingIOError:
                    pass
                host.receive()
                host.transmit()  # the ACKs
            assert s._rx_len >= MAX_UNREAD
            with pytest.raises(BlockingIOError):
                while True:
                    s.send(b"a" * 65536)
            host.take_woken()
            woken = False
            while not woken and time.monotonic() < end:
                host.transmit()
                try:
                    while c.recv(1 << 20):  # the peer reads the answers: its ACKs make room
                        pass
                except BlockingIOError:
                    pass
                host.receive()
                woken = s in host.take_woken()
            assert woken and s.send(b"more") == 4
        c.close()
        s.close()
