"""Ping-pong message format (against bytes a real sockperf put on the wire), the client/server loops over
a fake link, and the endpoint's scalar fast path (accept and build) against the protocol modules."""

import collections
import socket

import pytest

from kbypass.apps import pingpong as pp
from kbypass.errors import UsageError
from kbypass.proto import checksum as ck
from kbypass.proto import ipv4, udp
from kbypass.proto.stack import Stack

# sockperf 3.7 `ping-pong -m 20`, first message and its server's answer (tcpdump, UDP payloads)
SOCKPERF_CLIENT = bytes.fromhex("0000000000000001000300000014b73158a35a25")
SOCKPERF_SERVER = bytes.fromhex("0000000000000001000200000014b73158a35a25")


def test_server_answers_like_sockperf_server():
    assert pp.answer(SOCKPERF_CLIENT) == SOCKPERF_SERVER


def test_client_message_matches_sockperf_layout():
    m = pp.message(1, 20)
    assert m[:14] == SOCKPERF_CLIENT[:14] and len(m) == 20
    assert pp.is_answer(SOCKPERF_SERVER, 1)
    assert not pp.is_answer(SOCKPERF_SERVER, 2)
    assert not pp.is_answer(SOCKPERF_CLIENT, 1)  # our own message reflected with the client flag still set


def test_answer_edge_cases():
    assert pp.answer(b"short") == b"short"  # not sockperf: plain echo
    no_pong = pp.HEADER.pack(5, pp.FLAG_CLIENT, 14)
    assert pp.answer(no_pong) is None
    with pytest.raises(UsageError, match="14 bytes"):
        pp.message(1, 13)


class FakeLink:
    """Two endpoints' recvfrom/sendto over in-memory queues; `lose` drops every n-th client message."""

    def __init__(self, lose: int = 0):
        self.to_server = collections.deque()
        self.lose = lose
        self.n = 0

    def client(self):
        link = self

        class Client:
            def sendto(self, data, addr):
                link.n += 1
                if link.lose and link.n % link.lose == 0:
                    return len(data)
                out = pp.answer(data)  # the server, inline
                if out is not None:
                    link.to_server.append(out)
                return len(data)

            def recvfrom(self, timeout=None):
                if not link.to_server:
                    raise TimeoutError
                return link.to_server.popleft(), ("10.0.0.2", 11111)

        return Client()


def test_ping_over_fake_link_counts_samples_and_losses():
    res = pp.ping(FakeLink().client(), ("10.0.0.2", 11111), size=64, count=500, warmup=10)
    s = res.summary()
    assert s["samples"] == 500 and s["lost"] == 0 and s["sent"] == 500  # measured messages only
    assert s["warmup"] == 10 and s["warmup_lost"] == 0
    assert 0 < s["p50_us"] <= s["p90_us"] <= s["p99_us"] <= s["p999_us"] <= s["max_us"] < 100_000
    lossy = pp.ping(FakeLink(lose=10).client(), ("10.0.0.2", 11111), size=20, count=90, warmup=0,
                    reply_timeout=0.01)
    assert lossy.samples == 90 and lossy.lost == lossy.sent // 10 == 9 and lossy.sent == 99


class DeadLink:
    """A server that never answers; counts what was sent."""

    def __init__(self):
        self.sent = []

    def sendto(self, data, addr):
        self.sent.append(data)
        return len(data)

    def recvfrom(self, timeout=None):
        raise TimeoutError


def test_all_lost_reports_no_percentiles_and_gives_up():
    link = DeadLink()
    res = pp.ping(link, ("10.0.0.2", 11111), size=20, count=10, warmup=2, reply_timeout=0.01, give_up=0.1)
    s = res.summary()
    assert res.gave_up and s["gave_up"] and s["samples"] == 0
    assert all(s[k] is None for k in ("p50_us", "p90_us", "p99_us", "p999_us", "min_us", "max_us", "mean_us"))
    assert s["warmup"] == 2 and s["warmup_lost"] == 2 and s["sent"] == s["lost"] == len(link.sent) - 2
    err = pp.client_error(res, "10.0.0.2:11111", 0.1)
    assert "no answer from 10.0.0.2:11111 for 0.1 s" in str(err) and "\n" not in str(err)
    ok = pp.ping(FakeLink().client(), ("10.0.0.2", 11111), size=20, count=5, warmup=0)
    assert pp.client_error(ok, "x") is None


