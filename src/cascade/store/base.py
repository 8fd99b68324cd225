"""The storage seam: one interface, implemented on SQLite, PostgreSQL and in memory.

Everything durable goes through a :class:`Store`: tenants, accepted requests and, for the engine,
jobs and events. Implementations wrap their driver's errors into ``cascade.errors`` so nothing
above this layer imports a database module.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass

from cascade.domain.records import (
    Accepted,
    Account,
    Application,
    MessageRecord,
    NewWorkflow,
    WorkflowRecord,
)


class _Unset:
    """Marks an argument that was not given, as distinct from one given as None."""

    def __repr__(self) -> str:
        return "UNSET"


UNSET = _Unset()


@dataclass(frozen=True, slots=True)
class Job:
    """A unit of durable work: what to do, to which row, and when."""

    id: int
    kind: str
    ref: str
    run_at: float
    attempts: int


class Store(abc.ABC):
    """Durable state of a Cascade installation."""

    # --- lifecycle -------------------------------------------------------------------------

    @abc.abstractmethod
    async def open(self) -> None:
        """Connect and bring the schema up to date."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Finish pending writes and disconnect."""

    # --- tenancy ---------------------------------------------------------------------------

    @abc.abstractmethod
    async def create_account(self, account: Account) -> None:
        """Store a new account (StoreConflict if its id or api_key exists)."""

    @abc.abstractmethod
    async def get_account(self, account_id: str) -> Account | None:
        """The account with this id."""

    @abc.abstractmethod
    async def get_account_by_api_key(self, api_key: str) -> Account | None:
        """The account with this api_key (for Basic auth)."""

    @abc.abstractmethod
    async def list_accounts(self) -> list[Account]:
        """All accounts, oldest first."""

    @abc.abstractmethod
    async def update_account(
        self,
        account_id: str,
        *,
        status_url: str | _Unset | None = UNSET,
        inbound_url: str | _Unset | None = UNSET,
        signature_secret: str | _Unset = UNSET,
    ) -> Account:
        """Change the given fields of an account and return it (NotFound if absent)."""

    @abc.abstractmethod
    async def create_application(self, application: Application) -> None:
        """Store a new application."""

    @abc.abstractmethod
    async def get_application(self, application_id: str) -> Application | None:
        """The application with this id, whichever account owns it."""

    @abc.abstractmethod
    async def list_applications(self, account_id: str) -> list[Application]:
        """An account's applications, oldest first."""

    # --- the accept path -------------------------------------------------------------------

    @abc.abstractmethod
    async def accept(self, workflow: NewWorkflow) -> Accepted:
        """Durably store a request: workflow, steps, first send job (and its timer), in one
        transaction. With an idempotency claim whose key exists, store nothing and return the
        first response (IdempotencyConflict when the request differs)."""

    # --- reading back ----------------------------------------------------------------------

    @abc.abstractmethod
    async def get_workflow(self, account_id: str, workflow_id: str) -> WorkflowRecord | None:
        """A workflow of this account with its messages and timeline."""

    @abc.abstractmethod
    async def get_message(self, account_id: str, message_id: str) -> MessageRecord | None:
        """A message of this account."""

    @abc.abstractmethod
    async def pending_jobs(self, ref: str) -> list[Job]:
        """The jobs queued for one workflow or message (for tests and operators)."""
