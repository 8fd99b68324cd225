"""In-process SMS lifecycles on a fake clock, for instruction counts that load cannot move.

Each SMS is accepted through the ASGI app (``POST /v0.1/dispatch``, one step), sent to the
sandbox, delivered, and its two status webhooks are POSTed to a real receiver on 127.0.0.1 by
the webhook sender; the clock is the tests' ``FakeClock``, so no timer waits. Run it under
callgrind at two sizes and divide the difference of the instruction totals by the difference
of the sizes: start-up and warm-up cancel out, and what remains is the instructions per SMS,
repeatable whatever else the machine is doing (wall-clock CPU figures move by ±5 % between
rounds here). It needs the repository root on ``sys.path`` (it borrows the tests' harness)::

    for n in 200 600; do PYTHONPATH=src:. valgrind --tool=callgrind \\
        --callgrind-out-file=/dev/null .venv/bin/python bench/lifecycle.py $n 2>&1 | grep Collected
    done

Without valgrind it prints the CPU per SMS of the accept and of the rest.
"""

from __future__ import annotations

import asyncio
import sys
import tempfile
import time
from pathlib import Path

from tests.engine.harness import step, workflow
from tests.webhooks.conftest import FAST, delivering
from tests.webhooks.receiver import Receiver, Respond

from cascade.clock import FakeClock
from cascade.store.sqlite import SqliteStore

BATCH = 50


async def main(count: int) -> None:
    """Accept ``count`` SMS in batches of BATCH, then run everything they make due."""
    store = SqliteStore(Path(tempfile.mkdtemp()) / "lifecycle.db", synchronous="NORMAL")
    await store.open()
    clock = FakeClock(time.time())
    receiver = Receiver(clock, default=Respond(204))
    await receiver.up()
    try:
        async with delivering(store, clock, FAST, status_url=receiver.url()) as world:
            body = workflow(step("sms", "447700900000"))
            headers = world.tenant.bearer()
            for _ in range(BATCH):  # warm-up
                await world.http.post("/v0.1/dispatch", json=body, headers=headers)
            await world.advance(5)
            started = time.process_time()
            for _ in range(0, count, BATCH):
                await asyncio.gather(
                    *(world.http.post("/v0.1/dispatch", json=body, headers=headers)
                      for _ in range(BATCH))
                )  # fmt: skip
            accepted = time.process_time()
            await world.advance(5)
            done = time.process_time()
    finally:
        await receiver.down()
        await store.close()
    print(
        f"{count} SMS: accept {(accepted - started) / count * 1e6:.0f} µs, "
        f"the rest {(done - accepted) / count * 1e6:.0f} µs CPU per SMS; "
        f"{len(receiver.requests)} webhooks received"
    )


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]) if len(sys.argv) > 1 else 500))
