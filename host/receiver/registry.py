"""The device registry: devices, the elder's name, contacts, SIM details, and their keys.

Names, contacts and SIM details are rows of the store (storage.DeviceRegistry); keys are in the
key file DATA/keys.json (carecard.host.keyfile: JSON, mode 0600, written atomically). Admin
commands change both under a lock file (DATA/keys.lock), database transaction first, key file
second (inside it), commit last, so a failure leaves neither half-written; every change bumps the registry generation,
which a running receiver polls to reload.

Provisioning records (docs/provisioning-records.md) are read by `read_records`: JSON lines or
CSV with a header; every bad record is reported with file:line and the reason, the good ones are
imported in one transaction.
"""

from __future__ import annotations

import csv
import fcntl
import io
import json
import os
import re
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from carecard.host.events import registry_event
from carecard.host.files import read_input_file
from carecard.host.keyfile import KeyFileError, load_keys, parse_key_hex, save_keys
from carecard.host.receiver.downlinks import CommandError, check_command
from carecard.host.storage import (
    Contact,
    DeviceExistsError,
    DeviceRecord,
    DeviceRegistry,
    StoreError,
    UnknownDeviceError,
)
from carecard.protocol import spec
from carecard.protocol.crypto import KEY_SIZES

KEYS_FILE_NAME = "keys.json"
LOCK_FILE_NAME = "keys.lock"
MAX_IMPORT_BYTES = 64 * 1024 * 1024

_NUMBER_RE = re.compile(r"^\+?[0-9]{3,20}$")
_ICCID_RE = re.compile(r"^[0-9]{18,22}$")
_CONTACT_KEYS = range(1, spec.MAX_CONTACTS + 1)


class RegistryError(ValueError):
    """A device record or registry change is invalid; the message says what and how to fix it."""


def keys_path(data_dir: Path | str) -> Path:
    return Path(data_dir) / KEYS_FILE_NAME


def luhn_digit(first14: str) -> int:
    """The IMEI check digit (Luhn) for the first 14 digits."""
    total = 0
    for i, char in enumerate(reversed(first14)):
        digit = int(char)
        if i % 2 == 0:
            digit *= 2
            if digit > 9:
                digit -= 9
        total += digit
    return (10 - total % 10) % 10


def make_imei(first14: int | str) -> int:
    """A valid IMEI from 14 digits (the demo, tests and benchmarks use these)."""
    text = f"{int(first14):014d}"
    if len(text) != 14:
        raise ValueError("an IMEI body is 14 digits")
    return int(text + str(luhn_digit(text)))


def parse_imei(text: Any, where: str = "imei", *, check_digit: bool = True) -> int:
    value = str(text).strip()
    if not value.isdigit() or len(value) != 15:
        raise RegistryError(f"{where}: {value[:32]!r} is not an IMEI (15 digits)")
    if check_digit and int(value[-1]) != luhn_digit(value[:14]):
        raise RegistryError(f"{where}: {value} has a wrong check digit (Luhn: expected "
                            f"{luhn_digit(value[:14])}): a mistyped IMEI?")
    return int(value)


def parse_name(text: Any, where: str = "name") -> str:
    if not isinstance(text, str) or not text.strip():
        raise RegistryError(f"{where}: a name is required")
    value = text.strip()
    if any(ord(ch) < 32 or ord(ch) == 127 for ch in value):
        raise RegistryError(f"{where}: control characters are not allowed")
    if len(value.encode("utf-8")) > spec.MAX_STR:
        raise RegistryError(f"{where}: longer than {spec.MAX_STR} bytes of UTF-8")
    return value


def parse_number(text: Any, where: str) -> str:
    value = str(text).strip().replace(" ", "").replace("-", "")
    if not _NUMBER_RE.match(value):
        raise RegistryError(f"{where}: {str(text)[:32]!r} is not a phone number "
                            "(3-20 digits, optional leading +)")
    return value


def parse_contact(text: str, where: str = "contact") -> Contact:
    """KEY:NUMBER:NAME, e.g. `1:+8613800138000:Son`; the name may contain ':'."""
    parts = str(text).split(":", 2)
    if len(parts) != 3:
        raise RegistryError(f"{where}: {str(text)[:40]!r}: expected KEY:NUMBER:NAME (e.g. 1:+8613800138000:Son)")
    return make_contact(parts[0], parts[1], parts[2], where)


