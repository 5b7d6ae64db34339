# Frame crypto on the card: HMAC-SHA256 over hashlib (MicroPython has no hmac module) and AES-CTR
# built from cryptolib's ECB mode (no port has CTR everywhere). The construction is the one in
# ccspec (protocol/spec.py); tests check it against the host's `cryptography` on MicroPython.
import hashlib
import struct

from cryptolib import aes

try:
    from micropython import const
except ImportError:  # CPython, for tooling only
    def const(x):
        return x

import ccspec

_BLOCK = const(16)
_SHA256_BLOCK = const(64)
_MODE_ECB = const(1)


class Hmac256:
    """HMAC-SHA256 with the padded keys computed once."""

    def __init__(self, key):
        if len(key) > _SHA256_BLOCK:
            key = hashlib.sha256(key).digest()
        padded = bytearray(_SHA256_BLOCK)
        padded[: len(key)] = key
        self._inner = bytes(b ^ 0x36 for b in padded)
        self._outer = bytes(b ^ 0x5C for b in padded)

    def digest(self, data):
        h = hashlib.sha256(self._inner)
        h.update(data)
        inner = h.digest()
        h = hashlib.sha256(self._outer)
        h.update(inner)
        return h.digest()


def hmac_sha256(key, data):
    return Hmac256(key).digest(data)


class FrameCrypto:
    """Derived keys of one device key: AES-CTR in place and the truncated tag."""

    def __init__(self, device_key):
        if len(device_key) not in (16, 32):
            raise ValueError("device key must be 16 or 32 bytes")
        enc_key = hmac_sha256(device_key, ccspec.KDF_ENC)[: len(device_key)]
        self._mac = Hmac256(hmac_sha256(device_key, ccspec.KDF_MAC))
        self._aes = aes(enc_key, _MODE_ECB)
        self._counter_block = bytearray(_BLOCK)
        self._stream = bytearray(_BLOCK)

    def crypt_into(self, buf, start, end, device, counter, direction):
        """XOR buf[start:end] with the keystream of (device, counter, direction), in place."""
        block = self._counter_block
        stream = self._stream
        struct.pack_into(">QIBB", block, 0, device, counter, direction, 0)
        index = 0
        pos = start
        while pos < end:
            struct.pack_into(">H", block, 14, index)
            self._aes.encrypt(block, stream)
            n = end - pos
            if n > _BLOCK:
                n = _BLOCK
            for j in range(n):
                buf[pos + j] ^= stream[j]
            pos += _BLOCK
            index += 1

    def tag(self, data):
        return self._mac.digest(data)[: ccspec.TAG_LEN]


def tags_equal(a, b):
    """Constant-time comparison (no early exit on the first differing byte)."""
    if len(a) != len(b):
        return False
    diff = 0
    for i in range(len(a)):
        diff |= a[i] ^ b[i]
    return diff == 0
