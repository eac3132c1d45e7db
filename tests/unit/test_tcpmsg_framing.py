"""TcpMessages frames sockperf's TCP stream into whole messages: one message per read (the ping-pong case,
taken without copying), several per read, one split over reads, and a header that cannot be sockperf's."""

from kbypass.apps.pingpong import message
from kbypass.apps.tcpmsg import TcpMessages


class _Sock:
    def __init__(self, reads):
        self.peer, self.local = ("10.0.0.1", 4000), ("10.0.0.2", 11111)
        self._reads = list(reads)
        self.closed = False

    def setblocking(self, flag):
        pass

    @property
    def readable(self):
        return bool(self._reads)

    def recv(self, n):
        return self._reads.pop(0)

    def close(self):
        self.closed = True


class _Host:
    ip = "10.0.0.2"


def _messages(reads):
    sock = _Sock(reads)
    ep = TcpMessages(_Host(), sock=sock)
    out = []
    while ep._take():
        while ep._ready:
            out.append(ep._ready.popleft()[0])
    return out, ep, sock


def test_each_framing_of_the_stream_gives_the_same_messages():
    msgs = [message(i, n) for i, n in enumerate((64, 14, 1000, 64), 1)]
    stream = b"".join(msgs)
    for reads in ([*msgs], [stream], [stream[:5], stream[5:70], stream[70:]], [bytes([b]) for b in stream]):
        got, ep, _ = _messages(reads)
        assert got == msgs, reads
        assert ep.bad_streams == 0


def test_a_whole_message_read_alone_is_taken_as_it_came():
    m = message(7, 64)
    got, _, _ = _messages([m])
    assert got == [m] and got[0] is m


def test_a_length_no_sockperf_header_has_ends_the_connection():
    bad = bytes(10) + (5).to_bytes(4, "big") + bytes(50)  # a length below the header's own
    got, ep, sock = _messages([bad])
    assert got == [] and ep.bad_streams == 1 and sock.closed


class _BusyHost:
    """A host whose every receive brings one more whole message (a client that never waits)."""

    ip = "10.0.0.2"

    def __init__(self, sock):
        self.sock, self.calls, self.n = sock, [], 0

    def receive(self):
        self.calls.append("receive")
        self.n += 1
        self.sock._reads.append(message(self.n, 64))
        return True

    def transmit(self):
        self.calls.append("transmit")


def test_a_stream_of_messages_still_lets_the_host_transmit():
    """recvfrom hands a message over before the host transmits (its answer carries the ACK), but messages
    that keep coming do not hold back the host's timers and ACKs: at most 8 receives between transmits."""
    sock = _Sock([])
    host = _BusyHost(sock)
    ep = TcpMessages(host, sock=sock)
    for _ in range(40):
        ep.recvfrom(1.0)
    runs = "".join("r" if c == "receive" else "t" for c in host.calls).split("t")
    assert host.calls.count("transmit") >= 4 and max(len(r) for r in runs) <= 8
    assert host.calls[0] == "receive" and host.calls[1] == "receive"  # the first message went out untransmitted


class _Listener:
    port = 11111

    def __init__(self, sock):
        self._socks = [sock]

    def setblocking(self, flag):
        pass

    @property
    def pending(self):
        return len(self._socks)

    def accept(self, timeout):
        s = self._socks.pop()
        return s, s.peer


def test_pongs_are_armed_in_c_only_between_whole_messages():
    """pongs=True: TcpSocket.canned is SOCKPERF while no partial message waits here (C reads the next segment
    from a header on), None while one does (C would take its tail for a header); a client's is NEXT_SEND."""
    from kbypass.proto.tcp.fastpath import NEXT_SEND, SOCKPERF

    m = message(1, 64)
    sock = _Sock([m])
    ep = TcpMessages(_Host(), listener=_Listener(sock), pongs=True)
    assert ep._take() and sock.canned is SOCKPERF
    sock._reads = [m[:20]]
    ep._take()
    assert sock.canned is None
    sock._reads = [m[20:]]
    assert ep._take() and sock.canned is SOCKPERF
    client = _Sock([])
    TcpMessages(_Host(), sock=client)
    assert client.canned is NEXT_SEND
