"""Many nodes on one PostgreSQL database: two API processes and two workers take a mixed
sandbox load, one worker is SIGKILLed mid-run, and every workflow still ends once, the
survivor finishing the killed worker's jobs when their lease has run out.

The scenario (``tests/cluster.py``) runs once per module, with a 2 s lease and the sandbox 20
times faster than documented, and each test checks one thing it left.
"""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter, defaultdict

import pytest

from tests import cluster
from tests.cluster import MIX, Outcome
from tests.contract.conftest import _admin, postgres_url, run_private
from tests.running import Processes

__all__ = ["postgres_url"]  # the fixture used here

pytestmark = [pytest.mark.postgres, pytest.mark.slow]

WORKFLOWS = 320
LEASE = 2.0
#: the whole scenario must stay well under this
DEADLINE = 50.0


@pytest.fixture(scope="module")
def outcome(tmp_path_factory: pytest.TempPathFactory, postgres_url: str) -> Outcome:
    """Run the scenario once on a fresh schema; every process it started is gone after."""
    schema = f"cascade_nodes_{uuid.uuid4().hex[:12]}"
    run_private(_admin(postgres_url, f'CREATE SCHEMA "{schema}"'))
    processes = Processes(
        tmp_path_factory.mktemp("nodes"), cluster.child_env(LEASE, speed=20.0, batch=20)
    )
    try:
        return asyncio.run(
            cluster.run(
                processes,
                f"{postgres_url}?search_path={schema}",
                workflows=WORKFLOWS,
                apis=2,
                workers=2,
                kill_worker=True,
                lease=LEASE,
                deadline=DEADLINE,
            )
        )
    except BaseException:
        print(processes.logs())
        raise
    finally:
        processes.stop_all()
        run_private(_admin(postgres_url, f'DROP SCHEMA "{schema}" CASCADE'))


def test_every_workflow_is_accepted_by_one_of_the_two_api_nodes(outcome: Outcome) -> None:
    """All posts, spread over both API processes, were answered 202."""
    assert outcome.answers == {202: WORKFLOWS}
    assert len(outcome.kinds) == WORKFLOWS


def test_every_workflow_ends_once_as_its_script_says(outcome: Outcome) -> None:
    """Each workflow reached the final state its sandbox script leads to, with exactly one
    ending (completed or error) recorded."""
    expected = {kind.name: kind.state for kind in MIX}
    wrong = {
        workflow_id: (kind, outcome.workflows[workflow_id][0])
        for workflow_id, kind in outcome.kinds.items()
        if outcome.workflows[workflow_id][0] != expected[kind]
    }
    assert wrong == {}
    assert outcome.endings == dict.fromkeys(outcome.kinds, 1)


def test_every_dispatch_gets_one_final_report(outcome: Outcome) -> None:
    """The receiver got one final report per dispatch (a repeat after the kill carries the
    same delivery id), saying how it ended; plain messages get none."""
    expected = {kind.name: kind.state for kind in MIX if kind.dispatch}
    finals: dict[str, set[str]] = defaultdict(set)
    statuses: dict[str, str] = {}
    for request in outcome.webhooks:
        body = request.json()
        if "dispatch_uuid" in body:
            finals[body["dispatch_uuid"]].add(request.headers["x-cascade-delivery-id"])
            statuses[body["dispatch_uuid"]] = body["status"]
    dispatches = {w: kind for w, kind in outcome.kinds.items() if kind in expected}
    assert set(finals) == set(dispatches)
    assert Counter(len(ids) for ids in finals.values()) == {1: len(dispatches)}
    assert statuses == {w: expected[kind] for w, kind in dispatches.items()}


def test_the_survivor_finishes_the_killed_workers_jobs_after_their_lease(
    outcome: Outcome,
) -> None:
    """The worker was killed holding jobs; half a lease later none of them had been taken
    by the other worker (the lease holds), and by the end all of them were done."""
    assert outcome.killed is not None
    assert outcome.held_at_kill
    assert outcome.held_half_a_lease_later == outcome.held_at_kill
    assert outcome.jobs_left == set()


def test_the_timers_fired_and_the_killed_workers_were_late_by_at_most_a_lease(
    outcome: Outcome,
) -> None:
    """Every step window that closed failed over, none earlier than due (to the millisecond)
    and none later than a lease and a few seconds of a loaded machine (a killed worker's timer
    waits for its lease)."""
    timers = [kind for kind in outcome.kinds.values() if kind == "dispatch-timer"]
    three = [kind for kind in outcome.kinds.values() if kind == "dispatch-3-error"]
    assert len(outcome.timers) == len(timers) + len(three)
    lateness = outcome.lateness()
    assert lateness[0] > -0.005  # uvloop's timers, at millisecond grain, may wake 1 ms early
    assert lateness[-1] < LEASE + 10


def test_the_run_stays_well_under_a_minute(outcome: Outcome) -> None:
    """The whole scenario, posts to the last final, fits CI: under the deadline."""
    assert outcome.finished - outcome.posting[0] < DEADLINE
