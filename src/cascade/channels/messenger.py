"""Facebook Messenger over the Graph Send API, with a linked page's access token.

One message is one ``POST {graph_base_url}/{graph_api_version}/me/messages`` with the page
access token as a bearer header (Graph takes the token as an ``access_token`` parameter or as
``Authorization: Bearer``; the header keeps it out of URLs, which proxies and logs record)::

    {"recipient": {"id": "<PSID>"}, "messaging_type": "RESPONSE",
     "message": {"text": "..."}}

The v0.1 content becomes the Send API's ``message``: ``text`` as ``{"text"}``; ``image``,
``audio``, ``video`` and ``file`` as an ``attachment`` of that type with its URL (a ``caption``
is not sent: Messenger attachments have none); ``custom`` is sent as the ``message`` object
itself. ``messenger.category`` is the ``messaging_type``: ``response`` (the default) RESPONSE,
``update`` UPDATE, ``message_tag`` MESSAGE_TAG with ``tag`` as given (e.g.
``ACCOUNT_UPDATE``). The answer's ``message_id`` (``m_...``) is the provider id that delivery
callbacks name in ``delivery.mids``. Errors: :mod:`cascade.channels.graph`.
"""

from __future__ import annotations

from typing import Any

from cascade.channels.base import OutboundMessage, SendResult
from cascade.channels.graph import CODE_INVALID_MESSAGE, raise_graph_error
from cascade.channels.http import ChannelHttp, RevokedTokens
from cascade.domain.records import ChannelLink, LinkedChannel
from cascade.errors import ChannelOutcomeUnknown, ChannelRejected

#: the link credential that holds the page access token
CREDENTIAL = "page_access_token"
#: the v0.1 ``messenger.category`` -> the Send API's ``messaging_type``
MESSAGING_TYPES = {"response": "RESPONSE", "update": "UPDATE", "message_tag": "MESSAGE_TAG"}
#: v0.1 media content types -> Send API attachment types
ATTACHMENTS = {"image": "image", "audio": "audio", "video": "video", "file": "file"}


def send_api_body(message: OutboundMessage) -> dict[str, Any]:
    """The Send API request body for a v0.1 messenger message; ChannelRejected (1040) for
    content Messenger cannot carry."""
    body: dict[str, Any] = message.message
    content: dict[str, Any] = body.get("content") or {}
    kind = content.get("type")
    payload: dict[str, Any]
    if kind == "text":
        payload = {"text": content.get("text")}
    elif kind in ATTACHMENTS:
        media = content.get(kind) or {}
        payload = {
            "attachment": {
                "type": ATTACHMENTS[kind],
                "payload": {"url": media.get("url"), "is_reusable": False},
            }
        }
    elif kind == "custom" and isinstance(content.get("custom"), dict):
        payload = dict(content["custom"])
    else:
        raise ChannelRejected(CODE_INVALID_MESSAGE, f"messenger cannot send {kind!r} content")
    options: dict[str, Any] = body.get("messenger") or {}
    category = options.get("category") or "response"
    request: dict[str, Any] = {
        "recipient": {"id": message.recipient},
        "messaging_type": MESSAGING_TYPES.get(category, "RESPONSE"),
        "message": payload,
    }
    if category == "message_tag" and options.get("tag"):
        request["tag"] = options["tag"]
    return request


class MessengerAdapter:
    """Sends messenger messages with a linked page (see the module doc)."""

    channel = LinkedChannel.MESSENGER

    def __init__(self, http: ChannelHttp, *, base_url: str, api_version: str) -> None:
        self._http = http
        self.url = f"{base_url.rstrip('/')}/{api_version}/me/messages"
        self._revoked = RevokedTokens()

    async def start(self) -> None:
        """Start using the shared HTTP client."""
        await self._http.start()

    async def stop(self) -> None:
        """Stop using the shared HTTP client."""
        await self._http.stop()

    async def send(self, link: ChannelLink, message: OutboundMessage) -> SendResult:
        """Send one message as ``link``'s page; its ``message_id``, or the errors of
        :mod:`cascade.channels.graph` and :mod:`cascade.channels.http`."""
        body = send_api_body(message)
        token = link.credentials.get(CREDENTIAL, "")
        reply = await self._http.post_json(
            self.url, body, headers={"Authorization": f"Bearer {token}"}, peer="Graph API"
        )
        if reply.status != 200:
            raise_graph_error(
                reply,
                platform="Messenger",
                link=link,
                credential=CREDENTIAL,
                revoked=self._revoked,
            )
        answer = reply.json()
        mid = answer.get("message_id") if isinstance(answer, dict) else None
        if not isinstance(mid, str) or not mid:
            # it said yes without an id: the message may be out, and no receipt could match it
            raise ChannelOutcomeUnknown("Graph API answered 200 without a message_id", code=1100)
        return SendResult(provider_message_id=mid, provider=self.channel.value)
