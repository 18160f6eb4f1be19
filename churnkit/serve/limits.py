"""Read deadlines for the HTTP servers (``churnkit serve`` and the local router): slow clients get closed.

uvicorn closes a connection only when it is idle *between* requests (``timeout_keep_alive``); a client
that sends its request line and headers one byte at a time, or a body slower than it promised, would
hold a connection (and a file descriptor) forever. Two deadlines close them:

* **headers**: :func:`protocol_class` returns uvicorn's httptools protocol with a timer armed when a
  connection opens and after each response, and disarmed when a request's headers are complete; when
  it fires the connection is closed (nothing was handed to the application yet, so nothing to answer).
* **body**: :func:`read_body` reads the ASGI body with a deadline for the whole body; past it the
  application answers 408 and closes the connection.

An answer given before the request's body was read (413 from its Content-Length, 408) ends with a
**lingering close**, as nginx does it: the response is sent, the write side is shut (FIN), and whatever
the client still sends is read and discarded for at most :data:`LINGER_SECONDS` (:data:`LINGER_IDLE_SECONDS`
without data) and :data:`LINGER_BYTES`, then the connection is closed. Closing at once would leave unread
bytes in the socket, and the kernel answers those with a reset: a client still sending (Python's
``http.client``, ``requests``) would see ``ConnectionResetError`` instead of the 413 and its message.
"""

from __future__ import annotations

import asyncio
import time

from churnkit.exceptions import RequestError
from churnkit.serve.contracts import body_too_large

#: Seconds a client has to send a request's line and headers, counted from the connection (or the last response).
DEFAULT_HEADER_TIMEOUT = 10.0
#: Seconds a client has to send a request's whole body, counted from its headers.
DEFAULT_BODY_TIMEOUT = 30.0
#: A lingering close reads and discards at most this many bytes of an unread body ...
LINGER_BYTES = 64 * 1024 * 1024
#: ... for at most this many seconds in all ...
LINGER_SECONDS = 10.0
#: ... and this many without any data arriving (nginx: lingering_time 30 s, lingering_timeout 5 s).
LINGER_IDLE_SECONDS = 2.0


class Disconnected(Exception):
    """The client went away while its body was read."""


def body_too_slow(size: int, timeout: float) -> RequestError:
    return RequestError(
        f"the request body did not arrive within {timeout:g} s ({size} bytes received); send the body at once, or "
        "start the server with a larger --body-timeout", status=408,
        details=[f"body incomplete after {timeout:g} s: {size} bytes received"],
    )


async def read_body(receive, limit: int, timeout: float = DEFAULT_BODY_TIMEOUT) -> bytes:
    """The ASGI request body: 413 as soon as it passes ``limit`` bytes, 408 when it is not complete within
    ``timeout`` seconds; :class:`Disconnected` when the client left."""
    chunks, size = [], 0
    deadline = time.monotonic() + timeout
    while True:
        left = deadline - time.monotonic()
        try:
            if left <= 0:
                raise TimeoutError
            async with asyncio.timeout(left):  # no task per message, unlike wait_for
                message = await receive()
        except TimeoutError:
            raise body_too_slow(size, timeout) from None
        if message["type"] == "http.disconnect":
            raise Disconnected
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise body_too_large(size, limit)
        chunks.append(chunk)
        if not message.get("more_body", False):
            return chunks[0] if len(chunks) == 1 else b"".join(chunks)


class _LingeringTransport:
    """The connection's transport as the HTTP protocol and its request cycles see it: ``close()`` while the
    current request's body is still arriving becomes a lingering close (see the module docstring)."""

    def __init__(self, transport, protocol):
        self._transport = transport
        self._protocol = protocol

    def __getattr__(self, name):
        return getattr(self._transport, name)

    def is_closing(self) -> bool:
        return self._protocol._lingering is not None or self._transport.is_closing()

    def close(self) -> None:
        protocol, raw = self._protocol, self._transport
        if protocol._lingering is not None:
            return  # the lingering close ends by itself, within its caps
        if protocol._request_read or raw.is_closing() or not raw.can_write_eof():
            raw.close()
        else:
            protocol._linger()


def protocol_class(header_timeout: float = DEFAULT_HEADER_TIMEOUT, linger_bytes: int = LINGER_BYTES,
                   linger_seconds: float = LINGER_SECONDS, linger_idle: float = LINGER_IDLE_SECONDS):
    """uvicorn's httptools protocol with a header read deadline and a bounded lingering close (pass it as
    ``uvicorn.Config(http=...)``)."""
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

    class HeaderDeadlineProtocol(HttpToolsProtocol):
        """Closes a connection whose request headers are not complete ``header_timeout`` s after it opened
        (or after the previous response); lingers on a close that leaves a request body unread."""

        _deadline = None
        _lingering = None  # the timer of a lingering close in progress
        _linger_left = 0
        _linger_end = 0.0
        _request_read = True  # no request, or the whole body of the current one was received

        def _arm(self) -> None:
            self._disarm()
            self._deadline = self.loop.call_later(header_timeout, self._expired)

        def _disarm(self) -> None:
            if self._deadline is not None:
                self._deadline.cancel()
                self._deadline = None

        def _expired(self) -> None:
            self._deadline = None
            if not self.transport.is_closing() and (self.cycle is None or self.cycle.response_complete):
                self.transport._transport.close()

        def _linger(self) -> None:
            """Send what is buffered and a FIN, then read and discard until the client stops or a cap is hit."""
            raw = self.transport._transport
            self._disarm()
            self._linger_left = linger_bytes
            self._linger_end = self.loop.time() + linger_seconds
            self._lingering = self.loop.call_later(min(linger_idle, linger_seconds), self._linger_done)
            raw.write_eof()
            raw.resume_reading()  # the flow control may have paused reads while the body arrived

        def _linger_done(self) -> None:
            self._lingering = None
            self.transport._transport.close()

        def connection_made(self, transport) -> None:
            super().connection_made(_LingeringTransport(transport, self))
            self._arm()

        def data_received(self, data: bytes) -> None:
            if self._lingering is None:
                return super().data_received(data)
            self._linger_left -= len(data)
            self._lingering.cancel()
            left = self._linger_end - self.loop.time()
            if self._linger_left <= 0 or left <= 0:
                self._linger_done()
            else:
                self._lingering = self.loop.call_later(min(linger_idle, left), self._linger_done)

        def eof_received(self):
            if self._lingering is not None:  # the client sent everything it meant to: close now
                self._lingering.cancel()
                self._linger_done()
            return super().eof_received()

        def connection_lost(self, exc) -> None:
            self._disarm()
            if self._lingering is not None:
                self._lingering.cancel()
                self._lingering = None
            super().connection_lost(exc)

        def shutdown(self) -> None:
            """The server stops: no lingering on its connections."""
            self._request_read = True
            if self._lingering is not None:
                self._lingering.cancel()
                self._linger_done()
            super().shutdown()

        def on_message_begin(self) -> None:
            self._request_read = False
            super().on_message_begin()

        def on_message_complete(self) -> None:
            self._request_read = True
            super().on_message_complete()

        def on_headers_complete(self) -> None:
            self._disarm()
            super().on_headers_complete()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            if not self.transport.is_closing():
                self._arm()

    return HeaderDeadlineProtocol
