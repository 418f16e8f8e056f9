"""pycri/reload.py against a stand-in daemon: what applies live, what waits for a restart, bad files."""

from __future__ import annotations

from types import SimpleNamespace

from pycri import config as configmod
from pycri import log, reload


def _daemon():
    cfg = configmod.Config()
    return SimpleNamespace(config=cfg, images=SimpleNamespace(client=SimpleNamespace(registries=cfg.registries)))


def test_live_keys_apply_and_others_wait(tmp_path):
    d = _daemon()
    f = tmp_path / "c.toml"
    f.write_text('log_level = "debug"\nsandbox_image = "example.com/pause:9"\n[cdi]\nspec_dirs = ["/opt/cdi"]\n'
                 '[registries."docker.io"]\nmirrors = ["http://127.0.0.1:5000"]\n')
    try:
        assert reload.reload(d, f)
        assert d.config.log_level == "debug" and log._threshold[0] == 10
        assert d.config.cdi.spec_dirs == ["/opt/cdi"]
        assert d.images.client.registries["docker.io"].mirrors == ["http://127.0.0.1:5000"]
        assert d.config.sandbox_image == configmod.Config().sandbox_image, "needs a restart: not applied"
    finally:
        log.set_level("info")


def test_bad_file_keeps_settings(tmp_path):
    d = _daemon()
    f = tmp_path / "c.toml"
    f.write_text("[cdi]\nspec_dirs = 3\n")
    assert not reload.reload(d, f)
    assert d.config == configmod.Config()
    assert not reload.reload(d, tmp_path / "missing.toml")
    assert not reload.reload(d, None)


def test_config_path_resolution(tmp_path, monkeypatch):
    monkeypatch.setenv(configmod.CONFIG_ENV, str(tmp_path / "env.toml"))
    assert reload.config_path(str(tmp_path / "x.toml")) == tmp_path / "x.toml"
    assert reload.config_path(None) == tmp_path / "env.toml"
