"""Helpers for the image tests: a manager on a temp root, run inside the test's own event loop."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import pytest

from pycri.config import Config, RegistryConfig
from pycri.images import ImageManager
from pycri.state.store import Store


@contextlib.asynccontextmanager
async def open_manager(root: Path, **settings):
    """An ImageManager on `root`; `registries` may map host -> dict of RegistryConfig fields."""
    registries = {h: RegistryConfig(**r) for h, r in settings.pop("registries", {}).items()}
    config = Config(root=str(root), registries=registries, **settings)
    store = Store(root / "metadata.db")
    manager = ImageManager(config, store)
    try:
        yield manager
    finally:
        await manager.close()
        store.close()


@pytest.fixture
def image_root(tmp_path):
    """A fresh image root; after the test it must hold no temp or partial files."""
    root = tmp_path / "root"
    root.mkdir()
    yield root
    leftovers = [p.name for p in (root / "snapshots").glob("tmp-*")] if (root / "snapshots").exists() else []
    leftovers += [p.name for p in (root / "ingest").glob("*.tmp")] if (root / "ingest").exists() else []
    assert not leftovers, f"temp files left behind: {leftovers}"


def tree(root: Path) -> dict[str, os.stat_result]:
    """Every path under root (relative) with its lstat."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            out[str(p.relative_to(root))] = os.lstat(p)
    return out
