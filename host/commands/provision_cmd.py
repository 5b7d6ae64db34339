"""`carecard provision`: the village's sheet of elders checked whole (docs/provisioning-sheet.md).

    carecard provision --sheet ELDERS.csv|ELDERS.xlsx [--row N]

Every problem is listed with its row and column; with any problem the exit status is 1 and no
card is touched. A good sheet is listed as the cards will get it (numbers as E.164).
"""

from __future__ import annotations

import argparse
import sys

from carecard.host.commands.errors import EXIT_FAILED, CommandError


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "provision", help="check the sheet of elders the cards are set up from (CSV or .xlsx)",
        description="Read the village's sheet of elders (docs/provisioning-sheet.md), check all of "
                    "it and list every problem by row and column.")
    parser.add_argument("--sheet", required=True, metavar="FILE", help="the sheet: .csv (UTF-8) or .xlsx")
    parser.add_argument("--row", type=int, metavar="N", help="only this row (as the spreadsheet numbers it)")
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
    if args.row is not None:
        elders = [e for e in elders if e.row == args.row]
        if not elders:
            raise CommandError(f"--row {args.row}: no elder on that row of {args.sheet}")
    rows = [("ROW", "NAME", "KEY 1", "KEY 2", "KEY 3", "KEY 4", "WAKE", "BED", "SERVER")]
    for elder in elders:
        by_key = {c.key: f"{c.number} {c.name}" + (" (grid)" if c.key == elder.grid_worker_key else "")
                  for c in elder.contacts}
        rows.append((str(elder.row), elder.name, *(by_key.get(k, "-") for k in range(1, 5)),
                     elder.wake, elder.bed, f"{elder.server_host}:{elder.server_port}"))
    print_table(rows)
    print(f"{len(elders)} elder{'s' if len(elders) != 1 else ''} in {args.sheet}, no problems")
    return 0
