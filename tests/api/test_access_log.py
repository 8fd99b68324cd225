"""The access log: one line per HTTP request with its method, path, status, duration, account
and request id (also returned as X-Request-Id), on unless turned off, cheap enough to keep on,
in the console and the JSON format."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import re
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import httpx
import pytest
import structlog
from structlog.testing import capture_logs

from cascade import log as cascade_log
from cascade.api.app import create_app
from cascade.clock import FakeClock
from cascade.config import Settings
from cascade.log import HotLogger, LineWriter, LogHandler, configure_logging
from cascade.store.sqlite import SqliteStore
from tests.api.support import message
from tests.conftest import Tenant


@pytest.fixture
async def quiet_client(
    sqlite_store: SqliteStore, clock: FakeClock
) -> AsyncIterator[httpx.AsyncClient]:
    """A client of an app whose access log is turned off."""
    app = create_app(sqlite_store, clock=clock, access_log=False)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://cascade.test") as http:
        yield http


def _access_lines(logs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [entry for entry in logs if entry["event"] == "http.request"]


async def test_each_request_is_one_line_naming_its_account_and_request_id(
    client: httpx.AsyncClient, tenant: Tenant
) -> None:
    """An accepted POST logs method, path, status, duration, account and the request id the
    response carries in X-Request-Id; a refused GET logs its status and no account."""
    with capture_logs() as logs:
        accepted = await client.post(
            "/v0.1/messages?api_secret=hunter2",
            json=message("sms"),
            headers=tenant.bearer(),
        )
        refused = await client.get("/v0.1/dispatch")
    assert accepted.status_code == 202
    assert refused.status_code == 401
    first, second = _access_lines(logs)
    assert first["log_level"] == "info"
    assert first["method"] == "POST"
    assert first["path"] == "/v0.1/messages"
    assert first["status"] == 202
    assert first["account"] == tenant.account.id
    assert isinstance(first["duration_ms"], float)
    assert first["duration_ms"] >= 0
    assert first["request_id"] == accepted.headers["x-request-id"]
    assert (second["method"], second["path"], second["status"]) == ("GET", "/v0.1/dispatch", 401)
    assert "account" not in second
    assert second["request_id"] == refused.headers["x-request-id"]
    assert first["request_id"] != second["request_id"]
    assert "hunter2" not in repr(logs)


async def test_a_request_id_the_client_sent_is_kept_and_a_bad_one_replaced(
    client: httpx.AsyncClient,
) -> None:
    """A sane X-Request-Id (from a proxy in front) is logged and returned; one with spaces or
    over 64 characters is replaced by one of ours."""
    with capture_logs() as logs:
        kept = await client.get("/health", headers={"X-Request-Id": "edge-7f3a.1"})
        long = await client.get("/health", headers={"X-Request-Id": "x" * 65})
        spaced = await client.get("/health", headers={"X-Request-Id": "a b"})
    assert kept.headers["x-request-id"] == "edge-7f3a.1"
    assert long.headers["x-request-id"] != "x" * 65
    assert spaced.headers["x-request-id"] != "a b"
    assert [line["request_id"] for line in _access_lines(logs)] == [
        "edge-7f3a.1",
        long.headers["x-request-id"],
        spaced.headers["x-request-id"],
    ]


async def test_unknown_paths_and_methods_are_logged_with_their_status(
    client: httpx.AsyncClient,
) -> None:
    """A 404 and a 405 are logged like any request."""
    with capture_logs() as logs:
        await client.get("/nowhere")
        await client.delete("/v0.1/messages")
    assert [(line["path"], line["status"]) for line in _access_lines(logs)] == [
        ("/nowhere", 404),
        ("/v0.1/messages", 405),
    ]


async def test_turned_off_it_logs_nothing_but_still_returns_a_request_id(
    quiet_client: httpx.AsyncClient,
) -> None:
    """With the access log off there is no line per request; X-Request-Id is still sent."""
    with capture_logs() as logs:
        response = await quiet_client.get("/health")
    assert response.headers["x-request-id"]
    assert _access_lines(logs) == []


def test_the_setting_turns_it_off(monkeypatch: pytest.MonkeyPatch) -> None:
    """CASCADE_ACCESS_LOG defaults to on, and false turns it off."""
    assert Settings().access_log is True
    monkeypatch.setenv("CASCADE_ACCESS_LOG", "false")
    assert Settings().access_log is False


@pytest.fixture
def info_level() -> Iterator[None]:
    """The ``cascade`` loggers at info for the test."""
    logger = logging.getLogger("cascade")
    before = logger.level
    logger.setLevel(logging.INFO)
    yield
    logger.setLevel(before)


@pytest.fixture
def written(info_level: None) -> Iterator[Callable[[], str]]:
    """What the root logger's LogHandler (as configure_logging installs it, in JSON) wrote
    so far into a buffer, flushed; the handler is removed afterwards."""
    stream = io.StringIO()
    handler = LogHandler(stream, "json")
    logging.root.addHandler(handler)

    def read() -> str:
        handler.flush()
        return stream.getvalue()

    yield read
    logging.root.removeHandler(handler)


async def test_the_line_is_written_in_the_configured_format(
    client: httpx.AsyncClient, tenant: Tenant, written: Callable[[], str]
) -> None:
    """Through the log's own writer, a request is one JSON line with every field, its event,
    level and time."""
    response = await client.get("/v0.1/dispatch", headers=tenant.basic())
    lines = [json.loads(line) for line in written().splitlines()]
    [line] = [entry for entry in lines if entry["event"] == "http.request"]
    assert line["level"] == "info"
    assert line["status"] == 200
    assert line["account"] == tenant.account.id
    assert line["request_id"] == response.headers["x-request-id"]
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z", line["timestamp"])


def test_console_lines_look_like_the_console_renderer() -> None:
    """A console line is time, padded level, padded event, then sorted key=value pairs,
    quoting values with spaces or quotes, as structlog's ConsoleRenderer writes them."""
    stream = io.StringIO()
    LineWriter(stream, "console").write(
        "info", "http.request", {"status": 202, "path": "/a b", "account": None, "m": "POST"}
    )
    line = stream.getvalue()
    assert line.endswith("\n")
    stamp, rest = line.rstrip("\n").split(" ", 1)
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z", stamp)
    assert rest == (
        "[info     ] http.request                   account=None m=POST path='/a b' status=202"
    )


