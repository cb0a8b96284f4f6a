"""Replay at scale: every service's state stays bounded and a bar costs the same late as early.

The services' pure cores run in one process, in the lockstep's order (tests/support/inproc.py),
over eight sessions of ten symbols (31,200 bars). What a process pays per batch grows with its
state (it encodes and writes a snapshot each time) and with what its handlers scan, so:

- each service's encoded state at the start of the last three sessions is no larger than 1.5x
  the largest at the start of the first three (TCA keeps orders 72 h, so it fills up over the
  first sessions and then holds);
- the CPU time per bar of the last three sessions is no more than 2x that of sessions two to
  four (a ratio measured in one process, not a time: the test is on growth).

The local exchange is held to the same bound: its memory keeps open orders and the closed ones
of recent days (handlers.evict_closed), while the orders it took keep growing; its working
orders are bounded too. `python -m bench.replay_scale` runs the same to a million bars.
"""

from __future__ import annotations

import statistics
import time

import pytest

from libs import sessions
from services.marketdata.config import MdConfig
from tests.support.inproc import Pipeline

SYMBOLS = tuple(f"S{i:02d}" for i in range(10))
SESSIONS = 8
SERVICES = ("signal", "risk", "oms", "execution", "tca", "exchange")


def run(symbols: tuple[str, ...], n_sessions: int) -> list[dict[str, float]]:
    """Replay n sessions; return, per session, the CPU time per bar and the states at its start."""
    sessions.load()
    p = Pipeline(md=MdConfig(symbols=symbols, start_date="2026-01-05", minutes=390 * n_sessions))
    rows: list[dict[str, float]] = []
    session, started, cpu, bars = "", p.state_bytes(), time.process_time(), 0
    while n := p.step():
        if p.feed.session != session and session:
            now = time.process_time()
            rows.append({"cpu_per_bar": (now - cpu) / bars, "bars": bars, **started})
            started, cpu, bars = p.state_bytes(), now, 0
        session = p.feed.session
        bars += n
    rows.append({"cpu_per_bar": (time.process_time() - cpu) / bars, "bars": bars, **started})
    return rows


@pytest.fixture(scope="module")
def replayed() -> list[dict[str, float]]:
    return run(SYMBOLS, SESSIONS)


def test_replay_scale_when_eight_sessions_replayed_then_every_bar_was_replayed_and_orders_traded(replayed):
    assert len(replayed) == SESSIONS
    assert sum(r["bars"] for r in replayed) == SESSIONS * 390 * len(SYMBOLS)
    # it traded all along: the orders it took grow, what it holds in memory does not
    assert replayed[-1]["exchange_accepted"] > 2 * replayed[3]["exchange_accepted"] > 0
    assert max(r["exchange_orders"] for r in replayed[-3:]) <= 1.5 * max(r["exchange_orders"] for r in replayed[1:4])


@pytest.mark.parametrize("service", SERVICES)
def test_replay_scale_when_sessions_go_by_then_each_services_state_stays_bounded(replayed, service):
    early = max(r[service] for r in replayed[1:4])
    late = max(r[service] for r in replayed[-3:])

    assert late <= 1.5 * early, f"{service} state grew from {early} to {late} bytes"


def test_replay_scale_when_sessions_go_by_then_the_exchanges_working_orders_stay_bounded(replayed):
    assert max(r["exchange_open_orders"] for r in replayed) <= 4 * len(SYMBOLS)


def test_replay_scale_when_sessions_go_by_then_a_bar_costs_no_more_late_than_early(replayed):
    early = statistics.median(r["cpu_per_bar"] for r in replayed[1:4])
    late = statistics.median(r["cpu_per_bar"] for r in replayed[-3:])

    assert late <= 2.0 * early, f"CPU per bar grew from {early * 1e6:.0f} to {late * 1e6:.0f} us"
