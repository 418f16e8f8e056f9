"""Attacks from inside a container on what enters it: the init binary (the CVE-2019-5736 class) and the fds it
carries in (the CVE-2024-21626 class). Each attacker is a small static program (tests/security/attack/*.c, built
here with gcc) run in the container from a read-only volume; each attack is bounded in time here, and runs long
from hack/attack.py."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pycri.api import api_pb2 as cri
from runtime.host import linux
from runtime.launch import fastinit
from tests.fixtures.pace import scaled
from tests.lifecycle.test_handlers import handler_daemon  # noqa: F401 - fixture
from tests.security.ctx_helpers import log_stdout

ATTACKS = Path(__file__).resolve().parent / "attack"
# how long each race runs: a few seconds in the suite; hack/attack.py runs them for minutes
RACE_SECONDS = float(os.environ.get("PYCRI_ATTACK_SECONDS", scaled(6)))


@pytest.fixture(scope="session")
def attack_dir(tmp_path_factory) -> Path:
    """The attackers, built static (a container has no libc of ours)."""
    out = tmp_path_factory.mktemp("attack")
    for src in ATTACKS.glob("*.c"):
        subprocess.run(["gcc", "-static", "-O2", "-o", str(out / src.stem), str(src)], check=True)
    out.chmod(0o755)
    return out


def attack_mounts(attack_dir: Path) -> list:
    return [cri.Mount(container_path="/attack", host_path=str(attack_dir), readonly=True)]


def host_files_entering_containers() -> dict[tuple[int, int], str]:
    """(st_dev, st_ino) of the host files that run in a container's namespaces before its own execve."""
    out = {}
    for path in (fastinit.BINARY, os.path.realpath(sys.executable)):
        st = os.stat(path)
        out[(st.st_dev, st.st_ino)] = path
    return out


def caught(text: str) -> tuple[list[str], list[str]]:
    """What enter_race got: (host files among the exes of host_files_entering_containers(), every file or
    directory it could open through another process's fd)."""
    host = host_files_entering_containers()
    exes, fds = [], []
    for line in text.splitlines():
        parts = line.split(" ", 3)
        if len(parts) < 3 or not parts[1].isdigit():
            continue
        if parts[0] == "exe" and (int(parts[1]), int(parts[2])) in host:
            exes.append(f"{host[(int(parts[1]), int(parts[2]))]} (as {parts[3] if len(parts) > 3 else '?'})")
        elif parts[0] == "fd":
            fds.append(parts[3] if len(parts) > 3 else "?")
    return exes, fds


def race_for_the_init(kubelet, attack_dir: Path, name: str, seconds: float, pod_kw: dict | None = None,
                      attacker_kw: dict | None = None) -> str:
    """Run enter_race in a container, while the kubelet execs in it and starts other containers in the pod
    (which enter its pid namespace too where pod_kw shares one); returns what enter_race printed."""
    sid, pod = kubelet.run_pod(name, **(pod_kw or {}))
    attacker = kubelet.start(sid, pod, "attacker", command=["/attack/enter_race", str(seconds)],
                             mounts=attack_mounts(attack_dir), **(attacker_kw or {}))
    deadline = time.monotonic() + seconds
    n = 0
    while time.monotonic() < deadline:
        try:
            kubelet.exec(attacker, "true")
        except Exception:  # noqa: BLE001 - the attacker has just ended
            break
        n += 1
        if n % 10 == 0:
            cid = kubelet.start(sid, pod, f"other{n}", command=["true"])
            kubelet.wait_exited(cid)
            kubelet.rt.RemoveContainer(cri.RemoveContainerRequest(container_id=cid))
    kubelet.wait_exited(attacker, timeout=seconds + 30)
    return log_stdout(Path(kubelet.log_dir) / "attacker" / "0.log")


@pytest.fixture(params=["pycri-init", "python"])
def init_kubelet(request, monkeypatch, daemon_factory, registry, tmp_path):
    """A kubelet on a daemon whose containers enter through pycri-init, or through the monitor's Python child
    (PYCRI_FASTINIT=0: the path of user namespaces, hooks and terminals, for every container)."""
    from tests.lifecycle.helpers import Kubelet

    if request.param == "python":
        monkeypatch.setenv("PYCRI_FASTINIT", "0")
    d = daemon_factory({"sandbox_image": registry.ref("pause"), f'registries."{registry.host}"': {"insecure": True}},
                       network=True)
    logs = tmp_path / "logs"
    logs.mkdir()
    return Kubelet(d, registry, logs)


