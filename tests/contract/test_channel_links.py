"""The ChannelLinks role and sandbox accounts: both back ends link, find and remove channels,
seal their credentials at rest, and refuse what does not open."""

from __future__ import annotations

import dataclasses
import sqlite3
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg  # type: ignore[import-untyped]
import pytest

from cascade.domain.records import ChannelLink, LinkedChannel
from cascade.errors import ConfigError, SealError, StoreConflict
from cascade.sealing import Sealer
from cascade.store.base import Store
from cascade.store.migrations import migrations
from cascade.store.postgres import PostgresStore
from cascade.store.sqlite import SqliteStore
from cascade.store.sqlstore import SqlStore
from tests.contract.conftest import Backend
from tests.contract.factories import T0, account

KEY = Sealer.generate_key()
OTHER_KEY = Sealer.generate_key()
#: a token that must never be found in the database as it is
TOKEN = "EAAGm0PX4ZCpsBAPageAccessTokenThatMustNotLeak"


def link(
    account_id: str,
    *,
    channel: LinkedChannel = LinkedChannel.MESSENGER,
    address: str | None = None,
    created_at: float = T0,
) -> ChannelLink:
    """A new link of ``account_id`` with a unique address and Messenger-shaped credentials."""
    return ChannelLink(
        id=str(uuid.uuid4()),
        account_id=account_id,
        channel=channel,
        address=address or str(uuid.uuid4().int)[:15],
        credentials={"page_access_token": TOKEN, "app_secret": "app-secret-1"},
        created_at=created_at,
    )


async def _opened(backend: Backend, keys: str | None) -> Store:
    """A store of the backend's database with these keys (none: no sealer), opened."""
    store = backend.make()
    assert isinstance(store, SqlStore)
    store.sealer = None if keys is None else Sealer(keys)
    await store.open()
    return store


@pytest.fixture
async def sealed(backend: Backend) -> AsyncIterator[Store]:
    """An opened store of each back end that seals with KEY."""
    store = await _opened(backend, KEY)
    yield store
    await store.close()


async def _raw_credentials(store: Store) -> list[bytes]:
    """The credentials column of every link, as the database holds it."""
    if isinstance(store, SqliteStore):
        conn = sqlite3.connect(store.path)
        try:
            return [row[0] for row in conn.execute("SELECT credentials FROM channel_links")]
        finally:
            conn.close()
    assert isinstance(store, PostgresStore)
    pg = await asyncpg.connect(store.url)
    try:
        return [bytes(row[0]) for row in await pg.fetch("SELECT credentials FROM channel_links")]
    finally:
        await pg.close()


