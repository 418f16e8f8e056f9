"""Units for `[metrics]`: the address setting, and the hooks before and after metrics are enabled."""

from __future__ import annotations

import subprocess
import sys
from types import SimpleNamespace

import pytest
from prometheus_client.parser import text_string_to_metric_families

from pycri import config as configmod
from pycri.observe import metrics
from pycri.config import ConfigError, from_dict
from pycri.images.content import ContentStore
from pycri.images.progress import PullTracker
from pycri.state.records import C_RUNNING, SB_READY


def test_metrics_address_default_off_and_listed():
    assert configmod.Config().metrics.address == ""
    assert '[metrics]\naddress = ""\n' in configmod.to_toml(configmod.Config())


@pytest.mark.parametrize("address,ok", [
    ("127.0.0.1:9090", True), ("[::1]:9090", True), ("0.0.0.0:0", True),
    ("localhost:9090", False), ("127.0.0.1", False), ("127.0.0.1:http", False), ("127.0.0.1:70000", False),
])
def test_metrics_address_checked(address, ok):
    if ok:
        assert from_dict({"metrics": {"address": address}}).metrics.address == address
    else:
        with pytest.raises(ConfigError, match=r"^metrics\.address: "):
            from_dict({"metrics": {"address": address}})
    with pytest.raises(ConfigError, match=r"metrics\.port: unknown key"):
        from_dict({"metrics": {"port": 9090}})


def test_hooks_are_noops_until_enabled_and_prometheus_client_is_not_imported():
    code = ("import sys; from pycri import daemon; from pycri.observe import metrics; from pycri.server import rpc; metrics.rpc('Version', 'OK', 0.1); "
            "metrics.cni_call('bridge', 'ADD', 'ok', 0.1); print('prometheus_client' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_enabled_exposition_reads_state_at_scrape(tmp_path):
    records = SimpleNamespace(containers={"c1": SimpleNamespace(state=C_RUNNING)},
                              sandboxes={"s1": SimpleNamespace(state=SB_READY)})
    content = ContentStore(tmp_path)
    images = SimpleNamespace(content=content, pulls=PullTracker(content))
    metrics.enable(SimpleNamespace(records=records, images=images))
    try:
        metrics.rpc("RunPodSandbox", "OK", 0.2)
        metrics.rpc("RunPodSandbox", "OK", 0.4)
        metrics.image_pull("not_found", 0.05)
        images.pulls.start("example.test/app:1")
        page = metrics.exposition().decode()
    finally:
        metrics.disable()
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for family in text_string_to_metric_families(page) for s in family.samples}

    def value(name, **labels):
        return samples.get((name, tuple(sorted(labels.items()))))

    assert value("pycri_grpc_request_duration_seconds_count", method="RunPodSandbox", code="OK") == 2
    assert value("pycri_grpc_request_duration_seconds_bucket", method="RunPodSandbox", code="OK", le="0.25") == 1
    assert value("pycri_image_pull_duration_seconds_count", result="not_found") == 1
    assert value("pycri_containers", state="running") == 1 and value("pycri_containers", state="exited") == 0
    assert value("pycri_sandboxes", state="ready") == 1
    assert value("pycri_image_pulls_in_flight") == 1
    assert value("pycri_image_pull_size_bytes", image="example.test/app:1") == 0
    assert metrics.exposition() == b""