def test_a_signal_during_an_answered_warm_up_is_not_the_servers_silence():
    """The signal came after the server answered the first warm-up message (a slow start under load left
    no time to measure): interrupted, not "no answer". Stopped while every message went unanswered: the
    error stands, and so it does without a signal."""
    link = FakeLink().client()
    sends = []
    stop = lambda: len(sends) >= 1  # noqa: E731  the signal lands right after the first round trip
    real = link.sendto
    link.sendto = lambda data, addr: sends.append(data) or real(data, addr)
    res = pp.ping(link, ("10.0.0.2", 11111), size=20, duration=5, warmup=100, stop=stop)
    assert (res.warmup, res.warmup_lost, res.sent, res.samples) == (1, 0, 0, 0)
    assert pp.client_error(res, "10.0.0.2:11111", stopped=True) is None
    assert "no answer" in str(pp.client_error(res, "10.0.0.2:11111"))
    dead = DeadLink()
    silent = pp.ping(dead, ("10.0.0.2", 11111), size=20, duration=5, warmup=2, reply_timeout=0.01,
                     stop=lambda: len(dead.sent) >= 3)
    assert silent.warmup == silent.warmup_lost == 2 and silent.samples == 0
    assert "no answer" in str(pp.client_error(silent, "10.0.0.2:11111", stopped=True))
    nothing = pp.ping(dead, ("10.0.0.2", 11111), size=20, duration=5, stop=lambda: True)
    assert pp.client_error(nothing, "10.0.0.2:11111", stopped=True) is None


def test_reply_timeout_must_be_positive():
    for bad in (0, -1, float("nan")):
        with pytest.raises(UsageError, match="--reply-timeout"):
            pp.ping(DeadLink(), ("10.0.0.2", 1), count=1, reply_timeout=bad)
    with pytest.raises(UsageError, match="--idle-timeout"):
        pp.ping(DeadLink(), ("10.0.0.2", 1), count=1, give_up=0)


def _cli(capsys, *argv):
    from kbypass.cli import main

    try:
        code = main(["pingpong", "client", "--backend", "socket", "--ip", "127.0.0.1", *argv])
    except SystemExit as e:  # argparse refused an option
        code = e.code
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_client_against_a_dead_server_stops_with_an_error(capsys):
    dead = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    dead.bind(("127.0.0.1", 0))  # bound, never answers
    try:
        code, out, err = _cli(capsys, "--dst", f"127.0.0.1:{dead.getsockname()[1]}", "--count", "5",
                              "--warmup", "0", "--reply-timeout", "0.05", "--idle-timeout", "0.3", "--json")
    finally:
        dead.close()
    assert code == 2
    assert err.startswith("kbypass: error: no answer from 127.0.0.1:") and err.count("\n") == 1
    import json

    summary = json.loads(out)
    assert summary["samples"] == 0 and summary["p50_us"] is None


def test_cli_refuses_a_zero_reply_timeout(capsys):
    code, out, err = _cli(capsys, "--dst", "127.0.0.1:9", "--count", "1", "--reply-timeout", "0")
    assert code == 2 and err.startswith("kbypass: error: pingpong client: argument --reply-timeout: '0': give a positive")
    code, out, err = _cli(capsys, "--dst", "127.0.0.1:9", "--count", "1", "--gateway", "10.0.0.1")
    assert code == 2 and "--gateway is for the afxdp backend" in err


def test_two_servers_do_not_reflect_each_others_answers():
    msg = pp.message(7, 64)
    a = pp.answer(msg)
    assert a is not None and pp.is_answer(a, 7)
    assert pp.answer(a) is None  # an answer is never answered
    assert pp.answer(SOCKPERF_SERVER) is None
    plain = b"a plain echo message, not sockperf"
    assert pp.answer(plain) == plain


def test_answers_count_only_from_the_server_and_warmup_is_counted_apart():
    sent = []
    inbox = collections.deque()

    class Ep:
        def sendto(self, data, addr):
            sent.append(data)
            # someone else answers first (right sequence number, wrong address), then the server
            inbox.append((pp.answer(data), ("10.0.0.99", 11111)))
            inbox.append((pp.answer(data), ("10.0.0.2", 11111)))
            return len(data)

        def recvfrom(self, timeout=None):
            if not inbox:
                raise TimeoutError
            return inbox.popleft()

    res = pp.ping(Ep(), ("10.0.0.2", 11111), size=32, count=4, warmup=3)
    assert res.samples == 4 and res.lost == 0 and res.sent == 4 and res.warmup == 3
    flags = [m[9] for m in sent]
    # no warm-up flag even in the warm-up: a sockperf server leaves flagged messages unanswered
    assert flags == [pp.FLAG_CLIENT | pp.FLAG_PONG] * 7
    inbox.clear()

    class Impostor(Ep):
        def sendto(self, data, addr):
            sent.append(data)
            inbox.append((pp.answer(data), ("10.0.0.99", 11111)))
            return len(data)

    res = pp.ping(Impostor(), ("10.0.0.2", 11111), size=32, count=2, warmup=0, reply_timeout=0.01, give_up=0.05)
    assert res.samples == 0 and res.gave_up


def test_latbench_refuses_empty_rows_and_flags_heavy_loss():
    from kbypass.bench import latency as latbench
    from kbypass.errors import KbypassError

    empty = {"p50_us": None, "p90_us": None, "p99_us": None, "p999_us": None, "samples": 0, "sent": 9, "lost": 9}
    with pytest.raises(KbypassError, match="measured no latency"):
        latbench.check_row("kbypass afxdp busy", empty)
    with pytest.raises(KbypassError, match="measured no latency"):
        latbench.check_row("x", {"p50_us": 0.0, "p90_us": 0.0, "p99_us": 0.0, "p999_us": 0.0, "samples": 0})
    good = {"p50_us": 10.0, "p90_us": 11.0, "p99_us": 20.0, "p999_us": 30.0, "samples": 900, "sent": 1000,
            "lost": 100}
    assert "heavy loss" in latbench.check_row("x", dict(good))["flag"]
    assert "flag" not in latbench.check_row("x", dict(good, lost=1))
    assert "flag" not in latbench.check_row(latbench.ANCHOR, {k: good[k] for k in latbench.KEYS})


