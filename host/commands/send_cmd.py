"""`carecard send DEVICE COMMAND`: queue a downlink command; it rides on the ack of the card's
next frame and is repeated until the card confirms it (see `carecard devices` for its state).

    carecard send DEVICE locate
    carecard send DEVICE checkin [--timeout S] [--prompt-id N]
    carecard send DEVICE intervals --position S --status S [--gnss-timeout S]
    carecard send DEVICE contacts 1:+8613800138000:Son [2:...] ...
    carecard send DEVICE time
    carecard send DEVICE reboot [--delay S]
    carecard send DEVICE cancel SEQ

DEVICE is the IMEI or the registered name. Every value is checked against its range in
protocol/spec.py (FIELDS) before it is queued.
"""

from __future__ import annotations

import argparse
import json
import math
from importlib import resources
from typing import Any, Callable

from carecard.host.commands.errors import CommandError
from carecard.host.commands.datadir import add_data_options, data_dir_of, resolve_device
from carecard.host.commands.devices_cmds import open_ingest_store
from carecard.protocol import spec

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


KIND_RANGES = {"u8": (0, 0xFF), "u16": (0, 0xFFFF), "u32": (0, 0xFFFFFFFF)}


def field_range(command: str, field: str) -> tuple[int, int]:
    """The allowed values of a downlink command's field: its rule in spec.FIELDS, else its kind."""
    from carecard.protocol.codec import value_bounds

    bounds = value_bounds(field)
    if bounds is not None:
        return bounds[0], bounds[1]
    kinds = {name: kind for _code, cmd, fields in spec.COMMANDS if cmd == command
             for name, kind, _doc in fields}
    return KIND_RANGES[kinds[field]]


def _in_range(command: str, field: str, unit: str = " seconds") -> Callable[[str], int]:
    """An argparse type: a whole number within the field's range."""
    low, high = field_range(command, field)

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"{value} is out of range: {field} is {low}-{high}{unit}")
        return value

    return parse


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "send", help="queue a downlink command for a card (sent in the ack of its next frame)",
        description="Queue a command. It goes out in the ack of the card's next frame and is repeated "
                    "until the card confirms it; `carecard devices` shows its state.")
    parser.add_argument("device", help="IMEI or registered name")
    add_data_options(parser)
    parser.add_argument("--json", action="store_true", help="print the queued command as JSON")
    sub = parser.add_subparsers(dest="send_command", metavar="COMMAND", required=True)

    sub.add_parser("locate", help="ask for a position report now (locate_now)")
    checkin = sub.add_parser("checkin", help="ask the elder to press a key (checkin_prompt)")
    low, high = field_range("checkin_prompt", "timeout_s")
    checkin.add_argument("--timeout", type=_in_range("checkin_prompt", "timeout_s"),
                         default=DEFAULT_CHECKIN_TIMEOUT_S,
                         help=f"seconds to wait for the answer, {low}-{high} "
                              f"(default {DEFAULT_CHECKIN_TIMEOUT_S})")
    checkin.add_argument("--prompt-id", type=_in_range("checkin_prompt", "prompt_id", ""),
                         default=None, help="prompt id (default: the command seq)")
    intervals = sub.add_parser("intervals", help="set the reporting intervals (set_intervals)")
    for option, field, what in (("--position", "position_s", "seconds between position reports"),
                                ("--status", "status_s", "seconds between status reports")):
        low, high = field_range("set_intervals", field)
        intervals.add_argument(option, type=_in_range("set_intervals", field), required=True,
                               help=f"{what}, {low}-{high}")
    low, high = field_range("set_intervals", "gnss_timeout_s")
    intervals.add_argument("--gnss-timeout", type=_in_range("set_intervals", "gnss_timeout_s"),
                           default=None,
                           help=f"longest GNSS acquisition in seconds, {low}-{high} (default: twice "
                                "the slowest cold-start fix time in hardware/gnss_*.json)")
    contacts = sub.add_parser("contacts", help="set the numbers behind keys 1-4 (set_contacts)")
    contacts.add_argument("contact", nargs="+", metavar="KEY:NUMBER:NAME")
    sub.add_parser("time", help="set the card's clock to the receiver's time when the ack is made")
    reboot = sub.add_parser("reboot", help="restart the card")
    low, high = field_range("reboot", "delay_s")
    reboot.add_argument("--delay", type=_in_range("reboot", "delay_s"), default=DEFAULT_REBOOT_DELAY_S,
                        help=f"seconds before restarting, {low}-{high} (default {DEFAULT_REBOOT_DELAY_S})")
    cancel = sub.add_parser("cancel", help="cancel a queued or sent command")
    cancel.add_argument("seq", type=int, help="the command's seq (see `carecard devices`)")
    for sub_parser in sub.choices.values():
        sub_parser.add_argument("--data", metavar="DIR", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
        sub_parser.add_argument("--config", metavar="FILE", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
        sub_parser.add_argument("--json", action="store_true", default=argparse.SUPPRESS,
                                help=argparse.SUPPRESS)
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
    from carecard.host.storage import StoreError

    if args.send_command != "cancel":
        name, fields = command_from_args(args)
    data = data_dir_of(args, write=True)
    store = open_ingest_store(data)
    try:
        device = resolve_device(store.connection, args.device)
        try:
            if args.send_command == "cancel":
                command = cancel_command(store, device, args.seq)
            else:
                command = queue_command(store, device, name, fields)
        except (QueueError, StoreError) as exc:
            raise CommandError(str(exc), status=1) from None
    finally:
        store.close()
    if args.json:
        print(json.dumps({"device": str(device), "seq": command.seq, "cmd": command.cmd,
                          "args": command.args, "state": command.state}, ensure_ascii=False))
    elif args.send_command == "cancel":
        print(f"device {device}: {describe(command)}")
    else:
        print(f"queued for device {device}: {describe(command)} (goes out with the ack of its next frame)")
    return 0
