"""A node with no registry: the pause image imported from an archive (`pycri images import`) runs pods."""

from __future__ import annotations

import subprocess
import tarfile

from pycri.api import api_pb2 as cri
from tests.fixtures.daemon import PYCRI
from tests.fixtures.registry import images_dir
from tests.lifecycle.conftest import pod_config


def test_imported_pause_image_runs_a_pod_without_a_registry(daemon_factory, tmp_path):
    archive = tmp_path / "pause.tar"
    with tarfile.open(archive, "w") as tar:
        tar.add(images_dir() / "pause", arcname=".")
    d = daemon_factory(start=False, network=True)  # default sandbox_image: registry.k8s.io/pause:3.10
    out = subprocess.run(PYCRI + ["--config", str(d.config_path), "images", "import", str(archive),
                                  "--name", "registry.k8s.io/pause:3.10"], capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, out.stderr
    image_id = out.stdout.split()[0]
    d.start()
    status = d.image.ImageStatus(cri.ImageStatusRequest(image=cri.ImageSpec(image="registry.k8s.io/pause:3.10")))
    assert status.image.id == image_id and status.image.pinned
    sid = d.runtime.RunPodSandbox(cri.RunPodSandboxRequest(config=pod_config("offline"))).pod_sandbox_id
    assert d.runtime.PodSandboxStatus(cri.PodSandboxStatusRequest(pod_sandbox_id=sid)).status.state == \
        cri.SANDBOX_READY
    bad = subprocess.run(PYCRI + ["--config", str(d.config_path), "images", "import", str(tmp_path / "none.tar")],
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode == 1 and "import failed" in bad.stderr and "Traceback" not in bad.stderr
