"""A small run of the load benchmark: 50 pollers of an audit's status against a real
``recon-audit serve --no-worker`` on loopback (embedded SQLite), no errors; every process the
service started is gone afterwards (the benchmark checks it when it stops the service)."""

from __future__ import annotations

import asyncio

from benchmarks.load import run_level, seed, service


def test_50_pollers_get_no_errors() -> None:
    with service() as (url, database_url, _pid):
        token, audit_id = seed(database_url)
        level = asyncio.run(run_level(url, token, audit_id, 50, seconds=4, interval=0.25))
    assert level.errors == {}
    assert sum(level.statuses.values()) >= 50 * 4 * 0.8
    assert set(level.statuses) <= {200, 304}
    assert level.statuses.get(304, 0) > 0  # the pollers' If-None-Match paid off
