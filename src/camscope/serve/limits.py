"""What the web page refuses before a request reaches its handler, and how long work may take.

``BodyLimit`` is plain ASGI middleware: it counts the body's bytes as they arrive, so a chunked
upload (no Content-Length) is refused at the limit instead of being spooled to disk first, and it
gives the whole body a deadline, so a client that sends a few bytes a minute does not hold a
connection for ever. ``Worker`` runs the CPU work (decoding, the model, the CAM) in threads, so
the event loop keeps answering cheap requests while an explanation runs, and bounds its time.
"""

from __future__ import annotations

import contextlib
import functools
import json
import threading
import time

import anyio
import anyio.to_thread
from fastapi import HTTPException


class _Refused(Exception):
    """Raised into the app's receive() when the body breaks a limit; the middleware answers."""


async def _reply(send, code: int, detail: str) -> None:
    body = json.dumps({"detail": detail}).encode()
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        (b"connection", b"close"),  # the rest of the body is never read: the connection cannot be reused
    ]
    await send({"type": "http.response.start", "status": code, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class BodyLimit:
    """Refuse request bodies over ``limit`` bytes (413) or slower than ``timeout_s`` in all (408)."""

    def __init__(self, app, limit: int, timeout_s: float):
        self.app, self.limit, self.timeout_s = app, limit, timeout_s

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        length = dict(scope.get("headers") or []).get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > self.limit):
            return await _reply(send, 413, f"request larger than {self.limit} bytes")
        body = _Body(self, receive, send)
        try:
            await self.app(scope, body.receive, body.send)
        except Exception:
            if body.refused is None:
                raise
        if body.refused is not None and not body.started:
            await _reply(send, *body.refused)


class _Body:
    """One request's body as the app reads it: counted, and under the deadline until complete."""

    def __init__(self, limit: BodyLimit, receive, send):
        self.limit, self._receive, self._send = limit, receive, send
        self.deadline = anyio.current_time() + limit.timeout_s
        self.received, self.done, self.started = 0, False, False
        self.refused: tuple[int, str] | None = None

    async def receive(self):
        if self.done:  # the body is in; later receives wait for a disconnect
            return await self._receive()
        with anyio.move_on_after(max(0.0, self.deadline - anyio.current_time())) as waited:
            message = await self._receive()
        if waited.cancelled_caught:
            self.refused = (408, f"the request body did not arrive within {self.limit.timeout_s:g} s")
            raise _Refused
        if message["type"] == "http.request":
            self.received += len(message.get("body", b""))
            self.done = not message.get("more_body", False)
            if self.received > self.limit.limit:
                self.refused = (413, f"request larger than {self.limit.limit} bytes")
                raise _Refused
        return message

    async def send(self, message):
        if self.refused is not None:
            return  # the app's answer to the aborted body (a 400 or 500) is replaced by ours
        self.started = self.started or message["type"] == "http.response.start"
        await self._send(message)


class Worker:
    """Runs blocking work in a thread with a time limit; the model runs one request at a time."""

    def __init__(self, time_limit_s: float, threads: int = 2):
        self.time_limit_s = time_limit_s
        self.limiter = anyio.CapacityLimiter(threads)
        self.model_lock = threading.Lock()

    async def run(self, fn, *args, **kwargs):
        deadline = time.monotonic() + self.time_limit_s
        call = functools.partial(fn, *args, deadline=deadline, **kwargs)
        try:
            with anyio.fail_after(self.time_limit_s):
                return await anyio.to_thread.run_sync(call, limiter=self.limiter, abandon_on_cancel=True)
        except TimeoutError:
            raise HTTPException(
                504,
                f"the request did not finish within {self.time_limit_s:g} s; try a cheaper method "
                "(gradcam) or a smaller image, or start the server with a larger --time-limit",
            ) from None

    @contextlib.contextmanager
    def hold_model(self, deadline: float):
        """The model lock, or 503 when it is not free before the request's deadline."""
        if not self.model_lock.acquire(timeout=max(0.0, deadline - time.monotonic())):
            raise HTTPException(503, "the server is busy with other explanations; try again in a moment")
        if time.monotonic() > deadline:  # the caller has been answered 504 already: skip the work
            self.model_lock.release()
            raise HTTPException(
                503,
                "the request ran out of time while waiting for the model; try again, "
                "or start the server with a larger --time-limit",
            )
        try:
            yield
        finally:
            self.model_lock.release()
