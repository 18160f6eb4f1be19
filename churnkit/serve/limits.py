"""Read deadlines for the HTTP servers (``churnkit serve`` and the local router): slow clients get closed.

uvicorn closes a connection only when it is idle *between* requests (``timeout_keep_alive``); a client
that sends its request line and headers one byte at a time, or a body slower than it promised, would
hold a connection (and a file descriptor) forever. Two deadlines close them:

* **headers**: :func:`protocol_class` returns uvicorn's httptools protocol with a timer armed when a
  connection opens and after each response, and disarmed when a request's headers are complete; when
  it fires the connection is closed (nothing was handed to the application yet, so nothing to answer).
* **body**: :func:`read_body` reads the ASGI body with a deadline for the whole body; past it the
  application answers 408 and closes the connection.
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


def protocol_class(header_timeout: float = DEFAULT_HEADER_TIMEOUT):
    """uvicorn's httptools protocol with a header read deadline (pass it as ``uvicorn.Config(http=...)``)."""
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

    class HeaderDeadlineProtocol(HttpToolsProtocol):
        """Closes a connection whose request headers are not complete ``header_timeout`` s after it opened
        (or after the previous response)."""

        _deadline = None

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
                self.transport.close()

        def connection_made(self, transport) -> None:
            super().connection_made(transport)
            self._arm()

        def connection_lost(self, exc) -> None:
            self._disarm()
            super().connection_lost(exc)

        def on_headers_complete(self) -> None:
            self._disarm()
            super().on_headers_complete()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            if not self.transport.is_closing():
                self._arm()

    return HeaderDeadlineProtocol
