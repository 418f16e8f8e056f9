"""Containers: create from an image in a pod, start, stop, remove, status, list, exec, logs, resources; their
exits and the recovery at start. ExecSync's own work is in exec.py, the CRI messages of a record in messages.py,
the user a container runs as in pycri/oci/users.py, its stats in pycri/stats/."""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import time
from pathlib import Path

import structlog

from pycri import log, wire
from pycri.api import api_pb2 as cri
from pycri.containers.exec import exec_sync
from pycri.containers.imagevols import ImageVolumes
from pycri.containers.messages import item_bytes, state_of, status_bytes
from pycri.errors import FailedPrecondition, InvalidArgument, NotFound, TeardownError
from pycri.images import ImageError
from pycri.node import MonitorError, SharedMounts, detach_if_mounted, mount_setattr_supported, remove_tree
from pycri.oci import cdi, validation
from pycri.oci.spec import (PodPaths, container_spec, default_pids_limit, resources as oci_resources, stop_signal,
                            userns_mappings)
from pycri.oci.users import ImageUsers
from pycri.pods.manager import pod_root_group, remove_cgroup, runtime_request
from pycri.pods.monitors import MonitorUnavailable
from pycri.state.dirs import private_dir, write_private
from pycri.state.records import (C_CREATED, C_CREATING, C_EXITED, C_RUNNING, SB_READY, ContainerRecord,
                                 SandboxRecord, asking, matches, pb)
from pycri.state.reservations import Reservations

_STATUS = wire.number(cri.ContainerStatusResponse, "status")
_log = log.get("container")


def container_name(config: cri.ContainerConfig, sandbox_config: cri.PodSandboxConfig) -> str:
    md, pmd = config.metadata, sandbox_config.metadata
    return f"{md.name}_{pmd.name}_{pmd.namespace}_{pmd.uid}_{md.attempt}"


