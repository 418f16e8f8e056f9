#!/usr/bin/env python3
"""A real node to test on: a Debian 12 guest with systemd as PID 1 and cgroup v2 only (the configuration most
users' nodes have, which this host is not), booted under User-mode Linux (KVM cannot run a stock kernel here).

    hack/node.py wheels                 # pycri's dependencies as wheels in .cache/wheels (also for the image)
    hack/node.py build                  # make the image (or reuse it: rebuilt when its recipe changes)
    hack/node.py run -- CMD [ARG...]    # boot it, run CMD in this checkout (mounted at /mnt/src), print its
                                        # output, exit with its status
    hack/node.py test [PYTEST ARG...]   # pytest in the guest (the node suite, tests/node, unless told otherwise)

The image (PYCRI_NODE_DIR, default /var/tmp/pycri-node) is a debootstrap'ed bookworm with the packages the
suite needs and a venv of pycri's Python dependencies, installed from wheels downloaded on the host (the guest
reaches no package index). Each boot writes to a copy-on-write file of its own: the image stays as built.

A boot: the kernel (Debian's user-mode-linux, 6.1) gets the image as /dev/ubda, 2 GiB of memory, a slirp
network (the guest is 10.0.2.15; 10.0.2.2 is the host's loopback) and `pycri.job=<dir>`, a host dir that a
service of the image (pycri-job.service) mounts with hostfs. It runs <dir>/run.sh there with the checkout at
/mnt/src, writes out.txt and rc, and powers the guest off. The guest's console goes to <dir>/console.txt.
"""
from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
NODE_DIR = Path(os.environ.get("PYCRI_NODE_DIR", "/var/tmp/pycri-node"))
KERNEL = "/usr/bin/linux"
SLIRP = "/usr/bin/slirp"
MIRROR = os.environ.get("PYCRI_NODE_MIRROR", "http://deb.debian.org/debian")
HOST_PACKAGES = ["user-mode-linux", "slirp", "debootstrap", "e2fsprogs"]
GUEST_PACKAGES = [
    "systemd", "systemd-sysv", "dbus", "udev", "iproute2", "iptables", "kmod", "procps", "util-linux", "mount",
    "python3", "python3-venv", "containernetworking-plugins", "runc", "crun", "busybox-static", "docker-registry",
    "gcc", "libc6-dev", "make", "git", "skopeo",
]
# systemd-udevd gives each new veth a MAC of its own (MACAddressPolicy=persistent, 99-default.link) after the
# bridge plugin made it, and CNI CHECK, which finds the host's veth by the MAC in its result, then fails: CNI
# plugins' guides (Flannel's, Calico's) have nodes exempt such interfaces this way.
VETH_LINK = "[Match]\nDriver=veth\n\n[Link]\nMACAddressPolicy=none\n"
IMAGE_SIZE = "4G"
MEMORY = "2048M"

JOB_SERVICE = """\
[Unit]
Description=pycri node job (hack/node.py)
After=local-fs.target dbus.service
Wants=dbus.service

[Service]
Type=oneshot
ExecStart=/usr/local/sbin/pycri-job
StandardOutput=journal+console

[Install]
WantedBy=multi-user.target
"""

JOB_SCRIPT = """\
#!/bin/sh
# hack/node.py's job: mount the job dir and the checkout (hostfs), bring the network up, run run.sh, power off.
job=$(sed -n 's/.* pycri\\.job=\\([^ ]*\\).*/\\1/p' /proc/cmdline)
src=$(sed -n 's/.* pycri\\.src=\\([^ ]*\\).*/\\1/p' /proc/cmdline)
mkdir -p /mnt/job /mnt/src
mount -t hostfs none /mnt/job -o "$job"
mount -t hostfs none /mnt/src -o "$src"
ip link set lo up
ip link set eth0 up && ip addr add 10.0.2.15/24 dev eth0 && ip route add default via 10.0.2.2
cd /mnt/src && sh /mnt/job/run.sh > /mnt/job/out.txt 2>&1
echo $? > /mnt/job/rc
sync
systemctl poweroff --no-block
"""


def _recipe() -> str:
    """What the image is made of: a change rebuilds it."""
    parts = [MIRROR, " ".join(GUEST_PACKAGES), JOB_SERVICE, JOB_SCRIPT, IMAGE_SIZE,
             (REPO / "pyproject.toml").read_text(), Path(__file__).read_text().split("def _recipe", 1)[0]]
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:16]


def _run(cmd: list[str], **kw) -> None:
    print("+", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True, **kw)


def _host_packages() -> None:
    missing = [p for p in HOST_PACKAGES if subprocess.run(["dpkg-query", "-W", "-f=${Status}", p],
                                                           capture_output=True, text=True).stdout.find("ok installed") < 0]
    if missing:
        _run(["apt-get", "update", "-qq"])
        _run(["apt-get", "install", "-y", "-qq", "--no-install-recommends", *missing],
             env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})


WHEELS = REPO / ".cache" / "wheels"


def requirements() -> list[str]:
    """pycri's dependencies and the test tools (pyproject.toml)."""
    import tomllib
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    return list(project["dependencies"]) + list(project["optional-dependencies"]["dev"])


