"""The test images (hack/build_test_images.py) and the local registry fixture (tests/fixtures/registry.py)."""
from __future__ import annotations

import base64
import gzip
import hashlib
import io
import json
import os
import signal
import subprocess
import sys
import tarfile
import textwrap
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import zstandard

from tests.fixtures.registry import RegistryServer, build_test_images as bti, test_images_dir  # noqa: F401

REPO = Path(__file__).resolve().parents[1]
ACCEPT = ", ".join([bti.OCI_INDEX, bti.OCI_MANIFEST, bti.DOCKER_LIST, bti.DOCKER_MANIFEST])
NAMES = ["pause", "busybox", "busybox-docker", "multilayer", "users", "users-www",
         "multiarch", "multiarch-docker", "volattack"]


# ---------------------------------------------------------------- helpers

def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def blob(layout: Path, digest: str) -> bytes:
    return (layout / "blobs" / "sha256" / digest.split(":")[1]).read_bytes()


def tree(root: Path) -> dict[str, str]:
    """relative path -> sha256 of every file under root (lock and temp dirs excluded)."""
    return {str(p.relative_to(root)): sha(p.read_bytes()) for p in sorted(root.rglob("*"))
            if p.is_file() and p.name != ".lock"}


def top_manifest(layout: Path, platform="amd64") -> tuple[dict, dict]:
    """(manifest, config) for the layout's image, choosing `platform` from an index."""
    desc = json.loads((layout / "index.json").read_text())["manifests"][0]
    doc = json.loads(blob(layout, desc["digest"]))
    if "manifests" in doc:
        desc = next(m for m in doc["manifests"] if m["platform"]["architecture"] == platform)
        doc = json.loads(blob(layout, desc["digest"]))
    return doc, json.loads(blob(layout, doc["config"]["digest"]))


def untar(data: bytes, media_type: str) -> bytes:
    if media_type.endswith("gzip"):
        assert data[4:8] == b"\0\0\0\0", "gzip header mtime must be 0"
        return gzip.decompress(data)
    if media_type.endswith("zstd"):
        return zstandard.ZstdDecompressor().decompressobj().decompress(data)
    return data


def members(tar: bytes) -> dict[str, tarfile.TarInfo]:
    with tarfile.open(fileobj=io.BytesIO(tar)) as t:
        return {m.name.rstrip("/"): m for m in t.getmembers()}


def member_data(tar: bytes, name: str) -> bytes:
    with tarfile.open(fileobj=io.BytesIO(tar)) as t:
        return t.extractfile(name).read()


def layers(layout: Path, platform="amd64") -> list[bytes]:
    m, _ = top_manifest(layout, platform)
    return [untar(blob(layout, l["digest"]), l["mediaType"]) for l in m["layers"]]


