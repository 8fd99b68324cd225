"""The dashboard's store: sessions, failed sign-ins counted across nodes, and the message
search by recipient and client_ref, the same on both back ends."""

from __future__ import annotations

import asyncio
import dataclasses

from cascade.store.base import DashboardSession, ListQuery, SmppBind, Store
from tests.contract.factories import T0, messenger_step, sms_step, tenant, workflow


def session(
    account_id: str, token: str = "a" * 64, *, expires_at: float = T0 + 3600
) -> DashboardSession:
    """A session of ``account_id`` whose cookie digest is ``token``."""
    return DashboardSession(token, account_id, "csrf-" + token[:8], T0, expires_at)


class TestSessions:
    """Sessions are found by their cookie's digest until they expire, and end when deleted."""

    async def test_a_session_reads_back_until_it_expires(self, store: Store) -> None:
        """A stored session is found before its expiry and not at or after it."""
        owner = await tenant(store)
        await store.create_dashboard_session(session(owner.id), T0)
        assert await store.get_dashboard_session("a" * 64, T0 + 10) == session(owner.id)
        assert await store.get_dashboard_session("a" * 64, T0 + 3600) is None
        assert await store.get_dashboard_session("b" * 64, T0 + 10) is None

    async def test_a_deleted_session_is_gone(self, store: Store) -> None:
        """Signing out deletes the session; another session of the account stays."""
        owner = await tenant(store)
        await store.create_dashboard_session(session(owner.id, "a" * 64), T0)
        await store.create_dashboard_session(session(owner.id, "b" * 64), T0)
        await store.delete_dashboard_session("a" * 64)
        assert await store.get_dashboard_session("a" * 64, T0) is None
        assert await store.get_dashboard_session("b" * 64, T0) is not None

    async def test_creating_a_session_deletes_expired_ones(self, store: Store) -> None:
        """Expired sessions are deleted when a new one is stored, so they do not pile up."""
        owner = await tenant(store)
        await store.create_dashboard_session(session(owner.id, "a" * 64, expires_at=T0 + 5), T0)
        await store.create_dashboard_session(session(owner.id, "b" * 64), T0 + 10)
        # read as of a time before the first one's expiry: it is gone, not merely expired
        assert await store.get_dashboard_session("a" * 64, T0) is None
        assert await store.get_dashboard_session("b" * 64, T0) is not None


class TestSignInFailures:
    """Failed sign-ins are counted per account in a row, atomically, and cleared."""

    async def test_failures_count_up_and_start_again_after_a_quiet_spell(
        self, store: Store
    ) -> None:
        """Each failure adds one; one after ``since`` passed the last starts again at 1."""
        owner = await tenant(store)
        assert await store.sign_in_failures(owner.id) is None
        first = await store.note_sign_in_failure(owner.id, T0, T0 - 900)
        second = await store.note_sign_in_failure(owner.id, T0 + 1, T0 + 1 - 900)
        assert (first.failures, second.failures) == (1, 2)
        assert second.last_at == T0 + 1
        later = await store.note_sign_in_failure(owner.id, T0 + 1000, T0 + 100)
        assert (later.failures, later.last_at) == (1, T0 + 1000)
        assert await store.sign_in_failures(owner.id) == later

    async def test_failures_at_once_are_each_counted(self, store: Store) -> None:
        """Failures noted concurrently (as from several nodes) all count."""
        owner = await tenant(store)
        await asyncio.gather(
            *(store.note_sign_in_failure(owner.id, T0, T0 - 900) for _ in range(6))
        )
        counted = await store.sign_in_failures(owner.id)
        assert counted is not None
        assert counted.failures == 6

    async def test_clearing_forgets_one_accounts_failures(self, store: Store) -> None:
        """A sign-in clears the account's count; another account's stays."""
        owner, other = await tenant(store), await tenant(store)
        await store.note_sign_in_failure(owner.id, T0, T0 - 900)
        await store.note_sign_in_failure(other.id, T0, T0 - 900)
        await store.clear_sign_in_failures(owner.id)
        assert await store.sign_in_failures(owner.id) is None
        assert await store.sign_in_failures(other.id) is not None


