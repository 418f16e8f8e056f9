"""runtime.v1.RuntimeService. Methods not defined here answer UNIMPLEMENTED (see pycri.rpc)."""

from __future__ import annotations

import functools
import json
import os
import subprocess

from pycri import CRI_API_VERSION, RUNTIME_NAME, __version__, log, wire
from pycri.api import api_pb2 as cri
from pycri.errors import InvalidArgument, Unavailable
from pycri.network.cniconf import load_network_config, network_status
from pycri.network.defaultnet import NOT_OURS, OFF, subnets_of
from pycri.node import mount_setattr_supported, userns_supported
from pycri.state.records import Shown, asking
from pycri.streaming.container_backend import ready_sandbox, running_container

_log = log.get("runtime")

# The version string containerd and CRI-O answer in VersionResponse.version (the kubelet's "kube runtime API").
KUBE_RUNTIME_API_VERSION = "0.1.0"
POD_CIDR_KEY = "pod_cidr"
_SANDBOX_ITEMS = wire.number(cri.ListPodSandboxResponse, "items")
_SANDBOX_CHUNK = wire.number(cri.StreamPodSandboxesResponse, "pod_sandboxes")
_CONTAINER_ITEMS = wire.number(cri.ListContainersResponse, "containers")
_CONTAINER_CHUNK = wire.number(cri.StreamContainersResponse, "containers")