def test_a_container_racing_for_what_enters_it_gets_nothing_of_the_host(init_kubelet, attack_dir):
    """While execs and starts enter its pid namespace, a container opens /proc/<pid>/exe and /proc/<pid>/fd/* of
    each new process, as the CVE-2019-5736 exploit did before it rewrote the binary and the CVE-2024-21626 one
    with a leaked directory fd: it must get neither the host's pycri-init or Python interpreter nor any file or
    directory through another process's fd."""
    out = race_for_the_init(init_kubelet, attack_dir, "race", seconds=RACE_SECONDS)
    assert "tries" in out, out
    assert caught(out) == ([], []), out


def test_a_container_with_cap_sys_ptrace_finds_nothing_entering_in_the_hosts_mount_namespace(init_kubelet,
                                                                                                attack_dir):
    """CAP_SYS_PTRACE overrides non-dumpable: a container granted it can read, and attach to, every process in its
    pid namespace. What enters (an exec, or a new container of a pod sharing the pid namespace) must therefore be
    in the container's other namespaces before it is in its pid namespace: found in the host's mount namespace it
    would be a way onto the host's files (before the fix, an exec was cloned straight into the pid namespace and
    joined the mount namespace after)."""
    shared_pid = {"linux": cri.LinuxPodSandboxConfig(security_context=cri.LinuxSandboxSecurityContext(
        namespace_options=cri.NamespaceOption(pid=cri.NamespaceMode.POD)))}
    ptrace = {"linux": cri.LinuxContainerConfig(security_context=cri.LinuxContainerSecurityContext(
        capabilities=cri.Capability(add_capabilities=["SYS_PTRACE"])))}
    out = race_for_the_init(init_kubelet, attack_dir, "ptrace", seconds=RACE_SECONDS, pod_kw=shared_pid,
                            attacker_kw=ptrace)
    assert "tries" in out, out
    seen = {line.split(" ", 1)[1] for line in out.splitlines() if line.startswith("mntns ")}
    assert seen, f"the attacker read no other mount namespace (the other containers' should show): {out}"
    assert f"mnt:[{os.stat('/proc/self/ns/mnt').st_ino}]" not in seen, out


def held_fds(text: str) -> tuple[dict[int, str], str]:
    """What /attack/fds printed: ({fd: link target}, its working directory)."""
    fds, cwd = {}, ""
    for line in text.replace("\r", "").splitlines():
        key, _, value = line.partition(" ")
        if key == "cwd":
            cwd = value
        elif key.isdigit():
            fds[int(key)] = value
    return fds, cwd


def only_stdio(fds: dict[int, str], what: str) -> None:
    assert sorted(fds) == [0, 1, 2], f"{what} holds {fds}"
    assert all(t == "/dev/null" or t.startswith(("pipe:", "/dev/pts/", "socket:")) for t in fds.values()), \
        f"{what} holds {fds}"


def test_what_enters_a_container_holds_only_its_stdio(init_kubelet, attack_dir):
    """The infra, an app container, an exec and a terminal exec each start with their stdio and nothing else
    open, in their own root (no fd, no working directory of the host's)."""
    import json

    from tests.streaming.helpers import run
    from tests.streaming.sessions import open_session

    k = init_kubelet
    sid, pod = k.run_pod("fds")
    infra = json.loads(k.rt.PodSandboxStatus(cri.PodSandboxStatusRequest(pod_sandbox_id=sid, verbose=True))
                       .info["info"])["pid"]
    only_stdio({int(fd): os.readlink(f"/proc/{infra}/fd/{fd}") for fd in os.listdir(f"/proc/{infra}/fd")},
               "the infra container")
    app = k.start(sid, pod, "app", command=["/attack/fds"], mounts=attack_mounts(attack_dir))
    k.wait_exited(app)
    fds, cwd = held_fds(log_stdout(Path(k.log_dir) / "app" / "0.log"))
    only_stdio(fds, "an app container")
    assert cwd == "/", cwd
    sleeper = k.start(sid, pod, "sleeper", command=["sleep", "3600"], mounts=attack_mounts(attack_dir))
    fds, cwd = held_fds(k.exec(sleeper, "/attack/fds").stdout.decode())
    only_stdio(fds, "an exec")
    assert cwd == "/", cwd
    req = cri.ExecRequest(container_id=sleeper, cmd=["/attack/fds"], tty=True, stdout=True)
    url = k.rt.Exec(req, timeout=10).url

    async def terminal() -> bytes:
        session = await open_session(url, "spdy", req)
        out, _err, _status = await session.finish()
        return out

    fds, cwd = held_fds(run(terminal()).decode())
    only_stdio(fds, "a terminal exec")
    assert all(t.startswith("/dev/pts/") for t in fds.values()), fds
    assert cwd == "/", cwd



