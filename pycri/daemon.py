"""The pycri daemon: opens its state, serves both CRI services on the unix socket, shuts down on SIGTERM/SIGINT.

Containers do not belong to this process (they are children of the per-pod monitors), so stopping the daemon
stops the API, never the pods.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import signal
import socket
import stat
import time
from pathlib import Path

import grpc

from pycri import __version__, log
from pycri.observe import pages
from pycri.state import dirs
from pycri import reload as reloadmod
from pycri.config import Config
from pycri.containers.manager import Containers
from pycri.server.events import Events
from pycri.images import ImageManager
from pycri.memtrim import trim_when_quiet
from pycri.pods.monitors import Monitors
from pycri.network.cni import CNI
from pycri.network import defaultnet
from pycri.network.defaultnet import subnets_of, sync_default_conflist
from pycri.node import cgroup_version
from pycri.pods.manager import Sandboxes
from pycri.server.image_service import ImageService
from pycri.server.rpc import service_handler
from pycri.server.runtime_service import POD_CIDR_KEY, RuntimeService
from pycri.state.records import Records
from pycri.state.store import Store
from pycri.state.topdir import ensure_top_dir
from pycri.stats.collect import Stats, container_fs
from pycri.streaming.container_backend import streaming_server

_log = log.get("daemon")

# The kubelet's own limit for CRI messages; the gRPC default (4 MiB) is too small for ListContainers on a full node.
MAX_MESSAGE_BYTES = 16 * 1024 * 1024
SHUTDOWN_GRACE_SECONDS = 5
CONFLIST_SUBNETS_KEY = "default_conflist_subnets"  # settings: the subnets pycri last wrote its default conflist on


class DaemonError(Exception):
    """The daemon cannot start (socket in use, state dir unusable)."""


class Daemon:
    """What the servicers share: config, store, records, images, monitors, CNI, events and the managers."""

    def __init__(self, config: Config, spawner=None) -> None:
        self.config = config
        self.started_at = time.time()
        dirs.secure_roots(config.root_path, config.state_path)  # (pycri/state/dirs.py)
        ensure_top_dir(config.root_path / "containers", 0o700)  # containers' writable layers (pycri/state/topdir.py)
        dirs.private_dir(config.root_path / "cni")
        if container_fs(config.root_path) != str(config.root_path):
            _log.warning("writable layers on another file system than the images",
                         containers=str(config.root_path / "containers"), images=config.root,
                         note="kubelets 1.29-1.31 take this for a split image file system they do not support "
                              "and, with KubeletSeparateDiskGC off, evict nothing (docs/operations.md, Disks)")
        self.store = Store(config.db_path, sync_full=config.store_sync_full)
        self.cgroup_version = _cgroup_version()
        self.sync_network_config()
        self.spawner = spawner
        self.records = Records(self.store)
        self.images = ImageManager(config, self.store)
        self.images.usage_provider = self._chain_ids_in_use
        self.monitors = Monitors(spawner, config.exec_sync_per_pod)
        self.cni = CNI(config.cni.bin_dirs, config.root_path / "cni" / "results")
        self.events = Events(self.records, self.images)
        self.containers = Containers(self)
        self.images.volume_users = self.containers.image_volumes.users
        self.sandboxes = Sandboxes(self, self.containers)
        self.stats = Stats(self)
        self.streaming = None  # the StreamingServer, once serve() has started it
        self._tasks: set[asyncio.Task] = set()

    def _chain_ids_in_use(self):
        """Layers that containers run on, or mount as image volumes: image GC keeps them even after their image is
        removed."""
        for rec in self.records.containers.values():
            yield from rec.chain_ids
        yield from self.containers.image_volumes.chain_ids()

    def background(self, coro) -> asyncio.Task:
        """Run a daemon-lifetime task (clean-ups after an answer); kept referenced until done, cancelled at
        shutdown."""
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def recover(self) -> None:
        await self.sandboxes.recover()
        await self.containers.recover()

    def take_exits(self) -> None:
        """Record every end the monitors have recorded since the last call: a container's exit, an infra
        container's (the pod is not ready), a monitor's own (both). Runs before every RuntimeService call, so no
        answer contradicts a record made before the call came, and whenever the watch's fd is readable
        (docs/design.md, "Exits")."""
        containers, monitors = self.monitors.exits.ended()
        ends = [cid for _monitor_dir, cid in containers]
        for monitor_dir in monitors:  # the end of a monitor is the end of its pod's infra and containers
            for sandbox in [s for s in self.records.sandboxes.values() if s.monitor_dir == monitor_dir]:
                _log.warning("the pod's monitor exited", pod_sandbox_id=sandbox.id)
                ends += [sandbox.id] + [c.id for c in self.records.containers_of(sandbox.id)]
        for oid in ends:
            # each on its own: a failure (say, a full disk under the store) is logged and the other ends are still
            # taken; the record in memory is changed first, and a restart finds the end on disk again
            try:
                if oid in self.records.sandboxes:
                    self.sandboxes.infra_exited(oid)
                else:
                    self.containers.exited(oid)
            except Exception as exc:  # noqa: BLE001
                _log.error("recording an end failed", id=oid, error=f"{type(exc).__name__}: {exc}")

    async def aclose(self) -> None:
        asyncio.get_running_loop().remove_reader(self.monitors.exits.fileno())
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.images.close()
        if self.spawner is not None:
            await asyncio.to_thread(self.spawner.close)
        self.monitors.exits.close()
        self.store.close()

    def sync_network_config(self) -> tuple[str, Path | None]:
        """With `[cni] write_default_conflist`: write pycri's default network when conf_dir has none, on the pod CIDR
        the kubelet gave (UpdateRuntimeConfig) or else `default_subnet`, and rewrite it for a new pod CIDR while pycri
        owns it (pycri/network/defaultnet.py sync_default_conflist). At start and after each UpdateRuntimeConfig;
        returns the outcome and the path of the config in use (OFF and None without the option)."""
        cni = self.config.cni
        if not cni.write_default_conflist:
            return defaultnet.OFF, None
        subnets = subnets_of(self.setting(POD_CIDR_KEY) or cni.default_subnet)
        recorded = self.setting(CONFLIST_SUBNETS_KEY)
        # (a file an older pycri wrote has no record: it was written on default_subnet)
        outcome, path = sync_default_conflist(cni.conf_dir, subnets, str(self.config.root_path / "cni" / "networks"),
                                              subnets_of(recorded or cni.default_subnet), legacy=not recorded)
        if outcome != defaultnet.NOT_OURS and recorded != ",".join(subnets):
            self.set_setting(CONFLIST_SUBNETS_KEY, ",".join(subnets))
        if outcome == defaultnet.WRITTEN:
            _log.info("wrote default network config", path=str(path), subnets=",".join(subnets))
        elif outcome == defaultnet.REWRITTEN:
            _log.info("rewrote default network config", path=str(path), subnets=",".join(subnets),
                      before=",".join(subnets_of(recorded or cni.default_subnet)))
        return outcome, path

    def config_dict(self) -> dict:
        return dataclasses.asdict(self.config)

    def setting(self, key: str, default: str = "") -> str:
        row = self.store.query_one("SELECT value FROM settings WHERE key = ?", (key,))
        return row["value"] if row else default

    def set_setting(self, key: str, value: str) -> None:
        self.store.execute("INSERT INTO settings(key, value) VALUES (?, ?) "
                           "ON CONFLICT(key) DO UPDATE SET value = excluded.value", (key, value))

    def runtime_status(self) -> tuple[bool, str, str]:
        """(ready, reason, message) for the RuntimeReady condition: state dirs usable and the store answering."""
        for d in (self.config.root_path, self.config.state_path):
            if not os.access(d, os.W_OK | os.X_OK):
                return False, "StateDirUnusable", f"{d} is not writable"
        try:
            self.store.query_one("SELECT 1")
        except Exception as exc:  # noqa: BLE001 - any store failure makes the runtime not ready
            return False, "MetadataStoreFailed", f"{type(exc).__name__}: {exc}"
        if self.spawner is not None and not self.spawner.alive():
            return False, "MonitorSpawnerDied", "the pod monitor spawner exited; restart pycri"
        return True, "", ""


def _cgroup_version() -> str:
    return f"v{cgroup_version()}"


def prepare_socket(path: Path) -> None:
    """Make the socket's parent dirs and remove a stale socket; refuse if a live daemon is listening there."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o711)
    try:
        st = path.lstat()
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        raise DaemonError(f"{path} exists and is not a socket; refusing to replace it")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.settimeout(1)
        probe.connect(str(path))
    except OSError:
        path.unlink(missing_ok=True)  # nobody listens: a stale socket from a daemon that died
        _log.info("removed stale socket", path=str(path))
        return
    finally:
        probe.close()
    raise DaemonError(f"another process is serving on {path}")


