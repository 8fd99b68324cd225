"""Records Cascade keeps: tenants, accepted workflows and what happened to them.

These are the values that cross the store seam in both directions. They are plain frozen
dataclasses; times are POSIX seconds (float) from the injected clock.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum

from cascade.domain.status import Status


class JobKindName(StrEnum):
    """What a job does; stored in the job row's ``kind``, and each names the engine's
    :class:`~cascade.engine.jobs.JobKind` that runs such jobs."""

    SEND = "send"  # hand a message to its provider (ref: the message id)
    STEP_TIMEOUT = "step_timeout"  # a step's window closes (ref: the message id)
    REPORT_HORIZON = "report_horizon"  # the final report goes regardless (ref: the workflow id)
    WEBHOOK = "webhook"  # deliver one customer webhook (ref: the webhook's id)


class WebhookKind(StrEnum):
    """What a customer webhook reports; stored in the webhook row's ``kind``."""

    STATUS = "message-status"  # a message's new status
    FINAL_REPORT = "final-report"  # how a dispatch workflow ended
    INBOUND = "inbound"  # a message a customer's customer sent in


class WebhookState(StrEnum):
    """Where a customer webhook's delivery stands; stored in the webhook row's ``state``."""

    PENDING = "pending"  # to be delivered: its job row holds the next attempt
    DELIVERED = "delivered"  # the receiver answered 200..205
    DEAD = "dead"  # a dead letter: refused, or retried until the deadline; replayable
    NO_URL = "no_url"  # its account and application name no URL to send it to


class Surface(StrEnum):
    """Which API a workflow came in through; it decides the names used in responses/webhooks."""

    DISPATCH = "dispatch"  # POST /v0.1/dispatch -> dispatch_uuid
    WORKFLOWS = "workflows"  # POST /beta/workflows -> workflow_uuid
    MESSAGES = "messages"  # POST /v0.1/messages, /beta/messages -> message_uuid
    #: POST /v1/messages -> message_uuid, and workflow_id when it has failover messages
    MESSAGES_V1 = "messages_v1"


#: the surfaces whose workflows end without a final report (the Messages APIs have none)
NO_FINAL_REPORT = frozenset({Surface.MESSAGES, Surface.MESSAGES_V1})


class WebhookVersion(StrEnum):
    """The shape of a message's status webhooks (and of an account's inbound ones): an
    application's setting, which a v1 message may override for itself."""

    V0_1 = "v0.1"  # Messages v0.1 / Dispatch: to and from objects, error {code, reason}
    V1 = "v1"  # Messages v1: flat to and from, channel, error {type, title, detail, instance}


class WorkflowState(StrEnum):
    """Where a workflow stands as a whole."""

    RUNNING = "running"
    COMPLETED = "completed"
    ERROR = "error"


class StepState(StrEnum):
    """Where one step (one message) of a workflow stands in the failover sequence."""

    WAITING = "waiting"  # an earlier step may still succeed
    ACTIVE = "active"  # started: sent or being sent, its window open
    EXPIRED = "expired"  # its window closed without success; later receipts still count
    FAILED = "failed"  # failed at once (rejected, undeliverable, permanent error)
    SUCCEEDED = "succeeded"  # reached its condition_status (or, on the last step, delivered)
    CANCELLED = "cancelled"  # never started, because an earlier step succeeded


@dataclass(frozen=True, slots=True)
class Account:
    """A tenant: API credentials, the webhook signing secret and default webhook URLs.

    A sandbox account's messages whose ``from`` names no linked channel go to the sandbox; a
    live account's are rejected instead (never sent with another account's credentials).
    """

    id: str
    api_key: str
    api_secret_sha256: str
    signature_secret: str
    status_url: str | None
    inbound_url: str | None
    created_at: float
    sandbox: bool = True


@dataclass(frozen=True, slots=True)
class Application:
    """An account's application: the RSA public key that verifies its JWTs, and webhook URLs."""

    id: str
    account_id: str
    name: str
    public_key_pem: str
    status_url: str | None
    inbound_url: str | None
    created_at: float
    #: the shape of the status webhooks of the messages it sends (a WebhookVersion value)
    webhook_version: str = WebhookVersion.V0_1.value


