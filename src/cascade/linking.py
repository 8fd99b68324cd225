"""Linking a channel (a Messenger page, a WhatsApp number, a Viber bot) to an account, once for
every front end: ``cascade channel add`` and the dashboard's Channels page both check the
fields and build the link here, so a rule (what a number may be, how long a Viber sender's
name) lives in one place. Storing the link (sealed with ``CASCADE_CHANNEL_KEY``) is the
``ChannelLinks`` store role's.
"""

from __future__ import annotations

import secrets
import uuid
from collections.abc import Mapping
from dataclasses import dataclass

from cascade.domain.records import ChannelLink, LinkedChannel
from cascade.sealing import KEY_SETTING

#: why nothing can be linked on a server without a key (both front ends say it)
NO_KEY = (
    f"linking a channel needs {KEY_SETTING}, the key that seals its credentials: "
    "`cascade channel key` makes one"
)
#: the longest sender name Viber shows
VIBER_SENDER_NAME_CHARS = 28
#: the most digits an E.164 number has
E164_DIGITS = 15
#: where each platform posts its callbacks, under CASCADE_PUBLIC_URL
CALLBACK_PATHS = {
    LinkedChannel.MESSENGER: "/channels/messenger",
    LinkedChannel.WHATSAPP: "/channels/whatsapp",
    LinkedChannel.VIBER: "/channels/viber",
}
#: each linked channel by the short name ``cascade channel add`` and the dashboard's forms use
BY_NAME = {
    "messenger": LinkedChannel.MESSENGER,
    "whatsapp": LinkedChannel.WHATSAPP,
    "viber": LinkedChannel.VIBER,
}


@dataclass(frozen=True, slots=True)
class LinkField:
    """A field a link of some channel takes: its name (the CLI option is ``--`` and the name
    with dashes), what a person reads, whether it is a secret (asked for without echo, in a
    password field) and whether it may be left out."""

    name: str
    label: str
    help: str
    secret: bool = False
    optional: bool = False


_VERIFY_TOKEN = LinkField(
    "verify_token",
    "Verify token",
    "The token the platform's webhook handshake sends back (hub.verify_token); "
    "left empty, a random one is made and shown once",
    secret=True,
    optional=True,
)
_APP_SECRET = LinkField(
    "app_secret", "App secret", "The Meta app's secret, which signs callbacks", secret=True
)

#: each channel's fields, in the order they are checked; the first is the link's address
FIELDS: dict[LinkedChannel, tuple[LinkField, ...]] = {
    LinkedChannel.MESSENGER: (
        LinkField("page_id", "Page id", "The Facebook page's id: what from.id names"),
        LinkField(
            "page_access_token", "Page access token", "The page access token (Send API)", True
        ),
        _APP_SECRET,
        _VERIFY_TOKEN,
    ),
    LinkedChannel.WHATSAPP: (
        LinkField(
            "number",
            "Number",
            "The business number in E.164 (447700900000 or +447700900000): what from.number names",
        ),
        LinkField("phone_number_id", "Phone number id", "The Cloud API's id of that number"),
        LinkField("business_account_id", "Business account id", "The WhatsApp Business Account id"),
        LinkField("access_token", "Access token", "A system user's access token", True),
        _APP_SECRET,
        _VERIFY_TOKEN,
    ),
    LinkedChannel.VIBER: (
        LinkField("bot_id", "Bot id", "The Viber bot's id: what from.id names"),
        LinkField(
            "sender_name",
            "Sender name",
            f"The name messages show (up to {VIBER_SENDER_NAME_CHARS} characters)",
        ),
        LinkField(
            "sender_avatar", "Sender avatar", "The sender's avatar (an https URL)", optional=True
        ),
        LinkField(
            "auth_token", "Auth token", "The bot's auth token (X-Viber-Auth-Token)", secret=True
        ),
    ),
}


class LinkFieldError(ValueError):
    """A field of a link that is refused: which field, and what is wrong with it (a phrase
    that follows the field's name as the front end calls it)."""

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"{field} {problem}")
        self.field = field
        self.problem = problem


def check_fields(
    channel: LinkedChannel, given: Mapping[str, str | None], *, complete: bool = True
) -> dict[str, str]:
    """The fields of a ``channel`` link, checked and as stored (stripped; a number as its
    digits); a value of None (or none) is not given. LinkFieldError names the first field
    refused: a given one that is empty or malformed, or with ``complete`` a field that is
    neither optional nor given (without ``complete`` only the given ones are checked, so that
    the CLI can refuse an address before it asks for secrets)."""
    checked: dict[str, str] = {}
    for field in FIELDS[channel]:
        value = given.get(field.name)
        if value is None:
            if complete and not field.optional:
                raise LinkFieldError(field.name, "is empty")
            continue
        value = value.strip()
        if not value:
            raise LinkFieldError(field.name, "is empty")
        checked[field.name] = _checked(field.name, value)
    return checked


def _checked(name: str, value: str) -> str:
    """One non-empty field's value as stored, or a LinkFieldError saying why not."""
    if name == "number":
        digits = value.removeprefix("+")
        if not digits.isdecimal() or not digits.isascii() or len(digits) > E164_DIGITS:
            raise LinkFieldError(name, f"must be an E.164 number: up to {E164_DIGITS} digits")
        return digits
    if name == "sender_name" and len(value) > VIBER_SENDER_NAME_CHARS:
        raise LinkFieldError(
            name, f"is {len(value)} characters; Viber shows up to {VIBER_SENDER_NAME_CHARS}"
        )
    if name == "sender_avatar" and not value.startswith(("http://", "https://")):
        raise LinkFieldError(name, f"{value!r} is not an http(s) URL")
    return value


@dataclass(frozen=True, slots=True)
class NewLink:
    """A link to store, and the values made for it that are shown only once (a generated
    verify token: the platform's webhook setup asks for it)."""

    link: ChannelLink
    shown_once: dict[str, str]


def new_channel_link(
    channel: LinkedChannel, account_id: str, given: Mapping[str, str | None], *, now: float
) -> NewLink:
    """A new link of the account (not yet stored) from the fields given (check_fields'
    rules; LinkFieldError when one is refused); a verify token left out is made here."""
    credentials = check_fields(channel, given)
    address = credentials.pop(FIELDS[channel][0].name)
    shown_once: dict[str, str] = {}
    if any(field is _VERIFY_TOKEN for field in FIELDS[channel]) and "verify_token" not in (
        credentials
    ):
        credentials["verify_token"] = shown_once["verify_token"] = secrets.token_urlsafe(24)
    link = ChannelLink(
        id=str(uuid.uuid4()),
        account_id=account_id,
        channel=channel,
        address=address,
        credentials=credentials,
        created_at=now,
    )
    return NewLink(link, shown_once)
