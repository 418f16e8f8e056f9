"""kill -9 in the middle of a pull: the next manager on the same root starts clean and finishes the job."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

from tests.fixtures.registry import registry, registry_factory  # noqa: F401

from .conftest import open_manager

REPO = Path(__file__).resolve().parents[2]

CHILD = textwrap.dedent("""
    import asyncio, sys
    from pathlib import Path
    sys.path.insert(0, {repo!r})
    from tests.images.conftest import open_manager
    from tests.images.proxy import Proxy

    async def main():
        async with Proxy({upstream!r}, stall_blobs=True) as proxy:
            async with open_manager(Path({root!r})) as m:
                task = asyncio.ensure_future(m.pull(proxy.host + "/pycri-test/multilayer"))
                while not any(m.content.ingest_dir.glob("*.partial")):
                    await asyncio.sleep(0.05)
                print("stalled", flush=True)
                await task

    asyncio.run(main())
""")


def test_kill_9_mid_pull(registry, image_root, tmp_path):
    meta = registry.images["multilayer"]
    script = tmp_path / "child.py"
    script.write_text(CHILD.format(repo=str(REPO), upstream=registry.url, root=str(image_root)))
    child = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                             text=True)
    try:
        for line in child.stdout:  # structlog's default output shares stdout
            if line.strip() == "stalled":
                break
        else:
            raise AssertionError("the child never reached the stalled download")
        # a half-made snapshot as an unpack killed mid-way would leave it
        (image_root / "snapshots" / "tmp-killed" / "fs").mkdir(parents=True)
    finally:
        os.kill(child.pid, signal.SIGKILL)
        child.wait(10)
    partials = list((image_root / "ingest").glob("*.partial"))
    assert partials  # what had arrived is kept for resuming

    async def main():
        async with open_manager(image_root) as m:
            assert not (image_root / "snapshots" / "tmp-killed").exists()
            assert await m.list() == []
            started = time.monotonic()
            assert await m.pull(registry.ref("multilayer")) == meta["config_digest"]
            assert time.monotonic() - started < 30
            assert list(m.content.ingest_dir.iterdir()) == []
            assert len(m.snapshots.all()) == len(meta["layers"])

    asyncio.run(main())
