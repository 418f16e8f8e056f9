"""The ends of containers and of their monitors, from the kernel, the moment they are recorded.

A monitor records a container's end in <state_dir>/<id>/exit.json (runtime/state.py) once the container's last
output is in its log, before it answers anyone. An ExitWatch holds an inotify watch on each watched container's
state dir (the exit file's close after writing, or its rename into place) and a pidfd for each watched monitor
(readable once the monitor has exited), all behind one epoll fd:

    watch = ExitWatch()
    watch.monitor(state_dir)                  # False: the monitor is not running
    watch.container(state_dir, cid)           # the exit record if the end is recorded already, else None
    loop.add_reader(watch.fileno(), ...)      # readable when something ended
    containers, monitors = watch.ended()      # never blocks: one epoll_wait when nothing ended

A reader that calls ended() before it answers never reports a container running whose end its monitor had
recorded before the question came: the kernel queues the event as the monitor writes the file. Where the kernel
refuses a watch (inotify's per-user limit, no fd left for a pidfd), that container's exit file, or that monitor,
is looked at by every ended() instead, and `warn` is told.
"""
from __future__ import annotations

import errno
import os
import select
import struct

from runtime import state
from runtime.host import linux

_EVENT = struct.Struct("iIII")  # struct inotify_event: wd, mask, cookie, len; then len bytes of NUL-padded name
_EXIT_FILE = b"exit.json"
# IN_MODIFY: a new exit file is written in place (runtime/state.py), complete once its one write() returns
_MASK = linux.IN_MODIFY | linux.IN_CLOSE_WRITE | linux.IN_MOVED_TO | linux.IN_ONLYDIR


def _no_warning(event: str, **fields) -> None:
    pass


class ExitWatch:
    def __init__(self, warn=_no_warning) -> None:
        self._warn = warn
        self._epoll = select.epoll()
        self._inotify = linux.inotify_init()
        self._epoll.register(self._inotify, select.EPOLLIN)
        self._dirs: dict[int, tuple[str, str]] = {}  # inotify wd -> (state_dir, container id)
        self._wds: dict[tuple[str, str], int] = {}
        self._pidfds: dict[str, int] = {}  # state_dir -> the pidfd of its monitor
        self._monitors: dict[int, str] = {}
        self._polled: set[tuple[str, str]] = set()  # containers the kernel would not watch
        self._polled_monitors: set[str] = set()

    def fileno(self) -> int:
        return self._epoll.fileno()

    def container(self, state_dir: str, cid: str) -> dict | None:
        """Watch for the container's exit record; the record itself if it is there already (None: not ended). A
        container whose state dir is gone (deleted by its monitor) has ended with no record: {}."""
        key = (state_dir, state.check_id(cid))
        base = os.path.join(state_dir, cid)
        if key not in self._wds and key not in self._polled:
            try:
                wd = linux.inotify_add_watch(self._inotify, base, _MASK)
            except OSError as exc:
                if exc.errno in (errno.ENOENT, errno.ENOTDIR):
                    return {}
                self._polled.add(key)
                self._warn("exit watch: the kernel refused an inotify watch; the exit file is polled instead",
                           container_id=cid, error=exc.strerror)
            else:
                self._wds[key] = wd
                self._dirs[wd] = key
        return state.read_json(os.path.join(base, "exit.json"))  # after the watch: a record written since is seen

    def forget_container(self, state_dir: str, cid: str) -> None:
        self._polled.discard((state_dir, cid))
        wd = self._wds.pop((state_dir, cid), None)
        if wd is not None:
            self._dirs.pop(wd, None)
            try:
                linux.inotify_rm_watch(self._inotify, wd)
            except OSError:
                pass  # the dir is gone: the kernel removed the watch itself

    def monitor(self, state_dir: str) -> bool:
        """Watch the monitor of state_dir (monitor.json names it); False when it is not running."""
        if state_dir in self._pidfds or state_dir in self._polled_monitors:
            return True
        m = state.read_json(os.path.join(state_dir, "monitor.json")) or {}
        pid = m.get("pid")
        if not isinstance(pid, int) or pid <= 0:
            return False
        try:
            fd = os.pidfd_open(pid)
        except ProcessLookupError:
            return False
        except OSError as exc:  # no fd left, say: the monitor is alive or not, the pidfd cannot tell
            if not state.monitor_alive(state_dir):
                return False
            self._polled_monitors.add(state_dir)
            self._warn("exit watch: no pidfd for a monitor; it is polled instead", state_dir=state_dir,
                       error=exc.strerror)
            return True
        if not linux.is_alive(pid, m.get("start_time")):  # checked after the open: the fd is that process's
            os.close(fd)
            return False
        self._epoll.register(fd, select.EPOLLIN)
        self._pidfds[state_dir] = fd
        self._monitors[fd] = state_dir
        return True

    def forget_monitor(self, state_dir: str) -> None:
        self._polled_monitors.discard(state_dir)
        fd = self._pidfds.pop(state_dir, None)
        if fd is not None:
            self._monitors.pop(fd, None)
            self._epoll.unregister(fd)
            os.close(fd)

    def ended(self) -> tuple[list[tuple[str, str]], list[str]]:
        """What ended since the last call: the (state_dir, id) of containers whose exit record appeared (or whose
        state dir was deleted), and the state dirs of monitors that exited; neither is watched any more. Never
        blocks."""
        containers: list[tuple[str, str]] = []
        monitors: list[str] = []
        for fd, _ in self._epoll.poll(0):
            if fd == self._inotify:
                containers += self._read_inotify()
            elif fd in self._monitors:
                state_dir = self._monitors[fd]
                self.forget_monitor(state_dir)
                monitors.append(state_dir)
        for key in [k for k in self._polled if _recorded(*k)]:
            self._polled.discard(key)
            containers.append(key)
        for state_dir in [d for d in self._polled_monitors if not state.monitor_alive(d)]:
            self._polled_monitors.discard(state_dir)
            monitors.append(state_dir)
        return list(dict.fromkeys(containers)), monitors  # (a write and its close are two events)

    def _read_inotify(self) -> list[tuple[str, str]]:
        out = []
        while True:
            try:
                buf = os.read(self._inotify, 65536)
            except BlockingIOError:
                return out
            pos = 0
            while pos + _EVENT.size <= len(buf):
                wd, mask, _cookie, length = _EVENT.unpack_from(buf, pos)
                name = buf[pos + _EVENT.size:pos + _EVENT.size + length].rstrip(b"\0")
                pos += _EVENT.size + length
                if mask & linux.IN_Q_OVERFLOW:  # events were lost: look at every watched container
                    out += [key for key in self._wds if _recorded(*key)]
                elif mask & linux.IN_IGNORED:  # the dir was deleted (or forget_container removed the watch)
                    key = self._dirs.pop(wd, None)
                    if key is not None:  # gone while watched: ended, its record with it
                        self._wds.pop(key, None)
                        out.append(key)
                elif name == _EXIT_FILE and wd in self._dirs:
                    out.append(self._dirs[wd])

    def close(self) -> None:
        for state_dir in list(self._pidfds):
            self.forget_monitor(state_dir)
        os.close(self._inotify)
        self._epoll.close()


def _recorded(state_dir: str, cid: str) -> bool:
    return state.read_json(os.path.join(state_dir, cid, "exit.json")) is not None
