"""The Intake role on both back ends: the messages a Messenger watermark covers, and inbound
messages queued once per platform id."""

from __future__ import annotations

import uuid
from dataclasses import replace

from cascade.domain.failover import Changes, MessageChange
from cascade.domain.records import (
    Account,
    InboundKeys,
    InboundRecord,
    NewStep,
    NewWebhook,
    WebhookKind,
    WebhookState,
    WorkflowRecord,
)
from cascade.domain.status import Status
from cascade.store.base import Decision, Store, WorkflowKey
from tests.contract.factories import T0, account, tenant, workflow

PAGE = "104116062535871"
PSID = "6783241905021357"
READ_OR_NOT = (Status.SUBMITTED, Status.DELIVERED)


def messenger_step(*, page: str = PAGE, psid: str = PSID) -> NewStep:
    """A Messenger step from ``page`` to ``psid`` (JSON as a client may space it)."""
    return NewStep(
        message_id=str(uuid.uuid4()),
        channel="messenger",
        to=b'{"type": "messenger", "id": "%s"}' % psid.encode(),
        from_=b'{"type":"messenger","id":"%s"}' % page.encode(),
        body=b'{"content":{"type":"text","text":"hi"}}',
        client_ref=None,
        expiry_time=600,
        condition_status="read",
    )


async def sent(
    store: Store,
    owner: Account,
    *,
    send_at: float | None,
    status: Status = Status.SUBMITTED,
    provider: str = "messenger",
    page: str = PAGE,
    psid: str = PSID,
    accepted_at: float = T0,
) -> str:
    """A Messenger message of ``owner`` whose send began at ``send_at`` (None: no start
    recorded), stored with ``status`` and a fresh provider id; returns that id."""
    step = messenger_step(page=page, psid=psid)
    await store.accept(workflow(owner, step, at=accepted_at))
    if send_at is not None:
        await store.begin_send(step.message_id, send_at)
    provider_id = f"m_{uuid.uuid4().hex}"

    def decide(loaded: WorkflowRecord) -> Decision:
        """Record the send under ``provider_id`` with ``status``."""
        changes = Changes()
        changes.messages[step.message_id] = MessageChange(
            step.message_id, status=status, provider=provider, provider_message_id=provider_id
        )
        return changes, []

    await store.transition(WorkflowKey(message_id=step.message_id), decide)
    return provider_id


class TestMessengerThread:
    """``messenger_thread``: one conversation's messages up to a watermark."""

    async def test_finds_the_conversations_messages_sent_up_to_the_watermark(
        self, store: Store
    ) -> None:
        """Messages from the page to the user whose send began at or before the watermark are
        found, oldest first; one sent after it is not."""
        owner = await tenant(store)
        first = await sent(store, owner, send_at=T0 + 1)
        second = await sent(store, owner, send_at=T0 + 2)
        await sent(store, owner, send_at=T0 + 3)
        found = await store.messenger_thread(owner.id, PAGE, PSID, T0 + 2, READ_OR_NOT)
        assert found == [first, second]

    async def test_only_the_statuses_asked_for(self, store: Store) -> None:
        """A delivery watermark asks for submitted messages only: a delivered or read one is
        not found again, and a read watermark skips only read ones."""
        owner = await tenant(store)
        submitted = await sent(store, owner, send_at=T0, status=Status.SUBMITTED)
        delivered = await sent(store, owner, send_at=T0, status=Status.DELIVERED)
        await sent(store, owner, send_at=T0, status=Status.READ)
        await sent(store, owner, send_at=T0, status=Status.REJECTED)
        for_delivery = await store.messenger_thread(owner.id, PAGE, PSID, T0, [Status.SUBMITTED])
        assert for_delivery == [submitted]
        for_read = await store.messenger_thread(owner.id, PAGE, PSID, T0, READ_OR_NOT)
        assert sorted(for_read) == sorted([submitted, delivered])
        assert await store.messenger_thread(owner.id, PAGE, PSID, T0, []) == []

    async def test_other_conversations_accounts_and_providers_are_left_out(
        self, store: Store
    ) -> None:
        """Another user, another page, another account and a message of another provider (the
        sandbox) are not in this conversation."""
        owner = await tenant(store)
        other = account()
        await store.create_account(other)
        mine = await sent(store, owner, send_at=T0)
        await sent(store, owner, send_at=T0, psid="1111")
        await sent(store, owner, send_at=T0, page="2222")
        await sent(store, other, send_at=T0)
        await sent(store, owner, send_at=T0, provider="sandbox")
        assert await store.messenger_thread(owner.id, PAGE, PSID, T0, READ_OR_NOT) == [mine]

    async def test_a_send_without_a_recorded_start_counts_from_its_step_start(
        self, store: Store
    ) -> None:
        """Without a recorded send start, the step's start (when it was accepted) is the
        message's send time."""
        owner = await tenant(store)
        early = await sent(store, owner, send_at=None, accepted_at=T0)
        await sent(store, owner, send_at=None, accepted_at=T0 + 10)
        assert await store.messenger_thread(owner.id, PAGE, PSID, T0 + 5, READ_OR_NOT) == [early]

    async def test_at_most_the_limit_oldest_first(self, store: Store) -> None:
        """The limit keeps the oldest."""
        owner = await tenant(store)
        ids = [await sent(store, owner, send_at=T0 + n) for n in range(3)]
        found = await store.messenger_thread(owner.id, PAGE, PSID, T0 + 9, READ_OR_NOT, limit=2)
        assert found == ids[:2]


