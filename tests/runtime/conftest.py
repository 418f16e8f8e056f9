"""Fixtures for runtime/ tests: busybox rootfs, bundles, monitors, and a leak check after every test."""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import tempfile
import time
import uuid

import pytest

from tests.runtime.rt_helpers import MARKER_ENV, make_rootfs, make_spec, write_bundle

from runtime import cgroups, spawner
from runtime.client import MonitorClient
from runtime.host import linux

TOKEN = uuid.uuid4().hex[:12]
# the session's cgroups and files carry its pid: a later session removes those of one that was killed
CG_PREFIX = f"/pycri-rt-test-{os.getpid()}-{TOKEN}"
TMP_PREFIX = f"prt-{os.getpid()}-"
_OWNED = re.compile(r"(?:pycri-rt-test|prt)-(\d+)-")

if os.geteuid() != 0:
    pytest.skip("runtime tests need root", allow_module_level=True)


def _marked_pids() -> set[int]:
    """Processes carrying this session's marker in their environment (monitors, containers, execs)."""
    needle = f"{MARKER_ENV}={TOKEN}".encode()
    me = os.getpid()
    out = set()
    for d in os.listdir("/proc"):
        if not d.isdigit() or int(d) == me:
            continue
        try:
            with open(f"/proc/{d}/environ", "rb") as f:
                env = f.read()
            with open(f"/proc/{d}/stat", "rb") as f:
                st = f.read()
        except OSError:
            continue
        if needle in env.split(b"\0") and st[st.rindex(b")") + 2:][:1] != b"Z":
            out.add(int(d))
    return out


def _mounts_under(paths: list[str]) -> list[str]:
    out = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            mp = line.split()[4]
            if any(mp == p or mp.startswith(p + "/") for p in paths):
                out.append(mp)
    return out


def _test_cgroups() -> list[str]:
    out = []
    roots = set(cgroups.v1_mounts().values()) if cgroups.detect_version() == 1 else {cgroups.ROOT}
    for mp in roots:
        base = mp + CG_PREFIX
        if os.path.isdir(base):
            for dirpath, dirnames, _ in os.walk(base):
                out += [os.path.join(dirpath, d) for d in dirnames]
    return out


def _owner_gone(name: str) -> bool:
    """A session's cgroup or temp dir whose pytest no longer runs (it was killed before its teardown)."""
    m = _OWNED.match(name)
    return m is not None and int(m.group(1)) != os.getpid() and not os.path.exists(f"/proc/{m.group(1)}")


def _remove_what_killed_sessions_left() -> None:
    roots = set(cgroups.v1_mounts().values()) if cgroups.detect_version() == 1 else {cgroups.ROOT}
    for name in {n for root in roots if os.path.isdir(root) for n in os.listdir(root) if _owner_gone(n)}:
        cgroups.open_cgroup("/" + name).remove()
    for name in os.listdir("/tmp"):
        if _owner_gone(name):
            shutil.rmtree(os.path.join("/tmp", name), ignore_errors=True)


@pytest.fixture(scope="session")
def tmp_root():
    d = tempfile.mkdtemp(prefix=TMP_PREFIX, dir="/tmp")
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture(scope="session", autouse=True)
def _cgroup_prefix():
    _remove_what_killed_sessions_left()
    yield
    cg = cgroups.open_cgroup(CG_PREFIX)
    if cg.exists():
        cg.remove()


@pytest.fixture(autouse=True)
def _marker(monkeypatch):
    """Mark the processes these tests start (monitors, containers) through the environment - only while a runtime
    test runs: a global mark would also tag processes other tests started earlier (the session's registry), and
    the leak check below kills marked processes."""
    monkeypatch.setenv(MARKER_ENV, TOKEN)


@pytest.fixture(autouse=True)
def leakcheck(_marker, tmp_root, tmp_path):
    """After each test: no marked processes, no mounts under our dirs, no cgroups under our prefix."""
    yield
    watched = [tmp_root, str(tmp_path)]
    deadline = time.monotonic() + 3
    while True:
        procs, mounts, cgs = _marked_pids(), _mounts_under(watched), _test_cgroups()
        if not (procs or mounts or cgs) or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    for pid in procs:  # do not let one leak cascade into every later test
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    assert not procs, f"leaked processes: {procs}"
    assert not mounts, f"leaked mounts: {mounts}"
    assert not cgs, f"leaked cgroups: {cgs}"


@pytest.fixture(scope="session")
def rootfs(tmp_root):
    return make_rootfs(os.path.join(tmp_root, "rootfs"))


@pytest.fixture
def cgroup_path():
    """A unique cgroupsPath under this session's prefix."""
    return f"{CG_PREFIX}/{uuid.uuid4().hex[:8]}"


@pytest.fixture
def bundle(tmp_path, rootfs):
    """bundle(args, name=..., **spec overrides / mutate=callable) -> bundle dir."""
    def make(args, name="b", mutate=None, **overrides):
        spec = make_spec(args, **overrides)
        if mutate:
            mutate(spec)
        return write_bundle(str(tmp_path / name), spec, rootfs)
    return make


class MonitorHandle:
    """A pod monitor made the production way: by a spawner (a fresh interpreter), not forked from pytest.

    A monitor forked from this process would inherit gRPC's fork handlers and state once earlier tests have
    used gRPC here; its own later os.fork() (OCI hooks, the spare's double fork) then ran those handlers and
    sometimes crashed it (the failures seen in CI, in the hook tests only). run_detached() asks for a
    single-threaded caller, which pytest is not."""

    def __init__(self, state_dir: str):
        self.state_dir = state_dir
        self._spawner = spawner.start()  # inherits this test's marker, so leaks of its processes are caught
        try:
            sock = self._spawner.spawn_monitor("test-pod", state_dir)
            with open(os.path.join(state_dir, "monitor.json")) as f:
                self.pid = json.load(f)["pid"]
        except BaseException:
            self._spawner.close()
            raise
        self.client = MonitorClient(sock, timeout=30)

    def stop(self) -> None:
        try:  # shown with a failing test's output: what the monitor saw
            with open(os.path.join(self.state_dir, "monitor.log")) as f:
                print(f"--- monitor.log of {self.state_dir}:\n{f.read()[-8000:]}")
        except OSError:
            pass
        try:
            self.client.shutdown(force=True)
        except Exception:  # noqa: BLE001 - the test may have killed it
            pass
        self._spawner.close()  # its spare monitor exits with it
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            if not linux.is_alive(self.pid, None):  # a zombie waiting for init counts as gone
                return
            time.sleep(0.005)
        os.kill(self.pid, signal.SIGKILL)


@pytest.fixture
def mon(tmp_root):
    state_dir = tempfile.mkdtemp(prefix="m", dir=tmp_root)
    h = MonitorHandle(state_dir)
    yield h
    h.stop()


@pytest.fixture(params=["openat2", "walk"])
def method(request, monkeypatch):
    """Each path resolution inside a root both ways: the kernel's (openat2 RESOLVE_IN_ROOT) and the walk of
    kernels without it."""
    if request.param == "openat2" and not linux.openat2_supported():
        pytest.skip("no openat2 on this kernel")
    monkeypatch.setitem(linux._HAVE, "openat2", request.param == "openat2")
    return request.param
