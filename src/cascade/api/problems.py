"""RFC 7807 problem documents: the one shape of every error response."""

from __future__ import annotations

import uuid

import msgspec
import structlog
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response

from cascade.errors import (
    InvalidParameter,
    RequestRejected,
    StoreOutcomeUnknown,
    StoreRejected,
    TransientError,
)
from cascade.log import clip

log = structlog.get_logger(__name__)

PROBLEM_BASE = "https://developer.nexmo.com/api-errors"

#: the most ``invalid_parameters`` one problem lists; the detail counts the rest, so a body with
#: a hundred thousand bad fields is answered in a few kilobytes, not megabytes
MAX_LISTED = 50
#: the longest name or reason listed (a name may echo a client's field name of any length)
MAX_LISTED_CHARS = 200


class ProblemDocument(msgspec.Struct, omit_defaults=True):
    """An RFC 7807 error body, as the Nexmo specs define it."""

    type: str
    title: str
    detail: str
    instance: str
    invalid_parameters: list[InvalidParameter] = msgspec.field(default_factory=list)


_encoder = msgspec.json.Encoder()


def problem(
    status_code: int,
    title: str,
    detail: str,
    *,
    problem_type: str,
    invalid_parameters: list[InvalidParameter] | None = None,
    headers: dict[str, str] | None = None,
) -> Response:
    """A problem response; ``instance`` is a fresh id to quote in support requests and logs.
    Past ``MAX_LISTED`` parameters, the rest are counted in the detail instead."""
    listed = invalid_parameters or []
    if len(listed) > MAX_LISTED:
        detail = with_unlisted(detail, len(listed) - MAX_LISTED)
        listed = listed[:MAX_LISTED]
    document = ProblemDocument(
        type=problem_type,
        title=title,
        detail=detail,
        instance=uuid.uuid4().hex,
        invalid_parameters=[_clipped(parameter) for parameter in listed],
    )
    return Response(
        _encoder.encode(document),
        status_code=status_code,
        media_type="application/json",
        headers=headers,
    )


def with_unlisted(detail: str, count: int) -> str:
    """``detail``, saying that ``count`` more problems than the listed ones were found."""
    return f"{detail} The first {MAX_LISTED} problems are listed; {count:,} more are not."


def _clip(text: str) -> str:
    return text if len(text) <= MAX_LISTED_CHARS else text[: MAX_LISTED_CHARS - 1] + "\u2026"


def _clipped(parameter: InvalidParameter) -> InvalidParameter:
    if len(parameter.name) <= MAX_LISTED_CHARS and len(parameter.reason) <= MAX_LISTED_CHARS:
        return parameter
    return InvalidParameter(_clip(parameter.name), _clip(parameter.reason))


_HTTP_TITLES = {
    404: ("Not Found", "not-found", "No resource at this path."),
    405: ("Method Not Allowed", "wrong-verb", "This path does not accept this HTTP method."),
    413: ("Payload Too Large", "payload-too-large", "The request body is too large."),
    415: (
        "Unsupported Media Type",
        "content-type-header",
        "Send the request body as application/json.",
    ),
}


def rejected(exc: RequestRejected) -> Response:
    """The problem response of a rejected request."""
    headers = {"WWW-Authenticate": "Bearer, Basic"} if exc.status_code == 401 else None
    return problem(
        exc.status_code,
        exc.title,
        exc.message,
        problem_type=exc.problem_type,
        invalid_parameters=exc.invalid_parameters,
        headers=headers,
    )


async def on_request_rejected(request: Request, exc: Exception) -> Response:
    """Exception handler for RequestRejected."""
    assert isinstance(exc, RequestRejected)
    return rejected(exc)


async def on_http_exception(request: Request, exc: Exception) -> Response:
    """Starlette's own errors (unknown path, wrong method) in the problem shape."""
    assert isinstance(exc, HTTPException)
    title, anchor, detail = _HTTP_TITLES.get(
        exc.status_code, ("Error", "error", str(exc.detail or "The request failed."))
    )
    headers = dict(exc.headers) if exc.headers else None
    return problem(
        exc.status_code, title, detail, problem_type=f"{PROBLEM_BASE}#{anchor}", headers=headers
    )


async def on_unavailable(request: Request, exc: Exception) -> Response:
    """A transient failure (the store is unavailable): 503, try again."""
    log.warning("request.unavailable", path=clip(request.url.path), error=str(exc))
    detail = "Cascade could not store the request just now; nothing was stored. Try again."
    if isinstance(exc, StoreOutcomeUnknown):
        detail = (
            "The database's answer was lost as Cascade stored the request, and it could not be "
            "asked in time: the request may have been stored. Try again with the same "
            "Idempotency-Key to have it stored once."
        )
    return problem(
        503,
        "Service Unavailable",
        detail,
        problem_type=f"{PROBLEM_BASE}#unavailable",
        headers={"Retry-After": "1"},
    )


async def on_store_rejected(request: Request, exc: Exception) -> Response:
    """A value the database cannot hold that validation let through: the request's fault, and
    trying again gives the same answer, so 400 (never 503)."""
    log.warning("request.store_rejected", path=request.url.path, error=str(exc)[:200])
    return problem(
        400,
        "Invalid Parameters",
        "The request holds a value Cascade cannot store; nothing was stored.",
        problem_type=f"{PROBLEM_BASE}/messages-olympus#invalid-params",
    )


async def on_unexpected(request: Request, exc: Exception) -> Response:
    """Anything else: logged with its traceback, answered without it."""
    log.exception("request.failed", path=clip(request.url.path))
    return problem(
        500,
        "Internal Error",
        "Cascade failed to handle the request; the failure is logged.",
        problem_type=f"{PROBLEM_BASE}#internal-error",
    )


EXCEPTION_HANDLERS = {
    RequestRejected: on_request_rejected,
    HTTPException: on_http_exception,
    TransientError: on_unavailable,
    StoreRejected: on_store_rejected,
    Exception: on_unexpected,
}


async def problem_response(request: Request, exc: Exception) -> Response:
    """The response the handlers above give ``exc`` (for paths that skip Starlette's own
    exception middleware)."""
    for kind, handler in EXCEPTION_HANDLERS.items():
        if isinstance(exc, kind):
            return await handler(request, exc)
    raise exc  # unreachable: Exception is the last key
