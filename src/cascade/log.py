"""Structured logging: key=value lines for people, JSON lines for machines.

Most lines go through structlog's processors and renderers. Lines written once per request or
per workflow (the access log, a workflow accepted or finished) go through a :class:`HotLogger`,
which renders them itself in the same shape and writes them to the same stream: about 3 µs a
line where structlog's chain takes 50 to 90 µs, more than half of what a whole accepted
request costs (BENCHMARKS.md, "The access log").
"""

from __future__ import annotations

import asyncio
import logging
import re
import sys
import time
from collections.abc import Callable, Mapping, MutableMapping
from typing import Any, TextIO

import msgspec
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


#: characters that make the console renderer quote a string value (structlog's rule)
_NEEDS_QUOTES = re.compile("[ \t=\r\n\"']").search
#: JSON for a line: a value msgspec cannot encode is written as its str()
_json = msgspec.json.Encoder(enc_hook=str)
#: the keys of each kind of console line, sorted (as the console renderer orders them), each
#: with its "key=" label
_LABELS: dict[tuple[str, ...], tuple[tuple[str, str], ...]] = {}
#: the level column of a console line (structlog's ConsoleRenderer pads it to 9, the event to 30)
_LEVELS = {name: f"[{name:<9}]" for name in ("debug", "info", "warning", "error")}


class LineWriter:
    """Writes log lines in the shape the configured renderer gives them, without structlog's
    processor chain: a JSON object (the fields, then ``event``, ``level`` and ``timestamp``)
    or a console line (time, padded level, padded event, sorted ``key=value`` pairs, values
    quoted as structlog quotes them), values over MAX_LOG_VALUE_CHARS cut.

    Lines written on an event loop are written out together once per turn of the loop: one
    system call for all the lines of the requests answered in that turn, instead of one per
    line, each of which let the SQLite commit thread take the GIL in the middle of a request
    (BENCHMARKS.md, "The access log"). Lines written off a loop are written at once. A line
    that cannot be written (stderr closed) goes to ``handler``'s error path, as the standard
    library's handlers do, rather than break what is being logged."""

    __slots__ = (
        "_handler",
        "_json",
        "_pending",
        "_scheduled_on",
        "_second",
        "_second_text",
        "_stream",
    )

    def __init__(self, stream: TextIO, fmt: str, handler: logging.Handler | None = None) -> None:
        self._stream = stream
        self._handler = handler
        self._json = fmt == "json"
        self._second = -1
        self._second_text = ""
        #: lines waiting for the end of the loop's turn
        self._pending: list[str] = []
        #: the loop a flush of them is scheduled on (None: none is)
        self._scheduled_on: asyncio.AbstractEventLoop | None = None

    def _timestamp(self) -> str:
        """Now in ISO 8601 UTC with microseconds, as structlog's TimeStamper writes it (the
        date and time of the current second are formatted once a second)."""
        now = time.time()
        second = int(now)
        if second != self._second:
            self._second = second
            self._second_text = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        return f"{self._second_text}.{int((now - second) * 1e6):06d}Z"

    def write(self, level: str, event: str, fields: Mapping[str, Any]) -> None:
        """Write one line."""
        if self._json:
            line = dict(fields)
            for key, value in line.items():
                if isinstance(value, str) and len(value) > MAX_LOG_VALUE_CHARS:
                    line[key] = _cut(value)
            line["event"] = event
            line["level"] = level
            line["timestamp"] = self._timestamp()
            text = _json.encode(line).decode()
        else:
            keys = tuple(fields)
            labels = _LABELS.get(keys)
            if labels is None:  # a call site's keys are the same each time: sorted once
                labels = _LABELS[keys] = tuple((key, f"{key}=") for key in sorted(keys))
            parts = [self._timestamp(), _LEVELS.get(level) or f"[{level:<9}]", f"{event:<30}"]
            for key, label in labels:
                value = fields[key]
                if isinstance(value, str):
                    if len(value) > MAX_LOG_VALUE_CHARS:
                        value = _cut(value)
                    # repr() escapes a newline; a bare value has none (it would be quoted)
                    parts.append(label + (repr(value) if _NEEDS_QUOTES(value) else value))
                else:
                    parts.append(label + repr(value))
            text = " ".join(parts)
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # not on a loop: at once
            self._pending.append(text + "\n")
            self.flush()
            return
        self._pending.append(text + "\n")
        if self._scheduled_on is not loop:
            # the first line of this turn (or a loop that closed before its flush ran)
            self._scheduled_on = loop
            loop.call_soon(self.flush)

    def flush(self) -> None:
        """Write the lines waiting (the handler calls this before a line of its own, so that
        lines keep their order, and at exit)."""
        self._scheduled_on = None
        if not self._pending:
            return
        pending, self._pending = self._pending, []
        text = "".join(pending)
        try:
            self._stream.write(text)
        except Exception:
            if self._handler is None:
                raise
            self._handler.handleError(logging.makeLogRecord({"msg": text.rstrip("\n")}))


