"""CDI (Container Device Interface, cncf-tags/container-device-interface SPEC.md): resolve the devices a
container asks for by fully-qualified name (`vendor.com/class=name`) from the spec files in `[cdi] spec_dirs`,
and apply their containerEdits to the container's OCI spec.

A container asks through ContainerConfig.cdi_devices and through annotations `cdi.k8s.io/<key>` whose value is a
comma-separated list of names (the older kubelet/device-plugin way). Spec files are JSON or YAML (`*.json`,
`*.yaml`, `*.yml`); they are read on each create that asks for a device, so a driver can add files at any time.
A later directory overrides an earlier one for the same device; two files of one directory defining the same
device make that device unusable (an error when asked for), as the reference implementation does. Files that do
not parse or validate are skipped with a log line. The spec-level edits of a file are applied once if any of its
devices is asked for, then each device's own edits.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field

from pycri import log
from pycri.errors import InvalidArgument
from pycri.oci.spec import host_device

_log = log.get("cdi")

ANNOTATION_PREFIX = "cdi.k8s.io/"
SPEC_SUFFIXES = (".json", ".yaml", ".yml")
HOOK_NAMES = ("prestart", "createRuntime", "createContainer", "startContainer", "poststart", "poststop")
_NAME_RE = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9_.-]*[A-Za-z0-9])?$")
_VENDOR_RE = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?$")
_CLASS_RE = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9_.-]*[A-Za-z0-9])?$")
_DEV_TYPES = {"c": "c", "char": "c", "u": "u", "b": "b", "block": "b", "p": "p", "fifo": "p"}


class CDIError(ValueError):
    """A spec file or a device request is not valid."""


@dataclass
class Device:
    name: str               # fully qualified: vendor/class=name
    edits: dict
    spec_path: str
    spec_edits: dict = field(default_factory=dict)


def parse_qualified(name: str) -> tuple[str, str, str]:
    """`vendor.com/class=dev` -> (vendor, class, dev); CDIError when it is not a fully-qualified name."""
    kind, sep, dev = name.partition("=")
    vendor, slash, cls = kind.partition("/")
    if not sep or not slash:
        raise CDIError(f"{name!r} is not a fully-qualified CDI device name (vendor.com/class=name)")
    if not _VENDOR_RE.match(vendor) or not _CLASS_RE.match(cls) or not _NAME_RE.match(dev):
        raise CDIError(f"{name!r} is not a valid CDI device name")
    return vendor, cls, dev


def requested(config) -> list[str]:
    """The device names a ContainerConfig asks for: cdi_devices, then `cdi.k8s.io/*` annotations (sorted by key)."""
    names = [d.name for d in config.CDI_devices]
    for key in sorted(config.annotations):
        if key.startswith(ANNOTATION_PREFIX):
            names += [n.strip() for n in config.annotations[key].split(",") if n.strip()]
    out: list[str] = []
    for n in names:
        if n not in out:
            out.append(n)
    return out


def load_spec_file(path: str) -> dict:
    with open(path, "rb") as f:
        raw = f.read()
    if path.endswith(".json"):
        data = json.loads(raw)
    else:
        import yaml  # PyYAML: only needed for YAML spec files

        data = yaml.safe_load(raw)
    validate_spec(data)
    return data


def validate_spec(data) -> None:
    if not isinstance(data, dict):
        raise CDIError("a CDI spec must be an object")
    if not isinstance(data.get("cdiVersion"), str) or not data["cdiVersion"]:
        raise CDIError("cdiVersion is required")
    kind = data.get("kind")
    if not isinstance(kind, str) or kind.count("/") != 1:
        raise CDIError(f"kind {kind!r} must be vendor.com/class")
    vendor, cls = kind.split("/")
    if not _VENDOR_RE.match(vendor) or not _CLASS_RE.match(cls):
        raise CDIError(f"kind {kind!r} is not valid")
    devices = data.get("devices")
    if not isinstance(devices, list) or not devices:
        raise CDIError("devices must be a non-empty list")
    _validate_edits(data.get("containerEdits"), "containerEdits")
    for i, d in enumerate(devices):
        if not isinstance(d, dict) or not isinstance(d.get("name"), str) or not _NAME_RE.match(d["name"]):
            raise CDIError(f"devices[{i}].name is missing or not valid")
        _validate_edits(d.get("containerEdits"), f"devices[{i}].containerEdits")


def _validate_edits(edits, where: str) -> None:
    if edits is None:
        return
    if not isinstance(edits, dict):
        raise CDIError(f"{where} must be an object")
    _strings(edits.get("env"), f"{where}.env")
    for i, n in enumerate(edits.get("deviceNodes") or []):
        w = f"{where}.deviceNodes[{i}]"
        if not isinstance(n, dict) or not isinstance(n.get("path"), str) or not n["path"].startswith("/"):
            raise CDIError(f"{w}.path must be an absolute path")
        if n.get("type") and n["type"] not in _DEV_TYPES:
            raise CDIError(f"{w}.type {n['type']!r} is not one of c, b, u, p")
        if n.get("permissions") and set(n["permissions"]) - set("rwm"):
            raise CDIError(f"{w}.permissions {n['permissions']!r} is not a subset of 'rwm'")
    for i, m in enumerate(edits.get("mounts") or []):
        w = f"{where}.mounts[{i}]"
        if not isinstance(m, dict) or not isinstance(m.get("hostPath"), str) or not m["hostPath"]:
            raise CDIError(f"{w}.hostPath is required")
        if not isinstance(m.get("containerPath"), str) or not m["containerPath"].startswith("/"):
            raise CDIError(f"{w}.containerPath must be an absolute path")
        _strings(m.get("options"), f"{w}.options")
    for i, h in enumerate(edits.get("hooks") or []):
        w = f"{where}.hooks[{i}]"
        if not isinstance(h, dict) or h.get("hookName") not in HOOK_NAMES:
            raise CDIError(f"{w}.hookName must be one of {', '.join(HOOK_NAMES)}")
        if not isinstance(h.get("path"), str) or not h["path"].startswith("/"):
            raise CDIError(f"{w}.path must be an absolute path")
        _strings(h.get("args"), f"{w}.args")
        _strings(h.get("env"), f"{w}.env")
        t = h.get("timeout")
        if t is not None and (isinstance(t, bool) or not isinstance(t, int) or t <= 0):
            raise CDIError(f"{w}.timeout must be a positive integer")
    gids = edits.get("additionalGids", edits.get("additionalGIDs"))
    if gids is not None and (not isinstance(gids, list)
                             or not all(isinstance(g, int) and not isinstance(g, bool) and g >= 0 for g in gids)):
        raise CDIError(f"{where}.additionalGids must be a list of group ids")


def _strings(value, where: str) -> None:
    if value is not None and (not isinstance(value, list) or not all(isinstance(v, str) for v in value)):
        raise CDIError(f"{where} must be a list of strings")


def scan(spec_dirs: list[str]) -> tuple[dict[str, Device], set[str]]:
    """Every device of the spec dirs: (name -> Device, names defined twice within one directory)."""
    devices: dict[str, Device] = {}
    conflicts: set[str] = set()
    for d in spec_dirs:
        try:
            names = sorted(os.listdir(d))
        except FileNotFoundError:
            continue
        except OSError as exc:
            _log.warning("cannot read CDI spec dir", dir=d, error=exc.strerror)
            continue
        here: dict[str, Device] = {}
        dup: set[str] = set()
        for fname in names:
            if not fname.endswith(SPEC_SUFFIXES):
                continue
            path = os.path.join(d, fname)
            try:
                data = load_spec_file(path)
            except Exception as exc:  # noqa: BLE001 - a broken vendor file must not break other devices
                _log.warning("skipping CDI spec file", path=path, error=f"{type(exc).__name__}: {exc}")
                continue
            for dev in data["devices"]:
                name = f"{data['kind']}={dev['name']}"
                if name in here:
                    dup.add(name)
                    continue
                here[name] = Device(name, dev.get("containerEdits") or {}, path, data.get("containerEdits") or {})
        for name, dev in here.items():  # a later directory wins over an earlier one
            devices[name] = dev
            if name in dup:
                conflicts.add(name)
            else:
                conflicts.discard(name)
    return devices, conflicts


def resolve(names: list[str], spec_dirs: list[str]) -> list[Device]:
    """The Devices for these names; InvalidArgument naming the first that is malformed or unknown."""
    for n in names:
        try:
            parse_qualified(n)
        except CDIError as exc:
            raise InvalidArgument(f"CDI device: {exc}") from None
    devices, conflicts = scan(spec_dirs)
    out = []
    for n in names:
        if n in conflicts:
            raise InvalidArgument(f"CDI device {n!r} is defined more than once in one spec directory")
        dev = devices.get(n)
        if dev is None:
            raise InvalidArgument(f"unresolvable CDI device {n!r}: not in any spec file of {', '.join(spec_dirs)}")
        out.append(dev)
    return out


def inject(spec: dict, config, spec_dirs: list[str], container_id: str = "") -> list[str]:
    """Apply the CDI devices the container config asks for to the OCI spec; returns their names."""
    names = requested(config)
    if not names:
        return []
    devices = resolve(names, spec_dirs)
    try:
        done_specs: set[str] = set()
        for dev in devices:
            if dev.spec_path not in done_specs:
                done_specs.add(dev.spec_path)
                apply_edits(spec, dev.spec_edits)
            apply_edits(spec, dev.edits)
        _sort_mounts(spec)
    except CDIError as exc:
        raise InvalidArgument(f"CDI devices {', '.join(names)}: {exc}") from None
    _log.info("injected CDI devices", container_id=container_id, devices=names,
              spec_files=sorted({d.spec_path for d in devices}))
    return names


def apply_edits(spec: dict, edits: dict) -> None:
    """containerEdits -> the OCI spec: env, device nodes (+ device cgroup rules), mounts, hooks, additional gids."""
    if not edits:
        return
    proc = spec.setdefault("process", {})
    if edits.get("env"):
        env = list(proc.get("env") or [])
        for entry in edits["env"]:
            key = entry.split("=", 1)[0]
            env = [e for e in env if e.split("=", 1)[0] != key] + [entry]
        proc["env"] = env
    lin = spec.setdefault("linux", {})
    for node in edits.get("deviceNodes") or []:
        dev = device_node(node)
        lin["devices"] = [d for d in lin.get("devices") or [] if d.get("path") != dev["path"]] + [dev]
        if dev["type"] != "p":
            rules = lin.setdefault("resources", {}).setdefault("devices", [])
            rules.append({"allow": True, "type": dev["type"], "major": dev["major"], "minor": dev["minor"],
                          "access": node.get("permissions") or "rwm"})
    for m in edits.get("mounts") or []:
        mount = oci_mount(m)
        spec["mounts"] = [x for x in spec.get("mounts") or [] if x.get("destination") != mount["destination"]] \
            + [mount]
    for h in edits.get("hooks") or []:
        hook = {"path": h["path"]}
        for key in ("args", "env", "timeout"):
            if h.get(key):
                hook[key] = h[key]
        spec.setdefault("hooks", {}).setdefault(h["hookName"], []).append(hook)
    gids = edits.get("additionalGids", edits.get("additionalGIDs")) or []
    if gids:
        user = proc.setdefault("user", {"uid": 0, "gid": 0})
        have = list(user.get("additionalGids") or [])
        user["additionalGids"] = have + [g for g in gids if g and g not in have]
    if edits.get("intelRdt"):
        lin["intelRdt"] = edits["intelRdt"]


def device_node(node: dict) -> dict:
    """A CDI deviceNode -> an OCI linux.devices entry; type, major, minor and mode come from the host node
    when the spec leaves them out."""
    path = node["path"]
    host_path = node.get("hostPath") or path
    kind = _DEV_TYPES.get(node.get("type") or "", "")
    major, minor = node.get("major"), node.get("minor")
    mode = node.get("fileMode")
    if not kind or (kind != "p" and (major is None or minor is None)) or mode is None:
        try:
            host_kind, host_major, host_minor, host_mode = host_device(host_path)
        except OSError as exc:
            raise CDIError(f"device node {host_path}: {exc.strerror}") from None
        if not host_kind:
            raise CDIError(f"{host_path} is not a device node")
        if kind and _DEV_TYPES[kind] != host_kind and not (kind == "u" and host_kind == "c"):
            raise CDIError(f"device node {host_path} is of type {host_kind!r}, the spec says {kind!r}")
        kind = kind or host_kind
        if major is None or minor is None:
            major, minor = host_major, host_minor
        if mode is None:
            mode = host_mode
    out = {"path": path, "type": kind, "major": int(major or 0), "minor": int(minor or 0), "fileMode": int(mode)}
    for key in ("uid", "gid"):
        if node.get(key) is not None:
            out[key] = int(node[key])
    return out


def oci_mount(m: dict) -> dict:
    """A CDI mount -> an OCI mount; with no type (or a bind type) and no bind option it is a recursive bind."""
    options = list(m.get("options") or [])
    mtype = m.get("type") or ""
    if mtype in ("", "none", "bind") and not {"bind", "rbind"} & set(options):
        options.insert(0, "rbind")
    if mtype in ("", "none") and {"bind", "rbind"} & set(options):
        mtype = "bind"
    return {"destination": m["containerPath"], "type": mtype, "source": m["hostPath"], "options": options}


def _sort_mounts(spec: dict) -> None:
    """Parents before children (stable by path depth), so an injected mount never hides a deeper one."""
    mounts = spec.get("mounts") or []
    spec["mounts"] = sorted(mounts, key=lambda m: len([p for p in m.get("destination", "").split("/") if p]))
