"""`carecard engine`: run the alert engine in this process (docs/receiver.md, "The alert engine").

`carecard receive` starts the engine as its child by default (`[engine] run = "child"`); run it
yourself with `[engine] run = "separately"` in the receiver's configuration, e.g. on another
machine that reaches the same PostgreSQL store, or as a second engine that stands by and takes
over when the first one dies. It reads the receiver's configuration file (its data folder, store
and `[engine]` table), the flags override it. Stops cleanly on SIGTERM or Ctrl-C.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from carecard.host.commands.datadir import DATA_HELP
from carecard.host.commands.errors import EXIT_FAILED, CommandError
from carecard.host.paths import DEFAULT_CONFIG_PATH, DataDirError, check_data_dir, config_path, resolve_data_dir
from carecard.host.receiver.config import (LOG_FORMATS, LOG_LEVELS, ConfigError, ReceiverConfig, load_config,
                                           parse_endpoint)
from carecard.host.storage import check_store_setting


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "engine",
        help="run the alert engine in this process (beside a receiver whose [engine] run = \"separately\")",
        description="Run the alert engine: it reads the event log of the store with its durable "
                    "cursor, raises alerts, handles acknowledgements and queues check-in prompts. "
                    "One engine steps at a time per store; a second one stands by and takes over "
                    "when the first dies. Reads the receiver's configuration file (docs/receiver.md); "
                    "flags override it. Stops cleanly on SIGTERM or Ctrl-C.")
    parser.add_argument("--data", metavar="DIR", help=DATA_HELP)
    parser.add_argument("--config", metavar="FILE",
                        help=f"the receiver's TOML configuration (default ./{DEFAULT_CONFIG_PATH} when it exists)")
    parser.add_argument("--store", metavar="sqlite|URL",
                        help="the store to follow: sqlite (in the data folder) or postgresql://USER@HOST:PORT/DATABASE")
    parser.add_argument("--settings", metavar="FILE", help="the engine's settings file (docs/events.md), "
                        "under the registry's")
    parser.add_argument("--metrics", metavar="HOST:PORT", help="serve Prometheus metrics at /metrics "
                        "(partitions held, lease ages, lag; default [engine] metrics, else none)")
    parser.add_argument("--log-format", choices=LOG_FORMATS, help="text (key=value) or json lines")
    parser.add_argument("--log-level", choices=LOG_LEVELS)
    parser.set_defaults(func=run)


def build_config(args: argparse.Namespace) -> ReceiverConfig:
    try:
        store = check_store_setting(args.store, "--store") if args.store else None
    except ValueError as exc:
        raise CommandError(str(exc)) from None
    try:
        metrics = parse_endpoint(args.metrics, "--metrics", default_port=None) if args.metrics else None
    except ConfigError as exc:
        raise CommandError(str(exc)) from None
    try:
        path = config_path(args.config)
        config = load_config(path) if path is not None else ReceiverConfig()
        data = resolve_data_dir(args.data, path, loaded=config)
        check_data_dir(data, write=True)
    except (ConfigError, DataDirError) as exc:
        raise CommandError(str(exc), status=EXIT_FAILED) from None
    config.data_dir = data.path
    config.store = store or config.store
    config.engine.metrics = metrics or config.engine.metrics
    if args.settings:
        config.engine.settings = Path(args.settings)
    if args.log_format:
        config.log_format = args.log_format
    if args.log_level:
        config.log_level = args.log_level
    return config


def run(args: argparse.Namespace) -> int:
    from carecard.host.commands.receive_cmd import run_until_signalled
    from carecard.host.engine.process import EngineStartError, engine_config, serve_engine

    config = build_config(args)
    try:
        run_until_signalled(config, lambda stop: serve_engine(engine_config(config), stop))
    except EngineStartError as exc:
        raise CommandError(f"alert engine: {exc}", status=EXIT_FAILED) from None
    return 0
