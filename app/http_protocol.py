"""The API's HTTP protocol: uvicorn's httptools protocol with a deadline on receiving each request head.

uvicorn has no header timeout, and any byte a client sends cancels its keep-alive timer, so a client that
sends a request head a byte at a time (slowloris) holds its connection for as long as it likes: 300 such
sockets were measured open indefinitely. Here a head must be complete `SPPO_HEADER_TIMEOUT_S` after the
connection opened or after the head's first byte; otherwise the client gets 408 and the connection is
closed. The body has its own time limit (app/middleware.py).

A head is also limited to `MAX_HEAD_BYTES` (request target plus header names and values): httptools, the
parser uvicorn picks when it is installed, has no limit of its own (a 4 MiB header was measured accepted),
and uvicorn's `h11_max_incomplete_event_size` applies to h11 only. A larger head answers 400 and closes.

`sppo serve` uses it; plain uvicorn needs `uvicorn app.main:app --http app.http_protocol:HeadTimeoutProtocol`.
"""

import asyncio
from typing import Any

from uvicorn.config import Config
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.server import ServerState

from core.settings import get_settings

MAX_HEAD_BYTES = 64 * 1024
_MESSAGE = b"The request head was not received in time."
TIMEOUT_RESPONSE = (
    b"HTTP/1.1 408 Request Timeout\r\ncontent-type: text/plain; charset=utf-8\r\n"
    b"content-length: %d\r\nconnection: close\r\n\r\n%s" % (len(_MESSAGE), _MESSAGE)
)


class HeadTooLarge(Exception):
    """A request head over MAX_HEAD_BYTES."""


class HeadTimeoutProtocol(HttpToolsProtocol):
    """HttpToolsProtocol whose request heads each have `header_timeout_s` to arrive whole and a size cap."""

    def __init__(
        self,
        config: Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        super().__init__(config, server_state, app_state, _loop)
        self.header_timeout_s = get_settings().header_timeout_s
        self._head_deadline: asyncio.TimerHandle | None = None
        self._head_bytes = 0

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm()  # a client that connects and sends nothing is bounded too

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._head_bytes = 0
        self._arm()  # the next head on a kept-alive connection; the first one's runs from the connect

    def on_url(self, url: bytes) -> None:
        self._count(len(url))
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._count(len(name) + len(value))
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self._disarm()
        super().on_headers_complete()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def _count(self, size: int) -> None:
        self._head_bytes += size
        if self._head_bytes > MAX_HEAD_BYTES:
            # Raised inside the parser's callback, it leaves feed_data as an HttpParserError, which
            # uvicorn answers with 400 and a closed connection.
            raise HeadTooLarge(f"request head over {MAX_HEAD_BYTES} bytes")

    def _arm(self) -> None:
        if self._head_deadline is None:
            self._head_deadline = self.loop.call_later(self.header_timeout_s, self._head_timed_out)

    def _disarm(self) -> None:
        if self._head_deadline is not None:
            self._head_deadline.cancel()
            self._head_deadline = None

    def _head_timed_out(self) -> None:
        self._head_deadline = None
        # A 408 only between responses: mid-response (a pipelined request is being answered) it would be
        # spliced into that response's bytes.
        if self.cycle is None or self.cycle.response_complete:
            self.transport.write(TIMEOUT_RESPONSE)
        self.transport.close()
