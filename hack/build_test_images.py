#!/usr/bin/env python3
"""Build pycri's test images as OCI image layouts, reproducibly.

Every layer is written in pure Python with sorted entries, a fixed mtime and
uid/gid 0 (unless an image needs otherwise), gzip with mtime=0 and no file
name, so the same inputs (this script, hack/pause.c, the busybox-static
binary, gcc, zlib and zstandard versions) give the same digests on every run.

Output: ``<out>/<name>/`` (oci-layout, index.json, blobs/sha256/...) for each
image, plus ``<out>/images.json`` (name -> metadata) and ``<out>/.stamp``
(the input key; a rebuild is skipped while it matches).

Usage: build_test_images.py [--out DIR] [--force] [--quiet]
The default output dir is <repo>/.cache/test-images, or $PYCRI_TEST_IMAGES.
"""
from __future__ import annotations

import argparse
import fcntl
import gzip
import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import zstandard

REPO_ROOT = Path(__file__).resolve().parent.parent
PAUSE_SRC = REPO_ROOT / "hack" / "pause.c"
BUSYBOX = Path("/bin/busybox")
MTIME = 1704067200  # 2024-01-01T00:00:00Z, for every tar entry
CREATED = "2024-01-01T00:00:00Z"
TAG = "latest"
PATH_ENV = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
LABEL = "io.pycri.test-image"  # every config carries its image name: no two images share an id

# media types
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER_TAR = "application/vnd.oci.image.layer.v1.tar"
OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
OCI_LAYER_ZSTD = "application/vnd.oci.image.layer.v1.tar+zstd"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
DOCKER_LAYER_GZIP = "application/vnd.docker.image.rootfs.diff.tar.gzip"

AMD64 = {"architecture": "amd64", "os": "linux"}
ARM64 = {"architecture": "arm64", "os": "linux", "variant": "v8"}


def default_dir() -> Path:
    """Where the layouts go: $PYCRI_TEST_IMAGES or <repo>/.cache/test-images."""
    env = os.environ.get("PYCRI_TEST_IMAGES")
    return Path(env) if env else REPO_ROOT / ".cache" / "test-images"


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


# ---------------------------------------------------------------- layers

@dataclass
class Entry:
    """One tar member. kind: file, dir, symlink, hardlink."""
    path: str
    kind: str = "file"
    data: bytes = b""
    mode: int = 0o644
    uid: int = 0
    gid: int = 0
    link: str = ""


def F(path, data, mode=0o644, uid=0, gid=0):
    return Entry(path, "file", data if isinstance(data, bytes) else data.encode(), mode, uid, gid)


def D(path, mode=0o755, uid=0, gid=0):
    return Entry(path, "dir", b"", mode, uid, gid)


def L(path, target):
    return Entry(path, "symlink", b"", 0o777, 0, 0, target)


def H(path, target):
    return Entry(path, "hardlink", b"", 0o644, 0, 0, target)


_TAR_TYPES = {"file": tarfile.REGTYPE, "dir": tarfile.DIRTYPE,
              "symlink": tarfile.SYMTYPE, "hardlink": tarfile.LNKTYPE}


def make_tar(entries: list[Entry]) -> bytes:
    """A deterministic tar: sorted names (hardlinks last, after their targets),
    fixed mtime, no user/group names."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for e in sorted(entries, key=lambda e: (e.kind == "hardlink", e.path)):
            ti = tarfile.TarInfo(e.path + ("/" if e.kind == "dir" else ""))
            ti.type = _TAR_TYPES[e.kind]
            ti.mode, ti.uid, ti.gid, ti.mtime = e.mode, e.uid, e.gid, MTIME
            ti.uname = ti.gname = ""
            ti.linkname = e.link
            ti.size = len(e.data) if e.kind == "file" else 0
            tar.addfile(ti, io.BytesIO(e.data) if e.kind == "file" else None)
    return buf.getvalue()


def compress(tar: bytes, how: str) -> bytes:
    if how == "gzip":
        out = io.BytesIO()
        with gzip.GzipFile(filename="", mode="wb", fileobj=out, mtime=0, compresslevel=9) as gz:
            gz.write(tar)
        return out.getvalue()
    if how == "zstd":
        return zstandard.ZstdCompressor(level=19).compress(tar)
    if how == "none":
        return tar
    raise ValueError(how)


@dataclass
class Layer:
    blob: bytes
    diff_id: str
    compression: str  # gzip | zstd | none
    comment: str

    @property
    def digest(self) -> str:
        return sha256(self.blob)


def layer(entries: list[Entry], compression: str = "gzip", comment: str = "") -> Layer:
    tar = make_tar(entries)
    return Layer(compress(tar, compression), sha256(tar), compression, comment)


# ---------------------------------------------------------------- images

@dataclass
class Image:
    """A single-platform image: its layers and the image config's "config" part."""
    layers: list[Layer]
    config: dict
    platform: dict = field(default_factory=lambda: dict(AMD64))
    docker: bool = False  # Docker schema 2 media types instead of OCI


