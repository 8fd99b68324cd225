"""Named SQL statements, one file per dialect, loaded once.

``sql/<dialect>/queries.sql`` holds ``-- name: <name>`` blocks. Parameters are written
``:name`` in both dialects; loading turns them into the driver's positional placeholders
(``?`` for SQLite, ``$1`` for PostgreSQL) and remembers their order, so callers pass values by
name and never build SQL. The two files define the same names (a test checks it), so code that
runs a statement does not know which database it speaks to.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import cache
from importlib import resources
from operator import itemgetter
from typing import Any

#: a ``:name`` parameter (not the ``::`` of a PostgreSQL cast)
_PARAMETER = re.compile(r"(?<![:\w]):([a-z_][a-z0-9_]*)")
#: a SQLite parameter holding a list, read as a JSON array by ``json_each``
_JSON_LIST = re.compile(r"json_each\(:([a-z_][a-z0-9_]*)\)")
_NAME = re.compile(r"^-- name: ([a-z_][a-z0-9_]*)\s*$", re.MULTILINE)

Params = Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class Statement:
    """One SQL statement with positional placeholders, and how to order named values for it."""

    sql: str
    #: the parameter names, one per placeholder value the driver expects, in order
    order: tuple[str, ...]
    #: parameters SQLite reads as JSON arrays (``json_each(:name)``): lists are encoded
    json_lists: frozenset[str] = frozenset()
    _get: Any = field(default=None, repr=False, compare=False)

    def args(self, params: Params) -> tuple[Any, ...]:
        """The values for the placeholders, taken from ``params`` by name."""
        if not self.order:
            return ()
        values: tuple[Any, ...] = self._get(params) if len(self.order) > 1 else (self._get(params),)
        if self.json_lists:
            values = tuple(
                json.dumps(list(value)) if name in self.json_lists else value
                for name, value in zip(self.order, values, strict=True)
            )
        return values

    def many(self, rows: Sequence[Params]) -> list[tuple[Any, ...]]:
        """The values of an ``executemany``, one tuple a row."""
        return [self.args(row) for row in rows]


@dataclass(frozen=True, slots=True)
class Query:
    """One named unit of work of one dialect: usually one statement; where a dialect needs
    several for it, they run in order with the same parameters, the last one giving the rows."""

    name: str
    statements: tuple[Statement, ...]

    @property
    def statement(self) -> Statement:
        """The one statement of a single-statement query (``executemany`` needs one)."""
        if len(self.statements) != 1:
            raise ValueError(f"query {self.name!r} has {len(self.statements)} statements")
        return self.statements[0]


def _compile(dialect: str, text: str) -> Statement:
    """A statement with its ``:name`` parameters made positional for ``dialect``."""
    if dialect == "sqlite":
        order = tuple(_PARAMETER.findall(text))
        sql = _PARAMETER.sub("?", text)
        json_lists = frozenset(_JSON_LIST.findall(text))
    else:
        numbers: dict[str, int] = {}

        def number(match: re.Match[str]) -> str:
            return f"${numbers.setdefault(match.group(1), len(numbers) + 1)}"

        sql = _PARAMETER.sub(number, text)
        order = tuple(numbers)
        json_lists = frozenset()
    getter = itemgetter(*order) if order else None
    return Statement(sql.strip(), order, json_lists, getter)


def parse(dialect: str, source: str) -> dict[str, Query]:
    """The named statements of a query file's text."""
    parts = _NAME.split(source)
    queries: dict[str, Query] = {}
    for name, text in zip(parts[1::2], parts[2::2], strict=True):
        body = "\n".join(
            line for line in text.splitlines() if not line.lstrip().startswith("--")
        ).strip()
        if name in queries:
            raise ValueError(f"{dialect} queries: {name!r} is defined twice")
        if not body:
            raise ValueError(f"{dialect} queries: {name!r} is empty")
        statements = tuple(_compile(dialect, sql) for sql in body.split(";") if sql.strip())
        queries[name] = Query(name, statements)
    return queries


@cache
def load(dialect: str) -> dict[str, Query]:
    """Every named statement of ``dialect`` ("sqlite" or "postgres"), read once."""
    source = (resources.files("cascade.store") / "sql" / dialect / "queries.sql").read_text()
    return parse(dialect, source)