async def in_flight(
    store: Store, owner: Account, *, send_at: float, page: str = PAGE, psid: str = PSID
) -> str:
    """A Messenger message of ``owner`` whose send began at ``send_at`` and has no answer yet;
    returns Cascade's id of it."""
    step = messenger_step(page=page, psid=psid)
    await store.accept(workflow(owner, step, at=T0))
    await store.begin_send(step.message_id, send_at)
    return step.message_id


class TestMessengerUnsent:
    """``messenger_unsent``: the sends of a conversation a watermark covers before their answer."""

    async def test_finds_sends_begun_up_to_the_watermark_without_a_graph_id(
        self, store: Store
    ) -> None:
        """Sends begun at or before the watermark with no Graph id are found by Cascade's id,
        oldest first; one begun after it, one never begun and one answered are not."""
        owner = await tenant(store)
        first = await in_flight(store, owner, send_at=T0 + 1)
        second = await in_flight(store, owner, send_at=T0 + 2)
        await in_flight(store, owner, send_at=T0 + 3)
        await store.accept(workflow(owner, messenger_step(), at=T0))
        await sent(store, owner, send_at=T0)
        found = await store.messenger_unsent(owner.id, PAGE, PSID, T0 + 2, READ_OR_NOT)
        assert found == [first, second]

    async def test_other_conversations_and_accounts_are_left_out(self, store: Store) -> None:
        """Another user, another page and another account's sends are not this conversation's."""
        owner = await tenant(store)
        other = account()
        await store.create_account(other)
        mine = await in_flight(store, owner, send_at=T0)
        await in_flight(store, owner, send_at=T0, psid="1111")
        await in_flight(store, owner, send_at=T0, page="2222")
        await in_flight(store, other, send_at=T0)
        assert await store.messenger_unsent(owner.id, PAGE, PSID, T0, READ_OR_NOT) == [mine]

    async def test_a_status_already_reached_is_not_found_again(self, store: Store) -> None:
        """A send delivered by an earlier watermark is found for a read (statuses submitted
        and delivered) but not for another delivery (statuses submitted)."""
        owner = await tenant(store)
        message_id = await in_flight(store, owner, send_at=T0)

        def decide(loaded: WorkflowRecord) -> Decision:
            changes = Changes()
            changes.messages[message_id] = MessageChange(message_id, status=Status.DELIVERED)
            return changes, []

        await store.transition(WorkflowKey(message_id=message_id), decide)
        assert await store.messenger_unsent(owner.id, PAGE, PSID, T0, READ_OR_NOT) == [message_id]
        assert await store.messenger_unsent(owner.id, PAGE, PSID, T0, [Status.SUBMITTED]) == []


def inbound_hook(owner: Account, text: str = "hello") -> NewWebhook:
    """An inbound webhook of ``owner``."""
    return NewWebhook(
        kind=WebhookKind.INBOUND,
        account_id=owner.id,
        application_id=None,
        workflow_id=None,
        message_id=None,
        url=None,
        body=b'{"message":{"content":{"type":"text","text":"%s"}}}' % text.encode(),
    )


