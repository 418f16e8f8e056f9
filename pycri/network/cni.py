"""Running CNI plugins (spec 1.x, with 0.3/0.4 configs accepted) for a pod's network namespace.

ADD runs the network's plugins in order, each getting the previous plugin's result as prevResult; DEL runs them in
reverse with the cached ADD result; CHECK in order with it. Results are cached in `<cache_dir>/<network>-<pod id>`
(atomically written) so DEL and CHECK work after a daemon restart, as libcni's cache does.
Plugins run as child processes (exec, not a Python fork), off the event loop.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pycri.observe import metrics
from pycri.network.cniconf import NetworkConfig, find_plugin

PLUGIN_TIMEOUT_SECONDS = 60
IFNAME = "eth0"


class CNIError(Exception):
    """A plugin failed; the message carries the plugin's own error code and text."""


@dataclass
class PodNetworkArgs:
    """What the runtime knows about the pod that CNI plugins may use."""

    pod_id: str
    netns: str
    name: str
    namespace: str
    uid: str
    port_mappings: list[dict] = field(default_factory=list)  # [{"hostPort", "containerPort", "protocol", "hostIP"}]
    bandwidth: dict | None = None  # {"ingressRate", "ingressBurst", "egressRate", "egressBurst"}
    dns: dict | None = None  # {"servers", "searches", "options"}

    def cni_args(self) -> str:
        pairs = [("IgnoreUnknown", "1"), ("K8S_POD_NAMESPACE", self.namespace), ("K8S_POD_NAME", self.name),
                 ("K8S_POD_INFRA_CONTAINER_ID", self.pod_id), ("K8S_POD_UID", self.uid)]
        return ";".join(f"{k}={v}" for k, v in pairs)

    def capability_args(self) -> dict[str, Any]:
        caps: dict[str, Any] = {}
        if self.port_mappings:
            caps["portMappings"] = self.port_mappings
        if self.bandwidth:
            caps["bandwidth"] = self.bandwidth
        if self.dns:
            caps["dns"] = self.dns
        return caps


