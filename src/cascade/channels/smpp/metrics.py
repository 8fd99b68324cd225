"""The SMPP channel's Prometheus counters, defined once for the package.

prometheus_client refuses to register a name twice, so the counters live in one module that
the session and the deliver_sm handling both import, labelled by connection name.
"""

from __future__ import annotations

from prometheus_client import Counter

from cascade.metrics import Children

SUBMITS = Counter(
    "cascade_smpp_submits",
    "submit_sm PDUs by connection and result (accepted, throttled, rejected, unconfirmed)",
    ["connection", "result"],
)
DELIVERIES = Counter(
    "cascade_smpp_deliver_sm",
    "deliver_sm PDUs by connection, kind (receipt, inbound, unknown) and outcome "
    "(stored, no_change, part, malformed, sink_error, expired)",
    ["connection", "kind", "outcome"],
)
BINDS = Counter(
    "cascade_smpp_binds",
    "Bind attempts and lost sessions by connection and result (bound, failed, lost)",
    ["connection", "result"],
)
#: the children of the two counted once per message, found once (cascade.metrics)
submits = Children(SUBMITS)
deliveries = Children(DELIVERIES)
