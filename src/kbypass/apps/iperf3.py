"""iperf3's server side of one TCP test (client to server, `iperf3 -c` without -R/-u/--bidir), sans-IO, so an
unmodified `iperf3 -c` can measure a kbypass receiver.

The protocol (iperf3 3.x, iperf_api.c / iperf_server_api.c): the client opens a control connection and sends
its 37-byte cookie; the server answers with one-byte states. PARAM_EXCHANGE (9): the client sends its test
parameters as JSON (a 4-byte big-endian length, then the text). CREATE_STREAMS (10): the client opens each
data connection and sends the cookie on it first. TEST_START (1) and TEST_RUNNING (2): the client sends
data. It sends TEST_END (4) on the control connection when done; the server says EXCHANGE_RESULTS (13), the
client sends its results (length + JSON), the server its own (the bytes each stream received), then
DISPLAY_RESULTS (14); the client ends with IPERF_DONE (16). Stream ids count as iperf_add_stream numbers
them: 1, then 3, 4, ... A test this server cannot run (UDP, reverse, bidirectional) gets SERVER_ERROR (-2)
with iperf3's "unsupported" error number, which the client prints, and ends the session (`error` says why):
the receiver runs one test, so a test it cannot run ends it. A peer that does not speak the protocol (JSON that
is not an object, a "parallel" that is not 1..128) is an Iperf3Error, a KbypassError: one line, no traceback.

    s = Iperf3Session()
    out = s.control(data, now)        # bytes to write on the control connection
    sid = s.stream_opened()           # a data connection was accepted
    s.stream(sid, data, now)          # what it carried
    if s.ending: ...                  # TEST_END came: read what the streams still carry, then
    out = s.end(now)                  # EXCHANGE_RESULTS and the rest of the exchange
    s.finished, s.error, s.received, s.seconds
"""

from __future__ import annotations

import json
import struct

from kbypass.errors import KbypassError

COOKIE_SIZE = 37
TEST_START, TEST_RUNNING, TEST_END = 1, 2, 4
PARAM_EXCHANGE, CREATE_STREAMS = 9, 10
CLIENT_TERMINATE, EXCHANGE_RESULTS, DISPLAY_RESULTS, IPERF_DONE = 12, 13, 14, 16
SERVER_ERROR = -2
DRAIN_QUIET = 0.05  # seconds without stream data after TEST_END before the results go out
IEUNIMP = 13  # iperf3's "not implemented yet" i_errno (iperf_api.h)
MAX_STREAMS = 128  # iperf3's own limit on -P (MAX_STREAMS in iperf.h)


class Iperf3Error(KbypassError):
    """The peer broke iperf3's protocol (or left mid-test): what happened, on one line."""