def make_contact(key: Any, number: Any, name: Any, where: str) -> Contact:
    key_text = str(key).strip()
    if not key_text.isdigit() or int(key_text) not in _CONTACT_KEYS:
        raise RegistryError(f"{where}: key {key_text[:8]!r} must be 1-{spec.MAX_CONTACTS}")
    return Contact(int(key_text), parse_number(number, f"{where} number"), parse_name(name, f"{where} name"))


def check_contacts(contacts: list[Contact], where: str) -> list[Contact]:
    seen = set()
    for contact in contacts:
        if contact.key in seen:
            raise RegistryError(f"{where}: key {contact.key} is given twice")
        seen.add(contact.key)
    ordered = sorted(contacts, key=lambda c: c.key)
    try:  # the same limits the card's set_contacts command has
        check_command("set_contacts", {"contacts": [c.as_dict() for c in ordered]})
    except CommandError as exc:
        raise RegistryError(f"{where}: {exc}") from None
    return ordered


@dataclass
class DeviceSpec:
    """A device to register: what `devices add` and the provisioning records give."""

    device: int
    name: str
    key: bytes
    contacts: list[Contact] = field(default_factory=list)
    iccid: str | None = None
    phone: str | None = None
    where: str = ""
    village: str | None = None  # the village (grid) the card belongs to


