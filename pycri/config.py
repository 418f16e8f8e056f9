"""Daemon configuration: a TOML file (stdlib tomllib) over built-in defaults.

Every key is declared in the dataclasses below; an unknown key or a value of the wrong type or range is rejected
at start with a message naming the key, so a typo never silently falls back to a default.
`pycri config default` prints the full default file (`to_toml(Config())`).
"""

from __future__ import annotations

import dataclasses
import ipaddress
import math
import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

DEFAULT_CONFIG_PATH = Path("/etc/pycri/config.toml")
CONFIG_ENV = "PYCRI_CONFIG"
LOG_LEVELS = ("debug", "info", "warning", "error")
CGROUP_DRIVERS = ("cgroupfs", "systemd")
RUNTIME_TYPES = ("builtin", "oci")
DEFAULT_RUNTIME = "pycri"


class ConfigError(ValueError):
    """The configuration file is unreadable or holds an unknown key or a bad value."""


@dataclass
class CNIConfig:
    conf_dir: str = "/etc/cni/net.d"
    bin_dirs: list[str] = field(default_factory=lambda: ["/opt/cni/bin", "/usr/lib/cni"])
    # With no network config in conf_dir, write a bridge network (DEFAULT_CONFLIST_NAME) on this subnet.
    write_default_conflist: bool = True
    default_subnet: str = "10.88.0.0/16"

    def validate(self, where: str) -> None:
        _require_abs(self.conf_dir, f"{where}.conf_dir")
        if not self.bin_dirs:
            raise ConfigError(f"{where}.bin_dirs: at least one directory is needed")
        for i, d in enumerate(self.bin_dirs):
            _require_abs(d, f"{where}.bin_dirs[{i}]")
        try:
            ipaddress.ip_network(self.default_subnet)
        except ValueError as exc:
            raise ConfigError(f"{where}.default_subnet: {exc}") from None


@dataclass
class CgroupConfig:
    driver: str = "cgroupfs"
    # pids.max of every container (the infra one too), 0: none. Off by default as in containerd (CRI-O's
    # per-container pids_limit gave way to the kubelet's podPidsLimit, which limits the pod's cgroup).
    pids_limit: int = 0

    def validate(self, where: str) -> None:
        _require_choice(self.driver, CGROUP_DRIVERS, f"{where}.driver")
        if self.pids_limit < 0:
            raise ConfigError(f"{where}.pids_limit: must be 0 (no limit) or a number of processes")


@dataclass
class RegistryConfig:
    """Settings for one registry host, as `[registries."<host>"]`."""

    mirrors: list[str] = field(default_factory=list)
    insecure: bool = False
    # After the mirrors, try the host itself (containerd does). Set false for mirror-only hosts.
    fallback_to_host: bool = True

    def validate(self, where: str) -> None:
        for i, m in enumerate(self.mirrors):
            if not (m.startswith("http://") or m.startswith("https://")) or len(m.split("://", 1)[1]) == 0:
                raise ConfigError(f"{where}.mirrors[{i}]: {m!r} is not an http:// or https:// URL")


@dataclass
class RuntimeHandlerConfig:
    """A runtime handler, as `[runtimes.<name>]`: the built-in launcher or an OCI runtime binary (runc, crun)."""

    type: str = "builtin"
    path: str = ""
    # Who makes the containers' cgroups for an 'oci' runtime: "runtime" (it does, from cgroupsPath), or "pycri"
    # (the monitor does and runs the runtime inside them with --cgroup-manager=disabled: crun, which refuses
    # cgroup v1 hybrid hosts whose cgroup2 mount holds controllers).
    cgroup_manager: str = "runtime"

    def validate(self, where: str) -> None:
        _require_choice(self.type, RUNTIME_TYPES, f"{where}.type")
        _require_choice(self.cgroup_manager, ("runtime", "pycri"), f"{where}.cgroup_manager")
        if self.type == "oci":
            _require_abs(self.path, f"{where}.path")
        elif self.path:
            raise ConfigError(f"{where}.path: only an 'oci' runtime takes a path")
        elif self.cgroup_manager != "runtime":
            raise ConfigError(f"{where}.cgroup_manager: only an 'oci' runtime takes a cgroup_manager")

    def monitor_request(self) -> dict | None:
        """What the pod's monitor is told at create: None for the built-in launcher."""
        if self.type != "oci":
            return None
        return {"type": "oci", "path": self.path, "cgroup_manager": self.cgroup_manager}


