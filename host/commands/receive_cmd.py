"""`carecard receive`: run the host receiver (docs/receiver.md)."""

from __future__ import annotations

import argparse
import asyncio
import signal
from pathlib import Path
from typing import Any, Awaitable, Callable

from carecard.host.commands.errors import EXIT_FAILED, CommandError
from carecard.host.commands.datadir import DATA_HELP
from carecard.host.paths import DEFAULT_CONFIG_PATH, DataDirError, check_data_dir, config_path, resolve_data_dir
from carecard.host.storage import check_store_setting
from carecard.host.receiver.config import (
    DEFAULT_HOST,
    DEFAULT_PORT,
    LOG_FORMATS,
    LOG_LEVELS,
    ConfigError,
    ReceiverConfig,
    load_config,
    parse_endpoint,
    parse_serial,
)


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "receive",
        help="run the host receiver: frames in over UDP/TCP/serial, stored, acked, sent to the sinks",
        description="Run the host receiver. With no configuration it listens on UDP "
                    f"{DEFAULT_HOST}:{DEFAULT_PORT} and keeps everything in ./data. Flags override "
                    "the configuration file, CARECARD_DATA overrides its data_dir "
                    "(docs/receiver.md). Stops cleanly on SIGTERM or Ctrl-C.",
    )
    parser.add_argument("--udp", action="append", metavar="HOST:PORT",
                        help=f"listen for UDP frames (repeatable; default {DEFAULT_HOST}:{DEFAULT_PORT})")
    parser.add_argument("--tcp", action="append", metavar="HOST:PORT",
                        help="listen for TCP connections with the stream framing (repeatable)")
    parser.add_argument("--serial", action="append", metavar="DEVICE[:BAUD]",
                        help="read frames from a serial port with the stream framing (repeatable)")
    parser.add_argument("--data", metavar="DIR", help=DATA_HELP)
    parser.add_argument("--config", metavar="FILE",
                        help=f"TOML configuration file (default ./{DEFAULT_CONFIG_PATH} when it exists)")
    parser.add_argument("--metrics", metavar="HOST:PORT", help="serve Prometheus metrics at /metrics")
    parser.add_argument("--store", metavar="sqlite|URL",
                        help="where frames, events, the registry and commands are kept: sqlite (the "
                             "default, in the data folder) or postgresql://USER@HOST:PORT/DATABASE, "
                             "which several receivers may share (docs/operations.md)")
    parser.add_argument("--log-format", choices=LOG_FORMATS, help="text (key=value) or json lines")
    parser.add_argument("--log-level", choices=LOG_LEVELS)
    parser.add_argument("--accept-lost-history", action="store_true",
                        help="start although the database lost the replay and counter history of "
                             "devices that have keys (deleted, emptied, or restored from a backup): "
                             "every downlink counter jumps 2^24 ahead so none is reused, but frames "
                             "recorded before the loss can be stored again as new (docs/receiver.md)")
    parser.add_argument("--simulation-clock", metavar="FILE", type=Path,
                        help="simulation only (carecard demo): stamp frames and run the alert engine "
                             "on the virtual time a simulator writes into FILE, not the real clock")
    parser.set_defaults(func=run)


def build_config(args: argparse.Namespace) -> ReceiverConfig:
    """The configuration file (--config, else ./carecard.toml when it exists) with the flags over
    it. A bad flag is a usage error (2); a bad file or data folder a failure (1)."""
    try:
        udp = [parse_endpoint(text, "--udp") for text in args.udp or []]
        tcp = [parse_endpoint(text, "--tcp") for text in args.tcp or []]
        serial = [parse_serial(text, "--serial") for text in args.serial or []]
        metrics = parse_endpoint(args.metrics, "--metrics", default_port=None) if args.metrics else None
        store = check_store_setting(args.store, "--store") if args.store else None
    except (ConfigError, ValueError) as exc:
        raise CommandError(str(exc)) from None
    try:
        path = config_path(args.config)
        config = load_config(path) if path is not None else ReceiverConfig()
        data = resolve_data_dir(args.data, path, loaded=config)
        check_data_dir(data, write=True, must_exist=False)
    except (ConfigError, DataDirError) as exc:
        raise CommandError(str(exc), status=EXIT_FAILED) from None
    config.udp = udp or config.udp
    config.tcp = tcp or config.tcp
    config.serial = serial or config.serial
    config.metrics = metrics or config.metrics
    config.store = store or config.store
    config.data_dir = data.path
    if args.log_format:
        config.log_format = args.log_format
    if args.log_level:
        config.log_level = args.log_level
    config.accept_lost_history = bool(args.accept_lost_history)
    if args.simulation_clock is not None:
        from carecard.host.simclock import SimulationClock, SimulationClockError

        try:  # checked here: a wrong path is the caller's mistake, said before anything starts
            SimulationClock(args.simulation_clock).close()
        except SimulationClockError as exc:
            raise CommandError(f"--simulation-clock: {exc}") from None
        config.simulation_clock = args.simulation_clock
    config.ensure_listener()
    return config


def run_until_signalled(config: ReceiverConfig, serve: Callable[[asyncio.Event], Awaitable[Any]]) -> None:
    """Logging as `config` says, then `serve(stop)` on an event loop until SIGTERM or SIGINT sets
    `stop` (`carecard receive`, `carecard engine`); serve's errors propagate."""
    from carecard.host.receiver.logs import setup_logging
    from carecard.host.receiver.runtime import tune_gc

    try:
        setup_logging(config.log_format, config.log_level,
                      path=str(config.log_file) if config.log_file else None)
    except OSError as exc:
        raise CommandError(f"log file {config.log_file}: {exc.strerror}", status=1) from None

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await serve(stop)

    tune_gc()
    asyncio.run(main())


def run(args: argparse.Namespace) -> int:
    from carecard.host.receiver.service import StartupError, serve

    config = build_config(args)
    try:
        run_until_signalled(config, lambda stop: serve(config, stop))
    except StartupError as exc:
        raise CommandError(str(exc), status=1) from None
    return 0
