"""ConnConfig.ack_bytes: a receiver that takes a large batch of arrivals acknowledges in the middle of it
(Connection.ack_due, asked by TransportEndpoint and the simulator between runs), not only after the last
datagram; the C run's room ends where the ACK is due; 0 keeps one ACK per batch."""

from __future__ import annotations

import dataclasses

import pytest

from kbypass.proto.transport import (
    ConnConfig,
    Connection,
    Listener,
    LocalProtocolError,
    Role,
    wire,
)
from kbypass.proto.transport.sim import measure_goodput
from tests.kb import needs_c

MSS_CFG = ConnConfig(max_datagram_size=1000, send_buffer=64 * 1024, recv_buffer=64 * 1024, min_rto=0.05,
                     initial_rto=0.3, max_rto=3.0)


def connected(cfg: ConnConfig) -> tuple[Connection, Connection]:
    client = Connection(Role.CLIENT, cfg, 0.0)
    listener = Listener(cfg)
    client.connect(0.0)
    for _ in range(4):
        for d in client.datagrams_to_send(0.0):
            listener.receive_datagram(d, 0.0)
        for d in listener.datagrams_to_send(0.0):
            client.receive_datagram(d, 0.0)
    server = listener.accept()
    assert server is not None and client.state.value == "ESTABLISHED"
    return client, server


