"""The responder's per-request shortcuts (kbypass.proto.http) give what the long way gives: a head parsed
before is answered by the same immutable Request (bodies still skipped, a failed parser stays failed, the
cache bounded), and respond_whole's pre-encoded answer is byte for byte respond()'s head and body, under
the Date it was asked with."""

from __future__ import annotations

import pytest

from kbypass.proto import http

DATE = "Sun, 06 Dec 2026 12:00:00 GMT"
LATER = "Sun, 06 Dec 2026 12:00:01 GMT"
GET = b"GET /x HTTP/1.1\r\nHost: h\r\n\r\n"


def test_a_head_seen_before_gives_the_same_request_as_a_fresh_parse():
    first = http.RequestParser().feed(GET)
    again = http.RequestParser().feed(GET)
    assert again[0] is first[0]  # one immutable object for every repeat
    assert (again[0].method, again[0].target, again[0].headers, again[0].keep_alive) == ("GET", "/x", {"host": "h"},
                                                                                          True)
    p = http.RequestParser()
    assert p.feed(bytearray(GET)) == first and p.feed(memoryview(GET)) == first  # any bytes-like
    assert [r.target for r in p.feed(GET * 3)] == ["/x"] * 3  # pipelined repeats


def test_a_cached_head_with_a_body_still_has_its_body_skipped():
    post = b"POST /p HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\n\r\n"
    for _ in range(2):  # the second time from the cache
        p = http.RequestParser()
        assert [r.method for r in p.feed(post)] == ["POST"] and p.pending  # 5 body bytes still to skip
        assert [r.target for r in p.feed(b"abcde" + GET)] == ["/x"] and not p.pending


def test_a_failed_parser_stays_failed_even_for_a_cached_head():
    http.RequestParser().feed(GET)
    p = http.RequestParser()
    with pytest.raises(http.HttpError):
        p.feed(b"BAD\r\n\r\n")
    assert p.feed(GET) == []


def test_the_head_cache_is_bounded():
    p = http.RequestParser()
    for i in range(http.HEAD_CACHE + 50):
        assert p.feed(b"GET /%d HTTP/1.1\r\nHost: h\r\n\r\n" % i)[0].target == f"/{i}"
    assert len(http._HEADS) <= http.HEAD_CACHE
    long = b"GET /" + b"a" * http.CACHED_HEAD + b" HTTP/1.1\r\nHost: h\r\n\r\n"
    assert p.feed(long)[0].target.startswith("/aaa") and long not in http._HEADS


@pytest.mark.parametrize("wire", [GET, b"GET /0 HTTP/1.1\r\nHost: h\r\n\r\n", b"GET /777 HTTP/1.1\r\nHost: h\r\n\r\n",
                                  b"GET /%d HTTP/1.1\r\nHost: h\r\n\r\n" % http.WHOLE_MAX,
                                  b"HEAD /x HTTP/1.1\r\nHost: h\r\n\r\n",
                                  b"GET /x HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n",
                                  b"GET /x HTTP/1.0\r\n\r\n"])
def test_a_whole_answer_is_respond_s_head_and_body(wire):
    site = http.Site(body_size=1024)
    req = http.RequestParser().feed(wire)[0]
    for date in (DATE, DATE, LATER):  # the second from the cache, the third under a new Date
        head, body, _ = http.respond(req, site, date)
        whole = http.respond_whole(req, site, date)
        assert whole == (head + body.next(http.WHOLE_MAX), 200, body.size)
        assert f"Date: {date}\r\n".encode() in whole[0]


def test_answers_that_are_not_small_generated_bodies_are_left_to_respond(tmp_path):
    big = http.RequestParser().feed(b"GET /%d HTTP/1.1\r\nHost: h\r\n\r\n" % (http.WHOLE_MAX + 1))[0]
    assert http.respond_whole(big, http.Site(), DATE) is None
    post = http.Request("POST", "/", "HTTP/1.1", {"host": "h"})
    assert http.respond_whole(post, http.Site(), DATE) is None  # 405 by respond
    (tmp_path / "x").write_bytes(b"file")
    assert http.respond_whole(http.Request("GET", "/x", "HTTP/1.1", {"host": "h"}), http.Site(root=str(tmp_path)),
                              DATE) is None


def test_the_whole_answers_are_bounded():
    site = http.Site()
    for i in range(http.WHOLE_CACHE * 2):
        req = http.Request("GET", f"/{i}", "HTTP/1.1", {"host": "h"})
        assert http.respond_whole(req, site, DATE)[2] == i
    assert len(site.answers) <= http.WHOLE_CACHE + 2


def test_a_cached_request_s_headers_cannot_be_changed_by_a_caller():
    wire = b"GET /ro HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n"
    req = http.RequestParser().feed(wire)[0]
    with pytest.raises(TypeError):
        req.headers["connection"] = "keep-alive"  # would reach every later repeat of this head
    again = http.RequestParser().feed(wire)[0]
    assert again is req and again.headers == {"host": "h", "connection": "close"} and not again.keep_alive
    assert http.Request("GET", "/", "HTTP/1.1").headers == {}  # the default is read-only too
    with pytest.raises(TypeError):
        http.Request("GET", "/", "HTTP/1.1").headers["x"] = "y"
