"""Prometheus metrics counted on hot paths, without ``labels`` on every count."""

from __future__ import annotations

from typing import Generic, Protocol, TypeVar

M = TypeVar("M", covariant=True)


class _Labelled(Protocol[M]):
    def labels(self, *values: str) -> M: ...


class Children(Generic[M]):
    """A labelled metric's children, each found once: ``metric.labels`` takes a lock and
    checks its arguments at every call, which costs three times the count itself, and a
    message is counted several times on its way."""

    __slots__ = ("_children", "_metric")

    def __init__(self, metric: _Labelled[M]) -> None:
        self._metric = metric
        self._children: dict[tuple[str, ...], M] = {}

    def __call__(self, *values: str) -> M:
        """The child of these label values (the one ``metric.labels(*values)`` gives)."""
        child = self._children.get(values)
        if child is None:
            child = self._children[values] = self._metric.labels(*values)
        return child
