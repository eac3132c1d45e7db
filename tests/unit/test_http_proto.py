"""kbypass.proto.http (the responder's sans-IO HTTP/1.1): pipelining, keep-alive rules, request bodies
skipped across feeds, refusals with the right status, bodies produced in pieces that add up to the digest
a client checks, and static files confined to the root."""

import hashlib

import pytest

from kbypass.proto import http

DATE = "Sun, 06 Dec 2026 12:00:00 GMT"


def drain(body, room=7000):
    out = bytearray()
    while True:
        piece = body.next(room)
        if not piece:
            return bytes(out)
        out += piece


def test_pipelined_requests_split_anywhere_come_out_in_order():
    wire = (b"GET /1 HTTP/1.1\r\nHost: x\r\n\r\n"
            b"POST /2 HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello"
            b"\r\nGET /3 HTTP/1.1\r\nhost: x\r\nConnection: close\r\n\r\n")
    for cut in range(len(wire) + 1):
        p = http.RequestParser()
        reqs = p.feed(wire[:cut]) + p.feed(wire[cut:])
        assert [r.target for r in reqs] == ["/1", "/2", "/3"]
        assert [r.keep_alive for r in reqs] == [True, True, False]


def test_keep_alive_defaults_by_version():
    p = http.RequestParser()
    r10, r10k = p.feed(b"GET / HTTP/1.0\r\n\r\nGET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n")
    assert not r10.keep_alive and r10k.keep_alive


@pytest.mark.parametrize("wire,status", [
    (b"GET / HTTP/1.1\r\n\r\n", 400),  # no Host
    (b"GET / HTTP/2.0\r\nHost: x\r\n\r\n", 505),
    (b"GARBAGE\r\n\r\n", 400),
    (b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n", 501),
    (b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 1, 2\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\nHost: x\r\n folded\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\nHost: x\r\nX: " + b"a" * 20000, 431),
])
def test_bad_requests_get_their_status_and_end_the_parser(wire, status):
    p = http.RequestParser()
    with pytest.raises(http.HttpError) as e:
        p.feed(wire)
    assert e.value.status == status
    assert p.feed(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n") == []  # nothing after a refusal


def test_generated_body_matches_its_digest_in_any_piece_size():
    size = 3 * 65521 + 12345
    req = http.Request("GET", "/", "HTTP/1.1", {"host": "x"})
    head, body, keep = http.respond(req, http.Site(body_size=size), DATE)
    assert keep and b"Content-Length: %d\r\n" % size in head and head.endswith(b"\r\n\r\n")
    for room in (1, 1448, 100000):
        _, body, _ = http.respond(req, http.Site(body_size=size), DATE)
        if room == 1:  # a byte at a time is slow: check a prefix
            assert b"".join(body.next(1) for _ in range(3000)) == http.generated(0, 3000)
            continue
        assert hashlib.sha256(drain(body, room)).hexdigest() == http.generated_sha256(size)
    # the period is prime and not a power of two: a block shifted by a segment differs
    assert http.generated(0, 1448) != http.generated(1448, 1448)


def test_get_n_and_head():
    head, body, _ = http.respond(http.Request("GET", "/777", "HTTP/1.1", {"host": "x"}), http.Site(), DATE)
    assert len(drain(body)) == 777
    head, body, _ = http.respond(http.Request("HEAD", "/", "HTTP/1.1", {"host": "x"}), http.Site(body_size=50), DATE)
    assert b"Content-Length: 50" in head and drain(body) == b""
    head, _, _ = http.respond(http.Request("DELETE", "/", "HTTP/1.1", {"host": "x"}), http.Site(), DATE)
    assert head.startswith(b"HTTP/1.1 405") and b"Allow: GET, HEAD" in head


def test_static_files_stay_inside_the_root(tmp_path):
    root = tmp_path / "www"
    root.mkdir()
    (root / "a.bin").write_bytes(b"x" * 300000)
    (root / "index.html").write_bytes(b"<p>hi</p>")
    (tmp_path / "secret").write_bytes(b"no")
    (root / "link").symlink_to(tmp_path / "secret")
    site = http.Site(root=str(root))

    def get(target):
        return http.respond(http.Request("GET", target, "HTTP/1.1", {"host": "x"}), site, DATE)

    head, body, _ = get("/a.bin")
    assert head.startswith(b"HTTP/1.1 200") and drain(body) == b"x" * 300000
    assert drain(get("/")[1]) == b"<p>hi</p>"
    for bad in ("/../secret", "/%2e%2e/secret", "/link", "/nothere"):
        assert get(bad)[0].startswith(b"HTTP/1.1 404"), bad


def test_response_reader_frames_by_length_chunks_and_close():
    head = b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n"
    for cut in range(len(head) + 11):
        r = http.ResponseReader()
        wire = head + b"0123456789" + b"HTTP/1.1 200"  # the next response must not leak into this body
        got = r.feed(wire[:cut]) + r.feed(wire[cut:])
        assert got == b"0123456789" and r.done and r.status == 200
    chunked = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5;x=1\r\nhello\r\n6\r\n world\r\n0\r\nT: 1\r\n\r\n"
    for cut in range(len(chunked) + 1):
        r = http.ResponseReader()
        assert r.feed(chunked[:cut]) + r.feed(chunked[cut:]) == b"hello world" and r.done
    r = http.ResponseReader()
    assert r.feed(b"HTTP/1.0 200 OK\r\n\r\nabc") == b"abc" and not r.done
    assert r.end() == b"" and r.done
    r = http.ResponseReader()
    r.feed(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nab")
    with pytest.raises(http.HttpError):
        r.end()  # cut short


def test_bare_lf_line_endings_are_accepted_split_anywhere():
    """RFC 9112 2.2: a recipient may take a bare LF as a line end (nginx and http.server do): such a request
    is answered at once, not after 16 KB; CRLF and LF mixed in one head too."""
    wire = (b"HEAD /1 HTTP/1.1\nHost: x\n\n"
            b"\nGET /2 HTTP/1.1\r\nHost: y\nX-A: 1\r\n\r\n"
            b"GET /3 HTTP/1.0\r\n\n")
    for cut in range(len(wire) + 1):
        p = http.RequestParser()
        reqs = p.feed(wire[:cut]) + p.feed(wire[cut:])
        assert [(r.method, r.target, r.headers) for r in reqs] == [
            ("HEAD", "/1", {"host": "x"}), ("GET", "/2", {"host": "y", "x-a": "1"}), ("GET", "/3", {})]
        assert not p.pending


def test_pending_says_a_request_is_under_way():
    p = http.RequestParser()
    assert not p.pending and p.feed(b"\r\n") == [] and not p.pending  # empty lines before a request: idle
    assert p.feed(b"GET / HTTP/1.1\r\n") == [] and p.pending
    assert len(p.feed(b"Host: x\r\nContent-Length: 3\r\n\r\nab")) == 1 and p.pending  # a body byte to come
    assert p.feed(b"c") == [] and not p.pending