@dataclass
class StreamingConfig:
    address: str = "127.0.0.1"
    port: int = 0  # 0: a free port chosen at start

    def validate(self, where: str) -> None:
        try:
            ipaddress.ip_address(self.address)
        except ValueError:
            raise ConfigError(f"{where}.address: {self.address!r} is not an IP address") from None
        if not 0 <= self.port <= 65535:
            raise ConfigError(f"{where}.port: {self.port} is out of range 0-65535")


@dataclass
class MetricsConfig:
    """Prometheus metrics over HTTP (`GET /metrics`), as containerd's `[metrics] address`."""

    address: str = ""  # "host:port" (e.g. "127.0.0.1:9090", "[::1]:9090"); empty: no metrics server

    def validate(self, where: str) -> None:
        if self.address:
            try:
                parse_host_port(self.address)
            except ValueError as exc:
                raise ConfigError(f"{where}.address: {exc}") from None


def parse_host_port(text: str) -> tuple[str, int]:
    """("127.0.0.1", 9090) from "127.0.0.1:9090" or "[::1]:9090"; the host must be an IP address."""
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(f"{text!r} is not host:port")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    try:
        ipaddress.ip_address(host)
    except ValueError:
        raise ValueError(f"{text!r}: {host!r} is not an IP address") from None
    if not 0 <= int(port) <= 65535:
        raise ValueError(f"{text!r}: port out of range 0-65535")
    return host, int(port)


@dataclass
class CDIConfig:
    """Where CDI spec files (JSON or YAML) are read; a later directory overrides an earlier one per device."""

    spec_dirs: list[str] = field(default_factory=lambda: ["/etc/cdi", "/var/run/cdi"])

    def validate(self, where: str) -> None:
        for i, d in enumerate(self.spec_dirs):
            _require_abs(d, f"{where}.spec_dirs[{i}]")


@dataclass
class ImagesConfig:
    """Bounds on what an image unpacks to (pycri/images/unpack.py, UnpackBudget), as `[images]`."""

    # Per image, over all its layers: uncompressed tar bytes plus bytes copied from lower layers for hardlinks
    # (the holes of sparse files do not count), and tar entries. Past either, the pull fails (RESOURCE_EXHAUSTED).
    max_unpacked_bytes: int = 64 << 30
    max_entries: int = 4 << 20
    # Free space kept on the file system of <root>/snapshots: checked before each layer and while unpacking.
    min_free_bytes: int = 256 << 20
    min_free_inodes: int = 4096

    def validate(self, where: str) -> None:
        for key in ("max_unpacked_bytes", "max_entries"):
            if getattr(self, key) <= 0:
                raise ConfigError(f"{where}.{key}: must be a positive integer")
        for key in ("min_free_bytes", "min_free_inodes"):
            if getattr(self, key) < 0:
                raise ConfigError(f"{where}.{key}: must not be negative")


