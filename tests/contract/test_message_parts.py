"""The Store contract for messages sent in several parts: the segment count, the parts and their
receipts, and kept receipts matched through a part."""

from __future__ import annotations

import asyncio

import pytest

from cascade.domain.failover import Changes, MessageChange
from cascade.domain.records import Receipt, WorkflowRecord
from cascade.domain.status import Status
from cascade.errors import StoreConflict
from cascade.store.base import Decide, Decision, ListQuery, Store, WorkflowKey
from tests.contract.conftest import Backend
from tests.contract.factories import T0, take_orphans, tenant, workflow


async def sms_message(store: Store) -> tuple[str, str]:
    """An accepted workflow's SMS step: (account id, message id)."""
    owner = await tenant(store)
    request = workflow(owner)
    await store.accept(request)
    return owner.id, request.steps[1].message_id


def submitted(message_id: str, segments: int, provider_id: str) -> Decide:
    """A decision that records a submit in ``segments`` parts under ``provider_id``."""

    def decide(loaded: WorkflowRecord) -> Decision:
        """Set the provider, its id and the segment count."""
        changes = Changes()
        changes.messages[message_id] = MessageChange(
            message_id, provider="smpp", provider_message_id=provider_id, segments=segments
        )
        return changes, []

    return decide


class TestSegments:
    """The number of parts a message went out as, stored with the message."""

    async def test_segments_are_stored_and_read_back_everywhere(self, store: Store) -> None:
        """A transition's segment count is read back by every way of reading a message."""
        account_id, message_id = await sms_message(store)
        fresh = await store.find_message(message_id)
        assert fresh is not None
        assert fresh.segments is None
        decide = submitted(message_id, 3, "p-1,p-2,p-3")
        await store.transition(WorkflowKey(message_id=message_id), decide)

        found = await store.find_message(message_id)
        assert found is not None
        assert found.segments == 3
        assert found == await store.get_message(account_id, message_id)
        (listed_workflow,) = await store.list_workflows(account_id, ListQuery())
        assert listed_workflow.messages[1] == found
        stored = await store.get_workflow(account_id, listed_workflow.id)
        assert stored is not None
        assert stored.messages[1] == found
        listed = await store.list_messages(account_id, ListQuery(channel="sms"))
        assert listed == [found]

    async def test_a_change_without_segments_keeps_them(self, store: Store) -> None:
        """A later change that names no segment count leaves the stored one alone."""
        _, message_id = await sms_message(store)
        decide = submitted(message_id, 2, "p-1,p-2")
        await store.transition(WorkflowKey(message_id=message_id), decide)

        def deliver(loaded: WorkflowRecord) -> Decision:
            """Change the status only."""
            changes = Changes()
            changes.messages[message_id] = MessageChange(message_id, status=Status.DELIVERED)
            return changes, []

        await store.transition(WorkflowKey(message_id=message_id), deliver)
        found = await store.find_message(message_id)
        assert found is not None
        assert (found.status, found.segments) == ("delivered", 2)


