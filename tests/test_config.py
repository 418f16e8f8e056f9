"""Config parsing and validation (pure logic)."""

from __future__ import annotations

import tomllib

import pytest

from pycri import config as c


def test_defaults_match_the_documented_ones():
    cfg = c.Config()
    cfg.validate()
    assert cfg.root == "/var/lib/pycri" and cfg.state == "/run/pycri"
    assert cfg.listen == "/run/pycri/pycri.sock"
    assert cfg.sandbox_image == "registry.k8s.io/pause:3.10"
    assert cfg.cni.conf_dir == "/etc/cni/net.d" and cfg.cni.bin_dirs == ["/opt/cni/bin", "/usr/lib/cni"]
    assert cfg.cgroup.driver == "cgroupfs"
    assert cfg.runtimes == {"pycri": c.RuntimeHandlerConfig(type="builtin", path="")}
    assert cfg.streaming.address == "127.0.0.1"
    assert (cfg.images.max_unpacked_bytes, cfg.images.max_entries) == (64 << 30, 4 << 20)
    assert (cfg.images.min_free_bytes, cfg.images.min_free_inodes) == (256 << 20, 4096)


def test_default_toml_round_trips():
    text = c.to_toml(c.Config())
    assert c.from_dict(tomllib.loads(text)) == c.Config()


def test_full_config_parses():
    cfg = c.from_dict(tomllib.loads('''
root = "/srv/pycri"
sandbox_image = "127.0.0.1:5000/pause:1"
image_pull_progress_timeout = 30
[cni]
bin_dirs = ["/opt/cni/bin"]
[cgroup]
driver = "systemd"
[registries."registry.k8s.io"]
mirrors = ["http://127.0.0.1:5000", "https://mirror.example"]
insecure = true
[registries."127.0.0.1:5000"]
insecure = true
[runtimes.runc]
type = "oci"
path = "/usr/sbin/runc"
[streaming]
port = 10010
[images]
max_unpacked_bytes = 1073741824
min_free_bytes = 0
'''))
    assert cfg.images.max_unpacked_bytes == 1 << 30 and cfg.images.min_free_bytes == 0
    assert cfg.images.max_entries == 4 << 20  # the keys not given keep their defaults
    assert cfg.image_pull_progress_timeout == 30.0
    assert cfg.registries["registry.k8s.io"].mirrors[0] == "http://127.0.0.1:5000"
    assert cfg.registries["registry.k8s.io"].fallback_to_host is True
    assert set(cfg.runtimes) == {"pycri", "runc"}  # the built-in handler stays
    assert c.from_dict(tomllib.loads(c.to_toml(cfg))) == cfg


@pytest.mark.parametrize("text,message", [
    ('rot = "/x"', "rot: unknown key"),
    ('[cni]\nconfdir = "/x"', "cni.confdir: unknown key"),
    ('root = "relative"', "root: 'relative' must be an absolute path"),
    ('root = 5', "root: expected a string"),
    ('log_level = "loud"', "log_level: 'loud' is not one of"),
    ('image_pull_progress_timeout = 0', "image_pull_progress_timeout: must be a positive"),
    ('store_sync_full = "yes"', "store_sync_full: expected true or false"),
    ('[cni]\nbin_dirs = "/opt/cni/bin"', "cni.bin_dirs: expected a list of strings"),
    ('[cni]\nbin_dirs = []', "cni.bin_dirs: at least one"),
    ('[cni]\ndefault_subnet = "10.88.0.0/33"', "cni.default_subnet"),
    ('[cgroup]\ndriver = "cgroupfz"', "cgroup.driver: 'cgroupfz' is not one of cgroupfs, systemd"),
    ('[registries."docker.io"]\nmirrors = ["127.0.0.1:5000"]', "is not an http:// or https:// URL"),
    ('[registries."docker.io"]\nmirror = []', 'registries.docker.io.mirror: unknown key'),
    ('[registries."a/b"]\ninsecure = true', "a registry key is a host"),
    ('[runtimes.runc]\ntype = "oci"', "runtimes.runc.path: '' must be an absolute path"),
    ('[runtimes.runc]\ntype = "kata"', "runtimes.runc.type: 'kata' is not one of builtin, oci"),
    ('[runtimes.x]\npath = "/bin/x"', "only an 'oci' runtime takes a path"),
    ('[runtimes.x]\ncgroup_manager = "pycri"', "only an 'oci' runtime takes a cgroup_manager"),
    ('[runtimes.x]\ntype = "oci"\npath = "/bin/x"\ncgroup_manager = "me"', "runtimes.x.cgroup_manager: 'me'"),
    ('[runtimes.x]\ntype = "oci"\npath = "/bin/x"\nroot = "/x"', "runtimes.x.root: unknown key"),
    ('default_runtime = "runc"', "default_runtime: 'runc' is not one of [runtimes]"),
    ('[streaming]\naddress = "localhost"', "streaming.address: 'localhost' is not an IP address"),
    ('[streaming]\nport = 65536', "streaming.port: 65536 is out of range"),
    ('cni = 3', "cni: expected a table"),
    ('[cgroup]\npids_limit = -1', "cgroup.pids_limit: must be 0 (no limit)"),
    ('[images]\nmax_entries = 0', "images.max_entries: must be a positive integer"),
    ('[images]\nmax_unpacked_bytes = "64G"', "images.max_unpacked_bytes: expected an integer"),
    ('[images]\nmin_free_bytes = -1', "images.min_free_bytes: must not be negative"),
    ('[images]\nmin_free_inode = 1', "images.min_free_inode: unknown key"),
])
def test_bad_values_are_rejected_with_the_key_named(text, message):
    with pytest.raises(c.ConfigError) as err:
        c.from_dict(tomllib.loads(text))
    assert message in str(err.value)


def test_load_reports_unreadable_and_invalid_files(tmp_path, monkeypatch):
    with pytest.raises(c.ConfigError, match="No such file"):
        c.load(tmp_path / "missing.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("root = ")
    with pytest.raises(c.ConfigError, match="not valid TOML"):
        c.load(bad)
    good = tmp_path / "good.toml"
    good.write_text('root = "/srv/x"\n')
    monkeypatch.setenv(c.CONFIG_ENV, str(good))
    assert c.load().root == "/srv/x"