class LinkedChannel(StrEnum):
    """A channel whose provider account (a page, a number, a bot) is linked per Cascade account."""

    MESSENGER = "messenger"
    WHATSAPP = "whatsapp"
    VIBER = "viber_service_msg"


#: the credentials each linked channel needs, by key; ``verify_token`` (the webhook handshake's
#: token, Messenger and WhatsApp) and ``sender_avatar`` (Viber) are optional
LINK_CREDENTIALS: dict[LinkedChannel, tuple[str, ...]] = {
    LinkedChannel.MESSENGER: ("page_access_token", "app_secret"),
    LinkedChannel.WHATSAPP: (
        "phone_number_id",
        "business_account_id",
        "access_token",
        "app_secret",
    ),
    LinkedChannel.VIBER: ("auth_token", "sender_name"),
}


@dataclass(frozen=True, slots=True)
class ChannelLink:
    """A provider account linked to a Cascade account: what ``from`` names, and its secrets.

    ``address`` is what a message's ``from`` names and what the platform's callbacks name: the
    Messenger page id (``from.id``), the WhatsApp business number in E.164 digits
    (``from.number``) or the Viber bot's id (``from.id``). One address is linked once across
    the whole installation, so a callback names exactly one account. ``credentials`` are the
    opened secrets (stored sealed; see ``cascade.sealing``).
    """

    id: str
    account_id: str
    channel: LinkedChannel
    address: str
    credentials: dict[str, str]
    created_at: float


@dataclass(frozen=True, slots=True)
class NewStep:
    """One message of an accepted request, ready to store."""

    message_id: str
    channel: str
    to: bytes  # the ``to`` object, JSON
    from_: bytes  # the ``from`` object, JSON
    body: bytes  # the ``message`` object, JSON
    client_ref: str | None
    expiry_time: int | None
    condition_status: str | None
    #: where its status webhooks go instead of its application's or account's status URL
    webhook_url: str | None = None
    #: the shape of its status webhooks (a WebhookVersion value); None: v0.1
    webhook_version: str | None = None


@dataclass(frozen=True, slots=True)
class StoredResponse:
    """The response an idempotent request got the first time."""

    status_code: int
    body: bytes


@dataclass(frozen=True, slots=True)
class IdempotencyClaim:
    """An ``Idempotency-Key`` sent with a request, and the digest of the request it names."""

    key: str
    request_sha256: str
    response: StoredResponse


@dataclass(frozen=True, slots=True)
class NewJob:
    """A job to schedule: what to do (kind), to which row (ref), and when."""

    kind: str  # a JobKindName for the jobs Cascade schedules
    ref: str
    run_at: float


@dataclass(frozen=True, slots=True)
class NewWorkflow:
    """An accepted request: a workflow of one or more steps, written in one transaction."""

    id: str
    account_id: str
    application_id: str | None
    surface: Surface
    steps: tuple[NewStep, ...]
    accepted_at: float
    #: the jobs that start the first step (its send, and its window or the report horizon)
    jobs: tuple[NewJob, ...] = ()
    idempotency: IdempotencyClaim | None = None


@dataclass(frozen=True, slots=True)
class Accepted:
    """What storing a request produced: fresh, or the earlier response to the same key."""

    created: bool
    response: StoredResponse | None = None


@dataclass(frozen=True, slots=True)
class Event:
    """One entry of a workflow's timeline."""

    at: float
    kind: str
    message_id: str | None = None
    status: str | None = None
    code: int | None = None
    reason: str | None = None
    source: str | None = None
    #: when the send is tried again (a ``retry``: a transient send error)
    next_at: float | None = None


@dataclass(frozen=True, slots=True)
class MessageRecord:
    """A stored message (one step of a workflow) as it stands now."""

    id: str
    workflow_id: str
    step: int
    account_id: str
    channel: str
    to: bytes
    from_: bytes
    body: bytes
    client_ref: str | None
    expiry_time: int | None
    condition_status: str | None
    state: StepState
    status: str | None
    error_code: int | None
    error_reason: str | None
    provider: str | None
    provider_message_id: str | None
    price: str | None
    currency: str | None
    started_at: float | None
    created_at: float
    updated_at: float
    #: the last transient send error (kept while the send is retried)
    last_error_code: int | None = None
    last_error_reason: str | None = None
    #: how many parts (SMS segments) the provider sent it as
    segments: int | None = None
    #: where its status webhooks go instead of its application's or account's status URL
    webhook_url: str | None = None
    #: the shape of its status webhooks (a WebhookVersion value); None: v0.1
    webhook_version: str | None = None