def http(url: str, method="GET", headers=None) -> tuple[int, dict, bytes]:
    req = urllib.request.Request(url, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, r.headers, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.headers, e.read()


def basic(user, pw) -> dict:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{pw}".encode()).decode()}


def gone(pid: int, timeout=5.0) -> bool:
    """True once pid is no longer a running process (absent, or a zombie nobody reaps)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except FileNotFoundError:
            return True
        if stat.rsplit(")", 1)[1].split()[0] in ("Z", "X"):
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.05)


# ---------------------------------------------------------------- the build

def test_build_is_reproducible(tmp_path):
    a = bti.build_all(tmp_path / "a", force=True)
    env = dict(os.environ, PYCRI_TEST_IMAGES=str(tmp_path / "b"))
    subprocess.run([sys.executable, str(REPO / "hack" / "build_test_images.py"), "--quiet"],
                   env=env, check=True, timeout=120)
    b = bti.load_metadata(tmp_path / "b")
    assert sorted(a) == sorted(NAMES)
    assert {n: m["digest"] for n, m in a.items()} == {n: m["digest"] for n, m in b.items()}
    assert tree(tmp_path / "a") == tree(tmp_path / "b")


def test_second_build_is_a_noop(tmp_path):
    bti.build_all(tmp_path)
    index = tmp_path / "busybox" / "index.json"
    before = index.stat()
    t0 = time.monotonic()
    bti.build_all(tmp_path)
    assert time.monotonic() - t0 < 1.0
    after = index.stat()
    assert (before.st_ino, before.st_mtime_ns) == (after.st_ino, after.st_mtime_ns)
    (tmp_path / ".stamp").write_text("stale\n")  # a changed input rebuilds
    bti.build_all(tmp_path)
    assert index.stat().st_ino != before.st_ino


def test_layouts_are_consistent(test_images_dir):
    """Every blob matches its name; every descriptor's size and every diff_id matches."""
    for name in NAMES:
        layout = test_images_dir / name
        assert json.loads((layout / "oci-layout").read_text()) == {"imageLayoutVersion": "1.0.0"}
        for p in (layout / "blobs" / "sha256").iterdir():
            assert sha(p.read_bytes()) == "sha256:" + p.name
        top = json.loads((layout / "index.json").read_text())["manifests"]
        assert [d["annotations"]["org.opencontainers.image.ref.name"] for d in top] == ["latest"]
        pending = [top[0]]
        while pending:
            desc = pending.pop()
            data = blob(layout, desc["digest"])
            assert len(data) == desc["size"]
            doc = json.loads(data)
            assert doc["mediaType"] == desc["mediaType"]
            if "manifests" in doc:
                pending += doc["manifests"]
                continue
            cfg = json.loads(blob(layout, doc["config"]["digest"]))
            assert len(blob(layout, doc["config"]["digest"])) == doc["config"]["size"]
            diff_ids = [sha(untar(blob(layout, l["digest"]), l["mediaType"])) for l in doc["layers"]]
            assert diff_ids == cfg["rootfs"]["diff_ids"]
            assert cfg["os"] == "linux"


def test_layers_are_normalized(test_images_dir):
    for name in ("busybox", "multilayer", "users"):
        for tar in layers(test_images_dir / name):
            infos = list(members(tar).values())
            assert {m.mtime for m in infos} == {bti.MTIME}
            assert all(m.uname == "" and m.gname == "" for m in infos)
            plain = [m.name for m in infos if not m.islnk()]
            assert plain == sorted(plain)


def test_busybox_contents(test_images_dir):
    (tar,) = layers(test_images_dir / "busybox")
    m = members(tar)
    assert m["bin/busybox"].isreg() and m["bin/busybox"].mode == 0o755
    assert member_data(tar, "bin/busybox") == Path("/bin/busybox").read_bytes()
    for applet in ("sh", "ls", "cat", "echo", "sleep", "httpd", "wget", "id", "hostname", "ip"):
        assert m[f"bin/{applet}"].issym() and m[f"bin/{applet}"].linkname == "busybox", applet
    assert m["tmp"].isdir() and m["tmp"].mode == 0o1777
    passwd = member_data(tar, "etc/passwd").decode()
    assert passwd.startswith("root:x:0:0:") and "\nnobody:x:65534:65534:" in passwd
    assert "nobody:x:65534:" in member_data(tar, "etc/group").decode()
    manifest, cfg = top_manifest(test_images_dir / "busybox")
    assert manifest["mediaType"] == bti.OCI_MANIFEST
    assert manifest["layers"][0]["mediaType"] == bti.OCI_LAYER_GZIP
    assert cfg["architecture"] == "amd64" and cfg["config"]["Cmd"] == ["sh"]
    assert 900_000 < manifest["layers"][0]["size"] < 1_400_000


def test_multilayer_has_whiteouts_opaque_dir_and_three_compressions(test_images_dir):
    layout = test_images_dir / "multilayer"
    manifest, _ = top_manifest(layout)
    types = [l["mediaType"] for l in manifest["layers"]]
    assert types == [bti.OCI_LAYER_GZIP, bti.OCI_LAYER_GZIP, bti.OCI_LAYER_TAR, bti.OCI_LAYER_ZSTD]
    busybox, = layers(test_images_dir / "busybox")
    base, add, wh, opq = layers(layout)
    assert base == busybox  # the base layer is shared with busybox
    assert manifest["layers"][0]["digest"] == top_manifest(test_images_dir / "busybox")[0]["layers"][0]["digest"]
    add_m = members(add)
    assert {"data/gone", "data/dir/a", "etc/motd"} <= set(add_m)
    assert add_m["data/hardlink"].islnk() and add_m["data/hardlink"].linkname == "data/keep"
    assert (add_m["data/owned"].uid, add_m["data/owned"].mode) == (1000, 0o640)
    assert {"data/.wh.gone", "etc/.wh.motd"} <= set(members(wh))
    assert {"data/dir/.wh..wh..opq", "data/dir/c"} <= set(members(opq))
    expect = bti.load_metadata(test_images_dir)["multilayer"]["expect"]
    assert "data/gone" in expect["absent"] and "data/dir/c" in expect["present"]


def test_users_images(test_images_dir):
    _, cfg = top_manifest(test_images_dir / "users")
    _, cfg_www = top_manifest(test_images_dir / "users-www")
    assert cfg["config"]["User"] == "1002" and cfg_www["config"]["User"] == "www-data"
    assert cfg["rootfs"] == cfg_www["rootfs"]
    tar = layers(test_images_dir / "users")[1]
    passwd = {l.split(":")[0]: l.split(":") for l in member_data(tar, "etc/passwd").decode().split()}
    group = {l.split(":")[0]: l.split(":") for l in member_data(tar, "etc/group").decode().split()}
    assert passwd["user1"][2:4] == ["1000", "1000"] and group["group50000"] == ["group50000", "x", "50000", "user1"]
    assert passwd["user2"][2:4] == ["1002", "1002"]
    assert passwd["www-data"][2:4] == ["33", "33"] and group["www-data"][2] == "33"
    assert passwd["user3"][2:4] == ["1003", "1004"] and group["group1004"][2] == "1004"


def test_docker_and_multiarch_variants(test_images_dir):
    m, _ = top_manifest(test_images_dir / "busybox-docker")
    assert m["mediaType"] == bti.DOCKER_MANIFEST and m["config"]["mediaType"] == bti.DOCKER_CONFIG
    assert [l["mediaType"] for l in m["layers"]] == [bti.DOCKER_LAYER_GZIP]
    meta = bti.load_metadata(test_images_dir)
    for name, index_type in (("multiarch", bti.OCI_INDEX), ("multiarch-docker", bti.DOCKER_LIST)):
        assert meta[name]["media_type"] == index_type
        assert set(meta[name]["platforms"]) == {"linux/amd64", "linux/arm64"}
        amd, cfg_amd = top_manifest(test_images_dir / name, "amd64")
        arm, cfg_arm = top_manifest(test_images_dir / name, "arm64")
        assert (cfg_amd["architecture"], cfg_arm["architecture"]) == ("amd64", "arm64")
        assert cfg_arm["variant"] == "v8"
        assert amd["layers"] == arm["layers"] and amd["config"] != arm["config"]
        assert meta[name]["config_digest"] == amd["config"]["digest"]


def test_pause_binary(test_images_dir, tmp_path):
    (tar,) = layers(test_images_dir / "pause")
    _, cfg = top_manifest(test_images_dir / "pause")
    assert cfg["config"]["Entrypoint"] == ["/pause"]
    exe = tmp_path / "pause"
    exe.write_bytes(member_data(tar, "pause"))
    exe.chmod(0o755)
    assert not _has_interp(exe.read_bytes()), "pause must be static"
    assert subprocess.run([exe, "-v"], capture_output=True, text=True, timeout=5).stdout.startswith("pycri-pause")
    for sig in (signal.SIGTERM, signal.SIGINT):
        # the shell forks a short-lived child and execs pause: pause must reap it
        p = subprocess.Popen(["/bin/busybox", "sh", "-c", f"/bin/busybox sleep 0.2 & exec {exe}"],
                             stderr=subprocess.DEVNULL)
        try:
            time.sleep(0.8)
            children = [d for d in Path("/proc").iterdir() if d.name.isdigit() and _ppid(d) == p.pid]
            assert children == [], "pause left a zombie child"
            assert p.poll() is None, "pause exited on its own"
            p.send_signal(sig)
            assert p.wait(5) == 0
        finally:
            if p.poll() is None:
                p.kill()
                p.wait()


def _has_interp(elf: bytes) -> bool:
    """True if an ELF64 file has a PT_INTERP program header (is dynamically linked)."""
    phoff = int.from_bytes(elf[0x20:0x28], "little")
    phentsize, phnum = int.from_bytes(elf[0x36:0x38], "little"), int.from_bytes(elf[0x38:0x3A], "little")
    return any(int.from_bytes(elf[phoff + i * phentsize:][:4], "little") == 3 for i in range(phnum))


def _ppid(procdir: Path) -> int | None:
    try:
        return int((procdir / "stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return None


# ---------------------------------------------------------------- the registry

def test_registry_serves_every_manifest(registry):
    assert registry.host.startswith("127.0.0.1:") and registry.url == "http://" + registry.host
    assert registry.ref("busybox") == f"{registry.host}/pycri-test/busybox:latest"
    assert sorted(registry.images) == sorted(NAMES)
    for name in NAMES:
        meta = registry.images[name]
        for ref in ("latest", registry.digest(name)):
            status, hdrs, body = http(f"{registry.url}/v2/pycri-test/{name}/manifests/{ref}",
                                      headers={"Accept": ACCEPT})
            assert status == 200, (name, body)
            assert hdrs["Docker-Content-Digest"] == registry.digest(name) == sha(body) == meta["digest"]
            assert hdrs["Content-Type"] == meta["media_type"]
        assert body == blob(Path(meta["layout"]), meta["digest"])  # byte for byte


def test_registry_blobs_match_digests(registry):
    seen = set()
    for name in NAMES:
        meta = registry.images[name]
        digests = [registry.config_digest(name)] + meta["layers"]
        for p in meta.get("platforms", {}).values():
            digests += [p["digest"], p["config_digest"]]
        for d in digests:
            kind = "manifests" if d in [p["digest"] for p in meta.get("platforms", {}).values()] else "blobs"
            status, _, body = http(f"{registry.url}/v2/pycri-test/{name}/{kind}/{d}", headers={"Accept": ACCEPT})
            assert status == 200 and sha(body) == d, (name, d)
            seen.add(d)
    assert len(seen) > 10


def test_push_layout_of_an_extra_image(registry, tmp_path):
    blobs = bti.Blobs()
    img = bti.Image([bti.layer([bti.F("hello", "hello\n")])], {"Cmd": ["/hello"]})
    top = bti.write_image(img, blobs)
    bti.write_layout(tmp_path / "extra", top, blobs)
    assert registry.push_layout("extra", tmp_path / "extra", "v1") == top["digest"]
    status, hdrs, _ = http(f"{registry.url}/v2/pycri-test/extra/manifests/v1", "HEAD",
                           {"Accept": bti.OCI_MANIFEST})
    assert status == 200 and hdrs["Docker-Content-Digest"] == top["digest"]
    sent = registry.pusher.uploaded
    registry.push_layout("extra", tmp_path / "extra", "v2")  # blobs exist: nothing uploaded
    assert registry.pusher.uploaded == sent
    assert registry.images["extra"]["tags"] == ["v1", "v2"]


def test_registry_factory_with_basic_auth(registry_factory, test_images_dir):
    reg = registry_factory(htpasswd={"alice": "s3cret"}, images=False)
    status, hdrs, _ = http(reg.url + "/v2/")
    assert status == 401 and hdrs["WWW-Authenticate"].startswith("Basic")
    assert http(reg.url + "/v2/", headers=basic("alice", "wrong"))[0] == 401
    assert http(reg.url + "/v2/", headers=basic("alice", "s3cret"))[0] == 200
    digest = reg.push_layout("busybox", test_images_dir / "busybox")
    url = f"{reg.url}/v2/pycri-test/busybox/manifests/latest"
    assert http(url, headers={"Accept": ACCEPT})[0] == 401
    status, hdrs, _ = http(url, headers={"Accept": ACCEPT, **basic("alice", "s3cret")})
    assert status == 200 and hdrs["Docker-Content-Digest"] == digest


def test_registry_stop_leaves_no_process(tmp_path):
    reg = RegistryServer(tmp_path).start()
    pid = reg.pid
    assert not gone(pid, timeout=0)
    assert http(reg.url + "/v2/")[0] == 200
    reg.stop()
    assert gone(pid, timeout=0)
    reg.stop()  # idempotent


# A subreaper stands in for init: it runs a "test process" that starts a registry, SIGKILLs
# it, then must reap the orphaned registry, killed by its parent-death signal.
_SUBREAPER = """
import ctypes, os, signal, subprocess, sys
ctypes.CDLL(None).prctl(36, 1, 0, 0, 0)  # PR_SET_CHILD_SUBREAPER
victim = subprocess.Popen([sys.executable, "-c", sys.argv[1]], stdout=subprocess.PIPE, text=True)
pid = int(victim.stdout.readline())
print(pid, flush=True)
victim.kill()
victim.wait()
signal.alarm(10)
_, status = os.waitpid(pid, 0)
print(os.WTERMSIG(status) if os.WIFSIGNALED(status) else "exit", flush=True)
"""


def test_registry_dies_with_a_killed_test_process(tmp_path):
    victim = textwrap.dedent(f"""
        import sys, time
        sys.path.insert(0, {str(REPO)!r})
        from tests.fixtures.registry import RegistryServer
        reg = RegistryServer({str(tmp_path)!r}).start()
        print(reg.pid, flush=True)
        time.sleep(60)
    """)
    r = subprocess.run([sys.executable, "-c", _SUBREAPER, victim], capture_output=True, text=True, timeout=60)
    lines = r.stdout.split()
    try:
        assert lines[1:] == [str(int(signal.SIGKILL))], r.stdout + r.stderr
    finally:
        if lines and not gone(int(lines[0]), timeout=0):
            os.kill(int(lines[0]), signal.SIGKILL)


def test_session_fixture_teardown_stops_the_registry(tmp_path):
    (tmp_path / "test_inner.py").write_text(textwrap.dedent(f"""
        from tests.fixtures.registry import registry  # noqa: F401
        def test_pid(registry):
            open({str(tmp_path / 'pid')!r}, "w").write(str(registry.pid))
    """))
    env = dict(os.environ, PYTHONPATH=str(REPO))
    r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                        str(tmp_path / "test_inner.py")], cwd=tmp_path, env=env,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    assert gone(int((tmp_path / "pid").read_text()), timeout=0)


def test_an_independent_client_reads_every_image(registry):
    """skopeo (containers/image) resolves each image to the digest we built, and picks platforms."""
    def inspect(name, *args):
        r = subprocess.run(["skopeo", "inspect", "--tls-verify=false", *args, "--format",
                            "{{.Digest}} {{.Architecture}} {{len .Layers}}",
                            "docker://" + registry.ref(name)], capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stderr
        return r.stdout.split()
    for name in NAMES:
        meta = registry.images[name]
        assert inspect(name) == [meta["digest"], "amd64", str(len(meta["layers"]))]
    assert inspect("multiarch", "--override-arch", "arm64")[1] == "arm64"
