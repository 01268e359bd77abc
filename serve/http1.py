"""A small keep-alive HTTP/1.1 client for the load generator (``copyloop traffic``).

Requests go over pooled keep-alive connections (plain or TLS) as prebuilt bytes; responses are
parsed by httptools — the parser uvicorn serves with — so Content-Length and chunked bodies
both work. It does only what a replay needs: one request at a time per connection, a timeout
per request, no redirects, cookies or compression.

Why not aiohttp: the load generator shares this machine's two cores with the service it
loads, so its CPU per request caps what the box can show. Measured here against the same
uvicorn app (8 connections, a 28-feature rank body): aiohttp 155–200 µs of client CPU per
POST, this client 60–70 µs.

Example:
    >>> async with Pool("http://127.0.0.1:8000", limit=8) as pool:  # doctest: +SKIP
    ...     status, body = await pool.request("GET", "/healthz")
"""

from __future__ import annotations

import asyncio
import collections
import ssl
from types import TracebackType
from typing import cast
from urllib.parse import urlsplit


class HTTPError(Exception):
    """A request that got no complete response: refused or lost connection, malformed reply."""


class _Connection(asyncio.Protocol):
    """One connection; one request in flight at a time."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        import httptools

        self._loop = loop
        self._parser = httptools.HttpResponseParser(self)
        self._transport: asyncio.Transport | None = None
        self._waiter: asyncio.Future[tuple[int, bytes]] | None = None
        self._body: list[bytes] = []
        self.usable = True

    # ---- asyncio.Protocol -----------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass

    def data_received(self, data: bytes) -> None:
        try:
            self._parser.feed_data(data)
        except Exception as e:  # httptools.HttpParserError: the reply is not HTTP/1.1
            self._fail(HTTPError(f"malformed response: {e}"))

    def connection_lost(self, exc: Exception | None) -> None:
        self.usable = False
        self._fail(HTTPError(f"connection lost ({exc or 'closed by the server'})"))

    # ---- httptools callbacks --------------------------------------------------------------------
    def on_body(self, body: bytes) -> None:
        self._body.append(body)

    def on_message_complete(self) -> None:
        body = b"".join(self._body)
        self._body = []
        if not self._parser.should_keep_alive():
            self.usable = False
            if self._transport is not None:
                self._transport.close()
        w, self._waiter = self._waiter, None
        if w is not None and not w.done():
            w.set_result((self._parser.get_status_code(), body))

    # ---- requests -------------------------------------------------------------------------------
    def _fail(self, e: Exception) -> None:
        self.usable = False
        w, self._waiter = self._waiter, None
        if w is not None and not w.done():
            w.set_exception(e)

    def send(self, data: bytes) -> asyncio.Future[tuple[int, bytes]]:
        assert self._transport is not None and self._waiter is None
        self._waiter = w = self._loop.create_future()
        self._transport.write(data)
        return w

    def close(self) -> None:
        self.usable = False
        if self._transport is not None:
            self._transport.close()


class Pool:
    """Keep-alive connections to one base URL, at most ``limit`` open at once.

    Args:
        url: ``http://host[:port][/prefix]`` or ``https://…``.
        limit: most connections (requests beyond wait for a free one).
        headers: sent with every request (``Host`` and ``Content-Length`` are added).
        timeout_s: seconds a request may take, connecting included (then TimeoutError).
    """

    def __init__(
        self,
        url: str,
        *,
        limit: int = 32,
        headers: dict[str, str] | None = None,
        timeout_s: float = 10.0,
    ) -> None:
        u = urlsplit(url)
        if u.scheme not in ("http", "https") or not u.hostname:
            raise ValueError(f"`url` must be http://host[:port] or https://…, got {url!r}")
        if limit < 1:
            raise ValueError(f"`limit` must be >= 1, got {limit}")
        self.host = u.hostname
        self.port = u.port or (443 if u.scheme == "https" else 80)
        self.ssl = ssl.create_default_context() if u.scheme == "https" else None
        self.prefix = u.path.rstrip("/")
        self.limit, self.timeout_s = limit, timeout_s
        host = u.netloc.rsplit("@", 1)[-1]
        lines = [f"Host: {host}", *(f"{k}: {v}" for k, v in (headers or {}).items())]
        self._head = ("\r\n".join(lines) + "\r\n").encode("latin-1")
        self._idle: list[_Connection] = []
        self._open = 0
        self._waiting: collections.deque[asyncio.Future[None]] = collections.deque()

    async def __aenter__(self) -> Pool:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        for c in self._idle:
            c.close()
        self._idle.clear()

    async def _acquire(self) -> _Connection:
        while True:
            while self._idle:
                c = self._idle.pop()
                if c.usable:
                    return c
                self._open -= 1
            loop = asyncio.get_running_loop()
            if self._open < self.limit:
                self._open += 1
                try:
                    _, conn = await loop.create_connection(
                        lambda: _Connection(loop),  # noqa: B023 - runs before the next turn
                        self.host,
                        self.port,
                        ssl=self.ssl,
                        server_hostname=self.host if self.ssl else None,
                    )
                except BaseException:
                    self._open -= 1
                    self._wake()
                    raise
                return conn
            w = loop.create_future()
            self._waiting.append(w)
            await w

    def _release(self, c: _Connection) -> None:
        if c.usable:
            self._idle.append(c)
        else:
            c.close()
            self._open -= 1
        self._wake()

    def _wake(self) -> None:
        while self._waiting:
            w = self._waiting.popleft()
            if not w.done():
                w.set_result(None)
                return

    async def request(
        self, method: str, path: str, body: bytes = b"", content_type: str | None = None
    ) -> tuple[int, bytes]:
        """Send one request (``path`` already percent-encoded); returns (status, body).

        Raises:
            TimeoutError: no complete response within ``timeout_s``.
            HTTPError: the connection failed or the reply was not HTTP/1.1.
            OSError: the connection could not be opened.
        """
        head = f"{method} {self.prefix}{path} HTTP/1.1\r\n".encode("latin-1") + self._head
        if body or method in ("POST", "PUT", "PATCH"):
            if content_type:
                head += b"Content-Type: " + content_type.encode("latin-1") + b"\r\n"
            head += b"Content-Length: %d\r\n" % len(body)
        data = head + b"\r\n" + body
        async with asyncio.timeout(self.timeout_s):
            c = await self._acquire()
            try:
                return await c.send(data)
            except BaseException:
                c.usable = False  # a reply may still arrive on it: never reuse it
                raise
            finally:
                self._release(c)
