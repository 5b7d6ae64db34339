"""`carecard provision`: the village's sheet of elders checked whole (docs/provisioning-sheet.md),
then, with ports, one flashed card per port set up for its elder.

    carecard provision --sheet ELDERS.csv|ELDERS.xlsx [--row N ...]
    carecard provision --sheet ELDERS.csv --port PORT [--port PORT ...] [--row N ...] [--data DIR]

Every problem of the sheet is listed with its row and column; with any problem the exit status
is 1 and no card is touched. Without --port a good sheet is listed as the cards will get it
(numbers as E.164). With ports each card goes through host/factory/batch.py (the card's modem
driver: IMEI, ICCID, SIM, network, SIM phonebook; its config with a fresh key, read back), a line
of progress per card and step, then a summary table and a label line per card; the cards that
got through are registered in the data folder so a running receiver accepts them.
"""

from __future__ import annotations

import argparse
import sys

from carecard.host.commands.datadir import add_data_options
from carecard.host.commands.errors import EXIT_FAILED, CommandError

RECORDS_NAME = "provisioning.jsonl"


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "provision", help="check the sheet of elders the cards are set up from (CSV or .xlsx)",
        description="Read the village's sheet of elders (docs/provisioning-sheet.md), check all of "
                    "it and list every problem by row and column.")
    parser.add_argument("--sheet", required=True, metavar="FILE", help="the sheet: .csv (UTF-8) or .xlsx")
    parser.add_argument("--row", type=int, action="append", metavar="N",
                        help="only this row (as the spreadsheet numbers it); with --port, the row of "
                             "the card on the port given in the same place (repeat)")
    parser.add_argument("--port", action="append", metavar="PORT",
                        help="a flashed card's serial port, e.g. /dev/ttyACM0 (repeat for a batch): "
                             "provision it for its elder")
    add_data_options(parser)
    parser.add_argument("--records", metavar="FILE",
                        help="the provisioning records file to append to (default: "
                             f"{RECORDS_NAME} in the data folder); the engine settings and a log "
                             "of the cards are written beside it")
    parser.add_argument("--modem-wait", type=float, default=60.0, metavar="S",
                        help="how long each card's SIM and network may take (default 60 s)")
    parser.add_argument("--timeout", type=float, default=8.0, metavar="S",
                        help="how long a card has to answer on its port (default 8 s)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from carecard.host.commands.flash_cmd import print_table
    from carecard.host.factory.sheet import SheetError, read_sheet

    try:
        elders = read_sheet(args.sheet)
    except SheetError as exc:
        for problem in exc.problems:
            print(f"{exc.source}: {problem}", file=sys.stderr)
        count = len(exc.problems)
        print(f"{count} problem{'s' if count != 1 else ''}; no card was touched", file=sys.stderr)
        return EXIT_FAILED
    if args.port:
        return provision(args, elders)
    if args.row:
        missing = [r for r in args.row if r not in {e.row for e in elders}]
        if missing:
            raise CommandError(f"--row {missing[0]}: no elder on that row of {args.sheet}")
        elders = [e for e in elders if e.row in args.row]
    rows = [("ROW", "NAME", "KEY 1", "KEY 2", "KEY 3", "KEY 4", "WAKE", "BED", "SERVER")]
    for elder in elders:
        by_key = {c.key: f"{c.number} {c.name}" + (" (grid)" if c.key == elder.grid_worker_key else "")
                  for c in elder.contacts}
        rows.append((str(elder.row), elder.name, *(by_key.get(k, "-") for k in range(1, 5)),
                     elder.wake, elder.bed, f"{elder.server_host}:{elder.server_port}"))
    print_table(rows)
    print(f"{len(elders)} elder{'s' if len(elders) != 1 else ''} in {args.sheet}, no problems")
    return 0


def provision(args: argparse.Namespace, elders: list) -> int:
    """Provision one card per --port (the sheet already checked whole)."""
    import threading
    from pathlib import Path

    from carecard.host.commands.datadir import data_dir_of
    from carecard.host.commands.flash_cmd import print_table
    from carecard.host.factory.batch import BatchError, pair_ports, provision_batch
    from carecard.host.receiver.registry import RegistryError

    try:
        pairs = pair_ports(elders, args.port, args.row)
    except BatchError as exc:
        raise CommandError(f"{exc}; no card was touched") from None
    data = data_dir_of(args, write=True, must_exist=False)
    records = Path(args.records) if args.records else data.path / RECORDS_NAME
    lock = threading.Lock()

    def say(port: str, message: str) -> None:
        with lock:
            print(f"{port}: {message}", flush=True)

    try:
        outcomes = provision_batch(pairs, data_dir=data.path, records=records, modem_wait_s=args.modem_wait,
                                   timeout=args.timeout, progress=say)
    except RegistryError as exc:
        raise CommandError(f"the cards were set up but not registered: {exc}; provision them again "
                           "once that is fixed", status=EXIT_FAILED) from None
    rows = [("PORT", "ROW", "ELDER", "IMEI", "ICCID", "RESULT", "PROBLEM")]
    for o in outcomes:
        if o.result is not None:
            identity = o.result.identity
            rows.append((o.port, str(o.elder.row), o.elder.name, str(identity.imei), identity.iccid or "-",
                         f"provisioned (config v{o.result.config_version})", ""))
        else:
            what = o.error.what if o.error is not None else "?"
            rows.append((o.port, str(o.elder.row), o.elder.name, "-", "-", "FAILED", what))
    print()
    print_table(rows)
    done = [o for o in outcomes if o.result is not None]
    if done:
        from carecard.host.factory.provision import settings_path_of

        print()
        print("labels (IMEI  ICCID  elder):")
        for o in done:
            assert o.result is not None
            print(f"  {o.result.label}")
        print(f"registered {len(done)} card{'s' if len(done) != 1 else ''} in {data.path}; records in "
              f"{records}, engine settings in {settings_path_of(records)}")
    failed = len(outcomes) - len(done)
    if failed:
        print(f"{failed} of {len(outcomes)} cards failed (see above); put each right and run "
              f"carecard provision again for its --port and --row", file=sys.stderr)
        return EXIT_FAILED
    return 0
