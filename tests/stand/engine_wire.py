"""The Neptune stand's lean path to its engine: `GRAPH.QUERY` over RESP2 without redis-py's per-call machinery.

Room in the design: a helper of `tests.stand.neptune_endpoint` only. The stand runs one openCypher request per
HTTP request, most of them batched writes whose reply is nothing but statistics; through redis-py each call
paid for the connection pool, the retry wrapper and a line-by-line reply parser on `asyncio.StreamReader`
(about 0.15 ms a call, as much as the engine's own work on a small batch). Here each connection is an
`asyncio.Protocol` that parses the reply straight out of its receive buffer.

Replies come back exactly as redis-py shapes them with `decode_responses=True` (what `falkordb.asyncio`
uses): bulk and simple strings decoded as UTF-8, integers as `int`, nil as None, arrays as lists, an error
inside an array as the `redis.exceptions` instance redis-py's parser makes of it; an error reply at the top
raises that instance, and a lost or refused connection raises `redis.exceptions.ConnectionError`.

`cypher_params_header` is the other half of the hot path: the `CYPHER name=value ...` header that
`falkordb`'s `_build_params_header` builds value by value in Python, made from `orjson`'s output whenever the
two are bound to mean the same to the engine (see there), else None and the caller takes falkordb's way.
"""

from __future__ import annotations

import asyncio
import re
from typing import Any

import orjson
import redis.exceptions
from redis._parsers.base import BaseParser

__all__ = ["EngineWire", "cypher_params_header"]

_CRLF = b"\r\n"
_DOLLAR, _STAR, _COLON, _PLUS, _MINUS = b"$*:+-"


class _Incomplete(Exception):
    """The receive buffer does not hold a whole reply yet."""


class _Connection(asyncio.Protocol):
    """One engine connection with at most one command in flight."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self._buffer = bytearray()
        self._waiter: asyncio.Future[Any] | None = None
        self._lost: Exception | None = None
        # incremental parse state: position in the buffer, open arrays as [items, expected length]
        self._pos = 0
        self._stack: list[tuple[list[Any], int]] = []

    @property
    def usable(self) -> bool:
        return self._lost is None and self.transport is not None and not self.transport.is_closing()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def connection_lost(self, exc: Exception | None) -> None:
        self._lost = redis.exceptions.ConnectionError(
            "Connection closed by server." if exc is None else f"Error while reading from socket: {exc}"
        )
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_exception(self._lost)

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        waiter = self._waiter
        if waiter is None or waiter.done():
            return
        try:
            reply = self._parse()
        except _Incomplete:
            return
        except Exception as exc:  # a protocol error, or a connection-level error reply
            waiter.set_exception(exc)
            return
        waiter.set_result(reply)

    async def request(self, packed: bytes) -> Any:
        if self._lost is not None:
            raise self._lost
        assert self.transport is not None
        self._waiter = asyncio.get_running_loop().create_future()
        self._buffer.clear()
        self._pos, self._stack = 0, []
        self.transport.write(packed)
        try:
            reply = await self._waiter
        finally:
            self._waiter = None
        if isinstance(reply, redis.exceptions.ResponseError):
            raise reply
        return reply

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    def _parse(self) -> Any:
        """Go on parsing the reply where the last chunk left it; `_Incomplete` if it is not whole yet."""
        buffer, pos, stack = self._buffer, self._pos, self._stack
        size = len(buffer)
        while True:
            end = buffer.find(_CRLF, pos)
            if end < 0:
                self._pos = pos
                raise _Incomplete
            kind = buffer[pos]
            if kind == _DOLLAR:
                length = int(buffer[pos + 1 : end])
                if length < 0:
                    value: Any = None
                    pos = end + 2
                else:
                    start = end + 2
                    if start + length + 2 > size:
                        self._pos = pos
                        raise _Incomplete
                    value = buffer[start : start + length].decode()
                    pos = start + length + 2
            elif kind == _STAR:
                length = int(buffer[pos + 1 : end])
                pos = end + 2
                if length > 0:
                    stack.append(([], length))
                    continue
                value = None if length < 0 else []
            elif kind == _COLON:
                value = int(buffer[pos + 1 : end])
                pos = end + 2
            elif kind == _PLUS:
                value = buffer[pos + 1 : end].decode()
                pos = end + 2
            elif kind == _MINUS:
                value = BaseParser.parse_error(buffer[pos + 1 : end].decode("utf-8", errors="replace"))
                pos = end + 2
                if isinstance(value, redis.exceptions.ConnectionError):
                    raise value
            else:
                raise redis.exceptions.InvalidResponse(f"Protocol Error: {bytes(buffer[pos : end + 2])!r}")
            # attach the finished value to its array; close every array it completes
            while stack:
                items, length = stack[-1]
                items.append(value)
                if len(items) < length:
                    break
                stack.pop()
                value = items
            else:
                return value


def _pack(*parts: bytes) -> bytes:
    out = [b"*%d\r\n" % len(parts)]
    for part in parts:
        out.append(b"$%d\r\n" % len(part))
        out.append(part)
        out.append(_CRLF)
    return b"".join(out)


class EngineWire:
    """A small pool of RESP2 connections to one engine; `graph_query` sends `GRAPH.QUERY ... --compact`.

    Must be used from one event loop. A pooled connection found dead (the engine closed it while idle) is
    replaced once; a connection whose command did not finish normally is closed, never reused.
    """

    def __init__(self, host: str, port: int, password: str | None = None) -> None:
        self.host, self.port, self.password = host, port, password
        self._idle: list[_Connection] = []

    async def _connect(self) -> _Connection:
        loop = asyncio.get_running_loop()
        try:
            _, connection = await loop.create_connection(_Connection, self.host, self.port)
        except OSError as exc:
            raise redis.exceptions.ConnectionError(
                f"Error {exc.errno} connecting to {self.host}:{self.port}. {exc.strerror or exc}."
            ) from None
        if self.password is not None:
            await connection.request(_pack(b"AUTH", self.password.encode()))
        return connection

    async def graph_query(self, graph: str, query: str) -> Any:
        """The engine's reply to `GRAPH.QUERY graph query --compact`, shaped as redis-py shapes it."""
        packed = _pack(b"GRAPH.QUERY", graph.encode(), query.encode(), b"--compact")
        for attempt in (1, 2):
            connection = None
            while self._idle and connection is None:
                candidate = self._idle.pop()
                if candidate.usable:
                    connection = candidate
            reused = connection is not None
            if connection is None:
                connection = await self._connect()
            finished = False
            try:
                reply = await connection.request(packed)
                finished = True
                return reply
            except redis.exceptions.ResponseError:
                finished = True
                raise
            except redis.exceptions.ConnectionError:
                if reused and attempt == 1 and not connection.usable:
                    continue  # an idle connection the engine had closed: once more on a fresh one
                raise
            finally:
                if finished and connection.usable:
                    self._idle.append(connection)
                else:
                    connection.close()
        raise AssertionError("unreachable")

    def close(self) -> None:
        for connection in self._idle:
            connection.close()
        self._idle.clear()


