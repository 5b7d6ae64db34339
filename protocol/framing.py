"""Framing for stream transports (TCP, serial): COBS with a zero delimiter and a CRC-32.

    0x00 | COBS(frame | CRC-32 of frame, little-endian) | 0x00

One UDP datagram carries one bare frame and needs none of this. The deframer is sans-I/O: feed
it bytes in any chunking, pull events. Garbage between frames is skipped and reported; the next
zero byte always resynchronises; a chunk longer than the largest legal frame is dropped without
buffering it (hard memory bound).
"""

from __future__ import annotations

import binascii
from typing import NamedTuple, Union

from carecard.protocol import spec

_CRC_LEN = 4
MAX_ENCODED = spec.MAX_FRAME + _CRC_LEN + (spec.MAX_FRAME + _CRC_LEN) // 254 + 1


def cobs_encode(data: bytes) -> bytes:
    out = bytearray()
    block = bytearray()
    for byte in data:
        if byte == 0:
            out.append(len(block) + 1)
            out += block
            block.clear()
        else:
            block.append(byte)
            if len(block) == 254:
                out.append(255)
                out += block
                block.clear()
    out.append(len(block) + 1)
    out += block
    return bytes(out)


def cobs_decode(data: bytes) -> bytes | None:
    """The decoded bytes, or None when `data` is not valid COBS."""
    out = bytearray()
    i, n = 0, len(data)
    while i < n:
        code = data[i]
        if code == 0:
            return None
        end = i + code
        if end > n:
            return None
        out += data[i + 1:end]
        i = end
        if code < 255 and i < n:
            out.append(0)
    return bytes(out)


def encode_stream_frame(frame: bytes) -> bytes:
    if len(frame) > spec.MAX_FRAME:
        raise ValueError(f"frame of {len(frame)} bytes exceeds the maximum {spec.MAX_FRAME}")
    crc = binascii.crc32(frame).to_bytes(_CRC_LEN, "little")
    return b"\x00" + cobs_encode(frame + crc) + b"\x00"


class StreamFrame(NamedTuple):
    frame: bytes


class StreamGarbage(NamedTuple):
    reason: str  # "bad_cobs", "bad_crc", "too_short", "oversize"
    size: int


StreamEvent = Union[StreamFrame, StreamGarbage]


class StreamDeframer:
    """Feed bytes with `receive_data`, then call `next_event()` until it returns None."""

    def __init__(self, max_encoded: int = MAX_ENCODED):
        self._max = max_encoded
        self._buffer = bytearray()
        self._discarding = 0  # bytes dropped from an oversize chunk not yet reported
        self._events: list[StreamEvent] = []
        self.frames = 0
        self.garbage_bytes = 0

    def receive_data(self, data: bytes) -> None:
        start = 0
        while start < len(data):
            zero = data.find(b"\x00", start)
            end = len(data) if zero < 0 else zero
            piece = data[start:end]
            if self._discarding:
                self._discarding += len(piece)
            elif len(self._buffer) + len(piece) > self._max:
                self._discarding = len(self._buffer) + len(piece)
                self._buffer.clear()
            else:
                self._buffer += piece
            if zero < 0:
                break
            self._end_chunk()
            start = zero + 1

    def _end_chunk(self) -> None:
        if self._discarding:
            self._garbage("oversize", self._discarding)
            self._discarding = 0
            return
        if not self._buffer:
            return
        chunk = bytes(self._buffer)
        self._buffer.clear()
        decoded = cobs_decode(chunk)
        if decoded is None:
            self._garbage("bad_cobs", len(chunk))
        elif len(decoded) < spec.MIN_FRAME + _CRC_LEN:
            self._garbage("too_short", len(chunk))
        elif binascii.crc32(decoded[:-_CRC_LEN]).to_bytes(_CRC_LEN, "little") != decoded[-_CRC_LEN:]:
            self._garbage("bad_crc", len(chunk))
        else:
            self.frames += 1
            self._events.append(StreamFrame(decoded[:-_CRC_LEN]))

    def _garbage(self, reason: str, size: int) -> None:
        self.garbage_bytes += size
        self._events.append(StreamGarbage(reason, size))

    def next_event(self) -> StreamEvent | None:
        if self._events:
            return self._events.pop(0)
        return None

    @property
    def buffered(self) -> int:
        return len(self._buffer)
