"""Prometheus metrics from the real daemon: RPC latency by method and code, pods and containers by state, pulls,
monitor spawns and CNI calls, scraped over HTTP like Prometheus does."""

from __future__ import annotations

import stat
import time

import grpc
import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from pycri.api import api_pb2 as cri


def metrics_address(daemon) -> str:
    events = [e for e in daemon.log_events() if e.get("event") == "listening" and e.get("server") == "metrics"]
    assert events, "the daemon did not log its metrics address"
    return events[-1]["address"]


def scrape(address: str) -> dict[tuple[str, tuple], float]:
    """{(sample name, sorted labels): value} from GET /metrics."""
    r = httpx.get(f"http://{address}/metrics", timeout=10)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain; version=0.0.4")
    samples = {}
    for family in text_string_to_metric_families(r.text):
        for s in family.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return samples


def value(samples, name: str, **labels) -> float | None:
    return samples.get((name, tuple(sorted(labels.items()))))


@pytest.fixture
def metrics_kubelet(daemon_factory, registry, tmp_path):
    from tests.lifecycle.helpers import Kubelet

    d = daemon_factory({
        "sandbox_image": registry.ref("pause"),
        f'registries."{registry.host}"': {"insecure": True},
        "metrics": {"address": "127.0.0.1:0"},  # a free port, logged at start
    }, network=True)
    logs = tmp_path / "logs"
    logs.mkdir()
    return Kubelet(d, registry, logs)


def test_metrics_follow_rpcs_pods_and_containers(metrics_kubelet):
    k = metrics_kubelet
    address = metrics_address(k.d)
    assert address.startswith("127.0.0.1:")
    before = scrape(address)
    assert value(before, "pycri_sandboxes", state="ready") == 0
    assert value(before, "pycri_containers", state="running") == 0
    assert value(before, "pycri_image_pulls_in_flight") == 0
    assert value(before, "process_resident_memory_bytes") > 0

    k.rt.Version(cri.VersionRequest())
    with pytest.raises(grpc.RpcError) as err:
        k.rt.ContainerStatus(cri.ContainerStatusRequest(container_id="no-such-container"))
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    sid, pod = k.run_pod("metrics")
    running = k.start(sid, pod, "app", command=["sleep", "3600"])
    created = k.create(sid, pod, "idle", command=["sleep", "3600"])

    m = scrape(address)
    hist = "pycri_grpc_request_duration_seconds"
    assert value(m, f"{hist}_count", method="Version", code="OK") == 1
    assert value(m, f"{hist}_count", method="ContainerStatus", code="NOT_FOUND") == 1
    assert value(m, f"{hist}_bucket", method="ContainerStatus", code="NOT_FOUND", le="+Inf") == 1
    assert value(m, f"{hist}_count", method="RunPodSandbox", code="OK") == 1
    assert value(m, f"{hist}_count", method="StartContainer", code="OK") == 1
    assert value(m, f"{hist}_sum", method="RunPodSandbox", code="OK") > 0
    # state gauges are read from the daemon's records at scrape time
    assert value(m, "pycri_sandboxes", state="ready") == 1
    assert value(m, "pycri_containers", state="running") == 1
    assert value(m, "pycri_containers", state="created") == 1
    # the pod's pulls (pause via RunPodSandbox, busybox by each create), its monitor and its CNI plugins
    assert value(m, "pycri_image_pull_duration_seconds_count", result="ok") == 3
    assert value(m, "pycri_image_pull_bytes_total") > 0
    assert value(m, "pycri_monitor_spawn_duration_seconds_count") == 1
    assert value(m, "pycri_cni_plugin_duration_seconds_count", plugin="bridge", command="ADD", result="ok") == 1
    assert value(m, "pycri_cni_plugin_duration_seconds_count", plugin="portmap", command="ADD", result="ok") == 1

    k.rt.StopPodSandbox(cri.StopPodSandboxRequest(pod_sandbox_id=sid), timeout=60)
    m = scrape(address)
    assert value(m, "pycri_sandboxes", state="ready") == 0
    assert value(m, "pycri_sandboxes", state="notready") == 1
    assert value(m, "pycri_containers", state="exited") == 1  # the running one; the created one stays created
    assert k.status(running).state == cri.CONTAINER_EXITED and k.status(created).state == cri.CONTAINER_CREATED
    assert value(m, "pycri_cni_plugin_duration_seconds_count", plugin="bridge", command="DEL", result="ok") == 1
    assert value(m, f"{hist}_count", method="StopPodSandbox", code="OK") == 1

    # only /metrics is served there; pull progress is on the root-only status socket
    assert httpx.get(f"http://{address}/pulls", timeout=10).status_code == 404
    assert httpx.post(f"http://{address}/metrics", timeout=10).status_code == 405


def test_metrics_off_by_default_status_socket_root_only(daemon):
    assert not [e for e in daemon.log_events() if e.get("event") == "listening" and e.get("server") == "metrics"]
    sock = daemon.socket.with_name("pycri-status.sock")
    st = sock.stat()
    assert stat.S_ISSOCK(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o600
    daemon.stop()
    deadline = time.monotonic() + 5
    while sock.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not sock.exists()


def test_metrics_address_in_use_fails_start(daemon_factory):
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        d = daemon_factory({"metrics": {"address": f"127.0.0.1:{port}"}}, start=False)
        with pytest.raises(RuntimeError, match=r"pycri exited with 1[\s\S]*metrics"):
            d.start()
