"""Pod sandboxes: the pod's namespaces, network and infra (pause) container.

RunPodSandbox saves the record first (CREATING), writes the pod files, then makes in parallel the network (pinned
netns, CNI ADD), the pod's /dev/shm, the pod's monitor and the infra bundle; then the monitor creates and starts
the infra container (a user-namespaced pod's network comes after the infra is created: it owns the netns). A
failure, or a crash finished at the next start, is undone by the teardown, which tolerates what is absent.
StopPodSandbox stops the pod's containers, then kills the infra while CNI DEL runs (DEL needs the netns: see
docs/design.md, "Pod lifecycle"), then unpins the namespaces and unmounts /dev/shm.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import time
from pathlib import Path

from pycri import log, wire
from pycri.oci import validation
from pycri.api import api_pb2 as cri
from pycri.state.dirs import private_dir, secure_pod_dir, write_private
from pycri.errors import FailedPrecondition, InvalidArgument, NotFound, TeardownError
from pycri.network.cni import CNIError, PodNetworkArgs, pod_ips
from pycri.network.cniconf import load_network_config
from pycri.node import MonitorError, cgroups, podns, remove_tree, userns_supported
from pycri.oci.spec import DEFAULT_CGROUP_PARENT, PodPaths, default_pids_limit, sandbox_spec, userns_mappings
from pycri.pods.podfiles import write_pod_files
from pycri.containers.messages import shown_of, status_bytes as container_status_bytes
from pycri.pods.messages import item_bytes, state_of, status_bytes
from pycri.state.records import SB_CREATING, SB_NOTREADY, SB_READY, SandboxRecord, asking, matches, pb, unpb
from pycri.state.reservations import Reservations

_STATUS = wire.number(cri.PodSandboxStatusResponse, "status")
_CONTAINERS_STATUSES = wire.number(cri.PodSandboxStatusResponse, "containers_statuses")
_log = log.get("sandbox")
_PROTOCOLS = {cri.Protocol.TCP: "tcp", cri.Protocol.UDP: "udp", cri.Protocol.SCTP: "sctp"}


def sandbox_name(md: cri.PodSandboxMetadata) -> str:
    return f"{md.name}_{md.namespace}_{md.uid}_{md.attempt}"



def runtime_request(config, rec: SandboxRecord) -> dict | None:
    """The monitor's `runtime` for a pod's containers (None: built-in); the handler was checked at run."""
    rt = config.runtime_for(rec.runtime_handler)
    if rt is None:  # a handler removed from the config since the pod was made
        raise FailedPrecondition(f"runtime handler {rec.runtime_handler!r} of pod {rec.id} is no longer "
                                 f"configured")
    return rt.monitor_request()

class Sandboxes:
    def __init__(self, ctx, containers) -> None:
        self.ctx = ctx  # the Daemon: config, records, images, monitors, cni, events
        self.containers = containers  # (pycri/containers/manager.py) a pod's stop and removal stop and remove its own
        self.reservations = Reservations("sandbox")
        self._locks: dict[str, asyncio.Lock] = {}

    def _lock(self, sid: str) -> asyncio.Lock:
        return self._locks.setdefault(sid, asyncio.Lock())

    # ---- RunPodSandbox ----

    async def run(self, config: cri.PodSandboxConfig, handler: str) -> str:
        md = config.metadata
        if not (md.name and md.namespace and md.uid):
            raise InvalidArgument("sandbox metadata needs name, namespace and uid")
        if any("\0" in s for s in (md.name, md.namespace, md.uid)):  # they go into CNI_ARGS (found by tests/fuzz)
            raise InvalidArgument("sandbox metadata must not contain NUL characters")
        validation.pod_config(config)
        self._check_handler(handler)
        name = sandbox_name(md)
        existing = (lambda n: (r.id if (r := self.ctx.records.sandbox_by_name(n)) else None))
        return await self.reservations.create_once(name, existing, lambda: self._create(config, handler, name))

    def _check_handler(self, handler: str) -> None:
        runtimes = self.ctx.config.runtimes
        if self.ctx.config.runtime_for(handler) is None:
            _log.warning("unknown runtime handler", runtime_handler=handler)
            raise InvalidArgument(f"no runtime for handler {handler!r} is configured "
                                  f"(configured: {', '.join(sorted(runtimes))})")

    async def _create(self, config: cri.PodSandboxConfig, handler: str, name: str) -> str:
        ctx = self.ctx
        image = await ctx.images.ensure(ctx.config.sandbox_image)
        sid = secrets.token_hex(32)
        rec = SandboxRecord(id=sid, name=name, config_pb=pb(config), runtime_handler=handler, state=SB_CREATING,
                            created_at=time.time_ns(), pod_dir=str(ctx.config.state_path / "p" / sid[:16]),
                            cgroup_parent=config.linux.cgroup_parent)
        ctx.records.save_sandbox(rec)  # first, so a crash part-way is found and undone at the next start
        log_ = _log.bind(pod_sandbox_id=sid, pod=f"{config.metadata.namespace}/{config.metadata.name}")
        try:
            await self._setup(rec, config, image)
        except BaseException as exc:
            log_.warning("sandbox creation failed, undoing", error=str(exc) or type(exc).__name__)
            try:
                await asyncio.shield(self._teardown(rec, remove=True))
            except TeardownError as undo_exc:  # the CREATING record stays: the next start undoes the rest
                log_.error("undoing the sandbox creation failed", error=str(undo_exc))
            raise
        rec.state = SB_READY
        ctx.records.save_sandbox(rec)
        ctx.events.emit(rec, rec.id, cri.ContainerEventType.CONTAINER_CREATED_EVENT)
        ctx.events.emit(rec, rec.id, cri.ContainerEventType.CONTAINER_STARTED_EVENT)
        self._watch_infra(rec)
        log_.info("sandbox ready", ips=rec.ips, infra_pid=rec.infra_pid)
        return sid

    async def _setup(self, rec: SandboxRecord, config: cri.PodSandboxConfig, image) -> None:
        """Everything the record names is decided and saved first (so an undo knows what to look for); then the
        network, the pod's /dev/shm, the monitor and the bundle are made in parallel; then the infra container."""
        ctx = self.ctx
        opts = config.linux.security_context.namespace_options
        group = pod_root_group(config)
        pod_dir = private_dir(Path(rec.pod_dir), group)  # (pycri/state/dirs.py)
        files = write_pod_files(pod_dir, config, host_network=opts.network == cri.NamespaceMode.NODE)
        net = None
        if opts.network != cri.NamespaceMode.NODE:
            net = load_network_config(ctx.config.cni.conf_dir)
            if net is None:
                raise FailedPrecondition(f"network not ready: no CNI network config in {ctx.config.cni.conf_dir}")
            rec.netns = str(ctx.config.state_path / "ns" / rec.id[:16])
            rec.network_name = net.name
        if opts.ipc != cri.NamespaceMode.NODE:
            rec.shm_dir = str(pod_dir / "shm")
        paths = PodPaths(hostname=files["hostname"], net_ns=rec.netns or None, shm_dir=rec.shm_dir or None)
        spec = sandbox_spec(config, image.config, rec.id, paths, ctx.config.cgroup.driver)
        default_pids_limit(spec, ctx.config.cgroup.pids_limit)
        userns = userns_mappings(opts)
        if userns is not None:
            # the infra makes the user namespace and the netns inside it; both are pinned once it exists, and the
            # network is set up then (see docs/design.md, "User namespaces")
            if not userns_supported():
                raise FailedPrecondition("user namespaces with idmapped mounts are not supported by this kernel")
            _check_searchable(pod_dir, group)
            rec.userns = str(ctx.config.state_path / "ns" / f"{rec.id[:16]}.user")
        rec.cgroup_path = spec["linux"]["cgroupsPath"]
        ctx.records.save_sandbox(rec)
        bundle = pod_dir / "infra"

        async def network() -> None:
            if net is None:
                return
            if not rec.userns:
                await asyncio.to_thread(podns.create_netns, rec.netns)
            elif not podns.is_pinned(rec.netns):
                return  # after the infra is created, below
            try:
                result = await ctx.cni.add(net, self._pod_network_args(rec, config))
            except CNIError as exc:
                raise FailedPrecondition(f"failed to set up the pod network: {exc}") from None
            rec.ips = pod_ips(result)

        async def shm() -> None:
            if rec.shm_dir:
                await asyncio.to_thread(podns.mount_shm, rec.shm_dir)

        results = await asyncio.gather(network(), shm(), ctx.monitors.spawn(rec.id, rec.monitor_dir),
                                       asyncio.to_thread(_write_bundle, bundle, spec, group),
                                       return_exceptions=True)
        for result in results:
            if isinstance(result, BaseException):
                raise result
        overlay = {"lower": image.lowerdirs, "upper": str(bundle / "upper"), "work": str(bundle / "work")}
        if userns is not None:  # the pause image's layers idmapped into the pod's user namespace
            overlay["uidMappings"], overlay["gidMappings"] = userns
        try:
            # answered before the set-up ends (the start waits for it), but where its namespaces are pinned next
            created = await ctx.monitors.call(rec.monitor_dir, "create", rec.id, str(bundle), overlay=overlay,
                                              log_path=os.devnull, spec=spec, runtime=runtime_request(ctx.config, rec),
                                              ready_later=not rec.userns)
            for warning in created.get("warnings", []):
                _log.warning("infra container", pod_sandbox_id=rec.id, warning=warning)
            if rec.userns:
                await asyncio.to_thread(self._pin_userns, rec, created.get("pid", 0))
                await network()
            started = await ctx.monitors.call(rec.monitor_dir, "start", rec.id)
        except MonitorError as exc:
            raise FailedPrecondition(f"failed to start the infra container: {exc}") from None
        rec.infra_pid = started.get("pid") or created.get("pid", 0)

    @staticmethod
    def _pin_userns(rec: SandboxRecord, infra_pid: int) -> None:
        """Pin the user namespace the infra made (and the netns it made inside it), then bring lo up there."""
        if not infra_pid:
            raise FailedPrecondition("the infra container reported no pid: cannot pin its user namespace")
        podns.pin_from_pid(infra_pid, "user", rec.userns)
        if rec.netns:
            podns.pin_from_pid(infra_pid, "net", rec.netns)
            podns.loopback_up(rec.netns)

    def _pod_network_args(self, rec: SandboxRecord, config: cri.PodSandboxConfig) -> PodNetworkArgs:
        md = config.metadata
        ports = [{"hostPort": p.host_port, "containerPort": p.container_port,
                  "protocol": _PROTOCOLS.get(p.protocol, "tcp"), **({"hostIP": p.host_ip} if p.host_ip else {})}
                 for p in config.port_mappings if p.host_port > 0]
        dns = None
        if config.HasField("dns_config"):
            d = config.dns_config
            dns = {"servers": list(d.servers), "searches": list(d.searches), "options": list(d.options)}
        return PodNetworkArgs(pod_id=rec.id, netns=rec.netns, name=md.name, namespace=md.namespace, uid=md.uid,
                              port_mappings=ports, dns=dns, bandwidth=_bandwidth(config.annotations))

    def _watch_infra(self, rec: SandboxRecord) -> None:
        """Have the end of a READY pod's infra container, or of its monitor, make the pod NOTREADY as soon as it
        is recorded (Daemon.take_exits), or at once when it has happened already."""
        exits = self.ctx.monitors.exits
        if not exits.monitor(rec.monitor_dir) or exits.container(rec.monitor_dir, rec.id) is not None:
            self.infra_exited(rec.id)

    def infra_exited(self, sandbox_id: str) -> None:
        rec = self.ctx.records.sandboxes.get(sandbox_id)
        if rec is None:
            return
        self.ctx.monitors.exits.forget_container(rec.monitor_dir, rec.id)
        if rec.state == SB_READY and not self._lock(rec.id).locked():  # (a stop makes it NOTREADY itself)
            _log.warning("infra container exited; sandbox not ready", pod_sandbox_id=rec.id)
            self._not_ready(rec)

    def _not_ready(self, rec: SandboxRecord) -> None:
        was_ready, rec.state = rec.state == SB_READY, SB_NOTREADY
        self.ctx.records.save_sandbox(rec)
        if was_ready:
            self.ctx.events.emit(rec, rec.id, cri.ContainerEventType.CONTAINER_STOPPED_EVENT)

    # ---- Stop / Remove ----

    async def stop(self, sandbox_id: str) -> None:
        rec = self.ctx.records.find_sandbox(sandbox_id)
        if rec is None:
            return  # idempotent: an unknown sandbox is already stopped
        async with self._lock(rec.id):
            for c in self.ctx.records.containers_of(rec.id):
                await self.containers.stop(c.id, timeout=0)
            try:
                await self._teardown(rec, remove=False)
            finally:  # the infra is gone (or going) even when some other step failed
                if rec.state != SB_NOTREADY:
                    self._not_ready(rec)
        _log.info("sandbox stopped", pod_sandbox_id=rec.id)

    async def remove(self, sandbox_id: str) -> None:
        rec = self.ctx.records.find_sandbox(sandbox_id)
        if rec is None:
            return
        await self.stop(rec.id)
        async with self._lock(rec.id):
            for c in self.ctx.records.containers_of(rec.id):
                await self.containers.remove(c.id)
            await self._teardown(rec, remove=True)
        self._locks.pop(rec.id, None)
        _log.info("sandbox removed", pod_sandbox_id=rec.id)

    async def _teardown(self, rec: SandboxRecord, remove: bool) -> None:
        """Undo what exists of a sandbox; each step tolerates what is already gone.

        CNI DEL runs while the netns still exists, in parallel with killing the infra container: the bridge
        plugin finds the pod's addresses inside the netns to remove its masquerade rules (docs/design.md).
        """
        ctx = self.ctx
        errors: list[str] = []  # every step runs even when one fails: a step skipped is a leak

        async def step(what: str, fn, *args) -> None:
            try:
                await asyncio.to_thread(fn, *args)
            except Exception as exc:  # noqa: BLE001 - collected, raised once the other steps have run
                errors.append(f"{what}: {exc}")
                _log.warning("sandbox teardown step failed", pod_sandbox_id=rec.id, step=what, error=str(exc))

        monitor_up = os.path.exists(ctx.monitors.socket_path(rec.monitor_dir)) and ctx.monitors.alive(rec.monitor_dir)
        await asyncio.gather(self._kill_infra(rec) if monitor_up else asyncio.sleep(0),
                             self._network_down(rec, errors))
        if rec.netns:
            await step("unpinning the network namespace", podns.remove_netns, rec.netns)
        if rec.userns:
            await step("unpinning the user namespace", podns.remove_netns, rec.userns)  # unpins any namespace file
        if rec.shm_dir:
            await step("unmounting /dev/shm", podns.unmount_shm, rec.shm_dir)
        if not monitor_up and rec.cgroup_path:
            await step("removing the cgroup", remove_cgroup, rec.cgroup_path, ctx.config.cgroup.driver)
        if remove and rec.pod_dir:  # what its containers' removals left (pycri/containers/imagevols.py)
            try:
                await self.containers.image_volumes.teardown(rec.pod_dir)
            except OSError as exc:
                errors.append(f"unmounting image volumes: {exc}")
                _log.warning("sandbox teardown step failed", pod_sandbox_id=rec.id, step="unmounting image volumes",
                             error=str(exc))
        if errors:
            # the record stays (and with it the pod dir), so a retried Stop/Remove finds what is left to undo
            raise TeardownError(f"pod sandbox {rec.id} teardown incomplete: " + "; ".join(errors))
        if not remove:
            return
        ctx.monitors.exits.forget_container(rec.monitor_dir, rec.id)
        ctx.monitors.exits.forget_monitor(rec.monitor_dir)
        if monitor_up:
            try:
                await ctx.monitors.call(rec.monitor_dir, "delete", rec.id, force=True)
            except Exception:  # noqa: BLE001
                pass
            try:
                await ctx.monitors.call(rec.monitor_dir, "shutdown", force=True)
            except Exception as exc:  # noqa: BLE001
                _log.debug("monitor shutdown", pod_sandbox_id=rec.id, error=str(exc))
        if rec.pod_dir:
            try:
                await asyncio.to_thread(remove_tree, rec.pod_dir)
            except OSError as exc:  # the record stays: a retried Remove (or the next start) tries again
                _log.error("pod dir not removed", pod_sandbox_id=rec.id, error=str(exc))
                raise TeardownError(f"pod sandbox {rec.id}: its directory could not be removed: {exc}") from None
        if rec.state != SB_CREATING:  # (a pod whose creation is undone was never shown)
            ctx.events.emit(rec, rec.id, cri.ContainerEventType.CONTAINER_DELETED_EVENT)
        ctx.records.delete_sandbox(rec.id)
        # the parent pycri made for pods without one goes with the last such pod (also a failed or undone one)
        if not rec.cgroup_parent and ctx.config.cgroup.driver == "cgroupfs" and \
                not any(not s.cgroup_parent for s in ctx.records.sandboxes.values()):
            await asyncio.to_thread(_remove_default_cgroup_parent)

    async def _kill_infra(self, rec: SandboxRecord) -> None:
        try:
            await self.ctx.monitors.call(rec.monitor_dir, "kill", rec.id, "SIGKILL", all=True)
            await self.ctx.monitors.call(rec.monitor_dir, "wait", rec.id, timeout=30, client_timeout=None)
        except Exception as exc:  # noqa: BLE001 - the infra may never have been created, or be gone already
            _log.debug("infra kill", pod_sandbox_id=rec.id, error=str(exc))

    async def _network_down(self, rec: SandboxRecord, errors: list[str]) -> None:
        """CNI DEL once (network_name is cleared when it succeeded, so repeated StopPodSandbox calls are cheap).
        A failed DEL is logged, not raised (a later Stop retries it); a failure to record its success goes to
        `errors`, for the caller to raise after the rest of the teardown."""
        if not rec.network_name:
            return
        net = load_network_config(self.ctx.config.cni.conf_dir)
        if net is None or net.name != rec.network_name:
            _log.warning("the pod's CNI network config is gone; its IP may stay reserved", pod_sandbox_id=rec.id,
                         network=rec.network_name)
            return
        try:
            await self.ctx.cni.delete(net, self._pod_network_args(rec, rec.config))
        except Exception as exc:  # noqa: BLE001 - whatever fails here, the rest of the teardown must still run
            _log.warning("CNI DEL failed", pod_sandbox_id=rec.id, error=str(exc) or type(exc).__name__)
            return
        rec.network_name = ""
        if rec.id in self.ctx.records.sandboxes:
            try:
                self.ctx.records.save_sandbox(rec)
            except Exception as exc:  # noqa: BLE001 - e.g. a full or read-only disk; the DEL is done either way
                errors.append(f"recording the CNI DEL: {exc}")

    # ---- Status / List ----

    def get(self, sandbox_id: str) -> SandboxRecord:
        rec = self.ctx.records.find_sandbox(sandbox_id)
        if rec is None or rec.state == SB_CREATING:
            raise NotFound(f"pod sandbox {sandbox_id!r} not found")
        return rec

    def status(self, sandbox_id: str, verbose: bool) -> bytes:
        """The serialized PodSandboxStatusResponse (pycri/wire.py). `timestamp` and `containers_statuses` always
        together: a kubelet with evented PLEG takes a timestamp as "the containers are listed here"
        (docs/design.md, "What the kubelet relies on")."""
        rec = self.get(sandbox_id)
        images = self.ctx.images
        response = cri.PodSandboxStatusResponse(timestamp=self.ctx.events.now())
        if verbose:
            response.info["info"] = json.dumps({
                "pid": rec.infra_pid, "netNamespacePath": rec.netns, "podDir": rec.pod_dir,
                "runtimeHandler": rec.runtime_handler, "cgroupParent": rec.cgroup_parent,
                "image": self.ctx.config.sandbox_image, "state": rec.state,
                "resources": _resources_json(rec.resources_pb), "overhead": _resources_json(rec.overhead_pb),
            })
        return (wire.message_field(_STATUS, status_bytes(rec)) + response.SerializeToString()
                + wire.repeated_field(_CONTAINERS_STATUSES, (container_status_bytes(c, images)
                                                             for c in shown_of(self.ctx.records, (rec.id,)))))

    def list(self, flt: cri.PodSandboxFilter | None) -> list[bytes]:
        """The serialized PodSandbox of each sandbox the filter takes (ListPodSandboxResponse.items)."""
        recs = (rec for rec in self.ctx.records.sandboxes.values() if rec.state != SB_CREATING)
        if (flt := asking(flt)) is not None:
            recs = (rec for rec in recs if matches(flt, rec.id, rec.config.labels, state=state_of(rec)))
        return [item_bytes(rec) for rec in recs]

    def update_resources(self, sandbox_id: str, overhead, resources) -> None:
        """Record the pod-level resources the kubelet has applied to the pod cgroup (it owns that cgroup; the
        call tells the runtime, best effort, as the CRI describes it). Shown in verbose PodSandboxStatus."""
        rec = self.get(sandbox_id)
        rec.overhead_pb = pb(overhead) if overhead is not None else ""
        rec.resources_pb = pb(resources) if resources is not None else ""
        self.ctx.records.save_sandbox(rec)
        _log.info("pod resources updated", pod_sandbox_id=rec.id)

    # ---- Recovery ----

    async def recover(self) -> None:
        """At start, before the socket serves: finish or undo half-made sandboxes; watch the monitors; a sandbox
        whose infra container or monitor has ended is not ready."""
        for rec in list(self.ctx.records.sandboxes.values()):
            if rec.state == SB_CREATING:
                _log.info("undoing a sandbox creation interrupted by a restart", pod_sandbox_id=rec.id)
                try:
                    await self._teardown(rec, remove=True)
                except TeardownError as exc:  # kept, tried again at the next start; the daemon still starts
                    _log.error("undoing an interrupted sandbox creation failed", pod_sandbox_id=rec.id,
                               error=str(exc))
                continue
            if rec.pod_dir:
                try:
                    secure_pod_dir(Path(rec.pod_dir), pod_root_group(rec.config))
                except OSError as exc:
                    _log.warning("cannot set the modes of a pod dir", pod_sandbox_id=rec.id, error=str(exc))
            if rec.state == SB_READY:
                self._watch_infra(rec)
            else:  # a pod that is not ready may still have running containers
                self.ctx.monitors.exits.monitor(rec.monitor_dir)


