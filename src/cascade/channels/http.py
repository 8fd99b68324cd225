"""The HTTP client the linked-channel adapters share, and where httpx's errors become ours.

Messenger, WhatsApp and Viber are each one JSON POST per message, so the three adapters share
one pooled :class:`httpx.AsyncClient` (:class:`ChannelHttp`): one connection pool with one
limit, opened when the first linked provider starts and closed when the last one stops.
Nothing above this module imports httpx: a request either returns a :class:`Reply` (any HTTP
status; the adapter reads the platform's own error from it) or raises one of the seam's errors:

=======================================  ==========================  ===========================
what happened                            raised                      why
=======================================  ==========================  ===========================
no connection (refused, DNS, TLS),       ChannelUnavailable 1100     nothing reached the
none free in the pool in time, connect                               platform: trying again is
timeout, the request not fully written                               safe
the request was written but no answer    ChannelOutcomeUnknown 1100  the platform may have sent
came in time, or the connection broke                                the message: the engine
while waiting for it                                                 fails the step over rather
                                                                     than send it twice
=======================================  ==========================  ===========================

The client never follows redirects and never logs a request: httpx's own request log line is
turned down to warnings, since at a thousand messages a second it would be the whole log.
"""

from __future__ import annotations

import email.utils
import hashlib
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import httpx
import msgspec
import structlog

from cascade.domain.records import ChannelLink
from cascade.errors import ChannelOutcomeUnknown, ChannelUnavailable

log = structlog.get_logger(__name__)

#: Nexmo's "Communication failed": the platform could not be reached or did not answer
CODE_COMMUNICATION_FAILED = 1100
#: the longest ``retry_after`` taken from a platform's answer (a bad date must not park a send)
MAX_RETRY_AFTER = 3600.0

_json = msgspec.json.Encoder()


@dataclass(frozen=True, slots=True)
class Reply:
    """A platform's answer: its status, headers (names in lower case) and body."""

    status: int
    headers: Mapping[str, str]
    body: bytes

    def json(self) -> Any:
        """The body decoded as JSON, or None when it is not JSON."""
        try:
            return msgspec.json.decode(self.body)
        except (msgspec.DecodeError, UnicodeDecodeError):
            return None

    def retry_after(self) -> float | None:
        """The seconds its ``Retry-After`` header asks for, if it has a readable one."""
        return retry_after(self.headers.get("retry-after"))


def retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` value (delay-seconds or an HTTP date), capped at
    :data:`MAX_RETRY_AFTER`; None when absent or unreadable."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return min(float(value), MAX_RETRY_AFTER)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        return None
    seconds = when.timestamp() - (time.time() if now is None else now)
    return min(max(seconds, 0.0), MAX_RETRY_AFTER)


class ChannelHttp:
    """One pooled async HTTP client for every linked-channel adapter.

    ``start`` and ``stop`` are counted: each linked provider starts it with itself and stops it
    with itself, and the client lives from the first start to the last stop. ``transport`` is
    for tests only (httpx's own transports)."""

    def __init__(
        self,
        *,
        timeout: float,
        max_connections: int,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.timeout = timeout
        self.max_connections = max_connections
        self._transport = transport
        self._client: httpx.AsyncClient | None = None
        self._users = 0

    @property
    def running(self) -> bool:
        """Whether the client is open."""
        return self._client is not None

    async def start(self) -> None:
        """Open the client (the first call) or count one more user of it."""
        self._users += 1
        if self._client is None:
            # httpx logs every request at info; a line per message sent would flood the log
            logging.getLogger("httpx").setLevel(logging.WARNING)
            self._client = httpx.AsyncClient(
                timeout=httpx.Timeout(self.timeout),
                limits=httpx.Limits(
                    max_connections=self.max_connections,
                    max_keepalive_connections=self.max_connections,
                ),
                follow_redirects=False,
                transport=self._transport,
                headers={"User-Agent": "cascade"},
            )

    async def stop(self) -> None:
        """Count one user less; the last one closes the client and its connections."""
        self._users = max(self._users - 1, 0)
        if self._users == 0 and self._client is not None:
            client, self._client = self._client, None
            await client.aclose()

    async def post_json(
        self, url: str, body: Mapping[str, Any], *, headers: Mapping[str, str], peer: str
    ) -> Reply:
        """POST ``body`` as JSON; the answer whatever its status, or the errors of the module
        doc. ``peer`` names the platform in their messages ("Graph API", "Viber")."""
        client = self._client
        if client is None:
            raise ChannelUnavailable(
                f"the {peer} client is not running", code=CODE_COMMUNICATION_FAILED
            )
        content = _json.encode(body)
        try:
            response = await client.post(
                url,
                content=content,
                headers={"Content-Type": "application/json", **headers},
            )
        except (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout) as exc:
            raise ChannelUnavailable(
                f"{peer} could not be reached: {_describe(exc)}", code=CODE_COMMUNICATION_FAILED
            ) from exc
        except (httpx.WriteTimeout, httpx.WriteError) as exc:
            # the request was not fully written, so the platform cannot have acted on it
            raise ChannelUnavailable(
                f"{peer} connection failed while sending: {_describe(exc)}",
                code=CODE_COMMUNICATION_FAILED,
            ) from exc
        except (httpx.ReadTimeout, httpx.ReadError, httpx.RemoteProtocolError) as exc:
            raise ChannelOutcomeUnknown(
                f"{peer} did not answer: {_describe(exc)}", code=CODE_COMMUNICATION_FAILED
            ) from exc
        except httpx.HTTPError as exc:
            # anything else httpx raises (a proxy or protocol failure) before an answer came
            raise ChannelUnavailable(
                f"{peer} request failed: {_describe(exc)}", code=CODE_COMMUNICATION_FAILED
            ) from exc
        return Reply(response.status_code, response.headers, response.content)


def _describe(exc: httpx.HTTPError) -> str:
    """An httpx error in a few words: its kind, and its message when it has one (httpx's
    messages name the failure, never a header or the body)."""
    text = str(exc).strip()
    kind = type(exc).__name__
    return f"{kind}: {text}"[:300] if text else kind


def clip_reason(text: str, limit: int = 400) -> str:
    """A platform's own words, fit to store as an error reason: one line, at most ``limit``."""
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


class RevokedTokens:
    """Says once per link that its token was refused, so the log names each broken link once
    and not once per message. A link is remembered with a digest of its token, so a link given
    a new token that is refused in turn is reported again; the token itself is never logged."""

    def __init__(self) -> None:
        self._reported: set[tuple[str, str]] = set()

    def report(self, link: ChannelLink, credential: str, reason: str) -> None:
        """Log a warning naming ``link`` (never its token) unless done for this token already."""
        token = link.credentials.get(credential, "")
        key = (link.id, hashlib.sha256(token.encode()).hexdigest())
        if key in self._reported:
            return
        self._reported.add(key)
        log.warning(
            "channel.token_refused",
            channel=str(link.channel),
            link=link.id,
            account=link.account_id,
            address=link.address,
            reason=reason,
        )
