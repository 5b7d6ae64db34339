"""`carecard alerts`: the alert engine's alerts, and acknowledging or resolving one.

    carecard alerts [--device D] [--state S ...] [--kind K ...] [--since TIME] [--limit N] [--all] [--json]
    carecard alerts ack ID --by NAME [--reason TEXT] [--wait S] [--json]
    carecard alerts resolve ID --by NAME [--reason TEXT] [--wait S] [--json]
    carecard alerts settings import FILE [--replace]
    carecard alerts settings show [DEVICE] [--json]

Without --state or --all the list shows the alerts not resolved. `ack` and `resolve` queue a
request (storage.AlertStore.request_alert_action) that the engine of the running receiver carries
out at its next step (docs/receiver.md, "The alert engine"); with --wait they wait that long for
its outcome.

`settings import` keeps the alert engine's settings file (docs/events.md, "Alert engine
settings": `defaults` and per-device tables) in the device registry, checked key by key; the
running receiver's engine uses them from its next step, over its `[engine] settings` file.
`settings show` prints what the registry holds (with DEVICE: that card's settings in effect from
the registry and the defaults).
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

from carecard.host.commands.datadir import add_data_options, data_dir_of, resolve_device
from carecard.host.commands.devices_cmds import open_ingest_store
from carecard.host.commands.errors import CommandError, CommandFailed

STATES = ("open", "acknowledged", "resolved")


def _since(text: str) -> float:
    from carecard.host.timefmt import parse_iso_utc

    try:
        return parse_iso_utc(text if text.endswith("Z") else text + "Z")
    except (TypeError, ValueError, IndexError):
        raise argparse.ArgumentTypeError(f"{text!r} is not a UTC time like 2026-12-04T08:00:00Z") from None


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} must be at least 1")
    return value


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not 0 <= value <= 3600:
        raise argparse.ArgumentTypeError(f"{value:g} is out of range 0-3600 seconds")
    return value


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "alerts", help="list the alert engine's alerts; acknowledge or resolve one",
        description="List alerts (by default those not resolved), or acknowledge/resolve one: the "
                    "request is carried out by the running receiver's alert engine.")
    add_data_options(parser)
    parser.add_argument("--device", help="only this card (IMEI or registered name)")
    parser.add_argument("--state", action="append", choices=STATES, help="only alerts in this state (repeatable)")
    parser.add_argument("--kind", action="append", help="only alerts of this kind (repeatable; docs/events.md)")
    parser.add_argument("--since", type=_since, help="only alerts opened at or after this UTC time")
    parser.add_argument("--limit", type=_positive, help="only the newest N")
    parser.add_argument("--all", action="store_true", help="resolved alerts too")
    parser.add_argument("--json", action="store_true", help="one JSON object per line")
    sub = parser.add_subparsers(dest="alerts_command", metavar="ACTION")
    for name, action, what in (("ack", "acknowledge", "acknowledge an alert: its escalation stops"),
                               ("resolve", "resolve", "resolve an alert: it is over")):
        one = sub.add_parser(name, help=what, description=what.capitalize() + ".")
        one.add_argument("alert_id", metavar="ID", help="the alert's id (see `carecard alerts`)")
        one.add_argument("--by", required=True, help="who (a name, a number, an account)")
        one.add_argument("--reason", help="why (kept with the request and in the alert event)")
        one.add_argument("--wait", type=_seconds, default=0.0,
                         help="wait up to this many seconds for the running engine's outcome")
        one.add_argument("--data", metavar="DIR", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
        one.add_argument("--config", metavar="FILE", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
        one.add_argument("--json", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
        one.set_defaults(alert_action=action)
    settings = sub.add_parser("settings", help="the alert engine's per-device settings in the registry",
                              description="Import the alert engine's settings file into the device "
                                          "registry, or show what it holds.")
    settings_sub = settings.add_subparsers(dest="settings_command", metavar="WHAT", required=True)
    importer = settings_sub.add_parser("import", help="import a settings file (TOML or JSON, docs/events.md)")
    importer.add_argument("file", help="the settings file")
    importer.add_argument("--replace", action="store_true",
                          help="drop the devices' saved settings that the file does not have")
    show = settings_sub.add_parser("show", help="the settings the registry holds")
    show.add_argument("device", nargs="?", help="IMEI or registered name: its settings in effect")
    for sub_parser in (importer, show):
        sub_parser.add_argument("--store", metavar="sqlite|URL",
                                help="the registry's store: sqlite (in the data folder, the default) or "
                                     "postgresql://USER@HOST:PORT/DATABASE")
        sub_parser.add_argument("--data", metavar="DIR", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
        sub_parser.add_argument("--config", metavar="FILE", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
        sub_parser.add_argument("--json", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    parser.set_defaults(func=run)


def _when(stamp: float | None) -> str:
    return "-" if stamp is None else time.strftime("%Y-%m-%d %H:%M:%SZ", time.gmtime(stamp))


def describe(alert: Any) -> str:
    """One line: id, device, kind, state, step, when opened, who acknowledged, why closed."""
    parts = [alert.id, str(alert.device), alert.kind, alert.state, f"step {alert.step}", f"opened {_when(alert.opened_at)}"]
    if alert.acknowledged_by:
        parts.append(f"acknowledged by {alert.acknowledged_by} {_when(alert.acknowledged_at)}")
    if alert.state == "resolved":
        who = f" by {alert.closed_by}" if alert.closed_by else ""
        parts.append(f"resolved ({alert.closed_reason}){who} {_when(alert.closed_at)}")
    return "  ".join(parts)


def run(args: argparse.Namespace) -> int:
    if getattr(args, "alerts_command", None) == "settings":
        return _settings(args)
    if getattr(args, "alerts_command", None):
        return _request(args)
    data = data_dir_of(args)
    store = open_ingest_store(data)
    try:
        device = resolve_device(store.connection, args.device) if args.device else None
        states = args.state or (None if args.all else ["open", "acknowledged"])
        alerts = store.list_alerts(device=device, states=states, kinds=args.kind, since=args.since,
                                   limit=args.limit)
    finally:
        store.close()
    for alert in alerts:
        print(json.dumps(alert.as_dict(), ensure_ascii=False) if args.json else describe(alert))
    if not alerts and not args.json:
        print("no alerts" + ("" if args.all or args.state else " open (--all lists resolved ones too)"))
    return 0


def _request(args: argparse.Namespace) -> int:
    from carecard.host.storage import ACTION_DONE, AlertActionError, StoreError

    data = data_dir_of(args, write=True)
    store = open_ingest_store(data)
    try:
        try:
            request = store.request_alert_action(args.alert_id, args.alert_action, args.by,
                                                 reason=args.reason, source="cli", now=time.time())
        except AlertActionError as exc:
            raise CommandFailed(str(exc)) from None
        except StoreError as exc:
            raise CommandFailed(str(exc)) from None
        outcome = request
        deadline = time.monotonic() + args.wait
        while outcome.outcome is None and time.monotonic() < deadline:
            time.sleep(0.05)
            outcome = next(a for a in store.list_alert_actions(args.alert_id) if a.id == request.id)
        alert = store.get_alert(args.alert_id)
    finally:
        store.close()
    if args.json:
        print(json.dumps({"request": outcome.as_dict(), "alert": alert.as_dict() if alert else None},
                         ensure_ascii=False))
    elif outcome.outcome is None:
        print(f"request #{request.id} to {args.alert_action} alert {args.alert_id} by {args.by} is queued: "
              "the running receiver's alert engine carries it out at its next step"
              + (f" (no outcome within {args.wait:g} s: is the receiver running?)" if args.wait else ""))
    elif outcome.outcome == ACTION_DONE:
        print(f"alert {args.alert_id}: {args.alert_action}d by {args.by}"
              + (f"; now {describe(alert)}" if alert else ""))
    if outcome.outcome is not None and outcome.outcome != ACTION_DONE:
        raise CommandFailed(f"alert {args.alert_id}: the engine refused to {args.alert_action} it: {outcome.detail}")
    return 0


__all__ = ["register", "run", "CommandError"]


def _settings(args: argparse.Namespace) -> int:
    from carecard.host.engine.settings import DeviceSettings, Settings, SettingsError
    from carecard.host.storage import StoreError, UnknownDeviceError

    data = data_dir_of(args, write=args.settings_command == "import")
    store = open_ingest_store(data, args.store)
    try:
        if args.settings_command == "import":
            try:
                tables = Settings.load_tables(args.file)
            except SettingsError as exc:
                raise CommandFailed(str(exc)) from None
            devices = {int(device): table for device, table in (tables.get("devices") or {}).items()}
            try:
                store.save_engine_settings(tables.get("defaults"), devices, time.time(), replace=args.replace)
            except (UnknownDeviceError, StoreError) as exc:
                raise CommandFailed(f"{args.file}: {exc}") from None
            if args.json:
                print(json.dumps({"defaults": tables.get("defaults"), "devices": len(devices)}, ensure_ascii=False))
            else:
                print(f"imported {args.file}: {'defaults, ' if tables.get('defaults') else ''}{len(devices)} "
                      "device(s); a running receiver's engine uses them from its next step")
            return 0
        defaults, saved = store.load_engine_settings()
        if args.device:
            if hasattr(store, "connection"):
                device = resolve_device(store.connection, args.device)
            elif args.device.strip().isdigit() and int(args.device) in store.load_devices():
                device = int(args.device)
            else:
                raise CommandFailed(f"{args.device!r} is not the IMEI of a device in {store.path} (on "
                                    "PostgreSQL give the IMEI, not the name)")
            settings = Settings.combine({"defaults": defaults, "devices": {str(d): t for d, t in saved.items()}},
                                        where="registry")
            values: Any = settings.for_device(str(device)).as_dict()
            values = {key: list(value) if isinstance(value, tuple) else value for key, value in values.items()}
            if args.json:
                print(json.dumps({"device": str(device), "settings": values}, ensure_ascii=False))
            else:
                for key, value in values.items():
                    mark = "" if value == DeviceSettings().as_dict().get(key) or (
                        isinstance(value, list) and tuple(value) == DeviceSettings().as_dict().get(key)) else "  (set)"
                    print(f"{key} = {json.dumps(value, ensure_ascii=False)}{mark}")
            return 0
    except SettingsError as exc:
        raise CommandFailed(f"the registry's settings: {exc}") from None
    finally:
        store.close()
    document = {"defaults": defaults, "devices": {str(d): t for d, t in saved.items()}}
    if args.json:
        print(json.dumps(document, ensure_ascii=False))
    elif not defaults and not saved:
        print("no alert engine settings in the registry (the defaults apply): `carecard alerts settings import FILE`")
    else:
        print(json.dumps(document, ensure_ascii=False, indent=2))
    return 0
