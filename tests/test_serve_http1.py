"""The load generator's HTTP/1.1 client (copyloop.serve.http1) against scripted servers on
127.0.0.1: Content-Length and chunked replies, keep-alive reuse, a server that closes, garbage,
a timeout, the connection limit, a path prefix."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import pytest

pytest.importorskip("httptools")

from copyloop.serve.http1 import HTTPError, Pool

Reply = Callable[[bytes], bytes | None]


async def _serve(reply: Reply, seen: list[bytes], conns: list[int]) -> asyncio.Server:
    """A server that answers each request head (+ body) with ``reply(request)``; None closes."""

    async def handle(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        conns.append(1)
        try:
            while True:
                head = await r.readuntil(b"\r\n\r\n")
                n = 0
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        n = int(line.split(b":", 1)[1])
                req = head + (await r.readexactly(n) if n else b"")
                seen.append(req)
                out = reply(req)
                if out is None:
                    break
                w.write(out)
                await w.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            w.close()

    return await asyncio.start_server(handle, "127.0.0.1", 0)


def _run(reply: Reply, body: Callable[[str, list[bytes], list[int]], Awaitable[None]]) -> None:
    async def main() -> None:
        seen: list[bytes] = []
        conns: list[int] = []
        server = await _serve(reply, seen, conns)
        port = server.sockets[0].getsockname()[1]
        async with server:
            await body(f"http://127.0.0.1:{port}", seen, conns)

    asyncio.run(main())


def _ok(payload: bytes, extra: bytes = b"") -> Reply:
    return lambda req: (
        b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n%s\r\n%s" % (len(payload), extra, payload)
    )


def test_content_length_reply_and_keep_alive_reuse() -> None:
    async def body(url: str, seen: list[bytes], conns: list[int]) -> None:
        async with Pool(url, limit=4, headers={"X-API-Key": "k1"}) as pool:
            for _ in range(5):
                assert await pool.request("POST", "/v1/rank", b'{"a":1}', "application/json") == (
                    200,
                    b'{"ok":true}',
                )
        assert len(conns) == 1  # one request at a time: one connection, reused
        first = seen[0]
        assert first.startswith(b"POST /v1/rank HTTP/1.1\r\n")
        for h in (b"X-API-Key: k1", b"Content-Type: application/json", b"Content-Length: 7"):
            assert h in first
        assert first.endswith(b'\r\n\r\n{"a":1}')

    _run(_ok(b'{"ok":true}'), body)


def test_chunked_reply_and_status() -> None:
    chunked = (
        b"HTTP/1.1 404 Not Found\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n"
    )

    async def body(url: str, seen: list[bytes], conns: list[int]) -> None:
        async with Pool(url) as pool:
            assert await pool.request("GET", "/x") == (404, b"abcde")
            assert await pool.request("GET", "/x") == (404, b"abcde")
        assert b"Content-Length" not in seen[0]  # a GET without a body

    _run(lambda req: chunked, body)


def test_connection_close_opens_a_new_connection() -> None:
    async def body(url: str, seen: list[bytes], conns: list[int]) -> None:
        async with Pool(url) as pool:
            for _ in range(3):
                assert await pool.request("GET", "/") == (200, b"hi")
        assert len(conns) == 3

    _run(_ok(b"hi", b"Connection: close\r\n"), body)


@pytest.mark.parametrize(
    ("reply", "error"),
    [
        (lambda req: None, HTTPError),  # closed without a reply
        (lambda req: b"SMTP ready\r\n\r\n", HTTPError),  # not HTTP
        (lambda req: b"", TimeoutError),  # never answers
    ],
)
def test_failures_raise(reply: Reply, error: type[Exception]) -> None:
    async def body(url: str, seen: list[bytes], conns: list[int]) -> None:
        async with Pool(url, timeout_s=0.3) as pool:
            with pytest.raises(error):
                await pool.request("GET", "/")
            assert pool._open == 0  # the failed connection is not kept

    _run(reply, body)


def test_nothing_listening_is_an_oserror() -> None:
    async def main() -> None:
        async with Pool("http://127.0.0.1:9", timeout_s=2) as pool:
            with pytest.raises(OSError):
                await pool.request("GET", "/")

    asyncio.run(main())


def test_limit_and_prefix() -> None:
    async def body(url: str, seen: list[bytes], conns: list[int]) -> None:
        async with Pool(url + "/api/", limit=2) as pool:
            out = await asyncio.gather(*(pool.request("GET", "/healthz") for _ in range(8)))
        assert out == [(200, b"ok")] * 8
        assert len(conns) <= 2
        assert all(r.startswith(b"GET /api/healthz HTTP/1.1") for r in seen)

    _run(_ok(b"ok"), body)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"url": "ftp://127.0.0.1"}, "url"),
        ({"url": "http://"}, "url"),
        ({"url": "http://127.0.0.1", "limit": 0}, "limit"),
    ],
)
def test_bad_arguments(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        Pool(**kwargs)
