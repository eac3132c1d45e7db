"""kbypass.apps.xdp_tcp_pong's HandshakeListener (the kernel half of the TCP floor), over loopback."""

from __future__ import annotations

import socket
import struct
import time

import pytest

from kbypass.apps.xdp_tcp_pong import HandshakeListener, XdpTcpPong


def _until(cond, timeout: float = 5.0) -> bool:
    end = time.monotonic() + timeout
    while not cond() and time.monotonic() < end:
        time.sleep(0.01)
    return cond()


def test_the_listener_accepts_holds_and_counts_the_ends_of_closed_and_reset_connections():
    with HandshakeListener("127.0.0.1", 0) as listener:
        c1 = socket.create_connection(("127.0.0.1", listener.port))
        c2 = socket.create_connection(("127.0.0.1", listener.port))
        assert _until(lambda: listener.accepted == 2)
        c1.sendall(b"data the XDP program would have answered")  # read and dropped: no answer, no end
        c1.settimeout(0.2)
        with pytest.raises(TimeoutError):
            c1.recv(1)
        assert listener.ended == 0
        c1.close()  # a FIN
        assert _until(lambda: listener.ended == 1)
        c2.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        c2.close()  # an RST, as the program makes of the client's close
        assert _until(lambda: listener.ended == 2)
    with pytest.raises(OSError):  # closed: nothing listens any more
        socket.create_connection(("127.0.0.1", listener.port), timeout=1)


def test_the_floor_names_its_object_program_maps_and_counters():
    """The counters are read by index: their order is enum tcppong_counter's in bpf/tcppong.h."""
    from pathlib import Path

    header = (Path(__file__).resolve().parents[2] / "bpf" / "tcppong.h").read_text()
    for i, name in enumerate(XdpTcpPong.COUNTERS):
        assert f"TCPPONG_{name.upper()} = {i}," in header
    assert f"TCPPONG_NCOUNTERS = {len(XdpTcpPong.COUNTERS)}," in header
    for name in (XdpTcpPong.CONFIG_MAP, XdpTcpPong.COUNTERS_MAP):
        assert name in header