def test_ping_needs_a_stop_condition():
    with pytest.raises(UsageError, match="duration"):
        pp.ping(FakeLink().client(), ("10.0.0.2", 1))


def test_serve_answers_until_count():
    msgs = collections.deque(pp.message(i, 32) for i in range(1, 6))
    sent = []

    class Ep:
        def recvfrom(self, timeout=None):
            if not msgs:
                raise TimeoutError
            return msgs.popleft(), ("10.0.0.1", 999)

        def sendto(self, data, addr):
            sent.append((data, addr))

    res = pp.serve(Ep(), count=5, duration=5)
    assert res.received == res.answered == 5
    assert [pp.is_answer(d, i + 1) for i, (d, _) in enumerate(sent)] == [True] * 5


# ---- the endpoint's scalar fast path -------------------------------------------------------------

MAC_A, MAC_B = bytes.fromhex("026b62000001"), bytes.fromhex("026b62000002")
IP_A, IP_B = socket.inet_aton("10.77.0.1"), socket.inet_aton("10.77.0.2")


def to_us() -> udp.PlainUdp:
    """What the endpoint bound to 10.77.0.2:4321 accepts on its fast path."""
    return udp.PlainUdp(MAC_B, IP_B, 4321, socket.inet_aton("10.77.0.255"))


def good(payload=b"hello world", **kw):
    return bytearray(udp.build_udp_frame(MAC_A, MAC_B, IP_A, IP_B, 5555, 4321, payload, **kw))


def fix_ip_checksum(f):
    f[24:26] = b"\0\0"
    f[24:26] = ck.internet_checksum(bytes(f[14:14 + (f[14] & 15) * 4])).to_bytes(2, "big")
    return f


def malformed():
    out = {}
    f = good(); f[41] ^= 1; out["bad udp checksum"] = f
    f = good(); f[25] ^= 1; out["bad ip checksum"] = f
    out["truncated"] = good()[:40]
    f = good(); f[16:18] = (200).to_bytes(2, "big"); out["ip length lies"] = fix_ip_checksum(f)
    f = good(); f[38:40] = (300).to_bytes(2, "big"); out["udp length lies"] = f
    f = good(); f[20] = 0x20; out["fragment"] = fix_ip_checksum(f)
    f = good(); f[38:40] = b"\0\0"; f[40:42] = b"\0\0"; out["zero udp length"] = f
    f = good(); f[36:38] = (4322).to_bytes(2, "big"); out["other port"] = f
    f = good(); f[12:14] = b"\x88\xb5"; out["unknown ethertype"] = f
    # IP options: a 24-byte header (one NOP-padded option word)
    seg = udp.build_udp(IP_A, IP_B, 5555, 4321, b"opts")
    hdr = bytearray(ipv4.build_ipv4_header(IP_A, IP_B, 17, len(seg)))
    hdr[0] = 0x46
    hdr[2:4] = (24 + len(seg)).to_bytes(2, "big")
    hdr = hdr + b"\x01\x01\x01\x00"
    f = bytearray(MAC_B + MAC_A + b"\x08\x00") + hdr + seg
    out["ip options"] = fix_ip_checksum(f)
    return out


def test_fast_path_accepts_valid_udp():
    accept = to_us().accept
    assert accept(bytes(good())) == (b"hello world", IP_A, 5555)
    assert accept(bytes(good(b"odd"))) == (b"odd", IP_A, 5555)
    padded = bytes(good(b"x")) + b"\0" * 10  # Ethernet padding after the datagram is not payload
    assert accept(padded) == (b"x", IP_A, 5555)


@pytest.mark.parametrize("name", sorted(malformed()))
def test_fast_path_refuses_malformed_and_stack_counts_it(name):
    frame = bytes(malformed()[name])
    assert to_us().accept(frame) is None
    stack = Stack(MAC_B, IP_B, 24, 0.0, udp_ports=[4321])
    assert stack.receive(frame, 0.0) == []  # never answered
    assert stack.next_event() is None and sum(stack.drops().values()) == 1


def test_built_frames_parse_with_valid_checksums():
    stack = Stack(MAC_A, IP_A, 24, 0.0, udp_ports=[5555])
    tmpl = udp.frame_template(MAC_B, MAC_A, IP_B, IP_A, 4321, 5555)
    flow = udp.UdpFlow(tmpl)
    assert flow.template == tmpl
    for ident, payload in enumerate((b"", b"a", b"ab", bytes(range(256)) * 5)):
        frame = flow.frame(payload, ident)
        stack.receive(frame, 0.0)
        ev = stack.next_event()
        assert ev is not None and ev.payload == payload, stack.drops()
