"""The asyncio monitor client (runtime/aclient.py): the blocking client's operations, waited for in an event loop."""
from __future__ import annotations

import asyncio
import time

import pytest

from runtime import client as client_mod
from runtime.aclient import AsyncMonitorClient
from runtime.client import MonitorError


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 60))


def test_operations_answers_and_refusals(mon, bundle):
    b = bundle(["sleep", "100"])

    async def go():
        c = AsyncMonitorClient(mon.client.socket_path)
        await c.create("c", b)
        assert (await c.start("c"))["pid"] > 0
        r = await c.exec("c", {"args": ["sh", "-c", "echo out; echo err >&2; exit 3"]}, timeout=10)
        assert (r.exit_code, r.stdout, r.stderr, r.timed_out) == (3, b"out\n", b"err\n", False)
        assert [x["id"] for x in await c.list()] == ["c"]
        with pytest.raises(MonitorError, match="not found"):
            await c.state("nope")
        assert await c.kill("c", "KILL") is None
        assert (await c.wait("c", timeout=10))["signal"] == 9
        await c.delete("c")
    run(go())


def test_slow_calls_wait_side_by_side_in_one_thread(mon, bundle):
    """Twenty 2 s execs take about 2 s in all, from one event loop and no worker thread."""
    b = bundle(["sleep", "100"])
    mon.client.create("c", b)
    mon.client.start("c")

    async def go():
        c = AsyncMonitorClient(mon.client.socket_path)
        t0 = time.monotonic()
        results = await asyncio.gather(*(c.exec("c", {"args": ["sleep", "2"]}, timeout=30) for _ in range(20)))
        return time.monotonic() - t0, results
    took, results = run(go())
    assert [r.exit_code for r in results] == [0] * 20
    assert took < 8, took
    mon.client.kill("c", "KILL")
    mon.client.wait("c", timeout=10)


def test_more_calls_at_once_than_the_monitors_listen_backlog(mon):
    """Connects beyond the monitor's backlog (64) find it full (EAGAIN for a non-blocking connect): retried."""
    client_mod.forget(mon.client.socket_path)

    async def go():
        c = AsyncMonitorClient(mon.client.socket_path)
        calls = [c.ping() for _ in range(300)]  # (each connects as it is made)
        return await asyncio.gather(*calls)
    assert {a["pid"] for a in run(go())} == {mon.pid}


def test_a_cancelled_call_never_hands_its_late_answer_to_the_next(mon, bundle):
    """A wait given up on is answered when its container exits; were its connection kept, the next call to take
    it (an exec in another container) would read that late answer as its own."""
    b = bundle(["sleep", "100"])
    for cid in ("c", "d"):
        mon.client.create(cid, b)
        mon.client.start(cid)
    client_mod.forget(mon.client.socket_path)

    async def go():
        c = AsyncMonitorClient(mon.client.socket_path)
        waiting = asyncio.ensure_future(c.wait("c"))
        await asyncio.sleep(0.3)
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting
        execing = asyncio.ensure_future(c.exec("d", {"args": ["sleep", "2"]}, timeout=60))
        await asyncio.sleep(0.3)
        await c.kill("c", "KILL")  # c's waiters are answered now, d's exec later
        return await execing
    r = run(go())
    assert (r.exit_code, r.timed_out) == (0, False)
    mon.client.kill("d", "KILL")
    for cid in ("c", "d"):
        assert mon.client.wait(cid, timeout=10)["signal"] == 9


def test_an_absent_monitor_and_a_timeout_are_monitor_errors(mon, bundle, tmp_path):
    b = bundle(["sleep", "100"])
    mon.client.create("c", b)
    mon.client.start("c")

    async def go():
        with pytest.raises(MonitorError, match="not running"):
            await AsyncMonitorClient(str(tmp_path / "none.sock")).ping()
        with pytest.raises(MonitorError, match="timed out"):
            await AsyncMonitorClient(mon.client.socket_path).wait("c", timeout=0.3)
        return await AsyncMonitorClient(mon.client.socket_path).ping()
    assert run(go())["pid"] == mon.pid
    mon.client.kill("c", "KILL")
    mon.client.wait("c", timeout=10)
