"""Config reload on SIGHUP: re-read the config file and apply what can change while containers run.

Applied in place: `[registries]` (mirrors, insecure, fallback: used by the next pull), `[cdi] spec_dirs` (read
at each create) and `log_level`. Any other difference is logged as needing a restart and left as it was. A file
that does not load or validate is logged and the running settings are kept. Containers and pods are never
touched.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

from pycri import config as configmod
from pycri import log

_log = log.get("reload")
LIVE_KEYS = ("registries", "cdi", "log_level")


def config_path(path: str | os.PathLike | None) -> Path | None:
    """The file `config.load(path)` reads (None: built-in defaults, nothing to reload)."""
    if path is not None:
        return Path(path)
    env = os.environ.get(configmod.CONFIG_ENV)
    if env:
        return Path(env)
    return configmod.DEFAULT_CONFIG_PATH if configmod.DEFAULT_CONFIG_PATH.exists() else None


def reload(daemon, path: Path | None) -> bool:
    """Re-read `path` and apply the live settings to the running daemon; False when nothing was applied."""
    if path is None:
        _log.warning("config reload: the daemon runs on built-in defaults (no config file); nothing to reload")
        return False
    try:
        new = configmod.load(path)
    except configmod.ConfigError as exc:
        _log.error("config reload failed; keeping the running settings", path=str(path), error=str(exc))
        return False
    old = daemon.config
    changed = [f.name for f in dataclasses.fields(old) if getattr(old, f.name) != getattr(new, f.name)]
    restart = [k for k in changed if k not in LIVE_KEYS]
    if "log_level" in changed:
        log.set_level(new.log_level)
        old.log_level = new.log_level
    if "cdi" in changed:
        old.cdi = new.cdi
    if "registries" in changed:
        old.registries = new.registries
        daemon.images.client.registries = new.registries
    applied = [k for k in changed if k in LIVE_KEYS]
    _log.info("config reloaded", path=str(path), applied=applied, registries=sorted(new.registries),
              log_level=old.log_level)
    if restart:
        _log.warning("config changes need a restart to apply", path=str(path), keys=restart)
    return True
