"""`carecard send DEVICE COMMAND`: queue a downlink command; it rides on the ack of the card's
next frame and is repeated until the card confirms it (see `carecard devices` for its state).

    carecard send DEVICE locate
    carecard send DEVICE checkin [--timeout S] [--prompt-id N]
    carecard send DEVICE intervals --position S --status S [--gnss-timeout S]
    carecard send DEVICE contacts 1:+8613800138000:Son [2:...] ...
    carecard send DEVICE time
    carecard send DEVICE reboot [--delay S]
    carecard send DEVICE cancel SEQ

DEVICE is the IMEI or the registered name.
"""

from __future__ import annotations

import argparse
import json
import math
from importlib import resources
from typing import Any

from carecard.host.cli import CommandError
from carecard.host.commands.devices_cmds import data_dir_of, open_store, resolve_device

DEFAULT_CHECKIN_TIMEOUT_S = 300  # five minutes for the elder to press a key
DEFAULT_REBOOT_DELAY_S = 10  # time for the card to confirm before it restarts


def default_gnss_timeout_s() -> int:
    """Twice the slowest cold-start time to first fix of the GNSS parts in hardware/gnss_*.json."""
    slowest = 0
    for entry in resources.files("carecard.hardware").iterdir():
        if entry.name.startswith("gnss_") and entry.name.endswith(".json"):
            data = json.loads(entry.read_text(encoding="utf-8"))
            slowest = max(slowest, int(data.get("timing", {}).get("ttff_cold_ms", {}).get("value", 0)))
    return max(30, math.ceil(2 * slowest / 1000))


def _seconds(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number of seconds") from None
    if value < 0:
        raise argparse.ArgumentTypeError("seconds cannot be negative")
    return value


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "send", help="queue a downlink command for a card (sent in the ack of its next frame)",
        description="Queue a command. It goes out in the ack of the card's next frame and is repeated "
                    "until the card confirms it; `carecard devices` shows its state.")
    parser.add_argument("device", help="IMEI or registered name")
    parser.add_argument("--data", metavar="DIR", default=None, help="data folder (default ./data)")
    sub = parser.add_subparsers(dest="send_command", metavar="COMMAND", required=True)

    sub.add_parser("locate", help="ask for a position report now (locate_now)")
    checkin = sub.add_parser("checkin", help="ask the elder to press a key (checkin_prompt)")
    checkin.add_argument("--timeout", type=_seconds, default=DEFAULT_CHECKIN_TIMEOUT_S,
                         help=f"seconds to wait for the answer (default {DEFAULT_CHECKIN_TIMEOUT_S})")
    checkin.add_argument("--prompt-id", type=int, default=None, help="prompt id (default: the command seq)")
    intervals = sub.add_parser("intervals", help="set the reporting intervals (set_intervals)")
    intervals.add_argument("--position", type=_seconds, required=True, help="seconds between position reports")
    intervals.add_argument("--status", type=_seconds, required=True, help="seconds between status reports")
    intervals.add_argument("--gnss-timeout", type=_seconds, default=None,
                           help="longest GNSS acquisition in seconds (default: twice the slowest "
                                "cold-start fix time in hardware/gnss_*.json)")
    contacts = sub.add_parser("contacts", help="set the numbers behind keys 1-4 (set_contacts)")
    contacts.add_argument("contact", nargs="+", metavar="KEY:NUMBER:NAME")
    sub.add_parser("time", help="set the card's clock to the receiver's time when the ack is made")
    reboot = sub.add_parser("reboot", help="restart the card")
    reboot.add_argument("--delay", type=_seconds, default=DEFAULT_REBOOT_DELAY_S,
                        help=f"seconds before restarting (default {DEFAULT_REBOOT_DELAY_S})")
    cancel = sub.add_parser("cancel", help="cancel a queued or sent command")
    cancel.add_argument("seq", type=int, help="the command's seq (see `carecard devices`)")
    for sub_parser in sub.choices.values():
        sub_parser.add_argument("--data", metavar="DIR", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    parser.set_defaults(func=run)


def command_from_args(args: argparse.Namespace) -> tuple[str, dict[str, Any]]:
    """(spec command name, fields) for the parsed arguments."""
    from carecard.host.receiver.registry import RegistryError, check_contacts, parse_contact

    kind = args.send_command
    if kind == "locate":
        return "locate_now", {}
    if kind == "checkin":
        fields: dict[str, Any] = {"timeout_s": args.timeout}
        if args.prompt_id is not None:
            fields["prompt_id"] = args.prompt_id
        return "checkin_prompt", fields
    if kind == "intervals":
        gnss = args.gnss_timeout if args.gnss_timeout is not None else default_gnss_timeout_s()
        return "set_intervals", {"position_s": args.position, "status_s": args.status, "gnss_timeout_s": gnss}
    if kind == "contacts":
        try:
            parsed = check_contacts([parse_contact(text, f"contact {text.split(':', 1)[0]}")
                                     for text in args.contact], "contacts")
        except RegistryError as exc:
            raise CommandError(str(exc)) from None
        return "set_contacts", {"contacts": [c.as_dict() for c in parsed]}
    if kind == "time":
        return "set_time", {}
    if kind == "reboot":
        return "reboot", {"delay_s": args.delay}
    raise CommandError(f"unknown command {kind!r}")


def run(args: argparse.Namespace) -> int:
    from carecard.host.receiver.downlinks import CommandError as QueueError, cancel_command, describe, queue_command
    from carecard.host.receiver.store import StoreError

    data_dir = data_dir_of(args)
    store = open_store(data_dir, create=False)
    try:
        device = resolve_device(store, args.device)
        try:
            if args.send_command == "cancel":
                command = cancel_command(store, device, args.seq)
                print(f"device {device}: {describe(command)}")
                return 0
            name, fields = command_from_args(args)
            command = queue_command(store, device, name, fields)
        except QueueError as exc:
            raise CommandError(str(exc), status=1) from None
        except StoreError as exc:
            raise CommandError(str(exc), status=1) from None
    finally:
        store.close()
    print(f"queued for device {device}: {describe(command)} (goes out with the ack of its next frame)")
    return 0
