"""Signing in to the dashboard: the account's API key and secret, a session kept in the store,
the token every form carries, and a lockout after repeated failures.

The session cookie is a random token; the store keeps only its SHA-256, so a copy of the
database opens no browser session. Failed sign-ins are counted in the store per account, so
the lockout holds whichever node behind a load balancer a guess reaches.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from typing import Protocol

from cascade.api.auth import MAX_ID_LENGTH, hash_secret
from cascade.clock import Clock
from cascade.domain.records import Account
from cascade.store.base import DashboardSession, DashboardSessions, SignInFailures, Tenants

#: how long a session lasts from its sign-in
SESSION_SECONDS = 12 * 3600
#: failed sign-ins in a row (each within LOCKOUT_SECONDS of the one before) that lock an
#: account's sign-in
MAX_FAILURES = 5
#: how long a locked sign-in stays locked after the last failure
LOCKOUT_SECONDS = 15 * 60


class SessionStore(Tenants, DashboardSessions, Protocol):
    """What signing in uses of the store: accounts, and the dashboard's sessions."""


def token_digest(token: str) -> str:
    """The stored form of a session cookie."""
    return hashlib.sha256(token.encode()).hexdigest()


def locked_until(failures: SignInFailures | None, now: float) -> float | None:
    """When a sign-in locked by ``failures`` opens again; None when it is not locked."""
    if failures is None or failures.failures < MAX_FAILURES:
        return None
    until = failures.last_at + LOCKOUT_SECONDS
    return until if until > now else None


def same_token(expected: str, given: str | None) -> bool:
    """Whether a form's token is the expected one (compared in constant time)."""
    return given is not None and hmac.compare_digest(expected.encode(), given.encode())


class SignInRefused(Exception):
    """A sign-in that did not succeed: wrong credentials, or locked until a time."""

    def __init__(self, locked_until: float | None = None) -> None:
        super().__init__("locked" if locked_until is not None else "wrong api_key or api_secret")
        self.locked_until = locked_until


@dataclass(frozen=True, slots=True)
class SignedIn:
    """A browser's session and its account."""

    session: DashboardSession
    account: Account


class Sessions:
    """Signs browsers in and out, and finds the session of a cookie."""

    def __init__(self, store: SessionStore, clock: Clock) -> None:
        self._store = store
        self._clock = clock

    async def sign_in(self, api_key: str, api_secret: str) -> tuple[str, SignedIn]:
        """A new session for the account these credentials name: the cookie to set and the
        session. SignInRefused when they are wrong or the account's sign-in is locked."""
        now = self._clock.now()
        plausible = 0 < len(api_key) <= MAX_ID_LENGTH and api_key.isascii()
        plausible = plausible and api_key.isprintable()
        account = await self._store.get_account_by_api_key(api_key) if plausible else None
        if account is not None:
            until = locked_until(await self._store.sign_in_failures(account.id), now)
            if until is not None:
                raise SignInRefused(until)
        # compared even when the account is unknown, so timing does not tell which keys exist
        expected = account.api_secret_sha256 if account is not None else "0" * 64
        if not hmac.compare_digest(hash_secret(api_secret), expected) or account is None:
            if account is not None:
                counted = await self._store.note_sign_in_failure(
                    account.id, now, now - LOCKOUT_SECONDS
                )
                until = locked_until(counted, now)
                if until is not None:
                    raise SignInRefused(until)
            raise SignInRefused()
        if await self._store.sign_in_failures(account.id) is not None:
            await self._store.clear_sign_in_failures(account.id)
        token = secrets.token_urlsafe(32)
        session = DashboardSession(
            token_sha256=token_digest(token),
            account_id=account.id,
            csrf_token=secrets.token_urlsafe(32),
            created_at=now,
            expires_at=now + SESSION_SECONDS,
        )
        await self._store.create_dashboard_session(session, now)
        return token, SignedIn(session, account)

    async def current(self, token: str | None) -> SignedIn | None:
        """The session of a cookie and its account; None when there is none (or it ended)."""
        if not token or len(token) > 100:
            return None
        session = await self._store.get_dashboard_session(token_digest(token), self._clock.now())
        if session is None:
            return None
        account = await self._store.get_account(session.account_id)
        return None if account is None else SignedIn(session, account)

    async def sign_out(self, session: DashboardSession) -> None:
        """End a session."""
        await self._store.delete_dashboard_session(session.token_sha256)
