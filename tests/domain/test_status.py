"""Unit tests of the status rules: a message sent in parts takes its status from its parts'."""

from __future__ import annotations

import pytest

from cascade.domain.status import Status, combine_parts


@pytest.mark.parametrize(
    ("statuses", "combined"),
    [
        ([Status.DELIVERED, Status.DELIVERED, Status.DELIVERED], Status.DELIVERED),
        ([Status.DELIVERED, None, Status.DELIVERED], None),
        ([Status.DELIVERED, Status.REJECTED, None], Status.REJECTED),
        ([None, None, Status.REJECTED], Status.REJECTED),
        ([Status.SUBMITTED, Status.DELIVERED], None),
        ([None], None),
        ([], None),
    ],
)
def test_combine_parts(statuses: list[Status | None], combined: Status | None) -> None:
    """Any failed part fails the message; all delivered delivers it; otherwise undecided."""
    assert combine_parts(statuses) == combined


def test_the_first_failed_part_decides_the_failure() -> None:
    """Of two failed parts, the message takes the status of the first."""
    statuses = [Status.DELIVERED, Status.UNDELIVERABLE, Status.REJECTED]
    assert combine_parts(statuses) is Status.UNDELIVERABLE
