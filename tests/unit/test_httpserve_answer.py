"""kbypass.apps.httpserve answers a request when its turn to be written comes: an OSError then (out of
descriptors, here a real EMFILE under a lowered RLIMIT_NOFILE) is a 500 for that request, not a crash of
the server and every client with it."""

import resource

from kbypass.apps.httpserve import ServeResult, _answer
from kbypass.proto import http
from tests.kb import fd_closed

DATE = "Sun, 06 Dec 2026 12:00:00 GMT"


def test_out_of_descriptors_is_a_500_for_that_request(tmp_path):
    (tmp_path / "f").write_bytes(b"x" * 10)
    site = http.Site(root=str(tmp_path))
    req = http.RequestParser().feed(b"GET /f HTTP/1.1\r\nHost: x\r\n\r\n")[0]
    res = ServeResult()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    lowest_free = next(fd for fd in range(soft) if fd_closed(fd))
    resource.setrlimit(resource.RLIMIT_NOFILE, (lowest_free, hard))  # no descriptor left to open the file
    try:
        head, body = _answer(req, site, DATE, res)
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    assert head.startswith(b"HTTP/1.1 500 Internal Server Error\r\n") and res.statuses == {500: 1}
    head, body = _answer(req, site, DATE, res)  # descriptors again: served
    assert head.startswith(b"HTTP/1.1 200 ") and body.next(100) == b"x" * 10 and res.statuses == {500: 1, 200: 1}



def test_an_answer_too_big_to_pre_encode_is_built_once(monkeypatch):
    from collections import deque

    from kbypass.apps import httpserve

    built = []

    def counted(req, site, date):
        built.append(req.target)
        return respond(req, site, date)

    respond = http.respond
    monkeypatch.setattr(http, "respond", counted)  # respond_whole's
    monkeypatch.setattr(httpserve, "respond", counted)  # _answer's
    req = http.RequestParser().feed(b"GET /%d HTTP/1.1\r\nHost: x\r\n\r\n" % (http.WHOLE_MAX + 1))[0]
    c = httpserve._Client(None, 0.0)
    c.queue = deque([req])
    res = ServeResult()
    data = httpserve._gather(c, http.Site(), DATE, res)
    assert data.startswith(b"HTTP/1.1 200 OK\r\n") and len(built) == 1, built