class Containers:
    def __init__(self, ctx) -> None:
        self.ctx = ctx
        self.reservations = Reservations("container")
        self._locks: dict[str, asyncio.Lock] = {}
        self._users = ImageUsers()
        self.shared_mounts = SharedMounts(ctx.config.state_path / "shared-mounts.json",
                                          log=structlog.get_logger("pycri.hostmounts"))
        self.image_volumes = ImageVolumes(ctx)  # (pycri/containers/imagevols.py)
        # Monitor-side creates (the clone of the container's process) begun by CreateContainer and awaited by
        # whatever touches the process next (start, update, remove): see _begin_monitor_create.
        self._monitor_creates: dict[str, asyncio.Task] = {}
        self._removals: dict[str, asyncio.Task] = {}  # container id -> removal of its files (_remove_files)

    def _lock(self, cid: str) -> asyncio.Lock:
        return self._locks.setdefault(cid, asyncio.Lock())

    def _emit(self, rec: ContainerRecord, event_type: int) -> None:
        """The event of a change just saved (pycri/server/events.py); none for a container whose pod is gone."""
        if (sandbox := self.ctx.records.sandboxes.get(rec.sandbox_id)) is not None:
            self.ctx.events.emit(sandbox, rec.id, event_type)

    # ---- CreateContainer ----

    async def create(self, sandbox_id: str, config: cri.ContainerConfig, sandbox_config: cri.PodSandboxConfig) -> str:
        if not config.metadata.name:
            raise InvalidArgument("container metadata needs a name")
        validation.no_nul("container metadata name", config.metadata.name)
        if config.log_path:
            validation.log_path(config.log_path)
        if not config.image.image:
            raise InvalidArgument("container config needs an image")
        sandbox = self.ctx.records.find_sandbox(sandbox_id)
        if sandbox is None or sandbox.state not in (SB_READY,):
            raise NotFound(f"pod sandbox {sandbox_id!r} not found or not ready")
        sandbox_config = sandbox.config  # the runtime's own copy is authoritative
        name = container_name(config, sandbox_config)
        existing = (lambda n: (r.id if (r := self.ctx.records.container_by_name(n)) else None))
        return await self.reservations.create_once(name, existing,
                                                   lambda: self._create(sandbox, config, sandbox_config, name))

    async def _create(self, sandbox: SandboxRecord, config: cri.ContainerConfig,
                      sandbox_config: cri.PodSandboxConfig, name: str) -> str:
        ctx = self.ctx
        image = await ctx.images.status(config.image.image)
        if image is None:
            raise NotFound(f"image {config.image.image!r} not found: pull it first")
        cid = secrets.token_hex(32)
        log_path = ""
        if sandbox_config.log_directory and config.log_path:
            log_path = os.path.join(sandbox_config.log_directory, config.log_path)
        rec = ContainerRecord(id=cid, sandbox_id=sandbox.id, name=name, config_pb=pb(config), image_id=image.id,
                              image_ref=(image.repo_digests[0] if image.repo_digests else image.id),
                              state=C_CREATING, created_at=time.time_ns(), log_path=log_path,
                              bundle=str(Path(sandbox.pod_dir) / "bundles" / cid),
                              layer_dir=str(ctx.config.root_path / "containers" / cid))
        ctx.records.save_container(rec)
        try:
            await self._setup(rec, sandbox, config, sandbox_config, image)
        except BaseException:
            try:
                await asyncio.shield(self._cleanup(rec))
            except TeardownError:  # logged; the CREATING record stays, for a removal of the pod or the next start
                pass
            raise
        rec.state = C_CREATED
        ctx.records.save_container(rec)
        self._emit(rec, cri.ContainerEventType.CONTAINER_CREATED_EVENT)
        _log.info("container created", container_id=cid, pod_sandbox_id=sandbox.id, name=config.metadata.name)
        return cid

    async def _setup(self, rec: ContainerRecord, sandbox: SandboxRecord, config: cri.ContainerConfig,
                     sandbox_config: cri.PodSandboxConfig, image) -> None:
        ctx = self.ctx
        infra = f"/proc/{sandbox.infra_pid}/ns"
        opts = sandbox_config.linux.security_context.namespace_options
        host_net = opts.network == cri.NamespaceMode.NODE
        paths = PodPaths(
            hostname=sandbox_config.hostname,
            hostname_file=f"{sandbox.pod_dir}/hostname", hosts_file=f"{sandbox.pod_dir}/hosts",
            resolv_file=f"{sandbox.pod_dir}/resolv.conf", shm_dir=sandbox.shm_dir or None,
            net_ns=sandbox.netns or None,
            ipc_ns=None if opts.ipc == cri.NamespaceMode.NODE else f"{infra}/ipc",
            uts_ns=None if host_net else f"{infra}/uts",
            pid_ns=None if opts.pid == cri.NamespaceMode.NODE else f"{infra}/pid",
            user_ns=sandbox.userns or None)
        sc = config.linux.security_context if config.linux.HasField("security_context") else None
        if sc is not None and sc.namespace_options.pid == cri.NamespaceMode.TARGET:
            target = ctx.records.find_container(sc.namespace_options.target_id)
            if target is None or target.state != C_RUNNING:
                raise NotFound(f"target container {sc.namespace_options.target_id!r} is not running")
            paths.extra_annotations["target_pid_ns"] = f"/proc/{target.pid}/ns/pid"
        spec = container_spec(config, sandbox_config, image.config, rec.id, sandbox.id, paths,
                              ctx.config.cgroup.driver, rec.log_path)
        default_pids_limit(spec, ctx.config.cgroup.pids_limit)
        await self.image_volumes.attach(rec, sandbox, spec)  # the images mounted, their binds' sources filled in
        for m in spec["mounts"]:  # volumes with propagation need their host source on a shared mount
            if "rro" in m.get("options", ()) and not mount_setattr_supported():
                raise InvalidArgument(f"mount {m['destination']!r}: recursive read-only mounts need "
                                      "mount_setattr(2), which this kernel does not have")
            prop = next((o for o in m.get("options", ()) if o in ("rshared", "rslave")), None)
            if prop and m.get("type") == "bind":
                try:
                    self.shared_mounts.ensure(rec.id, m["source"], prop, rec.bundle)
                except OSError as exc:
                    raise FailedPrecondition(f"mount {m['destination']!r}: cannot make host path "
                                             f"{m['source']!r} a shared mount for {prop}: {exc}") from None
        user = self._users.spec_user(config, image, image.lowerdirs or ctx.images.lowerdirs(image.id))
        spec["process"]["user"] = user
        cdi.inject(spec, config, ctx.config.cdi.spec_dirs, container_id=rec.id)  # after the user: may add groups
        rec.user = user
        rec.cgroup_path = spec["linux"]["cgroupsPath"]
        rec.chain_ids = list(image.chain_ids)
        if config.linux.HasField("resources"):
            rec.resources_pb = pb(config.linux.resources)
        rec.stop_signal = stop_signal(config, image)
        bundle = Path(rec.bundle)
        layer = Path(rec.layer_dir)
        group = pod_root_group(sandbox_config)
        private_dir(private_dir(bundle.parent, group) / bundle.name, group)  # (pycri/state/dirs.py)
        private_dir(layer)
        for d in (bundle / "rootfs", layer / "upper", layer / "work"):
            d.mkdir(exist_ok=True)
        if rec.log_path:
            os.makedirs(os.path.dirname(rec.log_path), exist_ok=True)
        # config.json is for recovery (a create redone after a restart) and OCI runtimes; the monitor got the
        # spec inline, so this is written while it works - or before, for an OCI runtime, whose monitor rewrites
        # it (the runtime reads it) and must not be overwritten afterwards
        oci = runtime_request(self.ctx.config, sandbox) is not None
        if not oci:
            self._begin_monitor_create(rec, sandbox, image.lowerdirs, spec)
        write_private(bundle / "config.json", json.dumps(spec))
        if oci:
            self._begin_monitor_create(rec, sandbox, image.lowerdirs, spec)

    def _begin_monitor_create(self, rec: ContainerRecord, sandbox: SandboxRecord, lowerdirs: list[str],
                              spec: dict | None) -> asyncio.Task:
        """Have the pod's monitor clone the container's process (stopped before exec) without waiting for it.

        CreateContainer answers once the container is fully described on disk (record, bundle, config.json),
        as containerd does, whose CreateContainer makes no process at all; the ~10 ms clone overlaps the answer
        and the kubelet's StartContainer, which waits for it. A failure here (say, a missing binary) is
        reported by StartContainer, as with containerd, and the container becomes EXITED with StartError.
        """
        layer = Path(rec.layer_dir)
        overlay = {"lower": lowerdirs, "upper": str(layer / "upper"), "work": str(layer / "work")}
        userns = userns_mappings(sandbox.config.linux.security_context.namespace_options)
        if userns is not None:  # the image's layers idmapped into the pod's user namespace (runtime/launch/userns.py)
            overlay["uidMappings"], overlay["gidMappings"] = userns
        config = rec.config

        sent = self.ctx.monitors.call_now(sandbox.monitor_dir, "create", rec.id, rec.bundle, overlay=overlay,
                                          stdin=config.stdin, log_path=rec.log_path or os.devnull, spec=spec,
                                          runtime=runtime_request(self.ctx.config, sandbox), ready_later=True)

        async def create() -> None:
            try:
                created = await sent
            except MonitorError as exc:
                if "already exists" not in str(exc):  # created before a daemon restart lost the answer
                    _log.info("container create failed", container_id=rec.id, error=str(exc))
                    raise
                created = await self.ctx.monitors.call(sandbox.monitor_dir, "state", rec.id)
            rec.pid = created.get("pid", 0)
            for warning in created.get("warnings", []):
                _log.warning("container create", container_id=rec.id, warning=warning)

        task = asyncio.get_running_loop().create_task(create())
        task.add_done_callback(lambda t: t.cancelled() or t.exception())  # the error is read by whoever awaits
        self._monitor_creates[rec.id] = task
        return task

    async def _monitor_created(self, rec: ContainerRecord) -> None:
        """Wait for the monitor-side create of a CREATED container; redo it if a daemon restart lost it."""
        task = self._monitor_creates.get(rec.id)
        if task is None:
            if rec.pid or rec.state != C_CREATED:
                return
            sandbox = self.ctx.records.sandboxes[rec.sandbox_id]
            try:
                lowerdirs = self.ctx.images.lowerdirs(rec.image_id)
            except KeyError:
                raise MonitorError(f"image {rec.image_id} of container {rec.id} was removed") from None
            task = self._begin_monitor_create(rec, sandbox, lowerdirs, None)
        try:
            await asyncio.shield(task)
        finally:
            if task.done():
                self._monitor_creates.pop(rec.id, None)

    # ---- Start / Stop / Remove ----

    async def start(self, container_id: str) -> None:
        rec = self.get(container_id)
        async with self._lock(rec.id):
            if rec.state != C_CREATED:
                raise FailedPrecondition(f"container {rec.id} is {rec.state}, not created")
            sandbox = self.ctx.records.sandboxes.get(rec.sandbox_id)
            try:
                await self._monitor_created(rec)
                started = await self.ctx.monitors.call(sandbox.monitor_dir, "start", rec.id)
            except (MonitorError, MonitorUnavailable) as exc:
                rec.state, rec.finished_at, rec.exit_code = C_EXITED, time.time_ns(), 128
                rec.reason, rec.message = "StartError", str(exc)
                self.ctx.records.save_container(rec)
                self._emit(rec, cri.ContainerEventType.CONTAINER_STOPPED_EVENT)
                raise FailedPrecondition(f"failed to start container {rec.id}: {exc}") from None
            rec.state = C_RUNNING
            # the monitor's time, from before the exec: a process that exits at once must not end before it began
            rec.started_at = int(started.get("started_at") or time.time_ns())
            rec.pid = started.get("pid", rec.pid)
            self.ctx.records.save_container(rec)
            self._emit(rec, cri.ContainerEventType.CONTAINER_STARTED_EVENT)
        _log.info("container started", container_id=rec.id, pid=rec.pid)
        self._watch(rec)  # after the started event: a container that has ended already is recorded here

    def _watch(self, rec: ContainerRecord) -> None:
        """Have a running container's end recorded as soon as its monitor records it (Daemon.take_exits), or at
        once when it has ended already or its monitor is gone."""
        monitor_dir = self.ctx.records.sandboxes[rec.sandbox_id].monitor_dir
        exits = self.ctx.monitors.exits
        if not exits.monitor(monitor_dir) or exits.container(monitor_dir, rec.id) is not None:
            self.exited(rec.id)

    def exited(self, cid: str) -> None:
        """A running container has ended: record it as its monitor's state on disk says (Daemon.take_exits)."""
        rec = self.ctx.records.containers.get(cid)
        if rec is None or rec.state != C_RUNNING:
            return
        monitor_dir = self.ctx.records.sandboxes[rec.sandbox_id].monitor_dir
        self._record_exit(cid, self.ctx.monitors.status_from_disk(monitor_dir, cid))

    def _record_exit(self, cid: str, info: dict) -> None:
        rec = self.ctx.records.containers.get(cid)
        if rec is None or rec.state != C_RUNNING:
            return
        if (sandbox := self.ctx.records.sandboxes.get(rec.sandbox_id)) is not None:
            self.ctx.monitors.exits.forget_container(sandbox.monitor_dir, cid)
        code = info.get("exit_code")
        rec.state = C_EXITED
        rec.finished_at = int(info.get("finished_at") or time.time_ns())
        if code is None:  # the monitor died with the process: nothing recorded its end
            rec.exit_code, rec.reason = 255, "Unknown"
            rec.message = ("no exit status was recorded: the container's monitor exited before it, or its state "
                           "is gone")
        else:
            rec.exit_code = int(code)
            rec.reason = "OOMKilled" if info.get("oom_killed") else ("Completed" if code == 0 else "Error")
        self.ctx.records.save_container(rec)
        self._emit(rec, cri.ContainerEventType.CONTAINER_STOPPED_EVENT)
        _log.info("container exited", container_id=cid, exit_code=rec.exit_code, reason=rec.reason)

    async def stop(self, container_id: str, timeout: int) -> None:
        rec = self.ctx.records.find_container(container_id)
        if rec is None:  # idempotent, as the CRI asks: an unknown container is stopped already (containerd >= 1.7)
            _log.info("stop of an unknown container: nothing to stop", container_id=container_id)
            return
        if rec.state != C_RUNNING:
            return  # idempotent
        sandbox = self.ctx.records.sandboxes.get(rec.sandbox_id)
        try:
            if timeout > 0:
                await self._kill(sandbox, rec, rec.stop_signal)
                try:
                    info = await self.ctx.monitors.call(sandbox.monitor_dir, "wait", rec.id, timeout=timeout,
                                                        client_timeout=None)
                    self._record_exit(rec.id, info)
                    return
                except MonitorError:
                    pass  # the grace period ran out
            await self._kill(sandbox, rec, "SIGKILL", all=True)
            info = await self.ctx.monitors.call(sandbox.monitor_dir, "wait", rec.id, timeout=60, client_timeout=None)
            self._record_exit(rec.id, info)
        except MonitorUnavailable:
            self._record_exit(rec.id, self.ctx.monitors.status_from_disk(sandbox.monitor_dir, rec.id))

    async def _kill(self, sandbox, rec: ContainerRecord, sig: str, all: bool = False) -> None:
        """Signal the container. One that exited before its exit was recorded here is no error (the monitor
        refuses to signal it; its wait answers at once): e.g. a container in another's pid namespace, which
        the kernel kills with that namespace's init, as a pod is stopped."""
        try:
            await self.ctx.monitors.call(sandbox.monitor_dir, "kill", rec.id, sig, all=all)
        except MonitorError:
            if (await self.ctx.monitors.call(sandbox.monitor_dir, "state", rec.id)).get("status") != "stopped":
                raise

    async def remove(self, container_id: str) -> None:
        rec = self.ctx.records.find_container(container_id)
        if rec is None:
            return  # idempotent
        if rec.state == C_RUNNING:
            await self.stop(rec.id, timeout=0)
        async with self._lock(rec.id):
            await self._cleanup(rec)
        self._locks.pop(rec.id, None)
        if self.ctx.images.resolve_id(rec.image_id) is None:  # its image was removed while it ran
            self.ctx.background(self._collect_images())
        self._emit(rec, cri.ContainerEventType.CONTAINER_DELETED_EVENT)
        _log.info("container removed", container_id=rec.id)

    async def _collect_images(self) -> None:
        try:
            await self.ctx.images.gc()
        except ImageError as exc:
            _log.error("image garbage collection after a container removal failed", error=str(exc))

    async def _cleanup(self, rec: ContainerRecord) -> None:
        """Undo what exists of a container. Its directories go before its record, so that a failure to remove
        them (TeardownError) leaves the record for a retry, rather than an OK and files nothing tracks."""
        if (task := self._monitor_creates.pop(rec.id, None)) is not None:
            await asyncio.wait([task])  # its outcome does not matter: the container goes
        sandbox = self.ctx.records.sandboxes.get(rec.sandbox_id)
        if sandbox is not None:
            self.ctx.monitors.exits.forget_container(sandbox.monitor_dir, rec.id)
        if sandbox is not None and self.ctx.monitors.alive(sandbox.monitor_dir):
            try:
                await self.ctx.monitors.call(sandbox.monitor_dir, "delete", rec.id, force=True)
            except MonitorError as exc:
                if "not found" not in str(exc) and "unknown" not in str(exc):
                    _log.warning("monitor delete", container_id=rec.id, error=str(exc))
        elif rec.cgroup_path:
            await asyncio.to_thread(remove_cgroup, rec.cgroup_path, self.ctx.config.cgroup.driver)
        self.shared_mounts.release(rec.id)
        failures = []  # both run, whichever fails
        try:
            await self.image_volumes.release(rec)
        except OSError as exc:
            _log.error("container image volumes not unmounted", container_id=rec.id, error=str(exc))
            failures.append(f"its image volumes could not be unmounted: {exc}")
        try:
            await self._remove_files(rec)
        except OSError as exc:
            _log.error("container files not removed", container_id=rec.id, error=str(exc))
            failures.append(f"its files could not be removed: {exc}")
        if failures:
            raise TeardownError(f"container {rec.id}: " + "; ".join(failures))
        self.ctx.records.delete_container(rec.id)

    async def _remove_files(self, rec: ContainerRecord) -> None:
        """Remove the bundle and the writable layer. A large layer takes seconds (20,000 files: ~3 s): the removal
        runs on when its caller is cancelled (the kubelet's deadline), and a retry waits for the same one."""
        task = self._removals.get(rec.id)
        if task is None:
            task = asyncio.get_running_loop().create_task(asyncio.to_thread(_remove_dirs, rec.bundle, rec.layer_dir))
            self._removals[rec.id] = task
            task.add_done_callback(lambda t: (self._removals.pop(rec.id, None), t.cancelled() or t.exception()))
        await asyncio.shield(task)

    # ---- Status / List ----

    def get(self, container_id: str) -> ContainerRecord:
        rec = self.ctx.records.find_container(container_id)
        if rec is None or rec.state == C_CREATING:
            raise NotFound(f"container {container_id!r} not found")
        return rec

    def status(self, container_id: str, verbose: bool) -> bytes:
        """The serialized ContainerStatusResponse (pycri/wire.py)."""
        rec = self.get(container_id)
        response = wire.message_field(_STATUS, status_bytes(rec, self.ctx.images))
        if verbose:
            info = cri.ContainerStatusResponse()
            info.info["info"] = json.dumps({"sandboxID": rec.sandbox_id, "pid": rec.pid, "bundle": rec.bundle,
                                            "stopSignal": rec.stop_signal, "state": rec.state})
            response += info.SerializeToString()
        return response

    def list(self, flt: cri.ContainerFilter | None) -> list[bytes]:
        """The serialized Container of each container the filter takes (ListContainersResponse.containers)."""
        recs = (rec for rec in self.ctx.records.containers.values() if rec.state != C_CREATING)
        if (flt := asking(flt)) is not None:
            recs = (rec for rec in recs
                    if matches(flt, rec.id, rec.config.labels, sandbox_id=rec.sandbox_id, state=state_of(rec)))
        return [item_bytes(rec, self.ctx.images) for rec in recs]

    # ---- Exec, logs, resources ----

    def _running(self, container_id: str) -> tuple[ContainerRecord, SandboxRecord]:
        rec = self.get(container_id)
        if rec.state != C_RUNNING:
            raise FailedPrecondition(f"container {rec.id} is not running")
        return rec, self.ctx.records.sandboxes[rec.sandbox_id]

    async def exec_sync(self, container_id: str, cmd: list[str], timeout: int) -> cri.ExecSyncResponse:
        """Run cmd in the container (pycri/containers/exec.py)."""
        if not cmd:
            raise InvalidArgument("exec needs a command")
        rec, sandbox = self._running(container_id)
        return await exec_sync(self.ctx, rec, sandbox, cmd, timeout)

    async def reopen_log(self, container_id: str) -> None:
        rec, sandbox = self._running(container_id)
        await self.ctx.monitors.call(sandbox.monitor_dir, "reopen_log", rec.id)

    async def update_resources(self, container_id: str, res: cri.LinuxContainerResources) -> None:
        rec = self.get(container_id)
        if rec.state not in (C_CREATED, C_RUNNING):
            raise FailedPrecondition(f"container {rec.id} is {rec.state}")
        sandbox = self.ctx.records.sandboxes[rec.sandbox_id]
        try:
            await self._monitor_created(rec)
            warnings = await self.ctx.monitors.call(sandbox.monitor_dir, "update_resources", rec.id,
                                                    oci_resources(res))
        except MonitorError as exc:
            raise FailedPrecondition(f"cannot update resources of {rec.id}: {exc}") from None
        for w in warnings or []:
            _log.warning("update resources", container_id=rec.id, warning=w)
        rec.resources_pb = pb(res)
        self.ctx.records.save_container(rec)

    # ---- Recovery ----

    async def recover(self) -> None:
        """At start, before the socket serves: undo half-made containers; record the exits that happened
        meanwhile and watch the running containers; sweep writable layers whose container is gone (removed just
        before a crash). What cannot be removed is logged and tried again at the next start: the daemon starts."""
        layers = self.ctx.config.root_path / "containers"
        if layers.is_dir():
            known = set(self.ctx.records.containers)
            for stale in [str(d) for d in layers.iterdir() if d.name not in known]:
                try:
                    await asyncio.to_thread(_remove_dirs, stale)
                except OSError as exc:
                    _log.error("leftover writable layer not removed", path=stale, error=str(exc))
        for rec in list(self.ctx.records.containers.values()):
            sandbox = self.ctx.records.sandboxes.get(rec.sandbox_id)
            if rec.state == C_CREATING or sandbox is None:
                try:
                    await self._cleanup(rec)
                except TeardownError:
                    pass  # logged; the record stays for the next try
                continue
            if rec.state == C_CREATED and self.ctx.monitors.alive(sandbox.monitor_dir):
                self._adopt_start(rec, sandbox)
                continue
            if rec.state == C_RUNNING:
                self._watch(rec)
        await self.image_volumes.recover()

    def _adopt_start(self, rec: ContainerRecord, sandbox: SandboxRecord) -> None:
        """A CREATED container its monitor has started: the daemon died between the monitor's answer to
        StartContainer and saving RUNNING. Take the monitor's word (found by hack/chaos.py): left CREATED, its
        process ran unseen, and a retried start turned it into a StartError while the process went on."""
        st = self.ctx.monitors.status_from_disk(sandbox.monitor_dir, rec.id)
        if st.get("status") not in ("running", "stopped") or not st.get("started_at"):
            return  # not started (the monitor-side create is awaited or redone by StartContainer)
        rec.state, rec.started_at, rec.pid = C_RUNNING, int(st["started_at"]), int(st.get("pid") or rec.pid)
        self.ctx.records.save_container(rec)
        _log.info("container started before a restart; recorded running", container_id=rec.id, pid=rec.pid)
        self._watch(rec)  # records the exit at once if it has ended meanwhile


def _remove_dirs(*dirs: str) -> None:
    """Remove a container's bundle and writable layer (runtime/host/trees.py: any depth, no other mount entered); all
    are tried, then the first failure is raised (OSError)."""
    failures = []
    for d in dirs:
        if not d:
            continue
        try:
            rootfs = os.path.join(d, "rootfs")
            detach_if_mounted(rootfs)  # an OCI runtime's rootfs, left by a monitor that died (docs/runtime.md)
            remove_tree(d)
        except OSError as exc:
            failures.append(exc)
    if failures:
        raise failures[0]
