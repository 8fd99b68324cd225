"""``cascade status``: which database and configuration file a command uses, and what the
database holds (its schema version against this release's, accounts, queued jobs, webhooks).

It only reads: a SQLite file that is not there is an error naming it (never created), and
the database is opened without migrating, so an old schema is reported as it is.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from cascade.config import Settings, read_config_file
from cascade.errors import ConfigError
from cascade.service import open_store, redacted_url, sqlite_file
from cascade.store.base import StoreOverview


async def _overview(settings: Settings) -> StoreOverview:
    """What the database holds, read without migrating it."""
    store = open_store(settings.database_url, settings, existing=True)
    await store.open(migrate=False)
    try:
        return await store.overview()
    finally:
        await store.close()


def status_report(settings: Settings) -> dict[str, Any]:
    """The status of the database and configuration ``settings`` name, as ``--json`` prints
    it; ConfigError or StoreUnavailable when the database is missing or does not answer."""
    url = settings.database_url
    overview = asyncio.run(_overview(settings))
    path = sqlite_file(url)
    counted = overview.accounts is not None
    return {
        "database": {
            "url": redacted_url(url),
            "kind": "sqlite" if path is not None else "postgresql",
            "file": str(Path(path).resolve()) if path is not None else None,
        },
        "schema": {
            "version": max(overview.applied) if overview.applied else None,
            "applied": list(overview.applied),
            "expected": list(overview.expected),
            "missing": list(overview.missing),
            "unknown": list(overview.unknown),
            "up_to_date": not overview.missing and not overview.unknown,
        },
        "accounts": overview.accounts,
        "jobs": {"queued": overview.jobs, "due": overview.jobs_due} if counted else None,
        "webhooks": (
            {"pending": overview.pending_webhooks, "dead": overview.dead_webhooks}
            if counted
            else None
        ),
        "config_file": _config_file(settings.config_file),
        "env_file": str(Path(".env").resolve()) if Path(".env").is_file() else None,
    }


def _config_file(path: Path | None) -> dict[str, Any] | None:
    """The provider settings file in use: its tables, or why it cannot be read."""
    if path is None:
        return None
    try:
        tables = sorted(read_config_file(path))
    except ConfigError as exc:
        return {"path": str(path.resolve()), "tables": [], "error": str(exc)}
    return {"path": str(path.resolve()), "tables": tables, "error": None}


def render_status(report: dict[str, Any]) -> str:
    """A status report as lines for a person."""
    database = report["database"]
    where = (
        f"{database['file']} (SQLite)"
        if database["kind"] == "sqlite"
        else f"{database['url']} (PostgreSQL)"
    )
    lines = [f"database:     {where}", f"schema:       {_schema(report['schema'])}"]
    if report["accounts"] is not None:
        jobs, webhooks = report["jobs"], report["webhooks"]
        lines += [
            f"accounts:     {report['accounts']}",
            f"jobs:         {jobs['queued']} queued, {jobs['due']} due now",
            f"webhooks:     {webhooks['pending']} pending, {webhooks['dead']} dead",
        ]
    config = report["config_file"]
    if config is None:
        lines.append("config file:  none (every channel uses the sandbox)")
    elif config["error"] is not None:
        lines.append(f"config file:  {config['path']}: {config['error']}")
    else:
        tables = ", ".join(f"[{name}]" for name in config["tables"]) or "no tables"
        lines.append(f"config file:  {config['path']} ({tables})")
    if report["env_file"] is not None:
        lines.append(f"settings:     also read from {report['env_file']}")
    return "\n".join(lines)


def _schema(schema: dict[str, Any]) -> str:
    """The schema line: up to date, behind (and what to run), not created, or newer."""
    if schema["version"] is None:
        return "not created: run `cascade db upgrade` (or start `cascade serve`)"
    if schema["unknown"]:
        unknown = ", ".join(f"{version:04d}" for version in schema["unknown"])
        return (
            f"version {schema['version']}, newer than this release (migrations {unknown} "
            "unknown to it): upgrade Cascade"
        )
    if schema["missing"]:
        missing = ", ".join(f"{version:04d}" for version in schema["missing"])
        return (
            f"version {schema['version']}, behind this release (missing {missing}): run "
            "`cascade db upgrade`"
        )
    return f"up to date (version {schema['version']})"
