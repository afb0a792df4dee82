"""The HTTP server under the app: uvicorn on its h11 protocol, with the deadlines uvicorn lacks.

uvicorn (0.55) closes an idle keep-alive connection after ``timeout_keep_alive``,
but only once a response has been sent and only until the next request's first
byte: a fresh connection that sends nothing, or a client that sends its request
headers a byte at a time (slowloris), is held forever. :class:`DeadlineProtocol`
adds one deadline, ``Settings.header_timeout_s``, to the two waits that belong
to the client:

- *headers*: from the moment a connection opens, or its previous response ends,
  until the next request's headers are complete. On expiry a client that had
  started a request gets ``408 Request Timeout``; the connection is closed.
- *drain*: after the app answered without reading the whole request body (413,
  401, 400...), uvicorn reads and discards the rest so the client can still read
  the answer; this lasts at most the same time, then the connection is closed.

While the app handles a request no deadline runs (``--timeout-s`` bounds that).
The connection limit (``limit_concurrency``: 503 beyond) and the listen backlog
are uvicorn's own.

>>> uvicorn.Server(server_config(app, settings, host="127.0.0.1", port=8000)).run()  # doctest: +SKIP
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import h11
import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

from featstore.api.settings import Settings

log = logging.getLogger(__name__)

__all__ = ["DeadlineProtocol", "deadline_protocol", "server_config"]


def _timeout_response(timeout_s: float) -> bytes:
    body = f"request headers not received within {timeout_s:g} s\n".encode()
    return (
        b"HTTP/1.1 408 Request Timeout\r\n"
        b"content-type: text/plain; charset=utf-8\r\n"
        b"connection: close\r\n"
        b"content-length: %d\r\n\r\n%s" % (len(body), body)
    )


class DeadlineProtocol(H11Protocol):
    """uvicorn's h11 protocol with a header deadline and a bounded drain (module docstring)."""

    header_timeout_s: float = 10.0

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        self._deadline: asyncio.TimerHandle | None = None
        self._deadline_phase: str | None = None
        super().connection_made(transport)
        self._update_deadline()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        self._update_deadline()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._update_deadline()

    def connection_lost(self, exc: Exception | None) -> None:
        self._set_deadline(None)
        super().connection_lost(exc)

    def _phase(self) -> str | None:
        """Which client wait the connection is in: ``headers``, ``drain`` or none."""
        if self.transport is None or self.transport.is_closing():
            return None
        theirs, ours = self.conn.their_state, self.conn.our_state
        if theirs is h11.IDLE:
            return "headers"
        if theirs is h11.SEND_BODY and ours in (h11.DONE, h11.MUST_CLOSE):
            return "drain"
        return None

    def _update_deadline(self) -> None:
        self._set_deadline(self._phase())

    def _set_deadline(self, phase: str | None) -> None:
        if phase == self._deadline_phase:
            return  # bytes trickling in do not restart the clock
        if self._deadline is not None:
            self._deadline.cancel()
        self._deadline_phase = phase
        self._deadline = (
            None if phase is None else self.loop.call_later(self.header_timeout_s, self._expire)
        )

    def _expire(self) -> None:
        phase, self._deadline, self._deadline_phase = self._deadline_phase, None, None
        if self.transport is None or self.transport.is_closing():
            return
        client = f"{self.client[0]}:{self.client[1]}" if self.client else "client"
        if phase == "headers":
            started = bool(self.conn.trailing_data[0])  # part of a request is buffered
            if started:
                self.transport.write(_timeout_response(self.header_timeout_s))
            log.info(
                "closed connection from %s: %s within %g s",
                client,
                "request headers not complete" if started else "no request",
                self.header_timeout_s,
            )
        else:
            log.info(
                "closed connection from %s: still sending a refused body after %g s",
                client,
                self.header_timeout_s,
            )
        self.transport.close()


def deadline_protocol(header_timeout_s: float) -> type[DeadlineProtocol]:
    """A :class:`DeadlineProtocol` class with this header timeout (uvicorn takes a class)."""
    return type("DeadlineProtocol", (DeadlineProtocol,), {"header_timeout_s": header_timeout_s})


def server_config(
    app: Any, settings: Settings, *, host: str, port: int, log_level: str = "info", **kw: Any
) -> uvicorn.Config:
    """The uvicorn config ``featstore serve`` runs ``app`` with: protocol, limits, backlog."""
    return uvicorn.Config(
        app,
        host=host,
        port=port,
        log_level=log_level,
        http=deadline_protocol(settings.header_timeout_s),
        ws="none",  # no websocket routes; an upgrade would escape the deadlines
        limit_concurrency=settings.limit_concurrency,
        backlog=settings.backlog,
        **kw,
    )