def test_a_terminal_exec_opens_no_host_file_a_container_points_its_dev_ptmx_at(kubelet, tmp_path):
    """For a terminal exec the monitor (host root) opens the container's /dev/ptmx and /dev/pts/<n>. A container
    owns its /dev: it made /dev/ptmx a symlink to a host path (an absolute symlink under /proc/<pid>/root is
    followed from the opener's root: the host's). The monitor must not open that host file (a device of the
    host's could act on being opened), and the exec still gets a terminal."""
    from tests.streaming.helpers import run
    from tests.streaming.sessions import open_session

    IN_OPEN = 0x20
    target = tmp_path / "host-file"
    target.write_text("host")
    sid, pod = kubelet.run_pod("ptmx")
    c = kubelet.start(sid, pod, "c", command=["sleep", "3600"])
    r = kubelet.exec(c, "sh", "-c", f"rm -f /dev/ptmx && ln -s {target} /dev/ptmx && ls -l /dev/ptmx")
    assert r.exit_code == 0 and str(target).encode() in r.stdout, r
    watch = linux.inotify_watch(str(target), IN_OPEN)
    try:
        req = cri.ExecRequest(container_id=c, cmd=["sh", "-c", "tty; echo done"], tty=True, stdout=True)
        url = kubelet.rt.Exec(req, timeout=10).url

        async def terminal() -> bytes:
            session = await open_session(url, "spdy", req)
            out, _err, _status = await session.finish()
            return out

        out = run(terminal()).decode()
        try:
            opened = os.read(watch, 4096)
        except BlockingIOError:
            opened = b""
    finally:
        os.close(watch)
    assert not opened, f"the monitor opened {target} through the container's /dev/ptmx"
    assert "done\r\n" in out, out  # (through a terminal: its line discipline writes "\r\n"; the host's pty
    # when the container's cannot be used, whose name the container cannot resolve: `tty` says "not a tty")


def _write_refused(path: str) -> str | None:
    """The errno name with which writing to path fails, None if it can be written (nothing is written then)."""
    import errno

    try:
        fd = os.open(path, os.O_WRONLY)
    except OSError as exc:
        return errno.errorcode[exc.errno]
    try:
        os.write(fd, b"")  # a zero-length write still checks the seals
        os.pwrite(fd, b"\0", os.fstat(fd).st_size)  # one byte past the end: refused by a sealed file
    except OSError as exc:
        return errno.errorcode[exc.errno]
    finally:
        os.close(fd)
    return None


def test_what_enters_containers_runs_from_sealed_copies(kubelet):
    """The pod's monitor (whose Python children enter containers) and pycri-init (spares, the factory) run from
    sealed memfd copies: their /proc/<pid>/exe is no file of the host, and no one can write it."""
    import json

    sid, pod = kubelet.run_pod("sealed")
    own_pid_ns = cri.LinuxContainerConfig(security_context=cri.LinuxContainerSecurityContext(
        namespace_options=cri.NamespaceOption(pid=cri.CONTAINER)))
    # the monitor keeps a spare (and its factory) a while after a start, for the pod's next container
    kubelet.start(sid, pod, "c", command=["sleep", "3600"], linux=own_pid_ns)
    monitor = json.loads((kubelet.d.state / "p" / sid[:16] / "monitor.json").read_text())["pid"]
    assert os.readlink(f"/proc/{monitor}/exe").startswith("/memfd:python")
    assert _write_refused(f"/proc/{monitor}/exe") in ("EPERM", "ETXTBSY")
    if not fastinit.enabled():  # (PYCRI_FASTINIT=0: no pycri-init at all)
        return
    inits = []
    deadline = time.monotonic() + 10
    while not inits and time.monotonic() < deadline:
        for pid in os.listdir("/proc"):
            try:
                if pid.isdigit() and Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1].split()[1] == str(monitor):
                    if Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0] == fastinit.BINARY.encode():
                        inits.append(int(pid))
            except (OSError, IndexError):
                continue
        time.sleep(0.05)
    assert inits, "no pycri-init spare or factory found under the monitor"
    for pid in inits:
        assert os.readlink(f"/proc/{pid}/exe").startswith("/memfd:pycri-init"), pid
        assert _write_refused(f"/proc/{pid}/exe") in ("EPERM", "ETXTBSY"), pid


