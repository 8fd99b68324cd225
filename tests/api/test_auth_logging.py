"""What refused authentication writes to the log: clipped client values, at a bounded rate."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest

from cascade.api import auth
from cascade.api.auth import REFUSAL_LINES_PER_SECOND, Authenticator
from cascade.clock import FakeClock
from cascade.errors import Unauthorized
from cascade.log import (
    CLIENT_VALUE_CHARS,
    MAX_LOG_VALUE_CHARS,
    LogLimiter,
    clip,
    clip_long_values,
)
from cascade.store.sqlite import SqliteStore


class RecordingLog:
    """Stands in for the module's structlog logger and keeps what it was given."""

    def __init__(self) -> None:
        self.lines: list[tuple[str, dict[str, Any]]] = []

    def info(self, event: str, **values: Any) -> None:
        """Record one line."""
        self.lines.append((event, values))


@pytest.fixture
def recorded(monkeypatch: pytest.MonkeyPatch) -> RecordingLog:
    """The lines cascade.api.auth logs during the test."""
    recording = RecordingLog()
    monkeypatch.setattr(auth, "log", recording)
    return recording


def _token_for(application_id: str) -> str:
    """An unsigned-looking JWT whose payload names ``application_id``."""
    payload = json.dumps({"application_id": application_id}).encode()
    return (
        "eyJhbGciOiJSUzI1NiJ9." + base64.urlsafe_b64encode(payload).decode().rstrip("=") + ".c2ln"
    )


async def _refused(authenticator: Authenticator, header: str) -> None:
    with pytest.raises(Unauthorized):
        await authenticator.authenticate([header])


async def test_a_huge_unverified_application_id_is_clipped_in_the_log(
    sqlite_store: SqliteStore, clock: FakeClock, recorded: RecordingLog
) -> None:
    """A 1.3 MB application_id in an unverifiable JWT is logged as its first 64 characters."""
    authenticator = Authenticator(sqlite_store, clock)
    await _refused(authenticator, "Bearer " + _token_for("x" * 1_300_000))
    [(event, values)] = recorded.lines
    assert event == "auth.refused"
    assert values["application_id"] == "x" * CLIENT_VALUE_CHARS + "…"
    assert sum(len(str(value)) for value in values.values()) < 300


async def test_a_huge_scheme_is_clipped_in_the_log(
    sqlite_store: SqliteStore, clock: FakeClock, recorded: RecordingLog
) -> None:
    """An unknown Authorization scheme of 100 KB is logged clipped, its newlines replaced."""
    authenticator = Authenticator(sqlite_store, clock)
    await _refused(authenticator, "\nforged" + "y" * 100_000 + " credentials")
    [(_, values)] = recorded.lines
    assert len(values["scheme"]) == CLIENT_VALUE_CHARS + 1
    assert "\n" not in values["scheme"]


async def test_refusals_are_logged_at_a_bounded_rate_with_the_count_left_out(
    sqlite_store: SqliteStore, clock: FakeClock, recorded: RecordingLog
) -> None:
    """100 refusals within one second log 10 lines; the next second's first line says 90
    were left out."""
    authenticator = Authenticator(sqlite_store, clock)
    for n in range(100):
        await _refused(authenticator, "Bearer " + _token_for(f"unknown-{n}"))
    assert len(recorded.lines) == REFUSAL_LINES_PER_SECOND
    assert all("suppressed" not in values for _, values in recorded.lines)
    clock.advance(1.0)
    await _refused(authenticator, "Basic !!!")
    assert len(recorded.lines) == REFUSAL_LINES_PER_SECOND + 1
    assert recorded.lines[-1][1]["suppressed"] == str(100 - REFUSAL_LINES_PER_SECOND)


def test_clip_keeps_short_values_and_cuts_long_ones() -> None:
    """clip leaves a short value as it is and cuts a long one to the limit plus an ellipsis."""
    assert clip("abc") == "abc"
    assert clip("a" * 65) == "a" * 64 + "…"
    assert clip("a\r\nb") == "a??b"


def test_log_limiter_admits_per_second_and_reports_what_it_left_out() -> None:
    """Three per second: the 4th and 5th are left out, and the next second's first says 2."""
    clock = FakeClock(0.0)
    limiter = LogLimiter(3, clock.now)
    assert [limiter.admit() for _ in range(5)] == [0, 0, 0, None, None]
    clock.advance(1.0)
    assert limiter.admit() == 2
    assert limiter.admit() == 0


def test_every_long_log_value_is_cut_whatever_logged_it() -> None:
    """The logging pipeline's guard cuts any string value over 1,024 characters, noting its
    length, and leaves shorter ones alone."""
    event = {"event": "x", "path": "p" * 1_300_000, "short": "s" * 10}
    cut = clip_long_values(None, "info", event)
    assert cut["path"] == "p" * MAX_LOG_VALUE_CHARS + "… (1300000 chars)"
    assert cut["short"] == "s" * 10


class _NoLookups:
    """A store that fails the test if authentication asks it anything."""

    def __getattr__(self, name: str) -> Any:
        raise AssertionError(f"the store was asked {name}")


@pytest.mark.parametrize(
    "header",
    [
        "Basic " + base64.b64encode(b"ab\x00c:secret").decode(),
        "Basic " + base64.b64encode(b"k" * 65 + b":secret").decode(),
        "Basic " + base64.b64encode("kéy:secret".encode()).decode(),
        "Bearer e30."
        + base64.urlsafe_b64encode(json.dumps({"application_id": "a\x00b"}).encode()).decode()
        + ".sig",
    ],
)
async def test_implausible_ids_are_refused_before_the_store(header: str) -> None:
    """An api_key or application_id Cascade never issues (a NUL, which made PostgreSQL fail
    the lookup with a 503; too long; not ASCII) is a 401 without a store lookup."""
    authenticator = Authenticator(_NoLookups(), FakeClock())  # type: ignore[arg-type]
    with pytest.raises(Unauthorized):
        await authenticator.authenticate([header])
