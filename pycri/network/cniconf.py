"""Finding and checking the CNI network configuration, as libcni does.

The network in use is the first file (by name) in conf_dir ending in .conflist, .conf or .json that parses.
A single-plugin .conf is lifted into a one-plugin list. The network is ready when that config parses and every
plugin it names has an executable in one of bin_dirs.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

CONF_SUFFIXES = (".conflist", ".conf", ".json")


@dataclass
class NetworkConfig:
    path: Path
    name: str
    cni_version: str
    plugins: list[dict] = field(default_factory=list)
    raw: dict = field(default_factory=dict)


class NetworkConfigError(Exception):
    pass


def load_network_config(conf_dir: str) -> NetworkConfig | None:
    """The first valid network config in conf_dir, or None when there is none (invalid files are skipped)."""
    try:
        names = sorted(os.listdir(conf_dir))
    except FileNotFoundError:
        return None
    for name in names:
        path = Path(conf_dir) / name
        if not name.endswith(CONF_SUFFIXES) or not path.is_file():
            continue
        try:
            return parse_network_config(path)
        except NetworkConfigError:
            continue
    return None


def parse_network_config(path: Path) -> NetworkConfig:
    try:
        raw = json.loads(path.read_bytes())
    except (OSError, ValueError) as exc:
        raise NetworkConfigError(f"{path}: {exc}") from None
    if not isinstance(raw, dict):
        raise NetworkConfigError(f"{path}: not a JSON object")
    if "plugins" in raw:
        plugins = raw["plugins"]
    elif "type" in raw:
        plugins = [{k: v for k, v in raw.items() if k not in ("cniVersion", "name")}]
    else:
        raise NetworkConfigError(f"{path}: neither a plugin list nor a plugin config")
    if not isinstance(plugins, list) or not plugins or not all(
        isinstance(p, dict) and isinstance(p.get("type"), str) and p["type"] for p in plugins
    ):
        raise NetworkConfigError(f"{path}: 'plugins' must be a non-empty list of objects with a 'type'")
    name = raw.get("name")
    if not isinstance(name, str) or not name:
        raise NetworkConfigError(f"{path}: 'name' is missing")
    return NetworkConfig(path=path, name=name, cni_version=str(raw.get("cniVersion", "0.4.0")), plugins=plugins,
                         raw=raw)


def find_plugin(plugin_type: str, bin_dirs: list[str]) -> Path | None:
    if "/" in plugin_type or plugin_type in (".", ".."):
        return None
    for d in bin_dirs:
        candidate = Path(d) / plugin_type
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return candidate
    return None


def network_status(conf_dir: str, bin_dirs: list[str]) -> tuple[bool, str, str]:
    """(ready, reason, message) for the NetworkReady condition."""
    conf = load_network_config(conf_dir)
    if conf is None:
        return False, "NetworkPluginNotReady", f"cni config uninitialized: no valid network config in {conf_dir}"
    missing = [p["type"] for p in conf.plugins if find_plugin(p["type"], bin_dirs) is None]
    if missing:
        return (False, "NetworkPluginNotReady",
                f"cni plugin(s) {', '.join(missing)} of network {conf.name!r} not found in {':'.join(bin_dirs)}")
    return True, "", ""
