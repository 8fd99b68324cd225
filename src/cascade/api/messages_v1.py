"""``POST /v1/messages``: Vonage Messages v1, with ``failover``, on the same accept path as v0.1.

A v1 request is authenticated, decoded strictly (:mod:`cascade.domain.message_v1`), turned
into the v0.1 representation in one place (``message_v1.internal``) and stored as a workflow
of one step per message: the message, then each failover message in order. A step after the
first starts when the one before is ``rejected`` or ``undeliverable`` (v1 has no timer:
docs/design.md §1.11). The 202 carries ``message_uuid`` (the first message's) and, when the
request has failover messages, ``workflow_id`` (readable at ``GET /v0.1/dispatch/{id}``).

Errors are v1 problem documents. Validation answers 422 (v1 never answers 400 to a body),
with one ``type`` and ``title`` for the request, chosen by its most basic problem (the channel,
then the message type, the recipient, the sender, the channel options, the client reference,
then any other parameter), and ``invalid_parameters`` naming every bad field. The v1
specification gives two numberings for these types (its examples and its ``x-errors`` list
disagree); Cascade uses the ``x-errors`` codes 1400..1450, which no asynchronous error code
reuses, and 1020 "Invalid params" for the rest.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

from starlette.requests import Request
from starlette.responses import Response

from cascade.api.auth import Principal
from cascade.api.messages import AcceptEndpoint, new_id, webhook_version
from cascade.api.problems import PROBLEM_BASE, problem
from cascade.api.validation import RequestDecoder
from cascade.domain.message import encode
from cascade.domain.message_v1 import MessageRequestV1, MessageV1, internal
from cascade.domain.records import NewStep
from cascade.domain.rules_v1 import request_violations
from cascade.errors import InvalidParameter, InvalidRequest, RequestRejected, Unauthorized
from cascade.reach import AddressRule

_decoder = RequestDecoder(MessageRequestV1, request_violations)

#: where the v1 error types point
OLYMPUS = f"{PROBLEM_BASE}/messages-olympus"


@dataclass(frozen=True, slots=True)
class ProblemKind:
    """One kind of v1 validation problem: its error code and title."""

    code: int
    title: str
    detail: str

    @property
    def type(self) -> str:
        """The problem's ``type`` URL."""
        return f"{OLYMPUS}#{self.code}"


UNSUPPORTED_CHANNEL = ProblemKind(
    1400, "Unsupported channel", "The channel specified in the request is not supported."
)
INVALID_CHANNEL_PARAMS = ProblemKind(
    1410, "Invalid channel parameters", "The value of one or more parameters is invalid."
)
INVALID_SENDER = ProblemKind(
    1420, "Invalid sender", "The `from` parameter is invalid for the given channel."
)
INVALID_RECIPIENT = ProblemKind(
    1430, "Invalid recipient", "The `to` parameter is invalid for the given channel."
)
INVALID_MESSAGE_TYPE = ProblemKind(
    1440,
    "Invalid message type",
    "The message type specified in the request is not supported for the given channel.",
)
INVALID_CLIENT_REF = ProblemKind(
    1450,
    "Invalid client reference",
    "The client reference can be a string of up to 100 characters.",
)
INVALID_PARAMS = ProblemKind(
    1020, "Invalid params", "The value of one or more parameters is invalid."
)

#: the kind of a problem with a top-level field, most basic first (the first found names the
#: whole request's problem)
_KINDS_BY_FIELD = {
    "channel": UNSUPPORTED_CHANNEL,
    "message_type": INVALID_MESSAGE_TYPE,
    "to": INVALID_RECIPIENT,
    "from": INVALID_SENDER,
    "messenger": INVALID_CHANNEL_PARAMS,
    "viber_service": INVALID_CHANNEL_PARAMS,
    "whatsapp": INVALID_CHANNEL_PARAMS,
    "sms": INVALID_CHANNEL_PARAMS,
    "client_ref": INVALID_CLIENT_REF,
}
_PRIORITY = [*dict.fromkeys(_KINDS_BY_FIELD.values()), INVALID_PARAMS]

INVALID_JSON_TYPE = f"{PROBLEM_BASE}#invalid-json"
INVALID_JSON_TITLE = "The request body did not contain valid JSON"
UNAUTHORIZED_TITLE = "You did not provide correct credentials."
UNAUTHORIZED_DETAIL = (
    "Check that you're using the correct credentials, and that your account has this feature "
    "enabled"
)


def problem_kind(name: str) -> ProblemKind:
    """The kind of problem a bad field is, by its JSON path (a failover message's fields
    count as the same fields)."""
    root = name
    if root.startswith("failover[") and "]." in root:
        root = root.split("].", 1)[1]
    root = root.split(".", 1)[0].split("[", 1)[0]
    return _KINDS_BY_FIELD.get(root, INVALID_PARAMS)


