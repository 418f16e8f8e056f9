"""SPDY/3.1 framing (draft-mbelshe-httpbis-spdy-00 section 2, SPDY/3.1 flow control): frames as dataclasses,
an incremental decoder and an encoder, each holding the connection's one zlib context for its direction.

Name/value header blocks are zlib-compressed with the SPDY/3 dictionary and flushed with Z_SYNC_FLUSH after every
block, so one stream of deflate data spans the whole connection.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass, field

VERSION = 3
DEFAULT_WINDOW = 64 * 1024
MAX_FRAME_PAYLOAD = (1 << 24) - 1
MAX_HEADER_BLOCK = 1 << 20  # decompressed bytes allowed per header block: a bound on zlib bombs

# control frame types
SYN_STREAM, SYN_REPLY, RST_STREAM, SETTINGS, PING, GOAWAY, HEADERS, WINDOW_UPDATE = 1, 2, 3, 4, 6, 7, 8, 9
FLAG_FIN = 0x01
FLAG_UNIDIRECTIONAL = 0x02

# RST_STREAM status codes
PROTOCOL_ERROR, INVALID_STREAM, REFUSED_STREAM, UNSUPPORTED_VERSION, CANCEL, INTERNAL_ERROR = 1, 2, 3, 4, 5, 6
FLOW_CONTROL_ERROR, STREAM_IN_USE, STREAM_ALREADY_CLOSED, FRAME_TOO_LARGE = 7, 8, 9, 11

# GOAWAY status codes
GOAWAY_OK, GOAWAY_PROTOCOL_ERROR, GOAWAY_INTERNAL_ERROR = 0, 1, 2

SETTINGS_INITIAL_WINDOW_SIZE = 7


def _dictionary() -> bytes:
    """The SPDY/3 header compression dictionary (draft section 2.6.10.1), 1423 bytes."""
    words = (
        "options head post put delete trace accept accept-charset accept-encoding accept-language accept-ranges age "
        "allow authorization cache-control connection content-base content-encoding content-language content-length "
        "content-location content-md5 content-range content-type date etag expect expires from host if-match "
        "if-modified-since if-none-match if-range if-unmodified-since last-modified location max-forwards pragma "
        "proxy-authenticate proxy-authorization range referer retry-after server te trailer transfer-encoding upgrade "
        "user-agent vary via warning www-authenticate method get status"
    ).split() + ["200 OK", "version", "HTTP/1.1", "url", "public", "set-cookie", "keep-alive", "origin"]
    tail = (
        "100101201202205206300302303304305306307402405406407408409410411412413414415416417502504505"
        "203 Non-Authoritative Information204 No Content301 Moved Permanently400 Bad Request401 Unauthorized"
        "403 Forbidden404 Not Found500 Internal Server Error501 Not Implemented503 Service Unavailable"
        "Jan Feb Mar Apr May Jun Jul Aug Sept Oct Nov Dec 00:00:00 Mon, Tue, Wed, Thu, Fri, Sat, Sun, GMT"
        "chunked,text/html,image/png,image/jpg,image/gif,application/xml,application/xhtml+xml,text/plain,"
        "text/javascript,publicprivatemax-age=gzip,deflate,sdchcharset=utf-8charset=iso-8859-1,utf-,*,enq=0."
    )
    return b"".join(struct.pack(">I", len(w)) + w.encode() for w in words) + tail.encode()


DICTIONARY = _dictionary()
assert len(DICTIONARY) == 1423


class ProtocolError(Exception):
    """The peer broke the framing: the connection cannot continue (answer with GOAWAY and close)."""


class StreamError(Exception):
    """A frame is bad for one stream only: answer with RST_STREAM(status) and carry on."""

    def __init__(self, stream_id: int, status: int, message: str) -> None:
        super().__init__(message)
        self.stream_id = stream_id
        self.status = status


Headers = dict[str, list[str]]


@dataclass
class SynStream:
    stream_id: int
    headers: Headers
    associated_to: int = 0
    priority: int = 0
    slot: int = 0
    flags: int = 0


@dataclass
class SynReply:
    stream_id: int
    headers: Headers
    flags: int = 0


@dataclass
class RstStream:
    stream_id: int
    status: int


@dataclass
class Settings:
    values: dict[int, int] = field(default_factory=dict)  # id -> value
    flags: int = 0


@dataclass
class Ping:
    ping_id: int


@dataclass
class GoAway:
    last_good_stream_id: int
    status: int = GOAWAY_OK


@dataclass
class HeadersFrame:
    stream_id: int
    headers: Headers
    flags: int = 0


@dataclass
class WindowUpdate:
    stream_id: int
    delta: int


@dataclass
class Data:
    stream_id: int
    data: bytes
    flags: int = 0

    @property
    def fin(self) -> bool:
        return bool(self.flags & FLAG_FIN)


Frame = SynStream | SynReply | RstStream | Settings | Ping | GoAway | HeadersFrame | WindowUpdate | Data


def _control(ftype: int, flags: int, payload: bytes) -> bytes:
    if len(payload) > MAX_FRAME_PAYLOAD:
        raise ValueError("frame payload too large")
    return struct.pack(">HHI", 0x8000 | VERSION, ftype, (flags << 24) | len(payload)) + payload


def _pack_headers(headers: Headers) -> bytes:
    out = [struct.pack(">I", len(headers))]
    for name, values in headers.items():
        n = name.lower().encode("utf-8", "surrogateescape")
        v = b"\x00".join(x.encode("utf-8", "surrogateescape") for x in values)
        out.append(struct.pack(">I", len(n)) + n + struct.pack(">I", len(v)) + v)
    return b"".join(out)


class Encoder:
    """Serializes frames; owns the sending direction's zlib context."""

    def __init__(self) -> None:
        self._z = zlib.compressobj(zlib.Z_DEFAULT_COMPRESSION, zlib.DEFLATED, 15, 8, zlib.Z_DEFAULT_STRATEGY,
                                   zdict=DICTIONARY)

    def _block(self, headers: Headers) -> bytes:
        raw = _pack_headers(headers)
        return self._z.compress(raw) + self._z.flush(zlib.Z_SYNC_FLUSH)

    def encode(self, f: Frame) -> bytes:
        if isinstance(f, Data):
            if len(f.data) > MAX_FRAME_PAYLOAD:
                raise ValueError("data frame too large")
            return struct.pack(">II", f.stream_id & 0x7FFFFFFF, (f.flags << 24) | len(f.data)) + f.data
        if isinstance(f, SynStream):
            head = struct.pack(">IIBB", f.stream_id, f.associated_to, (f.priority & 7) << 5, f.slot)
            return _control(SYN_STREAM, f.flags, head + self._block(f.headers))
        if isinstance(f, SynReply):
            return _control(SYN_REPLY, f.flags, struct.pack(">I", f.stream_id) + self._block(f.headers))
        if isinstance(f, HeadersFrame):
            return _control(HEADERS, f.flags, struct.pack(">I", f.stream_id) + self._block(f.headers))
        if isinstance(f, RstStream):
            return _control(RST_STREAM, 0, struct.pack(">II", f.stream_id, f.status))
        if isinstance(f, Settings):
            body = struct.pack(">I", len(f.values)) + b"".join(
                struct.pack(">II", k & 0xFFFFFF, v) for k, v in f.values.items())
            return _control(SETTINGS, f.flags, body)
        if isinstance(f, Ping):
            return _control(PING, 0, struct.pack(">I", f.ping_id))
        if isinstance(f, GoAway):
            return _control(GOAWAY, 0, struct.pack(">II", f.last_good_stream_id, f.status))
        if isinstance(f, WindowUpdate):
            return _control(WINDOW_UPDATE, 0, struct.pack(">II", f.stream_id, f.delta))
        raise TypeError(f"not a SPDY frame: {f!r}")