def wheels() -> Path:
    """requirements() as wheels in .cache/wheels, for installs that reach no package index (the guest, the wheel
    test): downloaded once per requirement list. CPython 3.11 on x86_64, this host's and the guest's."""
    reqs = requirements()
    stamp = WHEELS / ".requirements"
    if stamp.exists() and stamp.read_text() == "\n".join(reqs):
        return WHEELS
    WHEELS.mkdir(parents=True, exist_ok=True)
    _run([sys.executable, "-m", "pip", "download", "-q", "--only-binary=:all:", "--python-version", "3.11",
          "--platform", "manylinux2014_x86_64", "--platform", "manylinux_2_17_x86_64", "--platform",
          "manylinux_2_28_x86_64", "-d", str(WHEELS), *reqs])
    stamp.write_text("\n".join(reqs))
    return WHEELS


def build(force: bool = False) -> Path:
    """The image, made if missing or made from another recipe. Returns its path."""
    image = NODE_DIR / "node.ext4"
    stamp = NODE_DIR / "recipe"
    recipe = _recipe()
    if not force and image.exists() and stamp.exists() and stamp.read_text() == recipe:
        return image
    _host_packages()
    NODE_DIR.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="build-", dir=NODE_DIR))
    root = work / "rootfs"
    try:
        t0 = time.monotonic()
        _run(["debootstrap", "--variant=minbase", f"--include={','.join(GUEST_PACKAGES)}", "bookworm", str(root),
              MIRROR], stdout=subprocess.DEVNULL)
        (root / "etc/hostname").write_text("pycri-node\n")
        (root / "etc/fstab").write_text("/dev/ubda / ext4 rw,relatime 0 1\n")
        (root / "etc/hosts").write_text("127.0.0.1 localhost\n127.0.1.1 pycri-node\n")
        (root / "etc/resolv.conf").write_text("nameserver 10.0.2.3\n")
        (root / "etc/systemd/system/pycri-job.service").write_text(JOB_SERVICE)
        (root / "etc/systemd/network").mkdir(parents=True, exist_ok=True)
        (root / "etc/systemd/network/50-veth-mac.link").write_text(VETH_LINK)
        wants = root / "etc/systemd/system/multi-user.target.wants"
        wants.mkdir(parents=True, exist_ok=True)
        (wants / "pycri-job.service").symlink_to("/etc/systemd/system/pycri-job.service")
        job = root / "usr/local/sbin/pycri-job"
        job.write_text(JOB_SCRIPT)
        job.chmod(0o755)
        for unit in ("getty@tty1.service", "serial-getty@ttyS0.service", "systemd-timesyncd.service",
                     "apt-daily.timer", "apt-daily-upgrade.timer", "e2scrub_all.timer", "fstrim.timer"):
            (root / "etc/systemd/system" / unit).unlink(missing_ok=True)
            (root / "etc/systemd/system" / unit).symlink_to("/dev/null")
        # the kernel's modules (bridge, veth, overlay, netfilter: what CNI and the suite load)
        modules = Path("/usr/lib/uml/modules")
        for version in os.listdir(modules):
            shutil.copytree(modules / version, root / "lib/modules" / version, symlinks=True)
        # the CNI plugins' NAT needs the legacy iptables (the guest kernel has no nft NAT)
        for tool in ("iptables", "ip6tables"):
            subprocess.run(["chroot", str(root), "update-alternatives", "--set", tool, f"/usr/sbin/{tool}-legacy"],
                           check=False, stdout=subprocess.DEVNULL)
        shutil.copytree(wheels(), root / "opt/wheels")
        reqs = requirements()
        _run(["chroot", str(root), "python3", "-m", "venv", "/opt/pycri-venv"])
        _run(["chroot", str(root), "/opt/pycri-venv/bin/pip", "install", "-q", "--no-index", "--find-links",
              "/opt/wheels", *reqs])
        shutil.rmtree(root / "opt/wheels")
        shutil.rmtree(root / "var/cache/apt/archives", ignore_errors=True)
        tmp_image = work / "node.ext4"
        _run(["mkfs.ext4", "-q", "-L", "pycri-node", "-d", str(root), str(tmp_image), IMAGE_SIZE])
        os.replace(tmp_image, image)
        stamp.write_text(recipe)
        print(f"image {image} built in {time.monotonic() - t0:.0f} s", flush=True)
        return image
    finally:
        _unmount_below(work)  # (debootstrap interrupted leaves the chroot's /proc mounted)
        shutil.rmtree(work, ignore_errors=True)


def _unmount_below(path: Path) -> None:
    prefix = str(path) + "/"
    with open("/proc/self/mountinfo") as f:
        points = [line.split()[4] for line in f if line.split()[4].startswith(prefix)]
    for point in sorted(points, key=len, reverse=True):
        subprocess.run(["umount", "-l", point], check=False)


