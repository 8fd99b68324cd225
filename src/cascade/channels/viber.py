"""Viber (the ``viber_service_msg`` channel) over the Viber Bot API, with a linked bot's token.

One message is one ``POST {viber_base_url}/pa/send_message`` with the bot's token in
``X-Viber-Auth-Token``::

    {"receiver": "<user id>", "min_api_version": 1,
     "sender": {"name": "<link's sender_name, at most 28 characters>", "avatar": "<url>"},
     "type": "text", "text": "..."}

``text`` is a text message; ``image`` a ``picture`` with its caption as ``text`` (the API wants
the field, empty when there is no caption); ``custom`` is the message itself (its ``type`` and
fields; ``receiver`` and ``sender`` are always set here). A ``sender_name`` longer than Viber's
28 characters is cut to 28. The answer is HTTP 200 for errors too: ``status`` 0 and a
``message_token`` (a 64-bit number, kept as its decimal string, which ``delivered``/``seen``/
``failed`` callbacks name) or a non-zero ``status`` mapped by :data:`VIBER_STATUSES`.

What the Bot API cannot honour, and so is not sent:

- ``viber_service_msg.ttl``: a bot message has no time to live; Viber keeps it until the user's
  device takes it. Use the step's failover ``expiry_time`` to move on when it is not delivered.
- ``viber_service_msg.category`` (``transaction``/``promotion``) and ``type``: the Bot API has
  no message categories; what a bot may send is Viber's policy for the bot as a whole.
- ``template`` content: bots have no templates (rejected with 1040).

Viber Business Messages (the partner-only, phone-number API that had TTLs and categories) is
not what this adapter speaks: the receiver is the bot's per-user id.
"""

from __future__ import annotations

from typing import Any

from cascade.channels.base import OutboundMessage, SendResult
from cascade.channels.graph import (
    CODE_ACCOUNT_BARRED,
    CODE_DESTINATION_UNREACHABLE,
    CODE_FACILITY_NOT_ALLOWED,
    CODE_INVALID_MESSAGE,
    CODE_INVALID_PARAMS,
    CODE_INVALID_RESOURCE,
    CODE_MISSING_PARAMS,
    CODE_NOT_IN_NETWORK,
    CODE_PROVIDER_ERROR,
    CODE_THROTTLED,
    CODE_TOKEN_EXPIRED,
    Meaning,
)
from cascade.channels.http import ChannelHttp, Reply, RevokedTokens, clip_reason
from cascade.domain.records import ChannelLink, LinkedChannel
from cascade.errors import ChannelOutcomeUnknown, ChannelRejected, ChannelUnavailable

#: the link credentials used here (``sender_avatar`` is optional)
CREDENTIAL = "auth_token"
SENDER_NAME = "sender_name"
SENDER_AVATAR = "sender_avatar"
#: Viber's limit on a sender's name
MAX_SENDER_NAME = 28
#: Nexmo's "Not suitable device"
CODE_NOT_SUITABLE_DEVICE = 1310

#: Viber ``status`` -> (its name, what it means here); the reasons are in docs/design.md §7
VIBER_STATUSES: dict[int, tuple[str, Meaning]] = {
    1: ("invalidUrl", Meaning("rejected", CODE_INVALID_RESOURCE)),
    2: ("invalidAuthToken", Meaning("token", CODE_TOKEN_EXPIRED)),
    3: ("badData", Meaning("rejected", CODE_INVALID_PARAMS)),
    4: ("missingData", Meaning("rejected", CODE_MISSING_PARAMS)),
    5: ("receiverNotRegistered", Meaning("rejected", CODE_NOT_IN_NETWORK)),
    6: ("receiverNotSubscribed", Meaning("rejected", CODE_DESTINATION_UNREACHABLE)),
    7: ("publicAccountBlocked", Meaning("rejected", CODE_ACCOUNT_BARRED)),
    8: ("publicAccountNotFound", Meaning("rejected", CODE_ACCOUNT_BARRED)),
    9: ("publicAccountSuspended", Meaning("rejected", CODE_ACCOUNT_BARRED)),
    10: ("webhookNotSet", Meaning("rejected", CODE_FACILITY_NOT_ALLOWED)),
    11: ("receiverNoSuitableDevice", Meaning("rejected", CODE_NOT_SUITABLE_DEVICE)),
    12: ("tooManyRequests", Meaning("throttled", CODE_THROTTLED)),
    13: ("apiVersionNotSupported", Meaning("rejected", CODE_INVALID_PARAMS)),
    14: ("incompatibleWithVersion", Meaning("rejected", CODE_NOT_SUITABLE_DEVICE)),
}


