#!/usr/bin/env python3
"""Pull time of a test image from a local registry: pycri's ImageManager vs containerd 1.6 (`ctr images pull`).

Starts its own docker-registry (127.0.0.1, free port) with the test images, and for each run a fresh pycri root or
a fresh containerd (own temp config, root, state and socket; CRI plugin disabled). Both fetch every blob, verify it
and unpack the layers to overlay snapshots. Times: pycri in-process `pull()`; containerd the `ctr` command, whose
own start-up is measured separately (`ctr version`) and reported. Prints medians and ratios, then compares the
unpacked layer directories of both, entry by entry (containerd as the reference unpacker).

    .venv/bin/python hack/bench_pull.py [--runs 7] [--image multilayer] [--synthetic 5x8]
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from pycri.config import Config  # noqa: E402
from pycri.images import ImageManager  # noqa: E402
from pycri.state.store import Store  # noqa: E402
from tests.fixtures.registry import RegistryServer, images_dir  # noqa: E402

CONTAINERD_CONFIG = """version = 2
root = "{root}"
state = "{state}"
disabled_plugins = ["io.containerd.grpc.v1.cri", "io.containerd.snapshotter.v1.btrfs",
                    "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.aufs",
                    "io.containerd.snapshotter.v1.devmapper"]
[grpc]
  address = "{sock}"
[ttrpc]
  address = "{sock}.ttrpc"