@dataclass(frozen=True, slots=True)
class WorkflowRecord:
    """A stored workflow with its steps and timeline."""

    id: str
    account_id: str
    application_id: str | None
    surface: Surface
    state: WorkflowState
    created_at: float
    updated_at: float
    finished_at: float | None
    messages: tuple[MessageRecord, ...] = ()
    events: tuple[Event, ...] = field(default=())
    #: whether its application or account names a status URL, as a transition's read found
    #: them: without one, only a message with a URL of its own is reported (no body is
    #: written for nobody). True where it was not read (the store then decides)
    status_url_set: bool = True


@dataclass(frozen=True, slots=True)
class Receipt:
    """A status a provider reported for a message it accepted earlier."""

    provider: str
    provider_message_id: str
    status: Status
    at: float
    code: int | None = None  # Nexmo error code when the status is a failure
    reason: str | None = None
    #: Cascade's id of the message, for a receipt that covers a send whose answer is not
    #: recorded yet (a Messenger watermark can beat the Graph API's answer): the provider's
    #: id is then unknown and ``provider_message_id`` is empty
    message_id: str | None = None
    #: the id of the row it was kept in while its message was unknown (an orphan receipt),
    #: for the store to drop once it has been applied; None for a receipt as it arrives
    kept_id: int | None = field(default=None, compare=False)


@dataclass(frozen=True, slots=True)
class NewWebhook:
    """A customer webhook to deliver: its exact body and where it goes (None: nowhere set)."""

    kind: WebhookKind
    account_id: str
    application_id: str | None
    workflow_id: str | None
    message_id: str | None
    url: str | None
    body: bytes


@dataclass(frozen=True, slots=True)
class InboundKeys:
    """What is kept of an inbound message beside its webhook, so that a later request can
    name it by the uuid the customer received: that uuid, its channel (v0.1 name) and the
    address it was sent to (the linked number, page or bot; an SMS long number)."""

    message_uuid: str
    channel: str
    to: str


@dataclass(frozen=True, slots=True)
class InboundRecord:
    """An inbound message found by its uuid (``PATCH /v1/messages/{uuid}``): its account,
    :class:`InboundKeys`, the platform's id of it (``ref``, ``"<channel>:<id>"``; None for
    SMS) and when its webhook was queued."""

    account_id: str
    message_uuid: str
    channel: str
    to: str
    ref: str | None
    received_at: float


@dataclass(frozen=True, slots=True)
class SendAttempt:
    """What the store knows about earlier tries to hand a message to its provider."""

    attempts: int
    started_at: float | None
    last_error: tuple[int, str] | None


@dataclass(frozen=True, slots=True)
class SandboxMessage:
    """A message the sandbox provider received, and the receipts it still owes."""

    message_id: str
    provider_message_id: str
    channel: str
    recipient: str
    text: str | None
    attempts: int
    received_at: float | None
    receipts_due: tuple[tuple[float, str], ...]  # (at, status), oldest first


@dataclass(frozen=True, slots=True)
class WebhookRecord:
    """A queued customer webhook and how its delivery went so far."""

    id: int
    account_id: str
    application_id: str | None
    workflow_id: str | None
    message_id: str | None
    kind: WebhookKind
    url: str | None
    body: bytes
    state: WebhookState
    attempts: int
    created_at: float
    first_attempt_at: float | None
    last_attempt_at: float | None
    next_attempt_at: float | None
    last_status: int | None
    last_error: str | None
    delivered_at: float | None


@dataclass(frozen=True, slots=True)
class WebhookAttempt:
    """One try to deliver a webhook: when, what came back, how long it took."""

    webhook_id: int
    at: float
    status_code: int | None
    error: str | None
    duration: float
