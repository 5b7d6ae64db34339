"""Frame crypto on the host: key derivation, AES-CTR keystream, truncated HMAC-SHA256 tag.

The construction is specified in spec.py; the card implements it on MicroPython's `cryptolib`
(firmware/lib/cccrypto.py) and the tests prove both agree with `cryptography`.
"""

from __future__ import annotations

import hashlib
import hmac
import struct

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from carecard.protocol import spec
from carecard.protocol.errors import InvalidKey

# Counter block: device u64 | counter u32 | direction u8 | 0 u8 | block index u16.
_NONCE_PREFIX = struct.Struct(">QIBB")
_ONE_BLOCK = struct.Struct(">QIBBH")
_TWO_BLOCKS = struct.Struct(">QIBBHQIBBH")
_BLOCK_INDEX = [i.to_bytes(2, "big") for i in range((spec.MAX_FRAME + 15) // 16)]
KEY_SIZES = (16, 32)
_TAG_LEN = spec.TAG_LEN
_SHA256_BLOCK = 64
_IPAD = bytes(x ^ 0x36 for x in range(256))  # translate tables: key bytes XOR the HMAC pads
_OPAD = bytes(x ^ 0x5C for x in range(256))


class FrameKeys:
    """Keys derived from one device key; cache one per device (derivation costs two HMACs)."""

    __slots__ = ("enc_key", "mac_key", "_ecb", "_inner", "_outer")

    def __init__(self, device_key: bytes):
        if not isinstance(device_key, (bytes, bytearray)) or len(device_key) not in KEY_SIZES:
            raise InvalidKey("device key must be 16 or 32 bytes (32 or 64 hex digits)")
        device_key = bytes(device_key)
        self.enc_key = hmac.digest(device_key, spec.KDF_ENC, "sha256")[: len(device_key)]
        self.mac_key = hmac.digest(device_key, spec.KDF_MAC, "sha256")
        # One ECB context, reused: CTR is built from it, as on the card.
        self._ecb = Cipher(algorithms.AES(self.enc_key), modes.ECB()).encryptor()
        # HMAC-SHA256 (RFC 2104) with the key's inner and outer pads hashed once: a tag is then
        # two copies of those states and two updates, half the cost of a one-shot HMAC that pads
        # and hashes the key again for every frame (the receiver tags two frames per uplink).
        block = self.mac_key.ljust(_SHA256_BLOCK, b"\0")  # 32 bytes: never longer than a block
        self._inner = hashlib.sha256(block.translate(_IPAD))
        self._outer = hashlib.sha256(block.translate(_OPAD))

    def tag(self, data: bytes) -> bytes:
        inner = self._inner.copy()
        inner.update(data)
        outer = self._outer.copy()
        outer.update(inner.digest())
        return outer.digest()[:_TAG_LEN]

    def crypt(self, device: int, counter: int, direction: int, data: bytes) -> bytes:
        """AES-CTR encrypt or decrypt (the same operation)."""
        if not data:
            return b""
        n = len(data)
        if n <= 16:  # most payloads are one or two blocks: one struct call builds them
            blocks = _ONE_BLOCK.pack(device, counter, direction, 0, 0)
        elif n <= 32:
            blocks = _TWO_BLOCKS.pack(device, counter, direction, 0, 0, device, counter, direction, 0, 1)
        else:
            prefix = _NONCE_PREFIX.pack(device, counter, direction, 0)
            blocks = b"".join([prefix + suffix for suffix in _BLOCK_INDEX[: (n + 15) >> 4]])
        stream = self._ecb.update(blocks)
        return (int.from_bytes(data, "big") ^ int.from_bytes(stream[:n], "big")).to_bytes(n, "big")


# Constant-time tag comparison: hmac.compare_digest itself (no Python wrapper on the hot path).
tags_equal = hmac.compare_digest