def send_message_body(link: ChannelLink, message: OutboundMessage) -> dict[str, Any]:
    """The ``send_message`` body for a v0.1 viber_service_msg message; ChannelRejected (1040)
    for content a bot cannot send."""
    content: dict[str, Any] = message.message.get("content") or {}
    kind = content.get("type")
    body: dict[str, Any]
    if kind == "text":
        body = {"type": "text", "text": content.get("text")}
    elif kind == "image":
        image = content.get("image") or {}
        body = {"type": "picture", "text": image.get("caption") or "", "media": image.get("url")}
    elif kind == "custom" and isinstance(content.get("custom"), dict):
        body = dict(content["custom"])
    else:
        raise ChannelRejected(
            CODE_INVALID_MESSAGE, f"a Viber bot cannot send {kind!r} content (no templates)"
        )
    sender: dict[str, Any] = {"name": link.credentials.get(SENDER_NAME, "")[:MAX_SENDER_NAME]}
    if link.credentials.get(SENDER_AVATAR):
        sender["avatar"] = link.credentials[SENDER_AVATAR]
    return {
        "min_api_version": 1,
        **body,
        "receiver": message.recipient,
        "sender": sender,
    }


class ViberAdapter:
    """Sends viber_service_msg messages with a linked bot (see the module doc)."""

    channel = LinkedChannel.VIBER

    def __init__(self, http: ChannelHttp, *, base_url: str) -> None:
        self._http = http
        self.url = f"{base_url.rstrip('/')}/pa/send_message"
        self._revoked = RevokedTokens()

    async def start(self) -> None:
        """Start using the shared HTTP client."""
        await self._http.start()

    async def stop(self) -> None:
        """Stop using the shared HTTP client."""
        await self._http.stop()

    async def send(self, link: ChannelLink, message: OutboundMessage) -> SendResult:
        """Send one message as ``link``'s bot; its ``message_token``, or the errors of the
        module doc and :mod:`cascade.channels.http`."""
        body = send_message_body(link, message)
        reply = await self._http.post_json(
            self.url,
            body,
            headers={"X-Viber-Auth-Token": link.credentials.get(CREDENTIAL, "")},
            peer="Viber",
        )
        if reply.status != 200:
            raise _http_error(reply)
        answer = reply.json()
        if not isinstance(answer, dict):
            raise ChannelOutcomeUnknown("Viber answered 200 without a JSON body", code=1100)
        status = answer.get("status")
        if status != 0:
            raise self._status_error(link, status, answer.get("status_message"))
        token = answer.get("message_token")
        if not isinstance(token, int | str) or isinstance(token, bool) or token == "":
            raise ChannelOutcomeUnknown(
                "Viber answered status 0 without a message_token", code=1100
            )
        return SendResult(provider_message_id=str(token), provider=self.channel.value)

    def _status_error(
        self, link: ChannelLink, status: object, status_message: object
    ) -> ChannelRejected | ChannelUnavailable:
        """The seam's error for a non-zero Viber ``status``."""
        name, meaning = VIBER_STATUSES.get(
            status if isinstance(status, int) else -1,
            ("generalError", Meaning("rejected", CODE_PROVIDER_ERROR)),
        )
        reason = clip_reason(f"Viber status {status} {name}: {status_message or 'no message'}")
        if meaning.kind == "token":
            self._revoked.report(link, CREDENTIAL, reason)
            return ChannelRejected(
                meaning.code,
                clip_reason(
                    f"the auth token of Viber link {link.id} was refused ({reason}); "
                    "link it again with a new token"
                ),
            )
        if meaning.kind == "throttled":
            return ChannelUnavailable(reason, code=meaning.code)
        return ChannelRejected(meaning.code, reason)


def _http_error(reply: Reply) -> ChannelRejected | ChannelUnavailable:
    """The seam's error for an HTTP status other than 200 (Viber answers its own errors with
    200, so these come from Viber's front end or a proxy)."""
    reason = clip_reason(f"Viber answered HTTP {reply.status}")
    if reply.status == 429:
        return ChannelUnavailable(reason, retry_after=reply.retry_after(), code=CODE_THROTTLED)
    if reply.status >= 500:
        return ChannelUnavailable(reason, retry_after=reply.retry_after(), code=CODE_PROVIDER_ERROR)
    return ChannelRejected(CODE_PROVIDER_ERROR, reason)
