"""A minimal blocking D-Bus client: enough to call systemd's Manager methods (the systemd cgroup driver).

Hand-written rather than a library (jeepney, dbus-fast) because it runs in the per-pod monitor, whose private
memory is budgeted at well under 3 MiB per pod: this is socket + struct and a few hundred lines. It marshals
the D-Bus wire format (little endian) for the types y b u t i x s o g a ( ) v, authenticates with EXTERNAL
(the caller's uid), and reads method replies, skipping any signal that arrives meanwhile.
"""

from __future__ import annotations

import os
import socket
import struct

SYSTEM_BUS = "/run/dbus/system_bus_socket"
SYSTEMD_PRIVATE = "/run/systemd/private"

_METHOD_CALL, _METHOD_RETURN, _ERROR = 1, 2, 3
_FIXED = {"y": ("B", 1), "b": ("I", 4), "u": ("I", 4), "i": ("i", 4), "t": ("Q", 8), "x": ("q", 8),
          "n": ("h", 2), "q": ("H", 2), "d": ("d", 8)}


class DBusError(Exception):
    def __init__(self, name: str, message: str):
        super().__init__(f"{name}: {message}" if message else name)
        self.name = name


class Variant:
    """A value with its D-Bus signature, for `v` slots (e.g. unit properties)."""
    __slots__ = ("signature", "value")

    def __init__(self, signature: str, value):
        self.signature, self.value = signature, value


# ---- signatures ----

def _split(sig: str) -> list[str]:
    """Complete types of a signature: "sa(sv)u" -> ["s", "a(sv)", "u"]."""
    out, i = [], 0
    while i < len(sig):
        j = _end(sig, i)
        out.append(sig[i:j])
        i = j
    return out


def _end(sig: str, i: int) -> int:
    c = sig[i]
    if c == "a":
        return _end(sig, i + 1)
    if c in "({":
        close, depth, j = ")" if c == "(" else "}", 0, i
        while True:
            if sig[j] in "({":
                depth += 1
            elif sig[j] in ")}":
                depth -= 1
                if depth == 0:
                    return j + 1
            j += 1
    return i + 1


def _align(t: str) -> int:
    if t[0] in "({":
        return 8
    if t[0] in _FIXED:
        return _FIXED[t[0]][1]
    return {"s": 4, "o": 4, "a": 4, "g": 1, "v": 1}[t[0]]


# ---- marshalling ----

class _Writer:
    def __init__(self) -> None:
        self.buf = bytearray()

    def pad(self, n: int) -> None:
        self.buf += b"\0" * (-len(self.buf) % n)

    def write(self, t: str, v) -> None:
        c = t[0]
        if c in _FIXED:
            fmt, size = _FIXED[c]
            self.pad(size)
            self.buf += struct.pack("<" + fmt, int(bool(v)) if c == "b" else v)
        elif c in "so":
            data = v.encode()
            self.pad(4)
            self.buf += struct.pack("<I", len(data)) + data + b"\0"
        elif c == "g":
            data = v.encode()
            self.buf += bytes([len(data)]) + data + b"\0"
        elif c == "v":
            self.write("g", v.signature)
            self.write(v.signature, v.value)
        elif c == "(":
            self.pad(8)
            for sub, item in zip(_split(t[1:-1]), v):
                self.write(sub, item)
        elif c == "a":
            elem = t[1:]
            self.pad(4)
            at = len(self.buf)
            self.buf += b"\0\0\0\0"
            self.pad(_align(elem))
            start = len(self.buf)
            items = v.items() if elem[0] == "{" else v
            for item in items:
                self.write(elem, item)
            struct.pack_into("<I", self.buf, at, len(self.buf) - start)
        else:
            raise ValueError(f"unsupported D-Bus type {t!r}")


class _Reader:
    def __init__(self, data: bytes, pos: int = 0) -> None:
        self.data, self.pos = data, pos

    def pad(self, n: int) -> None:
        self.pos += -self.pos % n

    def read(self, t: str):
        c = t[0]
        if c in _FIXED:
            fmt, size = _FIXED[c]
            self.pad(size)
            (v,) = struct.unpack_from("<" + fmt, self.data, self.pos)
            self.pos += size
            return bool(v) if c == "b" else v
        if c in "so":
            self.pad(4)
            (n,) = struct.unpack_from("<I", self.data, self.pos)
            s = self.data[self.pos + 4:self.pos + 4 + n].decode(errors="replace")
            self.pos += 4 + n + 1
            return s
        if c == "g":
            n = self.data[self.pos]
            s = self.data[self.pos + 1:self.pos + 1 + n].decode()
            self.pos += n + 2
            return s
        if c == "v":
            sig = self.read("g")
            return self.read(sig)
        if c == "(":
            self.pad(8)
            return tuple(self.read(sub) for sub in _split(t[1:-1]))
        if c == "a":
            self.pad(4)
            (n,) = struct.unpack_from("<I", self.data, self.pos)
            self.pos += 4
            self.pad(_align(t[1:]))
            end, out = self.pos + n, []
            while self.pos < end:
                out.append(self.read(t[1:]))
            return out
        raise ValueError(f"unsupported D-Bus type {t!r}")