class Iperf3Session:
    def __init__(self) -> None:
        self._buf = bytearray()
        self.cookie: bytes | None = None
        self.params: dict | None = None
        self.state = "cookie"  # cookie, params, streams, running, results, done
        self.finished = False
        self.error: str | None = None
        self._streams: dict[int, list] = {}  # id -> [cookie bytes seen, bytes received]
        self.started_at: float | None = None
        self.ended_at: float | None = None
        self.client_results: dict | None = None

    # ---- control connection ---------------------------------------------------------------------------
    def control(self, data: bytes, now: float) -> bytes:
        self._buf += data
        out = bytearray()
        while not self.finished:
            step = self._step(now)
            if step is None:
                break
            out += step
        return bytes(out)

    def _step(self, now: float) -> bytes | None:
        buf = self._buf
        if self.state == "cookie":
            if len(buf) < COOKIE_SIZE:
                return None
            self.cookie = bytes(buf[:COOKIE_SIZE])
            del buf[:COOKIE_SIZE]
            self.state = "params"
            return _state(PARAM_EXCHANGE)
        if self.state == "params":
            params = self._json()
            if params is None:
                return None
            self.params = _checked(params)
            why = self._unsupported(params)
            if why:
                self.error, self.finished = why, True
                return _state(SERVER_ERROR) + struct.pack("!ii", IEUNIMP, 0)
            self.state = "streams"
            return _state(CREATE_STREAMS)
        if self.state in ("streams", "running"):
            if not buf:
                return None
            s = struct.unpack("b", buf[:1])[0]
            del buf[:1]
            if s == TEST_END:
                self.ended_at = now
                self.state = "ending"  # the runner takes what is still in flight, then calls end()
                return None
            if s == CLIENT_TERMINATE:
                self.error, self.finished = "the client terminated the test", True
                return b""
            return b""  # other client states carry nothing for us
        if self.state == "ending":
            return None
        if self.state == "results":
            res = self._json()
            if res is None:
                return None
            self.client_results = res
            self.state = "done"
            return _json_msg(self._results()) + _state(DISPLAY_RESULTS)
        if self.state == "done":
            if not buf:
                return None
            s = struct.unpack("b", buf[:1])[0]
            del buf[:1]
            if s == IPERF_DONE:
                self.finished = True
            return b""
        return None

    @property
    def ending(self) -> bool:
        """The client said TEST_END: take the data still arriving on the streams, then call end()."""
        return self.state == "ending"

    def end(self, now: float) -> bytes:
        """Report the bytes received so far: EXCHANGE_RESULTS (the client's results and ours follow)."""
        if self.state != "ending":
            return b""
        self.ended_at = now
        self.state = "results"
        return _state(EXCHANGE_RESULTS) + self.control(b"", now)

    def _json(self) -> dict | None:
        buf = self._buf
        if len(buf) < 4:
            return None
        n = int.from_bytes(buf[:4], "big")
        if n > 1 << 20:
            raise Iperf3Error(f"a {n}-byte JSON message from the client: not iperf3")
        if len(buf) < 4 + n:
            return None
        text = bytes(buf[4:4 + n])
        del buf[:4 + n]
        try:
            return json.loads(text)
        except ValueError:
            raise Iperf3Error("the client's JSON does not parse: not iperf3") from None

    @staticmethod
    def _unsupported(p: dict) -> str | None:
        if p.get("udp") or not p.get("tcp", True):
            return "UDP tests are not supported by this receiver: use TCP (no -u)"
        if p.get("reverse") or p.get("bidirectional"):
            return "reverse and bidirectional tests are not supported: the client sends (no -R, --bidir)"
        return None

    def _results(self) -> dict:
        secs = 0.0 if self.started_at is None or self.ended_at is None else self.ended_at - self.started_at
        return {"cpu_util_total": 0.0, "cpu_util_user": 0.0, "cpu_util_system": 0.0, "sender_has_retransmits": 0,
                "streams": [{"id": sid, "bytes": st[1], "retransmits": -1, "jitter": 0, "errors": 0, "packets": 0,
                             "start_time": 0, "end_time": secs} for sid, st in self._streams.items()]}

    # ---- data connections -----------------------------------------------------------------------------
    @property
    def expected_streams(self) -> int:
        return (self.params or {}).get("parallel", 1)

    def stream_opened(self) -> int:
        if len(self._streams) >= self.expected_streams:
            raise Iperf3Error(f"a data connection past the {self.expected_streams} the client announced")
        sid = 1 if not self._streams else len(self._streams) + 2
        self._streams[sid] = [b"", 0]
        return sid

    def stream(self, sid: int, data: bytes, now: float) -> bytes:
        """Take a data connection's bytes; returns control bytes to write (TEST_START and TEST_RUNNING once
        every stream has sent its cookie)."""
        st = self._streams[sid]
        if len(st[0]) < COOKIE_SIZE:
            take = COOKIE_SIZE - len(st[0])
            st[0] += data[:take]
            data = data[take:]
            if len(st[0]) == COOKIE_SIZE and st[0] != self.cookie:
                raise Iperf3Error("a data connection with another test's cookie")
        st[1] += len(data)
        if self.state == "streams" and len(self._streams) == self.expected_streams and all(
                len(s[0]) == COOKIE_SIZE for s in self._streams.values()):
            self.state = "running"
            self.started_at = now
            return _state(TEST_START) + _state(TEST_RUNNING)
        return b""

    @property
    def received(self) -> int:
        return sum(s[1] for s in self._streams.values())

    @property
    def seconds(self) -> float:
        if self.started_at is None or self.ended_at is None:
            return 0.0
        return self.ended_at - self.started_at