def test_a_working_dir_through_an_fd_finds_only_the_runtimes_own_pipes(init_kubelet, attack_dir):
    """The CVE-2024-21626 attack: an image's WorkingDir "/proc/self/fd/<n>" names an fd the runtime has open when
    it changes to it; a directory of the host's there starts the container outside its root. At that moment
    only the container's stdio (0-2) and the two pipes to the monitor may be open, and a working directory
    outside the root is refused."""
    k = init_kubelet
    sid, pod = k.run_pod("cwd")
    refusals = {}
    for n in range(3, 40):
        try:
            cid = k.start(sid, pod, f"c{n}", command=["/attack/fds"], working_dir=f"/proc/self/fd/{n}",
                          mounts=attack_mounts(attack_dir))
        except Exception as exc:  # noqa: BLE001 - refused: why is in the message
            refusals[n] = str(exc)
            continue
        k.wait_exited(cid)
        _fds, cwd = held_fds(log_stdout(Path(k.log_dir) / f"c{n}" / "0.log"))
        raise AssertionError(f"started with its working directory through fd {n}: {cwd}")
    held = {n: why for n, why in refusals.items() if "No such file or directory" not in why}
    assert len(held) <= 2 and all("Not a directory" in why for why in held.values()), held


@pytest.mark.parametrize("handler", ["runc", "crun"])
def test_under_an_oci_runtime_what_enters_holds_only_its_stdio(handler_daemon, registry, tmp_path, attack_dir,
                                                              handler):
    """The same for containers and execs that runc or crun (a runtime handler) starts for the pod's monitor:
    nothing the monitor holds reaches them."""
    from tests.lifecycle.helpers import Kubelet

    k = Kubelet(handler_daemon, registry, tmp_path)
    config = cri.PodSandboxConfig(metadata=cri.PodSandboxMetadata(name="oci", namespace="default", uid="uid-oci"),
                                  hostname="oci", log_directory=str(tmp_path))
    sid = k.rt.RunPodSandbox(cri.RunPodSandboxRequest(config=config, runtime_handler=handler),
                             timeout=120).pod_sandbox_id
    app = k.start(sid, config, "app", command=["/attack/fds"], mounts=attack_mounts(attack_dir))
    k.wait_exited(app)
    fds, cwd = held_fds(log_stdout(tmp_path / "app" / "0.log"))
    only_stdio(fds, f"an app container under {handler}")
    assert cwd == "/", cwd
    sleeper = k.start(sid, config, "sleeper", command=["sleep", "3600"], mounts=attack_mounts(attack_dir))
    fds, cwd = held_fds(k.exec(sleeper, "/attack/fds").stdout.decode())
    only_stdio(fds, f"an exec under {handler}")
    assert cwd == "/", cwd


def test_a_mount_destination_swapped_for_a_symlink_leads_nowhere_outside(init_kubelet, attack_dir, tmp_path):
    """The CVE-2021-30465 attack: a container keeps exchanging a directory and a symlink to a host path in a
    volume it shares with another, while the other is started again and again with mounts below that directory.
    A runtime that checks the destination and then makes and mounts on the path string follows the symlink: a
    directory and a file appear at the host path. Nothing may ever appear there; a start may fail."""
    k = init_kubelet
    shared, outside, src_dir = tmp_path / "shared", tmp_path / "outside", tmp_path / "src"
    for d in (shared, outside, src_dir):
        d.mkdir()
    (tmp_path / "src-file").write_text("x")
    sid, pod = k.run_pod("swap")
    volume = cri.Mount(container_path="/shared", host_path=str(shared))
    swapping = RACE_SECONDS * 2 + 30  # longer than the starts below
    k.start(sid, pod, "attacker", command=["/attack/swap_race", "/shared", str(outside), str(swapping)],
            mounts=attack_mounts(attack_dir) + [volume])
    victim_mounts = [volume,
                     cri.Mount(container_path="/shared/d/dir", host_path=str(src_dir)),  # a directory to make
                     cri.Mount(container_path="/shared/d/file", host_path=str(tmp_path / "src-file"))]  # a file
    starts = refused = n = 0
    deadline = time.monotonic() + RACE_SECONDS * 2
    while time.monotonic() < deadline:
        n += 1
        try:
            cid = k.start(sid, pod, f"victim{n}", command=["true"], mounts=victim_mounts)
            starts += 1
        except Exception:  # noqa: BLE001 - a start may fail (a destination that changed while it was set up)
            refused += 1
            cid = next((c.id for c in k.rt.ListContainers(cri.ListContainersRequest()).containers
                        if c.metadata.name == f"victim{n}"), None)
        if cid:
            k.rt.RemoveContainer(cri.RemoveContainerRequest(container_id=cid))
        assert list(outside.iterdir()) == [], f"after {n} starts: made at the host path: {list(outside.iterdir())}"
    assert starts + refused >= 20, (starts, refused)