class TestInboundOnce:
    """``add_inbound_webhook``: one webhook per platform message id."""

    async def test_queued_to_the_accounts_inbound_url_with_its_job(self, store: Store) -> None:
        """A new ref queues the webhook, pending to the account's inbound URL, with the job
        that delivers it."""
        owner = await tenant(store)
        assert await store.add_inbound_webhook(inbound_hook(owner), "whatsapp:wamid.1", T0)
        (hook,) = await store.list_webhooks(account_id=owner.id)
        assert (hook.kind, hook.state, hook.url) == (
            WebhookKind.INBOUND,
            WebhookState.PENDING,
            owner.inbound_url,
        )
        assert hook.body == b'{"message":{"content":{"type":"text","text":"hello"}}}'
        assert [job.kind for job in await store.pending_jobs(str(hook.id))] == ["webhook"]

    async def test_a_repeat_of_the_ref_queues_nothing(self, store: Store) -> None:
        """The same ref again returns False and adds no webhook and no job, even with another
        body; another ref is queued."""
        owner = await tenant(store)
        assert await store.add_inbound_webhook(inbound_hook(owner), "viber:42", T0)
        assert not await store.add_inbound_webhook(inbound_hook(owner, "again"), "viber:42", T0)
        hooks = await store.list_webhooks(account_id=owner.id)
        assert len(hooks) == 1
        assert len(await store.pending_jobs(str(hooks[0].id))) == 1
        assert await store.add_inbound_webhook(inbound_hook(owner), "viber:43", T0)
        assert len(await store.list_webhooks(account_id=owner.id)) == 2

    async def test_without_an_inbound_url_it_is_kept_with_no_job(self, store: Store) -> None:
        """An account without an inbound URL keeps the webhook as no_url, without a job, and
        a repeat is still recognised."""
        owner = replace(account(), inbound_url=None)
        await store.create_account(owner)
        assert await store.add_inbound_webhook(inbound_hook(owner), "messenger:m_1", T0)
        (hook,) = await store.list_webhooks(account_id=owner.id)
        assert hook.state == WebhookState.NO_URL
        assert await store.pending_jobs(str(hook.id)) == []
        assert not await store.add_inbound_webhook(inbound_hook(owner), "messenger:m_1", T0)

    async def test_the_record_goes_with_its_webhook(self, store: Store) -> None:
        """Once retention deletes the webhook (settled: here, with nowhere to go), the ref is
        free again: the record lives as long as its webhook."""
        owner = replace(account(), inbound_url=None)
        await store.create_account(owner)
        assert await store.add_inbound_webhook(inbound_hook(owner), "whatsapp:wamid.9", T0)
        assert await store.purge_webhooks(T0 + 1, 10) == 1
        assert await store.add_inbound_webhook(inbound_hook(owner), "whatsapp:wamid.9", T0 + 2)


class TestInboundByUuid:
    """``find_inbound_message``: an inbound message named by the uuid its webhook carried."""

    async def test_found_by_its_uuid_with_its_channel_address_and_platform_id(
        self, store: Store
    ) -> None:
        """The keys given with the webhook read back, with the platform's id and the time
        the webhook was queued."""
        owner = await tenant(store)
        keys = InboundKeys(str(uuid.uuid4()), "whatsapp", "15550783881")
        assert await store.add_inbound_webhook(inbound_hook(owner), "whatsapp:wamid.7", T0, keys)
        found = await store.find_inbound_message(owner.id, keys.message_uuid)
        assert found == InboundRecord(
            account_id=owner.id,
            message_uuid=keys.message_uuid,
            channel="whatsapp",
            to="15550783881",
            ref="whatsapp:wamid.7",
            received_at=T0,
        )

    async def test_another_accounts_or_an_unknown_uuid_finds_nothing(self, store: Store) -> None:
        """The uuid is looked up within the asking account only."""
        owner, other = await tenant(store), await tenant(store)
        keys = InboundKeys(str(uuid.uuid4()), "whatsapp", "15550783881")
        await store.add_inbound_webhook(inbound_hook(owner), "whatsapp:wamid.8", T0, keys)
        assert await store.find_inbound_message(other.id, keys.message_uuid) is None
        assert await store.find_inbound_message(owner.id, str(uuid.uuid4())) is None

    async def test_a_repeat_keeps_the_first_uuid(self, store: Store) -> None:
        """A platform's repeat of a message queues nothing: the uuid the first webhook carried
        names it, the repeat's names nothing."""
        owner = await tenant(store)
        first = InboundKeys(str(uuid.uuid4()), "viber_service_msg", "acme-bot")
        again = InboundKeys(str(uuid.uuid4()), "viber_service_msg", "acme-bot")
        assert await store.add_inbound_webhook(inbound_hook(owner), "viber:44", T0, first)
        assert not await store.add_inbound_webhook(inbound_hook(owner), "viber:44", T0, again)
        assert await store.find_inbound_message(owner.id, first.message_uuid) is not None
        assert await store.find_inbound_message(owner.id, again.message_uuid) is None

    async def test_a_message_without_a_platform_id_is_queued_each_time(self, store: Store) -> None:
        """An SMS (no ref) is queued every time it is handed over, each under its own uuid,
        with no platform id."""
        owner = await tenant(store)
        keys = [InboundKeys(str(uuid.uuid4()), "sms", "447700900100") for _ in range(2)]
        for each in keys:
            assert await store.add_inbound_webhook(inbound_hook(owner), None, T0, each)
        assert len(await store.list_webhooks(account_id=owner.id)) == 2
        found = await store.find_inbound_message(owner.id, keys[1].message_uuid)
        assert found is not None
        assert (found.channel, found.to, found.ref) == ("sms", "447700900100", None)

    async def test_the_keys_go_with_their_webhook(self, store: Store) -> None:
        """Once retention deletes the webhook, its uuid names nothing."""
        owner = replace(account(), inbound_url=None)
        await store.create_account(owner)
        keys = InboundKeys(str(uuid.uuid4()), "whatsapp", "15550783881")
        await store.add_inbound_webhook(inbound_hook(owner), "whatsapp:wamid.10", T0, keys)
        assert await store.purge_webhooks(T0 + 1, 10) == 1
        assert await store.find_inbound_message(owner.id, keys.message_uuid) is None
