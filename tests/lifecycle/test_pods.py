"""Pods and containers driven over gRPC as the kubelet does (real images, CNI, namespaces, cgroups)."""

from __future__ import annotations

import concurrent.futures
import ipaddress
import json
import os
import socket
import threading
import time
import urllib.request

import grpc
import pytest

from pycri.api import api_pb2 as cri
from runtime import cgroups
from tests.lifecycle.conftest import container_config, pod_config

HTTPD = ["sh", "-c", "mkdir -p /www && echo served-by-$(hostname) > /www/index.html && exec httpd -f -p 80 -h /www"]
V2 = cgroups.detect_version() == 2


def cgroup_dir(path: str, controller: str = "memory") -> str:
    """A cgroup's directory on the host: in controller's hierarchy on v1, in the one tree on v2."""
    return f"/sys/fs/cgroup{path}" if V2 else f"/sys/fs/cgroup/{controller}{path}"


def test_two_containers_share_the_pod_network_ipc_and_uts(kubelet):
    sid, pod = kubelet.run_pod("web")
    server = kubelet.start(sid, pod, "server", command=HTTPD)
    client = kubelet.start(sid, pod, "client", command=["sleep", "3600"])
    out = kubelet.until(lambda: kubelet.exec(client, "wget", "-q", "-O", "-", "http://127.0.0.1:80/").stdout,
                        what="httpd answering on the pod's localhost")
    assert out == b"served-by-web\n"
    # ipc: a file in the pod's /dev/shm is seen by the other container; uts: one hostname
    kubelet.exec(server, "sh", "-c", "echo shared > /dev/shm/x")
    assert kubelet.exec(client, "cat", "/dev/shm/x").stdout == b"shared\n"
    assert kubelet.exec(client, "hostname").stdout == b"web\n"
    # pid: each container has its own pid namespace by default (the kubelet's default, CONTAINER=POD? no: POD)
    ps = kubelet.exec(client, "ps", "-o", "comm").stdout.decode()
    assert "httpd" in ps and "pause" in ps  # shared pod pid namespace (NamespaceMode POD)


def test_pod_ip_is_reachable_from_the_host_over_the_bridge(kubelet):
    sid, pod = kubelet.run_pod("reach")
    kubelet.start(sid, pod, "server", command=HTTPD)
    ip = kubelet.pod_status(sid).network.ip
    assert ipaddress.ip_address(ip) in ipaddress.ip_network(kubelet.d.subnet)

    def fetch():
        with urllib.request.urlopen(f"http://{ip}:80/", timeout=2) as r:
            return r.read()

    assert kubelet.until(fetch, what="pod IP answering from the host") == b"served-by-reach\n"


def test_host_network_pid_and_ipc(kubelet):
    opts = cri.NamespaceOption(network=cri.NamespaceMode.NODE, pid=cri.NamespaceMode.NODE,
                               ipc=cri.NamespaceMode.NODE)
    linux = cri.LinuxPodSandboxConfig(security_context=cri.LinuxSandboxSecurityContext(namespace_options=opts))
    sid, pod = kubelet.run_pod("hostpod", linux=linux)
    assert kubelet.pod_status(sid).network.ip == ""
    sc = cri.LinuxContainerSecurityContext(namespace_options=opts)
    cid = kubelet.start(sid, pod, "c", command=["sleep", "3600"],
                        linux=cri.LinuxContainerConfig(security_context=sc))
    host_links = sorted(os.listdir("/sys/class/net"))
    links = kubelet.exec(cid, "ls", "/sys/class/net").stdout.decode().split()
    assert sorted(links) == host_links
    assert kubelet.exec(cid, "hostname").stdout.decode().strip() == socket.gethostname()
    assert os.readlink("/proc/self/ns/pid") == kubelet.exec(cid, "readlink", "/proc/self/ns/pid").stdout.decode().strip()


def test_dns_config_and_hostname(kubelet):
    dns = cri.DNSConfig(servers=["10.96.0.10"], searches=["default.svc.cluster.local", "svc.cluster.local"],
                        options=["ndots:5"])
    sid, pod = kubelet.run_pod("dnspod", dns_config=dns)
    cid = kubelet.start(sid, pod, "c", command=["sleep", "3600"])
    assert kubelet.exec(cid, "cat", "/etc/resolv.conf").stdout.decode() == (
        "search default.svc.cluster.local svc.cluster.local\nnameserver 10.96.0.10\noptions ndots:5\n")
    assert kubelet.exec(cid, "cat", "/etc/hostname").stdout == b"dnspod\n"
    assert b"localhost" in kubelet.exec(cid, "cat", "/etc/hosts").stdout


