"""uvicorn's HTTP/1.1 protocol (h11) with a deadline on every request's headers.

uvicorn closes an idle keep-alive connection after ``timeout_keep_alive``, but any byte received
cancels that timer, and no timer runs while a request's headers arrive: a client that sends one header
byte every few seconds holds its connection, and a file descriptor, for ever (the "slow headers" of
Slowloris). Here a connection whose next request line and headers are not complete within
``header_timeout_s`` of the connection opening, or of its previous response ending, is closed. A
request whose headers are in is never cut by it; its body has the service's upload timeout.
"""

from __future__ import annotations

import asyncio
import functools

from uvicorn.protocols.http.h11_impl import H11Protocol


class HeaderDeadlineProtocol(H11Protocol):
    """:class:`H11Protocol` that closes a connection whose request headers are late."""

    header_timeout_s: float = 10.0

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm_header_deadline()

    def on_response_complete(self) -> None:
        self._arm_header_deadline()  # before the next pipelined request, which super() may start at once
        super().on_response_complete()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_header_deadline()
        super().connection_lost(exc)

    def _arm_header_deadline(self) -> None:
        self._cancel_header_deadline()
        self._awaiting_after = self.cycle  # a request whose headers arrive starts a new cycle
        self._header_deadline = self.loop.call_later(self.header_timeout_s, self._on_header_deadline)

    def _cancel_header_deadline(self) -> None:
        deadline = getattr(self, "_header_deadline", None)
        if deadline is not None:
            deadline.cancel()
        self._header_deadline = None

    def _on_header_deadline(self) -> None:
        self._header_deadline = None
        if self.cycle is self._awaiting_after and not self.transport.is_closing():
            self.transport.close()


def with_header_timeout(header_timeout_s: float) -> type[HeaderDeadlineProtocol]:
    """The protocol class to give ``uvicorn.Config(http=...)`` for this deadline in seconds."""
    if not header_timeout_s > 0:
        raise ValueError(f"header_timeout_s must be > 0, got {header_timeout_s}")
    return _protocol_class(float(header_timeout_s))


@functools.cache
def _protocol_class(header_timeout_s: float) -> type[HeaderDeadlineProtocol]:
    return type("HeaderDeadlineProtocol", (HeaderDeadlineProtocol,), {"header_timeout_s": header_timeout_s})
