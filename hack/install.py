"""`make install`: put pycri on this machine without overwriting anything already there.

Installs, each under DESTDIR when given (for packaging and tests):
  PREFIX/bin/pycri                  a wrapper running --venv's bin/pycri (`make install`: the venv it installed
                                    the wheel into; default: this checkout's .venv)
  /etc/systemd/system/pycri.service from hack/systemd/pycri.service (when systemd runs here, or with DESTDIR)
  /etc/pycri/config.toml            `pycri config default`, if absent
  /etc/cni/net.d/<default>          pycri's default bridge network, if the dir holds no network config
  /etc/crictl.yaml                  pointing crictl at pycri's socket, if absent
  /var/lib/pycri                    the state root (0711)
Existing files are left alone and reported as "kept"; --dry-run prints what would be done.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from pycri import config as configmod  # noqa: E402
from pycri.network.cniconf import load_network_config  # noqa: E402
from pycri.network.defaultnet import DEFAULT_CONFLIST_NAME, default_conflist  # noqa: E402

CRICTL_YAML = """runtime-endpoint: unix://{sock}
image-endpoint: unix://{sock}
timeout: 30
"""


class Installer:
    def __init__(self, destdir: str, prefix: str, dry_run: bool, venv: Path) -> None:
        self.destdir = destdir.rstrip("/")
        self.prefix = prefix
        self.dry_run = dry_run
        self.venv = venv

    def path(self, p: str) -> Path:
        return Path(self.destdir + p) if self.destdir else Path(p)

    def write(self, target: str, text: str, mode: int = 0o644, *, replace: bool = False) -> None:
        """Write `text` to target unless a file is there (replace: unless it already has exactly this text)."""
        p = self.path(target)
        if p.exists() and (not replace or p.read_text() == text):
            print(f"kept      {p}")
            return
        print(f"{'would write' if self.dry_run else 'write':9} {p}")
        if self.dry_run:
            return
        p.parent.mkdir(parents=True, exist_ok=True)
        tmp = p.with_name(f".{p.name}.tmp")
        tmp.write_text(text)
        tmp.chmod(mode)
        os.replace(tmp, p)

    def mkdir(self, target: str, mode: int) -> None:
        p = self.path(target)
        if p.is_dir():
            print(f"kept      {p}")
            return
        print(f"{'would make' if self.dry_run else 'mkdir':9} {p}")
        if not self.dry_run:
            p.mkdir(parents=True, mode=mode)

    def run(self, systemd: bool) -> int:
        pycri_bin = self.venv / "bin" / "pycri"
        if not pycri_bin.exists() and not self.dry_run:
            print(f"install: {pycri_bin} is missing; run `make venv` first", file=sys.stderr)
            return 1
        bindir = f"{self.prefix}/bin"
        # the wrapper is ours: refreshed when this checkout moves, so it is the one file we replace
        self.write(f"{bindir}/pycri", f"#!/bin/sh\nexec {pycri_bin} \"$@\"\n", 0o755, replace=True)
        cfg_path = str(configmod.DEFAULT_CONFIG_PATH)
        installed = self.path(cfg_path)
        try:
            cfg = configmod.load(installed) if installed.exists() else configmod.Config()
        except configmod.ConfigError as exc:
            print(f"install: the existing {installed} is not valid ({exc}); fix it or move it away",
                  file=sys.stderr)
            return 1
        self.write(cfg_path, configmod.to_toml(configmod.Config()))
        if systemd:
            unit = (REPO / "hack" / "systemd" / "pycri.service").read_text()
            unit = unit.replace("@BINDIR@", bindir).replace("@DOCS@", f"file://{REPO}/docs/operations.md")
            self.write("/etc/systemd/system/pycri.service", unit)
        else:
            print("skip      systemd unit (systemd is not running here)")
        conf_dir = cfg.cni.conf_dir
        if load_network_config(str(self.path(conf_dir))) is None:
            conflist = default_conflist(cfg.cni.default_subnet, str(Path(cfg.root) / "cni" / "networks"))
            self.write(f"{conf_dir}/{DEFAULT_CONFLIST_NAME}", json.dumps(conflist, indent=2) + "\n")
        else:
            print(f"kept      {self.path(conf_dir)} (holds a network config)")
        self.write("/etc/crictl.yaml", CRICTL_YAML.format(sock=cfg.listen))
        self.mkdir(cfg.root, 0o711)
        if systemd and not self.destdir and not self.dry_run:
            print("next: systemctl daemon-reload && systemctl enable --now pycri")
        return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--destdir", default=os.environ.get("DESTDIR", ""))
    p.add_argument("--prefix", default=os.environ.get("PREFIX", "/usr/local"))
    p.add_argument("--venv", default=str(REPO / ".venv"))
    p.add_argument("--dry-run", action="store_true")
    p.add_argument("--systemd", choices=("auto", "yes", "no"), default="auto",
                   help="install the unit: auto = when systemd runs here, or always with a DESTDIR")
    args = p.parse_args(argv)
    systemd = {"yes": True, "no": False}.get(args.systemd, bool(args.destdir) or Path("/run/systemd/system").is_dir())
    if not args.prefix.startswith("/"):
        p.error("--prefix must be absolute")
    return Installer(args.destdir, args.prefix, args.dry_run, Path(args.venv).resolve()).run(systemd)


if __name__ == "__main__":
    sys.exit(main())