def test_port_mapping_with_a_host_port(kubelet):
    port = 31000 + os.getpid() % 1000
    sid, pod = kubelet.run_pod("ports", port_mappings=[cri.PortMapping(protocol=cri.TCP, container_port=80,
                                                                           host_port=port)])
    kubelet.start(sid, pod, "server", command=HTTPD)
    gateway = kubelet.pod_status(sid).network.ip.rsplit(".", 1)[0] + ".1"  # a host address on the bridge

    def fetch():
        with urllib.request.urlopen(f"http://{gateway}:{port}/", timeout=2) as r:
            return r.read()

    assert kubelet.until(fetch, what="host port forwarding") == b"served-by-ports\n"


def test_volumes_and_host_path_symlinks(kubelet, tmp_path):
    real = tmp_path / "data"
    real.mkdir()
    (real / "in.txt").write_text("from-host")
    (tmp_path / "link").symlink_to(real)
    sid, pod = kubelet.run_pod("vol")
    mounts = [cri.Mount(container_path="/data", host_path=str(tmp_path / "link")),
              cri.Mount(container_path="/ro", host_path=str(real), readonly=True)]
    cid = kubelet.start(sid, pod, "c", command=["sleep", "3600"], mounts=mounts)
    assert kubelet.exec(cid, "cat", "/data/in.txt").stdout == b"from-host"
    assert kubelet.exec(cid, "sh", "-c", "echo out > /data/out.txt").exit_code == 0
    assert (real / "out.txt").read_text() == "out\n"
    assert kubelet.exec(cid, "sh", "-c", "echo x > /ro/y").exit_code != 0
    st = kubelet.status(cid)
    assert [m.container_path for m in st.mounts] == ["/data", "/ro"]


def test_logs_are_byte_exact_and_reopen_after_rotation(kubelet):
    sid, pod = kubelet.run_pod("logs")
    script = "printf 'one\\n'; printf 'err\\n' >&2; printf 'no-newline'; sleep 1; echo; " \
             "while :; do echo tick; sleep 0.2; done"
    cid = kubelet.start(sid, pod, "c", command=["sh", "-c", script])
    log_path = os.path.join(kubelet.log_dir, "c", "0.log")
    assert kubelet.status(cid).log_path == log_path

    def lines():
        text = open(log_path).read()
        return text if text.count("\n") >= 2 else None

    kubelet.until(lambda: "tick" in open(log_path).read(), what="log lines")
    entries = [line.split(" ", 3) for line in open(log_path).read().splitlines()]
    for e in entries:
        time.strptime(e[0][:19], "%Y-%m-%dT%H:%M:%S")  # RFC 3339 timestamps
        assert e[0].endswith("Z") or "+" in e[0]
    tagged = {(e[1], e[2], e[3]) for e in entries}
    assert {("stdout", "F", "one"), ("stderr", "F", "err"), ("stdout", "F", "no-newline")} <= tagged
    os.rename(log_path, log_path + ".1")
    kubelet.rt.ReopenContainerLog(cri.ReopenContainerLogRequest(container_id=cid))
    assert os.path.exists(log_path)
    kubelet.until(lambda: "tick" in open(log_path).read(), what="logging to the reopened file")
    assert "one" not in open(log_path).read()


def test_exec_sync_output_exit_code_and_timeout(kubelet):
    sid, pod = kubelet.run_pod("exec")
    cid = kubelet.start(sid, pod, "c", command=["sleep", "3600"])
    r = kubelet.exec(cid, "sh", "-c", "echo out; echo err >&2; exit 3")
    assert (r.stdout, r.stderr, r.exit_code) == (b"out\n", b"err\n", 3)
    started = time.monotonic()
    with pytest.raises(grpc.RpcError) as err:
        kubelet.exec(cid, "sleep", "30", timeout=1)
    assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert time.monotonic() - started < 10
    # the timed-out process was killed: no sleep 30 left in the container
    assert "sleep 30" not in kubelet.exec(cid, "ps", "-o", "args").stdout.decode()
    with pytest.raises(grpc.RpcError) as err:
        kubelet.exec(cid, "/no/such/binary")
    assert err.value.code() != grpc.StatusCode.INTERNAL


