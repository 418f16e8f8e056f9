"""`pip wheel .` from a clean tree (nothing generated in it: no CRI stubs, no pycri-init) makes a complete platform
wheel; installed into a fresh venv outside the checkout (its dependencies from .cache/wheels: `make wheels`), the
pycri it installs serves CRI, running only its own files."""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

from pycri.api import api_pb2 as cri
from tests.fixtures.daemon import START_TIMEOUT, DaemonProcess

REPO = Path(__file__).resolve().parents[1]
WHEELS = REPO / ".cache" / "wheels"


def _clean_tree(dest: Path) -> Path:
    """The checkout's files as a clone of it would have them (tracked, and new ones not ignored): no build output."""
    files = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=REPO,
                           capture_output=True, check=True).stdout.split(b"\0")
    for name in filter(None, files):
        src = REPO / os.fsdecode(name)
        if src.is_file():
            (dest / os.fsdecode(name)).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / os.fsdecode(name))
    assert not (dest / "pycri/api/api_pb2.py").exists() and not (dest / "runtime/launch/initc/pycri-init").exists()
    return dest


def test_a_wheel_from_a_clean_tree_installs_and_serves(tmp_path, monkeypatch):
    monkeypatch.delenv("PYTHONPATH", raising=False)  # (the guest of hack/node.py points it at the checkout)
    src = _clean_tree(tmp_path / "src")
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w",
                        str(tmp_path / "dist"), str(src)], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    (wheel,) = (tmp_path / "dist").glob("pycri-*.whl")
    assert wheel.name.endswith(f"-py3-none-linux_{platform.machine()}.whl"), wheel.name
    with zipfile.ZipFile(wheel) as z:
        names = {i.filename.split("/", 2)[-1] if ".data/" in i.filename else i.filename: i for i in z.infolist()}
    for need in ("pycri/api/api_pb2.py", "pycri/api/api_pb2_grpc.py", "runtime/launch/initc/pycri-init",
                 "pycri/cli.py"):
        assert need in names, sorted(names)
    assert names["runtime/launch/initc/pycri-init"].external_attr >> 16 & 0o111, "pycri-init is not executable"

    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    r = subprocess.run([str(venv / "bin/pip"), "install", "-q", "--no-index", "--find-links", str(WHEELS), str(wheel)],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    where = subprocess.run([str(venv / "bin/python"), "-c", "import pycri, runtime.launch.fastinit as f; "
                            "print(pycri.__file__); print(f.BINARY)"], capture_output=True, text=True,
                           cwd=tmp_path, check=True).stdout.split()
    assert all(p.startswith(str(venv)) for p in where), where

    (tmp_path / "d").mkdir()
    d = DaemonProcess(tmp_path / "d")
    d.command, d.cwd = [str(venv / "bin/pycri")], tmp_path
    d.start(timeout=max(30, START_TIMEOUT))
    try:
        v = d.runtime.Version(cri.VersionRequest(), timeout=10)
        assert (v.runtime_name, v.runtime_api_version) == ("pycri", "v1")
        st = d.runtime.Status(cri.StatusRequest(), timeout=10)
        assert any(c.type == "RuntimeReady" and c.status for c in st.status.conditions), st
    finally:
        d.stop()
