"""Strict request decoding that names every bad field, not only the first.

The fast path is msgspec's typed decoder (about 2 us for a workflow). msgspec stops at the first
error, so when it fails, the body is decoded untyped and walked against the same Struct types
(read through ``msgspec.inspect``) to collect every problem; the cross-field rules of
``domain.rules`` then run on each part that did decode. The Structs stay the single definition
of the schema.

A body may be as hostile as its size allows, and it is validated on the event loop, so the work
is bounded by the schema rather than by the body: arrays over their maximum are reported without
walking their items, unknown fields are counted rather than walked, what ``msgspec.inspect``
derives from a type is derived once, and past the first fifty problems the rest are only counted.

Strings holding U+0000 are refused (400) wherever they are in the body, keys included: PostgreSQL
cannot store them, and the channels would fail on them later. Lone UTF-16 surrogates need no such
check: msgspec refuses them as malformed JSON.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import Any, Generic, TypeVar

import msgspec
import msgspec.inspect as mi

from cascade.api.problems import MAX_LISTED, with_unlisted
from cascade.domain.message import (
    MAX_STEPS,
    Channel,
    MessageRequest,
    WorkflowRequest,
    WorkflowStep,
)
from cascade.domain.message_v1 import MessageRequestV1, MessageV1
from cascade.domain.rules import failover_violations, request_violations, step_message_violations
from cascade.domain.rules_v1 import message_violations as message_violations_v1
from cascade.errors import InvalidParameter, InvalidRequest

T = TypeVar("T")

_KIND_NAMES = {
    dict: "an object",
    list: "an array",
    str: "a string",
    int: "an integer",
    float: "a number",
    bool: "a boolean",
    type(None): "null",
}


def _kind(value: object) -> str:
    return _KIND_NAMES.get(type(value), type(value).__name__)


def _join(path: str, name: str) -> str:
    return f"{path}.{name}" if path else name


class Found:
    """The problems found in one body: the first ``limit`` kept, the rest only counted, so that
    reporting a hundred thousand bad fields costs no more than reporting fifty."""

    __slots__ = ("items", "limit", "unlisted")

    def __init__(self, limit: int = MAX_LISTED) -> None:
        self.items: list[InvalidParameter] = []
        self.limit = limit
        self.unlisted = 0

    def add(self, name: str, reason: str) -> None:
        """One more problem."""
        if len(self.items) < self.limit:
            self.items.append(InvalidParameter(name, reason))
        else:
            self.unlisted += 1

    def extend(self, problems: list[InvalidParameter]) -> None:
        """Problems found elsewhere (the cross-field rules)."""
        for problem in problems:
            self.add(problem.name, problem.reason)

    @property
    def total(self) -> int:
        """How many problems were found, listed or not."""
        return len(self.items) + self.unlisted

    def error(self) -> InvalidRequest:
        """The 400 listing them."""
        detail = InvalidRequest().message
        if self.unlisted:
            detail = with_unlisted(detail, self.unlisted)
        return InvalidRequest(detail, invalid_parameters=self.items)


def schema_violations(kind: mi.Type, value: object, path: str, found: Found) -> None:
    """Add to ``found`` every way ``value`` fails the msgspec type ``kind``, by JSON path.

    The work is bounded by the schema, not by the body: an array longer than its maximum is
    reported without walking its items, and unknown fields are counted, not walked."""
    if isinstance(kind, mi.Metadata):
        schema_violations(kind.type, value, path, found)
    elif isinstance(kind, mi.AnyType | mi.CustomType):
        pass
    elif isinstance(kind, mi.UnionType):
        _union_violations(kind, value, path, found)
    elif isinstance(kind, mi.NoneType):
        if value is not None:
            found.add(path, f"must be null, not {_kind(value)}")
    elif isinstance(kind, mi.StructType):
        _struct_violations(kind, value, path, found)
    elif isinstance(kind, mi.ListType):
        _list_violations(kind, value, path, found)
    elif isinstance(kind, mi.DictType):
        if not isinstance(value, dict):
            found.add(path, f"must be an object, not {_kind(value)}")
    elif isinstance(kind, mi.LiteralType):
        if value not in kind.values or type(value) is not type(kind.values[0]):
            allowed = ", ".join(repr(v) for v in sorted(kind.values, key=str))
            found.add(path, f"must be one of {allowed}")
    elif isinstance(kind, mi.StrType):
        _str_violations(kind, value, path, found)
    elif isinstance(kind, mi.IntType):
        _int_violations(kind, value, path, found)
    elif isinstance(kind, mi.BoolType):
        if not isinstance(value, bool):
            found.add(path, "must be a boolean")
    else:
        raise TypeError(f"no validator for {kind!r}")  # a schema type this module does not know


def _union_violations(kind: mi.UnionType, value: object, path: str, found: Found) -> None:
    members = [m.type if isinstance(m, mi.Metadata) else m for m in kind.types]
    if value is None:
        if not any(isinstance(m, mi.NoneType) for m in members):
            found.add(path, "must not be null")
        return
    wanted = {
        dict: (mi.StructType, mi.DictType),
        list: (mi.ListType,),
        str: (mi.StrType, mi.LiteralType),
        int: (mi.IntType, mi.LiteralType),
        bool: (mi.BoolType,),
    }.get(type(value), ())
    candidates = [m for m in members if isinstance(m, wanted)]
    if not candidates:
        expected = " or ".join(_describe(m) for m in members if not isinstance(m, mi.NoneType))
        found.add(path, f"must be {expected}, not {_kind(value)}")
        return
    schema_violations(candidates[0], value, path, found)


def _describe(kind: mi.Type) -> str:
    if isinstance(kind, mi.StructType | mi.DictType):
        return "an object"
    if isinstance(kind, mi.ListType):
        return "an array"
    if isinstance(kind, mi.IntType):
        return "an integer"
    if isinstance(kind, mi.BoolType):
        return "a boolean"
    return "a string"


def _struct_violations(kind: mi.StructType, value: object, path: str, found: Found) -> None:
    if not isinstance(value, dict):
        found.add(path or "body", f"must be an object, not {_kind(value)}")
        return
    known = {f.encode_name: f for f in kind.fields}
    unknown = len(value) - sum(1 for name in known if name in value)
    if unknown:
        # a body may hold any number of unknown fields: name the first few, count the rest
        named = 0
        for name in value:
            if name not in known:
                found.add(_join(path, str(name)), "is not a known field")
                named += 1
                if named == unknown or found.total >= found.limit:
                    break
        found.unlisted += unknown - named
    for name, fld in known.items():
        if name not in value:
            if fld.required:
                found.add(_join(path, name), "is required")
            continue
        schema_violations(fld.type, value[name], _join(path, name), found)


def _list_violations(kind: mi.ListType, value: object, path: str, found: Found) -> None:
    if not isinstance(value, list):
        found.add(path, f"must be an array, not {_kind(value)}")
        return
    if kind.max_length is not None and len(value) > kind.max_length:
        # its items are not looked at: an array far over its maximum is all a body can hold
        found.add(path, f"must have at most {kind.max_length} items, not {len(value):,}")
        return
    if kind.min_length is not None and len(value) < kind.min_length:
        found.add(path, f"must have at least {kind.min_length} item(s)")
    for index, item in enumerate(value):
        schema_violations(kind.item_type, item, f"{path}[{index}]", found)


def _str_violations(kind: mi.StrType, value: object, path: str, found: Found) -> None:
    if not isinstance(value, str):
        found.add(path, f"must be a string, not {_kind(value)}")
    elif kind.min_length is not None and len(value) < kind.min_length:
        found.add(path, f"must be at least {kind.min_length} character(s) long")
    elif kind.max_length is not None and len(value) > kind.max_length:
        found.add(path, f"must be at most {kind.max_length} characters long")


def _int_violations(kind: mi.IntType, value: object, path: str, found: Found) -> None:
    if not isinstance(value, int) or isinstance(value, bool):
        found.add(path, f"must be an integer, not {_kind(value)}")
    elif kind.ge is not None and value < kind.ge:
        found.add(path, f"must be at least {kind.ge}")
    elif kind.le is not None and value > kind.le:
        found.add(path, f"must be at most {kind.le}")


def _is_valid(kind: mi.Type, value: object) -> bool:
    probe = Found(limit=0)
    schema_violations(kind, value, "", probe)
    return probe.total == 0


_type_infos: dict[object, mi.Type] = {}


def _type_info(kind: type[Any]) -> mi.Type:
    """What msgspec derives from a type, derived once per type (it costs about a millisecond,
    and the walker needs it for every step of a workflow)."""
    info = _type_infos.get(kind)
    if info is None:
        info = _type_infos[kind] = mi.type_info(kind)
    return info


#: how U+0000 can be written in a JSON string; a raw control character is not JSON at all
_NUL_ESCAPE = b"\\u0000"
#: the same six bytes after a backslash: text when that backslash is itself escaped
_NUL_ESCAPE_AFTER_BACKSLASH = b"\\\\u0000"
_ESCAPED_BACKSLASH = b"\\\\"
_NUL_REASON = "must not contain the character U+0000 (NUL), which PostgreSQL cannot store"


def holds_nul(body: bytes) -> bool:
    """Whether a well-formed JSON ``body`` has a string (a key or a value) holding U+0000.

    PostgreSQL's text and jsonb cannot hold it, so such a body is refused before anything is
    stored. A search of the bytes, so a body without it costs about nothing: every backslash of
    well-formed JSON starts an escape, so ``\\u0000`` not after a backslash is one, and after a
    backslash it is one when what is left with the escaped backslashes taken out still has it."""
    if _NUL_ESCAPE not in body:
        return False
    if _NUL_ESCAPE_AFTER_BACKSLASH not in body:
        return True
    return _NUL_ESCAPE in body.replace(_ESCAPED_BACKSLASH, b"")


#: a place in a JSON document: (its parent's place, its key or index), None for the root
_Place = tuple["_Place | None", str | int] | None


def _spell(place: _Place) -> str:
    """The JSON path of a place, e.g. ``workflow[0].to.id``."""
    keys: list[str | int] = []
    while place is not None:
        place, key = place
        keys.append(key)
    path = ""
    for key in reversed(keys):
        path = f"{path}[{key}]" if isinstance(key, int) else _join(path, key)
    return path or "body"


def nul_violations(data: object, found: Found) -> None:
    """Add to ``found`` the JSON path of every key and string in ``data`` holding U+0000."""
    if isinstance(data, str) and "\x00" in data:
        found.add("body", _NUL_REASON)
    # a body may hold hundreds of thousands of values: each is looked at once, and a path is
    # spelled out only for the problems listed
    pending: deque[tuple[_Place, object]] = deque([(None, data)])
    while pending:
        place, container = pending.popleft()
        hits: list[str | int] = []
        children: list[tuple[str | int, object]] = []
        if isinstance(container, dict):
            for key, item in container.items():
                if "\x00" in key or (type(item) is str and "\x00" in item):
                    hits.append(key)
                if type(item) in _NESTED and item:
                    children.append((key, item))
        elif isinstance(container, list):
            for index, item in enumerate(container):
                if type(item) is str:
                    if "\x00" in item:
                        hits.append(index)
                elif type(item) in _NESTED and item:
                    children.append((index, item))
        room = max(found.limit - len(found.items), 0)
        for key in hits[:room]:
            found.add(_spell((place, key)), _NUL_REASON)
        found.unlisted += max(len(hits) - room, 0)
        pending.extend(((place, key), item) for key, item in children)


#: the containers of decoded JSON (exact types: a decoder makes no subclasses)
_NESTED = (dict, list)


_DROPPED = object()


def _struct_of(kind: mi.Type) -> mi.StructType | None:
    """The Struct ``kind`` decodes to (bare, annotated or ``Struct | None``), if it is one."""
    if isinstance(kind, mi.Metadata):
        kind = kind.type
    if isinstance(kind, mi.StructType):
        return kind
    if isinstance(kind, mi.UnionType):
        members = [m for m in kind.types if not isinstance(m, mi.NoneType)]
        if len(members) == 1 and isinstance(members[0], mi.StructType):
            return members[0]
    return None


def _valid_part(kind: mi.Type, value: object) -> object:
    """``value`` with every optional part that fails ``kind`` left out (unknown fields too), or
    ``_DROPPED`` when a required part fails."""
    struct = _struct_of(kind)
    if struct is None or not isinstance(value, dict):
        return value if _is_valid(kind, value) else _DROPPED
    kept: dict[str, object] = {}
    for fld in struct.fields:
        part = (
            _valid_part(fld.type, value[fld.encode_name]) if fld.encode_name in value else _DROPPED
        )
        if part is not _DROPPED:
            kept[fld.encode_name] = part
        elif fld.required:
            return _DROPPED
    return kept


def _salvage(kind: type[T], value: object) -> T | None:
    """The parts of an invalid ``value`` that are valid, as a ``kind``, when enough of it is."""
    kept = _valid_part(_type_info(kind), value)
    if kept is _DROPPED:
        return None
    try:
        return msgspec.convert(kept, kind)
    except msgspec.ValidationError:
        return None


def _unreported(
    violations: list[InvalidParameter], reported: list[InvalidParameter]
) -> list[InvalidParameter]:
    """The rule violations found on a salvaged value that are not echoes of a schema error
    (a rule complaining that a field it lacks is required, where that field was invalid)."""
    return [
        v
        for v in violations
        if not any(
            r.name == v.name or r.name.startswith((v.name + ".", v.name + "[")) for r in reported
        )
    ]


def _message_rules(
    data: dict[str, Any], reported: list[InvalidParameter]
) -> list[InvalidParameter]:
    """Cross-field rules of a single message whose schema failed, on the parts that are valid."""
    request = _salvage(MessageRequest, data)
    return [] if request is None else _unreported(request_violations(request), reported)


def _workflow_step_rules(
    data: dict[str, Any], reported: list[InvalidParameter]
) -> list[InvalidParameter]:
    """Cross-field rules of every step of a workflow whose schema failed, on the parts that are
    valid; the failover rules read the raw step, so a broken failover still counts as present."""
    steps = data.get("workflow")
    if not isinstance(steps, list) or len(steps) > MAX_STEPS:
        return []  # too many steps is reported already, and the steps are not looked at
    found: list[InvalidParameter] = []
    for index, raw in enumerate(steps):
        if not isinstance(raw, dict):
            continue
        step = _salvage(WorkflowStep, raw)
        if step is not None:
            found += _unreported(
                step_message_violations(step.to, step.from_, step.message, index), reported
            )
        failover = raw.get("failover")
        condition = failover.get("condition_status") if isinstance(failover, dict) else None
        found += failover_violations(
            _raw_channel(raw),
            failover is not None,
            condition if condition in ("delivered", "read") else None,
            index,
            index == len(steps) - 1,
        )
    return found


def _v1_rules(data: dict[str, Any], reported: list[InvalidParameter]) -> list[InvalidParameter]:
    """Cross-field rules of a v1 message and of each of its failover messages whose schema
    failed, on the messages that are valid enough to check."""
    found: list[InvalidParameter] = []
    top = _salvage(MessageV1, {k: v for k, v in data.items() if k != "failover"})
    if top is not None:
        found += _unreported(message_violations_v1(top), reported)
    failover = data.get("failover")
    if isinstance(failover, list) and len(failover) < MAX_STEPS:
        for index, raw in enumerate(failover):
            entry = _salvage(MessageV1, raw)
            if entry is not None:
                found += _unreported(message_violations_v1(entry, f"failover[{index}]."), reported)
    return found


def _raw_channel(raw: dict[str, Any]) -> Channel | None:
    to = raw.get("to")
    name = to.get("type") if isinstance(to, dict) else None
    return Channel(name) if isinstance(name, str) and name in set(Channel) else None


#: extra rule passes run on the untyped body when the typed decode fails, per request type
_PARTIAL_RULES: dict[
    type, Callable[[dict[str, Any], list[InvalidParameter]], list[InvalidParameter]]
] = {
    MessageRequest: _message_rules,
    WorkflowRequest: _workflow_step_rules,
    MessageRequestV1: _v1_rules,
}


class RequestDecoder(Generic[T]):
    """Decodes one request type strictly; raises InvalidRequest naming every bad field."""

    def __init__(self, kind: type[T], rules: Callable[[T], list[InvalidParameter]]) -> None:
        self._kind = kind
        self._decoder = msgspec.json.Decoder(kind)
        self._rules = rules
        self._info = _type_info(kind)

    def decode(self, body: bytes) -> T:
        """The typed request, or InvalidRequest (400) listing every problem."""
        try:
            value = self._decoder.decode(body)
        except msgspec.ValidationError:
            raise self._explain(body) from None  # the walker's report replaces msgspec's
        except _NOT_JSON as exc:
            raise _invalid_json(exc) from exc
        violations = self._rules(value)
        nul = holds_nul(body)
        if violations or nul:
            found = Found()
            if nul:
                nul_violations(msgspec.to_builtins(value), found)
            found.extend(violations)
            raise found.error()
        return value

    def _explain(self, body: bytes) -> InvalidRequest:
        # the typed decoder stops at the first wrong field, before it has read the rest of the
        # body, so the body may still turn out not to be JSON at all
        try:
            data = msgspec.json.decode(body)
        except _NOT_JSON as exc:
            return _invalid_json(exc)
        found = Found()
        if holds_nul(body):
            nul_violations(data, found)
        schema_violations(self._info, data, "", found)
        partial = _PARTIAL_RULES.get(self._kind)
        if partial is not None and isinstance(data, dict):
            found.extend(partial(data, found.items))
        if not found.total:  # msgspec saw a problem the walker does not model: say it its way
            try:
                msgspec.convert(data, self._kind)
            except msgspec.ValidationError as exc:
                found.add("body", str(exc))
        return found.error()


#: how decoding fails on a body that is not JSON we take: malformed, not UTF-8, nested too deeply
_NOT_JSON = (msgspec.DecodeError, UnicodeDecodeError, RecursionError)


def _invalid_json(exc: Exception) -> InvalidRequest:
    """The 400 for a body that is not JSON (malformed, not UTF-8, or nested too deeply)."""
    return InvalidRequest(
        "The request body is not valid JSON.",
        title="Invalid JSON",
        problem_type="https://developer.nexmo.com/api-errors#invalid-json",
        invalid_parameters=[InvalidParameter("body", str(exc))],
    )