@contextmanager
def key_lock(data_dir: Path) -> Iterator[None]:
    """Serialise key-file read-modify-write across processes."""
    data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(data_dir / LOCK_FILE_NAME, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def load_key_file(data_dir: Path) -> dict[int, bytes]:
    """The keys in DATA/keys.json ({} when the file does not exist yet)."""
    path = keys_path(data_dir)
    if not path.exists():
        return {}
    return load_keys(path)


def add_devices(store: DeviceRegistry, data_dir: Path, specs: list[DeviceSpec], *,
                replace: bool = False, now: float | None = None) -> None:
    """Register devices and their keys, all or nothing. Raises RegistryError if a device is
    already registered (unless `replace`) or given twice."""
    stamp = time.time() if now is None else now
    seen: set[int] = set()
    for spec_ in specs:
        if spec_.device in seen:
            raise RegistryError(f"{spec_.where or spec_.device}: device {spec_.device} is given twice")
        seen.add(spec_.device)
    where = {spec_.device: spec_.where for spec_ in specs}
    with key_lock(data_dir):
        try:
            old_keys = load_key_file(data_dir)
        except KeyFileError as exc:
            raise RegistryError(f"{exc}; fix or move it away before adding devices") from None
        if not replace:
            for spec_ in specs:
                if spec_.device in old_keys:
                    raise _already_registered(spec_.device, spec_.where)
        new_keys = {**old_keys, **{spec_.device: spec_.key for spec_ in specs}}
        write_key_file = _KeyFileStep(data_dir, old_keys, new_keys)
        records = [DeviceRecord(spec_.device, spec_.name, spec_.iccid, spec_.phone, list(spec_.contacts),
                                village=spec_.village) for spec_ in specs]
        try:
            store.register_devices(records, replace=replace, now=stamp, before_commit=write_key_file)
        except DeviceExistsError as exc:
            raise _already_registered(exc.device, where.get(exc.device, "")) from None
        except BaseException:
            write_key_file.undo()
            raise


def remove_device(store: DeviceRegistry, data_dir: Path, device: int, *,
                  now: float | None = None) -> DeviceRecord | None:
    """Take a card out of the registry and its key out of the key file, both or neither
    (storage.DeviceRegistry.remove_device: its counters and replay history stay, so adding it
    again never reuses a counter). Returns the registry record it had (None: it only had a key).
    Raises RegistryError when the device is neither registered nor keyed."""
    stamp = time.time() if now is None else now
    with key_lock(data_dir):
        try:
            old_keys = load_key_file(data_dir)
        except KeyFileError as exc:
            raise RegistryError(f"{exc}; fix or move it away before removing devices") from None
        new_keys = {other: key for other, key in old_keys.items() if other != device}
        write_key_file = _KeyFileStep(data_dir, old_keys, new_keys)

        try:
            return store.remove_device(device, now=stamp, before_commit=write_key_file)
        except UnknownDeviceError as exc:
            if device not in old_keys:
                raise RegistryError(str(exc)) from None
        except BaseException:
            write_key_file.undo()
            raise
        write_key_file()  # a key without a registry entry: only the key goes
        try:  # and the alert engine, which judges keyed cards too, is told
            store.append_events([registry_event(device, "removed", stamp)])  # type: ignore[attr-defined]
        except BaseException:
            write_key_file.undo()
            raise
        return None


class _KeyFileStep:
    """Writes the new key file inside the store's transaction (its before_commit): if writing
    fails nothing is committed; if the commit fails after it, `undo` puts the old file back.
    Unchanged keys: nothing is written."""

    def __init__(self, data_dir: Path, old_keys: dict[int, bytes], new_keys: dict[int, bytes]):
        self.path = keys_path(data_dir)
        self.old_keys = old_keys
        self.new_keys = new_keys
        self.written = False

    def __call__(self) -> None:
        if self.new_keys == self.old_keys:
            return
        try:
            save_keys(self.path, self.new_keys)
        except OSError as exc:
            raise RegistryError(f"cannot write the key file {self.path}: {exc.strerror}") from None
        self.written = True

    def undo(self) -> None:
        if self.written:
            save_keys(self.path, self.old_keys)


def _already_registered(device: int, where: str) -> RegistryError:
    return RegistryError(f"{where + ': ' if where else ''}device {device} is already registered "
                         "(use --replace to re-provision it)")


def list_devices(store: DeviceRegistry) -> dict[int, DeviceRecord]:
    return store.load_devices()


# --- provisioning records -----------------------------------------------------------------------

RECORD_FIELDS = ("imei", "key", "name", "iccid", "phone", "village")
CSV_CONTACT_COLUMNS = tuple(f"contact{k}_{part}" for k in _CONTACT_KEYS for part in ("number", "name"))
CSV_COLUMNS = RECORD_FIELDS + CSV_CONTACT_COLUMNS


@dataclass
class RecordProblem:
    where: str  # file:line
    reason: str

    def __str__(self) -> str:
        return f"{self.where}: {self.reason}"


def _record_to_spec(record: dict[str, Any], contacts: list[Contact], where: str,
                    check_digit: bool) -> DeviceSpec:
    device = parse_imei(record.get("imei", ""), "imei", check_digit=check_digit)
    key_text = record.get("key")
    if not isinstance(key_text, str) or not key_text.strip():
        raise RegistryError("key: missing (32 or 64 hex digits)")
    try:
        key = parse_key_hex(key_text, "key")
    except KeyFileError as exc:
        raise RegistryError(str(exc)) from None
    name = parse_name(record.get("name"), "name")
    iccid = record.get("iccid") or None
    if iccid is not None:
        iccid = str(iccid).strip()
        if not _ICCID_RE.match(iccid):
            raise RegistryError(f"iccid: {iccid[:32]!r} is not an ICCID (18-22 digits)")
    phone = record.get("phone") or None
    if phone is not None:
        phone = parse_number(phone, "phone")
    village = record.get("village")
    village = parse_name(village, "village") if village not in (None, "") else None
    return DeviceSpec(device, name, key, check_contacts(contacts, "contacts"), iccid, phone, where, village)


def _json_record(line: str, where: str, check_digit: bool) -> DeviceSpec:
    try:
        record = json.loads(line)
    except ValueError as exc:
        raise RegistryError(f"not valid JSON ({exc.msg})") from None
    if not isinstance(record, dict):
        raise RegistryError("expected a JSON object")
    unknown = sorted(set(record) - set(RECORD_FIELDS) - {"contacts"})
    if unknown:
        raise RegistryError(f"unknown field {unknown[0]!r}")
    raw_contacts = record.get("contacts") or []
    if not isinstance(raw_contacts, list):
        raise RegistryError("contacts: expected a list of {key, number, name}")
    contacts = []
    for i, item in enumerate(raw_contacts):
        if not isinstance(item, dict) or set(item) != {"key", "number", "name"}:
            raise RegistryError(f"contacts[{i}]: expected {{\"key\", \"number\", \"name\"}}")
        contacts.append(make_contact(item["key"], item["number"], item["name"], f"contacts[{i}]"))
    for name in RECORD_FIELDS:
        value = record.get(name)
        if value is not None and not isinstance(value, (str, int)) or isinstance(value, bool):
            raise RegistryError(f"{name}: expected text")
    return _record_to_spec(record, contacts, where, check_digit)


def _csv_record(row: dict[str, str], where: str, check_digit: bool) -> DeviceSpec:
    contacts = []
    for key in _CONTACT_KEYS:
        number = (row.get(f"contact{key}_number") or "").strip()
        name = (row.get(f"contact{key}_name") or "").strip()
        if number or name:
            if not (number and name):
                raise RegistryError(f"contact {key}: give both contact{key}_number and contact{key}_name")
            contacts.append(make_contact(key, number, name, f"contact {key}"))
    return _record_to_spec(dict(row), contacts, where, check_digit)


def read_records(path: Path, *, check_digit: bool = True) -> tuple[list[DeviceSpec], list[RecordProblem]]:
    """Parse a provisioning-records file. Returns (good records, problems), never raises for a
    bad record; raises RegistryError only when the file as a whole cannot be read."""
    data = read_input_file(path, RegistryError, where=str(path),
                           directory_note=", not a records file", max_bytes=MAX_IMPORT_BYTES)
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise RegistryError(f"{path}:{line}: not UTF-8 text") from None
    first = text.lstrip()[:1]
    good: list[DeviceSpec] = []
    problems: list[RecordProblem] = []
    seen: dict[int, str] = {}

    def accept(spec_: DeviceSpec) -> None:
        if spec_.device in seen:
            problems.append(RecordProblem(spec_.where, f"imei {spec_.device} already given at {seen[spec_.device]}"))
            return
        seen[spec_.device] = spec_.where
        good.append(spec_)

    if first == "{" or path.suffix.lower() in (".jsonl", ".ndjson", ".json"):
        for number, line in enumerate(text.splitlines(), 1):
            where = f"{path}:{number}"
            if not line.strip() or line.lstrip().startswith("#"):
                continue
            try:
                spec_ = _json_record(line, where, check_digit)
            except RegistryError as exc:
                problems.append(RecordProblem(where, str(exc)))
                continue
            accept(spec_)
        return good, problems

    reader = csv.reader(io.StringIO(text, newline=""))
    header: list[str] | None = None
    for row in reader:
        number = reader.line_num
        where = f"{path}:{number}"
        if not row or all(not cell.strip() for cell in row) or row[0].lstrip().startswith("#"):
            continue
        if header is None:
            header = [cell.strip().lower() for cell in row]
            unknown = [c for c in header if c not in CSV_COLUMNS]
            missing = [c for c in ("imei", "key", "name") if c not in header]
            if unknown or missing or len(set(header)) != len(header):
                reason = (f"unknown column {unknown[0]!r}" if unknown else
                          f"missing column {missing[0]!r}" if missing else "a column is repeated")
                raise RegistryError(f"{where}: header: {reason} (columns: {', '.join(CSV_COLUMNS)})")
            continue
        if len(row) != len(header):
            problems.append(RecordProblem(where, f"{len(row)} cells, the header has {len(header)}"))
            continue
        try:
            spec_ = _csv_record(dict(zip(header, row)), where, check_digit)
        except RegistryError as exc:
            problems.append(RecordProblem(where, str(exc)))
            continue
        accept(spec_)
    if header is None:
        raise RegistryError(f"{path}: empty: no header and no records")
    return good, problems


def generate_key(size: int = 16) -> bytes:
    if size not in KEY_SIZES:
        raise RegistryError(f"key size {size}: 16 or 32 bytes")
    return os.urandom(size)


__all__ = [
    "RegistryError", "DeviceSpec", "RecordProblem", "add_devices", "remove_device", "read_records", "parse_contact",
    "parse_imei", "make_imei", "keys_path", "load_key_file", "generate_key", "list_devices",
    "StoreError",
]
