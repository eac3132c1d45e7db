"""getsockopt(TCP_INFO) of a shim connection (kbypass.proto.tcp.info through ShimTcp.tcp_info), without a
network: the test_shimtcp Pair, two hosts back to back. tests/netns/test_run_tcp_edges.py reads it from a C
program under `kbypass run` beside the kernel's own answer for the same exchange."""

from __future__ import annotations

import pathlib
import re
import struct

from kbypass.proto.tcp import info
from tests.unit.test_shimtcp import Pair

ROOT = pathlib.Path(__file__).resolve().parents[2]


def _info(p: Pair, side: str, sid: int) -> dict[str, int]:
    got = getattr(p, f"{side}_call")("tcp_info", sid)
    assert isinstance(got, bytes) and len(got) == 8 * len(info.FIELDS), got
    return dict(zip(info.FIELDS, struct.unpack(f"<{len(info.FIELDS)}Q", got)))


def test_the_c_side_reads_the_fields_in_the_order_python_sends_them():
    src = (ROOT / "csrc/preload/kbp_tcpinfo.c").read_text()
    block = src[src.index("#define TCPI_FIELDS(X)"):src.index("#define ONE")]
    assert tuple(re.findall(r"X\((\w+)\)", block)) == info.FIELDS


def test_an_established_connections_options_bytes_and_windows():
    p = Pair()
    p.established()
    assert p.cli_call("send", 7, b"a" * 5000) == 5000
    assert len(p.srv_call("recv", 2, 65536, 0)) == 5000
    cli, srv = _info(p, "cli", 7), _info(p, "srv", 2)
    for i in (cli, srv):
        assert i["state"] == 1  # TCP_ESTABLISHED
        assert i["options"] == info.OPT_TIMESTAMPS | info.OPT_SACK | info.OPT_WSCALE  # as Linux negotiates
        assert i["snd_mss"] == 1448 - 12 and i["advmss"] == 1448 - 12  # the timestamp option takes 12
        assert i["snd_cwnd"] >= 10 and i["snd_ssthresh"] == info.INFINITE_SSTHRESH  # slow start, no loss
        assert i["max_pacing_rate"] == (1 << 64) - 1 and i["reordering"] == 3
    assert cli["bytes_acked"] == 5001 and cli["bytes_sent"] == 5000 and cli["unacked"] == 0  # with the SYN
    assert srv["bytes_received"] == 5000 and srv["bytes_acked"] == 0  # a listener's side: Linux counts no SYN
    assert cli["segs_out"] >= 5 and srv["segs_in"] >= 5  # the handshake's ACK and four data segments
    conn = p.srv.by_sid[2].conn
    assert srv["rcv_space"] == conn._adv_right - conn.rcv_nxt > 0
    assert cli["snd_wnd"] == p.cli.by_sid[7].conn.snd_wnd > 0
    assert cli["total_retrans"] == 0 and cli["ca_state"] == info.CA_OPEN


def test_data_in_flight_unsent_bytes_and_ages():
    p = Pair()
    p.established()
    p.drop_to_cli = True  # the server's bytes go out and are never acknowledged
    assert p.srv_call("send", 2, b"b" * 3000) == 3000
    p.now += 0.25
    srv = _info(p, "srv", 2)
    assert srv["unacked"] == 3 and srv["bytes_acked"] == 0 and srv["notsent_bytes"] == 0  # 1436+1436+128
    assert srv["last_data_sent"] == 250 and srv["last_ack_recv"] == 250
    p.tick(5.0)  # the retransmission timeout fires
    srv = _info(p, "srv", 2)
    assert srv["total_retrans"] >= 1 and srv["retransmits"] >= 1 and srv["ca_state"] == info.CA_LOSS
    assert srv["rto"] > 1_000_000 * 0.2  # backed off from the minimum


def test_states_after_close_and_a_sid_that_is_not_a_connection():
    p = Pair()
    p.established()
    p.drop_to_cli = True
    p.srv_call("shutdown", 2, 1)  # SHUT_WR: our FIN, never acknowledged
    assert _info(p, "srv", 2)["state"] == 4  # TCP_FIN_WAIT1
    assert _info(p, "cli", 7)["state"] == 1  # the FIN did not arrive
    p.drop_to_cli = False
    p.cli_call("shutdown", 7, 1)  # the client's FIN, acknowledged: the server's byte count takes it
    assert _info(p, "srv", 2)["bytes_received"] == 1
    assert p.srv_call("tcp_info", 1) == b""  # the listener: the kernel's own answer stands (the shim reads 0 bytes)
    assert p.srv_call("tcp_info", 99) == b""