class RuntimeService:
    def __init__(self, daemon) -> None:
        self.daemon = daemon
        self.config = daemon.config
        self.sandboxes = daemon.sandboxes
        self.containers = daemon.containers
        self.stats = daemon.stats
        self._answers: dict[str, tuple] = {}  # (pycri/state/records.py Shown)

    def _kept(self, method: str, key, make) -> bytes:
        """The answer make() gives, kept until key changes: the unfiltered Lists a kubelet relists with every
        second are made again only after a record (Shown.changes) or an image name changed."""
        kept = self._answers.get(method)
        if kept is None or kept[0] != key:
            kept = self._answers[method] = (key, make())
        return kept[1]

    # ---- pod sandboxes ----

    async def RunPodSandbox(self, request, context):
        sid = await self.sandboxes.run(request.config, request.runtime_handler)
        return cri.RunPodSandboxResponse(pod_sandbox_id=sid)

    async def StopPodSandbox(self, request, context):
        await self.sandboxes.stop(request.pod_sandbox_id)
        return cri.StopPodSandboxResponse()

    async def RemovePodSandbox(self, request, context):
        await self.sandboxes.remove(request.pod_sandbox_id)
        return cri.RemovePodSandboxResponse()

    async def PodSandboxStatus(self, request, context):
        return self.sandboxes.status(request.pod_sandbox_id, request.verbose)

    async def UpdatePodSandboxResources(self, request, context):
        self.sandboxes.update_resources(request.pod_sandbox_id,
                                        request.overhead if request.HasField("overhead") else None,
                                        request.resources if request.HasField("resources") else None)
        return cri.UpdatePodSandboxResourcesResponse()

    async def ListPodSandbox(self, request, context):
        if (flt := asking(_filter(request))) is not None:
            return wire.repeated_field(_SANDBOX_ITEMS, self.sandboxes.list(flt))
        return self._kept("ListPodSandbox", Shown.changes,
                          lambda: wire.repeated_field(_SANDBOX_ITEMS, self.sandboxes.list(None)))

    async def StreamPodSandboxes(self, request, context):
        for chunk in _chunks(self.sandboxes.list(_filter(request))):
            yield wire.repeated_field(_SANDBOX_CHUNK, chunk)

    # ---- containers ----

    async def CreateContainer(self, request, context):
        cid = await self.containers.create(request.pod_sandbox_id, request.config, request.sandbox_config)
        return cri.CreateContainerResponse(container_id=cid)

    async def StartContainer(self, request, context):
        await self.containers.start(request.container_id)
        return cri.StartContainerResponse()

    async def StopContainer(self, request, context):
        await self.containers.stop(request.container_id, request.timeout)
        return cri.StopContainerResponse()

    async def RemoveContainer(self, request, context):
        await self.containers.remove(request.container_id)
        return cri.RemoveContainerResponse()

    async def ContainerStatus(self, request, context):
        return self.containers.status(request.container_id, request.verbose)

    async def ListContainers(self, request, context):
        if (flt := asking(_filter(request))) is not None:
            return wire.repeated_field(_CONTAINER_ITEMS, self.containers.list(flt))
        return self._kept("ListContainers", (Shown.changes, self.daemon.images.names_generation),
                          lambda: wire.repeated_field(_CONTAINER_ITEMS, self.containers.list(None)))

    async def StreamContainers(self, request, context):
        for chunk in _chunks(self.containers.list(_filter(request))):
            yield wire.repeated_field(_CONTAINER_CHUNK, chunk)

    async def UpdateContainerResources(self, request, context):
        await self.containers.update_resources(request.container_id, request.linux)
        return cri.UpdateContainerResourcesResponse()

    async def ReopenContainerLog(self, request, context):
        await self.containers.reopen_log(request.container_id)
        return cri.ReopenContainerLogResponse()

    async def ExecSync(self, request, context):
        return await self.containers.exec_sync(request.container_id, list(request.cmd), request.timeout)

    # ---- streaming: the session itself runs on the streaming server (pycri/streaming/container_backend.py) ----

    def _streaming(self):
        if self.daemon.streaming is None:
            raise Unavailable("the streaming server is not running")
        return self.daemon.streaming

    async def Exec(self, request, context):
        rec, _ = running_container(self.daemon, request.container_id)
        request.container_id = rec.id  # a unique prefix names the container; the URL is for the container
        return cri.ExecResponse(url=self._streaming().register_exec(request))

    async def Attach(self, request, context):
        rec, _ = running_container(self.daemon, request.container_id)
        request.container_id = rec.id
        return cri.AttachResponse(url=self._streaming().register_attach(request))

    async def PortForward(self, request, context):
        sandbox = ready_sandbox(self.daemon, request.pod_sandbox_id)
        request.pod_sandbox_id = sandbox.id
        return cri.PortForwardResponse(url=self._streaming().register_portforward(request))

    # ---- stats (pycri/stats/collect.py) ----

    async def ContainerStats(self, request, context):
        rec = self.containers.get(request.container_id)
        return cri.ContainerStatsResponse(stats=await self.stats.container(rec))

    async def ListContainerStats(self, request, context):
        return cri.ListContainerStatsResponse(stats=await self.stats.containers(_filter(request)))

    async def StreamContainerStats(self, request, context):
        for chunk in _chunks(await self.stats.containers(_filter(request))):
            yield cri.StreamContainerStatsResponse(container_stats=chunk)

    async def PodSandboxStats(self, request, context):
        rec = self.sandboxes.get(request.pod_sandbox_id)
        return cri.PodSandboxStatsResponse(stats=await self.stats.pod(rec))

    async def ListPodSandboxStats(self, request, context):
        return cri.ListPodSandboxStatsResponse(stats=await self.stats.pods(_filter(request)))

    async def StreamPodSandboxStats(self, request, context):
        for chunk in _chunks(await self.stats.pods(_filter(request))):
            yield cri.StreamPodSandboxStatsResponse(pod_sandbox_stats=chunk)

    async def ListMetricDescriptors(self, request, context):
        return cri.ListMetricDescriptorsResponse(descriptors=self.stats.metric_descriptors())

    async def ListPodSandboxMetrics(self, request, context):
        return cri.ListPodSandboxMetricsResponse(pod_metrics=await self.stats.pod_metrics())

    # ---- events ----

    async def GetContainerEvents(self, request, context):
        queue = self.daemon.events.subscribe()
        try:
            while True:
                yield await queue.get()
        finally:
            self.daemon.events.unsubscribe(queue)

    async def Version(self, request, context):
        return cri.VersionResponse(
            version=KUBE_RUNTIME_API_VERSION,
            runtime_name=RUNTIME_NAME,
            runtime_version=__version__,
            runtime_api_version=CRI_API_VERSION,
        )

    async def Status(self, request, context):
        runtime_ready, runtime_reason, runtime_message = self.daemon.runtime_status()
        net_ready, net_reason, net_message = network_status(self.config.cni.conf_dir, self.config.cni.bin_dirs)
        status = cri.RuntimeStatus(conditions=[
            cri.RuntimeCondition(type="RuntimeReady", status=runtime_ready, reason=runtime_reason,
                                 message=runtime_message),
            cri.RuntimeCondition(type="NetworkReady", status=net_ready, reason=net_reason, message=net_message),
        ])
        response = cri.StatusResponse(status=status, runtime_handlers=self._handlers(),
                                      features=cri.RuntimeFeatures(supplemental_groups_policy=True))
        if request.verbose:
            response.info.update(self._verbose_info())
        return response

    def _handlers(self) -> list:
        """The default handler (empty name, as the kubelet asks for it) first, then each configured one.

        Recursive read-only mounts are reported where the kernel has mount_setattr(2). User namespaces for the
        built-in runtime where the kernel lets it give pods idmapped rootfs and volumes (runtime/launch/userns.py); not
        for an external OCI runtime, which would not idmap the rootfs pycri mounts.
        """
        names = [""] + sorted(self.config.runtimes)
        out = []
        for n in names:
            rt = self.config.runtime_for(n)
            rro = oci_rro_supported(rt.path) if rt.type == "oci" else mount_setattr_supported()
            userns = rt.type != "oci" and userns_supported()
            out.append(cri.RuntimeHandler(name=n, features=cri.RuntimeHandlerFeatures(recursive_read_only_mounts=rro,
                                                                                      user_namespaces=userns)))
        return out

    def _verbose_info(self) -> dict[str, str]:
        conf = load_network_config(self.config.cni.conf_dir)
        return {
            "config": json.dumps(self.daemon.config_dict(), sort_keys=True),
            "cniConfig": json.dumps({"path": str(conf.path), "name": conf.name, "cniVersion": conf.cni_version}
                                    if conf else None),
            "podCIDR": json.dumps(self.daemon.setting(POD_CIDR_KEY, "")),
            "cgroupVersion": json.dumps(self.daemon.cgroup_version),
            "pid": json.dumps(os.getpid()),
            "version": json.dumps(__version__),
        }

    async def RuntimeConfig(self, request, context):
        driver = cri.CgroupDriver.SYSTEMD if self.config.cgroup.driver == "systemd" else cri.CgroupDriver.CGROUPFS
        return cri.RuntimeConfigResponse(linux=cri.LinuxRuntimeConfiguration(cgroup_driver=driver))

    async def UpdateRuntimeConfig(self, request, context):
        """Record the kubelet's pod CIDR (comma-joined when dual-stack) and rewrite pycri's default network config
        on it while pycri owns that config (Daemon.sync_network_config); any other config is left alone."""
        cidr = request.runtime_config.network_config.pod_cidr.strip()
        if not cidr:  # the kubelet sends an empty config before the node has a CIDR; nothing to record
            return cri.UpdateRuntimeConfigResponse()
        try:
            subnets_of(cidr)
        except ValueError as exc:
            raise InvalidArgument(f"pod_cidr {cidr!r}: {exc}") from None
        if cidr != self.daemon.setting(POD_CIDR_KEY):
            self.daemon.set_setting(POD_CIDR_KEY, cidr)
            _log.info("pod cidr updated", pod_cidr=cidr)
        try:
            outcome, path = self.daemon.sync_network_config()
        except OSError as exc:  # the kubelet tries again (it keeps the CIDR as sent only on success)
            raise Unavailable(f"pod_cidr {cidr!r} recorded, but the default network config could not be written: "
                              f"{exc}") from None
        if outcome in (NOT_OURS, OFF):
            _log.info("pod CIDR recorded; network config not managed by pycri", pod_cidr=cidr,
                      path=str(path) if path else None)
        return cri.UpdateRuntimeConfigResponse()


@functools.lru_cache(maxsize=None)
def oci_rro_supported(path: str) -> bool:
    """Whether an OCI runtime takes the "rro" mount option, from its `features` JSON (runc >= 1.1; containerd asks
    the same); a runtime without the command (crun 1.8) or without the option does not. Asked once per binary."""
    try:
        proc = subprocess.run([path, "features"], capture_output=True, timeout=10)
        return proc.returncode == 0 and "rro" in (json.loads(proc.stdout).get("mountOptions") or [])
    except (OSError, ValueError, AttributeError, subprocess.TimeoutExpired):
        return False


STREAM_CHUNK = 500  # items per Stream* response: far below the 16 MiB message limit


def _filter(request):
    return request.filter if request.HasField("filter") else None


def _chunks(items: list) -> list[list]:
    """The Stream* list RPCs answer in chunks of at least one item (none at all for an empty list)."""
    return [items[i:i + STREAM_CHUNK] for i in range(0, len(items), STREAM_CHUNK)]
