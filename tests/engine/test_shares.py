"""An SMPP connection's throughput is shared among the engine nodes holding it: the share rule,
the buckets it sets, and how shares move when nodes join, leave or die."""

from __future__ import annotations

import asyncio
import time

import pytest

from cascade.channels.smpp.config import SmppConnectionSettings
from cascade.channels.smpp.flow import SubmitFlow, TokenBucket, share_of
from cascade.clock import FakeClock
from cascade.engine.shares import ThroughputShares
from cascade.errors import ChannelUnavailable
from cascade.store.sqlite import SqliteStore

LEASE = 30.0


class Connection:
    """A connection as the shares see it: a name, bound or not, and the shares it was given."""

    def __init__(self, name: str = "smsc") -> None:
        self.name = name
        self.bound = False
        #: (nodes, hold) of every share given, in order; None for each await_share
        self.given: list[tuple[int, float] | None] = []

    def await_share(self) -> None:
        self.given.append(None)

    def share(self, nodes: int, hold: float = 0.0) -> None:
        self.given.append((nodes, hold))


def test_each_node_gets_an_equal_part_of_the_rate_and_the_burst() -> None:
    """n nodes each get throughput / n and burst / n, at least one submit of burst, and a
    count of 0 (no row read back yet) is taken as this node alone."""
    assert share_of(100, 1, 1) == (100, 1.0)
    assert share_of(100, 10, 2) == (50, 5.0)
    assert share_of(90, 1, 3) == (30, 1.0)
    assert share_of(100, 3, 4) == (25, 1.0)
    assert share_of(100, 1, 0) == (100, 1.0)


def test_a_bucket_at_a_new_rate_spaces_tokens_by_it_and_a_hold_delays_the_next() -> None:
    """set_rate changes the gap between tokens from the next one on; hold gives no token for
    its seconds, after which tokens flow at the rate again."""
    now = [0.0]
    bucket = TokenBucket(100, now=lambda: now[0])
    assert bucket.take() == 0.0
    bucket.set_rate(50, 1)
    assert bucket.take() == pytest.approx(0.02)
    now[0] = 1.0
    bucket.hold(2.0)
    assert bucket.wait_time() == pytest.approx(2.0)
    now[0] = 3.0
    assert bucket.take() == 0.0
    assert bucket.take() == pytest.approx(0.02)


async def test_a_flow_waiting_for_its_share_sends_nothing_until_it_knows_it() -> None:
    """After await_share a new message waits for the share, and is refused as throttled when
    it does not come within response_timeout; once shared, submits go at the share's rate."""
    settings = SmppConnectionSettings(
        name="smsc", host="localhost", system_id="x", throughput=100, response_timeout=0.05
    )
    flow = SubmitFlow(settings)
    flow.await_share()
    with pytest.raises(ChannelUnavailable, match="share"):
        await flow.take_token(first=True)
    flow.share(4)
    started = time.monotonic()
    for _ in range(3):
        await flow.take_token(first=True)
    # 25/s: the second and third tokens wait 40 ms each
    assert time.monotonic() - started >= 0.075


async def test_a_connection_without_a_limit_is_never_held() -> None:
    """throughput 0 means no limit: await_share holds nothing, since there is nothing to share."""
    flow = SubmitFlow(SmppConnectionSettings(name="smsc", host="localhost", system_id="x"))
    flow.await_share()
    await asyncio.wait_for(flow.take_token(first=True), 1.0)


async def test_shares_follow_the_nodes_that_join_leave_and_die(
    sqlite_store: SqliteStore, clock: FakeClock
) -> None:
    """A node alone gets it all; a node joining gets half after a renewal interval's hold and
    the other shrinks to half at its next renewal; an unbound node drops its row at once and
    the other takes it all back at its next renewal; a killed node's share comes back once its
    row has run out (a lease)."""
    a, b, c = Connection(), Connection(), Connection()
    node_a = ThroughputShares(sqlite_store, [a], "node-a", clock, lease=LEASE)
    node_b = ThroughputShares(sqlite_store, [b], "node-b", clock, lease=LEASE)
    node_c = ThroughputShares(sqlite_store, [c], "node-c", clock, lease=LEASE)
    interval = LEASE / 3
    assert a.given == b.given == [None]  # held until each knows its share

    await node_a.renew_due()
    assert a.given == [None]  # not bound: nothing registered, still held
    a.bound = True
    await node_a.renew_due()
    assert a.given[-1] == (1, 0.0)

    b.bound = True
    await node_b.renew_due()
    assert b.given[-1] == (2, interval)  # a still sends at its old share: b waits for it
    clock.advance(interval)
    await node_a.renew_due()
    assert a.given[-1] == (2, 0.0)

    b.bound = False
    await node_b.renew_due()
    assert b.given[-1] is None  # held again until it binds and registers again
    clock.advance(interval)
    await node_a.renew_due()
    assert a.given[-1] == (1, 0.0)

    c.bound = True
    await node_c.renew_due()
    assert c.given[-1] == (2, interval)
    clock.advance(interval)
    await node_a.renew_due()
    assert a.given[-1] == (2, 0.0)
    # node c is killed: it renews no more; its row counts until it runs out
    clock.advance(LEASE - 2 * interval)  # c's row is two intervals old: it still counts
    await node_a.renew_due()
    assert a.given[-1] == (2, 0.0)
    clock.advance(interval)
    await node_a.renew_due()
    assert a.given[-1] == (1, 0.0)


async def test_a_stopping_node_drops_its_rows(sqlite_store: SqliteStore, clock: FakeClock) -> None:
    """Cancelling the shares' task (the engine stopping) drops this node's rows, so the other
    nodes take its share at their next renewal rather than a lease later."""
    a, b = Connection(), Connection()
    a.bound = b.bound = True
    node_a = ThroughputShares(sqlite_store, [a], "node-a", clock, lease=LEASE)
    node_b = ThroughputShares(sqlite_store, [b], "node-b", clock, lease=LEASE)
    await node_a.renew_due()
    task = asyncio.ensure_future(node_b.run())
    for _ in range(100):
        if node_b.nodes:
            break
        await asyncio.sleep(0.01)
    assert node_b.nodes == {"smsc": 2}
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    clock.advance(LEASE / 3)
    await node_a.renew_due()
    assert a.given[-1] == (1, 0.0)


async def test_a_node_that_cannot_renew_holds_once_its_row_has_run_out(
    sqlite_store: SqliteStore, clock: FakeClock
) -> None:
    """While the store fails, the node keeps its share until its own row has run out (the
    others may count it gone from then on), and then holds its submits."""
    a = Connection()
    a.bound = True
    node = ThroughputShares(sqlite_store, [a], "node-a", clock, lease=LEASE)
    await node.renew_due()
    await sqlite_store.close()
    clock.advance(LEASE / 3)
    with pytest.raises(Exception):  # noqa: B017, PT011 (whatever the closed store raises)
        await node.renew_due()
    assert a.given[-1] == (1, 0.0)
    clock.advance(LEASE)
    with pytest.raises(Exception):  # noqa: B017, PT011
        await node.renew_due()
    assert a.given[-1] is None