def test_stop_with_timeout_then_sigkill_and_exit_reasons(kubelet):
    sid, pod = kubelet.run_pod("stop")
    ignores = kubelet.start(sid, pod, "stubborn",
                            command=["sh", "-c", "trap '' TERM; touch /trapped; sleep 3600 & wait"])
    kubelet.until(lambda: kubelet.exec(ignores, "test", "-e", "/trapped").exit_code == 0, what="TERM ignored")
    started = time.monotonic()
    kubelet.rt.StopContainer(cri.StopContainerRequest(container_id=ignores, timeout=1))
    assert 0.8 < time.monotonic() - started < 15
    st = kubelet.status(ignores)
    assert (st.state, st.exit_code, st.reason) == (cri.CONTAINER_EXITED, 137, "Error")
    kubelet.rt.StopContainer(cri.StopContainerRequest(container_id=ignores, timeout=1))  # idempotent
    done = kubelet.start(sid, pod, "done", command=["true"])
    st = kubelet.wait_exited(done)
    assert (st.exit_code, st.reason) == (0, "Completed")
    assert st.started_at <= st.finished_at
    failed = kubelet.start(sid, pod, "failed", command=["sh", "-c", "exit 5"])
    st = kubelet.wait_exited(failed)
    assert (st.exit_code, st.reason) == (5, "Error")


@pytest.fixture
def pod_cgroup():
    """A pod cgroup made and removed as the kubelet does (the runtime makes only the containers' cgroups)."""
    from runtime.cgroups import open_cgroup

    path = f"/kubepods-test/pod{os.getpid()}"
    yield path
    for p in (path, "/kubepods-test"):
        cg = open_cgroup(p)
        if cg.exists():
            cg.remove()


def test_status_never_contradicts_an_exit_its_monitor_has_recorded(kubelet):
    """The moment the monitor's exit record of a container is written (seen here through inotify, as by any
    observer), the next ContainerStatus and ListContainers already tell the end, 20 times, with other clients
    keeping the daemon busy meanwhile; so does PodSandboxStatus for the infra container's end."""
    sid, pod = kubelet.run_pod("truth")
    pod_dir = kubelet.d.state / "p" / sid[:16]
    busy = kubelet.start(sid, pod, "busy", command=["sleep", "3600"])
    done = threading.Event()

    def load() -> None:
        while not done.is_set():
            kubelet.rt.ExecSync(cri.ExecSyncRequest(container_id=busy, cmd=["true"], timeout=10), timeout=30)
            kubelet.rt.ListContainers(cri.ListContainersRequest())

    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        loads = [pool.submit(load) for _ in range(4)]
        try:
            for i in range(20):
                cid = kubelet.start(sid, pod, f"c{i}", command=["sleep", "3600"])
                info = kubelet.rt.ContainerStatus(cri.ContainerStatusRequest(container_id=cid, verbose=True)).info
                _kill_until_recorded(json.loads(info["info"])["pid"], pod_dir / cid)
                st = kubelet.status(cid)
                listed = kubelet.rt.ListContainers(cri.ListContainersRequest(filter=cri.ContainerFilter(id=cid)))
                assert (st.state, st.exit_code, st.reason) == (cri.CONTAINER_EXITED, 137, "Error"), (i, st)
                assert [c.state for c in listed.containers] == [cri.CONTAINER_EXITED]
        finally:
            done.set()
        for f in loads:
            f.result()
    info = kubelet.rt.PodSandboxStatus(cri.PodSandboxStatusRequest(pod_sandbox_id=sid, verbose=True)).info
    _kill_until_recorded(json.loads(info["info"])["pid"], pod_dir / sid)
    assert kubelet.pod_status(sid).state == cri.SANDBOX_NOTREADY


