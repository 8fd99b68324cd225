"""Connection limits of `cascade serve`: head deadline, head size cap, idle bound, connection cap.

Each server here is a real `cascade serve` process on 127.0.0.1 with short limits, started with
a soft and hard limit of 256 open files (as a small container might have), so that the
connection cap is tested against an actual file limit. The clients are raw sockets: what is
tested is what a hostile client can do with bytes, not what an HTTP library would send.
"""

from __future__ import annotations

import base64
import json
import math
import resource
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import closing, suppress
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from cascade.api.server import REFUSAL_LINES_PER_SECOND, RESERVED_FILES, connection_limits
from cascade.config import Settings
from tests.running import cascade_env

CASCADE = str(Path(sys.executable).with_name("cascade"))
#: the server's file limit (soft and hard): the cap must keep idle sockets below it
FILE_LIMIT = 256
#: a head deadline and idle bound short enough for a test, long enough for a loaded machine
#: to send a head in time
SHORT = 0.5
#: how long a test waits for the server to close a connection before calling it open for good
PATIENCE = 4.0
#: no log line may be longer than this
LONGEST_LOG_LINE = 2000


@dataclass
class Server:
    """A running `cascade serve` and where its log goes."""

    process: subprocess.Popen[bytes]
    port: int
    log: Path

    def connect(self) -> socket.socket:
        """A new TCP connection to the server."""
        return socket.create_connection(("127.0.0.1", self.port), timeout=PATIENCE)

    def log_lines(self) -> list[str]:
        """The server's log so far."""
        return self.log.read_text(errors="replace").splitlines()


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _small_file_limit() -> None:
    resource.setrlimit(resource.RLIMIT_NOFILE, (FILE_LIMIT, FILE_LIMIT))


def start_server(directory: Path, **settings: str) -> Iterator[Server]:
    """Run `cascade serve` (API only, SQLite) with ``settings`` as CASCADE_* variables until
    the generator is closed."""
    port = free_port()
    env = cascade_env()
    env.update(
        CASCADE_DATABASE_URL=f"sqlite:///{directory / 'cascade.db'}",
        CASCADE_SQLITE_SYNCHRONOUS="NORMAL",
        CASCADE_RUN_WORKER="false",
        # the limits are each process's: one API process, so one process meets them all
        CASCADE_PROCESSES="1",
        CASCADE_LOG_FORMAT="json",
        **{f"CASCADE_{name.upper()}": value for name, value in settings.items()},
    )
    log = directory / "serve.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [CASCADE, "serve", "--host", "127.0.0.1", "--port", str(port)],
            env=env,
            cwd=directory,
            stdout=out,
            stderr=subprocess.STDOUT,
            preexec_fn=_small_file_limit,
        )
    server = Server(process, port, log)
    try:
        deadline = time.monotonic() + 30
        while True:
            with suppress(httpx.HTTPError):
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                    break
            if process.poll() is not None or time.monotonic() > deadline:
                pytest.fail("cascade serve did not start:\n" + log.read_text(errors="replace"))
            time.sleep(0.05)
        yield server
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=5)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """A server with a 0.5 s head deadline and idle bound, and the default 16 KiB head cap."""
    yield from start_server(
        tmp_path_factory.mktemp("short"),
        http_head_timeout_seconds=str(SHORT),
        http_keepalive_timeout_seconds=str(SHORT),
    )


@pytest.fixture(scope="module")
def patient_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """A server whose head deadline (60 s) outlasts the test: only the connection cap can
    keep idle sockets from using up its 256 files."""
    yield from start_server(
        tmp_path_factory.mktemp("patient"),
        http_head_timeout_seconds="60",
        http_keepalive_timeout_seconds="60",
    )


def closed_by_server(sock: socket.socket) -> bool:
    """Whether the server closes ``sock`` within PATIENCE seconds (reading what it sends)."""
    sock.settimeout(PATIENCE)
    try:
        while sock.recv(65536):
            pass
    except TimeoutError:
        return False
    except ConnectionResetError:
        return True
    return True


