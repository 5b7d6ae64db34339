"""`carecard serve` (the village dashboard, carecard.host.dashboard) and `carecard users` (its
accounts: add, list, remove)."""

from __future__ import annotations

import argparse
import getpass
import socket
import sys

from carecard.host.commands.datadir import add_data_options, data_dir_of
from carecard.host.commands.errors import EXIT_FAILED, CommandError, CommandFailed

DEFAULT_LISTEN = "127.0.0.1:8080"


def register(subparsers: argparse._SubParsersAction) -> None:
    serve = subparsers.add_parser(
        "serve", help="run the village dashboard (web pages for grid workers and families)",
        description="Serve the dashboard: every card's state, a card's track, timeline and battery, "
                    "and the alerts with their acknowledge/resolve buttons (queued for the alert "
                    "engine). Reads the receiver's data folder; accounts: `carecard users`.")
    serve.add_argument("--listen", default=DEFAULT_LISTEN, metavar="HOST:PORT",
                       help=f"address to listen on (default {DEFAULT_LISTEN}; put a TLS proxy in "
                            "front for anything beyond this machine: the session cookie is Secure)")
    serve.add_argument("--settings", metavar="FILE",
                       help="the alert engine's settings file (homes, time zones, offline and battery limits); "
                            "the registry's engine settings (`carecard alerts settings`) override it as in the engine")
    serve.add_argument("--store", default="sqlite", metavar="sqlite|URL",
                       help="the receivers' store: sqlite (default, in the data folder) or "
                            "postgresql://USER@HOST:PORT/DATABASE (docs/operations.md); the query store "
                            "(events.sqlite) and the accounts stay in the data folder")
    serve.add_argument("--tiles", metavar="URL",
                       help="map tile URL template, e.g. https://tiles.example/{z}/{x}/{y}.png "
                            "(default: none; the track is drawn on a plain background)")
    serve.add_argument("--tile-attribution", default="", metavar="TEXT", help="attribution the tile provider asks for")
    add_data_options(serve)
    serve.set_defaults(func=run_serve)

    users = subparsers.add_parser(
        "users", help="dashboard accounts: add, list, remove",
        description="Accounts of the dashboard (DATA/dashboard.sqlite). Roles: admin (every card), "
                    "grid_worker (the cards of their --village, as `carecard devices add --village` "
                    "set them), family (one elder's card).")
    add_data_options(users)
    sub = users.add_subparsers(dest="users_command", metavar="ACTION", required=True)
    add = sub.add_parser("add", help="add an account (the password is asked, or read from stdin)")
    add.add_argument("name", help="login name (no spaces)")
    add.add_argument("--role", required=True, choices=("admin", "grid_worker", "family"))
    add.add_argument("--card", action="append", default=[], metavar="IMEI",
                     help="a card this account sees (repeatable; exactly one for family)")
    add.add_argument("--village", metavar="NAME", help="a grid worker's village: they see its cards")
    add.add_argument("--display-name", default="", metavar="TEXT", help="shown on pages and in acknowledgements")
    add.add_argument("--store", default="sqlite", metavar="sqlite|URL",
                     help="the receivers' store the --card IMEIs are registered in (as for serve)")
    add.add_argument("--password-stdin", action="store_true", help="read the password from the first line of stdin")
    add_data_options(add, top=False)
    add.set_defaults(func=run_users_add)
    lst = sub.add_parser("list", help="list the accounts")
    add_data_options(lst, top=False)
    lst.set_defaults(func=run_users_list)
    rm = sub.add_parser("remove", help="remove an account and end its sessions")
    rm.add_argument("name")
    add_data_options(rm, top=False)
    rm.set_defaults(func=run_users_remove)


def _accounts(args: argparse.Namespace):  # noqa: ANN202
    from carecard.host.dashboard.accounts import AccountError, AccountStore, accounts_db_path

    data = data_dir_of(args, write=True)
    try:
        return AccountStore(accounts_db_path(data.path))
    except AccountError as exc:
        raise CommandFailed(str(exc)) from None