def data_datagrams(client: Connection, n: int) -> list[bytes]:
    client.send(bytes(range(256)) * (n * client.mss // 256 + 1), 0.0)
    out = [d for d in client.datagrams_to_send(0.0) if wire.decode(d).payload]
    assert len(out) >= n
    return out[:n]


def test_ack_due_after_ack_bytes_of_payload_and_cleared_by_the_ack():
    cfg = dataclasses.replace(MSS_CFG, ack_bytes=4 * MSS_CFG.mss, initial_window=64 * 1024)
    client, server = connected(cfg)
    datagrams = data_datagrams(client, 6)
    for d in datagrams[:3]:
        server.receive_datagram(d, 0.001)
        assert not server.ack_due
    server.receive_datagram(datagrams[3], 0.001)
    assert server.ack_due  # 4 segments arrived since our last datagram: the caller sends the ACK now
    acks = server.datagrams_to_send(0.001)
    assert [wire.decode(a).ack for a in acks] == [4 * cfg.mss]
    assert not server.ack_due
    server.receive_datagram(datagrams[4], 0.001)
    assert not server.ack_due


def test_without_ack_bytes_one_ack_per_batch():
    client, server = connected(dataclasses.replace(MSS_CFG, initial_window=64 * 1024))
    for d in data_datagrams(client, 10):
        server.receive_datagram(d, 0.001)
        assert not server.ack_due
    assert len(server.datagrams_to_send(0.001)) == 1


def test_the_c_run_room_ends_where_the_ack_is_due():
    cfg = dataclasses.replace(MSS_CFG, ack_bytes=3 * MSS_CFG.mss, initial_window=64 * 1024)
    client, server = connected(cfg)
    params = server.rx_run_params()
    # room_bytes: the ACK budget in whole segments, not the whole window (the run takes the datagram that
    # makes the ACK due)
    assert params[6] == 3 * cfg.mss
    first, second, third = data_datagrams(client, 3)
    server.receive_datagram(first, 0.001)
    assert server.rx_run_params()[6] == 2 * cfg.mss
    server.receive_datagram(second, 0.001)
    assert server.rx_run_params()[6] == cfg.max_datagram_size  # never below one datagram: a run takes one
    assert not server.ack_due
    server.receive_datagram(third, 0.001)
    assert server.ack_due  # what the run's room let in makes the ACK due: the caller acknowledges
    no_ack = dataclasses.replace(MSS_CFG, initial_window=64 * 1024)
    assert connected(no_ack)[1].rx_run_params()[6] == no_ack.recv_buffer


def test_the_c_run_room_takes_the_segment_that_makes_the_ack_due():
    """ack_bytes not a multiple of the segment (512 KiB over 64 KiB datagrams): the run's room reaches the
    end of the segment that crosses it, so a run of full segments ends with the ACK due and the caller's
    ack-early goes out; cut at ack_bytes, it stopped one segment short, and that one went through the
    general path in Python."""
    cfg = dataclasses.replace(MSS_CFG, ack_bytes=int(3.5 * MSS_CFG.mss), initial_window=64 * 1024)
    client, server = connected(cfg)
    room = server.rx_run_params()[6]
    assert room == 4 * cfg.mss  # four full segments fit; the fourth makes the ACK due
    *_, mode = server.rx_run_params()
    server.receive_run(b"x" * room, 4, 1, 0.001, mode)
    assert server.ack_due


def test_run_input_counts_toward_the_ack():
    cfg = dataclasses.replace(MSS_CFG, ack_bytes=2 * MSS_CFG.mss)
    _, server = connected(cfg)
    *_, mode = server.rx_run_params()
    server.receive_run(b"x" * (2 * cfg.mss), 2, 1, 0.001, mode)
    assert server.ack_due


def test_simulated_receiver_acknowledges_inside_its_batches():
    """The simulator's endpoint loop asks ack_due between datagrams as TransportEndpoint does between runs:
    with batches of 64 and an ACK every 8 segments, about one ACK per 8 data datagrams instead of one a batch."""
    cfg = ConnConfig(max_datagram_size=1472, send_buffer=1 << 20, recv_buffer=1 << 20, max_window=1 << 19,
                     initial_rto=0.25, min_rto=0.02, max_rto=2.0, time_wait=0.001)
    size = 2_000_000
    base = measure_goodput(0.0, 1, size=size, config=cfg)
    early = measure_goodput(0.0, 1, size=size, config=dataclasses.replace(cfg, ack_bytes=8 * cfg.mss))
    assert base.completed and early.completed
    segments = size // cfg.mss
    assert early.acks_sent >= segments // 8 > 2 * base.acks_sent


def test_negative_ack_bytes_refused():
    with pytest.raises(LocalProtocolError, match="ack_bytes"):
        ConnConfig(ack_bytes=-1)


@pytest.mark.parametrize("lane", ["python", pytest.param("c", marks=needs_c)])
def test_endpoint_acknowledges_inside_a_batch_of_frames(lane):
    """TransportEndpoint over SocketPorts on loopback: a flight of 40 segments taken in one pump is
    acknowledged every 8 segments (the C runs end at the ACK budget; the Python path takes the batch in
    slices), not once after the batch."""
    from kbypass import backend
    from kbypass.port.socket_port import SocketPort
    from kbypass.xfer import UdpEncap
    from kbypass.xfer.endpoint import TransportEndpoint

    lo = "127.0.0.1"
    cfg = ConnConfig(max_datagram_size=1472, send_buffer=1 << 20, recv_buffer=1 << 20, max_window=1 << 19,
                     initial_window=64 * 1444, congestion="reno", ack_bytes=8 * 1444)
    with SocketPort(lo, 0, batch=64) as sp, SocketPort(lo, 0, batch=64) as cp:
        server = TransportEndpoint(sp, UdpEncap(bytes(6), lo, sp.port), config=cfg, own_port=False,
                                   codec=backend.codec(lane), rx_batch=64)
        enc = UdpEncap(bytes(6), lo, cp.port)
        enc.set_peer(lo, sp.port, bytes(6))
        client = TransportEndpoint(cp, enc, config=cfg, own_port=False, codec=backend.codec(lane))
        server._listener = Listener(cfg, backlog=1, max_connections=1, codec=server.codec)
        client.conn = Connection(Role.CLIENT, cfg, client.clock(), codec=client.codec)
        client.conn.connect(client.clock())
        for _ in range(20):
            client.pump(0.0)
            server.pump(0.0)
            if server.conn is not None and client.connected_at is not None:
                break
        client.pump(0.0)
        server.pump(0.0)
        assert server.conn is not None and client.connected_at is not None
        client.conn.send(bytes(40 * cfg.mss), client.clock())
        client.pump(0.0)  # the whole flight goes out: 40 datagrams in the server's socket
        assert client.conn.sbuf.unsent == 0
        before = server.conn.stats.datagrams_sent
        got = server.counters["rx_datagrams"]
        server.pump(0.0)
        assert server.counters["rx_datagrams"] - got == 40  # one batch
        if lane == "c":
            # all of it through C: a run that stopped short of the ACK budget left one datagram a cycle to
            # the Python decoder
            assert server.counters["rx_c"] == 40
        # an ACK each ceil(ack_bytes / mss) = 9 segments (4 in 40), on either lane; one at the batch's end without
        assert server.conn.stats.datagrams_sent - before >= 4