def _need(payload: bytes, n: int, what: str) -> None:
    if len(payload) < n:
        raise ProtocolError(f"{what} frame too short: {len(payload)} bytes, need {n}")


class Decoder:
    """Incremental frame parser: feed bytes, then iterate whole frames. Owns the receiving zlib context."""

    def __init__(self, max_payload: int = MAX_FRAME_PAYLOAD) -> None:
        self._buf = bytearray()
        self._z = zlib.decompressobj(zdict=DICTIONARY)
        self._max_payload = max_payload

    def feed(self, data: bytes) -> None:
        self._buf += data

    def frames(self):
        """Yield every complete frame in the buffer; raises ProtocolError or StreamError on a bad one."""
        while len(self._buf) >= 8:
            first, second = struct.unpack_from(">II", self._buf)
            length = second & 0xFFFFFF
            if length > self._max_payload:
                raise ProtocolError(f"frame length {length} exceeds limit {self._max_payload}")
            if len(self._buf) < 8 + length:
                return
            payload = bytes(self._buf[8:8 + length])
            del self._buf[:8 + length]
            flags = second >> 24
            if first & 0x80000000:
                version = (first >> 16) & 0x7FFF
                if version != VERSION:
                    raise ProtocolError(f"unsupported SPDY version {version}")
                frame = self._control(first & 0xFFFF, flags, payload)
                if frame is not None:
                    yield frame
            else:
                stream_id = first & 0x7FFFFFFF
                if stream_id == 0:
                    raise ProtocolError("DATA frame on stream 0")
                yield Data(stream_id, payload, flags)

    def _headers(self, block: bytes) -> Headers:
        try:
            raw = self._z.decompress(block, MAX_HEADER_BLOCK + 1)
        except zlib.error as exc:
            raise ProtocolError(f"header block does not decompress: {exc}") from None
        if len(raw) > MAX_HEADER_BLOCK or self._z.unconsumed_tail:
            raise ProtocolError("header block too large")
        return parse_header_block(raw)

    def _control(self, ftype: int, flags: int, p: bytes) -> Frame | None:
        if ftype == SYN_STREAM:
            _need(p, 10, "SYN_STREAM")
            sid, assoc, prio, slot = struct.unpack_from(">IIBB", p)
            headers = self._headers(p[10:])  # always inflate: the zlib context must stay in step
            sid &= 0x7FFFFFFF
            if sid == 0:
                raise ProtocolError("SYN_STREAM with stream id 0")
            return SynStream(sid, headers, assoc & 0x7FFFFFFF, prio >> 5, slot, flags)
        if ftype in (SYN_REPLY, HEADERS):
            _need(p, 4, "SYN_REPLY/HEADERS")
            (sid,) = struct.unpack_from(">I", p)
            headers = self._headers(p[4:])
            sid &= 0x7FFFFFFF
            if sid == 0:
                raise ProtocolError("SYN_REPLY/HEADERS with stream id 0")
            cls = SynReply if ftype == SYN_REPLY else HeadersFrame
            return cls(sid, headers, flags)
        if ftype == RST_STREAM:
            if len(p) != 8:
                raise ProtocolError(f"RST_STREAM length {len(p)}, must be 8")
            sid, status = struct.unpack(">II", p)
            if sid & 0x7FFFFFFF == 0 or status == 0:
                raise ProtocolError("RST_STREAM with stream id 0 or status 0")
            return RstStream(sid & 0x7FFFFFFF, status)
        if ftype == SETTINGS:
            _need(p, 4, "SETTINGS")
            (n,) = struct.unpack_from(">I", p)
            if len(p) != 4 + 8 * n:
                raise ProtocolError(f"SETTINGS length {len(p)} does not match {n} entries")
            values = {}
            for i in range(n):
                idf, value = struct.unpack_from(">II", p, 4 + 8 * i)
                values[idf & 0xFFFFFF] = value
            return Settings(values, flags)
        if ftype == PING:
            if len(p) != 4:
                raise ProtocolError(f"PING length {len(p)}, must be 4")
            return Ping(struct.unpack(">I", p)[0])
        if ftype == GOAWAY:
            if len(p) != 8:
                raise ProtocolError(f"GOAWAY length {len(p)}, must be 8")
            last, status = struct.unpack(">II", p)
            return GoAway(last & 0x7FFFFFFF, status)
        if ftype == WINDOW_UPDATE:
            if len(p) != 8:
                raise ProtocolError(f"WINDOW_UPDATE length {len(p)}, must be 8")
            sid, delta = struct.unpack(">II", p)
            delta &= 0x7FFFFFFF
            if delta == 0:
                raise StreamError(sid & 0x7FFFFFFF, PROTOCOL_ERROR, "WINDOW_UPDATE with delta 0")
            return WindowUpdate(sid & 0x7FFFFFFF, delta)
        return None  # the draft: unknown control frame types are ignored


