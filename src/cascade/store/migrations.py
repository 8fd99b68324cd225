"""Schema migrations: numbered SQL files per dialect, applied in order, each once."""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources


@dataclass(frozen=True, slots=True)
class Migration:
    """One numbered schema change."""

    version: int
    name: str
    sql: str


def migrations(dialect: str) -> list[Migration]:
    """Every migration of ``dialect`` ("sqlite" or "postgres"), oldest first."""
    folder = resources.files("cascade.store") / "sql" / dialect / "migrations"
    found = []
    for entry in folder.iterdir():
        if entry.name.endswith(".sql"):
            number, _, rest = entry.name.partition("_")
            found.append(Migration(int(number), rest.removesuffix(".sql"), entry.read_text()))
    return sorted(found, key=lambda m: m.version)


def declared_schema(dialect: str) -> str:
    """The schema that applying every migration must produce (``schema.sql``)."""
    return (resources.files("cascade.store") / "sql" / dialect / "schema.sql").read_text()
