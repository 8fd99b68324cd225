"""WhatsApp over the Cloud API, with a linked business number's access token.

One message is one ``POST {graph_base_url}/{graph_api_version}/{phone_number_id}/messages``
with the link's access token as a bearer header::

    {"messaging_product": "whatsapp", "recipient_type": "individual", "to": "<digits>",
     "type": "text", "text": {"body": "...", "preview_url": false}}

The v0.1 content becomes the message: ``text``; ``image``, ``audio``, ``video`` as media
objects by ``link`` (``caption`` on image and video; WhatsApp takes none on audio); ``file`` as
a ``document`` with its caption and a ``filename`` taken from the URL's last path segment;
``template`` as a template message; ``custom`` is the message object itself (its ``type`` and
the object of that type; ``to`` and ``messaging_product`` are always set here).

Templates. ``template.name`` may be written ``namespace:name`` as v0.1 asked; the Cloud API has
no namespaces, so only the part after the last ``:`` is sent. ``parameters`` (strings or
``{"default": ...}``) fill the body's placeholders in order, as ``text`` parameters;
``whatsapp.locale`` is ``language.code`` and ``language.policy`` is ``deterministic``, the only
policy the API has (v0.1's ``fallback`` is refused when the request is accepted).

The answer's ``messages[0].id`` (``wamid....``) is the id status callbacks name. A message to a
user outside the 24-hour customer-service window is refused with 131047 (rejected 1340: send a
template, or fail over). Errors: :mod:`cascade.channels.graph`.

Marking a message a user sent read (blue ticks in their app; ``PATCH /v1/messages/{uuid}``) is a
POST to the same endpoint with the number's token::

    {"messaging_product": "whatsapp", "status": "read", "message_id": "<wamid>"}

plus ``"typing_indicator": {"type": "text"}`` to show the user that a reply is being written.
Graph answers ``{"success": true}``; its errors are read as a send's are.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import unquote, urlsplit

from cascade.channels.base import OutboundMessage, SendResult
from cascade.channels.graph import CODE_INVALID_MESSAGE, CODE_PROVIDER_ERROR, raise_graph_error
from cascade.channels.http import ChannelHttp, RevokedTokens
from cascade.domain.records import ChannelLink, LinkedChannel
from cascade.errors import ChannelOutcomeUnknown, ChannelRejected

#: the link credentials of the number's id and its token
PHONE_NUMBER_ID = "phone_number_id"
CREDENTIAL = "access_token"
#: v0.1 media content types -> Cloud API message types
MEDIA = {"image": "image", "audio": "audio", "video": "video", "file": "document"}
#: the Cloud API message types that take a caption
CAPTIONED = frozenset({"image", "video", "document"})


def template_object(content: dict[str, Any], options: dict[str, Any]) -> dict[str, Any]:
    """The Cloud API ``template`` object of a v0.1 template content."""
    template: dict[str, Any] = content.get("template") or {}
    name = str(template.get("name") or "").rsplit(":", 1)[-1]
    values = [
        value.get("default", "") if isinstance(value, dict) else str(value)
        for value in template.get("parameters") or []
    ]
    result: dict[str, Any] = {
        "name": name,
        "language": {"policy": "deterministic", "code": options.get("locale") or "en_US"},
    }
    if values:
        result["components"] = [
            {"type": "body", "parameters": [{"type": "text", "text": value} for value in values]}
        ]
    return result


def _filename(url: str) -> str | None:
    """The last path segment of a URL, when it has one that looks like a file name."""
    segment = unquote(urlsplit(url).path.rsplit("/", 1)[-1])
    return segment if segment and "." in segment.strip(".") else None


def cloud_api_body(message: OutboundMessage) -> dict[str, Any]:
    """The Cloud API request body for a v0.1 whatsapp message; ChannelRejected (1040) for
    content WhatsApp cannot carry."""
    content: dict[str, Any] = message.message.get("content") or {}
    options: dict[str, Any] = message.message.get("whatsapp") or {}
    kind = content.get("type")
    head: dict[str, Any] = {"messaging_product": "whatsapp", "recipient_type": "individual"}
    body: dict[str, Any]
    if kind == "text":
        body = {"type": "text", "text": {"body": content.get("text"), "preview_url": False}}
    elif kind in MEDIA:
        media = content.get(kind) or {}
        wa_type = MEDIA[kind]
        item: dict[str, Any] = {"link": media.get("url")}
        if wa_type in CAPTIONED and media.get("caption"):
            item["caption"] = media["caption"]
        if wa_type == "document":
            filename = _filename(str(media.get("url") or ""))
            if filename:
                item["filename"] = filename
        body = {"type": wa_type, wa_type: item}
    elif kind == "template":
        body = {"type": "template", "template": template_object(content, options)}
    elif kind == "custom" and isinstance(content.get("custom"), dict):
        body = dict(content["custom"])
    else:
        raise ChannelRejected(CODE_INVALID_MESSAGE, f"whatsapp cannot send {kind!r} content")
    return {**head, **body, "messaging_product": "whatsapp", "to": message.recipient}


class WhatsAppAdapter:
    """Sends whatsapp messages with a linked business number (see the module doc)."""

    channel = LinkedChannel.WHATSAPP

    def __init__(self, http: ChannelHttp, *, base_url: str, api_version: str) -> None:
        self._http = http
        self._base = f"{base_url.rstrip('/')}/{api_version}"
        self._revoked = RevokedTokens()

    async def start(self) -> None:
        """Start using the shared HTTP client."""
        await self._http.start()

    async def stop(self) -> None:
        """Stop using the shared HTTP client."""
        await self._http.stop()

    def url(self, link: ChannelLink) -> str:
        """The messages endpoint of ``link``'s number."""
        return f"{self._base}/{link.credentials.get(PHONE_NUMBER_ID, '')}/messages"

    async def send(self, link: ChannelLink, message: OutboundMessage) -> SendResult:
        """Send one message from ``link``'s number; its ``wamid``, or the errors of
        :mod:`cascade.channels.graph` and :mod:`cascade.channels.http`."""
        answer = await self._post(link, cloud_api_body(message))
        messages = answer.get("messages") if isinstance(answer, dict) else None
        first = messages[0] if isinstance(messages, list) and messages else None
        wamid = first.get("id") if isinstance(first, dict) else None
        if not isinstance(wamid, str) or not wamid:
            raise ChannelOutcomeUnknown("Graph API answered 200 without messages[0].id", code=1100)
        return SendResult(provider_message_id=wamid, provider=self.channel.value)

    async def _post(self, link: ChannelLink, body: dict[str, Any]) -> Any:
        """POST ``body`` to ``link``'s number with its token; the answer's JSON, or the errors
        of :mod:`cascade.channels.graph` when Graph says no."""
        token = link.credentials.get(CREDENTIAL, "")
        reply = await self._http.post_json(
            self.url(link), body, headers={"Authorization": f"Bearer {token}"}, peer="Graph API"
        )
        if reply.status != 200:
            raise_graph_error(
                reply, platform="WhatsApp", link=link, credential=CREDENTIAL, revoked=self._revoked
            )
        return reply.json()

    async def mark_read(self, link: ChannelLink, wamid: str, *, typing: bool = False) -> None:
        """Mark the message ``wamid`` that ``link``'s number received read (with the typing
        indicator when ``typing``); the errors of :mod:`cascade.channels.graph` and
        :mod:`cascade.channels.http` when Graph refuses or cannot be reached (never retried
        here: the caller hears of it)."""
        body: dict[str, Any] = {
            "messaging_product": "whatsapp",
            "status": "read",
            "message_id": wamid,
        }
        if typing:
            body["typing_indicator"] = {"type": "text"}
        answer = await self._post(link, body)
        if not isinstance(answer, dict) or answer.get("success") is not True:
            raise ChannelRejected(
                CODE_PROVIDER_ERROR, "Graph API answered 200 without success: true to a read mark"
            )
