"""An SMSC account's throughput holds across engine nodes: two ``cascade worker`` processes on
one PostgreSQL database, each bound to the test SMSC with the same connection, send together
no faster than the connection's ``throughput`` (the SMSC counts the account, not the bind)."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
import smpp34
from cryptography.hazmat.primitives import serialization

from tests.channels.conftest import connection
from tests.contract.conftest import _admin, postgres_url
from tests.running import Processes, cascade_env, create_application, free_port, wait_for
from tests.smsc import LoopbackSmsc

__all__ = ["postgres_url"]  # the fixture used here

pytestmark = [pytest.mark.postgres, pytest.mark.slow]

THROUGHPUT = 20
MESSAGES = 120
#: a third of it is the renewal interval, the time a joining node holds its submits
LEASE = 3.0


class TimedSmsc(LoopbackSmsc):
    """The test SMSC, noting when each submit_sm arrived and on which bind."""

    def __init__(self) -> None:
        super().__init__()
        self.arrivals: list[tuple[float, int]] = []

    async def _on_submit(self, event: smpp34.SubmitSmEvent) -> None:
        self.arrivals.append((time.monotonic(), event.session_id))
        await super()._on_submit(event)


def busiest_second(times: list[float]) -> int:
    """The most submits in any one-second window (each starting at a submit)."""
    times = sorted(times)
    most, first = 0, 0
    for last, at in enumerate(times):
        while at - times[first] >= 1.0:
            first += 1
        most = max(most, last - first + 1)
    return most


def test_busiest_second_counts_a_sliding_window() -> None:
    """Submits 0.1 s apart make ten to a second; a burst of five on top makes fifteen."""
    steady = [i * 0.1 for i in range(30)]
    assert busiest_second(steady) == 10
    assert busiest_second([*steady, *(1.5 + i * 0.01 for i in range(5))]) == 15


async def test_two_workers_share_the_throughput_of_one_smsc_connection(
    tmp_path: Path, postgres_url: str
) -> None:
    """Two workers each bound to the SMSC send 120 SMS together with no one-second window
    above the connection's 20/s (with a margin of half for a loaded machine), and both send."""
    schema = f"cascade_smpp_nodes_{uuid.uuid4().hex[:12]}"
    await _admin(postgres_url, f'CREATE SCHEMA "{schema}"')
    url = f"{postgres_url}?search_path={schema}"
    smsc = TimedSmsc()
    await smsc.start()
    config = tmp_path / "cascade.toml"
    settings: dict[str, Any] = connection(smsc, throughput=THROUGHPUT, response_timeout=10.0)
    config.write_text(
        "[[smpp.connections]]\n"
        + "".join(f"{key} = {json.dumps(value)}\n" for key, value in settings.items())
    )
    env = cascade_env()
    env.update(
        CASCADE_LOG_FORMAT="console",
        CASCADE_JOB_LEASE_SECONDS=str(LEASE),
        CASCADE_WORKER_BATCH_SIZE="10",
    )
    processes = Processes(tmp_path, env)
    try:
        application_id, pem = await asyncio.to_thread(create_application, processes, url)
        port = free_port()
        processes.start(
            "api", "serve", "--processes", "1", "--port", str(port), "--database", url,
            CASCADE_RUN_WORKER="false",
        )  # fmt: skip
        for _ in range(2):
            processes.start("worker", "worker", "--database", url, "--config", str(config))
        key = serialization.load_pem_private_key(pem, password=None)
        now = int(time.time())
        claims = {"application_id": application_id, "iat": now, "exp": now + 600}
        token = jwt.encode({**claims, "jti": str(uuid.uuid4())}, key, algorithm="RS256")
        until = time.monotonic() + 60
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=30) as http:

            async def api_up() -> bool:
                try:
                    return (await http.get("/health")).status_code == 200
                except httpx.TransportError:
                    return False

            await wait_for(api_up, until, "the API to listen")
            await wait_for(lambda: len(smsc._sessions) == 2, until, "both workers to bind")
            for index in range(MESSAGES):
                body = {
                    "to": {"type": "sms", "number": f"4477009{index:05d}"},
                    "from": {"type": "sms", "number": "447700900001"},
                    "message": {"content": {"type": "text", "text": "hello"}},
                }
                posted = await http.post(
                    "/v0.1/messages", json=body, headers={"Authorization": f"Bearer {token}"}
                )
                assert posted.status_code == 202, posted.text
        await wait_for(lambda: len(smsc.answered()) >= MESSAGES, until, "every SMS submitted")
    except BaseException:
        print(processes.logs())
        raise
    finally:
        await asyncio.to_thread(processes.stop_all)
        await smsc.stop()
        await _admin(postgres_url, f'DROP SCHEMA "{schema}" CASCADE')
    assert len({session for _, session in smsc.arrivals}) == 2
    # at most 30 where the two at full rate make 40: a stalled loop may release the few
    # submits already waiting for their tokens together
    assert busiest_second([at for at, _ in smsc.arrivals]) <= THROUGHPUT * 1.5