class TestMessageSearch:
    """Messages are found by recipient (number or id) and client_ref, within the account."""

    async def test_recipient_matches_a_number_or_an_id(self, store: Store) -> None:
        """A number finds the SMS step, an id the Messenger step; others find nothing."""
        owner = await tenant(store)
        await store.accept(workflow(owner, messenger_step(), sms_step()))
        by_number = await store.list_messages(owner.id, ListQuery(recipient="447700900000"))
        by_id = await store.list_messages(owner.id, ListQuery(recipient="1234560003"))
        assert [m.channel for m in by_number] == ["sms"]
        assert [m.channel for m in by_id] == ["messenger"]
        assert await store.list_messages(owner.id, ListQuery(recipient="999")) == []

    async def test_client_ref_and_other_filters_combine(self, store: Store) -> None:
        """client_ref narrows to its messages, together with the channel filter."""
        owner = await tenant(store)
        tagged = dataclasses.replace(sms_step(), client_ref="order-7")
        await store.accept(workflow(owner, messenger_step(), sms_step()))
        await store.accept(workflow(owner, tagged, at=T0 + 1))
        found = await store.list_messages(owner.id, ListQuery(client_ref="order-7"))
        assert [m.id for m in found] == [tagged.message_id]
        none = await store.list_messages(
            owner.id, ListQuery(client_ref="order-7", channel="messenger")
        )
        assert none == []

    async def test_search_stays_in_the_account(self, store: Store) -> None:
        """Another account's messages to the same recipient are not found."""
        owner, other = await tenant(store), await tenant(store)
        await store.accept(workflow(other, messenger_step(), sms_step()))
        assert await store.list_messages(owner.id, ListQuery(recipient="447700900000")) == []


class TestSmppBinds:
    """The engine's SMPP bind states, published for processes that hold no connection."""

    async def test_a_bind_state_reads_back_and_a_change_replaces_it(self, store: Store) -> None:
        """A published state reads back as written; a later one of the same connection
        replaces it, and connections are listed by name."""
        assert await store.smpp_binds() == []
        await store.put_smpp_bind(SmppBind("smsc-b", True, None, T0))
        await store.put_smpp_bind(SmppBind("smsc-a", True, None, T0))
        down = SmppBind("smsc-a", False, "connection lost: reset by peer", T0 + 5)
        await store.put_smpp_bind(down)
        assert await store.smpp_binds() == [down, SmppBind("smsc-b", True, None, T0)]
        back = SmppBind("smsc-a", True, None, T0 + 9)
        await store.put_smpp_bind(back)
        assert (await store.smpp_binds())[0] == back


class TestSmppNodes:
    """The engine nodes holding each SMPP connection, which share its throughput."""

    async def test_live_nodes_are_counted_per_connection(self, store: Store) -> None:
        """Each renewal counts the nodes whose rows have not run out, itself included, and
        only those of its own connection; renewing again does not count a node twice."""
        assert await store.renew_smpp_node("smsc", "node-a", T0 + 30, T0) == 1
        assert await store.renew_smpp_node("smsc", "node-b", T0 + 30, T0) == 2
        assert await store.renew_smpp_node("other", "node-a", T0 + 30, T0) == 1
        assert await store.renew_smpp_node("smsc", "node-a", T0 + 40, T0 + 10) == 2

    async def test_nodes_joining_at_once_count_each_other(self, store: Store) -> None:
        """Nodes that register at the same moment count one another: one sees itself alone,
        the next two, the last three, never two alone (each then took the whole throughput)."""
        for attempt in range(10):
            connection = f"smsc-{attempt}"
            counts = await asyncio.gather(
                *(store.renew_smpp_node(connection, f"node-{n}", T0 + 30, T0) for n in range(3))
            )
            assert sorted(counts) == [1, 2, 3]

    async def test_a_node_that_stops_renewing_runs_out(self, store: Store) -> None:
        """A node's row counts until its expiry and not from then on, so a killed node's
        share goes back to the others after its lease."""
        await store.renew_smpp_node("smsc", "killed", T0 + 30, T0)
        assert await store.renew_smpp_node("smsc", "alive", T0 + 59, T0 + 29) == 2
        assert await store.renew_smpp_node("smsc", "alive", T0 + 60, T0 + 30) == 1
        # the row that ran out is gone, not merely ignored: it comes back only if renewed
        assert await store.renew_smpp_node("smsc", "alive", T0 + 61, T0 + 29) == 1

    async def test_a_dropped_node_is_no_longer_counted(self, store: Store) -> None:
        """A node that unbinds or stops drops its row at once; dropping twice is harmless."""
        await store.renew_smpp_node("smsc", "leaving", T0 + 30, T0)
        assert await store.renew_smpp_node("smsc", "staying", T0 + 30, T0) == 2
        await store.drop_smpp_node("smsc", "leaving")
        await store.drop_smpp_node("smsc", "leaving")
        assert await store.renew_smpp_node("smsc", "staying", T0 + 31, T0 + 1) == 1
