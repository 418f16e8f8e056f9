"""A sandbox record as the CRI messages that show it: PodSandboxStatus (PodSandboxStatus, and what every event
carries) and PodSandbox (ListPodSandbox). Built from the record alone; the serialized forms the read path answers
with are kept on the record (`status_bytes`, `item_bytes`) until it changes."""

from __future__ import annotations

from pycri.api import api_pb2 as cri
from pycri.state.records import SANDBOX_STATE, SandboxRecord


def state_of(rec: SandboxRecord) -> int:
    return SANDBOX_STATE.get(rec.state, cri.SANDBOX_NOTREADY)


def sandbox_status(rec: SandboxRecord) -> cri.PodSandboxStatus:
    config = rec.config
    network = cri.PodSandboxNetworkStatus()
    if rec.ips:
        network.ip = rec.ips[0]
        network.additional_ips.extend(cri.PodIP(ip=ip) for ip in rec.ips[1:])
    opts = config.linux.security_context.namespace_options
    return cri.PodSandboxStatus(
        id=rec.id, metadata=config.metadata, state=state_of(rec), created_at=rec.created_at, network=network,
        linux=cri.LinuxPodSandboxStatus(namespaces=cri.Namespace(options=cri.NamespaceOption(
            network=opts.network, pid=opts.pid, ipc=opts.ipc, target_id=opts.target_id,
            userns_options=opts.userns_options if opts.HasField("userns_options") else None))),
        labels=config.labels, annotations=config.annotations, runtime_handler=rec.runtime_handler)


def sandbox_item(rec: SandboxRecord) -> cri.PodSandbox:
    config = rec.config
    return cri.PodSandbox(id=rec.id, metadata=config.metadata, state=state_of(rec), created_at=rec.created_at,
                          labels=config.labels, annotations=config.annotations, runtime_handler=rec.runtime_handler)


def status_bytes(rec: SandboxRecord) -> bytes:
    """The serialized PodSandboxStatus of rec."""
    if (kept := rec.shown.get("status")) is None:
        kept = rec.shown["status"] = sandbox_status(rec).SerializeToString()
    return kept


def item_bytes(rec: SandboxRecord) -> bytes:
    """The serialized PodSandbox of rec, as ListPodSandbox answers it."""
    if (kept := rec.shown.get("item")) is None:
        kept = rec.shown["item"] = sandbox_item(rec).SerializeToString()
    return kept
