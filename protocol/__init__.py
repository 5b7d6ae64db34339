"""The CareCard wire protocol, host side.

The one definition is `spec.py` (plain data, also read by the card as `ccspec`). This package
builds the construct codec from it and adds authentication, encryption, replay detection and
stream framing. Public API:

    encode_frame(message, key) -> bytes
    decode_frame(frame, keys[, opened]) -> dict  keys: a key, a KeyRing, a mapping or a callable
    parse_opened(opened) -> dict               an opened frame (header + decrypted payload) again
    peek_header(frame), frame_tag(frame)
    KeyRing, FrameKeys
    ReplayWindow, Verdict                      duplicates versus replays, per device
    encode_stream_frame(frame) -> bytes, StreamDeframer    framing for TCP / serial
    ack.AckEncoder, ack.EMPTY_ACK_SIZE         the receiver's acks (a fast path for empty ones)
    ProtocolError and its subclasses (errors.py), each with a stable `reason`
"""

from carecard.protocol import spec
from carecard.protocol.codec import (
    MESSAGE_CODES,
    MESSAGE_TYPES,
    FrameHeader,
    KeyRing,
    decode_frame,
    encode_frame,
    frame_tag,
    parse_opened,
    peek_header,
)
from carecard.protocol.crypto import FrameKeys
from carecard.protocol.errors import (
    BadTag,
    BadVersion,
    FramingError,
    InvalidKey,
    InvalidMessage,
    MalformedFrame,
    OversizeFrame,
    ProtocolError,
    ReplayedFrame,
    TruncatedFrame,
    UnknownDevice,
    UnknownType,
)
from carecard.protocol.framing import StreamDeframer, encode_stream_frame
from carecard.protocol.replay import ReplayWindow, Verdict

__all__ = [
    "spec", "MESSAGE_CODES", "MESSAGE_TYPES", "FrameHeader", "KeyRing", "FrameKeys",
    "decode_frame", "parse_opened", "encode_frame", "frame_tag", "peek_header",
    "BadTag", "BadVersion", "FramingError", "InvalidKey", "InvalidMessage", "MalformedFrame",
    "OversizeFrame", "ProtocolError", "ReplayedFrame", "TruncatedFrame", "UnknownDevice",
    "UnknownType", "StreamDeframer", "encode_stream_frame", "ReplayWindow", "Verdict",
]