class TestLinks:
    """Adding, listing, finding and removing links."""

    async def test_a_link_reads_back_listed_and_found_with_its_credentials(
        self, sealed: Store
    ) -> None:
        """An added link comes back equal from the account's list, the whole list and a find
        by channel and address."""
        owner = account()
        await sealed.create_account(owner)
        added = link(owner.id)
        await sealed.add_channel_link(added)
        assert await sealed.channel_links(owner.id) == [added]
        assert await sealed.channel_links() == [added]
        assert await sealed.find_channel_link(LinkedChannel.MESSENGER, added.address) == added

    async def test_links_list_oldest_first_and_per_account(self, sealed: Store) -> None:
        """Each account lists its own links, oldest first; None lists every account's."""
        first, second = account(), account()
        for owner in (first, second):
            await sealed.create_account(owner)
        later = link(first.id, channel=LinkedChannel.WHATSAPP, created_at=T0 + 2)
        earlier = link(first.id, channel=LinkedChannel.VIBER, created_at=T0 + 1)
        theirs = link(second.id, created_at=T0)
        for added in (later, earlier, theirs):
            await sealed.add_channel_link(added)
        assert await sealed.channel_links(first.id) == [earlier, later]
        assert await sealed.channel_links(second.id) == [theirs]
        assert await sealed.channel_links() == [theirs, earlier, later]
        assert await sealed.channel_links("no-such-account") == []

    async def test_an_unlinked_address_is_not_found(self, sealed: Store) -> None:
        """A find names the channel too: the same address on another channel is not it."""
        owner = account()
        await sealed.create_account(owner)
        added = link(owner.id)
        await sealed.add_channel_link(added)
        assert await sealed.find_channel_link(LinkedChannel.VIBER, added.address) is None
        assert await sealed.find_channel_link(LinkedChannel.MESSENGER, "999") is None

    async def test_an_address_is_linked_once_whichever_account_asks(self, sealed: Store) -> None:
        """A second link of a linked address is a conflict naming it, for the same account
        and for another one, and the first link stays as it was."""
        first, second = account(), account()
        for owner in (first, second):
            await sealed.create_account(owner)
        added = link(first.id, channel=LinkedChannel.WHATSAPP, address="447700900001")
        await sealed.add_channel_link(added)
        for owner in (first, second):
            again = link(owner.id, channel=LinkedChannel.WHATSAPP, address="447700900001")
            with pytest.raises(StoreConflict, match="whatsapp 447700900001 is linked already"):
                await sealed.add_channel_link(again)
        assert await sealed.channel_links() == [added]

    async def test_the_same_address_may_be_linked_on_two_channels(self, sealed: Store) -> None:
        """Uniqueness is per channel: a page id and a bot id may be the same text."""
        owner = account()
        await sealed.create_account(owner)
        page = link(owner.id, address="12345")
        bot = link(owner.id, channel=LinkedChannel.VIBER, address="12345", created_at=T0 + 1)
        await sealed.add_channel_link(page)
        await sealed.add_channel_link(bot)
        assert await sealed.channel_links(owner.id) == [page, bot]

    async def test_remove_takes_only_the_accounts_own_link(self, sealed: Store) -> None:
        """Another account cannot remove a link (False, and it stays); its owner can (True),
        once."""
        first, second = account(), account()
        for owner in (first, second):
            await sealed.create_account(owner)
        added = link(first.id)
        await sealed.add_channel_link(added)
        assert await sealed.remove_channel_link(second.id, added.id) is False
        assert await sealed.channel_links() == [added]
        assert await sealed.remove_channel_link(first.id, added.id) is True
        assert await sealed.channel_links() == []
        assert await sealed.find_channel_link(LinkedChannel.MESSENGER, added.address) is None
        assert await sealed.remove_channel_link(first.id, added.id) is False

    async def test_a_removed_address_can_be_linked_again(self, sealed: Store) -> None:
        """After its link is removed, an address is free for any account."""
        first, second = account(), account()
        for owner in (first, second):
            await sealed.create_account(owner)
        added = link(first.id, address="42")
        await sealed.add_channel_link(added)
        await sealed.remove_channel_link(first.id, added.id)
        relinked = link(second.id, address="42")
        await sealed.add_channel_link(relinked)
        assert await sealed.find_channel_link(LinkedChannel.MESSENGER, "42") == relinked


class TestSealing:
    """Credentials at rest, and keys."""

    async def test_credentials_are_encrypted_at_rest(self, sealed: Store) -> None:
        """The stored column holds neither the token nor the app secret as text."""
        owner = account()
        await sealed.create_account(owner)
        await sealed.add_channel_link(link(owner.id))
        (raw,) = await _raw_credentials(sealed)
        assert TOKEN.encode() not in raw
        assert b"app-secret-1" not in raw
        assert raw.startswith(b"gAAAAA")  # a Fernet token (version byte 0x80), not JSON

    async def test_a_wrong_key_fails_clearly(self, sealed: Store, backend: Backend) -> None:
        """A store whose key did not seal a link refuses to read it, with a SealError that
        names the link and the setting; nothing is read as if it were not there."""
        owner = account()
        await sealed.create_account(owner)
        added = link(owner.id)
        await sealed.add_channel_link(added)
        other = await _opened(backend, OTHER_KEY)
        try:
            with pytest.raises(SealError, match="CASCADE_CHANNEL_KEY") as raised:
                await other.channel_links()
            assert added.id in str(raised.value)
            with pytest.raises(SealError):
                await other.find_channel_link(LinkedChannel.MESSENGER, added.address)
        finally:
            await other.close()

    async def test_an_old_key_second_in_the_list_still_opens(
        self, sealed: Store, backend: Backend
    ) -> None:
        """After a rotation (new key first, old key second) old links open, and new links are
        sealed with the new key alone."""
        owner = account()
        await sealed.create_account(owner)
        old = link(owner.id)
        await sealed.add_channel_link(old)
        rotated = await _opened(backend, f"{OTHER_KEY}, {KEY}")
        try:
            assert await rotated.channel_links() == [old]
            new = link(owner.id, created_at=T0 + 1)
            await rotated.add_channel_link(new)
            assert await rotated.channel_links() == [old, new]
        finally:
            await rotated.close()
        only_new = await _opened(backend, OTHER_KEY)
        try:
            assert await only_new.find_channel_link(LinkedChannel.MESSENGER, new.address) == new
        finally:
            await only_new.close()

    async def test_credentials_copied_to_another_link_do_not_open(self, sealed: Store) -> None:
        """A sealed value copied from one account's link onto another's row is refused:
        credentials are bound to the link they were sealed for."""
        first, second = account(), account()
        for owner in (first, second):
            await sealed.create_account(owner)
        mine, theirs = link(first.id), link(second.id, created_at=T0 + 1)
        await sealed.add_channel_link(mine)
        await sealed.add_channel_link(theirs)
        await _copy_credentials(sealed, source=mine.id, target=theirs.id)
        with pytest.raises(SealError, match="another link"):
            await sealed.find_channel_link(LinkedChannel.MESSENGER, theirs.address)

    async def test_without_a_key_links_cannot_be_added_or_read(
        self, sealed: Store, backend: Backend
    ) -> None:
        """With no key: adding says to set CASCADE_CHANNEL_KEY; reading where there are no
        links finds none; reading stored links is refused; removing still works."""
        owner = account()
        await sealed.create_account(owner)
        keyless = await _opened(backend, None)
        try:
            assert await keyless.channel_links() == []
            assert await keyless.find_channel_link(LinkedChannel.VIBER, "bot") is None
            with pytest.raises(ConfigError, match=r"CASCADE_CHANNEL_KEY.*cascade channel key"):
                await keyless.add_channel_link(link(owner.id))
            added = link(owner.id)
            await sealed.add_channel_link(added)
            with pytest.raises(ConfigError, match="CASCADE_CHANNEL_KEY is not set"):
                await keyless.channel_links(owner.id)
            with pytest.raises(ConfigError, match="CASCADE_CHANNEL_KEY is not set"):
                await keyless.find_channel_link(LinkedChannel.MESSENGER, added.address)
            assert await keyless.remove_channel_link(owner.id, added.id) is True
            assert await keyless.channel_links() == []
        finally:
            await keyless.close()