async def test_lines_on_the_loop_go_out_together_at_the_end_of_its_turn_in_order() -> None:
    """Hot lines written during one turn of the event loop reach the stream in one write once
    the turn ends, in order; a line through structlog's handler path first writes those
    waiting, so the log keeps the order things happened in."""
    writes: list[str] = []

    class Recording(io.StringIO):
        """A stream that notes each write."""

        def write(self, text: str) -> int:
            writes.append(text)
            return super().write(text)

    handler = LogHandler(Recording(), "console")
    writer = handler.line_writer
    assert writer is not None
    writer.write("info", "one", {})
    writer.write("info", "two", {})
    assert writes == []
    await asyncio.sleep(0)
    assert len(writes) == 1
    assert [line.split()[-1] for line in writes[0].splitlines()] == ["one", "two"]
    writer.write("info", "three", {})
    handler.emit(logging.makeLogRecord({"msg": "four"}))
    assert "three" in writes[1]
    assert writes[2].startswith("four")


def test_long_values_are_cut_and_control_characters_cannot_forge_a_line() -> None:
    """A value over the log's limit is cut, and a newline in a value stays inside its line."""
    stream = io.StringIO()
    writer = LineWriter(stream, "console")
    writer.write("info", "x", {"v": "a\nforged line " + "y" * 5000})
    assert stream.getvalue().count("\n") == 1
    assert len(stream.getvalue()) < cascade_log.MAX_LOG_VALUE_CHARS + 200
    stream = io.StringIO()
    LineWriter(stream, "json").write("info", "x", {"v": "y" * 5000})
    assert len(json.loads(stream.getvalue())["v"]) < cascade_log.MAX_LOG_VALUE_CHARS + 50


def test_configure_logging_sends_hot_lines_through_its_writer(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """After configure_logging (JSON, info), a hot line reaches stderr as JSON and a debug one
    is left out."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    try:
        configure_logging("info", "json")
        hot = HotLogger("cascade.test_access_log")
        hot.debug("not.shown", n=1)
        hot.info("shown", n=2, who="me")
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)
        structlog.reset_defaults()
    [line] = [json.loads(text) for text in capsys.readouterr().err.splitlines()]
    assert (line["event"], line["n"], line["who"], line["level"]) == ("shown", 2, "me", "info")
    # with the handlers restored, hot lines go through structlog again
    with capture_logs() as logs:
        HotLogger("cascade.test_access_log").info("captured")
    assert [entry["event"] for entry in logs] == ["captured"]


def test_a_line_that_cannot_be_written_does_not_break_the_caller(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """When the log's stream is closed, writing a hot line reports the error as the standard
    library's handlers do (on stderr) instead of raising into the request or the engine."""
    stream = io.StringIO()
    handler = LogHandler(stream, "console")
    stream.close()
    assert handler.line_writer is not None
    handler.line_writer.write("info", "lost", {"n": 1})
    assert "Logging error" in capsys.readouterr().err


async def test_at_warning_an_accept_writes_no_line(
    client: httpx.AsyncClient, tenant: Tenant, written: Callable[[], str]
) -> None:
    """With the ``cascade`` loggers at warning (as the benchmarks run), an accepted request
    writes neither its access line nor its accepted line, and info lines are known to be off."""
    logging.getLogger("cascade").setLevel(logging.WARNING)
    assert not HotLogger("cascade.api.access").is_info()
    response = await client.post("/v0.1/messages", json=message("sms"), headers=tenant.bearer())
    assert response.status_code == 202
    assert response.headers["x-request-id"]
    assert written() == ""
    logging.getLogger("cascade").setLevel(logging.INFO)
    assert HotLogger("cascade.api.access").is_info()
    await client.post("/v0.1/messages", json=message("sms"), headers=tenant.bearer())
    events = {json.loads(line)["event"] for line in written().splitlines()}
    assert {"http.request", "message.accepted"} <= events
