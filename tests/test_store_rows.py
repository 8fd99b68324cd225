"""The store's record makers: the same records as their classes make, faster."""

from __future__ import annotations

import dataclasses

import pytest

from cascade.domain.makers import constructor
from cascade.domain.records import Event, MessageRecord, StepState, WorkflowRecord
from cascade.store import rows


def _values(record: type[object]) -> tuple[object, ...]:
    """A distinct value for every field of ``record``, in order."""
    return tuple(f"v{index}" for index, _ in enumerate(dataclasses.fields(record)))


@pytest.mark.parametrize("record", [MessageRecord, WorkflowRecord, Event])
def test_a_made_record_equals_the_one_its_class_makes_and_stays_frozen(record: type) -> None:
    """A record made by the store's maker is equal to, hashes as and reads as the one its
    class's __init__ makes, and refuses a change as a frozen dataclass does."""
    values = _values(record)
    made, expected = constructor(record)(*values), record(*values)
    assert type(made) is record
    assert made == expected
    assert hash(made) == hash(expected)
    assert repr(made) == repr(expected)
    assert dataclasses.astuple(made) == values
    first = dataclasses.fields(record)[0].name
    with pytest.raises(dataclasses.FrozenInstanceError):
        setattr(made, first, "changed")
    assert dataclasses.replace(made, **{first: "other"}) == record("other", *values[1:])


def test_fields_left_out_take_their_defaults() -> None:
    """A workflow made without its messages and events has the defaults its class gives."""
    values = _values(WorkflowRecord)[:8]
    made = constructor(WorkflowRecord)(*values)
    assert made == WorkflowRecord(*values)
    assert (made.messages, made.events) == ((), ())


def test_a_message_read_from_the_store_is_its_record() -> None:
    """The message mapper (which uses the maker) gives the record made by hand, its stored
    forms converted: JSON text back to bytes, the state to its enum."""
    names = [field.name for field in dataclasses.fields(MessageRecord)]
    stored = {name: f"v{index}" for index, name in enumerate(names)}
    stored["state"] = "active"
    by_column = {"to": "recipient", "from_": "sender"}
    row = {by_column.get(name, name): value for name, value in stored.items()}
    expected = MessageRecord(
        **{
            **stored,
            "to": stored["to"].encode(),
            "from_": stored["from_"].encode(),
            "body": stored["body"].encode(),
            "state": StepState.ACTIVE,
        }
    )
    assert rows.message(row) == expected


def test_other_classes_are_their_own_makers() -> None:
    """A class that is not a frozen, slotted dataclass without __post_init__ is made by its
    own call (its __init__ may do more than set fields)."""

    @dataclasses.dataclass(frozen=True)
    class NoSlots:
        a: int

    @dataclasses.dataclass(frozen=True, slots=True)
    class Checked:
        a: int

        def __post_init__(self) -> None:
            if self.a < 0:
                raise ValueError("negative")

    @dataclasses.dataclass(slots=True)
    class Mutable:
        a: int

    @dataclasses.dataclass(frozen=True, slots=True)
    class Listed:
        a: list[int] = dataclasses.field(default_factory=list)

    @dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
    class Named:
        a: int

    for record in (NoSlots, Checked, Mutable, Listed, Named, dict):
        assert constructor(record) is record