def _kill_until_recorded(pid: int, state_dir, timeout: float = 10) -> None:
    """SIGKILL a container's process; return the moment its monitor has written the exit record (inotify)."""
    import select
    import struct

    from runtime.host import linux

    fd = linux.inotify_watch(str(state_dir), linux.IN_CLOSE_WRITE | linux.IN_MOVED_TO)
    try:
        os.kill(pid, 9)
        deadline = time.monotonic() + timeout
        while select.select([fd], [], [], max(0.0, deadline - time.monotonic()))[0]:
            buf = os.read(fd, 4096)
            pos = 0
            while pos < len(buf):
                _wd, _mask, _cookie, length = struct.unpack_from("iIII", buf, pos)
                if buf[pos + 16:pos + 16 + length].rstrip(b"\0") == b"exit.json":
                    return
                pos += 16 + length
    finally:
        os.close(fd)
    raise AssertionError(f"no exit record in {state_dir} within {timeout}s")


def test_oom_killed_reason_with_exit_137(kubelet, pod_cgroup):
    sid, pod = kubelet.run_pod("oom", linux=cri.LinuxPodSandboxConfig(cgroup_parent=pod_cgroup))
    res = cri.LinuxContainerResources(memory_limit_in_bytes=16 * 1024 * 1024)
    cid = kubelet.start(sid, pod, "hog", command=["sh", "-c", "mkdir /t && mount -t tmpfs tmpfs /t 2>/dev/null;"
                                                                 "dd if=/dev/zero of=/dev/shm/fill bs=1M count=64"],
                        linux=cri.LinuxContainerConfig(resources=res))
    st = kubelet.wait_exited(cid)
    assert (st.exit_code, st.reason) == (137, "OOMKilled")
    assert os.path.isdir(cgroup_dir(f"{pod_cgroup}/{sid}"))  # named as the kubelet expects
    kubelet.rt.StopPodSandbox(cri.StopPodSandboxRequest(pod_sandbox_id=sid))
    kubelet.rt.RemovePodSandbox(cri.RemovePodSandboxRequest(pod_sandbox_id=sid))
    assert not os.path.exists(cgroup_dir(f"{pod_cgroup}/{cid}"))


def test_stats_change_with_load(kubelet):
    sid, pod = kubelet.run_pod("stats")
    cid = kubelet.start(sid, pod, "busy", command=["sh", "-c", "while :; do :; done"])
    first = kubelet.rt.ContainerStats(cri.ContainerStatsRequest(container_id=cid)).stats
    time.sleep(1)
    second = kubelet.rt.ContainerStats(cri.ContainerStatsRequest(container_id=cid)).stats
    assert second.cpu.usage_core_nano_seconds.value > first.cpu.usage_core_nano_seconds.value + 2e8
    assert second.memory.working_set_bytes.value > 0
    listed = kubelet.rt.ListContainerStats(cri.ListContainerStatsRequest()).stats
    assert [s.attributes.id for s in listed] == [cid]


def test_list_filters(kubelet):
    a, pa = kubelet.run_pod("a", labels={"app": "a"})
    b, pb = kubelet.run_pod("b", labels={"app": "b"})
    ca = kubelet.start(a, pa, "c", command=["sleep", "3600"], labels={"tier": "x"})
    cb = kubelet.create(b, pb, "c", command=["sleep", "3600"])
    rt = kubelet.rt
    assert [s.id for s in rt.ListPodSandbox(cri.ListPodSandboxRequest(
        filter=cri.PodSandboxFilter(label_selector={"app": "b"}))).items] == [b]
    assert [s.id for s in rt.ListPodSandbox(cri.ListPodSandboxRequest(
        filter=cri.PodSandboxFilter(id=a[:12]))).items] == [a]
    running = rt.ListContainers(cri.ListContainersRequest(filter=cri.ContainerFilter(
        state=cri.ContainerStateValue(state=cri.CONTAINER_RUNNING)))).containers
    assert [c.id for c in running] == [ca]
    assert [c.id for c in rt.ListContainers(cri.ListContainersRequest(filter=cri.ContainerFilter(
        pod_sandbox_id=b))).containers] == [cb]
    assert [c.id for c in rt.ListContainers(cri.ListContainersRequest(filter=cri.ContainerFilter(
        label_selector={"tier": "x"}))).containers] == [ca]
    streamed = [c.id for r in rt.StreamContainers(cri.StreamContainersRequest()) for c in r.containers]
    assert sorted(streamed) == sorted([ca, cb])


