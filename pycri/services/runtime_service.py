"""runtime.v1.RuntimeService. Methods not defined here answer UNIMPLEMENTED (see pycri.rpc)."""

from __future__ import annotations

import ipaddress
import json
import os

from pycri import CRI_API_VERSION, RUNTIME_NAME, __version__, log
from pycri.api import api_pb2 as cri
from pycri.errors import InvalidArgument
from pycri.network.cniconf import load_network_config, network_status

_log = log.get("runtime")

# The version string containerd and CRI-O answer in VersionResponse.version (the kubelet's "kube runtime API").
KUBE_RUNTIME_API_VERSION = "0.1.0"
POD_CIDR_KEY = "pod_cidr"


class RuntimeService:
    def __init__(self, daemon) -> None:
        self.daemon = daemon
        self.config = daemon.config

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
                                      features=cri.RuntimeFeatures())
        if request.verbose:
            response.info.update(self._verbose_info())
        return response

    def _handlers(self) -> list:
        """The default handler (empty name, as the kubelet asks for it) first, then each configured one.

        No handler yet supports recursive read-only mounts or user namespaces, so both features are reported false.
        """
        names = [""] + sorted(self.config.runtimes)
        return [cri.RuntimeHandler(name=n, features=cri.RuntimeHandlerFeatures()) for n in names]

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
        cidr = request.runtime_config.network_config.pod_cidr.strip()
        if not cidr:  # the kubelet sends an empty config before the node has a CIDR; nothing to record
            return cri.UpdateRuntimeConfigResponse()
        for part in cidr.split(","):
            try:
                ipaddress.ip_network(part.strip(), strict=False)
            except ValueError as exc:
                raise InvalidArgument(f"pod_cidr {cidr!r}: {exc}") from None
        self.daemon.set_setting(POD_CIDR_KEY, cidr)
        _log.info("pod cidr updated", pod_cidr=cidr)
        return cri.UpdateRuntimeConfigResponse()
