"""TCP, sans-IO (h11 style): segments and time in, segments and events out. No sockets, threads or C.

The API (stable: TcpEndpoint and the tools build on it)::

    from kbypass.proto import tcp

    seg = tcp.parse_segment(src_ip, dst_ip, raw)        # raw: the IPv4 payload; raises tcp.TcpParseError
    raw = seg.encode(src_ip, dst_ip)                     # checksum over the IPv4 pseudo-header filled in
    # Segment: immutable (src_port, dst_port, seq, ack, flags, window, options: tcp.Options, payload);
    # flags are ints: tcp.SYN | tcp.ACK ...; options: mss, wscale, sack_permitted, timestamps, sack.

    listener = tcp.TcpListener(local_ip, local_port, config=tcp.TcpConfig(...))
    out, conn = listener.receive(seg, remote_ip, now)    # SYN -> SYN-ACK (or a cookie); ACK -> conn
    # send `out` to remote_ip; a conn returned is ESTABLISHED: queue it for accept().
    listener.next_timer() / listener.on_timer(now) -> [(remote_ip, seg)]   # SYN-ACK retransmissions

    conn = tcp.TcpConnection.connect(local=(ip, port), remote=(ip, port), now=now, config=...)
    conn.receive(seg, now)           # a segment for this 4-tuple
    conn.send(data) -> int           # bytes accepted into the send buffer (WindowOpened says when to retry)
    conn.shutdown()                  # FIN after the queued data (half close); conn.abort(): RST now
    conn.segments_to_send(now) -> [Segment]   # to conn.remote; call after EVERY other call, including
                                              # next_event() (a read may reopen the window)
    conn.next_event() -> Event | None         # Connected, Data(bytes), EndOfStream, WindowOpened(room),
                                              # Closed, Reset(reason)
    conn.next_timer() -> float | None; conn.on_timer(now)
    conn.state (tcp.State); conn.finished (CLOSED: forget it; TIME_WAIT still answers FINs); conn.stats

    tcp.reset_for(seg) -> Segment | None      # what a closed port answers (RST), never to a RST

Errors: send() on a dead connection raises TcpResetError (ConnectionResetError), TcpRefusedError
(ConnectionRefusedError, after Reset("refused")), TcpTimeoutError, or TcpStateError (BrokenPipeError,
after our own shutdown). Reset.reason is one of tcp.REFUSED, PEER_RESET, TIMED_OUT, KEEPALIVE, ABORTED.

Demultiplexing is the endpoint's: segments whose 4-tuple has a connection go to it, the rest to the
listener of the port (or get `reset_for`). A SYN that finds its 4-tuple in TIME_WAIT with a higher sequence
number ends the TIME_WAIT (conn.finished becomes true): forget the old connection and give the same SYN to
the listener. Times are seconds (float, any monotonic origin).

What it does: handshake with MSS, window scaling, SACK-permitted and timestamps negotiated (simultaneous
open too); cumulative and SACK acknowledgements, delayed ACKs, receiver and sender SWS avoidance; RTO per
RFC 6298 (Karn, backoff); fast retransmit, RFC 6675 SACK recovery, lost-retransmission detection and tail
loss probes (RFC 8985 7); NewReno and CUBIC (pluggable: congestion.CONTROLLERS); RFC 7323 RTTM and PAWS;
zero-window probing; bounded out-of-order reassembly; RFC 9293's state machine with half close and
TIME_WAIT; RFC 5961 challenge ACKs (rate limited); keepalive; RFC 6528 ISNs; a SYN backlog with SYN
cookies that keep window scaling and SACK in the timestamp.

Modules: segment (codec), options negotiation and the receive path in connection, the send path and
timers in output, states (the transition table), sendq (send buffer + SACK scoreboard), recvq
(reassembly), congestion (NewReno, CUBIC), isn (RFC 6528 ISNs, SYN cookies), listener, sim (a pair over
simulated faulty links). Tests: tests/unit/test_tcp_*.py, tests/fuzz/test_tcp_fuzz.py, and against Linux
behind a TUN: tests/netns/test_tcp_linux.py.
"""

from .config import TcpConfig
from .connection import TcpConnection, TcpStats
from .errors import (
    TcpError,
    TcpParseError,
    TcpRefusedError,
    TcpResetError,
    TcpStateError,
    TcpTimeoutError,
    TcpUsageError,
)
from .events import (
    ABORTED,
    KEEPALIVE,
    PEER_RESET,
    REFUSED,
    TIMED_OUT,
    Closed,
    Connected,
    Data,
    EndOfStream,
    Event,
    Reset,
    WindowOpened,
)
from .isn import IsnGenerator
from .listener import ListenerStats, TcpListener, reset_for
from .segment import (
    ACK,
    CWR,
    ECE,
    FIN,
    PSH,
    RST,
    SYN,
    URG,
    Options,
    Segment,
    parse_segment,
)
from .states import State

__all__ = [
    "ABORTED", "ACK", "CWR", "Closed", "Connected", "Data", "ECE", "EndOfStream", "Event", "FIN", "IsnGenerator",
    "KEEPALIVE", "ListenerStats", "Options", "PEER_RESET", "PSH", "REFUSED", "RST", "Reset", "SYN", "Segment",
    "State", "TIMED_OUT", "TcpConfig", "TcpConnection", "TcpError", "TcpListener", "TcpParseError",
    "TcpRefusedError", "TcpResetError", "TcpStateError", "TcpStats", "TcpTimeoutError", "TcpUsageError", "URG",
    "WindowOpened", "parse_segment", "reset_for",
]