class Blobs(dict):
    """digest -> bytes for one layout."""

    def add(self, data: bytes) -> str:
        d = sha256(data)
        self[d] = data
        return d


def canonical(obj) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()


def write_image(img: Image, blobs: Blobs) -> dict:
    """Add an image's blobs; return the descriptor of its manifest."""
    layer_types = {"gzip": DOCKER_LAYER_GZIP if img.docker else OCI_LAYER_GZIP,
                   "zstd": OCI_LAYER_ZSTD, "none": OCI_LAYER_TAR}
    cfg = dict(img.platform)
    cfg.update({
        "created": CREATED,
        "config": img.config,
        "rootfs": {"type": "layers", "diff_ids": [l.diff_id for l in img.layers]},
        "history": [{"created": CREATED, "created_by": l.comment or "pycri build_test_images"}
                    for l in img.layers],
    })
    cfg_bytes = canonical(cfg)
    manifest = {
        "schemaVersion": 2,
        "mediaType": DOCKER_MANIFEST if img.docker else OCI_MANIFEST,
        "config": {"mediaType": DOCKER_CONFIG if img.docker else OCI_CONFIG,
                   "digest": blobs.add(cfg_bytes), "size": len(cfg_bytes)},
        "layers": [{"mediaType": layer_types[l.compression], "digest": blobs.add(l.blob),
                    "size": len(l.blob)} for l in img.layers],
    }
    mbytes = canonical(manifest)
    return {"mediaType": manifest["mediaType"], "digest": blobs.add(mbytes), "size": len(mbytes)}


def write_index(children: list[tuple[dict, dict]], blobs: Blobs, docker: bool) -> dict:
    """An image index / manifest list over (descriptor, platform) pairs."""
    index = {"schemaVersion": 2, "mediaType": DOCKER_LIST if docker else OCI_INDEX,
             "manifests": [dict(desc, platform=plat) for desc, plat in children]}
    data = canonical(index)
    return {"mediaType": index["mediaType"], "digest": blobs.add(data), "size": len(data)}


def write_layout(path: Path, top: dict, blobs: Blobs) -> None:
    """Write an OCI image layout whose index.json points at `top` as TAG."""
    (path / "blobs" / "sha256").mkdir(parents=True)
    for digest, data in sorted(blobs.items()):
        (path / "blobs" / "sha256" / digest.split(":", 1)[1]).write_bytes(data)
    (path / "oci-layout").write_bytes(canonical({"imageLayoutVersion": "1.0.0"}))
    entry = dict(top, annotations={"org.opencontainers.image.ref.name": TAG})
    (path / "index.json").write_bytes(canonical(
        {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [entry]}))


# ---------------------------------------------------------------- contents

PASSWD_BASE = "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n"
GROUP_BASE = "root:x:0:\nnobody:x:65534:\n"

PASSWD_USERS = """\
root:x:0:0:root:/root:/bin/sh
www-data:x:33:33:www-data:/var/www:/bin/sh
user1:x:1000:1000:user1:/home/user1:/bin/sh
user2:x:1002:1002:user2:/home/user2:/bin/sh
user3:x:1003:1004:user3:/home/user3:/bin/sh
nobody:x:65534:65534:nobody:/nonexistent:/bin/false
"""
GROUP_USERS = """\
root:x:0:
www-data:x:33:
user1:x:1000:
user2:x:1002:
group1004:x:1004:
group50000:x:50000:user1
nobody:x:65534:
"""

# What a correct unpacker shows for `multilayer` (paths relative to the rootfs).
MULTILAYER_EXPECT = {
    "present": {"data/keep": "keep\n", "data/hardlink": "keep\n", "data/dir/c": "c\n",
                "data/owned": "owned\n", "data/zstd": "zstd\n"},
    "symlinks": {"data/symlink": "keep"},
    "absent": ["data/gone", "data/dir/a", "data/dir/b", "etc/motd"],
    "owned": {"path": "data/owned", "uid": 1000, "gid": 1000, "mode": 0o640},
}


