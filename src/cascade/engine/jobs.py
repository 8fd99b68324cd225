"""The job kind seam: what the engine asks of each kind of job it runs.

The engine is built with its job kinds (docs/design.md §5): its own (``send``,
``step_timeout``, ``report_horizon``) and those given to it, such as the webhook sender's
``webhook``. It claims the jobs of the kinds its settings name (all by default), gives the due
jobs of each claimed batch to their kind's :meth:`JobKind.prefetch` at once, runs each job with
:meth:`JobKind.run`, and closes every kind after it stopped.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from cascade.store.base import Job


class JobKind(Protocol):
    """One kind of job the engine runs."""

    @property
    def name(self) -> str:
        """The kind of job it runs, as job rows name it (a ``JobKindName`` for Cascade's)."""

    async def run(self, job: Job) -> None:
        """Run one claimed job and end it in the store (finished, retried or deferred). An
        exception leaves the job in the table: it is claimed again when its lease runs out."""

    async def prefetch(self, jobs: Sequence[Job]) -> None:
        """Read what ``jobs``, the due jobs of this kind in a claimed batch, need in one query
        rather than one each, before they run. A failure is only logged: each job then reads
        for itself."""

    async def close(self) -> None:
        """Release what it holds open (e.g. connections); called once the engine stopped."""