async def _copy_credentials(store: Store, *, source: str, target: str) -> None:
    """Overwrite one link's stored credentials with another's, behind the store's back."""
    sql = (
        "UPDATE channel_links SET credentials = "
        "(SELECT credentials FROM channel_links WHERE id = {0}) WHERE id = {1}"
    )
    if isinstance(store, SqliteStore):
        conn = sqlite3.connect(store.path)
        try:
            conn.execute(sql.format("?", "?"), (source, target))
            conn.commit()
        finally:
            conn.close()
        return
    assert isinstance(store, PostgresStore)
    pg = await asyncpg.connect(store.url)
    try:
        await pg.execute(sql.format("$1", "$2"), source, target)
    finally:
        await pg.close()


class TestSandboxAccounts:
    """An account's sandbox flag."""

    async def test_an_account_is_a_sandbox_account_unless_made_live(self, store: Store) -> None:
        """A new account is a sandbox account by default; update_account switches it both
        ways and leaves other fields alone."""
        owner = account()
        await store.create_account(owner)
        stored = await store.get_account(owner.id)
        assert stored is not None
        assert stored.sandbox is True
        live = await store.update_account(owner.id, sandbox=False)
        assert live == dataclasses.replace(owner, sandbox=False)
        assert await store.get_account_by_api_key(owner.api_key) == live
        assert (await store.update_account(owner.id, status_url=None)).sandbox is False
        assert (await store.update_account(owner.id, sandbox=True)).sandbox is True

    async def test_a_live_account_is_created_live(self, store: Store) -> None:
        """An account created with sandbox=False reads back live."""
        owner = dataclasses.replace(account(), sandbox=False)
        await store.create_account(owner)
        assert await store.list_accounts() == [owner]


def test_accounts_before_the_migration_stay_sandbox_accounts(tmp_path: Path) -> None:
    """An account that existed before migration 0009 is a sandbox account after it (today's
    behaviour is unchanged)."""
    path = tmp_path / "old.db"
    conn = sqlite3.connect(path)
    try:
        conn.execute(
            "CREATE TABLE schema_migrations "
            "(version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at REAL NOT NULL)"
        )
        for migration in migrations("sqlite"):
            if migration.version < 9:
                conn.executescript(migration.sql)
                conn.execute(
                    "INSERT INTO schema_migrations VALUES (?, ?, 0)",
                    (migration.version, migration.name),
                )
        conn.execute(
            "INSERT INTO accounts (id, api_key, api_secret_sha256, signature_secret, created_at)"
            " VALUES ('old', 'oldkey', 'x', 'y', 0)"
        )
        conn.commit()
    finally:
        conn.close()
    # 0009 first (later migrations follow it)
    assert SqliteStore(path).migrate()[:1] == ["0009_channel_links"]
    conn = sqlite3.connect(path)
    try:
        assert conn.execute("SELECT sandbox FROM accounts").fetchall() == [(1,)]
    finally:
        conn.close()
