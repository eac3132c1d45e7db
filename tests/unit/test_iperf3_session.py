"""kbypass.apps.iperf3's session against what a client that is not iperf3 sends: each is one Iperf3Error
(a KbypassError: `kbypass: error: ...`, no traceback), and an unsupported mode (-u) ends the session with
iperf3's SERVER_ERROR so the receiver ends too."""

import json
import struct

import pytest

from kbypass.apps.iperf3 import COOKIE_SIZE, SERVER_ERROR, Iperf3Error, Iperf3Session
from kbypass.errors import KbypassError

COOKIE = b"c" * COOKIE_SIZE


def params(obj) -> bytes:
    text = json.dumps(obj).encode()
    return len(text).to_bytes(4, "big") + text


@pytest.mark.parametrize("obj, words", [
    ([1], "list, not a JSON object"),
    ({"tcp": True, "parallel": "x"}, "'x' parallel streams"),
    ({"tcp": True, "parallel": -1}, "-1 parallel streams"),
    ({"tcp": True, "parallel": 0}, "0 parallel streams"),
    ({"tcp": True, "parallel": 100000}, "100000 parallel streams"),
    ({"tcp": True, "parallel": 2.5}, "2.5 parallel streams"),
    ({"tcp": True, "parallel": True}, "True parallel streams"),
])
def test_parameters_that_iperf3_never_sends_are_one_error(obj, words):
    s = Iperf3Session()
    s.control(COOKIE, 0.0)
    with pytest.raises(Iperf3Error, match=words.replace(".", r"\.")) as e:
        s.control(params(obj), 0.0)
    assert isinstance(e.value, KbypassError)


def test_no_more_data_connections_than_announced():
    s = Iperf3Session()
    s.control(COOKIE + params({"tcp": True, "parallel": 2}), 0.0)
    s.stream_opened()
    s.stream_opened()
    with pytest.raises(Iperf3Error, match="past the 2"):
        s.stream_opened()


def test_udp_ends_the_session_with_server_error():
    s = Iperf3Session()
    s.control(COOKIE, 0.0)
    out = s.control(params({"udp": True, "parallel": 1}), 0.0)
    assert out[:1] == struct.pack("b", SERVER_ERROR) and s.finished and "UDP" in s.error
