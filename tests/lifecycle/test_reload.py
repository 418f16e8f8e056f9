"""SIGHUP re-reads the config file: registry settings and the log level apply to the running daemon, pods keep
running, other changes are reported as needing a restart, and a bad file keeps the running settings."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import grpc
import pytest

from pycri.api import api_pb2 as cri
from tests.fixtures.daemon import write_config
from tests.lifecycle.helpers import Kubelet

MIRRORED = "mirror-only.invalid"  # resolves nowhere: pulls from it work only through a configured mirror


def _settings(d, registry, **extra) -> dict:
    base = {
        "root": str(d.root), "state": str(d.state), "listen": str(d.socket), "log_level": "info",
        "cni": {"conf_dir": str(d.cni_conf_dir), "write_default_conflist": False},
        "sandbox_image": registry.ref("pause"),
        f'registries."{registry.host}"': {"insecure": True},
    }
    base.update(extra)
    return base


def _hup_and_wait(d, event: str, since: int, timeout: float = 10) -> dict:
    os.kill(d.proc.pid, signal.SIGHUP)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for e in d.log_events()[since:]:
            if e.get("event") == event:
                return e
        time.sleep(0.05)
    raise AssertionError(f"no {event!r} log event after SIGHUP:\n{d.log_text()[-3000:]}")


def _pull(k, ref):
    return k.img.PullImage(cri.PullImageRequest(image=cri.ImageSpec(image=ref)), timeout=60)


def test_sighup_reloads_registries_and_log_level(daemon_factory, registry, tmp_path):
    d = daemon_factory(None, start=False, network=True)
    write_config(d.config_path, _settings(d, registry))
    d.start()
    logs = tmp_path / "logs"
    logs.mkdir()
    k = Kubelet(d, registry, logs)
    sid, pod = k.run_pod("reload")
    cid = k.start(sid, pod, "app", command=["sleep", "300"])
    pid = json.loads(k.rt.ContainerStatus(cri.ContainerStatusRequest(container_id=cid, verbose=True))
                     .info["info"])["pid"]
    assert pid > 0

    mirrored_ref = f"{MIRRORED}/pycri-test/busybox:latest"
    with pytest.raises(grpc.RpcError):
        _pull(k, mirrored_ref)  # no mirror yet: the host itself does not resolve

    # log level info: polling RPCs and probes log at debug, so none of them shows; a failing one does
    k.rt.ListPodSandbox(cri.ListPodSandboxRequest())
    assert k.rt.ExecSync(cri.ExecSyncRequest(container_id=cid, cmd=["true"], timeout=5)).exit_code == 0
    with pytest.raises(grpc.RpcError):
        k.rt.ExecSync(cri.ExecSyncRequest(container_id="no-such-container", cmd=["true"], timeout=5))
    assert not any(e.get("method") in ("ListPodSandbox", "ExecSync") and e.get("code") == "OK"
                   for e in d.log_events())
    assert any(e.get("method") == "ExecSync" and e.get("code") == "NOT_FOUND" and e.get("level") == "warning"
               for e in d.log_events())
    pod_dir = json.loads(k.rt.PodSandboxStatus(cri.PodSandboxStatusRequest(pod_sandbox_id=sid, verbose=True))
                         .info["info"])["podDir"]
    monitor_log = (Path(pod_dir) / "monitor.log").read_text()
    assert "container.started" in monitor_log and "exec." not in monitor_log  # a probe's exec: debug, not written

    n = len(d.log_events())
    write_config(d.config_path, _settings(
        d, registry, log_level="debug",
        **{f'registries."{MIRRORED}"': {"mirrors": [registry.url], "fallback_to_host": False}}))
    done = _hup_and_wait(d, "config reloaded", n)
    assert set(done["applied"]) == {"registries", "log_level"} and done["log_level"] == "debug"

    image_id = _pull(k, mirrored_ref).image_ref
    assert image_id
    k.rt.ListPodSandbox(cri.ListPodSandboxRequest())
    k.rt.ExecSync(cri.ExecSyncRequest(container_id=cid, cmd=["true"], timeout=5))
    debug = [(e.get("method"), e.get("container_id")) for e in d.log_events()[n:] if e.get("level") == "debug"]
    assert ("ListPodSandbox", None) in debug and ("ExecSync", cid) in debug

    # the pod and its container were not touched
    st = k.rt.ContainerStatus(cri.ContainerStatusRequest(container_id=cid, verbose=True))
    assert st.status.state == cri.CONTAINER_RUNNING
    assert json.loads(st.info["info"])["pid"] == pid
    os.kill(pid, 0)
    assert k.pod_status(sid).state == cri.SANDBOX_READY

    # a setting that cannot change live is reported, not applied
    n = len(d.log_events())
    write_config(d.config_path, _settings(
        d, registry, log_level="debug", image_pull_progress_timeout=99.0,
        **{f'registries."{MIRRORED}"': {"mirrors": [registry.url], "fallback_to_host": False}}))
    warn = _hup_and_wait(d, "config changes need a restart to apply", n)
    assert warn["keys"] == ["image_pull_progress_timeout"]

    # a bad file: logged, the running settings stay (the mirror still works)
    n = len(d.log_events())
    d.config_path.write_text('log_level = "loud"\n')
    bad = _hup_and_wait(d, "config reload failed; keeping the running settings", n)
    assert bad["level"] == "error" and "log_level" in bad["error"]
    assert _pull(k, f"{MIRRORED}/pycri-test/pause:latest").image_ref
    assert d.proc.poll() is None
    k.rt.Version(cri.VersionRequest())
