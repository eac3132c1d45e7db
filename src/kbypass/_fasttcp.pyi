"""The TCP fast path in C (csrc/fasttcp.c over the C core's kb_tcp): header prediction and established-path frames.
Its reference is kbypass.proto.tcp (TcpConnection.prediction / receive_predicted, Segment.encode); a host without it
uses kbypass.proto.tcp.fastpath, the same names in Python (nothing predicted)."""

from _typeshed import ReadableBuffer

class Prediction:
    """One connection's expected next segment (csrc/core/kb_tcp.h struct kb_tcp_pred), armed from
    TcpConnection.prediction(); `owner` is handed back with each HIT and never looked into (None once the
    garbage collector has cleared a cycle through it)."""

    def __init__(self, local_ip: bytes, local_port: int, remote_ip: bytes, remote_port: int, owner: object = None) -> None: ...
    @property
    def armed(self) -> bool: ...
    @property
    def owner(self) -> object: ...
    @property
    def address(self) -> int:
        """Where its struct kb_tcp_pred lives, for the preload shim's C to predict with (kbp_tcpfast.c)."""
    def arm(self, rcv_nxt: int, snd_una: int, snd_max: int, rcv_wnd: int, ts_ok: bool, ts_recent: int,
            last_ack_sent: int, /) -> None:
        """Predict from these wire values (TcpConnection.prediction's tuple)."""
    def disarm(self) -> None:
        """Predict nothing until the next arm()."""
    def state(self) -> tuple[int, int, int, int, int, int, int]:
        """The armed fields in arm()'s order (as C advanced them)."""

def rx(frame: ReadableBuffer, table: dict[int, Prediction], /) -> None | tuple[
        object, int, int, int, int, int | None, int | None, bytes]:
    """None (the slow path: no prediction for the frame's 4-tuple, or it missed) or, for a HIT,
    (owner, seq, ack, flags, window, tsval, tsecr, payload); the table's keys are
    (peer IPv4 << 32) | (peer port << 16) | local port."""

def frame(eth: bytes, src_ip: bytes, dst_ip: bytes, ident: int, sport: int, dport: int, seq: int, ack: int,
          flags: int, window: int, ts: tuple[int, int] | None, payload: ReadableBuffer, /) -> bytes:
    """One Ethernet + IPv4 + TCP frame (no options, or NOP NOP timestamps), both checksums filled."""

SOCKPERF: str  # Canned.arm's answers for sockperf's rule (csrc/core/kb_sockperf.h) instead of a table
NEXT_SEND: str  # ... for the application's next send (send_canned), a client's

class Canned:
    """One connection's canned answers (csrc/core/kb_http.h struct kb_http_pred), armed from
    TcpConnection.canned_state() with the application's table (whole request head -> (answer bytes, ...)),
    SOCKPERF or NEXT_SEND."""

    @property
    def armed(self) -> bool: ...
    def arm(self, eth: bytes, answers: dict[bytes, tuple] | str, snd_wscale: int, rcv_wscale: int, avail: int, sws: int,
            adv_right: int, ts_offset: int, mss: int, cwnd: int, valid_until: float, /) -> None: ...
    @property
    def owed(self) -> bool:
        """Exchanges C answered and kept (a run) that take_run() has not handed over."""
    @property
    def answered_at(self) -> float:
        """When the last canned answer of this connection left (0.0: none yet)."""
    def arm_run(self, snd_mss: int, send_buffer: int, max_snd_wnd: int, cwnd: int, ssthresh: int, srtt: float,
                rttvar: float, min_rtt: float, min_rto: float, max_rto: float, granularity: float,
                rtt_time: float, cubic: bool, cc_mss: int, acc: int, w_max: float, k: float, epoch: float | None,
                w_est: float, /) -> None:
        """After arm(): keep the exchanges answered (TcpConnection.canned_run's fields; csrc/core/kb_http.h)."""
    def take_run(self) -> None | tuple:
        """What the kept exchanges did, for TcpConnection.canned_run_taken (None: nothing kept)."""
    def disarm(self) -> None: ...
    def state(self) -> tuple[int, int, int, int, int, int, int, int, float]:
        """The armed fields after eth and answers, in arm()'s order."""

def rx_canned(frame: ReadableBuffer, table: dict[int, Prediction], canned: dict[int, Canned], now: float,
              ident: int, tally: dict | None = None, /) -> None | bytes | tuple:
    """rx(frame, table), or for a HIT whose payload is whole request heads of the connection's armed table,
    (owner, seq, ack, flags, window, tsval, tsecr, payload, values, frame): the answer's frame, built; or that
    frame alone (bytes) when the connection's run kept the exchange. tally: value -> count of every answer
    (SOCKPERF's: the messages answered, under SOCKPERF)."""

def rx_burst(lane: object, tx: object, table: dict[int, Prediction], canned: dict[int, Canned], now: float,
             ident: int, tally: dict | None, max: int, /) -> tuple[int, int, int, int, list, int, BaseException | None]:
    """(frames, kept, udp, ident, items, more, error): up to max frames off the RX ring of `lane` (Lane.core), each
    as rx_canned takes it; kept answers go onto the TX ring of `tx` (another Lane.core). items, in arrival
    order: a frame for the general path, a HIT's 8-tuple, a reported answer's 10-tuple (not sent), a kept
    answer the TX ring could not take, (frame,). udp: frames to the lane's own UDP port. ident: the last
    IPv4 ident used. more: the burst stopped at a frame only the Python lane takes. error: None, or the exception
    that ended the burst early (a failed kick after the frame was queued, a bad ring, no memory), to raise once
    the rest is taken."""

def send_canned(prediction: Prediction, canned: Canned, data: ReadableBuffer, now: float, ident: int, /) -> bytes | None:
    """With the NEXT_SEND arming kept over one segment (rx_canned): data's frame as the answer to it, the
    prediction past the exchange; None (nothing moved) when the arming does not hold."""