def parse_header_block(raw: bytes) -> Headers:
    """Decode an uncompressed name/value block; names must be lowercase and unique (draft 2.6.10)."""
    try:
        (n,) = struct.unpack_from(">I", raw)
        pos = 4
        headers: Headers = {}
        for _ in range(n):
            (ln,) = struct.unpack_from(">I", raw, pos)
            name = raw[pos + 4:pos + 4 + ln]
            pos += 4 + ln
            (lv,) = struct.unpack_from(">I", raw, pos)
            value = raw[pos + 4:pos + 4 + lv]
            pos += 4 + lv
            if len(name) != ln or len(value) != lv or ln == 0:
                raise ProtocolError("truncated or empty name in header block")
            # Go's SPDY peers send header strings as their bytes (UTF-8 in practice): decoded as UTF-8, any
            # other byte kept as a surrogate, so a value comes back out of _pack_headers byte for byte
            key = name.decode("utf-8", "surrogateescape")
            if key != key.lower() or key in headers:
                raise ProtocolError(f"header name {key!r} not lowercase or repeated")
            headers[key] = value.decode("utf-8", "surrogateescape").split("\x00")
    except struct.error:
        raise ProtocolError("truncated header block") from None
    if pos != len(raw):
        raise ProtocolError("trailing bytes in header block")
    return headers


def header(headers: Headers, name: str) -> str | None:
    values = headers.get(name)
    return values[0] if values else None
