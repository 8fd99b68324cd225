"""Makers of frozen, slotted dataclass records that set their slots directly (for records made
many times a message: those read from rows, a transition's projected messages)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import MISSING, fields, is_dataclass
from typing import Any, TypeVar

R = TypeVar("R")


def constructor(record: Callable[..., R]) -> Callable[..., R]:
    """A maker of ``record`` (a frozen, slotted dataclass) from every field's value in order,
    equal to what its class makes, that sets the slots itself: a frozen dataclass's
    ``__init__`` sets each field through ``object.__setattr__`` (its own ``__setattr__``
    refuses), a type lookup and a generic set a field, 3.6 µs against 1.4 µs for a message's
    27 fields, and a message is read several times on its way. Fields left out take their
    defaults, as the class's call gives them; a class with a default factory, a
    ``__post_init__``, a keyword-only field or one not set by ``__init__`` is its own maker,
    as is any class
    that is not a frozen, slotted dataclass."""
    params = getattr(record, "__dataclass_params__", None)
    if (
        not is_dataclass(record)
        or params is None
        or not params.frozen
        or not hasattr(record, "__slots__")
        or hasattr(record, "__post_init__")
        or not all(
            field.init and not field.kw_only and field.default_factory is MISSING
            for field in fields(record)
        )
    ):
        return record
    names = [field.name for field in fields(record)]
    setters = {f"_set{index}": vars(record)[name].__set__ for index, name in enumerate(names)}
    defaults = {
        f"_default{index}": field.default
        for index, field in enumerate(fields(record))
        if field.default is not MISSING
    }
    arguments = [
        f"_{index}=_default{index}" if f"_default{index}" in defaults else f"_{index}"
        for index in range(len(names))
    ]
    source = (
        f"def make({', '.join(arguments)}):\n"
        "    made = _new(_record)\n"
        + "".join(f"    _set{index}(made, _{index})\n" for index in range(len(names)))
        + "    return made\n"
    )
    namespace: dict[str, Any] = {
        "_new": object.__new__,
        "_record": record,
        **setters,
        **defaults,
    }
    exec(source, namespace)  # noqa: S102 (our own source, as dataclasses make __init__)
    made: Callable[..., R] = namespace["make"]
    made.__qualname__ = f"{getattr(record, '__qualname__', 'record')}.<made from its fields>"
    return made