class TestParts:
    """Parts of a message and each part's latest receipt."""

    async def test_receipts_come_back_with_every_parts_status_in_order(self, store: Store) -> None:
        """Each part's receipt returns the message and all its parts' latest statuses, in the
        order the parts were given; a later receipt for a part replaces its status."""
        _, message_id = await sms_message(store)
        await store.add_message_parts("smpp", message_id, ["p-1", "p-2", "p-3"])
        second = Receipt("smpp", "p-2", Status.DELIVERED, T0 + 1)
        assert await store.record_part_receipt(second) == (
            message_id,
            [None, Status.DELIVERED, None],
        )
        third = Receipt("smpp", "p-3", Status.REJECTED, T0 + 2, code=1260, reason="UNDELIV")
        assert await store.record_part_receipt(third) == (
            message_id,
            [None, Status.DELIVERED, Status.REJECTED],
        )
        third_again = Receipt("smpp", "p-3", Status.DELIVERED, T0 + 3)
        first = Receipt("smpp", "p-1", Status.DELIVERED, T0 + 4)
        await store.record_part_receipt(third_again)
        assert await store.record_part_receipt(first) == (message_id, [Status.DELIVERED] * 3)

    async def test_an_unknown_part_matches_nothing(self, store: Store) -> None:
        """A receipt whose id is no part (or a part of another provider) gives None."""
        _, message_id = await sms_message(store)
        await store.add_message_parts("smpp", message_id, ["p-1", "p-2"])
        assert await store.record_part_receipt(Receipt("smpp", "p-9", Status.DELIVERED, T0)) is None
        other = Receipt("sandbox", "p-1", Status.DELIVERED, T0)
        assert await store.record_part_receipt(other) is None

    async def test_parts_are_not_messages(self, store: Store) -> None:
        """A message's own provider id is no part: its receipt is not a part's receipt."""
        _, message_id = await sms_message(store)
        decide = submitted(message_id, 1, "whole")
        await store.transition(WorkflowKey(message_id=message_id), decide)
        assert (
            await store.record_part_receipt(Receipt("smpp", "whole", Status.DELIVERED, T0)) is None
        )

    async def test_adding_known_parts_again_changes_nothing(self, store: Store) -> None:
        """Parts given again (even for another message) keep their first message, order and
        statuses; an empty list adds nothing."""
        _, message_id = await sms_message(store)
        _, other_id = await sms_message(store)
        await store.add_message_parts("smpp", message_id, ["p-1", "p-2"])
        await store.record_part_receipt(Receipt("smpp", "p-1", Status.DELIVERED, T0))
        await store.add_message_parts("smpp", message_id, ["p-1", "p-2"])
        await store.add_message_parts("smpp", other_id, ["p-2", "q-1"])
        await store.add_message_parts("smpp", message_id, [])
        assert await store.record_part_receipt(Receipt("smpp", "p-2", Status.DELIVERED, T0)) == (
            message_id,
            [Status.DELIVERED, Status.DELIVERED],
        )
        assert await store.record_part_receipt(Receipt("smpp", "q-1", Status.DELIVERED, T0)) == (
            other_id,
            [Status.DELIVERED],
        )

    async def test_parts_of_an_unknown_message_are_refused(self, store: Store) -> None:
        """Parts must belong to a stored message."""
        with pytest.raises(StoreConflict):
            await store.add_message_parts("smpp", "no-such-message", ["p-1"])
        assert await store.record_part_receipt(Receipt("smpp", "p-1", Status.DELIVERED, T0)) is None

    async def test_receipts_for_parts_at_once_see_each_other(self, store: Store) -> None:
        """Receipts for every part recorded at the same moment run in turn: one of them sees
        all the parts delivered (none is lost to another's snapshot)."""
        _, message_id = await sms_message(store)
        parts = [f"p-{n}" for n in range(6)]
        await store.add_message_parts("smpp", message_id, parts)
        results = await asyncio.gather(
            *(
                store.record_part_receipt(Receipt("smpp", part, Status.DELIVERED, T0))
                for part in parts
            )
        )
        combined = [statuses for _, statuses in filter(None, results)]
        assert len(combined) == len(parts)
        assert [Status.DELIVERED] * len(parts) in combined

    async def test_parts_outlive_the_store_instance(self, backend: Backend) -> None:
        """Parts and their statuses are read by another instance on the same database."""
        first = backend.make()
        await first.open()
        try:
            _, message_id = await sms_message(first)
            await first.add_message_parts("smpp", message_id, ["p-1", "p-2"])
            await first.record_part_receipt(Receipt("smpp", "p-1", Status.DELIVERED, T0))
        finally:
            await first.close()
        second = backend.make()
        await second.open()
        try:
            found = await second.record_part_receipt(Receipt("smpp", "p-2", Status.DELIVERED, T0))
        finally:
            await second.close()
        assert found == (message_id, [Status.DELIVERED, Status.DELIVERED])


class TestOrphanReceiptsOfParts:
    """Kept receipts whose id turns out to be a part of a message."""

    async def test_kept_receipts_of_parts_are_taken_once_the_parts_are_known(
        self, store: Store
    ) -> None:
        """Receipts kept for part ids are taken once those parts are added, oldest first, by
        part id or all at once; receipts of unknown ids stay."""
        _, message_id = await sms_message(store)
        early = Receipt("smpp", "p-1", Status.DELIVERED, T0 + 1)
        later = Receipt("smpp", "p-2", Status.REJECTED, T0 + 2, code=1260, reason="UNDELIV")
        again = Receipt("smpp", "p-1", Status.DELIVERED, T0 + 3)
        stranger = Receipt("smpp", "p-9", Status.DELIVERED, T0 + 4)
        for receipt in (early, later, again, stranger):
            await store.add_orphan_receipt(receipt, T0 + 5)
        assert await take_orphans(store) == []
        assert await take_orphans(store, "smpp", "p-1") == []

        await store.add_message_parts("smpp", message_id, ["p-1", "p-2"])
        assert await take_orphans(store, "smpp", "p-1") == [early, again]
        assert await take_orphans(store, "smpp", "p-1") == []
        assert await take_orphans(store) == [later]
        assert await take_orphans(store) == []

    async def test_parts_and_messages_are_matched_together(self, store: Store) -> None:
        """Taking every kept receipt returns those of messages and of parts, oldest first."""
        _, whole_id = await sms_message(store)
        _, split_id = await sms_message(store)
        decide = submitted(whole_id, 1, "whole")
        await store.transition(WorkflowKey(message_id=whole_id), decide)
        await store.add_message_parts("smpp", split_id, ["p-1", "p-2"])
        receipts = [
            Receipt("smpp", "p-2", Status.DELIVERED, T0 + 1),
            Receipt("smpp", "whole", Status.DELIVERED, T0 + 2),
            Receipt("sandbox", "p-1", Status.DELIVERED, T0 + 3),
            Receipt("smpp", "p-1", Status.DELIVERED, T0 + 4),
        ]
        for receipt in receipts:
            await store.add_orphan_receipt(receipt, T0 + 5)
        assert await take_orphans(store) == [receipts[0], receipts[1], receipts[3]]
        assert await take_orphans(store, "sandbox", "p-1") == []