def test_run_pod_sandbox_is_idempotent_under_retries(kubelet):
    config = pod_config("retry", log_dir=kubelet.log_dir)
    request = cri.RunPodSandboxRequest(config=config)
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        ids = list(pool.map(lambda _: kubelet.rt.RunPodSandbox(request, timeout=120).pod_sandbox_id, range(4)))
    assert len(set(ids)) == 1
    with pytest.raises(grpc.RpcError) as err:
        kubelet.rt.RunPodSandbox(request)
    assert err.value.code() == grpc.StatusCode.ALREADY_EXISTS and ids[0] in err.value.details()
    assert len(kubelet.rt.ListPodSandbox(cri.ListPodSandboxRequest()).items) == 1


def test_stop_and_remove_are_idempotent_and_unknown_ids_succeed(kubelet):
    rt = kubelet.rt
    rt.StopPodSandbox(cri.StopPodSandboxRequest(pod_sandbox_id="f" * 64))
    rt.RemovePodSandbox(cri.RemovePodSandboxRequest(pod_sandbox_id="f" * 64))
    rt.RemoveContainer(cri.RemoveContainerRequest(container_id="e" * 64))
    rt.StopContainer(cri.StopContainerRequest(container_id="d" * 64, timeout=0))  # as containerd >= 1.7
    assert any(e.get("event") == "stop of an unknown container: nothing to stop" and e.get("container_id") == "d" * 64
               for e in kubelet.d.log_events())
    sid, pod = kubelet.run_pod("idem")
    stopped = kubelet.start(sid, pod, "stopped", command=["sleep", "3600"])
    for _ in range(2):
        rt.StopContainer(cri.StopContainerRequest(container_id=stopped, timeout=0))
    assert kubelet.status(stopped).state == cri.CONTAINER_EXITED
    cid = kubelet.start(sid, pod, "c", command=["sleep", "3600"])
    rt.RemoveContainer(cri.RemoveContainerRequest(container_id=cid))  # while running
    rt.RemoveContainer(cri.RemoveContainerRequest(container_id=cid))
    rt.StopContainer(cri.StopContainerRequest(container_id=cid, timeout=0))  # removed: unknown by now
    for _ in range(2):
        rt.StopPodSandbox(cri.StopPodSandboxRequest(pod_sandbox_id=sid))
    assert kubelet.pod_status(sid).state == cri.SANDBOX_NOTREADY
    for _ in range(2):
        rt.RemovePodSandbox(cri.RemovePodSandboxRequest(pod_sandbox_id=sid))
    with pytest.raises(grpc.RpcError) as err:
        kubelet.pod_status(sid)
    assert err.value.code() == grpc.StatusCode.NOT_FOUND


def test_bad_requests_get_clear_statuses(kubelet):
    rt = kubelet.rt
    with pytest.raises(grpc.RpcError) as err:
        rt.RunPodSandbox(cri.RunPodSandboxRequest(config=cri.PodSandboxConfig()))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(grpc.RpcError) as err:
        rt.RunPodSandbox(cri.RunPodSandboxRequest(config=pod_config("h"), runtime_handler="nope"))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    sid, pod = kubelet.run_pod("bad")
    with pytest.raises(grpc.RpcError) as err:
        rt.CreateContainer(cri.CreateContainerRequest(pod_sandbox_id=sid, sandbox_config=pod, config=container_config(
            "c", "127.0.0.1:1/never/pulled:1")))
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    with pytest.raises(grpc.RpcError) as err:
        rt.ContainerStatus(cri.ContainerStatusRequest(container_id="0" * 64))
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    with pytest.raises(grpc.RpcError) as err:
        kubelet.start(sid, pod, "missing-binary", command=["/no/such/binary"])
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "/no/such/binary" in err.value.details()


def test_pod_sandbox_stats(kubelet):
    sid, pod = kubelet.run_pod("podstats")
    ip = kubelet.pod_status(sid).network.ip
    kubelet.start(sid, pod, "busy", command=["sh", "-c", "while :; do :; done"])
    kubelet.start(sid, pod, "server", command=HTTPD)
    kubelet.until(lambda: urllib.request.urlopen(f"http://{ip}:80/", timeout=2).read(), what="httpd up")
    first = kubelet.rt.PodSandboxStats(cri.PodSandboxStatsRequest(pod_sandbox_id=sid)).stats
    time.sleep(0.5)
    stats = kubelet.rt.ListPodSandboxStats(cri.ListPodSandboxStatsRequest()).stats
    assert [s.attributes.id for s in stats] == [sid]
    linux = stats[0].linux
    assert linux.cpu.usage_core_nano_seconds.value > first.linux.cpu.usage_core_nano_seconds.value
    assert linux.cpu.usage_nano_cores.value > 1e8  # the busy loop uses a good part of a core
    assert linux.network.default_interface.name == "eth0"
    assert linux.network.default_interface.rx_bytes.value > 0 and linux.network.default_interface.tx_bytes.value > 0
    assert linux.process.process_count.value >= 2
    assert len(linux.containers) == 2


