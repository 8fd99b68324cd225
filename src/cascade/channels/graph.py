"""What Messenger and WhatsApp share: the Graph API's error answers and what each means here.

Both the Messenger Send API and the WhatsApp Cloud API answer a refused request with an HTTP
4xx or 5xx and a body ``{"error": {"message", "type", "code", "error_subcode", "error_data",
"is_transient", "fbtrace_id"}}`` (WhatsApp puts its details in ``error_data.details``).
:func:`graph_error` reads that body (or makes do without one) and :func:`raise_graph_error`
raises the seam's error for it, from :data:`GRAPH_ERRORS` (the table of docs/design.md §7):

- ``ChannelRejected`` with a Nexmo code for policy, recipient, template and parameter errors,
  so the workflow fails over at once; the reason keeps the platform's code and words;
- ``ChannelRejected`` 1370 for a refused token (code 190), logged once per link
  (:class:`~cascade.channels.http.RevokedTokens`);
- ``ChannelUnavailable`` 1000 "Throttled" for rate limits, with ``retry_after`` from a
  ``Retry-After`` header or the documented pace (WhatsApp's pair rate: one message per 6 s);
- ``ChannelUnavailable`` 1331 "Provider error" for 5xx answers and errors Graph marks
  ``is_transient`` or documents as temporary, retried by the engine inside the step's window;
- anything else ``ChannelRejected`` 1331 with the platform's words, as SMPP does with an
  unknown ``command_status``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, NoReturn

from cascade.channels.http import Reply, RevokedTokens, clip_reason
from cascade.domain.records import ChannelLink
from cascade.errors import ChannelRejected, ChannelUnavailable

#: Nexmo asynchronous error codes used here (the documented 1000..1382 list)
CODE_THROTTLED = 1000
CODE_MISSING_PARAMS = 1010
CODE_INVALID_PARAMS = 1020
CODE_INVALID_TEMPLATE = 1022
CODE_INVALID_MESSAGE = 1040
CODE_ACCOUNT_BARRED = 1060
CODE_QUOTA_EXCEEDED = 1070
CODE_FACILITY_NOT_ALLOWED = 1140
CODE_NOT_WHITELISTED = 1160
CODE_ANTI_SPAM = 1210
CODE_OPTED_OUT = 1240
CODE_DESTINATION_UNREACHABLE = 1260
CODE_NOT_IN_NETWORK = 1300
CODE_PROVIDER_ERROR = 1331
CODE_OUTSIDE_WINDOW = 1340
CODE_TOKEN_EXPIRED = 1370
CODE_INVALID_RESOURCE = 1380

#: Graph's code for a token that is expired, revoked or invalid
GRAPH_TOKEN_ERROR = 190

Kind = Literal["rejected", "throttled", "transient", "token"]


@dataclass(frozen=True, slots=True)
class Meaning:
    """What one Graph error means: how the send ends, the Nexmo code, and a pace to keep."""

    kind: Kind
    code: int
    retry_after: float | None = None


def _rejected(code: int) -> Meaning:
    return Meaning("rejected", code)


THROTTLED = Meaning("throttled", CODE_THROTTLED)
TRANSIENT = Meaning("transient", CODE_PROVIDER_ERROR)

#: Graph ``(code, error_subcode)`` -> meaning; ``(code, None)`` covers every subcode of a code
#: not listed with its own. The reasons are in docs/design.md §7.
GRAPH_ERRORS: dict[tuple[int, int | None], Meaning] = {
    # the token: expired, revoked, the password changed, the app removed
    (GRAPH_TOKEN_ERROR, None): Meaning("token", CODE_TOKEN_EXPIRED),
    # outside the messaging window: Messenger's 24 hours (10 / 2018278), WhatsApp's (131047)
    (10, 2018278): _rejected(CODE_OUTSIDE_WINDOW),
    (131047, None): _rejected(CODE_OUTSIDE_WINDOW),
    # the recipient: not a user (WhatsApp 131026, Messenger 100 / 2018001), not reachable by
    # this page (551), stopped marketing messages (131050), not a test number (131030)
    (131026, None): _rejected(CODE_NOT_IN_NETWORK),
    (100, 2018001): _rejected(CODE_NOT_IN_NETWORK),
    (551, None): _rejected(CODE_DESTINATION_UNREACHABLE),
    (131050, None): _rejected(CODE_OPTED_OUT),
    (131030, None): _rejected(CODE_NOT_WHITELISTED),
    # rate limits: app (4), user (17), page (32), per hour (613), Messenger (80006),
    # WhatsApp throughput (130429) and pair rate (131056, one message per 6 s to a user)
    (4, None): THROTTLED,
    (17, None): THROTTLED,
    (32, None): THROTTLED,
    (613, None): THROTTLED,
    (80006, None): THROTTLED,
    (130429, None): THROTTLED,
    (131056, None): Meaning("throttled", CODE_THROTTLED, retry_after=6.0),
    # the platform's own trouble, documented as temporary
    (1, None): TRANSIENT,
    (2, None): TRANSIENT,
    (131000, None): TRANSIENT,
    (131016, None): TRANSIENT,
    # spam and per-user marketing limits: not lifted by retrying within a window
    (131048, None): _rejected(CODE_ANTI_SPAM),
    (131049, None): _rejected(CODE_ANTI_SPAM),
    # the account: restricted for policy (368), locked (131031), payment (131042)
    (368, None): _rejected(CODE_ACCOUNT_BARRED),
    (131031, None): _rejected(CODE_ACCOUNT_BARRED),
    (131042, None): _rejected(CODE_QUOTA_EXCEEDED),
    # permissions: the app may not do this (3, 10, 200)
    (3, None): _rejected(CODE_FACILITY_NOT_ALLOWED),
    (10, None): _rejected(CODE_FACILITY_NOT_ALLOWED),
    (200, None): _rejected(CODE_FACILITY_NOT_ALLOWED),
    # the request: parameters, message type, media, templates
    (100, None): _rejected(CODE_INVALID_PARAMS),
    (131008, None): _rejected(CODE_MISSING_PARAMS),
    (131009, None): _rejected(CODE_INVALID_PARAMS),
    (131021, None): _rejected(CODE_INVALID_PARAMS),
    (131051, None): _rejected(CODE_INVALID_MESSAGE),
    (131052, None): _rejected(CODE_INVALID_RESOURCE),
    (131053, None): _rejected(CODE_INVALID_RESOURCE),
    **{(code, None): _rejected(CODE_INVALID_TEMPLATE) for code in range(132000, 132100)},
}


@dataclass(frozen=True, slots=True)
class GraphError:
    """A Graph API error answer, as read from its body (fields None when it had none)."""

    status: int
    code: int | None
    subcode: int | None
    message: str
    details: str | None = None
    is_transient: bool = False
    fbtrace_id: str | None = None

    def describe(self, platform: str) -> str:
        """The platform's own words for the error, e.g. "WhatsApp error 131047: Re-engagement
        message (more than 24 hours have passed ...)"."""
        code = "" if self.code is None else f" {self.code}"
        if self.subcode is not None:
            code += f"/{self.subcode}"
        text = f"{platform} error{code}: {self.message}" if code else f"{platform}: {self.message}"
        if self.details and self.details not in self.message:
            text += f" ({self.details})"
        return clip_reason(text)


