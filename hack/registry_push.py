#!/usr/bin/env python3
"""Push an OCI image layout to a registry over the distribution API (plain HTTP).

Blobs go up monolithically (POST then PUT ?digest=), after a HEAD that skips
blobs already present and a cross-repository mount attempt for blobs this
pusher already sent to another repository. Manifests are PUT with their own
media type as Content-Type, children of an index before the index, and the
registry's Docker-Content-Digest is checked against the layout's digest.

Library use:  Pusher("http://127.0.0.1:5000").push_layout(layout, "pycri-test/busybox", "latest")
CLI:          registry_push.py URL LAYOUT_DIR REPO[:TAG] [--user U --password P]
"""
from __future__ import annotations

import argparse
import base64
import http.client
import json
import sys
from pathlib import Path
from urllib.parse import quote, urlsplit

INDEX_TYPES = {"application/vnd.oci.image.index.v1+json",
               "application/vnd.docker.distribution.manifest.list.v2+json"}


class PushError(RuntimeError):
    pass


class Pusher:
    """A distribution-API client that pushes layouts to one registry."""

    def __init__(self, url: str, auth: tuple[str, str] | None = None, timeout: float = 30):
        parts = urlsplit(url)
        if parts.scheme != "http":
            raise ValueError("only plain-http registries are supported: " + url)
        self.netloc = parts.netloc
        self.timeout = timeout
        self.headers = {}
        if auth:
            token = base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode()
            self.headers["Authorization"] = "Basic " + token
        self._conn = None
        self._blob_home: dict[str, str] = {}  # digest -> a repo that has it
        self.uploaded = 0  # blob bytes sent (for benchmarks)

    # -- HTTP
    def request(self, method: str, path: str, body: bytes = b"", headers=None):
        """One request on a kept-alive connection; returns (status, headers, body)."""
        hdrs = dict(self.headers, **(headers or {}))
        if method in ("PUT", "POST", "PATCH"):
            hdrs.setdefault("Content-Length", str(len(body)))
        for attempt in (0, 1):
            if self._conn is None:
                self._conn = http.client.HTTPConnection(self.netloc, timeout=self.timeout)
            try:
                self._conn.request(method, path, body=body or None, headers=hdrs)
                resp = self._conn.getresponse()
                data = resp.read()
                return resp.status, resp.headers, data
            except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError):
                self.close()
                if attempt:
                    raise

    def close(self):
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    @staticmethod
    def _path(location: str) -> str:
        parts = urlsplit(location)
        return parts.path + ("?" + parts.query if parts.query else "")

    def _expect(self, status, want, what, body=b""):
        if status not in want:
            raise PushError(f"{what}: HTTP {status}: {body[:300]!r}")

    # -- blobs
    def blob_exists(self, repo: str, digest: str) -> bool:
        status, _, _ = self.request("HEAD", f"/v2/{repo}/blobs/{digest}")
        return status == 200

    def push_blob(self, repo: str, digest: str, data: bytes) -> None:
        """Upload one blob unless the repo has it (HEAD) or can mount it."""
        if self.blob_exists(repo, digest):
            self._blob_home.setdefault(digest, repo)
            return
        path = f"/v2/{repo}/blobs/uploads/"
        home = self._blob_home.get(digest)
        if home and home != repo:
            path += f"?mount={quote(digest)}&from={quote(home)}"
        status, hdrs, body = self.request("POST", path)
        if status == 201:  # mounted from another repo
            return
        self._expect(status, (202,), f"start upload {repo}@{digest}", body)
        loc = self._path(hdrs["Location"])
        loc += ("&" if "?" in loc else "?") + "digest=" + quote(digest)
        status, hdrs, body = self.request(
            "PUT", loc, data, {"Content-Type": "application/octet-stream"})
        self._expect(status, (201,), f"finish upload {repo}@{digest}", body)
        self.uploaded += len(data)
        self._blob_home.setdefault(digest, repo)

    # -- manifests
    def push_manifest(self, repo: str, ref: str, media_type: str, data: bytes, digest: str) -> None:
        status, hdrs, body = self.request(
            "PUT", f"/v2/{repo}/manifests/{ref}", data, {"Content-Type": media_type})
        self._expect(status, (201,), f"put manifest {repo}:{ref}", body)
        got = hdrs.get("Docker-Content-Digest")
        if got and got != digest:
            raise PushError(f"registry digest {got} != layout digest {digest} for {repo}:{ref}")

    def push_tree(self, layout: Path, repo: str, desc: dict, ref: str) -> None:
        """Push the object `desc` names (and everything it references) as `ref`."""
        data = read_blob(layout, desc["digest"])
        doc = json.loads(data)
        if desc["mediaType"] in INDEX_TYPES:
            for child in doc["manifests"]:
                self.push_tree(layout, repo, child, child["digest"])
        else:
            for blob in [doc["config"]] + doc["layers"]:
                self.push_blob(repo, blob["digest"], read_blob(layout, blob["digest"]))
        self.push_manifest(repo, ref, desc["mediaType"], data, desc["digest"])

    def push_layout(self, layout, repo: str, tag: str = "latest", src_tag: str | None = None) -> str:
        """Push the layout's entry named `src_tag` (default: `tag`, else the only
        entry) to repo:tag. Returns the pushed manifest/index digest."""
        layout = Path(layout)
        desc = find_ref(layout, src_tag or tag, strict=src_tag is not None)
        self.push_tree(layout, repo, desc, tag)
        return desc["digest"]


def read_blob(layout: Path, digest: str) -> bytes:
    algo, hexd = digest.split(":", 1)
    return (layout / "blobs" / algo / hexd).read_bytes()


def find_ref(layout: Path, tag: str, strict: bool = False) -> dict:
    """The index.json descriptor annotated with ref.name == tag (or the only one)."""
    entries = json.loads((layout / "index.json").read_text())["manifests"]
    for e in entries:
        if e.get("annotations", {}).get("org.opencontainers.image.ref.name") == tag:
            return e
    if len(entries) == 1 and not strict:
        return entries[0]
    raise PushError(f"{layout}: no entry for tag {tag!r}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("url", help="registry base URL, e.g. http://127.0.0.1:5000")
    ap.add_argument("layout", type=Path)
    ap.add_argument("repo", help="repository[:tag]")
    ap.add_argument("--src-tag", default=None, help="ref.name in the layout (default: the tag)")
    ap.add_argument("--user")
    ap.add_argument("--password")
    a = ap.parse_args(argv)
    repo, _, tag = a.repo.partition(":")
    auth = (a.user, a.password or "") if a.user else None
    with Pusher(a.url, auth) as p:
        print(p.push_layout(a.layout, repo, tag or "latest", a.src_tag))
    return 0


if __name__ == "__main__":
    sys.exit(main())