def marshal(signature: str, values: list) -> bytes:
    w = _Writer()
    for t, v in zip(_split(signature), values):
        w.write(t, v)
    return bytes(w.buf)


def unmarshal(signature: str, data: bytes) -> list:
    r = _Reader(data)
    return [r.read(t) for t in _split(signature)]


# ---- connection ----

class Connection:
    """One authenticated connection to a bus (or to systemd's private socket, which needs no Hello)."""

    def __init__(self, path: str, timeout: float = 30.0) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        self.sock.settimeout(timeout)
        self._serial = 0
        self._buf = b""
        try:
            self.sock.connect(path)
            self._auth()
            if path != SYSTEMD_PRIVATE:
                self.call("org.freedesktop.DBus", "/org/freedesktop/DBus", "org.freedesktop.DBus", "Hello")
        except BaseException:
            self.sock.close()
            raise

    def close(self) -> None:
        self.sock.close()

    def _auth(self) -> None:
        # BEGIN goes with AUTH, as sd-bus clients send it, and the first message only after the OK: systemd's
        # server leaves a message that arrives in the same read as BEGIN unprocessed until more data comes
        # (seen here: a third of the calls hung when BEGIN and the call were sent back to back).
        uid = str(os.geteuid()).encode().hex()
        self.sock.sendall(b"\0AUTH EXTERNAL " + uid.encode() + b"\r\nBEGIN\r\n")
        line = self._line()
        if not line.startswith(b"OK "):
            raise DBusError("org.freedesktop.DBus.Error.AuthFailed", line.decode(errors="replace"))

    def _line(self) -> bytes:
        while b"\r\n" not in self._buf:
            chunk = self.sock.recv(4096)
            if not chunk:
                raise DBusError("org.freedesktop.DBus.Error.NoReply", "connection closed during authentication")
            self._buf += chunk
        line, _, self._buf = self._buf.partition(b"\r\n")
        return line

    def _recv_exact(self, n: int) -> bytes:
        while len(self._buf) < n:
            chunk = self.sock.recv(max(65536, n - len(self._buf)))
            if not chunk:
                raise DBusError("org.freedesktop.DBus.Error.NoReply", "connection closed")
            self._buf += chunk
        data, self._buf = self._buf[:n], self._buf[n:]
        return data

    def call(self, destination: str, path: str, interface: str, member: str, signature: str = "",
             args: list | None = None) -> list:
        """Call a method and return its reply's values; a D-Bus error reply raises DBusError."""
        self._serial += 1
        serial = self._serial
        body = marshal(signature, args or []) if signature else b""
        fields = [(1, Variant("o", path)), (2, Variant("s", interface)), (3, Variant("s", member)),
                  (6, Variant("s", destination))]
        if signature:
            fields.append((8, Variant("g", signature)))
        w = _Writer()
        for t, v in zip(_split("yyyyuua(yv)"), [ord("l"), _METHOD_CALL, 0, 1, len(body), serial, fields]):
            w.write(t, v)
        w.pad(8)
        self.sock.sendall(bytes(w.buf) + body)
        while True:
            kind, headers, body = self._message()
            if kind in (_METHOD_RETURN, _ERROR) and headers.get(5) == serial:
                values = unmarshal(headers.get(8, ""), body) if headers.get(8) else []
                if kind == _ERROR:
                    raise DBusError(headers.get(4, "org.freedesktop.DBus.Error.Failed"),
                                    values[0] if values and isinstance(values[0], str) else "")
                return values
            # a signal or someone else's reply: not ours, skip it

    def _message(self) -> tuple[int, dict, bytes]:
        fixed = self._recv_exact(16)
        if fixed[0:1] != b"l":
            raise DBusError("org.freedesktop.DBus.Error.InvalidArgs", "big-endian messages are not supported")
        kind = fixed[1]
        body_len, _serial, fields_len = struct.unpack_from("<III", fixed, 4)
        rest = self._recv_exact(fields_len + (-(16 + fields_len) % 8))
        headers = dict(_Reader(fixed + rest, 12).read("a(yv)"))
        body = self._recv_exact(body_len)
        return kind, headers, body


def connect_systemd(timeout: float = 30.0) -> Connection:
    """systemd's manager: the system bus where a dbus-daemon runs, else systemd's private socket (root)."""
    last: Exception | None = None
    for path in (SYSTEM_BUS, SYSTEMD_PRIVATE):
        if not os.path.exists(path):
            continue
        try:
            return Connection(path, timeout)
        except (OSError, DBusError) as exc:
            last = exc
    raise DBusError("org.freedesktop.DBus.Error.FileNotFound",
                    f"cannot reach systemd over D-Bus ({SYSTEM_BUS}, {SYSTEMD_PRIVATE}): {last or 'no socket'}")
