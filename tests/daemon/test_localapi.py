"""Local API framing: the request parser (incremental, limits, fuzz) and the access rule."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shoal.daemon.localapi import (
    MAX_BODY_BYTES, MAX_HEADER_BYTES, HttpError, RequestParser, authorized, response_bytes,
)


def test_request_in_pieces():
    raw = b'POST /v1/login?x=1 HTTP/1.1\r\nHost: x\r\nContent-Length: 20\r\n\r\n{"server": "a:1"}   '
    p = RequestParser()
    for i in range(len(raw) - 1):
        assert p.feed(raw[i:i + 1]) is None
    req = p.feed(raw[-1:])
    assert (req.method, req.path, req.body) == ("POST", "/v1/login", {"server": "a:1"})


def test_get_without_body():
    req = RequestParser().feed(b"GET /v1/status HTTP/1.1\r\n\r\n")
    assert req is not None and req.body == {}


@pytest.mark.parametrize("raw,status", [
    (b"GET /v1/status\r\n\r\n", 400),
    (b"DELETE /v1/x HTTP/1.1\r\n\r\n", 405),
    (b"GET v1 HTTP/1.1\r\n\r\n", 400),
    (b"POST /x HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n", 501),
    (b"POST /x HTTP/1.1\r\nContent-Length: -1\r\n\r\n", 400),
    (b"POST /x HTTP/1.1\r\nContent-Length: %d\r\n\r\n" % (MAX_BODY_BYTES + 1), 413),
    (b"POST /x HTTP/1.1\r\nContent-Length: 2\r\n\r\n[]", 400),
    (b"POST /x HTTP/1.1\r\nContent-Length: 3\r\n\r\n{x}", 400),
    (b"POST /x HTTP/1.1\r\nbroken header\r\n\r\n", 400),
    (b"GET /\xff HTTP/1.1\r\n\r\n", 400),
])
def test_bad_requests(raw, status):
    with pytest.raises(HttpError) as e:
        RequestParser().feed(raw)
    assert e.value.status == status


def test_header_flood_is_cut():
    with pytest.raises(HttpError) as e:
        RequestParser().feed(b"GET / HTTP/1.1\r\n" + b"X: y\r\n" * (MAX_HEADER_BYTES // 6 + 10))
    assert e.value.status == 413


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=400), st.integers(1, 50))
def test_fuzz_only_http_errors(data, chunk):
    p = RequestParser()
    try:
        for i in range(0, len(data), chunk):
            p.feed(data[i:i + chunk])
    except HttpError:
        pass


def test_response_is_json_with_length():
    raw = response_bytes(403, {"ok": False, "code": "forbidden", "message": "no"})
    head, body = raw.split(b"\r\n\r\n", 1)
    assert head.startswith(b"HTTP/1.1 403 Forbidden")
    assert b"Content-Length: %d" % len(body) in head
    assert json.loads(body)["code"] == "forbidden"


def test_access_rule():
    assert authorized(0, {0}, 0)
    assert authorized(0, {1000}, 5)  # root always
    assert authorized(1000, {1000, 5}, 5)  # member of the socket's group
    assert not authorized(1000, {1000}, 5)
    assert not authorized(65534, {65534}, 0)
