"""Idle and slow connections in single-process mode (``madx-serve --no-ray``).

uvicorn closes a keep-alive connection that stays idle after a response (``timeout_keep_alive``), but
nothing bounds a connection that never completes a request: one opened and left silent, or one that
sends a header line every few seconds. ``guarded_http(timeout_s)`` is uvicorn's httptools protocol with
one more timer: from a connection's opening, and from the first byte of each later request, the
request's head must arrive within ``timeout_s``, or the connection is closed. Its body then has
``timeout_s`` more: ``BodyLimit`` (serving/middleware.py) answers a trickled body with a 408 and
closes; this timer closes the connection a little later whatever the app does. Ray mode's HTTP proxy
is Ray's (see README).
"""

from __future__ import annotations

import asyncio

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

BODY_GRACE_S = 5.0


class _Guarded(HttpToolsProtocol):
    read_timeout_s: float = 20.0

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._read_timer: asyncio.TimerHandle | None = None
        self._arm()

    def _arm(self, seconds: float | None = None) -> None:
        if self._read_timer is None:
            self._read_timer = self.loop.call_later(seconds or self.read_timeout_s, self._too_slow)

    def _disarm(self) -> None:
        if self._read_timer is not None:
            self._read_timer.cancel()
            self._read_timer = None

    def _too_slow(self) -> None:
        self._read_timer = None
        if not self.transport.is_closing():
            self.transport.close()

    def data_received(self, data: bytes) -> None:
        if self.cycle is None or self.cycle.response_complete:  # bytes of a new request: its clock starts
            self._arm()
        super().data_received(data)

    def on_headers_complete(self) -> None:
        self._disarm()  # the head is in: the body's own deadline, with room for BodyLimit's 408 first
        self._arm(self.read_timeout_s + BODY_GRACE_S)
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        self._disarm()  # the whole request is in; the app's time is request_timeout_s's business
        super().on_message_complete()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)


def guarded_http(timeout_s: float) -> type[HttpToolsProtocol]:
    """uvicorn's ``http=`` protocol class that closes connections not sending a whole request in time."""
    return type("GuardedHttpToolsProtocol", (_Guarded,), {"read_timeout_s": float(timeout_s)})
