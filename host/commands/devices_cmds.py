"""`carecard devices`: list, add, import and remove devices (names, contacts, SIM details, keys).

    carecard devices [--data DIR] [--config FILE] [--json] [--all]
    carecard devices add IMEI --name NAME [--key HEX | --generate-key] [--contact 1:+86...:Name ...]
                     [--iccid ICCID] [--phone NUMBER] [--village NAME] [--replace] [--print-key]
    carecard devices import FILE [--replace] [--json]   (docs/provisioning-records.md)
    carecard devices remove IMEI

All of them work while a receiver runs on the same data folder: it picks the changes up. Listing
only reads, so it works on a read-only data folder too.
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import sys
import time
import unicodedata
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from carecard.host.commands.errors import CommandError
from carecard.host.commands.datadir import (
    add_data_options,
    data_dir_of,
    open_ingest_readonly,
    resolve_device,
)
from carecard.host.paths import DataDir, ingest_db_path

RECENT_FINISHED_S = 86400


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "devices", help="list, add and import devices (names, contacts, keys)",
        description="List the registered devices with their last frame and pending commands, or "
                    "add/import devices. Works while the receiver runs.")
    add_data_options(parser)
    parser.add_argument("--json", action="store_true", help="print JSON (one object per device)")
    parser.add_argument("--all", action="store_true", help="show every command, not only open and recent ones")
    parser.set_defaults(func=run_list)
    sub = parser.add_subparsers(dest="devices_command", metavar="ACTION")

    add = sub.add_parser("add", help="register one device and its key")
    add.add_argument("imei", help="the card modem's IMEI (15 digits, Luhn check digit)")
    add.add_argument("--name", required=True, help="the elder's name, shown to operators")
    keys = add.add_mutually_exclusive_group(required=True)
    keys.add_argument("--key", metavar="HEX", help="the device key (32 or 64 hex digits)")
    keys.add_argument("--generate-key", action="store_true", help="generate a random 128-bit key")
    add.add_argument("--contact", action="append", default=[], metavar="KEY:NUMBER:NAME",
                     help="the number behind key 1-4, e.g. 1:+8613800138000:Son (repeatable)")
    add.add_argument("--iccid", help="the SIM's ICCID")
    add.add_argument("--phone", help="the SIM's phone number")
    add.add_argument("--village", help="the village (grid) the card belongs to: its grid workers see it")
    add.add_argument("--replace", action="store_true", help="re-provision a registered device")
    add.add_argument("--print-key", action="store_true",
                     help="print the key (hex) on stdout, to provision the card with it")
    add.add_argument("--no-check-digit", action="store_true",
                     help="accept an IMEI whose Luhn check digit is wrong (test devices)")
    add.add_argument("--store", metavar="sqlite|URL",
                     help="the receivers' store: sqlite (default, in the data folder) or "
                          "postgresql://USER@HOST:PORT/DATABASE (docs/operations.md)")
    add_data_options(add, top=False)
    add.set_defaults(func=run_add)

    rem = sub.add_parser("remove", help="take a device out of the registry (and its key)",
                         description="Take a card out of the registry: its name, SIM details, "
                                     "contacts, engine settings and key go, its open commands are "
                                     "cancelled, and bridges withdraw it (Home Assistant entities, "
                                     "OwnTracks card). Its counters and stored frames are kept, so "
                                     "adding it again never reuses a counter.")
    rem.add_argument("imei", help="the card's IMEI, as `carecard devices` lists it")
    rem.add_argument("--store", metavar="sqlite|URL",
                     help="the receivers' store: sqlite (default, in the data folder) or "
                          "postgresql://USER@HOST:PORT/DATABASE (docs/operations.md)")
    add_data_options(rem, top=False)
    rem.set_defaults(func=run_remove)

    imp = sub.add_parser("import", help="import a provisioning-records file (JSON lines or CSV)")
    imp.add_argument("file", help="records file (docs/provisioning-records.md)")
    imp.add_argument("--replace", action="store_true", help="re-provision devices already registered")
    imp.add_argument("--json", action="store_true",
                     help="print one JSON object: imported IMEIs and the bad records")
    imp.add_argument("--store", metavar="sqlite|URL",
                     help="the receivers' store: sqlite (default, in the data folder) or "
                          "postgresql://USER@HOST:PORT/DATABASE (docs/operations.md)")
    add_data_options(imp, top=False)
    imp.set_defaults(func=run_import)


def open_ingest_store(data: DataDir, store: str | None = None) -> Any:
    """The ingest database opened for writing (created when missing), or the PostgreSQL store
    `store` names; one-line errors."""
    from carecard.host.storage import StoreError, check_store_setting, ingest_store_for
    from carecard.host.storage.sqlite.store import SQLiteStore

    try:
        if store and store != "sqlite":
            return ingest_store_for(check_store_setting(store, "--store"), data.path)
        return SQLiteStore(ingest_db_path(data.path), readonly_lookups=False)
    except ValueError as exc:
        raise CommandError(str(exc)) from None
    except StoreError as exc:
        raise CommandError(f"{exc} (data folder from {data.source})", status=1) from None


@contextmanager
def registry_change(data: DataDir, store: str | None, *, failed: str = "") -> Iterator[Any]:
    """The store for one change of the registry, closed after it; the change's errors become
    one-line command errors (status 1), `failed` said before them."""
    from carecard.host.receiver.registry import RegistryError
    from carecard.host.storage import StoreError

    opened = open_ingest_store(data, store)
    try:
        yield opened
    except (RegistryError, StoreError) as exc:
        raise CommandError(f"{failed}{exc}", status=1) from None
    except OSError as exc:
        raise CommandError(f"{failed}cannot write in {data.path}: {exc.strerror}", status=1) from None
    finally:
        opened.close()


def display_width(text: str) -> int:
    """Columns `text` takes in a terminal: wide and full-width characters (Chinese) take two."""
    return sum(2 if unicodedata.east_asian_width(ch) in "WF" else 0 if unicodedata.combining(ch) else 1
               for ch in text)


def pad(text: str, width: int) -> str:
    return text + " " * max(0, width - display_width(text))


def _iso(stamp: float | None) -> str:
    if stamp is None:
        return "never"
    return time.strftime("%Y-%m-%d %H:%M:%SZ", time.gmtime(stamp))


def run_list(args: argparse.Namespace) -> int:
    from carecard.host.receiver.downlinks import describe
    from carecard.host.receiver.registry import KeyFileError, load_key_file
    from carecard.host.storage.sqlite.store import list_commands, load_devices

    data = data_dir_of(args)
    data_dir = data.path
    conn = open_ingest_readonly(data)
    try:
        devices = load_devices(conn)
        commands = list_commands(conn)
    except sqlite3.Error as exc:
        raise CommandError(f"cannot read {ingest_db_path(data_dir)}: {exc}", status=1) from None
    finally:
        conn.close()
    try:
        keyed = set(load_key_file(data_dir))
    except KeyFileError as exc:
        print(f"warning: {exc}", file=sys.stderr)
        keyed = set()
    now = time.time()
    by_device: dict[int, list[Any]] = {}
    for command in commands:
        if args.all or command.is_open or now - command.updated_at <= RECENT_FINISHED_S:
            by_device.setdefault(command.device, []).append(command)
    rows = sorted(set(devices) | keyed)
    if args.json:
        for device in rows:
            record = devices.get(device)
            print(json.dumps({
                "imei": str(device), "name": record.name if record else None,
                "key": device in keyed, "iccid": record.iccid if record else None,
                "phone": record.phone if record else None,
                "village": record.village if record else None,
                "contacts": [c.as_dict() for c in record.contacts] if record else [],
                "last_seen": record.last_seen if record else None,
                "last_counter": record.last_counter if record else None,
                "frames_stored": record.frames_stored if record else 0,
                "commands": [{"seq": c.seq, "cmd": c.cmd, "args": c.args, "state": c.state,
                              "attempts": c.attempts, "result": c.result, "detail": c.detail,
                              "created_at": c.created_at, "updated_at": c.updated_at}
                             for c in by_device.get(device, [])],
            }, ensure_ascii=False))
        return 0
    if not rows:
        print(f"no devices in {data_dir}: add one with `carecard devices add IMEI --name NAME --generate-key`")
        return 0
    header = ("IMEI", "NAME", "LAST SEEN (UTC)", "COUNTER", "FRAMES", "KEY")
    table = [header]
    extra: dict[int, list[str]] = {}
    for device in rows:
        record = devices.get(device)
        unnamed = "(unregistered)" if device in keyed else "(removed)"
        table.append((str(device), (record.name if record and record.name else unnamed),
                      _iso(record.last_seen if record else None),
                      "-" if not record or record.last_counter is None else str(record.last_counter),
                      str(record.frames_stored if record else 0), "yes" if device in keyed else "NO"))
        extra[len(table) - 1] = [describe(c) for c in by_device.get(device, [])]
    widths = [max(display_width(row[i]) for row in table) for i in range(len(header))]
    for index, row in enumerate(table):
        print("  ".join(pad(cell, widths[i]) for i, cell in enumerate(row)).rstrip())
        for line in extra.get(index, []):
            print(f"    command {line}")
    return 0


def run_add(args: argparse.Namespace) -> int:
    from carecard.host.receiver.registry import (
        DeviceSpec,
        RegistryError,
        add_devices,
        check_contacts,
        generate_key,
        parse_contact,
        parse_imei,
        parse_name,
        parse_number,
    )
    from carecard.host.keyfile import KeyFileError, parse_key_hex

    try:
        device = parse_imei(args.imei, "IMEI", check_digit=not args.no_check_digit)
        name = parse_name(args.name, "--name")
        contacts = check_contacts([parse_contact(text, f"--contact {text.split(':', 1)[0]}")
                                   for text in args.contact], "--contact")
        iccid = args.iccid.strip() if args.iccid else None
        if iccid is not None and not (iccid.isdigit() and 18 <= len(iccid) <= 22):
            raise RegistryError("--iccid: an ICCID is 18-22 digits")
        phone = parse_number(args.phone, "--phone") if args.phone else None
        village = parse_name(args.village, "--village") if args.village is not None else None
        key = generate_key() if args.generate_key else parse_key_hex(args.key, "--key")
    except (RegistryError, KeyFileError) as exc:
        raise CommandError(str(exc)) from None
    data = data_dir_of(args, write=True, must_exist=False)
    data_dir = data.path
    with registry_change(data, args.store) as store:
        add_devices(store, data_dir, [DeviceSpec(device, name, key, contacts, iccid, phone, village=village)],
                    replace=args.replace)
    print(f"{'re-provisioned' if args.replace else 'added'} device {device} ({name}), "
          f"{len(contacts)} contacts; key stored in {data_dir / 'keys.json'}")
    if args.print_key:
        print(key.hex())
    return 0


def run_remove(args: argparse.Namespace) -> int:
    from carecard.host.keyfile import KeyFileError, parse_device_id
    from carecard.host.receiver.registry import remove_device

    try:
        device = parse_device_id(args.imei, "IMEI")
    except KeyFileError as exc:
        raise CommandError(str(exc)) from None
    data = data_dir_of(args, write=True, must_exist=False)
    with registry_change(data, args.store) as store:
        record = remove_device(store, data.path, device)
    if record is None:
        print(f"removed the key of device {device} (it had no registry entry)")
    else:
        print(f"removed device {device} ({record.name}) from the registry and its key; its counters "
              "and stored frames are kept (adding it again continues them)")
    return 0


def run_import(args: argparse.Namespace) -> int:
    from carecard.host.keyfile import KeyFileError
    from carecard.host.receiver.registry import RegistryError, add_devices, load_key_file, read_records

    try:
        good, records_problems = read_records(Path(args.file))
    except RegistryError as exc:
        raise CommandError(str(exc), status=1) from None
    problems = [str(problem) for problem in records_problems]
    if good:
        data = data_dir_of(args, write=True, must_exist=False)
        data_dir = data.path
        with registry_change(data, args.store, failed="nothing imported: ") as store:
            # Devices already registered are bad records too (unless --replace): report them all,
            # then import the rest in one transaction.
            if not args.replace:
                registered = {d for d, r in store.load_devices().items() if r.name}
                try:
                    registered |= set(load_key_file(data_dir))
                except KeyFileError:
                    pass  # add_devices refuses with the reason below
                kept = []
                for spec_ in good:
                    if spec_.device in registered:
                        problems.append(f"{spec_.where}: imei {spec_.device} is already registered "
                                        "(use --replace)")
                    else:
                        kept.append(spec_)
                good = kept
            if good:
                add_devices(store, data_dir, good, replace=args.replace)
    if args.json:
        print(json.dumps({"file": str(args.file), "imported": [str(s.device) for s in good],
                          "bad_records": problems}, ensure_ascii=False))
    else:
        for problem in problems:
            print(problem, file=sys.stderr)
        print(f"imported {len(good)} devices from {args.file}; {len(problems)} bad records"
              + (" (listed above)" if problems else ""))
    return 1 if problems else 0