# ----------------------------------------------------------------------------------------------------
# Parameters header
# ----------------------------------------------------------------------------------------------------

_NEEDS_SLOW_PATH = re.compile(rb'[\\%`]|"":|null')


def _quote_map_keys(dumped: bytes) -> bytes:
    """orjson text without backslashes, with every map key backtick-quoted instead of double-quoted."""
    parts = dumped.split(b'"')  # no backslash: even parts are JSON structure, odd parts whole string contents
    out = [parts[0]]
    for i in range(1, len(parts), 2):
        following = parts[i + 1]
        out.append(b"`" + parts[i] + b"`" if following[:1] == b":" else b'"' + parts[i] + b'"')
        out.append(following)
    return b"".join(out)


def cypher_params_header(parameters: dict[str, Any]) -> str | None:
    """`falkordb`'s `CYPHER k=v ...` header for `parameters` (JSON values), or None where this fast way does
    not apply and the caller must take falkordb's `_build_params_header` (and key encoding) instead.

    It applies when no map key at any depth needs FalkorDB's name encoding (no `%` or backtick) and none is
    empty, and no string holds a character JSON escapes (no backslash in orjson's text): then every string
    is the same double-quoted text falkordb writes. Where falkordb writes `True`, `1e+16` or `{`k`:1}`, this
    writes `true`, `1e16` and the same map; the engine reads each pair as the same value. Text holding
    `null` takes the slow way too, since orjson writes a non-finite float (which only non-standard JSON
    input can carry) as null where falkordb writes `nan` or `inf`.
    """
    out = ["CYPHER "]
    for key, value in parameters.items():
        if not isinstance(key, str) or not key or "%" in key or "`" in key:
            return None
        try:
            dumped = orjson.dumps(value)
        except (TypeError, orjson.JSONEncodeError):  # e.g. an integer beyond 64 bits
            return None
        if _NEEDS_SLOW_PATH.search(dumped):
            return None
        if b'"' in dumped:
            dumped = _quote_map_keys(dumped)
        out.append(f"`{key}`={dumped.decode()} ")
    return "".join(out)