def test_cadvisor_metrics(kubelet):
    """ListMetricDescriptors names every metric ListPodSandboxMetrics returns; values follow the workload."""
    descriptors = {d.name: list(d.label_keys)
                   for d in kubelet.rt.ListMetricDescriptors(cri.ListMetricDescriptorsRequest()).descriptors}
    assert descriptors["container_cpu_usage_seconds_total"] == ["id", "name", "image", "cpu"]
    assert descriptors["container_network_receive_bytes_total"] == ["id", "name", "image", "interface"]
    sid, pod = kubelet.run_pod("metrics")
    ip = kubelet.pod_status(sid).network.ip
    busy = kubelet.start(sid, pod, "busy", command=["sh", "-c", "while :; do :; done"],
                         linux=cri.LinuxContainerConfig(resources=cri.LinuxContainerResources(
                             cpu_period=100000, cpu_quota=150000, memory_limit_in_bytes=64 << 20)))
    kubelet.start(sid, pod, "server", command=HTTPD)
    kubelet.until(lambda: urllib.request.urlopen(f"http://{ip}:80/", timeout=2).read(), what="httpd up")
    time.sleep(1.2)  # > 1 s of cpu for the busy loop: the seconds counters are whole seconds
    pods = kubelet.rt.ListPodSandboxMetrics(cri.ListPodSandboxMetricsRequest()).pod_metrics
    assert [p.pod_sandbox_id for p in pods] == [sid]
    by_container = {c.container_id: {(m.name, tuple(m.label_values[3:])): m for m in c.metrics}
                    for c in pods[0].container_metrics}
    assert len(by_container) == 2
    for metrics in by_container.values():
        for (name, extra), m in metrics.items():
            assert len(descriptors[name]) == 3 + len(extra), name
    busy_m = by_container[busy]
    assert busy_m[("container_cpu_usage_seconds_total", ("total",))].value.value >= 1
    assert busy_m[("container_cpu_usage_seconds_total", ("total",))].metric_type == cri.MetricType.COUNTER
    assert busy_m[("container_cpu_user_seconds_total", ())].value.value >= 1
    assert busy_m[("container_memory_working_set_bytes", ())].value.value > 0
    assert busy_m[("container_memory_working_set_bytes", ())].metric_type == cri.MetricType.GAUGE
    assert busy_m[("container_spec_memory_limit_bytes", ())].value.value == 64 << 20
    assert busy_m[("container_spec_cpu_quota", ())].value.value == 150000
    assert busy_m[("container_processes", ())].value.value >= 1
    label_values = busy_m[("container_memory_rss", ())].label_values
    assert label_values[:2] == [busy, "busy"] and "/busybox" in label_values[2]
    net = {(m.name, m.label_values[3]): m for m in pods[0].metrics}
    assert all(m.label_values[:3] == [sid, "POD", ""] for m in pods[0].metrics)
    assert net[("container_network_receive_bytes_total", "eth0")].value.value > 0
    assert net[("container_network_transmit_packets_total", "eth0")].value.value > 0


def test_container_events_are_streamed(kubelet):
    import threading

    events = []
    stream = kubelet.rt.GetContainerEvents(cri.GetEventsRequest())

    def read():
        try:
            for e in stream:
                events.append((e.container_id, e.container_event_type))
        except grpc.RpcError:
            pass

    t = threading.Thread(target=read)
    t.start()
    try:
        time.sleep(0.3)
        sid, pod = kubelet.run_pod("events")
        cid = kubelet.start(sid, pod, "c", command=["true"])
        kubelet.wait_exited(cid)
        kubelet.rt.RemoveContainer(cri.RemoveContainerRequest(container_id=cid))
        kubelet.until(lambda: (cid, cri.CONTAINER_DELETED_EVENT) in events, what="deleted event")
    finally:
        stream.cancel()
        t.join(5)
    mine = [kind for c, kind in events if c == cid]
    assert mine == [cri.CONTAINER_CREATED_EVENT, cri.CONTAINER_STARTED_EVENT, cri.CONTAINER_STOPPED_EVENT,
                    cri.CONTAINER_DELETED_EVENT]
    assert (sid, cri.CONTAINER_STARTED_EVENT) in events