def read_response(sock: socket.socket) -> bytes:
    """One HTTP response's head and its Content-Length body."""
    sock.settimeout(PATIENCE)
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, f"closed before a complete response: {data!r}"
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = next(
        int(line.split(b":", 1)[1])
        for line in head.split(b"\r\n")
        if line.lower().startswith(b"content-length:")
    )
    while len(body) < length:
        body += sock.recv(65536)
    return head + b"\r\n\r\n" + body


def test_a_connection_that_sends_nothing_is_closed_after_the_head_deadline(
    server: Server,
) -> None:
    """A new connection that sends no request is closed once the head deadline passes."""
    with closing(server.connect()) as sock:
        assert closed_by_server(sock)


def test_a_partial_head_is_closed_after_the_head_deadline(server: Server) -> None:
    """A connection that sends part of a request head and then waits is closed."""
    with closing(server.connect()) as sock:
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: cascade.test\r\n")
        assert closed_by_server(sock)


def test_a_head_sent_a_byte_at_a_time_is_closed_after_the_head_deadline(server: Server) -> None:
    """Slowloris: a head trickled one byte every 50 ms never completes and is cut off."""
    trickle = b"GET /health HTTP/1.1\r\nHost: cascade.test\r\n" + b"X-Slow: " + b"a" * 10_000
    with closing(server.connect()) as sock:
        sock.settimeout(0.05)
        until = time.monotonic() + PATIENCE
        for byte in trickle:
            try:
                sock.sendall(bytes([byte]))
                if sock.recv(65536) == b"":
                    break
            except TimeoutError:
                continue
            except (BrokenPipeError, ConnectionResetError):
                break
            assert time.monotonic() < until, "the server kept a trickled head open"
        else:
            pytest.fail("the server read a whole trickled head")
        assert time.monotonic() < until, "the server kept a trickled head open"


def test_an_idle_keep_alive_connection_is_closed_after_the_bound(server: Server) -> None:
    """After a response, a keep-alive connection that sends nothing more is closed."""
    with closing(server.connect()) as sock:
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: cascade.test\r\n\r\n")
        assert read_response(sock).startswith(b"HTTP/1.1 200")
        assert closed_by_server(sock)


def test_a_keep_alive_connection_serves_requests_within_the_bounds(server: Server) -> None:
    """Requests sent in time on one connection are all answered (the limits cut only idlers)."""
    with closing(server.connect()) as sock:
        for _ in range(3):
            sock.sendall(b"GET /health HTTP/1.1\r\nHost: cascade.test\r\n\r\n")
            assert read_response(sock).startswith(b"HTTP/1.1 200")


def test_a_head_over_the_cap_gets_431(server: Server) -> None:
    """A 20 KB request head (16 KiB cap) is answered 431 and the connection closed."""
    head = b"GET /health HTTP/1.1\r\nHost: cascade.test\r\nX-Pad: " + b"a" * 20_000 + b"\r\n\r\n"
    with closing(server.connect()) as sock:
        sock.sendall(head)
        response = read_response(sock)
        assert response.startswith(b"HTTP/1.1 431 ")
        assert json.loads(response.partition(b"\r\n\r\n")[2])["title"] == (
            "Request Header Fields Too Large"
        )
        assert closed_by_server(sock)


def test_a_head_just_under_the_cap_is_served(server: Server) -> None:
    """A 15 KB head is under the 16 KiB cap and gets its answer."""
    head = b"GET /health HTTP/1.1\r\nHost: cascade.test\r\nX-Pad: " + b"a" * 15_000 + b"\r\n\r\n"
    with closing(server.connect()) as sock:
        sock.sendall(head)
        assert read_response(sock).startswith(b"HTTP/1.1 200")


