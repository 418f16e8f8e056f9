"""ImageManager: pull, look up, list, remove and import images; the policy over registry, content and snapshots.

Image id = config digest. Names live in the `image_names` table: tags ("docker.io/library/busybox:latest") and
repo digests ("docker.io/library/busybox@sha256:<digest the reference resolved to>", the index digest for a
multi-platform image, as containerd's CRI reports). Size is what containerd's image.Size() reports: the sizes of the
descriptors walked for this platform (index, manifest, config, compressed layers).
Removing by tag drops that tag and, when the image has no tag left, the image; removing by id or by digest
reference drops the image with all its names. Garbage collection then deletes the blobs and snapshots no image, no
running pull and no container (`usage_provider`) still uses.
"""

from __future__ import annotations

import asyncio
import collections
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

from ..config import ImagesConfig
from ..log import get as get_logger
from ..node import tree_usage
from ..observe import metrics
from ..state.store import Store, dumps, loads
from . import reference
from .archive import ArchiveError, plan_archive
from .content import ContentError, ContentStore
from .manifests import ManifestError
from .progress import DONE, DOWNLOADING, UNPACKING, PullProgress, PullTracker
from .registry import AuthError, Credentials, NotFoundError, RegistryClient, RegistryError, Resolved
from .snapshots import Snapshots, chain_ids
from .unpack import LayerError, UnpackBudget, UnpackLimit, UnpackOptions

log = get_logger("images")

MAX_CONFIG_SIZE = 8 << 20
PARALLEL_DOWNLOADS = 3
FS_INFO_TTL = 30.0


class ImageError(Exception):
    """A pull or import failed for a reason that is not the caller's input (registry, content, layer)."""


class ImageNotFound(ImageError):
    """The registry does not have the image (or this platform of it)."""


class ImageAuthError(ImageError):
    """The registry refused the credentials, or wants some and none were given."""


class ImageTooLarge(ImageError):
    """The image unpacks past a bound of [images], or the disk has too little room left for it."""


class ImageInUse(ImageError):
    """RemoveImage of an image that a container uses as a volume (CRI-O's rule)."""


@dataclass
class ImageRecord:
    id: str
    repo_tags: list[str]
    repo_digests: list[str]
    size: int
    uid: int | None
    username: str
    pinned: bool
    config: dict  # the whole image config document (architecture, os, config{Env, Cmd, ...}, rootfs, history)
    chain_ids: list[str] = field(default_factory=list)
    layers: list[str] = field(default_factory=list)
    lowerdirs: list[str] = field(default_factory=list)  # overlay order: top layer first

    @property
    def spec(self) -> dict:
        """The runtime part of the config: Env, Entrypoint, Cmd, WorkingDir, User, StopSignal, ..."""
        return self.config.get("config") or {}

    def verbose_info(self) -> dict[str, str]:
        """ImageStatus verbose info, shaped as containerd's: {"info": JSON of chainID and imageSpec}."""
        top = self.chain_ids[-1] if self.chain_ids else ""
        return {"info": json.dumps({"chainID": top, "imageSpec": self.config})}


def user_from_config(user: Any) -> tuple[int | None, str]:
    """containerd's rule: "uid[:gid]" numeric -> (uid, ""), a name -> (None, name), empty -> (None, "")."""
    user = (user if isinstance(user, str) else "").split(":", 1)[0]
    if not user:
        return None, ""
    if re.fullmatch(r"[0-9]+", user):
        return int(user), ""
    return None, user


