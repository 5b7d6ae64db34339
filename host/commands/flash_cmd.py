"""`carecard flash`: the card image onto one card or a batch, over USB with mpremote's transport.

    carecard flash --port /dev/ttyACM0 [--port /dev/ttyACM1 ...] [--image DIR] [--no-romfs]

Builds the image for each card's MicroPython (.mpy version and architecture read from the card),
copies only what changed under temporary names, verifies every file by a hash the card computes,
then sets the boot entry; on a card with a ROMFS partition the libraries go there too
(`mpremote romfs deploy`, verified by its sha256 on the card); a line of progress per card and
step, a summary table at the end.
"""

from __future__ import annotations

import argparse
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from carecard.host.commands.errors import EXIT_FAILED, CommandError


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "flash", help="flash the card firmware onto cards over USB (mpremote)",
        description="Build the card image for each card's MicroPython, copy what changed, verify "
                    "every file by its hash on the card, set the boot entry. Idempotent; an "
                    "interrupted copy leaves the previous firmware booting.")
    parser.add_argument("--port", action="append", required=True, metavar="PORT",
                        help="a card's serial port, e.g. /dev/ttyACM0 (repeat for a batch)")
    parser.add_argument("--image", metavar="DIR",
                        help="flash this folder as it is (laid out as on the card) instead of "
                             "building the image from this checkout")
    parser.add_argument("--no-romfs", dest="romfs", action="store_false",
                        help="do not use the cards' ROMFS partitions: the libraries run from the "
                             "filesystem only (a card that has one stops trusting it)")
    parser.add_argument("--timeout", type=float, default=8.0, metavar="S",
                        help="how long a card has to answer (default 8 s)")
    parser.set_defaults(func=run)


def print_table(rows: list[tuple[str, ...]]) -> None:
    from carecard.host.commands.devices_cmds import display_width, pad

    widths = [max(display_width(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(pad(cell, widths[i]) for i, cell in enumerate(row)).rstrip())


def run(args: argparse.Namespace) -> int:
    from carecard.host.factory.flash import ImageCache, flash_device
    from carecard.host.factory.link import DeviceError
    from carecard.tools.cardimage import CardImageError

    ports = list(dict.fromkeys(args.port))
    if len(ports) != len(args.port):
        raise CommandError("a port is given twice")
    if args.image:
        image: object = Path(args.image)
        if not Path(args.image).is_dir():
            raise CommandError(f"--image {args.image}: no such folder")
    else:
        cache = ImageCache()
        image = lambda info: cache.get(info.arch)  # noqa: E731
    lock = threading.Lock()

    def say(port: str, message: str) -> None:
        with lock:
            print(f"{port}: {message}", flush=True)

    def one(port: str) -> tuple[str, ...]:
        try:
            result = flash_device(port, image, progress=say, timeout=args.timeout,  # type: ignore[arg-type]
                                  romfs=args.romfs)
        except DeviceError as exc:
            say(port, f"FAILED: {exc.what}; {exc.fix}")
            return (port, "FAILED", "-", "-", "-", exc.what)
        except CardImageError as exc:
            say(port, f"FAILED: {exc}")
            return (port, "FAILED", "-", "-", "-", str(exc))
        state = "flashed" if result.copied or result.removed or result.romfs == "deployed" else "up to date"
        return (port, state, result.image_id, str(len(result.copied)), result.romfs, "")

    with ThreadPoolExecutor(max_workers=min(8, len(ports))) as pool:
        rows = list(pool.map(one, ports))
    print()
    print_table([("PORT", "RESULT", "IMAGE", "COPIED", "ROMFS", "PROBLEM")] + rows)
    failed = sum(1 for row in rows if row[1] == "FAILED")
    if failed:
        print(f"{failed} of {len(rows)} cards failed (see above)", file=sys.stderr)
        return EXIT_FAILED
    return 0
