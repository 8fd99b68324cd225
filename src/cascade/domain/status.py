"""Message statuses in Nexmo's v0.1 vocabulary, and their order."""

from __future__ import annotations

from collections.abc import Sequence
from enum import StrEnum


class Status(StrEnum):
    """A message status as the v0.1 status webhook names it."""

    SUBMITTED = "submitted"  # handed to the provider
    DELIVERED = "delivered"  # the provider says it reached the device
    READ = "read"  # the recipient read it (messenger, whatsapp, viber only)
    REJECTED = "rejected"  # refused by us or the provider, or failed later; carries an error
    UNDELIVERABLE = "undeliverable"  # the provider could not be reached

    @property
    def is_failure(self) -> bool:
        """Whether this status ends the message without success."""
        return self in (Status.REJECTED, Status.UNDELIVERABLE)


#: the success ladder: a status only ever moves up it (docs/design.md §1.8)
SUCCESS_RANK = {Status.SUBMITTED: 1, Status.DELIVERED: 2, Status.READ: 3}


def reaches(status: Status | None, condition: str) -> bool:
    """Whether ``status`` satisfies a ``condition_status`` (``read`` satisfies ``delivered``)."""
    if status is None or status.is_failure:
        return False
    return SUCCESS_RANK[status] >= SUCCESS_RANK[Status(condition)]


def combine_parts(statuses: Sequence[Status | None]) -> Status | None:
    """The status of a message sent in parts (SMS segments, each with its own receipt) from its
    parts' latest statuses (None: no receipt yet); None while it is undecided.

    Any failed part fails the message (the first failed part's status decides, as its receipt
    says); the message is delivered when every part is; otherwise it is still undecided.
    """
    for status in statuses:
        if status is not None and status.is_failure:
            return status
    if statuses and all(status is Status.DELIVERED for status in statuses):
        return Status.DELIVERED
    return None
