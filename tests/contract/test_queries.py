"""The named query files: both dialects define the same statements, each with the same
parameters, and the store runs every one of them and no other."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

import cascade.store
from cascade.store.queries import load, parse

STORE = Path(cascade.store.__file__).parent
#: the functions of sqlstore.py that name a query as their first argument
_NAMING = {"select", "first", "value", "change", "each", "each_row", "Run"}


def _named_in_code() -> set[str]:
    """Every query name the store's modules pass to a statement-making function (outside
    those functions themselves, which pass their argument on)."""
    named = set()
    for module in STORE.glob("*.py"):
        tree = ast.parse(module.read_text())
        makers = [
            node
            for node in ast.walk(tree)
            if isinstance(node, ast.FunctionDef) and node.name in _NAMING
        ]
        inside = {id(node) for maker in makers for node in ast.walk(maker)}
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Name)
                and node.func.id in _NAMING
                and node.args
                and id(node) not in inside
            ):
                first = node.args[0]
                assert isinstance(first, ast.Constant), (
                    f"{module.name}:{node.lineno}: a query named by an expression, not a literal"
                )
                named.add(first.value)
    return named


def _parameters(dialect: str, name: str) -> set[str]:
    """The parameter names of one query of one dialect."""
    return {p for statement in load(dialect)[name].statements for p in statement.order}


def test_both_dialects_define_the_same_queries() -> None:
    """SQLite and PostgreSQL name the same statements."""
    assert set(load("sqlite")) == set(load("postgres"))


@pytest.mark.parametrize("name", sorted(load("sqlite")))
def test_a_query_takes_the_same_parameters_in_both_dialects(name: str) -> None:
    """A plan passes one set of parameters, whichever database runs it."""
    assert _parameters("sqlite", name) == _parameters("postgres", name)


def test_every_query_is_used_and_every_use_is_defined() -> None:
    """No statement in the files is dead, and the code names none that is missing."""
    assert _named_in_code() == set(load("sqlite"))


def test_parameters_become_each_drivers_placeholders() -> None:
    """``:name`` becomes ``?`` per use on SQLite and ``$n`` per name on PostgreSQL, a cast's
    ``::`` is left alone, and a list read by json_each is encoded as JSON."""
    source = "-- name: q\nSELECT :a, :b::text, :a FROM json_each(:ids)"
    (sqlite,) = parse("sqlite", source)["q"].statements
    (postgres,) = parse("postgres", source)["q"].statements
    assert sqlite.sql == "SELECT ?, ?::text, ? FROM json_each(?)"
    assert postgres.sql == "SELECT $1, $2::text, $1 FROM json_each($3)"
    params = {"a": 1, "b": "x", "ids": [1, 2]}
    assert sqlite.args(params) == (1, "x", 1, "[1, 2]")
    assert postgres.args(params) == (1, "x", [1, 2])


def test_a_list_parameter_becomes_one_placeholder_per_element_on_sqlite() -> None:
    """``:ids*`` expands to as many ``?`` as the list has elements (none for an empty list),
    the other parameters keeping their places; PostgreSQL refuses it (it takes arrays)."""
    (statement,) = parse("sqlite", "-- name: q\nSELECT 1 WHERE a = :a AND id IN (:ids*)")[
        "q"
    ].statements
    assert statement.bind({"a": 7, "ids": [1, 2, 3]}) == (
        "SELECT 1 WHERE a = ? AND id IN (?, ?, ?)",
        (7, 1, 2, 3),
    )
    assert statement.bind({"a": 7, "ids": []}) == ("SELECT 1 WHERE a = ? AND id IN ()", (7,))
    with pytest.raises(ValueError, match="array"):
        parse("postgres", "-- name: q\nSELECT 1 WHERE id IN (:ids*)")


def test_a_block_of_statements_runs_them_in_order() -> None:
    """Statements separated by ``;`` under one name are kept apart, in order."""
    query = parse("sqlite", "-- name: q\n-- why\nDELETE FROM a WHERE x = :x;\nSELECT :x")["q"]
    assert [s.sql for s in query.statements] == ["DELETE FROM a WHERE x = ?", "SELECT ?"]


def test_a_name_defined_twice_is_refused() -> None:
    """Two blocks of one name are a mistake in the file, not a silent override."""
    with pytest.raises(ValueError, match="defined twice"):
        parse("sqlite", "-- name: q\nSELECT 1\n-- name: q\nSELECT 2")


def test_no_sqlite_statement_binds_a_column_a_partial_index_fixes() -> None:
    """No SQLite statement compares a parameter with a column that a partial index's condition
    fixes to a constant (``WHERE provider = 'messenger'``): SQLite then recompiles the
    statement at every execution (its plan depends on the value), which made every transition
    read cost five times what it should. A comparison inside ``(:x IS NULL OR col = :x)`` is
    its own term and does not count."""
    schema = (STORE / "sql" / "sqlite" / "schema.sql").read_text()
    statements = (STORE / "sql" / "sqlite" / "queries.sql").read_text().split("-- name: ")
    indexes = re.findall(r"CREATE (?:UNIQUE )?INDEX \w+ ON (\w+) [^;]*? WHERE ([^;]*);", schema)
    fixed = {
        (table, column)
        for table, condition in indexes
        for column in re.findall(r"(\w+) = '", condition)
    }
    assert fixed, "no partial index fixes a column: this test checks nothing"
    for table, column in fixed:
        for statement in statements:
            if re.search(rf"\b{table}\b", statement):
                bound = re.search(rf"(?<!OR )\b{column} (?:= :|IN \(:)", statement)
                assert bound is None, f"{statement.split()[0]} binds {table}.{column}"


def test_a_row_of_values_is_arranged_in_each_dialects_order() -> None:
    """A row of values in a named order gives each driver its values: SQLite one per use
    of a parameter, PostgreSQL one per name; list parameters cannot come in a row."""
    source = "-- name: q\nINSERT INTO t (a, b, c, d) VALUES (:a, :b, :c, :b)"
    (sqlite,) = parse("sqlite", source)["q"].statements
    (postgres,) = parse("postgres", source)["q"].statements
    names = ("c", "b", "a")
    assert sqlite.arranged(names)((3, 2, 1)) == (1, 2, 3, 2)
    assert postgres.arranged(names)((3, 2, 1)) == (1, 2, 3)
    (one,) = parse("sqlite", "-- name: q\nDELETE FROM t WHERE a = :a")["q"].statements
    assert one.arranged(("b", "a"))(("x", "y")) == ("y",)
    (listed,) = parse("sqlite", "-- name: q\nSELECT 1 WHERE id IN (:ids*)")["q"].statements
    with pytest.raises(ValueError, match="row"):
        listed.arranged(("ids",))
