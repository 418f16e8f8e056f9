"""Sandbox and container records: what the daemon knows about each, kept in memory and in the metadata store.

Every change goes to the store before the RPC that made it returns (`save`), so a restarted daemon lists the
same objects. CRI messages inside a record (the configs) are kept as serialized protobuf.
"""

from __future__ import annotations

import base64
import dataclasses
import functools
from dataclasses import dataclass, field
from typing import Any

from pycri.api import api_pb2 as cri
from pycri.state.store import Store, dumps, loads

# Sandbox states. "creating"/"removing" are never shown to a client as READY.
SB_CREATING, SB_READY, SB_NOTREADY = "creating", "ready", "notready"
# Container states.
C_CREATING, C_CREATED, C_RUNNING, C_EXITED, C_UNKNOWN = "creating", "created", "running", "exited", "unknown"

SANDBOX_STATE = {SB_READY: cri.PodSandboxState.SANDBOX_READY}
CONTAINER_STATE = {
    C_CREATED: cri.ContainerState.CONTAINER_CREATED,
    C_RUNNING: cri.ContainerState.CONTAINER_RUNNING,
    C_EXITED: cri.ContainerState.CONTAINER_EXITED,
}


def _pb(msg) -> str:
    return base64.b64encode(msg.SerializeToString()).decode()


def unpb(cls, text: str):
    return cls.FromString(base64.b64decode(text)) if text else cls()


class Shown:
    """What a record keeps of the CRI messages that show it (pycri/pods/messages.py, pycri/containers/messages.py
    fill it): `shown` is emptied whenever a field is set, and on every save (which also covers a list or dict
    changed in place), so the next call after a state change sees it. `Shown.changes` counts those changes, and
    the saves and deletes, of all records: an answer made of many records is kept on it."""

    changes = 0

    def __setattr__(self, name: str, value) -> None:
        object.__setattr__(self, name, value)
        Shown.changes += 1
        if (shown := self.__dict__.get("_shown")) is not None:
            shown.clear()

    @property
    def shown(self) -> dict:
        return self.__dict__.setdefault("_shown", {})

    def saved(self) -> None:
        Shown.changes += 1
        self.shown.clear()


@dataclass
class SandboxRecord(Shown):
    id: str
    name: str  # the kubelet's unique name: <name>_<namespace>_<uid>_<attempt>
    config_pb: str  # PodSandboxConfig, serialized
    runtime_handler: str = ""
    state: str = SB_CREATING
    created_at: int = 0
    ips: list[str] = field(default_factory=list)
    netns: str = ""  # pin path; "" with host network
    userns: str = ""  # pin path of the pod's user namespace (userns mode POD); "" without one
    network_name: str = ""  # the CNI network it was attached to (for DEL)
    pod_dir: str = ""  # state dir: hostname/hosts/resolv.conf, shm, monitor state
    shm_dir: str = ""  # "" with host IPC
    infra_pid: int = 0
    cgroup_parent: str = ""
    cgroup_path: str = ""  # the infra container's cgroup (linux.cgroupsPath)
    resources_pb: str = ""  # pod-level LinuxContainerResources from UpdatePodSandboxResources
    overhead_pb: str = ""

    @functools.cached_property
    def config(self) -> cri.PodSandboxConfig:
        return unpb(cri.PodSandboxConfig, self.config_pb)

    @property
    def monitor_dir(self) -> str:
        """The monitor keeps its socket and per-container state in the pod dir (short: AF_UNIX paths are short)."""
        return self.pod_dir

    @property
    def host_network(self) -> bool:
        return self.config.linux.security_context.namespace_options.network == cri.NamespaceMode.NODE


@dataclass
class ContainerRecord(Shown):
    id: str
    sandbox_id: str
    name: str  # <container>_<pod name>_<namespace>_<uid>_<attempt>
    config_pb: str  # ContainerConfig, serialized
    image_id: str = ""
    image_ref: str = ""  # the image's repo digest, as the kubelet expects in ContainerStatus.image_ref
    state: str = C_CREATING
    created_at: int = 0
    started_at: int = 0
    finished_at: int = 0
    exit_code: int = 0
    reason: str = ""
    message: str = ""
    log_path: str = ""
    pid: int = 0
    bundle: str = ""
    layer_dir: str = ""  # upper/work of the writable layer
    user: dict = field(default_factory=dict)  # {"uid", "gid", "additionalGids"}
    resources_pb: str = ""  # LinuxContainerResources in effect
    stop_signal: str = "SIGTERM"
    chain_ids: list[str] = field(default_factory=list)
    cgroup_path: str = ""  # linux.cgroupsPath, to clean up when the monitor is gone
    # image volumes (pycri/containers/imagevols.py), one per CRI mount with an image: {"index" (of the mount in
    # config.mounts), "image_id", "chain_ids", "mount" (the pod's host mount), "source" (what the container binds)}
    image_volumes: list[dict] = field(default_factory=list)

    @functools.cached_property
    def config(self) -> cri.ContainerConfig:
        return unpb(cri.ContainerConfig, self.config_pb)

    @property
    def resources(self) -> cri.LinuxContainerResources:
        return unpb(cri.LinuxContainerResources, self.resources_pb)


