"""The Store contract for provider ids handed out again: an id an older message holds (an SMSC
that restarted counts from its first id again) is re-pointed to the new message, never refused."""

from __future__ import annotations

from cascade.domain.failover import Changes, MessageChange
from cascade.domain.records import Receipt, WorkflowRecord
from cascade.domain.status import Status
from cascade.store.base import ClaimedIds, Decide, Decision, Store, WorkflowKey
from tests.contract.factories import T0, take_orphans, tenant, workflow


async def sms_message(store: Store) -> str:
    """An accepted workflow's SMS step: its message id."""
    owner = await tenant(store)
    request = workflow(owner)
    await store.accept(request)
    return request.steps[1].message_id


def submitted(message_id: str, provider: str, provider_id: str) -> Decide:
    """A decision that records a submit under ``provider_id``."""

    def decide(loaded: WorkflowRecord) -> Decision:
        """Set the provider and its id."""
        changes = Changes()
        changes.messages[message_id] = MessageChange(
            message_id, provider=provider, provider_message_id=provider_id
        )
        return changes, []

    return decide


async def holder(store: Store, provider: str, provider_id: str) -> str | None:
    """The message a receipt for ``provider_id`` would be applied to."""
    found: list[str] = []

    def decide(loaded: WorkflowRecord) -> Decision:
        """Note the message holding the id; change nothing."""
        found.extend(
            m.id
            for m in loaded.messages
            if (m.provider, m.provider_message_id) == (provider, provider_id)
        )
        return Changes(), []

    key = WorkflowKey(provider=provider, provider_message_id=provider_id)
    await store.transition(key, decide)
    return found[0] if found else None


class TestClaimProviderIds:
    """``claim_provider_ids`` before a send is recorded."""

    async def test_a_reused_id_moves_to_the_new_message(self, store: Store) -> None:
        """An id an older message holds is taken from it; recording it on the new message then
        succeeds and receipts for it find the new message."""
        older = await sms_message(store)
        newer = await sms_message(store)
        await store.transition(WorkflowKey(message_id=older), submitted(older, "smpp:a", "1000"))

        claimed = await store.claim_provider_ids("smpp:a", newer, ["1000"], T0)
        await store.transition(WorkflowKey(message_id=newer), submitted(newer, "smpp:a", "1000"))

        assert claimed == ClaimedIds(taken_from=(older,))
        assert await holder(store, "smpp:a", "1000") == newer
        old = await store.find_message(older)
        assert old is not None
        assert (old.provider, old.provider_message_id) == ("smpp:a", None)

    async def test_ids_of_another_provider_are_left_alone(self, store: Store) -> None:
        """The same id under another provider (another SMSC) is no collision: nothing moves."""
        other_smsc = await sms_message(store)
        newer = await sms_message(store)
        decide = submitted(other_smsc, "smpp:b", "1000")
        await store.transition(WorkflowKey(message_id=other_smsc), decide)

        assert await store.claim_provider_ids("smpp:a", newer, ["1000"], T0) == ClaimedIds()
        await store.transition(WorkflowKey(message_id=newer), submitted(newer, "smpp:a", "1000"))

        assert await holder(store, "smpp:b", "1000") == other_smsc
        assert await holder(store, "smpp:a", "1000") == newer

    async def test_a_reused_part_id_moves_to_the_new_message(self, store: Store) -> None:
        """A part id an older message holds is taken from it, so the new message's parts can
        be recorded and their receipts find the new message."""
        older = await sms_message(store)
        newer = await sms_message(store)
        await store.add_message_parts("smpp:a", older, ["1000", "1001"])

        claimed = await store.claim_provider_ids("smpp:a", newer, ["1001", "1002"], T0)
        await store.add_message_parts("smpp:a", newer, ["1001", "1002"])

        assert claimed.taken_from == (older,)
        receipt = Receipt("smpp:a", "1001", Status.DELIVERED, T0 + 1)
        assert await store.record_part_receipt(receipt) == (newer, [Status.DELIVERED, None])
        older_part = Receipt("smpp:a", "1000", Status.DELIVERED, T0 + 1)
        assert await store.record_part_receipt(older_part) == (older, [Status.DELIVERED])

    async def test_receipts_kept_from_before_the_send_are_dropped(self, store: Store) -> None:
        """A kept receipt for the id from before the send began belongs to an older message and
        is dropped; one kept since (a receipt that beat the submit's answer) stays for it."""
        newer = await sms_message(store)
        stale = Receipt("smpp:a", "1000", Status.REJECTED, T0, code=1260, reason="old")
        early = Receipt("smpp:a", "1000", Status.DELIVERED, T0 + 11)
        await store.add_orphan_receipt(stale, T0)
        await store.add_orphan_receipt(early, T0 + 11)

        claimed = await store.claim_provider_ids("smpp:a", newer, ["1000"], T0 + 10)
        await store.transition(WorkflowKey(message_id=newer), submitted(newer, "smpp:a", "1000"))

        assert claimed == ClaimedIds(stale_receipts=1)
        assert await take_orphans(store, "smpp:a", "1000") == [early]

    async def test_ids_the_message_holds_itself_change_nothing(self, store: Store) -> None:
        """Claiming ids the message already holds (a part id equal to its own id) is a no-op."""
        message = await sms_message(store)
        decide = submitted(message, "smpp:a", "1000")
        await store.transition(WorkflowKey(message_id=message), decide)
        await store.add_message_parts("smpp:a", message, ["1000", "1001"])

        claimed = await store.claim_provider_ids("smpp:a", message, ["1000", "1001"], T0)

        assert claimed == ClaimedIds()
        assert await holder(store, "smpp:a", "1000") == message