def test_a_huge_authorization_header_is_refused_and_leaves_no_long_log_line(
    server: Server,
) -> None:
    """A 1.3 MB Bearer token (its application_id 1.3 MB) is cut off at the head cap, and no
    line of the server's log grows with it."""
    payload = base64.urlsafe_b64encode(json.dumps({"application_id": "a" * 1_000_000}).encode())
    token = b"eyJhbGciOiJSUzI1NiJ9." + payload.rstrip(b"=") + b".c2ln"
    head = (
        b"POST /v0.1/messages HTTP/1.1\r\nHost: cascade.test\r\nContent-Length: 2\r\n"
        b"Authorization: Bearer " + token + b"\r\n\r\n{}"
    )
    closed = []
    for _ in range(3):
        with closing(server.connect()) as sock:
            with suppress(BrokenPipeError, ConnectionResetError):
                sock.sendall(head)
            closed.append(closed_by_server(sock))
    # the server is still serving, and the log it wrote meanwhile is short
    assert httpx.get(f"http://127.0.0.1:{server.port}/health", timeout=PATIENCE).status_code == 200
    longest = max(len(line) for line in server.log_lines())
    assert longest <= LONGEST_LOG_LINE
    assert all(closed)


def test_idle_sockets_beyond_the_file_limit_do_not_lock_out_a_request(
    patient_server: Server,
) -> None:
    """300 idle connections to a server allowed 256 files: a new request is still answered
    (the oldest idle connections are closed to make room), and it is not left to
    accept() failing for want of a file."""
    idle = []
    try:
        for _ in range(300):
            idle.append(patient_server.connect())
        with closing(patient_server.connect()) as sock:
            sock.sendall(b"GET /health HTTP/1.1\r\nHost: cascade.test\r\n\r\n")
            assert read_response(sock).startswith(b"HTTP/1.1 200")
    finally:
        for sock in idle:
            sock.close()
    assert any('"http.connections_full"' in line for line in patient_server.log_lines())


def test_the_connection_cap_stays_below_the_file_limit() -> None:
    """The cap is the setting, or the file limit less the reserve when that is lower."""
    settings = Settings(http_max_connections=4096, postgres_pool_size=16)
    assert connection_limits(settings, 1024).max_connections == 1024 - RESERVED_FILES - 16
    assert connection_limits(settings, 1_048_576).max_connections == 4096


def test_a_flood_of_invalid_requests_is_logged_at_a_bounded_rate(server: Server) -> None:
    """50 requests that are not HTTP each get 400, and the log says so a few times a second
    at most, not 50 times."""
    before = len(server.log_lines())
    started = time.monotonic()
    for _ in range(50):
        with closing(server.connect()) as sock:
            sock.sendall(b"\x16\x03\x01 not http\r\n\r\n")
            assert read_response(sock).startswith(b"HTTP/1.1 400")
    seconds = math.ceil(time.monotonic() - started)
    lines = server.log_lines()[before:]
    logged = [line for line in lines if "invalid" in line.lower()]
    assert 1 <= len(logged) <= REFUSAL_LINES_PER_SECOND * (seconds + 1)


def test_a_pipelined_head_over_the_cap_gets_431(server: Server) -> None:
    """A 20 KB head sent in the same write as a small request before it is refused too (it
    begins inside the read that ends the first request)."""
    small = b"GET /health HTTP/1.1\r\nHost: cascade.test\r\n\r\n"
    large = b"GET /health HTTP/1.1\r\nHost: cascade.test\r\nX-Pad: " + b"a" * 20_000 + b"\r\n\r\n"
    with closing(server.connect()) as sock:
        sock.sendall(small + large)
        received = b""
        sock.settimeout(PATIENCE)
        with suppress(ConnectionResetError, TimeoutError):
            while chunk := sock.recv(65536):
                received += chunk
    assert b"HTTP/1.1 431 " in received
    assert b"HTTP/1.1 200 " not in received.partition(b"HTTP/1.1 431 ")[2]