def _checked(params) -> dict:
    """The client's parameters, as iperf3 sends them: a JSON object with "parallel" from 1 to MAX_STREAMS."""
    if not isinstance(params, dict):
        raise Iperf3Error(f"the client's parameters are {type(params).__name__}, not a JSON object: not iperf3")
    n = params.get("parallel", 1)
    if type(n) is not int or not 1 <= n <= MAX_STREAMS:
        raise Iperf3Error(f"the client asks for {n!r} parallel streams: iperf3 sends 1 to {MAX_STREAMS}")
    return params


def _state(s: int) -> bytes:
    return struct.pack("b", s)


def _json_msg(obj: dict) -> bytes:
    text = json.dumps(obj).encode()
    return len(text).to_bytes(4, "big") + text


def serve_one(listener, wait, clock, *, timeout: float | None = None, stop=lambda: False) -> Iperf3Session:
    """Run one iperf3 test on `listener` (socket-like: accept(), and sockets with recv/send, all non-blocking:
    a kbypass TcpListener or a kernel socket). wait(deadline) blocks until something may have happened;
    clock() is time.monotonic. The first connection is the control one, the rest are data streams. Returns
    the finished session (`error` says why when the client could not run its test); TimeoutError when no
    test finished within `timeout` seconds."""
    s = Iperf3Session()
    deadline = None if timeout is None else clock() + timeout
    control = None
    streams: list[list] = []  # [stream id, socket or None once the client closed it]
    pending = b""
    quiet_since = None
    try:
        while not s.finished and not stop():
            moved = False
            while True:
                try:
                    sock, _ = listener.accept()
                except (BlockingIOError, TimeoutError):
                    break
                sock.setblocking(False)
                moved = True
                if control is None:
                    control = sock
                else:
                    streams.append([s.stream_opened(), sock])
            for entry in streams:
                sid, sock = entry
                if sock is None:
                    continue
                for data in _drain(sock):
                    if not data:  # the client closed this stream (it may, once its test ended)
                        sock.close()
                        entry[1] = None
                        break
                    pending += s.stream(sid, data, clock())
                    moved = True
            if control is not None:
                for data in _drain(control):
                    if not data:
                        if s.finished:
                            break
                        raise Iperf3Error("the client closed the control connection before the end of the test")
                    pending += s.control(data, clock())
                    moved = True
                if s.ending:
                    # every byte the client sent was sent before TEST_END: report it once the streams
                    # have been quiet a moment (an iperf3 server reports what it read by then)
                    if moved or quiet_since is None:
                        quiet_since = clock()
                    elif clock() - quiet_since >= DRAIN_QUIET:
                        pending += s.end(clock())
                while pending:
                    try:
                        n = control.send(pending)
                    except BlockingIOError:
                        break
                    pending = pending[n:]
            if deadline is not None and clock() >= deadline:
                raise TimeoutError(f"no iperf3 test finished within {timeout} s")
            if not moved:
                wait(deadline)
    finally:
        for _, sock in streams:
            if sock is not None:
                sock.close()
        if control is not None:
            control.close()
    return s


def _drain(sock, limit: int = 64):
    """What a non-blocking socket holds now, in pieces (b"" once at the end of its stream)."""
    for _ in range(limit):
        try:
            data = sock.recv(1 << 20)
        except BlockingIOError:
            return
        except ConnectionError:
            data = b""
        yield data
        if not data:
            return
