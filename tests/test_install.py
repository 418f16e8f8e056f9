"""`make install` (hack/install.py) into a DESTDIR: every file in place, nothing existing overwritten; the unit keeps
monitors alive across restarts; the installed config passes `pycri config check`; [cdi] config checks."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from pycri import config as configmod

REPO = Path(__file__).resolve().parents[1]


def _install(destdir: Path, *extra: str) -> subprocess.CompletedProcess:
    """hack/install.py with a venv whose bin/pycri runs this checkout with the interpreter of the tests (the
    checkout's .venv is not there when the suite runs in the guest of hack/node.py)."""
    venv = destdir.parent / "venv"
    if not venv.exists():
        (venv / "bin").mkdir(parents=True)
        (venv / "bin" / "pycri").write_text(f'#!/bin/sh\nPYTHONPATH={REPO} exec {sys.executable} -m pycri "$@"\n')
        (venv / "bin" / "pycri").chmod(0o755)
    return subprocess.run([sys.executable, str(REPO / "hack" / "install.py"), "--destdir", str(destdir),
                           "--prefix", "/opt/pycri", "--venv", str(venv), *extra], capture_output=True, text=True,
                          timeout=60)


def test_install_into_destdir(tmp_path):
    dest = tmp_path / "root"
    dry = _install(dest, "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert "would write" in dry.stdout and not dest.exists(), "a dry run writes nothing"

    r = _install(dest)
    assert r.returncode == 0, r.stderr
    wrapper = dest / "opt/pycri/bin/pycri"
    assert wrapper.stat().st_mode & 0o111
    out = subprocess.run([str(wrapper), "--version"], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0 and out.stdout.startswith("pycri ")

    cfg = dest / "etc/pycri/config.toml"
    check = subprocess.run([str(wrapper), "config", "check", str(cfg)], capture_output=True, text=True, timeout=30)
    assert check.returncode == 0, check.stderr
    assert configmod.load(cfg) == configmod.Config()

    unit = (dest / "etc/systemd/system/pycri.service").read_text()
    for line in ("ExecStart=/opt/pycri/bin/pycri", "KillMode=process", "Delegate=yes", "LimitNOFILE=1048576",
                 "ExecReload=/bin/kill -HUP $MAINPID"):
        assert line in unit.splitlines(), line
    assert "@" not in unit.replace("$MAINPID", "")

    conflist = json.loads((dest / "etc/cni/net.d/99-pycri-default.conflist").read_text())
    assert conflist["plugins"][0]["ipam"]["ranges"][0][0]["subnet"] == configmod.Config().cni.default_subnet
    assert conflist["plugins"][0]["ipam"]["dataDir"] == "/var/lib/pycri/cni/networks"  # the real path, no DESTDIR
    crictl = (dest / "etc/crictl.yaml").read_text()
    assert "runtime-endpoint: unix:///run/pycri/pycri.sock" in crictl
    assert (dest / "var/lib/pycri").is_dir()

    # a second install keeps what an operator changed
    (dest / "etc/crictl.yaml").write_text("runtime-endpoint: unix:///run/containerd/containerd.sock\n")
    cfg.write_text(cfg.read_text().replace('log_level = "info"', 'log_level = "debug"'))
    r = _install(dest)
    assert r.returncode == 0, r.stderr
    assert "containerd.sock" in (dest / "etc/crictl.yaml").read_text()
    assert configmod.load(cfg).log_level == "debug"
    assert "kept" in r.stdout


def test_install_refuses_a_broken_existing_config(tmp_path):
    dest = tmp_path / "root"
    (dest / "etc/pycri").mkdir(parents=True)
    (dest / "etc/pycri/config.toml").write_text("log_levle = 1\n")
    r = _install(dest)
    assert r.returncode == 1 and "log_levle" in r.stderr
    assert not (dest / "etc/crictl.yaml").exists()


def test_make_install_dry_run():
    r = subprocess.run(["make", "-n", "install", "DESTDIR=/nonexistent"], cwd=REPO, capture_output=True, text=True,
                       timeout=30)
    assert r.returncode == 0, r.stderr
    assert 'hack/install.py --destdir "/nonexistent" --prefix "/usr/local"' in r.stdout


@pytest.mark.parametrize("text,error", [
    ('[cdi]\nspec_dirs = ["etc/cdi"]\n', "cdi.spec_dirs[0]: 'etc/cdi' must be an absolute path"),
    ('[cdi]\nspec_dir = ["/etc/cdi"]\n', "cdi.spec_dir: unknown key"),
    ('log_level = "verbose"\n', "log_level: 'verbose' is not one of"),
])
def test_config_check_rejects(tmp_path, text, error):
    f = tmp_path / "c.toml"
    f.write_text(text)
    r = subprocess.run([sys.executable, "-m", "pycri", "config", "check", str(f)], capture_output=True, text=True,
                       cwd=REPO, timeout=30)
    assert r.returncode == 2 and error in r.stderr, r.stderr


def test_config_check_accepts_cdi_and_log_level(tmp_path):
    f = tmp_path / "c.toml"
    f.write_text('log_level = "warning"\n[cdi]\nspec_dirs = ["/etc/cdi", "/var/run/cdi", "/opt/cdi"]\n')
    r = subprocess.run([sys.executable, "-m", "pycri", "config", "check", str(f)], capture_output=True, text=True,
                       cwd=REPO, timeout=30)
    assert r.returncode == 0, r.stderr
    assert configmod.load(f).cdi.spec_dirs[-1] == "/opt/cdi"
