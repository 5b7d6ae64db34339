"""Acks, the receiver's downlink frames: encoded with the device's keys.

An ack without commands (most of them) takes a fast path: one struct pack of the header and the
payload, AES-CTR and the HMAC tag, no construct; the struct is derived from the spec's ack fields
and checked against the construct codec at import (else the codec is used). Acks with commands
go through the full codec (validated).
"""

from __future__ import annotations

import struct
from typing import Any

from carecard.protocol import spec
from carecard.protocol.codec import _STRUCT_CODES, HEADER_STRUCT, MESSAGE_TYPES, KeyRing, encode_frame
from carecard.protocol.errors import InvalidMessage

_ACK = MESSAGE_TYPES["ack"]


def _empty_ack_packer() -> struct.Struct | None:
    """The ack payload with no commands as one struct, derived from the spec's ack fields and
    checked against the construct codec (the one definition stays the definition)."""
    codes = []
    for name, kind, _doc in _ACK.fields:
        if kind in _STRUCT_CODES:
            codes.append(_STRUCT_CODES[kind])
        elif kind == "commands":
            codes.append("B")  # the count, 0
        else:
            return None
    packer = struct.Struct(">" + "".join(codes))
    sample = {"acked": 0x01020304, "commands": []}
    if packer.pack(*[sample[name] if kind != "commands" else 0 for name, kind, _d in _ACK.fields]) \
            != _ACK.payload.build(sample):
        return None
    return packer


_EMPTY_ACK = _empty_ack_packer()
# Bytes of an ack without commands: header, acked counter, command count, tag.
EMPTY_ACK_SIZE = spec.MIN_FRAME + len(_ACK.payload.build({"acked": 0, "commands": []}))
_pack_header = HEADER_STRUCT.pack
_ACK_CODE = _ACK.code
_DOWN = spec.DIR_DOWNLINK
_VERSION = spec.VERSION


class AckEncoder:
    """Encodes acks with the receiver's keys (a KeyRing, changed in place as keys change)."""

    def __init__(self, keyring: KeyRing):
        self.keyring = keyring
        self._keys_get = keyring.get

    def encode(self, device: int, counter: int, now: int, acked: int,
               commands: list[dict[str, Any]] | None = None, version: int = _VERSION) -> bytes:
        """The ack in protocol `version`: the version of the frame it answers (a card decodes
        only its own version; the ack's layout is the same in every version decoded)."""
        if not commands and _EMPTY_ACK is not None and spec.OLDEST_VERSION <= version <= _VERSION:
            keys = self._keys_get(device)
            if keys is None:
                raise InvalidMessage(f"no key for device {device}")
            body = _pack_header(version, _ACK_CODE, 0, device, counter, now) + \
                keys.crypt(device, counter, _DOWN, _EMPTY_ACK.pack(acked, 0))
            return body + keys.tag(body)
        return encode_frame({"type": "ack", "device": device, "counter": counter, "time": now,
                             "acked": acked, "commands": commands or []}, self.keyring, version)
