"""The per-channel rules of the contract that no single field's schema can express.

Each check returns every violation it finds (never just the first), named by the JSON path of the
offending field, so a client learns everything wrong with a request from one response.
"""

from __future__ import annotations

from dataclasses import dataclass

from cascade.domain.message import (
    Address,
    Channel,
    MessageBody,
    MessageRequest,
    WorkflowRequest,
    WorkflowStep,
)
from cascade.errors import InvalidParameter


@dataclass(frozen=True, slots=True)
class ChannelProfile:
    """What one channel accepts: addressing, content types and the longest text."""

    to_field: str
    from_field: str
    content_types: frozenset[str]
    text_limit: int
    supports_read: bool


PROFILES: dict[Channel, ChannelProfile] = {
    Channel.SMS: ChannelProfile("number", "number", frozenset({"text"}), 1000, False),
    Channel.MMS: ChannelProfile("number", "number", frozenset({"image"}), 0, False),
    Channel.WHATSAPP: ChannelProfile(
        "number",
        "number",
        frozenset({"text", "image", "audio", "video", "file", "template", "custom"}),
        4096,
        True,
    ),
    Channel.MESSENGER: ChannelProfile(
        "id", "id", frozenset({"text", "image", "audio", "video", "file", "custom"}), 640, True
    ),
    Channel.VIBER: ChannelProfile(
        "number", "id", frozenset({"text", "image", "template", "custom"}), 1000, True
    ),
}

#: channels whose ``to`` may name either field: a Viber bot (Cascade's Viber channel) knows its
#: users by their per-bot id, a Viber Service Message by phone number
EITHER_TO_FIELD = frozenset({Channel.VIBER})

#: Dispatch documents a shorter Viber TTL ceiling than Messages v0.1 does.
DISPATCH_VIBER_TTL_MAX = 86400


def _address_violations(
    address: Address, wanted: str, channel: Channel, path: str
) -> list[InvalidParameter]:
    found: list[InvalidParameter] = []
    if address.type != channel:
        found.append(InvalidParameter(f"{path}.type", f"must be '{channel}', the same as to.type"))
    other = "id" if wanted == "number" else "number"
    if getattr(address, wanted) is None:
        found.append(InvalidParameter(f"{path}.{wanted}", f"is required for {channel}"))
    if getattr(address, other) is not None:
        found.append(InvalidParameter(f"{path}.{other}", f"is not used by {channel}"))
    return found


def _is_e164(number: str) -> bool:
    return number.isascii() and number.isdigit() and not number.startswith(("0",))


def message_violations(
    to: Address, from_: Address, message: MessageBody, path: str = ""
) -> list[InvalidParameter]:
    """Every way this message breaks its channel's rules (empty when it is valid)."""
    channel = Channel(to.type)
    profile = PROFILES[channel]
    if channel in EITHER_TO_FIELD and to.id is not None and to.number is None:
        found = _address_violations(to, "id", channel, f"{path}to")
    else:
        found = _address_violations(to, profile.to_field, channel, f"{path}to")
    if from_.type != to.type:
        found.append(InvalidParameter(f"{path}from.type", "must equal to.type"))
    else:
        found += _address_violations(from_, profile.from_field, channel, f"{path}from")
    if to.number is not None and not _is_e164(to.number):
        found.append(
            InvalidParameter(
                f"{path}to.number", "must be an E.164 number: digits only, no leading + or 00"
            )
        )

    content = message.content
    cpath = f"{path}message.content"
    if content.type not in profile.content_types:
        allowed = ", ".join(sorted(profile.content_types))
        found.append(InvalidParameter(f"{cpath}.type", f"{channel} supports only: {allowed}"))
    elif getattr(content, content.type) is None:
        found.append(
            InvalidParameter(
                f"{cpath}.{content.type}", f"is required when type is '{content.type}'"
            )
        )
    for name in ("text", "image", "audio", "video", "file", "template", "custom"):
        if name != content.type and getattr(content, name) is not None:
            found.append(
                InvalidParameter(f"{cpath}.{name}", f"is not allowed when type is '{content.type}'")
            )
    if content.text is not None and len(content.text) > profile.text_limit > 0:
        found.append(
            InvalidParameter(
                f"{cpath}.text",
                f"is longer than {profile.text_limit} characters, the {channel} limit",
            )
        )

    found += _option_violations(channel, message, f"{path}message")
    return found