class ImageManager:
    """Images under `config.root` (blobs/, ingest/, snapshots/), metadata in `store`.

    Containers use an image's snapshot dirs directly as overlay lowerdirs, so the daemon sets `usage_provider` to a
    callable returning the chain ids its containers use; GC keeps those even after their image is removed, and the
    daemon calls `gc()` again when such a container is removed. Call `close()` (async) at shutdown.
    """

    def __init__(self, config: Any, store: Store, *, client: RegistryClient | None = None) -> None:
        self.config = config
        self.store = store
        root = Path(getattr(config, "root"))
        self.root = root
        self.content = ContentStore(root)
        self.snapshots = Snapshots(root, store)
        self.client = client or RegistryClient(getattr(config, "registries", {}) or {},
                                               progress_timeout=float(getattr(config,
                                                                              "image_pull_progress_timeout", 300)))
        self.allow_devices = os.geteuid() == 0
        self.usage_provider: Callable[[], Iterable[str]] | None = None  # chain ids used by containers
        self.volume_users: Callable[[str], list[str]] | None = None  # image id -> containers using it as a volume
        self.pulls = PullTracker(self.content)  # pulls in flight, for `pycri images pulls` and metrics
        self._leases: collections.Counter[str] = collections.Counter()
        self._configs: dict[str, dict] = {}
        self._tags: dict[str, tuple[str, ...]] = {}  # image id -> its tags (repo_tags), cleared when names change
        self.names_generation = 0  # counts changes of image names: what a container's kept messages depend on
        self._ensuring: dict[str, asyncio.Future] = {}
        self._usage: tuple[float, tuple[int, int]] | None = None
        self.snapshots.cleanup()
        self.content.clean_ingest()

    async def close(self) -> None:
        await self.client.aclose()

    # -- pull ------------------------------------------------------------------------------------------------
    async def pull(self, ref: str, auth: Any = None) -> str:
        """Pull `ref` (ValueError if it is invalid) and return the image id (config digest)."""
        parsed = reference.parse(ref)
        creds = Credentials.from_auth(auth)
        bound = log.bind(image=str(parsed))
        loop = asyncio.get_running_loop()
        started = loop.time()
        bound.info("pull started")
        progress = self.pulls.start(str(parsed))
        result = "error"
        try:
            resolved = await self.client.resolve(parsed, creds)
            manifest = resolved.manifest
            config_desc = manifest["config"]
            layers = manifest["layers"]
            progress.set_layers(layers)
            digests = list(resolved.raw) + [config_desc["digest"]] + [d["digest"] for d in layers]
            self._lease(digests)
            try:
                for digest, data in resolved.raw.items():
                    await asyncio.to_thread(self.content.write_bytes, digest, data)
                await self.content.fetch(config_desc["digest"], config_desc["size"],
                                         self.client.blob_opener(resolved, config_desc["digest"], creds, "config"),
                                         label="config")
                config = self._load_config(config_desc["digest"], len(layers), str(parsed))
                chains = chain_ids(config["rootfs"]["diff_ids"])
                self._lease(chains)
                try:
                    try:
                        await self._fetch_and_unpack(resolved, creds, layers, config, chains, str(parsed), progress)
                    except UnpackLimit:
                        await self._drop_partial(chains)
                        raise
                    size = sum(len(b) for b in resolved.raw.values()) + config_desc["size"] + sum(
                        d["size"] for d in layers)
                    names = [parsed.name + "@" + resolved.digest]
                    if parsed.tag:
                        names.append(str(parsed))
                    self._commit(config_desc["digest"], names, {
                        "manifest_digest": resolved.manifest_digest, "target_digest": resolved.digest,
                        "blobs": digests, "layers": [d["digest"] for d in layers],
                        "layer_media_types": [d.get("mediaType", "") for d in layers],
                        "chain_ids": chains, "size": size,
                    })
                finally:
                    self._release(chains)
            finally:
                self._release(digests)
        except (RegistryError, ManifestError, ContentError, LayerError) as exc:
            bound.warning("pull failed", error=str(exc))
            kind = (ImageNotFound if isinstance(exc, NotFoundError) else
                    ImageAuthError if isinstance(exc, AuthError) else
                    ImageTooLarge if isinstance(exc, UnpackLimit) else ImageError)
            result = "not_found" if kind is ImageNotFound else "auth_error" if kind is ImageAuthError else "error"
            raise kind(str(exc)) from exc
        except asyncio.CancelledError:
            result = "cancelled"
            raise
        else:
            result = "ok"
        finally:
            self.pulls.end(progress)
            metrics.image_pull(result, loop.time() - started)
        bound.info("pull done", image_id=config_desc["digest"], bytes=size, seconds=round(loop.time() - started, 3))
        return config_desc["digest"]

    async def ensure(self, ref: str, auth: Any = None) -> ImageRecord:
        """The local image for `ref`, pulled first if absent (the sandbox image for RunPodSandbox, like
        containerd's ensureImageExists). Concurrent calls for one reference share one pull."""
        record = await self.status(ref)
        if record is not None:
            return record
        key = str(reference.parse(ref))
        task = self._ensuring.get(key)
        if task is None:
            task = asyncio.ensure_future(self.pull(key, auth))
            self._ensuring[key] = task
            task.add_done_callback(lambda t: (self._ensuring.pop(key, None),
                                              None if t.cancelled() else t.exception()))
        image_id = await asyncio.shield(task)
        record = self._record(image_id)
        if record is None:
            raise ImageError(f"{ref}: image {image_id} vanished right after its pull")
        return record

    def _budget(self, image: str) -> UnpackBudget:
        """The bounds of one image's unpack, from the [images] config."""
        limits = getattr(self.config, "images", None) or ImagesConfig()
        return UnpackBudget(max_bytes=limits.max_unpacked_bytes, max_entries=limits.max_entries,
                            min_free_bytes=limits.min_free_bytes, min_free_inodes=limits.min_free_inodes,
                            path=self.snapshots.dir, image=image)

    async def _drop_partial(self, chains: list[str]) -> None:
        """After an image went past a bound: the layers of it that other extractions finished meanwhile go
        again, unless some image or container uses them (GC keeps those), so a refused image leaves nothing."""
        await self.snapshots.settle(chains)
        self._release(chains)
        try:
            await self.gc()
        finally:
            self._lease(chains)  # the caller releases them

    async def _fetch_and_unpack(self, resolved: Resolved, creds: Credentials | None, layers: list[dict],
                                config: dict, chains: list[str], image: str, progress: PullProgress) -> None:
        """Download layers in parallel (at most PARALLEL_DOWNLOADS per pull, as containerd) and unpack each as
        it arrives (extractions run in parallel too, see Snapshots.ensure)."""
        slots = asyncio.Semaphore(PARALLEL_DOWNLOADS)
        budget = self._budget(image)
        async def download(i: int, desc: dict) -> Path:
            if self.snapshots.exists(chains[i]):
                progress.layer(i, DONE)
                return self.content.path(desc["digest"])  # already unpacked; the blob may be GC'd later
            async with slots:
                progress.layer(i, DOWNLOADING)
                opener = self.client.blob_opener(resolved, desc["digest"], creds, f"layer {i}")
                started = asyncio.get_running_loop().time()
                path = await self.content.fetch(desc["digest"], desc["size"], opener, label=f"layer {i}")
                log.debug("layer fetched", image=image, layer=desc["digest"], bytes=desc["size"],
                          seconds=round(asyncio.get_running_loop().time() - started, 3))
                return path

        async def unpack(i: int, desc: dict) -> None:
            blob = await downloads[i]
            if progress.layers[i].phase != DONE:
                progress.layer(i, UNPACKING)
            await self.snapshots.ensure(chains[i], chains[:i][::-1], blob, media_type=desc.get("mediaType", ""),
                                        diff_id=config["rootfs"]["diff_ids"][i],
                                        options=UnpackOptions(allow_devices=self.allow_devices, budget=budget),
                                        image=image)
            progress.layer(i, DONE)

        downloads = [asyncio.ensure_future(download(i, d)) for i, d in enumerate(layers)]
        unpacks = [asyncio.ensure_future(unpack(i, d)) for i, d in enumerate(layers)]
        try:
            await asyncio.gather(*unpacks)
        finally:
            for task in downloads + unpacks:
                task.cancel()
            await asyncio.gather(*downloads, *unpacks, return_exceptions=True)

    def _load_config(self, digest: str, n_layers: int, image: str) -> dict:
        path = self.content.path(digest)
        if path.stat().st_size > MAX_CONFIG_SIZE:
            raise ContentError(f"{image}: image config {digest} is larger than {MAX_CONFIG_SIZE} bytes")
        try:
            config = json.loads(path.read_bytes())
        except ValueError as exc:
            raise ContentError(f"{image}: image config {digest} is not valid JSON") from exc
        if not isinstance(config, dict) or not isinstance(config.get("config") or {}, dict) or not isinstance(
                config.get("rootfs") or {}, dict):
            raise ContentError(f"{image}: image config {digest} is not an image config object")
        diff_ids = (config.get("rootfs") or {}).get("diff_ids")
        if not isinstance(diff_ids, list) or len(diff_ids) != n_layers:
            raise ContentError(f"{image}: image config rootfs.diff_ids does not match the {n_layers} layers")
        for d in diff_ids:
            try:
                reference.validate_digest(d)
            except ValueError as exc:
                raise ContentError(f"{image}: image config: {exc}") from exc
        return config

    def _lease(self, keys: Iterable[str]) -> None:
        self._leases.update(keys)

    def _release(self, keys: Iterable[str]) -> None:
        self._leases.subtract(keys)
        self._leases += collections.Counter()  # drop zero counts

    def _commit(self, image_id: str, names: list[str], data: dict) -> None:
        data = dict(data, id=image_id)
        self._usage = None
        self._names_changed()
        with self.store.transaction():
            self.store.execute("INSERT INTO images (id, data) VALUES (?, ?) ON CONFLICT(id) DO UPDATE SET "
                               "data = excluded.data", (image_id, dumps(data)))
            for name in names:
                self.store.execute("INSERT INTO image_names (name, image_id) VALUES (?, ?) ON CONFLICT(name) "
                                   "DO UPDATE SET image_id = excluded.image_id", (name, image_id))

    def tag(self, image_id: str, ref: str) -> str:
        """Give an existing image one more name (normalised); returns the name."""
        name = str(reference.parse(ref))
        if self._row(image_id) is None:
            raise ImageNotFound(f"image {image_id} not found")
        self._names_changed()
        with self.store.transaction():
            self.store.execute("INSERT INTO image_names (name, image_id) VALUES (?, ?) ON CONFLICT(name) "
                               "DO UPDATE SET image_id = excluded.image_id", (name, image_id))
        return name

    # -- lookups ---------------------------------------------------------------------------------------------
    def resolve_id(self, ref_or_id: str) -> str | None:
        """The image id for an id, unique id prefix, or reference; None when there is no such image."""
        text = (ref_or_id or "").strip()
        if not text:
            return None
        if reference.is_image_id(text):
            image_id = text if text.startswith("sha256:") else "sha256:" + text
            return image_id if self._row(image_id) else None
        try:
            name = str(reference.parse(text))
        except ValueError:
            name = None
        if name:
            row = self.store.query_one("SELECT image_id FROM image_names WHERE name = ?", (name,))
            if row:
                return row["image_id"]
        prefix = text[7:] if text.startswith("sha256:") else text
        if re.fullmatch(r"[0-9a-f]{1,63}", prefix):
            rows = self.store.query("SELECT id FROM images WHERE id LIKE ?", (f"sha256:{prefix}%",))
            if len(rows) == 1:
                return rows[0]["id"]
        return None

    def _names_changed(self) -> None:
        self._tags.clear()
        self.names_generation += 1

    def repo_tags(self, image_id: str) -> tuple[str, ...]:
        """The image's tags, sorted; () for an image without tags or gone. Cached until a name changes: every
        ContainerStatus and pod status shows one (pycri/containers/messages.py shown_image)."""
        tags = self._tags.get(image_id)
        if tags is None:
            tags = self._tags[image_id] = tuple(r["name"] for r in self.store.query(
                "SELECT name FROM image_names WHERE image_id = ? ORDER BY name", (image_id,)) if "@" not in r["name"])
        return tags

    def _row(self, image_id: str) -> dict | None:
        row = self.store.query_one("SELECT data FROM images WHERE id = ?", (image_id,))
        return loads(row["data"]) if row else None

    def _config(self, image_id: str) -> dict:
        if image_id not in self._configs:
            try:
                self._configs[image_id] = json.loads(self.content.read(image_id))
            except (OSError, ValueError) as exc:
                log.warning("image config unreadable", image_id=image_id, error=str(exc))
                return {}
        return self._configs[image_id]

    def _record(self, image_id: str) -> ImageRecord | None:
        data = self._row(image_id)
        if data is None:
            return None
        names = [r["name"] for r in self.store.query(
            "SELECT name FROM image_names WHERE image_id = ? ORDER BY name", (image_id,))]
        config = self._config(image_id)
        uid, username = user_from_config((config.get("config") or {}).get("User", ""))
        pinned = False
        sandbox = getattr(self.config, "sandbox_image", "")
        if sandbox:
            try:
                pinned = str(reference.parse(sandbox)) in names
            except ValueError:
                pinned = False
        chains = data.get("chain_ids", [])
        try:
            lowerdirs = self.snapshots.lowerdirs(chains)
        except KeyError:
            lowerdirs = []
        return ImageRecord(
            id=image_id, repo_tags=[n for n in names if "@" not in n], repo_digests=[n for n in names if "@" in n],
            size=int(data.get("size", 0)), uid=uid, username=username, pinned=pinned, config=config,
            chain_ids=chains, layers=data.get("layers", []), lowerdirs=lowerdirs)

    async def status(self, ref_or_id: str) -> ImageRecord | None:
        image_id = self.resolve_id(ref_or_id)
        return self._record(image_id) if image_id else None

    async def list(self, filter_ref: str | None = None) -> list[ImageRecord]:
        if filter_ref:
            record = await self.status(filter_ref)
            return [record] if record else []
        ids = [r["id"] for r in self.store.query("SELECT id FROM images ORDER BY id")]
        return [r for r in (self._record(i) for i in ids) if r is not None]

    def lowerdirs(self, image_id: str) -> list[str]:
        """Overlay lowerdirs, top layer first, for an image id or reference (KeyError when absent)."""
        resolved = self.resolve_id(image_id)
        data = self._row(resolved) if resolved else None
        if data is None:
            raise KeyError(image_id)
        return self.snapshots.lowerdirs(data.get("chain_ids", []))

    # -- remove and garbage ----------------------------------------------------------------------------------
    async def remove(self, ref_or_id: str) -> None:
        """Remove the image `ref_or_id` names, with every tag and digest name it has: the CRI's rule (a RemoveImage
        by one tag removes the image's other tags too), as containerd does. Idempotent: an unknown image is fine.
        ImageInUse while a container uses it as an image volume: as CRI-O, since a kubelet's image GC sees only the
        images containers run from (its rootfs image stays removable, as with containerd: the layers stay)."""
        image_id = self.resolve_id(ref_or_id)
        if image_id is None:
            return
        users = self.volume_users(image_id) if self.volume_users is not None else []
        if users:
            more = f" (and {len(users) - 1} more)" if len(users) > 1 else ""
            raise ImageInUse(f"image {ref_or_id} ({image_id}) is in use as a volume by container {users[0]}{more}")
        with self.store.transaction():
            self.store.execute("DELETE FROM images WHERE id = ?", (image_id,))  # names go with it (cascade)
        self._configs.pop(image_id, None)
        self._names_changed()
        log.info("image removed", image=ref_or_id, image_id=image_id)
        await self.gc()

    def _referenced(self) -> tuple[set[str], set[str]]:
        blobs: set[str] = set()
        chains: set[str] = set()
        for row in self.store.query("SELECT data FROM images"):
            data = loads(row["data"])
            blobs.update(data.get("blobs", []))
            chains.update(data.get("chain_ids", []))
        return blobs, chains

    async def gc(self) -> tuple[int, int]:
        """Delete unreferenced blobs and snapshots; returns (blobs, snapshots) removed. ImageError when a
        snapshot's files could not all be removed: its record is gone (nothing uses it again), and its dir is
        tried again at every gc and at the next start."""
        blobs, chains = self._referenced()
        leased = set(self._leases)
        blobs |= leased
        chains |= leased | self.snapshots.in_progress()
        if self.usage_provider is not None:
            chains |= set(self.usage_provider())
        self._usage = None
        dead_blobs = [d for d in self.content.digests() if d not in blobs]
        for digest in dead_blobs:  # synchronous: no pull can see a blob between "exists" and its removal
            self.content.delete(digest)
        dead = [c for c in self.snapshots.all() if c not in chains]
        nums = {c: self.snapshots.number(c) for c in dead}
        for chain in dead:
            self.store.execute("DELETE FROM snapshots WHERE chain_id = ?", (chain,))
        failures = await self.snapshots.remove_dirs(nums[chain] for chain in dead)
        if dead_blobs or dead:
            log.info("image garbage collected", blobs=len(dead_blobs), snapshots=len(dead))
        if failures:
            raise ImageError(f"{len(failures)} layer snapshot(s) could not be removed: {failures[0]}")
        return len(dead_blobs), len(dead)

    async def fs_info(self) -> tuple[int, int]:
        """(bytes used, inodes used) under the image root: blobs, ingests, snapshots. The walk is cached until
        an image is added or removed, at most FS_INFO_TTL seconds (the kubelet asks every few seconds)."""
        now = asyncio.get_running_loop().time()
        if self._usage is None or now - self._usage[0] > FS_INFO_TTL:
            self._usage = (now, await asyncio.to_thread(_usage, self.root))
        return self._usage[1]

    # -- import ----------------------------------------------------------------------------------------------
    async def import_archive(self, path: str | Path, progress=None) -> list[str]:
        """Import an OCI layout tarball or a `docker save` tarball; returns the image ids.
        progress(done_bytes, total_bytes) is called from a worker thread as the archive is read."""
        try:
            plans = await asyncio.to_thread(plan_archive, self.content, Path(path), progress)
        except (ArchiveError, ContentError) as exc:
            raise ImageError(f"import {path}: {exc}") from exc
        return await self._install_plans(plans)

    async def _install_plans(self, plans: list[dict]) -> list[str]:
        ids = []
        for plan in plans:
            config_digest = plan["config"]["digest"]
            self._lease(plan["blobs"])
            try:
                config = self._load_config(config_digest, len(plan["layers"]), "import")
                chains = chain_ids(config["rootfs"]["diff_ids"])
                budget = self._budget(f"import {config_digest}")
                for i, desc in enumerate(plan["layers"]):
                    await self.snapshots.ensure(chains[i], chains[:i][::-1],
                                                self.content.path(desc["digest"]), media_type=desc.get("mediaType", ""),
                                                diff_id=config["rootfs"]["diff_ids"][i],
                                                options=UnpackOptions(allow_devices=self.allow_devices,
                                                                      budget=budget),
                                                image=f"import {config_digest}")
                self._commit(config_digest, plan["names"], {
                    "manifest_digest": plan["manifest_digest"], "target_digest": plan["target_digest"],
                    "blobs": plan["blobs"], "layers": [d["digest"] for d in plan["layers"]],
                    "layer_media_types": [d.get("mediaType", "") for d in plan["layers"]],
                    "chain_ids": chains, "size": plan["size"]})
            except (ContentError, LayerError, ManifestError) as exc:
                raise (ImageTooLarge if isinstance(exc, UnpackLimit) else ImageError)(f"import: {exc}") from exc
            finally:
                self._release(plan["blobs"])
            log.info("image imported", image=",".join(plan["names"]) or config_digest, image_id=config_digest)
            ids.append(config_digest)
        return ids


def _usage(root: Path) -> tuple[int, int]:
    """(bytes, entries) below blobs/, ingest/ and snapshots/, a file with several links counted once."""
    used = inodes = 0
    seen: set[tuple[int, int]] = set()
    for directory in ("blobs", "ingest", "snapshots"):
        usage = tree_usage(root / directory, seen)
        used += usage.bytes
        inodes += usage.inodes
    return used, inodes