def test_update_pod_sandbox_resources_is_recorded(kubelet):
    sid, _ = kubelet.run_pod("resize")
    kubelet.rt.UpdatePodSandboxResources(cri.UpdatePodSandboxResourcesRequest(
        pod_sandbox_id=sid, resources=cri.LinuxContainerResources(cpu_shares=512, memory_limit_in_bytes=1 << 28)))
    info = json.loads(kubelet.rt.PodSandboxStatus(cri.PodSandboxStatusRequest(pod_sandbox_id=sid, verbose=True))
                      .info["info"])
    assert info["resources"] == {"cpuShares": "512", "memoryLimitInBytes": str(1 << 28)}
    with pytest.raises(grpc.RpcError) as err:
        kubelet.rt.UpdatePodSandboxResources(cri.UpdatePodSandboxResourcesRequest(pod_sandbox_id="0" * 64))
    assert err.value.code() == grpc.StatusCode.NOT_FOUND


def test_update_container_resources_applies_live(kubelet):
    sid, pod = kubelet.run_pod("update")
    res = cri.LinuxContainerResources(memory_limit_in_bytes=64 << 20, cpu_shares=256)
    cid = kubelet.start(sid, pod, "c", command=["sleep", "3600"], linux=cri.LinuxContainerConfig(resources=res))
    memory = cgroup_dir(f"/pycri/{cid}") + ("/memory.max" if V2 else "/memory.limit_in_bytes")
    assert int(open(memory).read()) == 64 << 20
    kubelet.rt.UpdateContainerResources(cri.UpdateContainerResourcesRequest(
        container_id=cid, linux=cri.LinuxContainerResources(memory_limit_in_bytes=128 << 20, cpu_shares=512)))
    assert int(open(memory).read()) == 128 << 20
    if V2:
        assert int(open(cgroup_dir(f"/pycri/{cid}") + "/cpu.weight").read()) == cgroups.shares_to_weight(512)
    else:
        assert int(open(cgroup_dir(f"/pycri/{cid}", "cpu") + "/cpu.shares").read()) == 512
    st = kubelet.status(cid)
    assert st.resources.linux.memory_limit_in_bytes == 128 << 20


def test_target_pid_namespace(kubelet):
    sid, pod = kubelet.run_pod("target")
    own = cri.NamespaceOption(pid=cri.NamespaceMode.CONTAINER)
    app = kubelet.start(sid, pod, "app", command=["sleep", "3600"],
                        linux=cri.LinuxContainerConfig(security_context=cri.LinuxContainerSecurityContext(
                            namespace_options=own)))
    assert "pause" not in kubelet.exec(app, "ps", "-o", "comm").stdout.decode()  # its own pid namespace
    target = cri.NamespaceOption(pid=cri.NamespaceMode.TARGET, target_id=app)
    debug = kubelet.start(sid, pod, "debug", command=["sleep", "3601"],
                          linux=cri.LinuxContainerConfig(security_context=cri.LinuxContainerSecurityContext(
                              namespace_options=target)))
    ps = kubelet.exec(debug, "ps", "-o", "args").stdout.decode()
    assert "sleep 3600" in ps and "sleep 3601" in ps  # the debug container sees the target's processes


def test_image_fs_info_reports_images_and_writable_layers(kubelet):
    sid, pod = kubelet.run_pod("fs")
    cid = kubelet.start(sid, pod, "c", command=["sh", "-c", "dd if=/dev/zero of=/big bs=1M count=3; sleep 3600"])
    kubelet.until(lambda: kubelet.exec(cid, "ls", "/big").exit_code == 0, what="file written")
    time.sleep(0.5)
    info = kubelet.img.ImageFsInfo(cri.ImageFsInfoRequest())
    assert info.image_filesystems[0].used_bytes.value > 1 << 20
    assert info.image_filesystems[0].fs_id.mountpoint == str(kubelet.d.root)
    containers = info.container_filesystems[0]
    assert containers.used_bytes.value >= 3 << 20 and containers.inodes_used.value > 0
