"""SPDY/3 framing against the draft: byte layouts written out by hand, header compression, and bad input."""

from __future__ import annotations

import struct
import zlib

import pytest

from pycri.streaming import spdy


def roundtrip(frame):
    enc, dec = spdy.Encoder(), spdy.Decoder()
    dec.feed(enc.encode(frame))
    frames = list(dec.frames())
    assert len(frames) == 1
    return frames[0]


@pytest.mark.parametrize("frame", [
    spdy.SynStream(1, {"streamtype": ["stdout"], "port": ["80"]}, associated_to=0, priority=3, slot=0,
                   flags=spdy.FLAG_FIN),
    spdy.SynStream(7, {"a": ["1", "2"]}, flags=spdy.FLAG_UNIDIRECTIONAL),
    spdy.SynReply(3, {"x": ["y"]}, flags=spdy.FLAG_FIN),
    spdy.RstStream(5, spdy.CANCEL),
    spdy.Settings({spdy.SETTINGS_INITIAL_WINDOW_SIZE: 1 << 20, 4: 100}),
    spdy.Ping(1),
    spdy.GoAway(9, spdy.GOAWAY_PROTOCOL_ERROR),
    spdy.HeadersFrame(11, {"k": ["v"]}),
    spdy.WindowUpdate(0, 12345),
    spdy.WindowUpdate(13, 1),
    spdy.Data(1, b"hello", spdy.FLAG_FIN),
    spdy.Data(3, b""),
])
def test_roundtrip_every_frame_type(frame):
    assert roundtrip(frame) == frame


def test_header_values_keep_their_bytes():
    """UTF-8 text reads as text, and bytes that are not UTF-8 survive a decode and re-encode unchanged."""
    frame = spdy.SynStream(1, {"x-name": ["caf\u00e9 \u2713"], "x-raw": [b"\xff\xfe".decode("utf-8", "surrogateescape")]})
    got = roundtrip(frame)
    assert got == frame and got.headers["x-name"] == ["caf\u00e9 \u2713"]
    raw = struct.pack(">II", 1, 6) + b"x-name" + struct.pack(">I", 5) + b"caf\xc3\xa9"  # as a Go peer sends it
    assert spdy.parse_header_block(raw) == {"x-name": ["caf\u00e9"]}


def test_dictionary_is_the_spdy3_one():
    # length from the draft; adler32 is what a zlib stream with this preset dictionary carries as DICTID
    assert len(spdy.DICTIONARY) == 1423
    assert spdy.DICTIONARY.startswith(b"\x00\x00\x00\x07options\x00\x00\x00\x04head")
    assert spdy.DICTIONARY.endswith(b"utf-,*,enq=0.")
    assert zlib.adler32(spdy.DICTIONARY) == 0xE3C6A7C2


def test_control_and_data_layout_by_hand():
    enc = spdy.Encoder()
    # control bit, version 3, type 6 (PING), flags 0, length 4, id
    assert enc.encode(spdy.Ping(0x11223344)) == bytes.fromhex("80030006 00000004 11223344")
    assert enc.encode(spdy.RstStream(5, 5)) == bytes.fromhex("80030003 00000008 00000005 00000005")
    assert enc.encode(spdy.WindowUpdate(3, 0x10000)) == bytes.fromhex("80030009 00000008 00000003 00010000")
    assert enc.encode(spdy.GoAway(7, 0)) == bytes.fromhex("80030007 00000008 00000007 00000000")
    # data: stream id, flags (FIN) in the top byte of the length word
    assert enc.encode(spdy.Data(1, b"ab", spdy.FLAG_FIN)) == bytes.fromhex("00000001 01000002 6162")
    assert enc.encode(spdy.Settings({7: 65536})) == bytes.fromhex("80030004 0000000c 00000001 00000007 00010000")


def _raw_block(headers: dict[str, str]) -> bytes:
    out = struct.pack(">I", len(headers))
    for k, v in headers.items():
        out += struct.pack(">I", len(k)) + k.encode() + struct.pack(">I", len(v)) + v.encode()
    return out


def test_decoder_reads_blocks_compressed_by_plain_zlib_with_one_context():
    # A peer's compressor: one zlib stream with the dictionary, Z_SYNC_FLUSH per block, as Go's framer does.
    z = zlib.compressobj(9, zlib.DEFLATED, 15, 8, zlib.Z_DEFAULT_STRATEGY, zdict=spdy.DICTIONARY)
    wire = b""
    for sid, st in ((1, "error"), (3, "stdout"), (5, "stdout")):
        block = z.compress(_raw_block({"streamtype": st})) + z.flush(zlib.Z_SYNC_FLUSH)
        payload = struct.pack(">IIBB", sid, 0, 0, 0) + block
        wire += struct.pack(">HHI", 0x8003, 1, len(payload)) + payload
    dec = spdy.Decoder()
    for i in range(0, len(wire), 7):  # arbitrary split points
        dec.feed(wire[i:i + 7])
    frames = [f for f in dec.frames()]
    assert [(f.stream_id, f.headers["streamtype"]) for f in frames] == [(1, ["error"]), (3, ["stdout"]),
                                                                        (5, ["stdout"])]


