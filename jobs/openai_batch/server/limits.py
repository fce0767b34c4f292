"""Request bodies bounded before they are read: an ASGI middleware that refuses a body past its limit.

Starlette spools a multipart upload to a temporary file however large it is; counting the bytes as
they arrive (and checking Content-Length first) stops an oversized upload at the limit instead of
after it has filled a disk. A request past the limit gets 413 in OpenAI's error shape.
"""

from __future__ import annotations

from starlette.exceptions import HTTPException

from jobs.openai_batch.server.errors import APIError

OTHER_BYTES = 1024 * 1024


class _TooLarge(HTTPException):
    """Raised from the body stream: FastAPI passes an HTTPException on (anything else it reports as
    a body it could not parse), and the app's handler answers it in OpenAI's shape."""

    def __init__(self, limit: int):
        super().__init__(413, f"the request body is larger than this server's limit of {limit} bytes")
        self.code = "request_too_large"


class BodyLimit:
    """At most `upload_bytes` for requests to `upload_path`, `other_bytes` for any other."""

    def __init__(self, app, upload_path: str, upload_bytes: int, other_bytes: int = OTHER_BYTES):
        self.app, self.upload_path = app, upload_path
        self.upload_bytes, self.other_bytes = upload_bytes, other_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        limit = self.upload_bytes if scope["path"] == self.upload_path else self.other_bytes
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            return await _refuse(scope, receive, send, limit)
        seen = 0
        started = False

        async def counted():
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    raise _TooLarge(limit)
            return message

        async def tracked(message):
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counted, tracked)
        except _TooLarge:
            if started:
                raise
            await _refuse(scope, receive, send, limit)


async def _refuse(scope, receive, send, limit: int) -> None:
    err = APIError(
        413, f"the request body is larger than this server's limit of {limit} bytes", code="request_too_large"
    )
    await err.response()(scope, receive, send)