def request_kind(parameters: list[InvalidParameter]) -> ProblemKind:
    """The kind that names a whole request's problem: the most basic among its fields'."""
    kinds = {problem_kind(parameter.name) for parameter in parameters}
    return next((kind for kind in _PRIORITY if kind in kinds), INVALID_PARAMS)


def v1_problem(exc: RequestRejected) -> Response:
    """A rejected v1 request as v1 answers it: 422 for a body that does not validate or is not
    JSON, 401 in v1's words; other refusals (409) keep their status in the same shape."""
    if isinstance(exc, Unauthorized):
        return problem(
            401,
            UNAUTHORIZED_TITLE,
            UNAUTHORIZED_DETAIL,
            problem_type=f"{PROBLEM_BASE}#unauthorized",
            headers={"WWW-Authenticate": "Bearer, Basic"},
        )
    if isinstance(exc, InvalidRequest):
        if exc.problem_type.endswith("#invalid-json"):
            return problem(
                422,
                INVALID_JSON_TITLE,
                exc.message,
                problem_type=INVALID_JSON_TYPE,
                invalid_parameters=exc.invalid_parameters,
            )
        kind = request_kind(exc.invalid_parameters)
        # the decoder's detail is its standard sentence, plus a count of the problems it did
        # not list when there were too many: v1's sentence takes the standard one's place
        unlisted = exc.message.removeprefix(InvalidRequest().message)
        detail = kind.detail + unlisted if unlisted != exc.message else kind.detail
        return problem(
            422,
            kind.title,
            detail,
            problem_type=kind.type,
            invalid_parameters=exc.invalid_parameters,
        )
    return problem(
        exc.status_code,
        exc.title,
        exc.message,
        problem_type=exc.problem_type,
        invalid_parameters=exc.invalid_parameters,
    )


def _unreachable_webhook_urls(
    messages: list[MessageV1], reach: AddressRule
) -> list[InvalidParameter]:
    """The ``webhook_url``s whose host ``reach`` refuses by itself (an address, localhost),
    named as the request names them; a name is checked when a webhook goes out."""
    found = []
    for index, message in enumerate(messages):
        refusal = reach.url_refusal(message.webhook_url) if message.webhook_url else None
        if refusal is not None:
            path = f"failover[{index - 1}]." if index else ""
            found.append(InvalidParameter(f"{path}webhook_url", f"is refused: {refusal}"))
    return found


class MessagesV1Endpoint(AcceptEndpoint):
    """``POST /v1/messages``: the v0.1 accept path with the v1 body, answer and errors."""

    @functools.cached_property
    def _decoder(self) -> RequestDecoder[MessageRequestV1]:
        """The v1 body's decoder: its rules and, where webhooks may not go everywhere, the
        webhook URL rule, so that one 422 names every problem."""
        reach = self._context.webhook_reach
        if not reach.restricts:
            return _decoder

        def rules(request: MessageRequestV1) -> list[InvalidParameter]:
            found = request_violations(request)
            return found + _unreachable_webhook_urls(request.messages, reach)

        return RequestDecoder(MessageRequestV1, rules)

    async def handle(self, request: Request) -> Response:
        """Accept one v1 request; a refusal is a v1 problem document."""
        try:
            return await super().handle(request)
        except RequestRejected as exc:
            return v1_problem(exc)

    def steps(self, body: bytes, principal: Principal) -> list[NewStep]:
        """The message and its failover messages as workflow steps, in order; none has a
        window, so each fails over only when rejected or undeliverable."""
        request = self._decoder.decode(body)
        steps = []
        for message in request.messages:
            step = internal(message)
            steps.append(
                NewStep(
                    message_id=new_id(),
                    channel=step.channel.value,
                    to=encode(step.to),
                    from_=encode(step.from_),
                    body=encode(step.message),
                    client_ref=step.client_ref,
                    expiry_time=None,
                    condition_status=None,
                    webhook_url=step.webhook_url,
                    webhook_version=webhook_version(principal, step.webhook_version),
                )
            )
        return steps

    def response_body(self, steps: list[NewStep], workflow_id: str) -> bytes:
        """``{"message_uuid"}``, with ``workflow_id`` when there are failover messages."""
        if len(steps) == 1:
            return b'{"message_uuid":"%s"}' % steps[0].message_id.encode()
        return b'{"message_uuid":"%s","workflow_id":"%s"}' % (
            steps[0].message_id.encode(),
            workflow_id.encode(),
        )
