"""Errors as values: one code per failure, raised once and rendered at the edge.

The codes are Cloudflare's Workers AI codes (``reference/workers-ai-api.md`` §1.4); the OpenAI
rendering derives its ``type`` from the HTTP status, the way OpenAI's SDK maps statuses to
exception classes.
"""

from __future__ import annotations

from enum import IntEnum


class ErrorCode(IntEnum):
    INTERNAL = 3001
    TOO_LARGE = 3006
    TIMEOUT = 3007
    ABORTED = 3008
    RATE_LIMITED = 3021
    FINETUNE_MISSING_FILES = 3039
    CAPACITY = 3040
    BAD_INPUT = 5006
    NO_SUCH_MODEL = 5007
    CONTEXT_WINDOW = 5021
    NO_ROUTE = 7000
    METHOD_NOT_ALLOWED = 7001
    AUTHENTICATION = 10000


class SluiceError(Exception):
    """A failure a client can act on: a Cloudflare code, an HTTP status, a message."""

    def __init__(
        self,
        code: ErrorCode,
        status: int,
        message: str,
        *,
        param: str | None = None,
        retryable: bool = False,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.status = status
        self.message = message
        self.param = param
        self.retryable = retryable
        #: Seconds until a retry can succeed, when known (the ``Retry-After`` header).
        self.retry_after = retry_after

    def __repr__(self) -> str:
        return f"SluiceError({self.code.name}, {self.status}, {self.message!r})"


def bad_input(detail: str, *, param: str | None = None) -> SluiceError:
    return SluiceError(ErrorCode.BAD_INPUT, 400, f"Bad input: {detail}", param=param)


def no_such_model(model: str) -> SluiceError:
    return SluiceError(ErrorCode.NO_SUCH_MODEL, 400, f"No such model {model} or task", param="model")


def no_route() -> SluiceError:
    return SluiceError(ErrorCode.NO_ROUTE, 404, "No route for that URI")


def too_large(limit: int | None = None) -> SluiceError:
    detail = f": the limit is {limit} bytes" if limit is not None else ""
    return SluiceError(ErrorCode.TOO_LARGE, 413, f"Request is too large{detail}")


def headers_too_large(limit: int) -> SluiceError:
    return SluiceError(
        ErrorCode.TOO_LARGE, 431, f"Request header fields too large: the limit is {limit} bytes"
    )


def method_not_allowed(method: str) -> SluiceError:
    return SluiceError(ErrorCode.METHOD_NOT_ALLOWED, 405, f"{method} not supported for requested URI.")


def unavailable(detail: str) -> SluiceError:
    return SluiceError(ErrorCode.CAPACITY, 503, detail, retryable=True)


def client_gone() -> SluiceError:
    """The client hung up before the answer was ready; nobody reads this, but logs do."""
    return SluiceError(ErrorCode.ABORTED, 408, "Request aborted: the client closed the connection")


def queue_unavailable() -> SluiceError:
    """Redis, which holds the queue, cannot be reached: nothing was queued; retry later."""
    return SluiceError(
        ErrorCode.INTERNAL, 503, "Service unavailable: the request queue is unreachable.", retryable=True
    )


def reader_gone() -> SluiceError:
    """The gateway that queued a job was gone when a worker picked it up: the job is not run.
    Nobody should read this; if its client is there after all, it is told to retry."""
    return SluiceError(
        ErrorCode.ABORTED, 503, "Request aborted: its gateway went away before it started.", retryable=True
    )


def interrupted() -> SluiceError:
    """A stream's worker stopped after part of the answer was sent; the job's next attempt
    would start the answer over, so the client is told to retry instead."""
    return SluiceError(
        ErrorCode.INTERNAL,
        503,
        "The worker generating this answer stopped before it finished; please retry the request.",
        retryable=True,
    )


def out_of_tries(tries: int) -> SluiceError:
    """A job started ``tries`` times, its worker stopping each time (killed, or shut down): it
    is not started again, since the request itself may be what stops them."""
    return SluiceError(
        ErrorCode.INTERNAL,
        500,
        f"The request was started {tries} times and its worker stopped each time; it is not tried again.",
    )


def unauthenticated() -> SluiceError:
    """No API key, or one that is not (or no longer) valid: Cloudflare's answer, code 10000."""
    return SluiceError(ErrorCode.AUTHENTICATION, 401, "Authentication error")


def wrong_account(account: str) -> SluiceError:
    """A valid key used on another account's path."""
    return SluiceError(
        ErrorCode.AUTHENTICATION, 403, f"Authentication error: this key does not belong to account {account}"
    )


def rate_limited(limit: str, retry_after: float) -> SluiceError:
    """Over a per-key limit (requests, tokens or concurrency per minute): Workers AI's 3021."""
    return SluiceError(
        ErrorCode.RATE_LIMITED,
        429,
        f"rate limiting: {LIMIT_NAMES.get(limit, limit)} reached",
        retryable=True,
        retry_after=retry_after,
    )


LIMIT_NAMES = {
    "requests": "inference request per min rate",
    "tokens": "tokens per min rate",
    "concurrency": "concurrent request limit",
}


def capacity_exceeded(retry_after: float | None = None) -> SluiceError:
    """Every worker busy with ``options.rejectIfBusy``, or the queue too deep or too old to serve
    a new request in time: Workers AI's exact answer."""
    return SluiceError(
        ErrorCode.CAPACITY,
        429,
        "Capacity temporarily exceeded, please try again.",
        retryable=True,
        retry_after=retry_after,
    )


def internal(detail: str) -> SluiceError:
    return SluiceError(ErrorCode.INTERNAL, 500, f"Internal server error: {detail}", retryable=True)


def check_context_window(prompt_tokens: int, max_tokens: int, window: int) -> None:
    """Workers AI's rule: prompt tokens + max_tokens must fit the model's context window."""
    if prompt_tokens + max_tokens > window:
        raise SluiceError(
            ErrorCode.CONTEXT_WINDOW,
            413,
            f"The estimated number of input and maximum output tokens ({prompt_tokens + max_tokens}) "
            f"exceeded this model context window limit ({window}).",
            param="max_tokens",
        )
