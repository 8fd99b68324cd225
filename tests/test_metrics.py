"""cascade.metrics: a labelled metric's children found once."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter

from cascade.metrics import Children


def test_children_are_the_metrics_own_and_count_into_it() -> None:
    """A child is the one ``labels`` gives for the same values, and counts land in the metric."""
    registry = CollectorRegistry()
    counter = Counter("cascade_test_children", "test", ["kind", "outcome"], registry=registry)
    children = Children(counter)
    children("send", "ok").inc()
    children("send", "ok").inc(2)
    children("send", "failed").inc()
    assert children("send", "ok") is counter.labels("send", "ok")
    assert (
        registry.get_sample_value("cascade_test_children_total", {"kind": "send", "outcome": "ok"})
        == 3
    )
    assert (
        registry.get_sample_value(
            "cascade_test_children_total", {"kind": "send", "outcome": "failed"}
        )
        == 1
    )
