"""Pull progress: the tracker and Transfer figures, the stalled-layer messages, and `pycri images pulls` against the
real daemon pulling through a slow (throttled) registry proxy."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import subprocess
import sys
import threading
import time

import httpx
import pytest

from pycri.api import api_pb2 as cri
from pycri.images import reference
from pycri.images.content import ContentError, ContentStore
from pycri.images.progress import DONE, DOWNLOADING, PullTracker
from pycri.images.registry import RegistryClient, RegistryError, Resolved
from tests.fixtures.daemon import PYCRI, REPO
from tests.fixtures.registry import registry  # noqa: F401

from .proxy import Proxy


# ---- units: tracker figures while a blob streams in, and the no-progress messages

def test_tracker_reports_bytes_and_rate_while_a_blob_streams(tmp_path):
    data = bytes(range(256)) * 4096  # 1 MiB
    digest = "sha256:" + hashlib.sha256(data).hexdigest()

    async def main():
        content = ContentStore(tmp_path)
        tracker = PullTracker(content)
        release = asyncio.Event()

        @contextlib.asynccontextmanager
        async def opener(offset):
            async def chunks():
                for i in range(0, len(data) // 2, 65536):
                    yield data[i:i + 65536]
                    await asyncio.sleep(0.02)
                await release.wait()
                yield data[len(data) // 2:]
            yield 0, chunks()

        pull = tracker.start("example.test/app:1")
        assert tracker.snapshot()[0]["phase"] == "resolving"
        pull.set_layers([{"digest": digest, "size": len(data)}])
        pull.layer(0, DOWNLOADING)
        fetch = asyncio.ensure_future(content.fetch(digest, len(data), opener, label="layer 0"))
        for _ in range(200):
            await asyncio.sleep(0.02)
            snap = tracker.snapshot()[0]
            if snap["done_bytes"] >= len(data) // 2:
                break
        layer = snap["layers"][0]
        assert (layer["digest"], layer["phase"], layer["total_bytes"]) == (digest, "downloading", len(data))
        assert layer["done_bytes"] == len(data) // 2 == snap["done_bytes"]
        assert layer["rate_bytes_per_second"] > 0 and snap["total_bytes"] == len(data)
        await asyncio.sleep(0.3)
        assert tracker.snapshot()[0]["layers"][0]["idle_seconds"] >= 0.25  # no data while we hold it back
        release.set()
        await fetch
        assert content.transfers == {}  # forgotten once stored
        pull.layer(0, DONE)
        assert tracker.snapshot()[0]["done_bytes"] == len(data)
        tracker.end(pull)
        assert tracker.snapshot() == [] and len(tracker) == 0

    asyncio.run(main())


async def _hanging_registry(send_head: bool):
    """A loopback 'registry' that reads a request and then answers nothing (or headers and 10 bytes)."""
    async def serve(reader, writer):
        await reader.readuntil(b"\r\n\r\n")
        if send_head:
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n" + b"x" * 10)
            await writer.drain()
        await asyncio.sleep(30)
        writer.close()

    return await asyncio.start_server(serve, "127.0.0.1", 0)


@pytest.mark.parametrize("send_head", [False, True], ids=["no-answer", "stalled-body"])
def test_progress_timeout_message_names_the_stalled_layer(tmp_path, send_head):
    digest = "sha256:" + "ab" * 32

    async def main():
        server = await _hanging_registry(send_head)
        host = f"127.0.0.1:{server.sockets[0].getsockname()[1]}"
        client = RegistryClient(progress_timeout=0.5)
        try:
            ref = reference.parse(f"{host}/team/app:1")
            ep = client.endpoints(ref.domain)[0]
            resolved = Resolved(ref, digest, "", digest, {}, {}, ep, [ep])
            opener = client.blob_opener(resolved, digest, None, "layer 2")
            started = time.monotonic()
            with pytest.raises((RegistryError, ContentError)) as err:
                await ContentStore(tmp_path).fetch(digest, 1000, opener, label="layer 2")
            assert time.monotonic() - started < 5
            return str(err.value)
        finally:
            await client.aclose()
            server.close()

    message = asyncio.run(main())
    assert f"layer 2 {digest}" in message
    assert ("stalled: no data for 0.5s" if send_head else "no answer from") in message


# ---- the daemon: `pycri images pulls` and the pull metrics while a pull crawls

@contextlib.contextmanager
def threaded_proxy(**kw):
    """tests/images/proxy.Proxy in a thread of its own (the daemon tests are synchronous)."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    proxy = Proxy(**kw)
    asyncio.run_coroutine_threadsafe(proxy.__aenter__(), loop).result(10)
    try:
        yield proxy
    finally:
        asyncio.run_coroutine_threadsafe(proxy.__aexit__(None, None, None), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()


def pulls_cli(daemon, *args: str) -> str:
    out = subprocess.run(PYCRI + ["--config", str(daemon.config_path), "images", "pulls", *args], cwd=REPO,
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    return out.stdout


def test_pulls_in_flight_listed_with_progress(daemon_factory, registry):
    meta = registry.images["busybox"]
    layer = meta["layers"][0]
    d = daemon_factory({"metrics": {"address": "127.0.0.1:0"}})
    address = [e for e in d.log_events() if e.get("event") == "listening" and e.get("server") == "metrics"][-1][
        "address"]
    assert pulls_cli(d) == "no pulls in flight\n"
    with threaded_proxy(upstream=registry.url, throttle_blobs=128 * 1024) as proxy:  # ~8 s for its 1 MiB layer
        ref = f"{proxy.host}/pycri-test/busybox:latest"
        pulling = d.image.PullImage.future(cri.PullImageRequest(image=cri.ImageSpec(image=ref)), timeout=120)
        samples = []
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and len(samples) < 2:
            answer = json.loads(pulls_cli(d, "--json"))
            pulls = answer["pulls"]
            if pulls and pulls[0]["layers"] and pulls[0]["layers"][0]["phase"] == "downloading" and \
                    pulls[0]["layers"][0]["done_bytes"] > 0:
                if not samples or pulls[0]["layers"][0]["done_bytes"] > samples[-1]["layers"][0]["done_bytes"]:
                    samples.append(pulls[0])
            time.sleep(0.3)
        assert len(samples) == 2, f"no progressing pull seen: {answer}"
        first, second = samples
        assert first["image"] == ref and len(first["layers"]) == 1
        assert first["layers"][0]["digest"] == layer
        assert first["layers"][0]["total_bytes"] == first["total_bytes"] >= second["layers"][0]["done_bytes"]
        assert second["elapsed_seconds"] > first["elapsed_seconds"]
        assert second["rate_bytes_per_second"] > 0

        text = pulls_cli(d)  # stdout is a pipe: printed once, as a table
        assert ref in text and f"layer 0   {layer.split(':')[1][:12]}" in text and "downloading" in text
        assert "MiB" in text or "KiB" in text

        metrics = httpx.get(f"http://{address}/metrics", timeout=10).text
        assert "pycri_image_pulls_in_flight 1.0" in metrics
        progress = [line for line in metrics.splitlines()
                    if line.startswith(f'pycri_image_pull_progress_bytes{{image="{ref}"}}')]
        assert progress and float(progress[0].split()[-1]) > 0

        assert pulling.result(timeout=60).image_ref == meta["config_digest"]
    assert pulls_cli(d) == "no pulls in flight\n"
    metrics = httpx.get(f"http://{address}/metrics", timeout=10).text
    assert "pycri_image_pulls_in_flight 0.0" in metrics and "pycri_image_pull_progress_bytes{" not in metrics
    assert 'pycri_image_pull_duration_seconds_count{result="ok"} 1.0' in metrics


def test_pulls_without_a_daemon_is_a_clear_error(tmp_path):
    config = tmp_path / "config.toml"
    config.write_text(f'listen = "{tmp_path}/pycri.sock"\n')
    out = subprocess.run(PYCRI + ["--config", str(config), "images", "pulls"], cwd=REPO, capture_output=True,
                         text=True, timeout=30)
    assert out.returncode == 1
    assert f"{tmp_path}/pycri-status.sock" in out.stderr and "Traceback" not in out.stderr


def test_pulls_live_on_a_terminal(daemon):
    """On a tty the listing is redrawn (clear screen + table) until Ctrl-C, which exits 0."""
    import os
    import select
    import signal

    master, slave = os.openpty()
    proc = subprocess.Popen(PYCRI + ["--config", str(daemon.config_path), "images", "pulls", "--interval", "0.3"],
                            cwd=REPO, stdin=slave, stdout=slave, stderr=subprocess.PIPE)
    os.close(slave)
    out = b""
    try:
        deadline = time.monotonic() + 20
        while out.count(b"\x1b[2J") < 3 and time.monotonic() < deadline:
            if select.select([master], [], [], 1)[0]:
                out += os.read(master, 4096)
        proc.send_signal(signal.SIGINT)
        assert proc.wait(10) == 0, proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(master)
    assert out.count(b"\x1b[H\x1b[2Jpulls in flight (every 0.3s") >= 3 and b"no pulls in flight" in out