@dataclass
class Config:
    root: str = "/var/lib/pycri"
    state: str = "/run/pycri"
    listen: str = "/run/pycri/pycri.sock"
    sandbox_image: str = "registry.k8s.io/pause:3.10"
    log_level: str = "info"
    # A pull that receives no bytes for this many seconds fails.
    image_pull_progress_timeout: float = 300.0
    # true: fsync the metadata database on every commit (survives power loss, not only daemon crashes).
    store_sync_full: bool = False
    # ExecSyncs of one pod in flight at once; the pod's others wait their turn (within their timeout).
    exec_sync_per_pod: int = 64
    default_runtime: str = DEFAULT_RUNTIME
    cni: CNIConfig = field(default_factory=CNIConfig)
    cgroup: CgroupConfig = field(default_factory=CgroupConfig)
    streaming: StreamingConfig = field(default_factory=StreamingConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    cdi: CDIConfig = field(default_factory=CDIConfig)
    images: ImagesConfig = field(default_factory=ImagesConfig)
    registries: dict[str, RegistryConfig] = field(default_factory=dict)
    runtimes: dict[str, RuntimeHandlerConfig] = field(
        default_factory=lambda: {DEFAULT_RUNTIME: RuntimeHandlerConfig()}
    )

    def validate(self) -> None:
        for key in ("root", "state", "listen"):
            _require_abs(getattr(self, key), key)
        if not self.sandbox_image.strip():
            raise ConfigError("sandbox_image: must not be empty")
        _require_choice(self.log_level, LOG_LEVELS, "log_level")
        if not 0 < self.image_pull_progress_timeout < math.inf:  # also refuses nan (found by tests/fuzz)
            raise ConfigError("image_pull_progress_timeout: must be a positive number of seconds")
        if not 1 <= self.exec_sync_per_pod <= 4096:
            raise ConfigError("exec_sync_per_pod: must be 1-4096")
        self.cni.validate("cni")
        self.cgroup.validate("cgroup")
        self.streaming.validate("streaming")
        self.cdi.validate("cdi")
        self.metrics.validate("metrics")
        self.images.validate("images")
        for host, reg in self.registries.items():
            if not host or "/" in host:
                raise ConfigError(f"registries.{_toml_key(host)}: a registry key is a host[:port], e.g. \"docker.io\"")
            reg.validate(f"registries.{_toml_key(host)}")
        for name, rt in self.runtimes.items():
            if not name.replace("-", "").replace("_", "").isalnum():
                raise ConfigError(f"runtimes.{name!r}: a handler name is letters, digits, '-' and '_'")
            rt.validate(f"runtimes.{name}")
        if self.default_runtime not in self.runtimes:
            raise ConfigError(f"default_runtime: {self.default_runtime!r} is not one of [runtimes] "
                              f"({', '.join(sorted(self.runtimes)) or 'none'})")

    def runtime_for(self, handler: str) -> RuntimeHandlerConfig | None:
        """The [runtimes] entry a RunPodSandbox runtime_handler names ("" is default_runtime); None if unknown."""
        return self.runtimes.get(handler or self.default_runtime)

    # Derived paths, so every module agrees where things live.
    @property
    def root_path(self) -> Path:
        return Path(self.root)

    @property
    def state_path(self) -> Path:
        return Path(self.state)

    @property
    def db_path(self) -> Path:
        return Path(self.root) / "metadata.db"

    @property
    def status_socket(self) -> Path:
        """The daemon's read-only status socket (pulls in flight), next to the CRI socket: pycri.sock ->
        pycri-status.sock."""
        listen = Path(self.listen)
        return listen.with_name(listen.stem + "-status.sock")


def load(path: str | os.PathLike | None = None) -> Config:
    """Load the config from `path`, else $PYCRI_CONFIG, else /etc/pycri/config.toml if present, else defaults."""
    if path is None:
        path = os.environ.get(CONFIG_ENV) or (DEFAULT_CONFIG_PATH if DEFAULT_CONFIG_PATH.exists() else None)
    if path is None:
        cfg = Config()
    else:
        try:
            with open(path, "rb") as f:
                data = tomllib.load(f)
        except OSError as exc:
            raise ConfigError(f"{path}: {exc.strerror}") from None
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise ConfigError(f"{path}: not valid TOML: {exc}") from None
        cfg = from_dict(data)
    cfg.validate()
    return cfg


def from_dict(data: dict[str, Any]) -> Config:
    """Build a Config from parsed TOML, rejecting unknown keys and wrong types (not yet range-checked)."""
    cfg = _build(Config, data, "")
    # A config that declares extra handlers keeps the built-in one unless it redefines it.
    cfg.runtimes.setdefault(DEFAULT_RUNTIME, RuntimeHandlerConfig())
    cfg.validate()
    return cfg


def _build(cls: type, data: Any, where: str) -> Any:
    if not isinstance(data, dict):
        raise ConfigError(f"{where or 'config'}: expected a table, got {_tname(data)}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(f"{_join(where, unknown[0])}: unknown key (known: {', '.join(sorted(fields))})")
    kwargs = {}
    hints = {f.name: f.type for f in dataclasses.fields(cls)}
    for name, value in data.items():
        kwargs[name] = _convert(hints[name], value, _join(where, name))
    return cls(**kwargs)


_TABLE_TYPES = {
    "CNIConfig": CNIConfig,
    "CgroupConfig": CgroupConfig,
    "StreamingConfig": StreamingConfig,
    "CDIConfig": CDIConfig,
    "MetricsConfig": MetricsConfig,
    "ImagesConfig": ImagesConfig,
}
_MAP_TYPES = {
    "dict[str, RegistryConfig]": RegistryConfig,
    "dict[str, RuntimeHandlerConfig]": RuntimeHandlerConfig,
}


def _convert(hint: str, value: Any, where: str) -> Any:
    if hint in _TABLE_TYPES:
        return _build(_TABLE_TYPES[hint], value, where)
    if hint in _MAP_TYPES:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a table, got {_tname(value)}")
        return {k: _build(_MAP_TYPES[hint], v, f"{where}.{k}") for k, v in value.items()}
    if hint == "str":
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {_tname(value)}")
        return value
    if hint == "bool":
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true or false, got {_tname(value)}")
        return value
    if hint == "int":
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, got {_tname(value)}")
        return value
    if hint == "float":
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: expected a number, got {_tname(value)}")
        return float(value)
    if hint == "list[str]":
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ConfigError(f"{where}: expected a list of strings")
        return list(value)
    raise AssertionError(f"config field type {hint} has no converter")


def to_toml(cfg: Config) -> str:
    """Render a Config as TOML that `load` reads back to an equal Config."""
    scalars, tables = [], []
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if dataclasses.is_dataclass(value):
            tables.append((f.name, value))
        elif isinstance(value, dict):
            for key, sub in value.items():
                tables.append((f"{f.name}.{_toml_key(key)}", sub))
        else:
            scalars.append(f"{f.name} = {_toml_value(value)}")
    out = ["# pycri configuration (all keys, with their defaults)"] + scalars
    for name, table in tables:
        out.append("")
        out.append(f"[{name}]")
        for f in dataclasses.fields(table):
            out.append(f"{f.name} = {_toml_value(getattr(table, f.name))}")
    if not cfg.registries:
        out += ["", "# [registries.\"docker.io\"]", "# mirrors = [\"http://127.0.0.1:5000\"]", "# insecure = false",
                "# fallback_to_host = true"]
    return "\n".join(out) + "\n"


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return _toml_str(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(f"cannot render {type(value).__name__} as TOML")


def _toml_str(s: str) -> str:
    escaped = s.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n").replace("\t", "\\t")
    return f'"{escaped}"'


def _toml_key(key: str) -> str:
    return key if key.replace("-", "").replace("_", "").isalnum() else _toml_str(key)


def _require_abs(path: str, where: str) -> None:
    if not isinstance(path, str) or not path.startswith("/"):
        raise ConfigError(f"{where}: {path!r} must be an absolute path")


def _require_choice(value: str, choices: tuple[str, ...], where: str) -> None:
    if value not in choices:
        raise ConfigError(f"{where}: {value!r} is not one of {', '.join(choices)}")


def _join(where: str, key: str) -> str:
    return f"{where}.{key}" if where else key


def _tname(value: Any) -> str:
    return {dict: "a table", list: "a list", str: "a string", bool: "a boolean", int: "an integer",
            float: "a number"}.get(type(value), type(value).__name__)
