"""Cascade's one error tree.

Every error Cascade raises on purpose derives from :class:`CascadeError`. The second level says
whether trying again can help, which is the one question every caller (the engine, the webhook
sender, the HTTP layer) has to answer::

    CascadeError
    ├── TransientError                 trying again later may succeed
    │   ├── StoreUnavailable           the database did not answer or is locked
    │   ├── PeerUnreachable            an HTTP peer (receiver, platform) did not answer
    │   └── ChannelUnavailable         the provider throttled us, timed out or answered 5xx
    │       └── ChannelOutcomeUnknown  the request went out but no answer came back
    └── PermanentError                 trying again gives the same answer
        ├── ConfigError                the settings or a command-line argument are wrong
        │   └── SealError              sealed channel credentials cannot be opened with the key
        ├── StoreConflict              a uniqueness rule in the store was broken
        ├── StoreRejected              the database cannot hold a value of the write
        ├── ChannelRejected            the provider refused this message for good
        │   └── ChannelUndeliverable   the provider cannot be reached for this message
        └── RequestRejected            a client request is wrong; carries its HTTP problem
            ├── InvalidRequest         400/422, names every bad field
            ├── Unauthorized           401, never says which check failed
            ├── NotFound               404
            └── IdempotencyConflict    409

Library errors are wrapped where they cross a seam (``raise StoreUnavailable(...) from exc``),
so callers never import sqlite3, asyncpg or httptools to catch them. A class's docstring is its
default message.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


class CascadeError(Exception):
    """Cascade failed."""

    def __init__(self, message: str | None = None) -> None:
        super().__init__(message or (self.__doc__ or "").strip())

    @property
    def message(self) -> str:
        """The human-readable message."""
        return str(self.args[0])


class TransientError(CascadeError):
    """A temporary failure: the same operation may succeed later."""

    def __init__(self, message: str | None = None, *, retry_after: float | None = None) -> None:
        super().__init__(message)
        #: seconds the other side asked us to wait, when it said so
        self.retry_after = retry_after


class PermanentError(CascadeError):
    """A failure that repeating the operation will not fix."""


class StoreUnavailable(TransientError):
    """The database is unavailable."""


class StoreOutcomeUnknown(StoreUnavailable):
    """A commit was sent but its answer was lost, and the database could not be asked in time
    whether it took it: the write may have been stored."""


class PeerUnreachable(TransientError):
    """An HTTP peer (a webhook receiver, a platform's API) could not be reached, or closed the
    connection before answering. ``request_sent`` says whether the request had been written:
    when not, the peer cannot have acted on it."""

    def __init__(self, message: str, *, request_sent: bool) -> None:
        super().__init__(message)
        self.request_sent = request_sent


class DestinationRefused(PermanentError):
    """An HTTP destination the operator's rule forbids (a webhook URL that resolves to a
    private address where only public ones are allowed): no connection is made, and trying
    again cannot help."""


class ChannelUnavailable(TransientError):
    """The channel provider could not take the message now."""

    def __init__(
        self,
        message: str | None = None,
        *,
        retry_after: float | None = None,
        code: int = 1000,
    ) -> None:
        super().__init__(message, retry_after=retry_after)
        #: the Nexmo asynchronous error code to report if the step's window closes
        self.code = code


class ChannelOutcomeUnknown(ChannelUnavailable):
    """The message was handed over but no answer came: the provider may have accepted it."""


class ConfigError(PermanentError):
    """The configuration is invalid."""


class SealError(ConfigError):
    """Sealed channel credentials cannot be opened: none of the keys in CASCADE_CHANNEL_KEY
    sealed them (the key was changed without keeping the old one second in the list), or the
    stored value was altered."""


class StoreConflict(PermanentError):
    """The write conflicts with a row that already exists."""


class StoreRejected(PermanentError):
    """The database cannot hold a value of this write (e.g. a NUL character in a string on
    PostgreSQL); writing it again gives the same answer."""


class ChannelRejected(PermanentError):
    """The channel provider refused the message."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(f"{code}: {reason}")
        #: the Nexmo asynchronous error code (the documented 1000..1382 list)
        self.code = code
        self.reason = reason


class ChannelUndeliverable(ChannelRejected):
    """The provider cannot be reached for this message; its status is ``undeliverable``."""


@dataclass(frozen=True, slots=True)
class InvalidParameter:
    """One bad field of a request: its JSON path and why it is wrong."""

    name: str
    reason: str


class RequestRejected(PermanentError):
    """The request was rejected."""

    status_code: int = 400
    problem_type: str = "https://developer.nexmo.com/api-errors#bad-request"
    title: str = "Bad Request"

    def __init__(
        self,
        detail: str | None = None,
        *,
        invalid_parameters: Sequence[InvalidParameter] = (),
        status_code: int | None = None,
        title: str | None = None,
        problem_type: str | None = None,
    ) -> None:
        super().__init__(detail)
        self.invalid_parameters = list(invalid_parameters)
        if status_code is not None:
            self.status_code = status_code
        if title is not None:
            self.title = title
        if problem_type is not None:
            self.problem_type = problem_type


class InvalidRequest(RequestRejected):
    """Your request parameters did not validate."""

    problem_type = "https://developer.nexmo.com/api-errors/messages-olympus#invalid-params"
    title = "Invalid Parameters"


class Unauthorized(RequestRejected):
    """You did not provide correct credentials."""

    status_code = 401
    problem_type = "https://developer.nexmo.com/api-errors#unauthorized"
    title = "Invalid Credentials"


class NotFound(RequestRejected):
    """The requested resource does not exist."""

    status_code = 404
    problem_type = "https://developer.nexmo.com/api-errors#not-found"
    title = "Not Found"


class IdempotencyConflict(RequestRejected):
    """This Idempotency-Key was already used with a different request body."""

    status_code = 409
    problem_type = "https://developer.nexmo.com/api-errors#idempotency-conflict"
    title = "Idempotency Key Reused"
