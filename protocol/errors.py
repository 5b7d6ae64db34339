"""Typed protocol errors. Every rejection of a frame is one of these, never another exception.

Each error has a stable `reason` (a short snake_case word used as a metrics label and in logs) and
a message that says what is wrong, where, and why. Messages never contain key material.
"""

from __future__ import annotations


class ProtocolError(ValueError):
    """Base class: the frame or message was rejected."""

    reason = "invalid"


class TruncatedFrame(ProtocolError):
    reason = "truncated"


class OversizeFrame(ProtocolError):
    reason = "oversize"


class BadVersion(ProtocolError):
    reason = "bad_version"


class UnknownType(ProtocolError):
    reason = "unknown_type"


class UnknownDevice(ProtocolError):
    reason = "unknown_device"


class BadTag(ProtocolError):
    """Authentication failed: wrong key, corrupted or forged frame."""

    reason = "bad_tag"


class MalformedFrame(ProtocolError):
    """Authentic frame whose payload does not parse or holds out-of-range values."""

    reason = "malformed"


class ReplayedFrame(ProtocolError):
    """A counter that was already used with other content, or is older than the replay window."""

    reason = "replay"


class InvalidMessage(ProtocolError):
    """A message given to the encoder is incomplete or out of range (caller's error)."""

    reason = "invalid_message"


class InvalidKey(ProtocolError):
    reason = "invalid_key"


class FramingError(ProtocolError):
    """Stream framing problem (garbage, bad checksum, oversize chunk)."""

    reason = "framing"