def busybox_layer(busybox: bytes, applets: list[str]) -> Layer:
    entries = [D("bin"), D("dev"), D("etc"), D("proc"), D("root", 0o700), D("sys"),
               D("tmp", 0o1777), D("usr"), D("usr/bin"), D("var"), D("var/www"),
               F("bin/busybox", busybox, 0o755),
               F("etc/passwd", PASSWD_BASE), F("etc/group", GROUP_BASE)]
    entries += [L("bin/" + a, "busybox") for a in applets if a != "busybox"]
    return layer(entries, "gzip", "busybox-static with applet symlinks in /bin")


def busybox_config(name: str, **extra) -> dict:
    cfg = {"Env": [PATH_ENV], "Cmd": ["sh"], "Labels": {LABEL: name}}
    cfg.update(extra)
    return cfg


def multilayer_layers() -> list[Layer]:
    l2 = layer([
        D("data"), D("data/dir"),
        F("data/dir/a", "a\n"), F("data/dir/b", "b\n"),
        F("data/keep", "keep\n"), F("data/gone", "gone\n"),
        H("data/hardlink", "data/keep"), L("data/symlink", "keep"),
        F("data/owned", "owned\n", 0o640, 1000, 1000),
        F("etc/motd", "motd\n"),
    ], "gzip", "add /data (gzip)")
    l3 = layer([D("data"), F("data/.wh.gone", ""), F("etc/.wh.motd", "")],
               "none", "whiteout /data/gone and /etc/motd (uncompressed tar)")
    l4 = layer([D("data"), D("data/dir"), F("data/dir/.wh..wh..opq", ""),
                F("data/dir/c", "c\n"), F("data/zstd", "zstd\n")],
               "zstd", "opaque /data/dir (zstd)")
    return [l2, l3, l4]


def volattack_layer() -> Layer:
    """An image whose content attacks whoever resolves paths in it on the host (image volume sub paths): symlinks
    to the host's /etc, and above the image's root, by absolute and relative targets; a loop; a file."""
    return layer([
        D("etc"), F("etc/in-image", "image\n"),
        L("to-etc", "/etc"), L("up", "../../../../../../../../../.."),
        D("data"), L("data/escape", "../../../../../../../../../../etc"), F("data/file", "file\n"),
        L("loop", "loop"),
    ], "gzip", "symlinks out of the image, for image volume sub paths")


def users_layer() -> Layer:
    return layer([
        D("etc"), F("etc/passwd", PASSWD_USERS), F("etc/group", GROUP_USERS),
        D("home"), D("home/user1", 0o755, 1000, 1000), D("home/user2", 0o755, 1002, 1002),
        D("home/user3", 0o755, 1003, 1004), D("var"), D("var/www", 0o755, 33, 33),
    ], "gzip", "users and groups")


def build_pause(workdir: Path) -> bytes:
    """Compile hack/pause.c statically (in a fixed dir, for reproducible output)."""
    src = workdir / "pause.c"
    shutil.copyfile(PAUSE_SRC, src)
    subprocess.run(["gcc", "-static", "-nostdlib", "-Os", "-s", "-fno-stack-protector",
                    "-fno-asynchronous-unwind-tables", "-o", "pause", "pause.c"],
                   cwd=workdir, check=True)
    return (workdir / "pause").read_bytes()


def applet_list() -> list[str]:
    out = subprocess.run([str(BUSYBOX), "--list"], check=True, capture_output=True, text=True)
    return sorted(set(out.stdout.split()))


def define_images(pause: bytes, busybox: bytes, applets: list[str]) -> dict[str, tuple]:
    """name -> (top descriptor, Blobs). Plans every image from the same base layer."""
    base = busybox_layer(busybox, applets)
    out = {}

    def single(name, img):
        blobs = Blobs()
        out[name] = (write_image(img, blobs), blobs)

    single("pause", Image([layer([F("pause", pause, 0o755)], "gzip", "pycri pause")],
                          {"Entrypoint": ["/pause"], "Labels": {LABEL: "pause"}}))
    single("busybox", Image([base], busybox_config("busybox")))
    single("busybox-docker", Image([base], busybox_config("busybox-docker"), docker=True))
    single("multilayer", Image([base] + multilayer_layers(), busybox_config("multilayer")))
    single("volattack", Image([volattack_layer()], {"Labels": {LABEL: "volattack"}}))
    users = users_layer()
    single("users", Image([base, users], busybox_config("users", User="1002")))
    single("users-www", Image([base, users], busybox_config("users-www", User="www-data")))
    for name, docker in (("multiarch", False), ("multiarch-docker", True)):
        blobs = Blobs()
        children = [(write_image(Image([base], busybox_config(f"{name}-{p['architecture']}"),
                                       platform=p, docker=docker), blobs), p)
                    for p in (AMD64, ARM64)]
        out[name] = (write_index(children, blobs, docker), blobs)
    return out


