"""The fault tests use the contract suite's PostgreSQL fixtures (a fresh schema per test)."""

from __future__ import annotations

from tests.contract.conftest import postgres_schema, postgres_schemas, postgres_url

__all__ = ["postgres_schema", "postgres_schemas", "postgres_url"]