def _resources_json(text: str) -> dict | None:
    if not text:
        return None
    from google.protobuf.json_format import MessageToDict

    return MessageToDict(unpb(cri.LinuxContainerResources, text))


def remove_cgroup(path: str, driver: str) -> None:
    """Remove a container's cgroup (killing what is left in it) when its monitor cannot: it died, or a reboot."""
    try:
        cgroups.remove_if_present(path, driver)
    except Exception as exc:  # noqa: BLE001 - best effort, logged
        _log.warning("cgroup removal failed", cgroup=path, error=str(exc))


def _remove_default_cgroup_parent() -> None:
    """The parent pycri made for pods without one goes with the last such pod (the kubelet's own stay)."""
    cgroups.remove_parent(DEFAULT_CGROUP_PARENT)


def pod_root_group(config: cri.PodSandboxConfig) -> int | None:
    """The host gid of a user-namespaced pod's root group, which alone may traverse the pod's dirs to its rootfs
    mount points (as containerd gives a remapped root its bundle dirs); None for a pod without a user namespace."""
    mappings = userns_mappings(config.linux.security_context.namespace_options)
    return None if mappings is None else int(mappings[1][0]["hostID"])


def _check_searchable(path: Path, group: int | None) -> None:
    """The root of a pod's user namespace is an unprivileged host uid: it must be able to reach the rootfs mount
    points below the pod dir (whose dirs give it traversal through their group; the state dirs above are 0711,
    as runc's and containerd's)."""
    for d in [path, *path.parents]:
        st = os.stat(d)
        if not (st.st_mode & 0o001 or (st.st_mode & 0o010 and st.st_gid == group)):
            raise FailedPrecondition(f"{d} is not searchable by others (mode {st.st_mode & 0o777:o}): the root of "
                                     "a pod's user namespace could not reach its rootfs; make it 0711")


