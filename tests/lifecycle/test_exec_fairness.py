"""One pod's many slow ExecSyncs must not delay another pod's calls, nor make execs miss their deadlines."""

from __future__ import annotations

import concurrent.futures
import os
import time

import grpc

from pycri.api import api_pb2 as cri
from tests.fixtures.pace import scaled

SLOW = 40          # concurrent `sleep 20` ExecSyncs in pod A
SLOW_SECONDS = 20
SLOW_CMD = ["sleep", "20.25"]  # (a command line no other process has: counted on the host)
B_BOUND = 5.0      # seconds any one of pod B's calls may take meanwhile (about 0.1-1 s unloaded)


def _running(cmd: list[str]) -> int:
    """How many processes on the host run exactly cmd."""
    want = b"".join(a.encode() + b"\0" for a in cmd)
    count = 0
    for p in os.listdir("/proc"):
        try:
            with open(f"/proc/{p}/cmdline", "rb") as f:
                count += f.read() == want
        except (OSError, ValueError):
            continue
    return count


def test_slow_execs_in_one_pod_do_not_delay_another_pods_lifecycle(kubelet):
    sid_a, pod_a = kubelet.run_pod("slow-a")
    cid_a = kubelet.start(sid_a, pod_a, "a", command=["sleep", "3600"])
    with concurrent.futures.ThreadPoolExecutor(SLOW) as pool:
        started = time.monotonic()
        slow = [pool.submit(kubelet.exec, cid_a, *SLOW_CMD, timeout=30) for _ in range(SLOW)]
        # (with a small shared pool only a few of them run: give them a few seconds to start, no more)
        deadline = time.monotonic() + 8
        while _running(SLOW_CMD) < SLOW and time.monotonic() < deadline:
            time.sleep(0.1)
        side_by_side = _running(SLOW_CMD)

        took: dict[str, float] = {}

        def timed(what: str, fn, *args, **kw):
            t0 = time.monotonic()
            try:
                return fn(*args, **kw)
            except grpc.RpcError as exc:
                raise AssertionError(f"pod B's {what} failed after {time.monotonic() - t0:.1f}s beside pod A's "
                                     f"execs: {exc.code().name}; before it: {took}") from None
            finally:
                took[what] = time.monotonic() - t0

        sid_b, pod_b = timed("RunPodSandbox", kubelet.run_pod, "fast-b")
        cid_b = timed("CreateContainer", kubelet.create, sid_b, pod_b, "b", command=["sleep", "3600"])
        timed("StartContainer", kubelet.rt.StartContainer, cri.StartContainerRequest(container_id=cid_b), timeout=60)
        r = timed("ExecSync", kubelet.exec, cid_b, "true", timeout=10)
        assert r.exit_code == 0
        timed("StopContainer", kubelet.rt.StopContainer, cri.StopContainerRequest(container_id=cid_b, timeout=10),
              timeout=60)
        timed("RemoveContainer", kubelet.rt.RemoveContainer, cri.RemoveContainerRequest(container_id=cid_b),
              timeout=60)
        timed("StopPodSandbox", kubelet.rt.StopPodSandbox, cri.StopPodSandboxRequest(pod_sandbox_id=sid_b),
              timeout=60)
        timed("RemovePodSandbox", kubelet.rt.RemovePodSandbox, cri.RemovePodSandboxRequest(pod_sandbox_id=sid_b),
              timeout=60)
        b_done = time.monotonic() - started
        slow_results = [f.result() for f in slow]
        a_done = time.monotonic() - started
    print(f"pod B's calls beside {side_by_side} running execs of pod A:",
          {k: round(v, 2) for k, v in took.items()}, f"pod A's execs done in {a_done:.1f}s")
    slowest = max(took, key=took.get)
    assert took[slowest] < B_BOUND, f"pod B's {slowest} took {took[slowest]:.1f}s beside pod A's execs: {took}"
    assert b_done < SLOW_SECONDS, f"pod B's lifecycle ended {b_done:.1f}s in: it waited for pod A's execs"
    # and pod A's execs themselves ran side by side, each within its own timeout
    assert side_by_side == SLOW, f"only {side_by_side} of pod A's {SLOW} execs ran at once"
    assert [r.exit_code for r in slow_results] == [0] * SLOW
    assert a_done < SLOW_SECONDS + 8, f"pod A's {SLOW} execs of {SLOW_SECONDS}s took {a_done:.1f}s in all"


def test_two_hundred_concurrent_execs_none_misses_its_deadline(kubelet):
    sid, pod = kubelet.run_pod("many")
    cid = kubelet.start(sid, pod, "c", command=["sleep", "3600"])
    n, seconds, timeout = 200, 1, int(scaled(15))

    def one(_):
        t0 = time.monotonic()
        try:
            r = kubelet.rt.ExecSync(cri.ExecSyncRequest(container_id=cid, cmd=["sleep", str(seconds)],
                                                        timeout=timeout), timeout=timeout + 5)
            return r.exit_code, time.monotonic() - t0
        except grpc.RpcError as exc:
            return exc.code().name, time.monotonic() - t0

    with concurrent.futures.ThreadPoolExecutor(n) as pool:
        results = list(pool.map(one, range(n)))
    print(f"{n} execs of {seconds}s: slowest answered in {max(t for _, t in results):.1f}s")
    missed = [r for r in results if r[0] != 0]
    assert not missed, f"{len(missed)} of {n} execs failed or missed their deadline: {missed[:5]}"
    assert max(t for _, t in results) < timeout, max(t for _, t in results)


def test_a_pods_execs_beyond_its_slots_wait_their_turn_within_their_timeout(daemon_factory, registry, tmp_path):
    from tests.lifecycle.helpers import Kubelet
    d = daemon_factory({"sandbox_image": registry.ref("pause"), f'registries."{registry.host}"': {"insecure": True},
                        "exec_sync_per_pod": 2}, network=True)
    logs = tmp_path / "logs"
    logs.mkdir()
    k = Kubelet(d, registry, logs)
    sid, pod = k.run_pod("slots")
    cid = k.start(sid, pod, "c", command=["sleep", "3600"])
    other_sid, other_pod = k.run_pod("other")
    other = k.start(other_sid, other_pod, "o", command=["sleep", "3600"])
    busy = ["sleep", "6.25"]
    with concurrent.futures.ThreadPoolExecutor(3) as pool:
        slow = [pool.submit(k.exec, cid, *busy, timeout=30) for _ in range(2)]
        deadline = time.monotonic() + 10
        while _running(busy) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert _running(busy) == 2
        t0 = time.monotonic()
        later = pool.submit(k.exec, cid, "echo", "my turn", timeout=30)  # waits for a slot, then runs
        try:
            k.exec(cid, "true", timeout=2)
            raise AssertionError("an exec beyond the pod's slots ran at once")
        except grpc.RpcError as exc:
            assert exc.code() == grpc.StatusCode.DEADLINE_EXCEEDED, exc
            assert "waiting behind the 2 execs in flight" in exc.details()
        assert 1.5 < time.monotonic() - t0 < 5
        assert not later.done()
        t1 = time.monotonic()
        assert k.exec(other, "true", timeout=5).exit_code == 0  # another pod's slots are its own
        assert time.monotonic() - t1 < 3
        assert later.result().stdout == b"my turn\n"
        assert [f.result().exit_code for f in slow] == [0, 0]
    assert any(e.get("event") == "exec timed out waiting for a slot of its pod" and e.get("container_id") == cid
               for e in d.log_events())
