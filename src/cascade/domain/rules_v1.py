"""The per-channel rules of Messages v1 that no single field's schema can express.

Like :mod:`cascade.domain.rules` for v0.1, each check returns every violation it finds, named
by the JSON path of the field (``text``, ``image.url``, ``failover[1].to``...), so one
response lists everything wrong with a request. What each channel allows follows the v1
specification (1.3.0): its message types, its text limit, whether ``to``/``from`` are numbers
or ids, and its option object.
"""

from __future__ import annotations

from dataclasses import dataclass

from cascade.domain.message_v1 import (
    CONTENT_FIELDS,
    OPTION_FIELDS,
    UNOFFERED_STATUSES,
    UNSUPPORTED_OPTIONS,
    UPDATE_STATUS,
    MessageRequestV1,
    MessageUpdateV1,
    MessageV1,
)
from cascade.errors import InvalidParameter


@dataclass(frozen=True, slots=True)
class ChannelRulesV1:
    """What one v1 channel accepts."""

    message_types: tuple[str, ...]
    #: the longest text (0: the channel sends no text)
    text_limit: int
    #: whether ``to`` is an E.164 number (else a channel id)
    to_is_number: bool
    #: whether ``from`` is an E.164 number (sms also takes an alphanumeric sender id)
    from_is_number: bool


CHANNELS_V1: dict[str, ChannelRulesV1] = {
    "sms": ChannelRulesV1(("text",), 1000, True, False),
    "mms": ChannelRulesV1(("image", "vcard", "audio", "video"), 0, True, True),
    "whatsapp": ChannelRulesV1(
        ("text", "image", "audio", "video", "file", "template", "custom"), 4096, True, True
    ),
    "messenger": ChannelRulesV1(("text", "image", "audio", "video", "file"), 640, False, False),
    "viber_service": ChannelRulesV1(("text", "image"), 1000, True, False),
}

#: E.164 numbers as v1 takes them: digits only, no leading + or 00, 7 to 15 of them
E164_MIN_DIGITS = 7
E164_MAX_DIGITS = 15
#: the longest alphanumeric SMS sender id
ALPHANUMERIC_SENDER_MAX = 11


def is_e164(value: str) -> bool:
    """Whether ``value`` is an E.164 number as v1 writes it (``447700900000``)."""
    return (
        value.isascii()
        and value.isdigit()
        and not value.startswith("0")
        and E164_MIN_DIGITS <= len(value) <= E164_MAX_DIGITS
    )


def _is_sms_sender(value: str) -> bool:
    """An SMS ``from``: an E.164 number, or an alphanumeric sender id of up to 11 characters."""
    if value.isascii() and value.isdigit():
        return is_e164(value)
    return len(value) <= ALPHANUMERIC_SENDER_MAX and value.isascii() and value.isprintable()


def message_violations(message: MessageV1, path: str = "") -> list[InvalidParameter]:
    """Every way one v1 message breaks its channel's rules (empty when it is valid); names
    start with ``path`` (``failover[0].`` for a failover message)."""
    rules = CHANNELS_V1[message.channel]
    found: list[InvalidParameter] = []
    channel = message.channel
    if message.message_type not in rules.message_types:
        allowed = ", ".join(rules.message_types)
        found.append(InvalidParameter(f"{path}message_type", f"{channel} supports only: {allowed}"))
    elif getattr(message, message.message_type) is None:
        found.append(
            InvalidParameter(
                f"{path}{message.message_type}",
                f"is required when message_type is '{message.message_type}'",
            )
        )
    for name in CONTENT_FIELDS:
        if name != message.message_type and getattr(message, name) is not None:
            found.append(
                InvalidParameter(
                    f"{path}{name}", f"is not allowed when message_type is '{message.message_type}'"
                )
            )
    if message.text is not None and len(message.text) > rules.text_limit > 0:
        found.append(
            InvalidParameter(
                f"{path}text", f"is longer than {rules.text_limit} characters, the {channel} limit"
            )
        )
    found += _address_violations(message, rules, path)
    found += _option_violations(message, path)
    if message.webhook_url is not None and not message.webhook_url.startswith(
        ("http://", "https://")
    ):
        found.append(InvalidParameter(f"{path}webhook_url", "must be an http(s) URL"))
    for name, reason in UNSUPPORTED_OPTIONS.items():
        if getattr(message, name) is not None:
            found.append(InvalidParameter(f"{path}{name}", reason))
    return found


def _address_violations(
    message: MessageV1, rules: ChannelRulesV1, path: str
) -> list[InvalidParameter]:
    found: list[InvalidParameter] = []
    if rules.to_is_number and not is_e164(message.to):
        found.append(
            InvalidParameter(
                f"{path}to",
                f"must be an E.164 number: {E164_MIN_DIGITS} to {E164_MAX_DIGITS} digits, "
                "no leading + or 00",
            )
        )
    if message.channel == "sms":
        if not _is_sms_sender(message.from_):
            found.append(
                InvalidParameter(
                    f"{path}from",
                    "must be an E.164 number or an alphanumeric sender id of up to "
                    f"{ALPHANUMERIC_SENDER_MAX} characters",
                )
            )
    elif rules.from_is_number and not is_e164(message.from_):
        found.append(
            InvalidParameter(
                f"{path}from", f"must be an E.164 number for {message.channel}, no leading + or 00"
            )
        )
    return found


def _option_violations(message: MessageV1, path: str) -> list[InvalidParameter]:
    found: list[InvalidParameter] = []
    for name, owner in OPTION_FIELDS.items():
        if getattr(message, name) is not None and message.channel != owner:
            found.append(InvalidParameter(f"{path}{name}", f"only applies to {owner} messages"))
    messenger = message.messenger
    if message.channel == "messenger" and messenger is not None:
        if messenger.category == "message_tag" and messenger.tag is None:
            found.append(
                InvalidParameter(f"{path}messenger.tag", "is required when category is message_tag")
            )
        if messenger.tag is not None and messenger.category != "message_tag":
            found.append(
                InvalidParameter(f"{path}messenger.tag", "is only used with category message_tag")
            )
    if message.channel == "whatsapp":
        whatsapp = message.whatsapp
        if whatsapp is not None and whatsapp.policy == "fallback":
            found.append(
                InvalidParameter(
                    f"{path}whatsapp.policy", "must be 'deterministic', the only policy v1 has"
                )
            )
        if message.message_type == "template" and (whatsapp is None or whatsapp.locale is None):
            found.append(
                InvalidParameter(f"{path}whatsapp.locale", "is required for template messages")
            )
    return found


def request_violations(request: MessageRequestV1) -> list[InvalidParameter]:
    """Every rule a ``POST /v1/messages`` breaks, its failover messages included."""
    found = message_violations(request)
    for index, message in enumerate(request.failover or ()):
        found += message_violations(message, f"failover[{index}].")
    return found


def update_violations(update: MessageUpdateV1) -> list[InvalidParameter]:
    """What a ``PATCH /v1/messages/{uuid}`` body breaks: a status other than ``read`` and
    those named as not offered (which the endpoint answers with why)."""
    if update.status == UPDATE_STATUS or update.status in UNOFFERED_STATUSES:
        return []
    return [
        InvalidParameter(
            "status",
            f"must be '{UPDATE_STATUS}': Cascade marks inbound WhatsApp messages read and offers "
            "no other change of a message's status",
        )
    ]