def pb(msg) -> str:
    return _pb(msg)


class Records:
    """In-memory maps of sandboxes and containers, written through to the store."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.sandboxes: dict[str, SandboxRecord] = {}
        self.containers: dict[str, ContainerRecord] = {}
        self._by_sandbox: dict[str, dict[str, ContainerRecord]] = {}  # sandbox id -> its containers, by id
        for row in store.query("SELECT data FROM sandboxes"):
            rec = _load(SandboxRecord, row["data"])
            self.sandboxes[rec.id] = rec
        for row in store.query("SELECT data FROM containers"):
            rec = _load(ContainerRecord, row["data"])
            self.containers[rec.id] = rec
            self._by_sandbox.setdefault(rec.sandbox_id, {})[rec.id] = rec

    def save_sandbox(self, rec: SandboxRecord) -> None:
        self.store.execute("INSERT INTO sandboxes(id, name, data) VALUES (?, ?, ?) "
                           "ON CONFLICT(id) DO UPDATE SET data = excluded.data",
                           (rec.id, rec.name, dumps(dataclasses.asdict(rec))))
        rec.saved()
        self.sandboxes[rec.id] = rec

    def delete_sandbox(self, sid: str) -> None:
        self.store.execute("DELETE FROM sandboxes WHERE id = ?", (sid,))
        self.sandboxes.pop(sid, None)
        Shown.changes += 1

    def save_container(self, rec: ContainerRecord) -> None:
        self.store.execute("INSERT INTO containers(id, sandbox_id, name, data) VALUES (?, ?, ?, ?) "
                           "ON CONFLICT(id) DO UPDATE SET data = excluded.data",
                           (rec.id, rec.sandbox_id, rec.name, dumps(dataclasses.asdict(rec))))
        rec.saved()
        self.containers[rec.id] = rec
        self._by_sandbox.setdefault(rec.sandbox_id, {})[rec.id] = rec

    def delete_container(self, cid: str) -> None:
        self.store.execute("DELETE FROM containers WHERE id = ?", (cid,))
        rec = self.containers.pop(cid, None)
        Shown.changes += 1
        if rec is not None and (siblings := self._by_sandbox.get(rec.sandbox_id)) is not None:
            siblings.pop(cid, None)
            if not siblings:
                del self._by_sandbox[rec.sandbox_id]

    def sandbox_by_name(self, name: str) -> SandboxRecord | None:
        return next((s for s in self.sandboxes.values() if s.name == name), None)

    def container_by_name(self, name: str) -> ContainerRecord | None:
        return next((c for c in self.containers.values() if c.name == name), None)

    def containers_of(self, sid: str) -> list[ContainerRecord]:
        return list(self._by_sandbox.get(sid, {}).values())

    def find_sandbox(self, id_or_prefix: str) -> SandboxRecord | None:
        return _find(self.sandboxes, id_or_prefix)

    def find_container(self, id_or_prefix: str) -> ContainerRecord | None:
        return _find(self.containers, id_or_prefix)


def asking(flt):
    """The filter, or None when it asks nothing (the kubelet's relist sends an empty one): a list then skips
    `matches` for every record."""
    if flt is None or flt.id or getattr(flt, "pod_sandbox_id", "") or flt.label_selector:
        return flt
    return flt if "state" in flt.DESCRIPTOR.fields_by_name and flt.HasField("state") else None


def matches(flt, rec_id: str, labels, *, sandbox_id: str | None = None, state: int | None = None) -> bool:
    """The CRI list filters (PodSandboxFilter, ContainerFilter, the stats filters): id and pod sandbox id by
    prefix (crictl passes truncated ids), state when the filter sets it, every label of the selector."""
    if flt is None:
        return True
    if flt.id and not rec_id.startswith(flt.id):
        return False
    if sandbox_id is not None and getattr(flt, "pod_sandbox_id", "") and not sandbox_id.startswith(flt.pod_sandbox_id):
        return False
    if state is not None and "state" in flt.DESCRIPTOR.fields_by_name and flt.HasField("state") \
            and flt.state.state != state:
        return False
    return all(labels.get(k) == v for k, v in flt.label_selector.items())


def _find(table: dict[str, Any], key: str):
    """By full id, or by a unique id prefix (crictl accepts truncated ids, as containerd does)."""
    if not key:
        return None
    if key in table:
        return table[key]
    matches = [v for k, v in table.items() if k.startswith(key)]
    return matches[0] if len(matches) == 1 else None


def _load(cls, text: str):
    data = loads(text)
    names = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: v for k, v in data.items() if k in names})
