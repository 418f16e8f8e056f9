#!/usr/bin/env python3
"""A local docker-registry (Debian's distribution 2.x) with pycri's test images.

Library (the pytest fixture uses this)::

    with RegistryServer(workdir) as reg:        # 127.0.0.1, a free port
        reg.push_test_images()                  # builds if needed, pushes pycri-test/<name>:latest
        reg.ref("busybox")                      # "127.0.0.1:PORT/pycri-test/busybox:latest"

CLI (manual use, `make run`): start a detached registry on 127.0.0.1:5000 with the
test images pushed, plus pause:{3.9,3.10,3.10.1,latest} at the top level so it can
serve as a mirror for registry.k8s.io::

    hack/registry.py [--port 5000] [--dir .cache/registry] [--foreground]
    hack/registry.py --stop [--dir .cache/registry]

The registry only ever listens on a loopback address.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

HACK = Path(__file__).resolve().parent
REPO_ROOT = HACK.parent
REGISTRY_BIN = "/usr/bin/docker-registry"
NAMESPACE = "pycri-test"
PAUSE_MIRROR_TAGS = ("3.9", "3.10", "3.10.1", "latest")


def _sibling(name: str):
    """Import hack/<name>.py under a private module name (hack/ is no package)."""
    modname = "pycri_hack_" + name
    if modname not in sys.modules:
        spec = importlib.util.spec_from_file_location(modname, HACK / f"{name}.py")
        mod = importlib.util.module_from_spec(spec)
        sys.modules[modname] = mod
        spec.loader.exec_module(mod)
    return sys.modules[modname]


registry_push = _sibling("registry_push")
build_test_images = _sibling("build_test_images")


def free_port(addr: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((addr, 0))
        return s.getsockname()[1]


def htpasswd_line(user: str, password: str) -> str:
    """A bcrypt htpasswd entry (the only hash docker-registry accepts)."""
    try:
        import bcrypt  # optional
        return f"{user}:{bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds=5)).decode()}"
    except ImportError:
        import warnings
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            import crypt  # glibc/libxcrypt bcrypt ($2b$); removed in Python 3.13
        hashed = crypt.crypt(password, crypt.mksalt(crypt.METHOD_BLOWFISH, rounds=32))
        if not hashed or not hashed.startswith("$2"):
            raise RuntimeError("no bcrypt available: pip install bcrypt")
        return f"{user}:{hashed}"


class RegistryError(RuntimeError):
    pass


class RegistryServer:
    """One docker-registry process on a loopback port with filesystem storage in workdir.

    htpasswd: {user: password} turns on basic auth; the first pair is `.auth`,
    which push_* use. With die_with_parent (the default) the registry is started
    under `setpriv --pdeathsig KILL`, so it cannot outlive a killed test process;
    the signal fires when the *thread* that called start() ends, so start it from a
    long-lived thread (the main one), or pass die_with_parent=False and stop() it.
    """

    def __init__(self, workdir, port: int = 0, addr: str = "127.0.0.1",
                 htpasswd: dict[str, str] | None = None, die_with_parent: bool = True,
                 binary: str = REGISTRY_BIN):
        if not addr.startswith("127.") and addr != "::1":
            raise ValueError("the test registry listens on loopback only")
        self.workdir = Path(workdir)
        self.addr, self.port, self._fixed_port = addr, port, bool(port)
        self.htpasswd = dict(htpasswd or {})
        self.auth = next(iter(self.htpasswd.items())) if self.htpasswd else None
        self.die_with_parent = die_with_parent
        self.binary = binary
        self.proc: subprocess.Popen | None = None
        self.images: dict[str, dict] = {}
        self.log_path = self.workdir / "registry.log"
        self._pusher = None

    # -- addresses
    @property
    def host(self) -> str:
        return f"{self.addr}:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self.host}"

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def ref(self, name: str, tag: str = "latest") -> str:
        return f"{self.host}/{NAMESPACE}/{name}:{tag}"

    def digest_ref(self, name: str) -> str:
        """The by-digest reference: host/pycri-test/<name>@sha256:..."""
        return f"{self.host}/{NAMESPACE}/{name}@{self.digest(name)}"

    def digest(self, name: str) -> str:
        return self.images[name]["digest"]

    def config_digest(self, name: str) -> str:
        return self.images[name]["config_digest"]

    # -- lifecycle
    def _config(self) -> dict:
        cfg = {
            "version": "0.1",
            "log": {"level": "warn", "formatter": "text", "accesslog": {"disabled": True}},
            "storage": {"filesystem": {"rootdirectory": str(self.workdir / "storage")},
                        "delete": {"enabled": True}, "redirect": {"disable": True},
                        "maintenance": {"uploadpurging": {"enabled": False}}},
            "http": {"addr": self.host, "secret": "pycri-test-registry"},
            "health": {"storagedriver": {"enabled": False}},
        }
        if self.htpasswd:
            path = self.workdir / "htpasswd"
            path.write_text("".join(htpasswd_line(u, p) + "\n" for u, p in self.htpasswd.items()))
            cfg["auth"] = {"htpasswd": {"realm": "pycri-test", "path": str(path)}}
        return cfg

    def start(self, timeout: float = 15) -> "RegistryServer":
        self.workdir.mkdir(parents=True, exist_ok=True)
        last = ""
        for _ in range(1 if self._fixed_port else 5):
            if not self._fixed_port:
                self.port = free_port(self.addr)
            conf = self.workdir / "config.yml"  # JSON is YAML
            conf.write_text(json.dumps(self._config(), indent=1))
            argv = [self.binary, "serve", str(conf)]
            if self.die_with_parent and shutil.which("setpriv"):
                argv = ["setpriv", "--pdeathsig", "KILL", "--"] + argv
            with open(self.log_path, "ab") as log:
                self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                             start_new_session=not self.die_with_parent)
            if self._wait_ready(timeout):
                return self
            last = self.log_path.read_text(errors="replace")[-2000:]
            self.stop()
        raise RegistryError(f"docker-registry did not start on {self.host}:\n{last}")

    def _wait_ready(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                return False
            try:
                with urllib.request.urlopen(self.url + "/v2/", timeout=2) as r:
                    return r.status == 200
            except urllib.error.HTTPError as e:
                return e.code == 401 and bool(self.htpasswd)
            except OSError:
                time.sleep(0.02)
        return False

    def stop(self) -> None:
        """Stop the registry process and wait for it (idempotent)."""
        if self._pusher:
            self._pusher.close()
            self._pusher = None
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def __enter__(self):
        return self.start() if self.proc is None else self

    def __exit__(self, *exc):
        self.stop()

    # -- content
    @property
    def pusher(self):
        if self._pusher is None:
            self._pusher = registry_push.Pusher(self.url, self.auth)
        return self._pusher

    def push_layout(self, name: str, layout_dir, tag: str = "latest", src_tag: str | None = None,
                    repo: str | None = None) -> str:
        """Push a layout as pycri-test/<name>:<tag> (or `repo`); returns its digest."""
        digest = self.pusher.push_layout(layout_dir, repo or f"{NAMESPACE}/{name}", tag, src_tag)
        if repo is None:
            meta = self.images.setdefault(name, {})
            meta.setdefault("digest", digest)
            meta.setdefault("tags", [])
            if tag not in meta["tags"]:
                meta["tags"].append(tag)
        return digest

    def push_test_images(self, images_dir=None) -> dict[str, dict]:
        """Build (if needed) and push every test image as pycri-test/<name>:latest."""
        images_dir = Path(images_dir or build_test_images.default_dir())
        meta = build_test_images.build_all(images_dir)
        for name, m in sorted(meta.items()):
            digest = self.push_layout(name, images_dir / name, m["tag"])
            if digest != m["digest"]:
                raise RegistryError(f"{name}: pushed {digest}, built {m['digest']}")
            self.images[name].update(m, layout=str(images_dir / name),
                                     repo=f"{NAMESPACE}/{name}")
        return self.images

    def push_pause_mirror(self, images_dir=None, tags=PAUSE_MIRROR_TAGS) -> None:
        """Serve our pause image as <host>/pause:<tag>, for a registry.k8s.io mirror."""
        layout = Path(images_dir or build_test_images.default_dir()) / "pause"
        for tag in tags:
            self.push_layout("pause", layout, tag, src_tag="latest", repo="pause")


# ---------------------------------------------------------------- CLI

def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def cli_stop(workdir: Path) -> int:
    pidfile = workdir / "registry.pid"
    try:
        pid = int(pidfile.read_text())
    except (OSError, ValueError):
        print(f"no registry pid file in {workdir}")
        return 1
    if _pid_alive(pid) and Path(f"/proc/{pid}/cmdline").read_bytes().startswith(REGISTRY_BIN.encode()):
        os.kill(pid, signal.SIGTERM)
        for _ in range(100):
            if not _pid_alive(pid):
                break
            time.sleep(0.05)
        print(f"stopped registry pid {pid}")
    pidfile.unlink(missing_ok=True)
    return 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--addr", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=5000)
    ap.add_argument("--dir", type=Path, default=REPO_ROOT / ".cache" / "registry",
                    help="storage, config and pid file (default: %(default)s)")
    ap.add_argument("--foreground", action="store_true", help="run until Ctrl-C")
    ap.add_argument("--stop", action="store_true", help="stop the registry started in --dir")
    a = ap.parse_args(argv)
    if a.stop:
        return cli_stop(a.dir)
    cli_stop(a.dir) if (a.dir / "registry.pid").exists() else None
    reg = RegistryServer(a.dir, port=a.port, addr=a.addr, die_with_parent=a.foreground)
    reg.start()
    try:
        reg.push_test_images()
        reg.push_pause_mirror()
    except BaseException:
        reg.stop()
        raise
    for name in sorted(reg.images):
        print(f"{reg.ref(name):<60} {reg.digest(name)}")
    print(f"pause mirror: {reg.host}/pause:{{{','.join(PAUSE_MIRROR_TAGS)}}}")
    if a.foreground:
        print(f"registry on {reg.url} (pid {reg.pid}); Ctrl-C stops it")
        try:
            reg.proc.wait()
        except KeyboardInterrupt:
            pass
        finally:
            reg.stop()
        return 0
    pid = reg.pid
    (a.dir / "registry.pid").write_text(f"{pid}\n")
    reg.proc = None  # detached: leave it running
    print(f"registry on {reg.url} (pid {pid}, log {reg.log_path})")
    print(f"stop it with: {sys.executable} {Path(__file__).resolve()} --stop"
          f" --dir {a.dir}   (or: kill {pid})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