def run(script: str, timeout: float = 1800, keep: bool = False) -> tuple[int, str]:
    """Boot the image, run script (sh, in the checkout) in it; (its exit status, its output). 124 on timeout."""
    image = build()
    job = Path(tempfile.mkdtemp(prefix="job-", dir=NODE_DIR))
    try:
        (job / "run.sh").write_text(script)
        args = [KERNEL, f"ubd0={job / 'cow'},{image}", "root=/dev/ubda", "rw", f"mem={MEMORY}",
                f"eth0=slirp,,{SLIRP}", "con=null", "con0=null,fd:1", "systemd.unified_cgroup_hierarchy=1",
                "systemd.show_status=0", f"pycri.job={job}", f"pycri.src={REPO}", "quiet"]
        t0 = time.monotonic()
        with open(job / "console.txt", "wb") as console:
            proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=console, stderr=subprocess.STDOUT,
                                    env={**os.environ, "TMPDIR": str(job)}, start_new_session=True)
            try:
                proc.wait(timeout=timeout)
            except BaseException:  # the timeout, or this process told to stop: the guest goes too
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
                if not isinstance(sys.exc_info()[1], subprocess.TimeoutExpired):
                    raise
        out = (job / "out.txt").read_text(errors="replace") if (job / "out.txt").exists() else ""
        rc_text = (job / "rc").read_text().strip() if (job / "rc").exists() else ""
        rc = int(rc_text) if rc_text.lstrip("-").isdigit() else 124
        if not rc_text:
            out += "\n[node] no exit status: the guest ended early or timed out; its console:\n" + \
                (job / "console.txt").read_text(errors="replace")[-4000:]
        out += f"\n[node] guest ran {time.monotonic() - t0:.0f} s\n"
        return rc, out
    finally:
        if not keep:
            shutil.rmtree(job, ignore_errors=True)


def _stop(signum, frame):
    raise SystemExit(128 + signum)  # (so that run() takes its guest down on SIGTERM, e.g. from timeout(1))


def main() -> int:
    signal.signal(signal.SIGTERM, _stop)
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    sub.add_parser("wheels", help="download the Python dependencies as wheels into .cache/wheels")
    b = sub.add_parser("build")
    b.add_argument("--force", action="store_true")
    r = sub.add_parser("run")
    r.add_argument("--timeout", type=float, default=1800)
    r.add_argument("--keep", action="store_true", help="keep the job dir (console, COW file)")
    r.add_argument("argv", nargs=argparse.REMAINDER)
    t = sub.add_parser("test")
    t.add_argument("--timeout", type=float, default=3000)
    t.add_argument("args", nargs=argparse.REMAINDER)
    opts = ap.parse_args()
    if opts.cmd == "wheels":
        print(wheels())
        return 0
    if os.geteuid() != 0:
        print("hack/node.py needs root", file=sys.stderr)
        return 2
    if opts.cmd == "build":
        print(build(force=opts.force))
        return 0
    if opts.cmd == "run":
        argv = [a for a in opts.argv if a != "--"] or ["true"]
        rc, out = run(" ".join(_quote(a) for a in argv) + "\n", opts.timeout, opts.keep)
    else:
        args = [a for a in opts.args if a != "--"] or ["tests/node"]
        _fresh_wheel()
        rc, out = run(_pytest_script(args), opts.timeout)
    sys.stdout.write(out)
    return rc


def _fresh_wheel() -> None:
    """pycri's wheel, built from this checkout into .cache/dist for each test run: the node suite installs it
    (tests/node/test_installed.py), and an older one would be an older pycri."""
    for stale in (REPO / ".cache" / "dist", REPO / "build"):
        shutil.rmtree(stale, ignore_errors=True)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(REPO / ".cache" / "dist"),
                    str(REPO)], check=True, cwd=REPO)


def _quote(arg: str) -> str:
    import shlex
    return shlex.quote(arg)


# How much longer the suite's steps take in the guest than on the host (one CPU; syscalls 40-50x slower): the
# suite's time bounds are multiplied by it. Not above _recipe: changing it must not rebuild the image.
GUEST_SLOWDOWN = 8


def _pytest_script(args: list[str]) -> str:
    """pytest in the guest, from the checkout, with the image's venv; nothing written into the checkout (the
    bytecode goes to the guest's /var/tmp, so each daemon started does not compile pycri again); the suite's
    time bounds scaled by GUEST_SLOWDOWN (tests/fixtures/pace.py), pytest-timeout's per-test bound among them
    (an explicit --timeout in args still wins: it comes after)."""
    per_test = _pytest_timeout() * GUEST_SLOWDOWN
    return (f"export PYTHONPYCACHEPREFIX=/var/tmp/pycache PYTHONPATH=/mnt/src PYCRI_TEST_SLOWDOWN={GUEST_SLOWDOWN}\n"
            f"/opt/pycri-venv/bin/python -m pytest -q -p no:cacheprovider --timeout {per_test:g} "
            + " ".join(_quote(a) for a in args) + "\n")


def _pytest_timeout() -> float:
    """The per-test bound of pyproject.toml's [tool.pytest.ini_options] (pytest-timeout), in seconds."""
    import tomllib
    with open(REPO / "pyproject.toml", "rb") as f:
        return float(tomllib.load(f)["tool"]["pytest"]["ini_options"]["timeout"])


if __name__ == "__main__":
    sys.exit(main())
