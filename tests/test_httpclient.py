"""The webhook HTTP client against a raw server on 127.0.0.1 that answers each request with
scripted bytes: keep-alive reuse, every way an answer can end, and every way it can break.
Each test runs on asyncio's loop and on uvloop (the service's), whose transports differ."""

from __future__ import annotations

import asyncio
import socket
import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from cascade.errors import PeerUnreachable
from cascade.httpclient import HttpClient, parse_url
from cascade.reach import AddressRule, parse_networks
from tests.tls import make_certificate

NO_CONTENT = b"HTTP/1.1 204 No Content\r\nContent-Length: 0\r\n\r\n"
JSON = (("Content-Type", "application/json"),)

#: what the server does with one request: the bytes to answer (None: close without a word)
Answer = bytes | None


@dataclass
class RawServer:
    """Reads whole requests (head plus Content-Length body) and answers from a script."""

    script: list[Answer] = field(default_factory=list)
    default: Answer = NO_CONTENT
    #: seconds to wait before each answer
    delay: float = 0.0
    connections: int = 0
    requests: list[bytes] = field(default_factory=list)
    port: int = 0
    _server: asyncio.Server | None = None
    _writers: list[asyncio.StreamWriter] = field(default_factory=list)

    async def start(self, ssl_context: ssl.SSLContext | None = None) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0, ssl=ssl_context)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        assert self._server is not None
        self._server.close()
        for writer in self._writers:
            writer.close()
        await self._server.wait_closed()

    def url(self, scheme: str = "http", path: str = "/hook") -> str:
        return f"{scheme}://127.0.0.1:{self.port}{path}"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self._writers.append(writer)
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":", 1)[1])
                self.requests.append(head + await reader.readexactly(length))
                answer = self.script.pop(0) if self.script else self.default
                if answer is None:
                    break
                if self.delay:
                    await asyncio.sleep(self.delay)
                writer.write(answer)
                await writer.drain()
                if b"connection: close" in answer.lower() or answer.startswith(b"HTTP/1.0"):
                    break
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


@pytest.fixture
async def server() -> AsyncIterator[RawServer]:
    raw = RawServer()
    await raw.start()
    yield raw
    await raw.stop()


@pytest.fixture
async def client() -> AsyncIterator[HttpClient]:
    http = HttpClient(user_agent="Cascade-Test", max_body=16)
    yield http
    await http.close()


async def test_requests_to_one_destination_reuse_one_connection(
    server: RawServer, client: HttpClient
) -> None:
    """Three POSTs in a row go over one keep-alive connection, each whole and in order."""
    target = parse_url(server.url())
    for n in range(3):
        response = await client.post(target, b'{"n":%d}' % n, JSON)
        assert response.status == 204
    assert server.connections == 1
    bodies = [request.split(b"\r\n\r\n", 1)[1] for request in server.requests]
    assert bodies == [b'{"n":0}', b'{"n":1}', b'{"n":2}']
    head = server.requests[0].split(b"\r\n\r\n")[0].decode()
    assert head.startswith("POST /hook HTTP/1.1\r\n")
    assert f"Host: 127.0.0.1:{server.port}" in head
    assert "User-Agent: Cascade-Test" in head
    assert "Content-Length: 7" in head
    assert "Content-Type: application/json" in head


