"""Errors in OpenAI's shape: `{"error": {"message", "type", "param", "code"}}` with the HTTP status
the `openai` client maps to its exception classes (401 AuthenticationError, 404 NotFoundError, ...)."""

from __future__ import annotations

from fastapi.responses import JSONResponse


class APIError(Exception):
    """A request the API refuses; raised anywhere below a route, answered by `response`."""

    def __init__(self, status: int, message: str, code: str | None = None, param: str | None = None):
        super().__init__(message)
        self.status, self.message, self.code, self.param = status, message, code, param

    def response(self) -> JSONResponse:
        """The error as OpenAI sends it."""
        kind = "invalid_request_error" if self.status < 500 else "server_error"
        body = {"message": self.message, "type": kind, "param": self.param, "code": self.code}
        headers = {"WWW-Authenticate": "Bearer"} if self.status == 401 else None
        return JSONResponse({"error": body}, status_code=self.status, headers=headers)


def not_found(kind: str, object_id: str) -> APIError:
    """OpenAI's answer for an id that does not exist, or that the key may not see (no difference is
    shown, so another owner's ids cannot be probed)."""
    return APIError(404, f"No such {kind} object: {object_id[:80]}", code="not_found", param="id")


def unauthorized() -> APIError:
    """No key, or not one of this server's."""
    return APIError(
        401,
        "Incorrect or missing API key: send `Authorization: Bearer KEY` with a key of this server",
        code="invalid_api_key",
    )