def _option_violations(channel: Channel, message: MessageBody, path: str) -> list[InvalidParameter]:
    found: list[InvalidParameter] = []
    for option, owner in (
        ("viber_service_msg", Channel.VIBER),
        ("messenger", Channel.MESSENGER),
        ("whatsapp", Channel.WHATSAPP),
    ):
        if getattr(message, option) is not None and channel != owner:
            found.append(InvalidParameter(f"{path}.{option}", f"only applies to {owner} messages"))
    messenger = message.messenger
    if channel == Channel.MESSENGER and messenger is not None:
        if messenger.category == "message_tag" and messenger.tag is None:
            found.append(
                InvalidParameter(
                    f"{path}.messenger.tag", "is required when category is message_tag"
                )
            )
        if messenger.tag is not None and messenger.category != "message_tag":
            found.append(
                InvalidParameter(f"{path}.messenger.tag", "is only used with category message_tag")
            )
    whatsapp = message.whatsapp
    if channel == Channel.WHATSAPP:
        if whatsapp is not None and whatsapp.policy == "fallback":
            found.append(
                InvalidParameter(
                    f"{path}.whatsapp.policy",
                    "'fallback' is no longer supported; use deterministic",
                )
            )
        if message.content.type == "template" and (whatsapp is None or whatsapp.locale is None):
            found.append(
                InvalidParameter(f"{path}.whatsapp.locale", "is required for template messages")
            )
    return found


def request_violations(request: MessageRequest) -> list[InvalidParameter]:
    """Every rule a single-message request breaks."""
    return message_violations(request.to, request.from_, request.message)


def step_violations(step: WorkflowStep, index: int, last: bool) -> list[InvalidParameter]:
    """Every rule one workflow step breaks, at JSON path ``workflow[index]``."""
    found = step_message_violations(step.to, step.from_, step.message, index)
    condition = step.failover.condition_status if step.failover is not None else None
    found += failover_violations(
        Channel(step.to.type), step.failover is not None, condition, index, last
    )
    return found


def step_message_violations(
    to: Address, from_: Address, message: MessageBody, index: int
) -> list[InvalidParameter]:
    """Every rule the message of step ``index`` breaks, including the Dispatch-only limits."""
    path = f"workflow[{index}]."
    found = message_violations(to, from_, message, path)
    viber = message.viber_service_msg
    if viber is not None and viber.ttl is not None and viber.ttl > DISPATCH_VIBER_TTL_MAX:
        found.append(
            InvalidParameter(
                f"{path}message.viber_service_msg.ttl",
                f"must be at most {DISPATCH_VIBER_TTL_MAX} in a workflow",
            )
        )
    return found


def failover_violations(
    channel: Channel | None,
    has_failover: bool,
    condition_status: str | None,
    index: int,
    last: bool,
) -> list[InvalidParameter]:
    """Every rule the ``failover`` of step ``index`` breaks: present on every step but the last,
    and ``read`` only on channels with read receipts (``channel`` None when it is unknown)."""
    path = f"workflow[{index}].failover"
    found: list[InvalidParameter] = []
    if last and has_failover:
        found.append(InvalidParameter(path, "the last step must not have failover"))
    if not last and not has_failover:
        found.append(InvalidParameter(path, "is required on every step but the last"))
    if condition_status == "read" and channel is not None and not PROFILES[channel].supports_read:
        found.append(
            InvalidParameter(
                f"{path}.condition_status", f"{channel} has no read receipts; use 'delivered'"
            )
        )
    return found


def workflow_violations(request: WorkflowRequest) -> list[InvalidParameter]:
    """Every rule a failover workflow breaks, across all its steps."""
    last = len(request.workflow) - 1
    found: list[InvalidParameter] = []
    for index, step in enumerate(request.workflow):
        found += step_violations(step, index, index == last)
    return found