def test_encoder_blocks_inflate_with_plain_zlib():
    enc = spdy.Encoder()
    d = zlib.decompressobj(zdict=spdy.DICTIONARY)
    for i in range(3):
        raw = enc.encode(spdy.SynReply(2 * i + 1, {"status": ["200"], "n": [str(i)]}))
        block = raw[12:]
        assert spdy.parse_header_block(d.decompress(block)) == {"status": ["200"], "n": [str(i)]}


def test_partial_frames_wait_for_more_bytes():
    enc, dec = spdy.Encoder(), spdy.Decoder()
    wire = enc.encode(spdy.Data(1, b"x" * 100)) + enc.encode(spdy.Ping(3))
    dec.feed(wire[:50])
    assert list(dec.frames()) == []
    dec.feed(wire[50:])
    assert list(dec.frames()) == [spdy.Data(1, b"x" * 100), spdy.Ping(3)]


def test_unknown_control_frame_type_is_ignored():
    dec = spdy.Decoder()
    dec.feed(struct.pack(">HHI", 0x8003, 0x00F0, 2) + b"zz" + spdy.Encoder().encode(spdy.Ping(1)))
    assert list(dec.frames()) == [spdy.Ping(1)]


@pytest.mark.parametrize("wire, message", [
    (struct.pack(">HHI", 0x8002, 6, 4) + b"\0\0\0\1", "unsupported SPDY version 2"),
    (struct.pack(">HHI", 0x8003, 6, 3) + b"\0\0\1", "PING length 3"),
    (struct.pack(">HHI", 0x8003, 3, 8) + struct.pack(">II", 0, 1), "RST_STREAM with stream id 0"),
    (struct.pack(">HHI", 0x8003, 7, 4) + b"\0\0\0\0", "GOAWAY length 4"),
    (struct.pack(">HHI", 0x8003, 4, 8) + struct.pack(">II", 2, 0), "SETTINGS length"),
    (struct.pack(">II", 0, 1) + b"x", "DATA frame on stream 0"),
    (struct.pack(">HHI", 0x8003, 1, 14) + struct.pack(">IIBB", 1, 0, 0, 0) + b"\xde\xad\xbe\xef",
     "does not decompress"),
    (struct.pack(">HHI", 0x8003, 1, 6) + b"\0\0\0\1\0\0", "SYN_STREAM frame too short"),
])
def test_bad_frames_are_protocol_errors(wire, message):
    dec = spdy.Decoder()
    dec.feed(wire)
    with pytest.raises(spdy.ProtocolError, match=message):
        list(dec.frames())


def test_header_block_rules():
    with pytest.raises(spdy.ProtocolError, match="not lowercase"):
        spdy.parse_header_block(_raw_block({"StreamType": "x"}))
    with pytest.raises(spdy.ProtocolError, match="truncated"):
        spdy.parse_header_block(_raw_block({"a": "b"})[:-1])
    with pytest.raises(spdy.ProtocolError, match="trailing"):
        spdy.parse_header_block(_raw_block({"a": "b"}) + b"\0")
    dup = struct.pack(">I", 2) + (struct.pack(">I", 1) + b"a" + struct.pack(">I", 1) + b"b") * 2
    with pytest.raises(spdy.ProtocolError, match="repeated"):
        spdy.parse_header_block(dup)


def test_zero_window_update_is_a_stream_error():
    dec = spdy.Decoder()
    dec.feed(struct.pack(">HHI", 0x8003, 9, 8) + struct.pack(">II", 3, 0))
    with pytest.raises(spdy.StreamError) as exc:
        list(dec.frames())
    assert exc.value.stream_id == 3 and exc.value.status == spdy.PROTOCOL_ERROR


def test_oversized_frame_is_refused_before_buffering():
    dec = spdy.Decoder(max_payload=1024)
    dec.feed(struct.pack(">II", 1, 4096))
    with pytest.raises(spdy.ProtocolError, match="exceeds limit"):
        list(dec.frames())


def test_zlib_bomb_is_refused():
    z = zlib.compressobj(9, zlib.DEFLATED, 15, 8, zlib.Z_DEFAULT_STRATEGY, zdict=spdy.DICTIONARY)
    block = z.compress(_raw_block({"a": "x" * (spdy.MAX_HEADER_BLOCK + 10)})) + z.flush(zlib.Z_SYNC_FLUSH)
    payload = struct.pack(">I", 1) + block
    dec = spdy.Decoder()
    dec.feed(struct.pack(">HHI", 0x8003, 2, len(payload)) + payload)
    with pytest.raises(spdy.ProtocolError, match="too large"):
        list(dec.frames())