"""


async def pycri_pull(work: Path, ref: str) -> float:
    root = work / "pycri-root"
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    store = Store(root / "metadata.db")
    manager = ImageManager(Config(root=str(root)), store)
    try:
        started = time.perf_counter()
        await manager.pull(ref)
        return time.perf_counter() - started
    finally:
        await manager.close()
        store.close()
        await asyncio.to_thread(shutil.rmtree, root, True)


def tree_signature(root: Path) -> tuple:
    """What an unpacked layer dir holds: paths, types, modes, owners, devices, contents, link targets, opaque
    xattrs (mtimes of regular files and symlinks; not of dirs or whiteouts, which get the time of extraction)."""
    import hashlib
    import os
    import stat

    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = Path(dirpath) / name
            st = os.lstat(path)
            item = [str(path.relative_to(root)), stat.S_IFMT(st.st_mode), stat.S_IMODE(st.st_mode), st.st_uid,
                    st.st_gid]
            if stat.S_ISREG(st.st_mode):
                item += [hashlib.sha256(path.read_bytes()).hexdigest(), st.st_mtime_ns]
            elif stat.S_ISLNK(st.st_mode):
                item += [os.readlink(path), st.st_mtime_ns]
            elif stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode):
                item += [st.st_rdev]
            elif stat.S_ISDIR(st.st_mode):
                try:
                    item += [os.getxattr(path, "trusted.overlay.opaque", follow_symlinks=False)]
                except OSError:
                    item += [b""]
            out.append(tuple(item))
    return tuple(sorted(out))


def compare_with_containerd(work: Path, ref: str) -> str:
    """Pull once with each, keep the results, and compare pycri's layer dirs with containerd's overlay snapshots."""
    root = work / "cmp-pycri"
    store = Store(root / "metadata.db")

    async def pull() -> list[str]:
        manager = ImageManager(Config(root=str(root)), store)
        try:
            return (await manager.status(await manager.pull(ref))).lowerdirs
        finally:
            await manager.close()

    try:
        ours = {tree_signature(Path(d)) for d in asyncio.run(pull())}
    finally:
        store.close()
    base = work / "ctrd"
    containerd_pull(work, ref, keep=True)
    snaps = base / "root" / "io.containerd.snapshotter.v1.overlayfs" / "snapshots"
    theirs = {tree_signature(d / "fs") for d in snaps.iterdir()}
    shutil.rmtree(base, ignore_errors=True)
    shutil.rmtree(root, ignore_errors=True)
    if ours == theirs:
        return f"identical: {len(ours)} layer dirs match containerd's snapshots entry for entry"
    return f"DIFFERENT: {len(ours - theirs)} of our {len(ours)} layer dirs have no identical containerd snapshot"


def containerd_pull(work: Path, ref: str, keep: bool = False) -> tuple[float, float]:
    """(seconds for `ctr images pull`, seconds for `ctr version`) on a fresh containerd."""
    base = work / "ctrd"
    shutil.rmtree(base, ignore_errors=True)
    (base / "root").mkdir(parents=True)
    (base / "state").mkdir()
    sock = base / "c.sock"
    cfg = base / "config.toml"
    cfg.write_text(CONTAINERD_CONFIG.format(root=base / "root", state=base / "state", sock=sock))
    log = open(base / "containerd.log", "w")
    proc = subprocess.Popen(["containerd", "--config", str(cfg)], stdout=log, stderr=log, stdin=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 20
        while subprocess.run(["ctr", "-a", str(sock), "version"], capture_output=True).returncode != 0:
            if time.monotonic() > deadline or proc.poll() is not None:
                raise RuntimeError(f"containerd did not start; see {base / 'containerd.log'}")
            time.sleep(0.1)
        started = time.perf_counter()
        subprocess.run(["ctr", "-a", str(sock), "version"], capture_output=True, check=True)
        overhead = time.perf_counter() - started
        started = time.perf_counter()
        subprocess.run(["ctr", "-a", str(sock), "-n", "bench", "images", "pull", "--plain-http", ref],
                       capture_output=True, check=True)
        return time.perf_counter() - started, overhead
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
        # containerd leaves overlay snapshot dirs only; nothing is mounted by a pull
        if not keep:
            shutil.rmtree(base, ignore_errors=True)


def push_synthetic(registry, layers: int, mib_per_layer: int) -> str:
    """Push pycri-test/synthetic: `layers` gzip layers of ~`mib_per_layer` MiB each (text-like files of 64 KiB
    and small files), the shape of a typical distro/application image; returns its reference."""
    import gzip
    import hashlib
    import io
    import json
    import random
    import tarfile

    rng = random.Random(1234)
    words = [bytes(rng.choice(b"abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randint(2, 9))) for _ in range(4096)]

    def sha(b: bytes) -> str:
        return "sha256:" + hashlib.sha256(b).hexdigest()

    blobs, diff_ids = [], []
    for n in range(layers):
        out = io.BytesIO()
        with tarfile.open(fileobj=out, mode="w") as tar:
            total, i = 0, 0
            while total < mib_per_layer << 20:
                size = 65536 if i % 4 == 0 else rng.randint(100, 4000)
                data = b" ".join(rng.choice(words) for _ in range(size // 6))[:size]
                info = tarfile.TarInfo(f"layer{n}/d{i // 100}/f{i}")
                info.size, info.mode = len(data), 0o644
                tar.addfile(info, io.BytesIO(data))
                total, i = total + len(data), i + 1
        raw = out.getvalue()
        diff_ids.append(sha(raw))
        blobs.append(gzip.compress(raw, 6))
    config = json.dumps({"architecture": "amd64", "os": "linux", "config": {"Cmd": ["sh"]},
                         "rootfs": {"type": "layers", "diff_ids": diff_ids}}).encode()
    repo = "pycri-test/synthetic"
    for blob in [config, *blobs]:
        registry.pusher.push_blob(repo, sha(blob), blob)
    manifest = json.dumps({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": sha(config),
                   "size": len(config)},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": sha(b), "size": len(b)}
                   for b in blobs]}).encode()
    registry.pusher.push_manifest(repo, "latest", "application/vnd.oci.image.manifest.v1+json", manifest,
                                  sha(manifest))
    registry.images["synthetic"] = {"layers": [sha(b) for b in blobs],
                                    "size": len(config) + len(manifest) + sum(map(len, blobs))}
    return registry.ref("synthetic")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--image", default="multilayer")
    parser.add_argument("--no-containerd", action="store_true")
    parser.add_argument("--synthetic", metavar="LAYERSxMIB", help="pull a generated image instead, e.g. 5x8")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="pycri-bench-pull-") as tmp:
        work = Path(tmp)
        with RegistryServer(work / "registry") as registry:
            registry.push_test_images(images_dir())
            if args.synthetic:
                count, mib = (int(x) for x in args.synthetic.lower().split("x"))
                ref = push_synthetic(registry, count, mib)
                meta = registry.images["synthetic"]
            else:
                ref = registry.ref(args.image)
                meta = registry.images[args.image]
            print(f"image {ref}: {len(meta['layers'])} layers, {meta['size']} bytes in the registry")
            ours, theirs, overheads = [], [], []
            for _ in range(args.runs):
                ours.append(asyncio.run(pycri_pull(work, ref)))
                if not args.no_containerd and shutil.which("containerd"):
                    took, overhead = containerd_pull(work, ref)
                    theirs.append(took)
                    overheads.append(overhead)
            pm = statistics.median(ours)
            print(f"pycri      pull: median {pm * 1000:7.1f} ms  (runs: {', '.join(f'{x*1000:.0f}' for x in ours)})")
            if theirs:
                cm, om = statistics.median(theirs), statistics.median(overheads)
                print(f"containerd pull: median {cm * 1000:7.1f} ms  (ctr CLI start-up alone: {om * 1000:.1f} ms)")
                print(f"ratio pycri/containerd: {pm / cm:.2f}; excluding ctr start-up: {pm / max(cm - om, 1e-6):.2f}")
                print("unpacked layers vs containerd:", compare_with_containerd(work, ref))
    return 0


if __name__ == "__main__":
    sys.exit(main())