class CNI:
    def __init__(self, bin_dirs: list[str], cache_dir: Path) -> None:
        self.bin_dirs = bin_dirs
        self.cache_dir = Path(cache_dir)

    async def add(self, net: NetworkConfig, pod: PodNetworkArgs) -> dict:
        """ADD; if any plugin fails, DEL the whole network so a half-made attachment leaks no veth or IP."""
        result: dict | None = None
        try:
            for plugin in net.plugins:
                result = await self._run("ADD", net, plugin, pod, prev_result=result)
        except BaseException:
            await asyncio.shield(self._undo_add(net, pod, result))
            raise
        result = result or {}
        self._write_cache(net, pod, result)
        return result

    async def _undo_add(self, net: NetworkConfig, pod: PodNetworkArgs, partial: dict | None) -> None:
        for plugin in reversed(net.plugins):
            try:
                await self._run("DEL", net, plugin, pod, prev_result=partial)
            except CNIError:
                pass  # best effort: the ADD error is the one to report

    async def delete(self, net: NetworkConfig, pod: PodNetworkArgs) -> None:
        """DEL in reverse order; tolerant of a gone netns (the plugins release IPs and host state regardless)."""
        cached = self._read_cache(net, pod)
        for plugin in reversed(net.plugins):
            await self._run("DEL", net, plugin, pod, prev_result=cached)
        self.cache_path(net, pod).unlink(missing_ok=True)

    async def check(self, net: NetworkConfig, pod: PodNetworkArgs) -> None:
        cached = self._read_cache(net, pod)
        if cached is None:
            raise CNIError(f"no cached ADD result for pod {pod.pod_id} on network {net.name}")
        for plugin in net.plugins:
            await self._run("CHECK", net, plugin, pod, prev_result=cached)

    def cache_path(self, net: NetworkConfig, pod: PodNetworkArgs) -> Path:
        return self.cache_dir / f"{net.name}-{pod.pod_id}"

    def _write_cache(self, net: NetworkConfig, pod: PodNetworkArgs, result: dict) -> None:
        self.cache_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        path = self.cache_path(net, pod)
        tmp = path.with_suffix(".tmp")
        with open(tmp, "w") as f:
            json.dump({"result": result, "netns": pod.netns}, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)

    def _read_cache(self, net: NetworkConfig, pod: PodNetworkArgs) -> dict | None:
        try:
            return json.loads(self.cache_path(net, pod).read_text())["result"]
        except (OSError, ValueError, KeyError):
            return None

    def _stdin(self, command: str, net: NetworkConfig, plugin: dict, pod: PodNetworkArgs,
               prev_result: dict | None) -> bytes:
        conf = dict(plugin)
        conf["name"] = net.name
        conf["cniVersion"] = net.cni_version
        wanted = plugin.get("capabilities") or {}
        runtime_config = {k: v for k, v in pod.capability_args().items() if wanted.get(k)}
        if runtime_config:
            conf["runtimeConfig"] = runtime_config
        if prev_result is not None and (command != "ADD" or prev_result):
            conf["prevResult"] = prev_result
        return json.dumps(conf).encode()

    async def _run(self, command: str, net: NetworkConfig, plugin: dict, pod: PodNetworkArgs,
                   prev_result: dict | None) -> dict:
        """One plugin invocation, timed for the metrics by plugin type, command and result."""
        started = time.perf_counter()
        result = "error"
        try:
            answer = await self._run_plugin(command, net, plugin, pod, prev_result)
            result = "ok"
            return answer
        finally:
            metrics.cni_call(str(plugin.get("type", "")), command, result, time.perf_counter() - started)

    async def _run_plugin(self, command: str, net: NetworkConfig, plugin: dict, pod: PodNetworkArgs,
                          prev_result: dict | None) -> dict:
        binary = find_plugin(plugin["type"], self.bin_dirs)
        if binary is None:
            raise CNIError(f"CNI plugin {plugin['type']!r} not found in {':'.join(self.bin_dirs)}")
        env = {
            "CNI_COMMAND": command,
            "CNI_CONTAINERID": pod.pod_id,
            "CNI_NETNS": pod.netns,
            "CNI_IFNAME": IFNAME,
            "CNI_ARGS": pod.cni_args(),
            "CNI_PATH": ":".join(self.bin_dirs),
            "PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"),
        }
        try:
            proc = await asyncio.create_subprocess_exec(
                str(binary), stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE, env=env)
        except (OSError, ValueError) as exc:  # not runnable here (wrong architecture, truncated, a missing
            # interpreter), or an argument it cannot be given (ValueError: a NUL in CNI_ARGS)
            raise CNIError(f"cannot run CNI plugin {plugin['type']!r} ({binary}): "
                           f"{getattr(exc, 'strerror', None) or exc}") from None
        try:
            out, err = await asyncio.wait_for(
                proc.communicate(self._stdin(command, net, plugin, pod, prev_result)), PLUGIN_TIMEOUT_SECONDS)
        except BaseException as exc:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
            if isinstance(exc, asyncio.TimeoutError):
                raise CNIError(f"CNI {command} of plugin {plugin['type']} timed out after "
                               f"{PLUGIN_TIMEOUT_SECONDS}s") from None
            raise
        if proc.returncode != 0:
            raise CNIError(f"CNI {command} of plugin {plugin['type']} failed: {_plugin_error(out, err)}")
        if command != "ADD" or not out.strip():
            return prev_result or {}
        try:
            return json.loads(out)
        except ValueError:
            raise CNIError(f"CNI {command} of plugin {plugin['type']}: unparsable result {out[:200]!r}") from None


def _plugin_error(out: bytes, err: bytes) -> str:
    try:
        e = json.loads(out)
        text = f"code {e.get('code')}: {e.get('msg')}"
        if e.get("details"):
            text += f" ({e['details']})"
        return text
    except ValueError:
        return (err or out).decode(errors="replace").strip()[:500] or "no output"


def pod_ips(result: dict) -> list[str]:
    """The pod's addresses from a CNI result (interfaces inside the netns first), without prefix length."""
    ips = []
    for entry in result.get("ips") or []:
        addr = str(entry.get("address", "")).split("/")[0]
        if addr:
            ips.append(addr)
    return ips
