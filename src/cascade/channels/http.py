"""The HTTP client the linked-channel adapters share, and where its errors become ours.

Messenger, WhatsApp and Viber are each one JSON POST per message, so the three adapters share
one pool of keep-alive connections (:class:`ChannelHttp` over :class:`cascade.httpclient.
HttpClient`, the lean client webhooks are delivered with): one limit, opened when the first
linked provider starts and closed when the last one stops. A request either returns a
:class:`Reply` (any HTTP status; the adapter reads the platform's own error from it) or raises
one of the seam's errors:

=======================================  ==========================  ===========================
what happened                            raised                      why
=======================================  ==========================  ===========================
no connection (refused, DNS, TLS), or    ChannelUnavailable 1100     nothing reached the
none made within the timeout                                         platform: trying again is
                                                                     safe
the request was written but no answer    ChannelOutcomeUnknown 1100  the platform may have sent
came in time, or the connection broke                                the message: the engine
while waiting for it                                                 fails the step over rather
                                                                     than send it twice
=======================================  ==========================  ===========================

A request is never sent twice by this module (a kept connection the platform closed just as it
was taken is an unknown outcome, not a resend), never follows a redirect and is never logged.
httpx cost about 300 µs of event-loop CPU per send here, a fifth of a Messenger message's whole
budget at 1,500 a second (BENCHMARKS.md, "Messenger").
"""

from __future__ import annotations

import email.utils
import hashlib
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import msgspec
import structlog

from cascade.domain.records import ChannelLink
from cascade.errors import ChannelOutcomeUnknown, ChannelUnavailable, PeerUnreachable
from cascade.httpclient import HttpClient, Target, parse_url

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
    """One pool of keep-alive connections for every linked-channel adapter.

    ``start`` and ``stop`` are counted: each linked provider starts it with itself and stops it
    with itself, and the client lives from the first start to the last stop. ``timeout``
    bounds each request from taking a connection to the end of the answer."""

    #: the most of an answer kept (the platforms answer a send in well under 1 KiB)
    MAX_ANSWER = 64 * 1024
    #: URLs parsed and kept (one per linked WhatsApp number; more are parsed again)
    MAX_TARGETS = 4096

    def __init__(self, *, timeout: float, max_connections: int) -> None:
        self.timeout = timeout
        self.max_connections = max_connections
        self._client: HttpClient | None = None
        self._users = 0
        self._targets: dict[str, Target] = {}

    @property
    def running(self) -> bool:
        """Whether the client is open."""
        return self._client is not None

    async def start(self) -> None:
        """Open the client (the first call) or count one more user of it."""
        self._users += 1
        if self._client is None:
            self._client = HttpClient(
                user_agent="cascade",
                max_connections=self.max_connections,
                max_body=self.MAX_ANSWER,
            )

    async def stop(self) -> None:
        """Count one user less; the last one closes the client and its connections."""
        self._users = max(self._users - 1, 0)
        if self._users == 0 and self._client is not None:
            client, self._client = self._client, None
            await client.close()

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
        target = self._target(url, peer)
        fields = [("Content-Type", "application/json"), *headers.items()]
        try:
            response = await client.post(
                target, _json.encode(body), fields, within=self.timeout, resend_on_stale=False
            )
        except PeerUnreachable as exc:
            if exc.request_sent:
                raise ChannelOutcomeUnknown(
                    f"{peer} did not answer: {exc.message}", code=CODE_COMMUNICATION_FAILED
                ) from exc
            raise ChannelUnavailable(
                f"{peer} could not be reached: {exc.message}", code=CODE_COMMUNICATION_FAILED
            ) from exc
        except ValueError as exc:
            # a header value with a line break (a credential pasted with one): no request
            raise ChannelUnavailable(
                f"the {peer} request cannot be made: {exc}", code=CODE_COMMUNICATION_FAILED
            ) from exc
        return Reply(response.status, response.headers, response.body)

    def _target(self, url: str, peer: str) -> Target:
        """``url`` parsed for the client, kept for the next request to it."""
        target = self._targets.get(url)
        if target is None:
            try:
                target = parse_url(url)
            except ValueError as exc:
                raise ChannelUnavailable(
                    f"the {peer} URL cannot be used: {exc}", code=CODE_COMMUNICATION_FAILED
                ) from exc
            if len(self._targets) >= self.MAX_TARGETS:
                self._targets.clear()
            self._targets[url] = target
        return target


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