def graph_error(reply: Reply) -> GraphError:
    """The error a Graph answer carries; an answer without a Graph error body (a proxy's 502,
    an HTML page) is described by its status alone."""
    data = reply.json()
    error = data.get("error") if isinstance(data, dict) else None
    if not isinstance(error, dict):
        return GraphError(reply.status, None, None, f"HTTP {reply.status} without a Graph error")
    details: Any = None
    error_data = error.get("error_data")
    if isinstance(error_data, dict):
        details = error_data.get("details")
    elif isinstance(error_data, str):
        details = error_data
    return GraphError(
        status=reply.status,
        code=_int(error.get("code")),
        subcode=_int(error.get("error_subcode")),
        message=str(error.get("message") or error.get("error_user_msg") or "no message"),
        details=str(details) if details else None,
        is_transient=error.get("is_transient") is True,
        fbtrace_id=str(error["fbtrace_id"]) if error.get("fbtrace_id") else None,
    )


def _int(value: object) -> int | None:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str) and value.isdigit():
        return int(value)
    return None


def meaning_of(error: GraphError) -> Meaning:
    """What ``error`` means here (see the module doc): by its code and subcode, else by its
    HTTP status and ``is_transient``."""
    if error.code is not None:
        found = GRAPH_ERRORS.get((error.code, error.subcode)) or GRAPH_ERRORS.get(
            (error.code, None)
        )
        if found is not None:
            return found
    if error.status == 429:
        return THROTTLED
    if error.status >= 500 or error.is_transient:
        return TRANSIENT
    return _rejected(CODE_PROVIDER_ERROR)


def raise_graph_error(
    reply: Reply,
    *,
    platform: str,
    link: ChannelLink,
    credential: str,
    revoked: RevokedTokens,
) -> NoReturn:
    """Raise the seam's error for a Graph error answer (see the module doc). ``credential``
    names the link's token (reported once through ``revoked`` when Graph refuses it)."""
    error = graph_error(reply)
    meaning = meaning_of(error)
    reason = error.describe(platform)
    if meaning.kind == "token":
        revoked.report(link, credential, reason)
        raise ChannelRejected(
            meaning.code,
            clip_reason(
                f"the access token of {platform} link {link.id} was refused ({reason}); "
                "link it again with a new token"
            ),
        )
    if meaning.kind == "rejected":
        raise ChannelRejected(meaning.code, reason)
    wait = reply.retry_after() or meaning.retry_after
    raise ChannelUnavailable(reason, retry_after=wait, code=meaning.code)