async def test_connection_close_in_an_answer_retires_the_connection(
    server: RawServer, client: HttpClient
) -> None:
    """After an answer saying Connection: close, the next request opens a new connection."""
    server.script = [b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok"]
    target = parse_url(server.url())
    first = await client.post(target, b"{}", JSON)
    second = await client.post(target, b"{}", JSON)
    assert (first.status, first.body, second.status) == (200, b"ok", 204)
    assert server.connections == 2


async def test_a_chunked_answer_is_read_to_its_end_and_its_body_capped(
    server: RawServer, client: HttpClient
) -> None:
    """A chunked body longer than max_body keeps its first bytes; the connection is reused."""
    chunks = b"".join(b"%x\r\n%s\r\n" % (10, b"0123456789") for _ in range(3))
    server.script = [
        b"HTTP/1.1 500 Oops\r\nTransfer-Encoding: chunked\r\nRetry-After: 7\r\n\r\n"
        + chunks
        + b"0\r\n\r\n"
    ]
    target = parse_url(server.url())
    response = await client.post(target, b"{}", JSON)
    assert response.status == 500
    assert response.body == b"0123456789012345"  # max_body is 16
    assert response.headers == {"retry-after": "7"}
    assert (await client.post(target, b"{}", JSON)).status == 204
    assert server.connections == 1


async def test_an_answer_without_a_length_ends_with_the_connection(
    server: RawServer, client: HttpClient
) -> None:
    """An HTTP/1.0-style answer whose body runs until the close is a whole answer."""
    server.script = [b"HTTP/1.0 200 OK\r\nLocation: /x\r\n\r\nbody until close"]
    response = await client.post(parse_url(server.url()), b"{}", JSON)
    assert (response.status, response.body, response.headers) == (
        200,
        b"body until close",
        {"location": "/x"},
    )
    assert client.open_connections == 0


async def test_an_interim_100_answer_is_skipped_for_the_final_one(
    server: RawServer, client: HttpClient
) -> None:
    """A 100 Continue before the real answer is not taken for the answer."""
    server.script = [b"HTTP/1.1 100 Continue\r\n\r\n" + NO_CONTENT]
    response = await client.post(parse_url(server.url()), b"{}", JSON)
    assert response.status == 204


async def test_an_idle_connection_closed_by_the_receiver_is_replaced_unseen(
    server: RawServer, client: HttpClient
) -> None:
    """When the receiver closed the kept connection, the request goes on a new one."""
    target = parse_url(server.url())
    await client.post(target, b"{}", JSON)
    server.script = [None]  # the next request on the old connection finds it closed
    response = await client.post(target, b"{}", JSON)
    assert response.status == 204
    assert server.connections == 2


async def test_a_request_that_must_not_repeat_is_not_resent_on_a_stale_connection(
    server: RawServer, client: HttpClient
) -> None:
    """With ``resend_on_stale`` false, a kept connection closed without an answer fails the
    request as sent (the server may have read it), and it is not sent again."""
    target = parse_url(server.url())
    await client.post(target, b"{}", JSON)
    server.script = [None]
    with pytest.raises(PeerUnreachable, match="closed the connection") as caught:
        await client.post(target, b"{}", JSON, resend_on_stale=False)
    assert caught.value.request_sent
    assert len(server.requests) == 2


async def test_a_timeout_says_whether_the_request_was_sent(
    server: RawServer, client: HttpClient
) -> None:
    """``timeout`` with no answer in time: PeerUnreachable with ``request_sent`` true, naming
    the destination and the wait; the connection is not kept."""
    server.delay = 1.0
    with pytest.raises(
        PeerUnreachable, match=r"no answer from http://127\.0\.0\.1:\d+ within 0\.1 s"
    ) as caught:
        await client.post(parse_url(server.url()), b"{}", JSON, within=0.1)
    assert caught.value.request_sent
    await asyncio.sleep(0.05)
    assert client.open_connections == 0


async def test_a_refused_connection_was_not_sent(client: HttpClient) -> None:
    """A connection refused: ``request_sent`` is false, so trying again cannot repeat it."""
    raw = RawServer()
    await raw.start()
    url = raw.url()
    await raw.stop()
    with pytest.raises(PeerUnreachable) as caught:
        await client.post(parse_url(url), b"{}", JSON, within=1.0)
    assert not caught.value.request_sent


async def test_a_fresh_connection_closed_without_an_answer_is_unreachable(
    server: RawServer, client: HttpClient
) -> None:
    """A receiver that closes a new connection without answering fails the request."""
    server.script = [None]
    with pytest.raises(PeerUnreachable, match="closed the connection"):
        await client.post(parse_url(server.url()), b"{}", JSON)
    assert len(server.requests) == 1  # not sent twice: it may have been acted on


async def test_an_answer_that_is_not_http_is_unreachable_and_closes_the_connection(
    server: RawServer, client: HttpClient
) -> None:
    """Garbage instead of a status line fails the request and the connection is dropped."""
    server.script = [b"SSH-2.0-OpenSSH\r\n\r\n"]
    with pytest.raises(PeerUnreachable, match="not HTTP"):
        await client.post(parse_url(server.url()), b"{}", JSON)
    await asyncio.sleep(0.05)
    assert client.open_connections == 0


async def test_a_refused_connection_is_unreachable(client: HttpClient) -> None:
    """Nothing listening: PeerUnreachable naming the destination, nothing left open."""
    raw = RawServer()
    await raw.start()
    url = raw.url()
    await raw.stop()
    with pytest.raises(PeerUnreachable, match=r"connecting to http://127\.0\.0\.1"):
        await client.post(parse_url(url), b"{}", JSON)
    assert client.open_connections == 0


async def test_a_request_cancelled_midway_closes_its_connection(
    server: RawServer, client: HttpClient
) -> None:
    """A timeout while waiting for the answer leaves no half-used connection in the pool."""
    server.script = [b""]  # read, never answered
    target = parse_url(server.url())
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.2):
            await client.post(target, b"{}", JSON)
    await asyncio.sleep(0.05)
    assert client.open_connections == 0
    assert (await client.post(target, b"{}", JSON)).status == 204


