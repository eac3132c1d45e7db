"""Datagrams as large as the MTU allows, up to what one packet of the port carries (xfer/sizing.py)."""

from types import SimpleNamespace

import pytest

from kbypass.errors import UsageError
from kbypass.xfer import TransportEndpoint
from kbypass.xfer.encap import EthEncap, UdpEncap
from kbypass.xfer.sizing import check_fits, frame_size_for, packet_limit


def afxdp(frame_size, headroom=0):
    return SimpleNamespace(xsk=object(), umem=SimpleNamespace(frame_size=frame_size, headroom=headroom), mode="copy")


def test_frame_size_fits_the_mtu_and_the_kernels_headroom():
    assert frame_size_for(1500) == 2048
    assert frame_size_for(1778) == 2048 and frame_size_for(1779) == 4096  # 1779 + 14 + 256 > 2048
    assert frame_size_for(3506) == 4096
    assert frame_size_for(1500, headroom=512) == 4096


def test_packet_limit_per_port_kind_and_through_a_steered_port():
    assert packet_limit(afxdp(4096)) == 3840  # the kernel copies received frames after 256 bytes of headroom
    assert packet_limit(SimpleNamespace(ports=[afxdp(2048, 64)])) == 1728
    assert packet_limit(SimpleNamespace(block_size=1 << 20, frame_size=4096)) == 4048  # PACKET_MMAP TX slot
    assert packet_limit(SimpleNamespace(umem=SimpleNamespace(frame_size=2048))) == 2048  # socket port
    assert packet_limit(object()) is None


@pytest.mark.parametrize("encap", [UdpEncap("02:00:00:00:00:01", "10.0.0.1", 7000, mtu=3506),
                                   EthEncap("02:00:00:00:00:01", mtu=3506)])
def test_the_datagram_follows_the_mtu_with_the_headers_counted(encap):
    ep = TransportEndpoint(afxdp(4096), encap, own_port=False, codec=_python_codec())
    assert ep.config.max_datagram_size == encap.max_datagram == (3478 if encap.name == "udp" else 3506)
    assert encap.header_len + ep.config.max_datagram_size == 3506 + 14  # the whole frame is MTU + Ethernet
    assert ep.config.mss == ep.config.max_datagram_size - 46


def test_an_mtu_larger_than_one_frame_is_refused_naming_the_fix():
    encap = UdpEncap("02:00:00:00:00:01", "10.0.0.1", 7000, mtu=9000)
    with pytest.raises(UsageError) as e:
        TransportEndpoint(afxdp(4096), encap, own_port=False, codec=_python_codec())
    msg = str(e.value)
    assert "MTU 9000" in msg and "8972" in msg and "at most 3840" in msg and "--mtu 3826" in msg, msg
    check_fits(encap, 3826 - 28, afxdp(4096))  # sized for the largest MTU one frame carries: fine


def test_congestion_controller_is_chosen_by_the_endpoint():
    encap = UdpEncap("02:00:00:00:00:01", "10.0.0.1", 7000)
    assert TransportEndpoint(afxdp(2048), encap, own_port=False, codec=_python_codec(),
                             congestion="bbr").config.congestion == "bbr"


def _python_codec():
    from kbypass import backend

    return backend.codec("python")


def test_jumbo_flights_delay_their_acks_and_1500_does_not():
    from kbypass.xfer.sizing import default_config

    assert default_config(65507).ack_delay == pytest.approx(1e-3)
    assert default_config(65507, congestion="reno").ack_delay == pytest.approx(1e-3)
    assert default_config(1472).ack_delay == 0.0


def test_jumbo_acks_come_every_2_mib_and_one_pacing_burst_sends_what_an_ack_frees():
    """A receiver of jumbo datagrams acknowledges every 2 MiB (32 of 64 KiB), and the sender's pacer lets that
    much go at once: each ACK's room goes out in one send, so with send() corked the sender pumps about
    once per 2 MiB. One frame a datagram keeps 1 MiB (more than its batches: per batch)."""
    from kbypass.proto.transport.bbr import Bbr
    from kbypass.xfer.sizing import default_config

    cfg = default_config(65507)
    assert 2_000_000 <= cfg.ack_bytes <= 2 << 20 and cfg.max_window >= 2 * cfg.ack_bytes  # two ACKs' room in flight
    cc = Bbr(cfg.mss, max_window=cfg.window_limit)
    cc.pacing_rate = 20e9 / 8  # 20 Gbit/s: its 5 ms of allowance is far more than the burst cap
    due = -(-cfg.ack_bytes // cfg.mss)  # full segments that make an ACK due (Connection.receive_run's cut)
    assert due * cfg.mss <= cc._burst()  # ... all of them in one burst
    assert default_config(1472).ack_bytes == 1 << 20
