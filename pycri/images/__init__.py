"""The image layer: references, registry client, content store, safe layer unpacking, snapshots, the manager.

    reference.py  parse/normalise image references (docker reference rules)
    manifests.py  manifest/index media types, checks of untrusted manifests, platform selection
    registry.py   distribution API client (httpx): mirrors, auth, manifest negotiation, blob streams
    content.py    verified blob store with resumable, de-duplicated downloads
    unpack.py     hostile-tar-safe layer extraction in overlayfs format
    snapshots.py  one extracted dir per chain id, short numeric names
    archive.py    import of OCI layout / docker save tarballs
    manager.py    ImageManager: pull, status, list, remove, GC, fs usage, import
    progress.py   pulls in flight and per-layer progress (`pycri images pulls`, pull metrics)

Decisions (and where they differ from containerd):
- A layer whose `..` climbs above its root, or that writes below a symlink, or hardlinks outside itself, is
  rejected as a whole (containerd clamps such paths into the root); a leading `/` is dropped like containerd does.
- A hardlink into a lower layer becomes a copy in the upper layer (overlay upper dirs cannot share inodes safely).
- RemoveImage by a tag, a digest reference or the id removes the image with all its names: the CRI's documented
  rule (api.proto: removing by a single tag removes all of its tags), as containerd does.
- Image size is containerd's image.Size(): index + platform manifest + config + compressed layers.
- Partial downloads survive a daemon restart (resumed with Range) for a day, then are dropped.
"""

from .manager import ImageAuthError, ImageError, ImageInUse, ImageManager, ImageNotFound, ImageRecord, ImageTooLarge

__all__ = ["ImageAuthError", "ImageError", "ImageInUse", "ImageManager", "ImageNotFound", "ImageRecord",
           "ImageTooLarge"]
