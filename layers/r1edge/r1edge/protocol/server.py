"""uvicorn's HTTP/1.1 protocol with time limits on clients, for the router and the edge server.

uvicorn 0.54 bounds the time between requests on a connection (``--timeout-keep-alive``, 5 s by
default) and nothing else: its keep-alive timer starts only once a response is complete, and any
byte received stops it. So a connection that never sends a request, a request head sent a byte
at a time, or the rest of a body the app already answered without reading, holds a connection
(and a file descriptor) for ever (README, decisions log: "Time limits on clients"). ASGI middleware
cannot help: the app is called only once the whole head has arrived.

:class:`BoundedH11Protocol` is uvicorn's own ``H11Protocol`` (h11, the pure-Python parser uvicorn
uses unless httptools is installed) with three changes, chosen with ``uvicorn --http
r1edge.protocol.server:BoundedH11Protocol``:

- **Idle before the first request**: uvicorn's keep-alive timer is armed when the connection
  opens, not only after a response, so the keep-alive limit (``--timeout-keep-alive`` or
  ``UVICORN_TIMEOUT_KEEP_ALIVE``, seconds) also closes connections that never send a byte.
- **Request head**: from the first byte of a request's head, the whole head must arrive within
  ``R1EDGE_HEADER_TIMEOUT`` seconds (default 10), or the connection is closed without an answer,
  as Go's ``http.Server.ReadHeaderTimeout`` and nginx's ``client_header_timeout`` do. The limit is
  on the whole head, not between bytes, so dribbling cannot extend it.
- **Body left unread after the answer**: once the answer is complete, the rest of that request's
  body no longer restarts the keep-alive timer, so the connection closes the keep-alive limit
  after the answer however the client goes on sending (an approximation of nginx's lingering
  close).

A body the app is reading is bounded by the app itself: :func:`r1edge.protocol.web.read_body`
answers 408 when no piece arrives for ``R1EDGE_BODY_TIMEOUT`` seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Mapping
from typing import Any

import h11
from uvicorn.config import Config
from uvicorn.protocols.http.h11_impl import H11Protocol
from uvicorn.server import ServerState

from r1edge import env
from r1edge.protocol.web import seconds_from_env

#: Default limit on receiving a whole request head, seconds (nginx's ``client_header_timeout``
#: is 60 s; a request head is a few hundred bytes, sent in one write by every real client).
DEFAULT_HEADER_TIMEOUT = 10.0
#: uvicorn's ``--http`` value that selects :class:`BoundedH11Protocol` (an import string).
HTTP_PROTOCOL = "r1edge.protocol.server:BoundedH11Protocol"


def header_timeout_seconds(environ: Mapping[str, str] | None = None) -> float:
    """The limit on receiving a whole request head: ``R1EDGE_HEADER_TIMEOUT`` seconds, default
    :data:`DEFAULT_HEADER_TIMEOUT`.

    Raises:
        ValueError: the value is not a number of seconds >= 0.
    """
    return seconds_from_env(env.R1EDGE_HEADER_TIMEOUT, DEFAULT_HEADER_TIMEOUT, environ)


class BoundedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with a request-head limit and keep-alive limits that hold from the
    connection's first moment (see the module docstring). One instance per connection, made by
    uvicorn's server; the constructor's arguments are uvicorn's.

    Raises:
        ValueError: from the constructor, when ``R1EDGE_HEADER_TIMEOUT`` is not a number of
            seconds >= 0 (uvicorn logs it and drops the connection: the readiness check fails).
    """

    def __init__(
        self,
        config: Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        super().__init__(config, server_state, app_state, _loop)
        self.header_timeout = header_timeout_seconds()
        self.header_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        # uvicorn arms this only in on_response_complete: start the idle clock now
        self.timeout_keep_alive_task = self.loop.call_later(self.timeout_keep_alive, self.timeout_keep_alive_handler)

    def data_received(self, data: bytes) -> None:
        if self.conn.their_state is h11.IDLE and self.header_timer is None:
            self.header_timer = self.loop.call_later(self.header_timeout, self.header_timeout_handler)
        if self.conn.our_state in (h11.DONE, h11.MUST_CLOSE) and self.conn.their_state is h11.SEND_BODY:
            # the rest of a body already answered: the keep-alive timer armed when the answer
            # completed keeps running (uvicorn's data_received would stop it)
            self.conn.receive_data(data)
            self.handle_events()
        else:
            super().data_received(data)
        if self.conn.their_state is not h11.IDLE:
            self._cancel_header_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_header_timer()
        super().connection_lost(exc)
        self._unset_keepalive_if_required()  # uvicorn leaves it armed when exc is not None

    def header_timeout_handler(self) -> None:
        """The request head did not arrive in time: close the connection without an answer."""
        self.header_timer = None
        if self.transport.is_closing():
            return
        prefix = "{}:{} - ".format(*self.client) if self.client else ""
        self.logger.info("%sClosing the connection: no complete request head within %g s.", prefix, self.header_timeout)
        with contextlib.suppress(h11.LocalProtocolError):
            self.conn.send(h11.ConnectionClosed())
        self.transport.close()

    def _cancel_header_timer(self) -> None:
        if self.header_timer is not None:
            self.header_timer.cancel()
            self.header_timer = None
