"""One exception tree, one mapping to OpenAI's error body.

    BonError                      500 internal_error
    ├── InvalidRequestError       400 invalid_request_error
    │   └── PayloadTooLargeError  413 invalid_request_error
    ├── AuthenticationError       401 authentication_error
    ├── NotFoundError             404 invalid_request_error / not_found
    │   └── ModelNotFoundError    404 invalid_request_error / model_not_found
    ├── RateLimitError            429 rate_limit_exceeded (Retry-After)
    ├── RelayedError              an upstream's 413 or 429, its status and message kept
    ├── UpstreamError             502 upstream_error
    ├── ServiceUnavailableError   503 service_unavailable
    └── DeadlineExceededError     504 timeout

The pipeline, generators and scorers raise these; ``app.py`` turns every one of
them (and FastAPI's own validation and routing errors) into
``{"error": {"message", "type", "param", "code"}}`` with the status below.
"""

from __future__ import annotations

from typing import Any


class BonError(Exception):
    status_code = 500
    type = "internal_error"
    code: str | None = None

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        if code is not None:
            self.code = code
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return error_body(self.message, self.type, param=self.param, code=self.code)


class InvalidRequestError(BonError):
    status_code = 400
    type = "invalid_request_error"


class PayloadTooLargeError(InvalidRequestError):
    status_code = 413
    code = "payload_too_large"


class AuthenticationError(BonError):
    status_code = 401
    type = "authentication_error"
    code = "invalid_api_key"


class NotFoundError(BonError):
    status_code = 404
    type = "invalid_request_error"
    code = "not_found"


class ModelNotFoundError(NotFoundError):
    code = "model_not_found"


class RateLimitError(BonError):
    status_code = 429
    type = "rate_limit_exceeded"


class RelayedError(BonError):
    """An upstream's 413 or 429 passed on with its own status (and its Retry-After)."""

    def __init__(self, status_code: int, message: str, **kwargs: Any) -> None:
        super().__init__(message, **kwargs)
        self.status_code = status_code
        self.type = type_for_status(status_code)


class UpstreamError(BonError):
    status_code = 502
    type = "upstream_error"


class ServiceUnavailableError(BonError):
    status_code = 503
    type = "service_unavailable"


class DeadlineExceededError(BonError):
    status_code = 504
    type = "timeout"


def error_body(
    message: str, type: str, *, param: str | None = None, code: str | int | None = None
) -> dict[str, Any]:
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


STATUS_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    405: "invalid_request_error",
    413: "invalid_request_error",
    415: "invalid_request_error",
    429: "rate_limit_exceeded",
}


def type_for_status(status: int) -> str:
    return STATUS_TYPES.get(status, "internal_error" if status >= 500 else "invalid_request_error")


def draining_error() -> ServiceUnavailableError:
    """What every request meets while the server shuts down (new work, queued work, /health)."""
    return ServiceUnavailableError(
        "the server is shutting down; retry on another replica",
        code="draining",
        headers={"Retry-After": "1"},
    )