def _read_password(args: argparse.Namespace) -> str:
    if args.password_stdin or not sys.stdin.isatty():
        line = sys.stdin.readline()
        return line.rstrip("\r\n")
    first = getpass.getpass("password: ")
    if getpass.getpass("again: ") != first:
        raise CommandError("the two passwords differ")
    return first


def run_users_add(args: argparse.Namespace) -> int:
    from carecard.host.dashboard.accounts import AccountError

    devices = []
    for text in args.card:
        if not (text.isdigit() and text.isascii() and len(text) <= 20):
            raise CommandError(f"--card {text!r} is not a card's IMEI (digits)")
        devices.append(int(text))
    store = _accounts(args)
    try:
        known = _registered(args)
        unknown = [d for d in devices if d not in known]
        if unknown:
            raise CommandFailed(f"card(s) {', '.join(map(str, unknown))} not registered (carecard devices add)")
        account = store.add(args.name, args.role, _read_password(args), devices, display_name=args.display_name,
                            village=args.village)
    except AccountError as exc:
        raise CommandFailed(str(exc)) from None
    finally:
        store.close()
    print(f"account {account.name} added ({account.role}"
          + (f"; cards {', '.join(map(str, account.devices))}" if account.devices else "")
          + (f"; village {account.village}" if account.village else "") + ")")
    return 0


def _registered(args: argparse.Namespace) -> set[int]:
    from carecard.host.dashboard.cards import CardData, DataError, registry_source

    try:
        source = registry_source(_store(args), data_dir_of(args).path)
    except DataError as exc:
        raise CommandFailed(str(exc)) from None
    try:
        return set(CardData(data_dir_of(args).path, source=source).devices())
    except DataError as exc:
        raise CommandFailed(str(exc)) from None
    finally:
        source.close()


def _store(args: argparse.Namespace) -> str:
    from carecard.host.storage import check_store_setting

    try:
        return check_store_setting(args.store, "--store")
    except ValueError as exc:
        raise CommandError(str(exc)) from None


def run_users_list(args: argparse.Namespace) -> int:
    store = _accounts(args)
    try:
        for account in store.list():
            cards = ",".join(map(str, account.devices)) or "-"
            if account.village:
                cards = f"village {account.village}" + ("" if cards == "-" else f" + {cards}")
            print(f"{account.name}\t{account.role}\t{cards}\t{account.display_name}")
    finally:
        store.close()
    return 0


def run_users_remove(args: argparse.Namespace) -> int:
    from carecard.host.dashboard.accounts import AccountError

    store = _accounts(args)
    try:
        store.remove(args.name)
    except AccountError as exc:
        raise CommandFailed(str(exc)) from None
    finally:
        store.close()
    print(f"account {args.name} removed")
    return 0


def parse_listen(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise CommandError(f"--listen {text!r} must be HOST:PORT, e.g. {DEFAULT_LISTEN}")
    return host.strip("[]"), int(port)


def run_serve(args: argparse.Namespace) -> int:
    import uvicorn

    from carecard.host.dashboard.app import DashboardConfig, make_app
    from carecard.host.dashboard.cards import DataError
    from carecard.host.engine.settings import Settings, SettingsError

    host, port = parse_listen(args.listen)
    store = _store(args)
    data = data_dir_of(args, write=True)
    tables = None
    if args.settings:
        try:
            tables = Settings.load_tables(args.settings)
        except SettingsError as exc:
            raise CommandFailed(str(exc)) from None
    try:
        app = make_app(DashboardConfig(data.path, tile_url=args.tiles, tile_attribution=args.tile_attribution,
                                       settings_tables=tables, store=store))
    except DataError as exc:
        raise CommandFailed(str(exc)) from None
    try:  # bound here so a busy or forbidden address is one line and exit status 1
        sock = socket.create_server((host, port), family=socket.AF_INET6 if ":" in host else socket.AF_INET)
    except OSError as exc:
        raise CommandError(f"cannot listen on {args.listen}: {exc.strerror or exc}", status=EXIT_FAILED) from None
    print(f"dashboard on http://{args.listen}/ (data {data.path})", file=sys.stderr, flush=True)
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=2))
    try:
        with sock:
            server.run(sockets=[sock])
    finally:
        app.state.data.source.close()
    return 0
