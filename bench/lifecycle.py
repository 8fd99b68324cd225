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

Without valgrind it prints the CPU per SMS of the accept and of the rest. The tenant's RSA key
is made once and kept in the temporary directory (``cascade-lifecycle-key.pem``): a new key
per run costs a random number of instructions (about 100 M), which the difference of two runs
would not cancel; so run it once without valgrind first.

``--smpp`` sends through a provider that answers as an SMSC does instead of the sandbox: ids
that can repeat (so each send asks the store whether another message holds its id, as an SMPP
send does) and a ``DELIVRD`` receipt per SMS found by its provider id, handed to the engine
50 at a time as the SMPP provider does with the ``deliver_sm`` of one read. The store and
engine work of an SMPP send is counted, the PDU encoding is not (``bench/sms.py`` runs it all).
"""

from __future__ import annotations

import asyncio
import shutil
import sys
import tempfile
import time
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from tests.engine.harness import step, workflow
from tests.webhooks.conftest import delivering
from tests.webhooks.receiver import Receiver, Respond

from cascade.channels.base import ChannelProvider, OutboundMessage, ReceiptSink, SendResult
from cascade.clock import FakeClock
from cascade.domain.records import Receipt
from cascade.domain.status import Status
from cascade.log import configure_logging
from cascade.runtime import tune_gc
from cascade.store.sqlite import SqliteStore
from cascade.webhooks.delivery import DeliverySettings

BATCH = 50
#: no real-time limit that callgrind's slowness could reach (a timed-out POST is tried again,
#: a webhook that waited too long steps aside): each webhook is POSTed once, as in a quiet run
PATIENT = DeliverySettings(timeout=600.0, queue_wait=600.0)
KEY = Path(tempfile.gettempdir()) / "cascade-lifecycle-key.pem"


def _one_key(**_: object) -> rsa.RSAPrivateKey:
    """The same RSA key on every run (made and kept the first time)."""
    if not KEY.exists():
        made = _generate(public_exponent=65537, key_size=2048)
        pem = made.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        KEY.write_bytes(pem)
    key = serialization.load_pem_private_key(KEY.read_bytes(), password=None)
    assert isinstance(key, rsa.RSAPrivateKey)
    return key


_generate, rsa.generate_private_key = rsa.generate_private_key, _one_key


class SmscLike(ChannelProvider):
    """A provider that answers as an SMSC: counted ids that can repeat, receipts kept until
    :meth:`deliver` hands them to the engine."""

    name = "smsc"
    ids_can_repeat = True
    deduplicates = False

    def __init__(self, clock: FakeClock) -> None:
        self.clock = clock
        self.sent: list[str] = []
        self.ids = 0
        self.sink: ReceiptSink | None = None

    async def start(self, sink: ReceiptSink) -> None:
        self.sink = sink

    async def deduplicates_send(self, message: OutboundMessage) -> bool:
        return False

    async def send(self, message: OutboundMessage) -> SendResult:
        self.ids += 1
        self.sent.append(f"{self.ids:08x}")
        return SendResult(self.sent[-1])

    async def deliver(self) -> None:
        """Hand every receipt owed to the engine, BATCH at a time."""
        if self.sink is None:
            return  # not started: the sandbox sends
        sink, owed, self.sent = self.sink, self.sent, []
        for start in range(0, len(owed), BATCH):
            await asyncio.gather(
                *(sink.receipt(Receipt(self.name, pid, Status.DELIVERED, self.clock.now()))
                  for pid in owed[start : start + BATCH])
            )  # fmt: skip


async def main(count: int, smpp: bool = False) -> None:
    """Accept ``count`` SMS in batches of BATCH (rounded up to whole batches), then run
    everything they make due."""
    count = -(-count // BATCH) * BATCH
    configure_logging("warning")  # as the benchmarks run the service: no line per SMS
    workdir = Path(tempfile.mkdtemp(prefix="cascade-lifecycle-"))
    store = SqliteStore(workdir / "lifecycle.db", synchronous="NORMAL")
    await store.open()
    clock = FakeClock(time.time())
    receiver = Receiver(clock, default=Respond(204))
    await receiver.up()
    smsc = SmscLike(clock)
    providers = {"providers": {"sms": smsc}} if smpp else {}
    try:
        async with delivering(
            store, clock, PATIENT, status_url=receiver.url(), **providers
        ) as world:
            body = workflow(step("sms", "447700900000"))
            headers = world.tenant.bearer()
            for _ in range(BATCH):  # warm-up
                await world.http.post("/v0.1/dispatch", json=body, headers=headers)
            await world.advance(5)
            await smsc.deliver()
            await world.advance(5)
            tune_gc()  # as the service does once started: start-up's objects frozen
            started = time.process_time()
            for _ in range(0, count, BATCH):
                await asyncio.gather(
                    *(world.http.post("/v0.1/dispatch", json=body, headers=headers)
                      for _ in range(BATCH))
                )  # fmt: skip
            accepted = time.process_time()
            await world.advance(5)
            await smsc.deliver()
            await world.advance(5)
            done = time.process_time()
    finally:
        await receiver.down()
        await store.close()
        shutil.rmtree(workdir, ignore_errors=True)
    print(
        f"{count} SMS: accept {(accepted - started) / count * 1e6:.0f} µs, "
        f"the rest {(done - accepted) / count * 1e6:.0f} µs CPU per SMS; "
        f"{len(receiver.requests)} webhooks received"
    )
    if len(receiver.requests) != 3 * (count + BATCH):  # the warm-up's SMS too
        sys.exit(
            f"expected {3 * (count + BATCH)} webhooks (3 per SMS): the count is not comparable"
        )


if __name__ == "__main__":
    args = [arg for arg in sys.argv[1:] if arg != "--smpp"]
    asyncio.run(main(int(args[0]) if args else 500, smpp="--smpp" in sys.argv))
