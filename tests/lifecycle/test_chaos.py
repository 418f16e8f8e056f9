"""The short chaos run (hack/chaos.py): CRI load from 3 client threads, the daemon SIGKILLed 10 times at random
moments and restarted, pods' monitors and infra processes killed; every invariant checked after each restart,
then everything removed and the machine checked for leaks. The long run is `hack/chaos.py --kills 200`."""

from __future__ import annotations

import importlib.util
import os
import sys
import tempfile
import time
from pathlib import Path

from tests.fixtures.pace import scaled

_CHAOS = Path(__file__).resolve().parents[2] / "hack" / "chaos.py"


def _chaos_module():
    name = "pycri_hack_chaos"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, _CHAOS)
        mod = importlib.util.module_from_spec(spec)
        sys.modules[name] = mod
        spec.loader.exec_module(mod)
    return sys.modules[name]


def test_chaos_kills_lose_nothing_and_leak_nothing(registry):
    chaos = _chaos_module()
    seed = int(os.environ.get("PYCRI_CHAOS_SEED", "0")) or int(time.time())
    workdir = Path(tempfile.mkdtemp(prefix="pycri-t-chaos-", dir="/tmp"))
    lines: list[str] = []
    started = time.monotonic()
    result = chaos.run_chaos(workdir, registry, kills=10, workers=3, seed=seed, pods_per_worker=2, wound_every=3,
                             min_gap=scaled(0.05), max_gap=scaled(1.0), subnet="10.242.0.0/24", log=lines.append)
    elapsed = time.monotonic() - started
    assert not result["failures"], (f"seed {seed} (rerun with PYCRI_CHAOS_SEED={seed}):\n"
                                    + "\n".join(result["failures"]) + "\n--- log:\n" + "\n".join(lines[-40:]))
    assert result["kills"] == 10
    assert result["checks"] >= 10 and result["objects_checked"] > 0
    assert result["counts"].get("requests_ok", 0) > 20
    assert elapsed < scaled(90), f"the short chaos run took {elapsed:.0f}s"


def test_a_start_the_daemon_died_answering_is_running_after_the_restart(kubelet):
    """The daemon is killed after the monitor started a container and before it recorded RUNNING: after the
    restart the container is RUNNING (not CREATED, which a retried start would turn into a StartError while the
    process runs on), and stopping it kills its process."""
    from runtime import state as rtstate
    from runtime.client import MonitorClient
    from pycri.api import api_pb2 as cri

    d = kubelet.d
    sid, pod = kubelet.run_pod("halfstart")
    cid = kubelet.create(sid, pod, "c", command=["sleep", "3600"])
    pod_dir = d.state / "p" / sid[:16]
    state = pod_dir / cid / "state.json"
    kubelet.until(lambda: state.exists() and state.stat().st_size > 0, what="the monitor created the process")
    d.kill()
    pid = MonitorClient(str(pod_dir / rtstate.SOCKET_NAME)).start(cid)["pid"]  # the part done before the kill
    d.start()
    kubelet.rt = d.runtime
    st = kubelet.status(cid)
    assert st.state == cri.CONTAINER_RUNNING and st.started_at > 0, st
    assert kubelet.exec(cid, "echo", "ok").stdout == b"ok\n"
    kubelet.rt.StopContainer(cri.StopContainerRequest(container_id=cid, timeout=0))
    st = kubelet.status(cid)
    assert (st.state, st.exit_code, st.reason) == (cri.CONTAINER_EXITED, 137, "Error")
    assert not os.path.exists(f"/proc/{pid}") or open(f"/proc/{pid}/stat").read().split(") ")[1][0] == "Z"
