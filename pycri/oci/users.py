"""Resolving users and groups the way runc/containerd do: from the image's /etc/passwd and /etc/group.

`read_file(path)` returns a file of the container's root filesystem (e.g. from the image's layer snapshots) or None.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

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