def _write_bundle(bundle: Path, spec: dict, group: int | None) -> None:
    private_dir(bundle, group)
    (bundle / "rootfs").mkdir(exist_ok=True)
    for sub in ("upper", "work"):
        (bundle / sub).mkdir(exist_ok=True)
    write_private(bundle / "config.json", json.dumps(spec))


def _bandwidth(annotations) -> dict | None:
    """kubernetes.io/ingress-bandwidth and egress-bandwidth annotations -> CNI bandwidth capability (bits/s)."""
    out = {}
    for key, field in (("kubernetes.io/ingress-bandwidth", "ingress"), ("kubernetes.io/egress-bandwidth", "egress")):
        if key in annotations:
            rate = _quantity(annotations[key])
            if rate:
                out[f"{field}Rate"] = rate
                out[f"{field}Burst"] = 2 ** 31 - 1  # as the kubelet's dockershim passed it: effectively no burst cap
    return out or None


def _quantity(text: str) -> int | None:
    units = {"k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30}
    text = text.strip()
    for suffix in sorted(units, key=len, reverse=True):
        if text.endswith(suffix):
            try:
                return int(float(text[: -len(suffix)]) * units[suffix])
            except (ValueError, OverflowError):  # OverflowError: "infM", "1e999k"
                return None
    return int(text) if text.isascii() and text.isdigit() else None
