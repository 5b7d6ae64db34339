"""The device key file: one JSON object, readable by its owner only.

    {"version": 1, "keys": {"861234567890123": "<32 or 64 hex digits>", ...}}

Device ids are IMEIs written as decimal strings. Keys never appear in errors or logs: messages
name the device and the problem only. Written atomically (temporary file, fsync, rename) with
mode 0600.
"""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

from carecard.host.files import read_input_file
from carecard.protocol.crypto import KEY_SIZES

FORMAT_VERSION = 1


class KeyFileError(ValueError):
    """The key file or a key in it is unusable; the message says which and how to fix it."""


def parse_key_hex(text: str, where: str = "key") -> bytes:
    cleaned = text.strip().replace(" ", "").replace(":", "")
    try:
        key = bytes.fromhex(cleaned)
    except ValueError:
        raise KeyFileError(f"{where}: not hexadecimal (expected 32 or 64 hex digits)") from None
    if len(key) not in KEY_SIZES:
        raise KeyFileError(f"{where}: {len(key)} bytes; a device key is 16 or 32 bytes "
                           "(32 or 64 hex digits)")
    return key


def parse_device_id(text: str | int, where: str = "device id") -> int:
    value = str(text).strip()
    if not value.isdigit() or not 1 <= len(value) <= 19 or int(value) >= 2**64:
        raise KeyFileError(f"{where}: {value[:32]!r} is not a device id (the IMEI, up to 15 digits)")
    return int(value)


def load_keys(path: Path) -> dict[int, bytes]:
    raw = read_input_file(path, KeyFileError, where=f"key file {path}",
                          missing_note=": create it with `carecard devices add` or point --keys "
                          "at the right file")
    expected = '{"version": 1, "keys": {IMEI: HEX}}'
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise KeyFileError(f"key file {path}: binary data, not a key file (a key file is JSON "
                           f"text: {expected})") from None
    try:
        document = json.loads(text)
    except json.JSONDecodeError as exc:
        raise KeyFileError(f"key file {path}: not valid JSON at line {exc.lineno} column "
                           f"{exc.colno}: {exc.msg} (a key file is {expected})") from None
    if not isinstance(document, dict) or not isinstance(document.get("keys"), dict):
        raise KeyFileError(f'key file {path}: expected {{"version": 1, "keys": {{IMEI: HEX}}}}')
    if document.get("version") != FORMAT_VERSION:
        raise KeyFileError(f"key file {path}: version {document.get('version')!r} is not supported "
                           f"(this tool reads version {FORMAT_VERSION})")
    keys: dict[int, bytes] = {}
    for device_text, key_text in document["keys"].items():
        device = parse_device_id(device_text, f"key file {path}: device id")
        if not isinstance(key_text, str):
            raise KeyFileError(f"key file {path}: key of device {device} is not a hex string")
        keys[device] = parse_key_hex(key_text, f"key file {path}: key of device {device}")
    return keys


def save_keys(path: Path, keys: dict[int, bytes]) -> None:
    document = {"version": FORMAT_VERSION,
                "keys": {str(device): key.hex() for device, key in sorted(keys.items())}}
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(path.name + ".tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, (json.dumps(document, indent=1) + "\n").encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(temporary, path)


def check_private(path: Path) -> str | None:
    """A warning when others can read the key file, else None."""
    mode = path.stat().st_mode
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        return f"key file {path} is readable by others (mode {stat.S_IMODE(mode):o}): chmod 600 it"
    return None
