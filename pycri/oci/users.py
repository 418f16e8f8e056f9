"""Resolving users and groups the way runc/containerd do: from the image's /etc/passwd and /etc/group.

`read_file(path)` returns a file of the container's root filesystem (e.g. from the image's layer snapshots) or None;
`image_file_reader` makes one for an image's layer snapshots, and `ImageUsers` resolves a container's user with it.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass, field
from typing import Callable

from pycri.api import api_pb2 as cri
from pycri.errors import InvalidArgument

ReadFile = Callable[[str], "bytes | None"]


@dataclass
class ResolvedUser:
    uid: int
    gid: int
    additional_gids: list[int] = field(default_factory=list)


def _passwd(read_file: ReadFile) -> list[list[str]]:
    return _table(read_file("/etc/passwd"), 7)


def _group(read_file: ReadFile) -> list[list[str]]:
    return _table(read_file("/etc/group"), 4)


def _table(data: bytes | None, width: int) -> list[list[str]]:
    rows = []
    for line in (data or b"").decode(errors="replace").splitlines():
        if not line or line.startswith("#"):
            continue
        parts = line.split(":")
        if len(parts) < width:
            parts += [""] * (width - len(parts))
        rows.append(parts)
    return rows


def _int(text: str) -> int | None:
    """An id of /etc/passwd or a USER: ASCII digits only (int() also reads "\u0660" as 0), below (uid_t)-1."""
    if not (text.isascii() and text.isdigit()):
        return None
    value = int(text)
    return value if value < 2**32 - 1 else None


def resolve(user: str, read_file: ReadFile, *, uid: int | None = None, gid: int | None = None,
            supplemental: list[int] | None = None, merge_groups: bool = True) -> ResolvedUser:
    """Resolve `user` ("", "name", "uid", "name:group", "uid:gid") with CRI overrides.

    uid/gid: run_as_user/run_as_group (they win over the image); supplemental: CRI supplemental_groups;
    merge_groups: SupplementalGroupsPolicy Merge (add the /etc/group memberships of the user) vs Strict.
    """
    name_part, _, group_part = user.partition(":")
    passwd = _passwd(read_file)
    username = None
    if uid is None:
        if not name_part:
            uid = 0
        elif _int(name_part) is not None:
            uid = _int(name_part)
        else:
            entry = next((p for p in passwd if p[0] == name_part), None)
            if entry is None or _int(entry[2]) is None:
                raise InvalidArgument(f"user {name_part!r} not found in the image's /etc/passwd")
            uid, username = int(entry[2]), name_part
    entry = next((p for p in passwd if _int(p[2]) == uid), None)
    if username is None and entry is not None:
        username = entry[0]
    if gid is None:
        if group_part:
            gid = _int(group_part)
            if gid is None:
                g = next((g for g in _group(read_file) if g[0] == group_part), None)
                if g is None or _int(g[2]) is None:
                    raise InvalidArgument(f"group {group_part!r} not found in the image's /etc/group")
                gid = int(g[2])
        elif entry is not None and _int(entry[3]) is not None:
            gid = int(entry[3])
        else:
            gid = 0
    groups: list[int] = []
    if merge_groups and username is not None:
        for g in _group(read_file):
            members = [m for m in g[3].split(",") if m]
            if username in members and _int(g[2]) is not None and int(g[2]) != gid:
                groups.append(int(g[2]))
    for extra in supplemental or []:
        if extra not in groups:
            groups.append(extra)
    return ResolvedUser(uid=uid, gid=gid, additional_gids=groups)


def lookup_uid(username: str, read_file: ReadFile) -> int:
    """run_as_username -> uid, from the image's /etc/passwd."""
    return resolve(username, read_file).uid


class ImageUsers:
    """The OCI `process.user` of containers, from their security context and their image's /etc/passwd and
    /etc/group, resolved once per image and user: an image's files never change."""

    def __init__(self) -> None:
        self._cache: dict[tuple, ResolvedUser] = {}

    def spec_user(self, config: cri.ContainerConfig, image, lowerdirs: list[str]) -> dict:
        """process.user for a container of `image` (an ImageRecord; its layers are `lowerdirs`)."""
        sc = config.linux.security_context if config.linux.HasField("security_context") else None
        read = image_file_reader(lowerdirs)
        image_user = (image.config.get("config") or {}).get("User") or ""
        uid = gid = None
        supplemental = []
        merge = True
        if sc is not None:
            # as containerd: run_as_username wins over run_as_user, and either replaces the image's whole User
            # (its group too); run_as_group alone is an error
            if sc.run_as_username:
                image_user = sc.run_as_username
            elif sc.HasField("run_as_user"):
                uid = sc.run_as_user.value
                image_user = ""
            if sc.HasField("run_as_group"):
                if not (sc.HasField("run_as_user") or sc.run_as_username):
                    raise InvalidArgument("run_as_group needs run_as_user or run_as_username")
                gid = sc.run_as_group.value
            supplemental = list(sc.supplemental_groups)
            merge = sc.supplemental_groups_policy != cri.SupplementalGroupsPolicy.Strict
        key = (image.id, image_user, uid, gid, tuple(supplemental), merge)
        user = self._cache.get(key)
        if user is None:  # an image's passwd/group never change: resolve once per image and user
            user = resolve(image_user, read, uid=uid, gid=gid, supplemental=supplemental, merge_groups=merge)
            if len(self._cache) > 4096:
                self._cache.clear()
            self._cache[key] = user
        # the primary gid leads the groups list, as containerd's spec has it (the kernel's groups then match what
        # ContainerStatus.user reports)
        return {"uid": user.uid, "gid": user.gid,
                "additionalGids": [user.gid] + [g for g in user.additional_gids if g != user.gid]}


def image_file_reader(lowerdirs: list[str]):
    """A reader of small files (e.g. /etc/passwd) from an image's layer snapshots, topmost layer first.

    Layers are untrusted: a path through a symlink is treated as absent rather than followed (a hostile image
    must not make us read a host file). Overlay semantics: a whiteout (char 0/0) or a non-directory in the way
    hides what lower layers have, and so does an opaque directory.
    """
    def read(path: str) -> bytes | None:
        parts = [p for p in path.split("/") if p and p not in (".", "..")]
        for layer in lowerdirs:
            current = layer
            for i, part in enumerate(parts):
                parent, current = current, os.path.join(current, part)
                try:
                    st = os.lstat(current)
                except FileNotFoundError:
                    if _opaque(parent):
                        return None
                    break  # not in this layer: look lower
                if stat.S_ISLNK(st.st_mode):
                    return None
                if i < len(parts) - 1:
                    if not stat.S_ISDIR(st.st_mode):
                        return None
                    continue
                if not stat.S_ISREG(st.st_mode):
                    return None
                with open(current, "rb") as f:
                    return f.read(1 << 20)
        return None

    return read


def _opaque(path: str) -> bool:
    try:
        return os.getxattr(path, "trusted.overlay.opaque", follow_symlinks=False) == b"y"
    except OSError:
        return False