async def test_the_connection_limit_closes_an_idle_connection_to_make_room() -> None:
    """With room for one connection, a second destination takes the idle one's place."""
    first, second = RawServer(), RawServer()
    await first.start()
    await second.start()
    http = HttpClient(user_agent="Cascade-Test", max_connections=1)
    try:
        assert (await http.post(parse_url(first.url()), b"{}", JSON)).status == 204
        assert (await http.post(parse_url(second.url()), b"{}", JSON)).status == 204
        assert http.open_connections == 1
        assert (await http.post(parse_url(first.url()), b"{}", JSON)).status == 204
        assert first.connections == 2
    finally:
        await http.close()
        await first.stop()
        await second.stop()


async def test_https_verifies_the_receivers_certificate(tmp_path: Path) -> None:
    """An https URL is sent over TLS to a trusted certificate and refused for an untrusted one."""
    cert_path, key_path = make_certificate(tmp_path)
    server_side = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_side.load_cert_chain(cert_path, key_path)
    raw = RawServer()
    await raw.start(server_side)
    trusting = ssl.create_default_context(cafile=str(cert_path))
    trusted = HttpClient(user_agent="Cascade-Test", ssl_context=trusting)
    default = HttpClient(user_agent="Cascade-Test")
    try:
        target = parse_url(raw.url("https"))
        assert (await trusted.post(target, b"{}", JSON)).status == 204
        with pytest.raises(PeerUnreachable, match="CERTIFICATE_VERIFY_FAILED"):
            await default.post(target, b"{}", JSON)
    finally:
        await trusted.close()
        await default.close()
        await raw.stop()


async def test_https_to_a_checked_address_still_verifies_the_name(tmp_path: Path) -> None:
    """With an address rule, the connection goes to the address that was checked, and TLS
    still verifies the certificate against the URL's host name: a certificate for
    ``localhost`` alone is accepted for https://localhost and refused for https://127.0.0.1."""
    cert_path, key_path = make_certificate(tmp_path, for_address=False)
    server_side = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_side.load_cert_chain(cert_path, key_path)
    raw = RawServer()
    await raw.start(server_side)
    rule = AddressRule(allow_private=False, allowed_networks=parse_networks("127.0.0.0/8"))
    trusting = ssl.create_default_context(cafile=str(cert_path))
    http = HttpClient(user_agent="Cascade-Test", ssl_context=trusting, reach=rule)
    try:
        by_name = parse_url(raw.url("https").replace("127.0.0.1", "localhost"))
        assert (await http.post(by_name, b"{}", JSON)).status == 204
        with pytest.raises(PeerUnreachable, match="CERTIFICATE_VERIFY_FAILED"):
            await http.post(parse_url(raw.url("https")), b"{}", JSON)
    finally:
        await http.close()
        await raw.stop()