def _cut(value: str) -> str:
    return value[:MAX_LOG_VALUE_CHARS] + f"… ({len(value)} chars)"


class LogHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """The handler configure_logging installs on the root logger: a stream handler that also
    carries the :class:`LineWriter` of hot lines on the same stream (None on a console with
    colours, where a person reads and structlog renders everything). Hot lines follow it:
    when the root logger's handlers are replaced, they go through structlog again."""

    def __init__(self, stream: TextIO, fmt: str, *, colors: bool = False) -> None:
        super().__init__(stream)
        self.line_writer = None if colors else LineWriter(stream, fmt, self)

    def emit(self, record: logging.LogRecord) -> None:
        """Write a line rendered by structlog, after the hot lines written before it."""
        if self.line_writer is not None:
            self.line_writer.flush()
        super().emit(record)

    def flush(self) -> None:
        """Write the hot lines waiting, and flush the stream (also at exit: logging.shutdown
        flushes every handler)."""
        if self.line_writer is not None:
            self.line_writer.flush()
        super().flush()


def _line_writer() -> LineWriter | None:
    """The writer of hot lines: the one of the root logger's LogHandler, if it has one."""
    for handler in logging.root.handlers:
        if type(handler) is LogHandler:
            return handler.line_writer
    return None


class HotLogger:
    """A logger for lines on hot paths, one per request or per workflow: written by the
    :class:`LineWriter` of the handler configure_logging installed when there is one, else by
    structlog (before configure_logging, e.g. in tests, where structlog's testing helpers
    capture them). Level filtering is the standard library's, as for every other line."""

    __slots__ = ("_levels", "_structlog")

    def __init__(self, name: str) -> None:
        self._levels = logging.getLogger(name)
        self._structlog = structlog.get_logger(name)

    def info(self, event: str, **fields: Any) -> None:
        """Log at info."""
        self.info_fields(event, fields)

    def info_fields(self, event: str, fields: dict[str, Any]) -> None:
        """Log at info, the fields given as a dict (one copy fewer on the hottest lines)."""
        writer = _line_writer()
        if writer is None:
            self._structlog.info(event, **fields)
        elif self._levels.isEnabledFor(logging.INFO):
            writer.write("info", event, fields)

    def debug(self, event: str, **fields: Any) -> None:
        """Log at debug (a level check when debug is off)."""
        writer = _line_writer()
        if writer is None:
            self._structlog.debug(event, **fields)
        elif self._levels.isEnabledFor(logging.DEBUG):
            writer.write("debug", event, fields)

    def is_debug(self) -> bool:
        """Whether a debug line would be written (to skip building one that would not)."""
        return _line_writer() is None or self._levels.isEnabledFor(logging.DEBUG)

    def is_info(self) -> bool:
        """Whether an info line would be written (a service run at ``warning`` then builds no
        line per request)."""
        return _line_writer() is None or self._levels.isEnabledFor(logging.INFO)


def configure_logging(level: str = "info", fmt: str = "console") -> None:
    """Route structlog and the standard library (uvicorn) through one renderer on stderr, and
    hot lines (:class:`HotLogger`) through a :class:`LineWriter` on the same stream (when the
    console has colours, those go through structlog too: a person is reading)."""
    colors = fmt != "json" and sys.stderr.isatty()
    renderer: structlog.types.Processor = (
        structlog.processors.JSONRenderer()
        if fmt == "json"
        else structlog.dev.ConsoleRenderer(
            colors=colors,
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
    handler = LogHandler(sys.stderr, fmt, colors=colors)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=shared,
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
