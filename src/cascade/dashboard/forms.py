"""Reading the dashboard's forms: URL-encoded bodies only, bounded, and checked to come from a
page of this site (the session's token, and the browser's Origin when it sends one)."""

from __future__ import annotations

import urllib.parse

from starlette.exceptions import HTTPException
from starlette.requests import Request

#: the largest form body taken (a pasted public key is about 450 bytes)
MAX_FORM_BYTES = 64 * 1024
#: the most fields a form may have
MAX_FIELDS = 50


class FormRefused(Exception):
    """A form that did not come from one of this site's pages (no token, a wrong token, or
    another site's Origin): refused with 403, nothing changed."""


async def read_form(request: Request) -> dict[str, str]:
    """The fields of a URL-encoded form (the first value of each name); 415 for another
    content type, 413 for a body over MAX_FORM_BYTES, 400 for too many fields."""
    media_type = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if media_type != "application/x-www-form-urlencoded":
        raise HTTPException(415)
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_FORM_BYTES:
            raise HTTPException(413)
    try:
        pairs = urllib.parse.parse_qsl(
            body.decode("utf-8"), keep_blank_values=True, max_num_fields=MAX_FIELDS
        )
    except (UnicodeDecodeError, ValueError) as exc:
        raise HTTPException(400, "malformed form") from exc
    fields: dict[str, str] = {}
    for name, value in pairs:
        fields.setdefault(name, value)
    return fields


def check_origin(request: Request) -> None:
    """FormRefused when the browser says the form was posted from another site (its Origin
    names another host than the one it posted to). Browsers send Origin on every POST; a
    request without one is judged by its token alone."""
    origin = request.headers.get("origin")
    if origin is None:
        return
    host = request.headers.get("host", "")
    if origin == "null" or urllib.parse.urlsplit(origin).netloc != host:
        raise FormRefused("the form was posted from another site")
