"""Sharing each SMPP connection's ``throughput`` among the engine nodes that hold it.

An SMSC counts the submits of an account, not of a bind, so a connection's ``throughput`` is
what it may send across every node running it (docs/design.md §7). Each node keeps a row
(connection, node, expires_at) in the store while it has the connection bound, renewed every
third of a job lease, and at each renewal sets the connection's token bucket to
``throughput / live nodes`` (the burst likewise): no database work per message.

* A node that binds holds its submits until it has registered and knows its share; if other
  nodes hold the connection already, it holds them one renewal interval longer, by when each
  of the others has renewed and shrunk to its new share.
* A node that loses its bind, or stops, drops its row at once; the others take its share at
  their next renewal. A node killed outright keeps its row until it runs out (one lease),
  then the others take its share at their next renewal.
* A node that cannot renew (the database is away) holds its submits once its own row has run
  out, since the others may count it gone by then.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Protocol

import structlog

from cascade.clock import Clock
from cascade.store.base import SmppNodes
from cascade.supervision import Setbacks

log = structlog.get_logger(__name__)

#: how often the connections' bind states (in memory) are looked at, in seconds
LOOK = 0.2


class SharedConnection(Protocol):
    """What the shares need of an SMPP connection (``SmppConnection``)."""

    @property
    def name(self) -> str: ...

    @property
    def bound(self) -> bool: ...

    def await_share(self) -> None: ...

    def share(self, nodes: int, hold: float = 0.0) -> None: ...


class ThroughputShares:
    """Keeps this node's rows of its bound connections and their buckets at its share."""

    def __init__(
        self,
        store: SmppNodes,
        connections: Sequence[SharedConnection],
        node: str,
        clock: Clock,
        *,
        lease: float,
        look: float = LOOK,
    ) -> None:
        self.store = store
        self.connections = list(connections)
        self.node = node
        self.clock = clock
        self.lease = lease
        self.interval = lease / 3
        self.look = min(look, self.interval)
        #: connection name -> (when this node last renewed its row, when that row runs out)
        self._held: dict[str, tuple[float, float]] = {}
        #: connection name -> the live nodes the last renewal counted
        self.nodes: dict[str, int] = {}
        for connection in self.connections:
            connection.await_share()

    async def renew_due(self) -> None:
        """Register newly bound connections, renew rows a third of a lease old, drop the rows
        of connections no longer bound, and set each renewed connection's share."""
        for connection in self.connections:
            name = connection.name
            held = self._held.get(name)
            if not connection.bound:
                if held is not None:
                    await self.store.drop_smpp_node(name, self.node)
                    del self._held[name]
                    self.nodes.pop(name, None)
                    connection.await_share()
                continue
            now = self.clock.now()
            if held is not None and now < held[0] + self.interval:
                continue
            try:
                nodes = await self.store.renew_smpp_node(name, self.node, now + self.lease, now)
            except Exception:
                if held is not None and self.clock.now() >= held[1]:
                    connection.await_share()  # the others may count this node gone by now
                raise
            self._held[name] = (now, now + self.lease)
            joining = held is None
            if self.nodes.get(name) != nodes:
                log.info("smpp.throughput_share", connection=name, nodes=nodes, node=self.node)
            self.nodes[name] = nodes
            # joining beside others: they send at their old share until their next renewal
            connection.share(nodes, hold=self.interval if joining and nodes > 1 else 0.0)

    async def drop_all(self) -> None:
        """Drop every row this node holds (it is stopping): the others take its share at their
        next renewal instead of after a lease."""
        for name in sorted(self._held):
            await self.store.drop_smpp_node(name, self.node)
        self._held.clear()

    async def run(self) -> None:
        """Renew every ``look`` seconds until cancelled, then drop this node's rows. A failed
        renewal is logged (once per streak) and tried again after a backoff, so the task
        never ends on an error."""
        setbacks = Setbacks("smpp-shares", max_delay=self.interval, node=self.node)
        try:
            while True:
                try:
                    await self.renew_due()
                except Exception as exc:  # Setbacks logs it; the next round tries again
                    delay = setbacks.failed(exc)
                else:
                    setbacks.succeeded()
                    delay = self.look
                await self.clock.sleep(delay)
        except asyncio.CancelledError:
            try:
                await self.drop_all()
            except Exception:  # the store may be going too: the rows then run out by lease
                log.exception("smpp.throughput_share_drop_failed", node=self.node)
            raise
