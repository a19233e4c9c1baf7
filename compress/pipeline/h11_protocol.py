"""uvicorn's HTTP/1.1 protocol (h11) with a deadline on request headers and a lingering close.

Header deadline: uvicorn closes an idle keep-alive connection after ``timeout_keep_alive``, but any
byte received cancels that timer, and no timer runs while a request's headers arrive: a client that
sends one header byte every few seconds holds its connection, and a file descriptor, for ever (the
"slow headers" of Slowloris). Here a connection whose next request line and headers are not complete
within ``header_timeout_s`` of the connection opening, or of its previous response ending, is closed.
A request whose headers are in is never cut by it; its body has the service's upload timeout.

Lingering close: the service answers 413 from an upload's Content-Length without reading its body.
When that connection must close (the client sent ``Connection: close``, as ``urllib`` does), closing a
socket with unread bytes makes the kernel send a reset, and a client still sending its body gets
"connection reset" instead of the 413. As nginx does (``lingering_close``), the write side is shut
after the answer, and what the client still sends is read and dropped until it closes its side: for at
most ``linger_s``, and no longer than ``linger_idle_s`` after it last sent anything.
"""

from __future__ import annotations

import asyncio
import functools

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol


class _LingeringTransport:
    """The transport as uvicorn sees it: ``close`` lingers while the client's request body still comes."""

    def __init__(self, transport: asyncio.Transport, protocol: ServiceProtocol) -> None:
        self._transport, self._protocol, self._closing = transport, protocol, False

    def __getattr__(self, name: str) -> object:
        return getattr(self._transport, name)

    def is_closing(self) -> bool:
        return self._closing or self._transport.is_closing()

    def close(self) -> None:
        if self._closing:
            return
        self._closing = True
        sending = self._protocol.conn.their_state is h11.SEND_BODY
        if not sending or not self._transport.can_write_eof() or self._transport.is_closing():
            self._transport.close()
            return
        self._protocol.linger()
        try:
            self._transport.write_eof()  # FIN once the answer is flushed; reading goes on
        except OSError:  # the client reset it meanwhile
            self._transport.abort()
            return
        self._transport.resume_reading()  # uvicorn may have paused it while the body piled up


class ServiceProtocol(H11Protocol):
    """:class:`H11Protocol` with a header deadline and a lingering close (see the module docstring)."""

    header_timeout_s: float = 10.0
    linger_s: float = 30.0
    linger_idle_s: float = 5.0  # nginx's lingering_timeout

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        self._lingering: list[asyncio.TimerHandle] = []  # [overall deadline, idle deadline] while lingering
        self._real_transport = transport
        super().connection_made(_LingeringTransport(transport, self))  # type: ignore[arg-type]
        self._arm_header_deadline()

    def data_received(self, data: bytes) -> None:
        if not self._lingering:
            super().data_received(data)
            return
        self._lingering[1].cancel()  # the refused body is dropped as it comes; silence ends it sooner
        self._lingering[1] = self.loop.call_later(self.linger_idle_s, self._real_transport.abort)

    def shutdown(self) -> None:
        if self._lingering:  # its answer is out: a stopping service does not wait for the rest of its body
            self._real_transport.abort()
            return
        super().shutdown()

    def on_response_complete(self) -> None:
        self._arm_header_deadline()  # before the next pipelined request, which super() may start at once
        super().on_response_complete()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_header_deadline()
        for timer in self._lingering:
            timer.cancel()
        super().connection_lost(exc)

    def linger(self) -> None:
        """Drop what the client still sends until it closes (then asyncio closes the transport), it is
        silent for ``linger_idle_s`` or ``linger_s`` has passed (then the connection is reset)."""
        self._lingering = [self.loop.call_later(self.linger_s, self._real_transport.abort),
                           self.loop.call_later(self.linger_idle_s, self._real_transport.abort)]

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


def protocol_class(header_timeout_s: float, linger_s: float) -> type[ServiceProtocol]:
    """The protocol class to give ``uvicorn.Config(http=...)``; both times in seconds, > 0."""
    for name, value in (("header_timeout_s", header_timeout_s), ("linger_s", linger_s)):
        if not value > 0:
            raise ValueError(f"{name} must be > 0, got {value}")
    return _protocol_class(float(header_timeout_s), float(linger_s))


@functools.cache
def _protocol_class(header_timeout_s: float, linger_s: float) -> type[ServiceProtocol]:
    return type("ServiceProtocol", (ServiceProtocol,), {"header_timeout_s": header_timeout_s, "linger_s": linger_s,
                                                        "linger_idle_s": min(ServiceProtocol.linger_idle_s, linger_s)})