def metadata(top: dict, blobs: Blobs) -> dict:
    """What tests need to know about one image: digests, sizes, platforms."""
    doc = json.loads(blobs[top["digest"]])
    meta = {"tag": TAG, "digest": top["digest"], "media_type": top["mediaType"],
            "size": sum(len(b) for b in blobs.values())}
    if "manifests" in doc:
        meta["platforms"] = {}
        for m in doc["manifests"]:
            child = json.loads(blobs[m["digest"]])
            key = "{os}/{architecture}".format(**m["platform"])
            meta["platforms"][key] = {"digest": m["digest"], "config_digest": child["config"]["digest"]}
        doc = json.loads(blobs[meta["platforms"]["linux/amd64"]["digest"]])
    meta["config_digest"] = doc["config"]["digest"]
    meta["layers"] = [l["digest"] for l in doc["layers"]]
    cfg = json.loads(blobs[doc["config"]["digest"]])
    meta["diff_ids"] = cfg["rootfs"]["diff_ids"]
    meta["user"] = cfg["config"].get("User", "")
    return meta


# ---------------------------------------------------------------- driver

def input_key() -> str:
    """Hash of everything the output depends on."""
    h = hashlib.sha256()
    for p in (Path(__file__).resolve(), PAUSE_SRC, BUSYBOX):
        h.update(p.read_bytes())
    gcc = subprocess.run(["gcc", "--version"], capture_output=True, text=True).stdout
    h.update("\0".join([gcc, zlib.ZLIB_RUNTIME_VERSION, zstandard.__version__]).encode())
    return h.hexdigest()


def load_metadata(out: Path) -> dict:
    return json.loads((out / "images.json").read_text())


def up_to_date(out: Path, key: str) -> bool:
    try:
        if (out / ".stamp").read_text().strip() != key:
            return False
        return all((out / n / "index.json").is_file() for n in load_metadata(out))
    except (OSError, ValueError):
        return False


def build_all(out: Path | None = None, force: bool = False) -> dict:
    """Build every image into `out` unless up to date; return images.json's content."""
    out = Path(out or default_dir())
    key = input_key()
    if not force and up_to_date(out, key):
        return load_metadata(out)
    out.mkdir(parents=True, exist_ok=True)
    with open(out / ".lock", "w") as lock:  # concurrent test sessions share the cache
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not force and up_to_date(out, key):
            return load_metadata(out)
        return _build(out, key)


def _build(out: Path, key: str) -> dict:
    for stale in out.glob(".build-*"):  # left by a killed build
        shutil.rmtree(stale, ignore_errors=True)
    with tempfile.TemporaryDirectory(prefix=".build-", dir=out) as tmp:
        tmp = Path(tmp)
        (tmp / "cc").mkdir()
        images = define_images(build_pause(tmp / "cc"), BUSYBOX.read_bytes(), applet_list())
        meta = {}
        for name, (top, blobs) in images.items():
            write_layout(tmp / name, top, blobs)
            meta[name] = metadata(top, blobs)
        meta["multilayer"]["expect"] = MULTILAYER_EXPECT
        for name in images:  # swap each finished layout in
            shutil.rmtree(out / name, ignore_errors=True)
            os.rename(tmp / name, out / name)
    (out / "images.json").write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
    (out / ".stamp").write_text(key + "\n")
    return meta


def summary(meta: dict) -> str:
    lines = [f"{'image':<18} {'digest':<73} {'bytes':>9}"]
    lines += [f"{n:<18} {m['digest']:<73} {m['size']:>9}" for n, m in sorted(meta.items())]
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=None, help="output dir (default: %(default)s)")
    ap.add_argument("--force", action="store_true", help="rebuild even when up to date")
    ap.add_argument("--quiet", action="store_true")
    args = ap.parse_args(argv)
    out = args.out or default_dir()
    meta = build_all(out, args.force)
    if not args.quiet:
        print(f"test images in {out}")
        print(summary(meta))
    return 0


if __name__ == "__main__":
    sys.exit(main())
