"""Migrations: applying every one to an empty database gives exactly the declared schema."""

from __future__ import annotations

import asyncio
import re
import sqlite3
import urllib.parse
from pathlib import Path
from typing import Any

import asyncpg  # type: ignore[import-untyped]
import pytest

from cascade.store.migrations import declared_schema, migrations
from cascade.store.postgres import PostgresStore
from cascade.store.sqlite import SqliteStore
from tests.contract.conftest import SchemaFactory

#: the bookkeeping table the stores add next to the declared schema
BOOKKEEPING = "schema_migrations"


def _squash(sql: str) -> str:
    """SQL text with runs of whitespace made single spaces."""
    return re.sub(r"\s+", " ", sql).strip()


def sqlite_catalog(path: Path) -> dict[str, Any]:
    """Tables, columns, keys and indexes of a SQLite file, in a form two files can compare."""
    conn = sqlite3.connect(path)
    try:
        catalog: dict[str, Any] = {}
        tables = conn.execute(
            "SELECT name, sql FROM sqlite_master WHERE type = 'table' "
            "AND name NOT LIKE 'sqlite_%' AND name != ? ORDER BY name",
            (BOOKKEEPING,),
        ).fetchall()
        for table, sql in tables:
            indexes = []
            for _, name, unique, origin, partial in conn.execute(f"PRAGMA index_list({table})"):
                columns = [row[2] for row in conn.execute(f"PRAGMA index_info({name})")]
                (index_sql,) = conn.execute(
                    "SELECT sql FROM sqlite_master WHERE type = 'index' AND name = ?", (name,)
                ).fetchone()
                text = _squash(index_sql) if index_sql is not None else None
                indexes.append((name, unique, origin, partial, columns, text))
            catalog[table] = {
                "columns": conn.execute(f"PRAGMA table_xinfo({table})").fetchall(),
                "foreign_keys": conn.execute(f"PRAGMA foreign_key_list({table})").fetchall(),
                "indexes": sorted(indexes),
                "autoincrement": "AUTOINCREMENT" in sql.upper(),
            }
        return catalog
    finally:
        conn.close()


def _schema_of(url: str) -> str:
    """The schema a test store URL selects through its search_path."""
    return urllib.parse.parse_qs(urllib.parse.urlsplit(url).query)["search_path"][0]


async def postgres_catalog(url: str) -> dict[str, Any]:
    """Tables, columns, constraints and indexes of one schema, comparable across schemas."""
    schema = _schema_of(url)
    conn = await asyncpg.connect(url)
    try:
        columns = await conn.fetch(
            "SELECT table_name, column_name, data_type, is_nullable, column_default, "
            "is_identity, identity_generation FROM information_schema.columns "
            "WHERE table_schema = $1 AND table_name != $2 "
            "ORDER BY table_name, ordinal_position",
            schema,
            BOOKKEEPING,
        )
        constraints = await conn.fetch(
            "SELECT c.conrelid::regclass::text, c.conname, c.contype, "
            "pg_get_constraintdef(c.oid) FROM pg_constraint c "
            "JOIN pg_namespace n ON n.oid = c.connamespace "
            "WHERE n.nspname = $1 AND c.conrelid::regclass::text != $2 ORDER BY 1, 2",
            schema,
            BOOKKEEPING,
        )
        indexes = await conn.fetch(
            "SELECT tablename, indexname, indexdef FROM pg_indexes "
            "WHERE schemaname = $1 AND tablename != $2 ORDER BY 1, 2",
            schema,
            BOOKKEEPING,
        )
    finally:
        await conn.close()
    catalog: dict[str, Any] = {}
    for table, *column in columns:
        catalog.setdefault(table, {"columns": [], "constraints": [], "indexes": []})
        catalog[table]["columns"].append(tuple(column))
    for table, *constraint in constraints:
        catalog[table]["constraints"].append(tuple(constraint))
    for table, name, definition in indexes:
        # the definition names the schema, which differs between the two databases compared
        catalog[table]["indexes"].append((name, definition.replace(f" {schema}.", " ")))
    return catalog


class TestSqlite:
    """SQLite: migrations against schema.sql."""

    def test_migrating_from_empty_gives_the_declared_schema(self, tmp_path: Path) -> None:
        """Every migration applied to an empty file gives the same catalog as schema.sql."""
        migrated, declared = tmp_path / "migrated.db", tmp_path / "declared.db"
        applied = SqliteStore(migrated).migrate()
        assert applied == [f"{m.version:04d}_{m.name}" for m in migrations("sqlite")]
        conn = sqlite3.connect(declared)
        try:
            conn.executescript(declared_schema("sqlite"))
        finally:
            conn.close()
        expected = sqlite_catalog(declared)
        assert expected  # the comparison is not between two empty catalogs
        assert sqlite_catalog(migrated) == expected

    def test_migrating_twice_applies_nothing_new(self, tmp_path: Path) -> None:
        """A database already up to date is left alone."""
        store = SqliteStore(tmp_path / "cascade.db")
        assert store.migrate()
        assert store.migrate() == []


@pytest.mark.postgres
class TestPostgres:
    """PostgreSQL: migrations against schema.sql, and nodes starting at once."""

    async def test_migrating_from_empty_gives_the_declared_schema(
        self, postgres_schemas: SchemaFactory
    ) -> None:
        """Every migration applied to an empty schema gives the same catalog as schema.sql."""
        migrated, declared = await postgres_schemas(), await postgres_schemas()
        store = PostgresStore(migrated, pool_size=1)
        await store.open()
        await store.close()
        conn = await asyncpg.connect(declared)
        try:
            await conn.execute(declared_schema("postgres"))
        finally:
            await conn.close()
        expected = await postgres_catalog(declared)
        assert sorted(expected) == sorted(sqlite_tables())
        assert await postgres_catalog(migrated) == expected

    async def test_nodes_starting_at_once_migrate_once(self, postgres_schema: str) -> None:
        """Several stores opening an empty database together apply each migration once."""
        stores = [PostgresStore(postgres_schema, pool_size=1) for _ in range(4)]
        await asyncio.gather(*(store.open() for store in stores))
        try:
            assert await stores[0].migrate() == []
        finally:
            await asyncio.gather(*(store.close() for store in stores))
        conn = await asyncpg.connect(postgres_schema)
        try:
            versions = [row[0] for row in await conn.fetch(f"SELECT version FROM {BOOKKEEPING}")]
        finally:
            await conn.close()
        assert sorted(versions) == [m.version for m in migrations("postgres")]


def sqlite_tables() -> list[str]:
    """The tables the SQLite schema declares (both dialects declare the same ones)."""
    conn = sqlite3.connect(":memory:")
    try:
        conn.executescript(declared_schema("sqlite"))
        rows = conn.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'"
        ).fetchall()
    finally:
        conn.close()
    return [row[0] for row in rows]
