"""Structured logging: key=value lines for people, JSON lines for machines."""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable, MutableMapping
from typing import Any

import structlog

#: how much of a value a client chose (an id, a header, a path) a log line quotes
CLIENT_VALUE_CHARS = 64
#: the longest string value any log line carries; longer ones are cut (a guard for values a
#: call site forgot to clip: a 1.3 MB header once became 1.3 MB of log per request)
MAX_LOG_VALUE_CHARS = 1024


def clip(value: object, limit: int = CLIENT_VALUE_CHARS) -> str:
    """``value`` as text fit to quote in a log line: at most ``limit`` characters (then "…"),
    control characters replaced by "?" so that a value cannot forge a line of its own."""
    text = str(value)
    cut = text[:limit]
    if not cut.isprintable():
        cut = "".join(ch if ch.isprintable() else "?" for ch in cut)
    return cut + "…" if len(text) > limit else cut


def clip_long_values(
    logger: Any, method_name: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """A structlog processor: cut every string value longer than MAX_LOG_VALUE_CHARS."""
    for key, value in event_dict.items():
        if isinstance(value, str) and len(value) > MAX_LOG_VALUE_CHARS:
            event_dict[key] = value[:MAX_LOG_VALUE_CHARS] + f"… ({len(value)} chars)"
    return event_dict


class LogLimiter:
    """Admits at most ``per_second`` lines of one kind per second, and counts the rest, so
    that a flood of bad requests cannot flood the log; the count of the lines left out is
    handed to the next line admitted."""

    def __init__(self, per_second: int, now: Callable[[], float] = time.monotonic) -> None:
        self._per_second = per_second
        self._now = now
        self._window_start = float("-inf")
        self._admitted = 0
        self._suppressed = 0

    def admit(self) -> int | None:
        """None: leave this line out; otherwise log it, quoting the number returned (lines
        left out since the last one admitted) when it is not 0."""
        now = self._now()
        if now - self._window_start >= 1.0:
            self._window_start = now
            self._admitted = 0
        if self._admitted >= self._per_second:
            self._suppressed += 1
            return None
        self._admitted += 1
        suppressed, self._suppressed = self._suppressed, 0
        return suppressed


def configure_logging(level: str = "info", fmt: str = "console") -> None:
    """Route structlog and the standard library (uvicorn) through one renderer on stderr."""
    renderer: structlog.types.Processor = (
        structlog.processors.JSONRenderer()
        if fmt == "json"
        else structlog.dev.ConsoleRenderer(
            colors=sys.stderr.isatty(),
            # plain tracebacks: rich ones print local variables, which may hold credentials
            exception_formatter=structlog.dev.plain_traceback,
        )
    )
    shared: list[structlog.types.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        clip_long_values,
    ]
    structlog.configure(
        # the level filter first: a debug line on a hot path (one per SMS sent) then costs a
        # level check, not a timestamp and a dict of context
        processors=[
            structlog.stdlib.filter_by_level,
            *shared,
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=shared,
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