async def serve(config: Config, spawner=None, config_path: str | None = None) -> None:
    """Serve until SIGTERM/SIGINT; SIGHUP re-reads the config file `config_path` (see pycri/reload.py)."""
    reload_path = reloadmod.config_path(config_path)
    daemon = Daemon(config, spawner)
    started = time.perf_counter()
    await daemon.recover()  # every exit that happened while no daemon ran is recorded before the socket serves
    recovery_ms = round((time.perf_counter() - started) * 1000, 1)
    asyncio.get_running_loop().add_reader(daemon.monitors.exits.fileno(), daemon.take_exits)
    daemon.background(trim_when_quiet())
    sock = Path(config.listen)
    prepare_socket(sock)
    streaming = streaming_server(daemon)
    try:
        await streaming.start()
    except OSError as exc:
        await daemon.aclose()
        raise DaemonError(f"cannot serve streaming on {config.streaming.address}:{config.streaming.port}: "
                          f"{exc.strerror or exc}") from None
    daemon.streaming = streaming
    try:
        info_servers = await pages.start(daemon)
    except pages.PagesError as exc:
        await streaming.stop()
        await daemon.aclose()
        raise DaemonError(f"cannot serve the status socket or metrics ([metrics] address "
                          f"{config.metrics.address!r}): {exc}") from None
    server = grpc.aio.server(options=[
        ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
        ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ])
    server.add_generic_rpc_handlers((
        service_handler("RuntimeService", RuntimeService(daemon), before=daemon.take_exits),
        service_handler("ImageService", ImageService(daemon.images, daemon.stats.fs_usage)),
    ))
    old_umask = os.umask(0o117)  # the socket is born 0660: root (and the socket's group) only, no window
    try:
        server.add_insecure_port(f"unix:{sock}")
        await server.start()
    finally:
        os.umask(old_umask)
    os.chmod(sock, 0o660)
    _log.info("serving", socket=str(sock), version=__version__, root=config.root, state=config.state, pid=os.getpid(),
              recovery_ms=recovery_ms, sandboxes=len(daemon.records.sandboxes),
              containers=len(daemon.records.containers))

    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopping.set)
    loop.add_signal_handler(signal.SIGHUP, reloadmod.reload, daemon, reload_path)
    await stopping.wait()
    _log.info("shutting down", grace_seconds=SHUTDOWN_GRACE_SECONDS)
    await server.stop(SHUTDOWN_GRACE_SECONDS)
    sock.unlink(missing_ok=True)
    await streaming.stop()
    await pages.stop(info_servers)
    await daemon.aclose()
    _log.info("stopped")