@pytest.mark.parametrize(
    ("url", "host", "port", "path", "host_header"),
    [
        ("http://example.com/hook", "example.com", 80, "/hook", "example.com"),
        ("https://example.com", "example.com", 443, "/", "example.com"),
        ("http://example.com:8080/a b?x=1 2", "example.com", 8080, "/a%20b?x=1%202",
         "example.com:8080"),
        ("http://[::1]:9000/h", "::1", 9000, "/h", "[::1]:9000"),
        ("https://bücher.example/h", "xn--bcher-kva.example", 443, "/h",
         "xn--bcher-kva.example"),
    ],
)  # fmt: skip
def test_a_url_becomes_a_destination_a_request_target_and_a_host_header(
    url: str, host: str, port: int, path: str, host_header: str
) -> None:
    """Default ports are left out of Host, IPv6 hosts are bracketed, odd characters quoted."""
    target = parse_url(url)
    assert (target.destination.host, target.destination.port) == (host, port)
    assert (target.path, target.host_header) == (path, host_header)


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("ftp://example.com/x", "not http"),
        ("http:///nohost", "no host"),
        ("http://example.com:99999/", "malformed"),
        ("http://user:pw@example.com/", "credentials"),
    ],
)
def test_a_url_no_request_can_go_to_says_why(url: str, reason: str) -> None:
    """Each unusable URL is refused with its reason, before any connection is tried."""
    with pytest.raises(ValueError, match=reason):
        parse_url(url)


async def test_at_the_connection_limit_a_finished_request_makes_room_for_a_waiting_one() -> None:
    """With room for one connection, a request to another destination waits for the busy
    one to finish, which then closes its connection instead of keeping it idle."""
    first, second = RawServer(delay=0.3), RawServer()
    await first.start()
    await second.start()
    http = HttpClient(user_agent="Cascade-Test", max_connections=1)
    try:
        busy = asyncio.ensure_future(http.post(parse_url(first.url()), b"{}", JSON))
        await asyncio.sleep(0.1)
        waiting = asyncio.ensure_future(http.post(parse_url(second.url()), b"{}", JSON))
        await asyncio.sleep(0.1)
        assert not waiting.done()
        assert (await busy).status == 204  # answered: its connection closes, not kept idle
        assert (await asyncio.wait_for(waiting, 2)).status == 204
        assert http.open_connections == 1
    finally:
        await http.close()
        await first.stop()
        await second.stop()


async def test_each_admitted_address_is_tried_in_turn(
    server: RawServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With an address rule, a name's admitted addresses are tried in the resolver's order
    until one connects, as an unchecked connection tries them (nothing listens on the first)."""
    rule = AddressRule(allow_private=False, allowed_networks=parse_networks("127.0.0.0/8"))
    http = HttpClient(user_agent="Cascade-Test", reach=rule)
    resolved = [
        (socket.AF_INET, socket.SOCK_STREAM, 6, "", ("127.0.0.2", server.port)),
        (socket.AF_INET, socket.SOCK_STREAM, 6, "", ("10.9.9.9", server.port)),  # not admitted
        (socket.AF_INET, socket.SOCK_STREAM, 6, "", ("127.0.0.1", server.port)),
    ]

    async def getaddrinfo(*_: Any, **__: Any) -> list[Any]:
        return resolved

    monkeypatch.setattr(asyncio.get_running_loop(), "getaddrinfo", getaddrinfo)
    try:
        target = parse_url(f"http://receiver.example:{server.port}/hook")
        assert (await http.post(target, b"{}", JSON)).status == 204
        assert server.connections == 1
    finally:
        await http.close()


def test_a_destination_names_an_ipv6_host_in_brackets() -> None:
    """The text of a destination (in attempts' errors) reads as a URL for IPv6 hosts too."""
    assert parse_url("http://[::1]:8080/h").destination.key == "http://[::1]:8080"
    assert parse_url("https://example.com/h").destination.key == "https://example.com:443"
