"""`carecard check`: a full check of the data folder's SQLite files for damage (docs/receiver.md,
"A damaged database"). Exit status 0 when every file is sound, 1 when one is damaged."""

from __future__ import annotations

import argparse
import sys

from carecard.host.commands.errors import CommandError
from carecard.host.commands.datadir import add_data_options, data_dir_of
from carecard.host.paths import events_db_path, ingest_db_path


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "check",
        help="check the data folder's databases for damaged pages (SQLite integrity_check)",
        description="Run SQLite's full integrity check on the ingest database and the SQLite "
                    "sink's query store: every page, b-tree and index. Safe while the receiver "
                    "runs (read-only). Exit status 1 if anything is damaged, with the recovery "
                    "steps. The receiver itself runs the quicker quick_check at every start.",
    )
    add_data_options(parser)
    parser.add_argument("--salvage", action="store_true",
                        help="when the ingest database is damaged, copy every row that can still be "
                             "read into DIR/carecard.salvaged.sqlite (for when there is no backup)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from carecard.host.storage import StoreError
    from carecard.host.storage.sqlite.store import (
        check_database,
        recovery_steps,
        salvage_database,
        salvage_path,
    )

    data = data_dir_of(args)
    data_dir = data.path
    files = [path for path in (ingest_db_path(data_dir), events_db_path(data_dir)) if path.exists()]
    if not files:
        raise CommandError(f"no database in {data_dir} ({data.source}; {ingest_db_path(data_dir).name} "
                           "missing): pass the data folder with --data", status=1)
    damaged = []
    for path in files:
        problems = check_database(path, full=True)
        if problems:
            damaged.append(path)
            print(f"{path.name}: damaged, {len(problems)} problem{'s' if len(problems) > 1 else ''}"
                  f"{' (the first 100)' if len(problems) >= 100 else ''}:")
            for problem in problems:
                print(f"  {problem}")
        else:
            print(f"{path.name}: ok")
    ingest = ingest_db_path(data_dir)
    if args.salvage and ingest in damaged:
        target = salvage_path(ingest)
        try:
            tables = salvage_database(ingest, target)
        except StoreError as exc:
            raise CommandError(f"cannot salvage {ingest}: {exc}", status=1) from None
        print(f"salvaged into {target}:")
        for table, (rows, complete) in tables.items():
            print(f"  {table}: {rows} row{'' if rows == 1 else 's'}"
                  f"{'' if complete else ' (a damaged part skipped: rows lost)'}")
    elif args.salvage:
        print(f"{ingest.name} is not damaged: nothing to salvage")
    for path in damaged:
        print(f"carecard check: {path} is damaged: {recovery_steps(path)}", file=sys.stderr)
    return 1 if damaged else 0
