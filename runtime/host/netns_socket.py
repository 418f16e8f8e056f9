"""Sockets that belong to another network namespace, made without forking (safe in a multithreaded daemon).

A socket belongs, for its whole life, to the network namespace its creator was in when it called socket(2);
connect/bind/send on it work in that namespace whatever the calling thread's namespace is later. Network
namespaces are per-thread, so a short-lived thread of our own: opens its current namespace
(/proc/thread-self/ns/net), setns()s into the target (a pin file such as /run/netns/x or /proc/<pid>/ns/net),
creates the socket, setns()s back, and ends. Only socket(2) runs inside the namespace; the caller then
connects (blocking or with asyncio) from any thread.
"""

from __future__ import annotations

import os
import socket
import threading

from runtime.host import linux


class NetnsError(OSError):
    """The namespace could not be entered (missing pin file, not a network namespace, no permission)."""


def socket_in_netns(netns_path: str, family: int = socket.AF_INET, type: int = socket.SOCK_STREAM,
                    proto: int = 0) -> socket.socket:
    """A new (close-on-exec) socket in the network namespace pinned at netns_path; "" means our own."""
    if not netns_path:
        return socket.socket(family, type | socket.SOCK_CLOEXEC, proto)
    result: list[socket.socket] = []
    error: list[BaseException] = []

    def make() -> None:
        try:
            result.append(_make(netns_path, family, type, proto))
        except BaseException as exc:  # noqa: BLE001 - handed to the caller's thread below
            error.append(exc)

    t = threading.Thread(target=make, name="pycri-netns-socket", daemon=True)
    t.start()
    t.join()
    if error:
        raise error[0]
    return result[0]


def _make(netns_path: str, family: int, type: int, proto: int) -> socket.socket:
    try:
        target = os.open(netns_path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as exc:
        raise NetnsError(exc.errno, f"cannot open network namespace {netns_path}: {exc.strerror}") from None
    try:
        own = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
        try:
            try:
                linux.setns(target, linux.CLONE_NEWNET)  # EINVAL: the file is not a network namespace
            except OSError as exc:
                raise NetnsError(exc.errno, f"cannot enter network namespace {netns_path}: {exc.strerror}") \
                    from None
            try:
                return socket.socket(family, type | socket.SOCK_CLOEXEC, proto)
            finally:
                # Back home. Should this fail, the thread still ends here and takes the namespace with it:
                # no other code ever runs in this thread.
                linux.setns(own, linux.CLONE_NEWNET)
        finally:
            os.close(own)
    finally:
        os.close(target)
