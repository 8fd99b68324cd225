"""Named SQL statements, one file per dialect, loaded once.

``sql/<dialect>/queries.sql`` holds ``-- name: <name>`` blocks. Parameters are written
``:name`` in both dialects; loading turns them into the driver's positional placeholders
(``?`` for SQLite, ``$1`` for PostgreSQL) and remembers their order, so callers pass values by
name (or, for many rows, tuples in an order of names they give) and never build SQL. The two
files define the same names (a test checks it), so code that runs a statement does not know
which database it speaks to.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cache
from importlib import resources
from operator import itemgetter
from typing import Any

#: a ``:name`` parameter (not the ``::`` of a PostgreSQL cast); ``:name*`` is a list that
#: SQLite gets as one placeholder per element (``IN (:ids*)``)
_PARAMETER = re.compile(r"(?<![:\w]):([a-z_][a-z0-9_]*)(\*?)")
#: where a list's placeholders go in a compiled SQLite statement
_LIST_MARK = "\x00"
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
    #: list parameters expanded into one placeholder per element (SQLite's ``:name*``)
    lists: frozenset[str] = frozenset()
    #: whether its values are its parameters as they are, two or more (bound fastest)
    plain: bool = False
    _get: Any = field(default=None, repr=False, compare=False)
    #: its values from named parameters, for a statement without list parameters (one call)
    values: Callable[[Params], tuple[Any, ...]] = field(default=tuple, repr=False, compare=False)
    #: the SQL for each combination of list lengths met so far
    _expanded: dict[tuple[int, ...], str] = field(default_factory=dict, repr=False, compare=False)
    #: for each order of parameter names met so far, the getter of its values from a tuple
    _arranged: dict[tuple[str, ...], Callable[[Sequence[Any]], tuple[Any, ...]]] = field(
        default_factory=dict, repr=False, compare=False
    )

    def bind(self, params: Params) -> tuple[str, tuple[Any, ...]]:
        """The SQL and the values to run it with, lists expanded where the SQL takes them."""
        if self.plain:  # most statements: two or more values, taken by name in one C call
            return self.sql, self._get(params)
        args = self.args(params)
        if not self.lists:
            return self.sql, args
        flat: list[Any] = []
        lengths = []
        for name, value in zip(self.order, args, strict=True):
            if name in self.lists:
                flat += value
                lengths.append(len(value))
            else:
                flat.append(value)
        key = tuple(lengths)
        sql = self._expanded.get(key)
        if sql is None:
            first, *rest = self.sql.split(_LIST_MARK)
            sql = first + "".join(
                ", ".join("?" * length) + part for length, part in zip(key, rest, strict=True)
            )
            self._expanded[key] = sql
        return sql, tuple(flat)

    def args(self, params: Params) -> tuple[Any, ...]:
        """The values for the placeholders, taken from ``params`` by name."""
        if len(self.order) > 1:
            values: tuple[Any, ...] = self._get(params)
        elif self.order:
            values = (self._get(params),)
        else:
            return ()
        if self.json_lists:
            values = tuple(
                json.dumps(list(value)) if name in self.json_lists else value
                for name, value in zip(self.order, values, strict=True)
            )
        return values

    def arranged(self, names: tuple[str, ...]) -> Callable[[Sequence[Any]], tuple[Any, ...]]:
        """The getter of its values from a row of the parameters ``names`` names, in that
        order (one C call a row, no dict; found once per order). Not for list parameters."""
        getter = self._arranged.get(names)
        if getter is None:
            if self.lists or self.json_lists or not self.order:
                raise ValueError(f"{self.sql[:40]!r}: only plain parameters come in a row")
            positions = [names.index(name) for name in self.order]
            if len(positions) == 1:
                (position,) = positions
                getter = self._arranged[names] = lambda row: (row[position],)
            else:
                getter = self._arranged[names] = itemgetter(*positions)
        return getter

    def many(self, rows: Sequence[Params]) -> list[tuple[Any, ...]]:
        """The values of an ``executemany``, one tuple a row."""
        if self.plain:
            return list(map(self._get, rows))
        return [self.args(row) for row in rows]


@dataclass(frozen=True, slots=True)
class Query:
    """One named unit of work of one dialect: usually one statement; where a dialect needs
    several for it, they run in order with the same parameters, the last one giving the rows."""

    name: str
    statements: tuple[Statement, ...]
    #: the statements that run before the one whose rows are the result, and that one (an
    #: ``executemany`` runs ``last`` alone: a query run that way has one statement)
    before: tuple[Statement, ...]
    last: Statement
    #: whether it is one statement without list parameters: run as ``sql`` with ``values``
    simple: bool = False
    #: whether none of its statements has list parameters: each runs as ``sql`` with
    #: ``values`` (no SQL to expand)
    listless: bool = False

    @classmethod
    def of(cls, name: str, statements: tuple[Statement, ...]) -> Query:
        """A query of these statements, in order."""
        last = statements[-1]
        listless = not any(statement.lists for statement in statements)
        simple = len(statements) == 1 and listless
        return cls(name, statements, statements[:-1], last, simple, listless)


def _compile(dialect: str, text: str) -> Statement:
    """A statement with its ``:name`` parameters made positional for ``dialect``."""
    lists: frozenset[str] = frozenset()
    if dialect == "sqlite":
        found = _PARAMETER.findall(text)
        order = tuple(name for name, _ in found)
        lists = frozenset(name for name, star in found if star)
        sql = _PARAMETER.sub(lambda m: _LIST_MARK if m.group(2) else "?", text)
        json_lists = frozenset(_JSON_LIST.findall(text))
    else:
        numbers: dict[str, int] = {}

        def number(match: re.Match[str]) -> str:
            if match.group(2):
                raise ValueError(f"{match.group(0)}: PostgreSQL takes a list as an array")
            return f"${numbers.setdefault(match.group(1), len(numbers) + 1)}"

        sql = _PARAMETER.sub(number, text)
        order = tuple(numbers)
        json_lists = frozenset()
    getter = itemgetter(*order) if order else None
    plain = len(order) > 1 and not lists and not json_lists
    statement = Statement(sql.strip(), order, json_lists, lists, plain, getter)
    if not lists:
        object.__setattr__(statement, "values", _values_of(statement))
    return statement


def _values_of(statement: Statement) -> Callable[[Params], tuple[Any, ...]]:
    """The fastest function giving a statement's values from its named parameters."""
    if statement.plain:
        getter: Callable[[Params], tuple[Any, ...]] = statement._get
        return getter
    if len(statement.order) == 1 and not statement.json_lists:
        (name,) = statement.order
        return lambda params: (params[name],)
    return statement.args


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
        queries[name] = Query.of(name, statements)
    return queries


@cache
def load(dialect: str) -> dict[str, Query]:
    """Every named statement of ``dialect`` ("sqlite" or "postgres"), read once."""
    source = (resources.files("cascade.store") / "sql" / dialect / "queries.sql").read_text()
    return parse(dialect, source)
