"""Protocol codec speed: host decode+verify against a minimal baseline; card encode on MicroPython.

Host: frames/s for `decode_frame` of a position frame (authenticate, decrypt, parse) and, in the
same run on the same bytes, a minimal baseline (`struct.unpack_from` of the header plus
`hmac.digest`), and the ratio of time per frame (target: within 3x). Card: position frames/s
encoded by the firmware's codec on the MicroPython unix port, and the smallest heap it runs in.
"""

from __future__ import annotations

import argparse
import hmac
import statistics
import sys
import struct
import tempfile
import time
from pathlib import Path

from carecard.host.commands.errors import CommandError
from carecard.protocol import KeyRing, decode_frame, encode_frame
from carecard.protocol.doc import EXAMPLE_KEY, EXAMPLE_POSITION
from carecard.tools import micropython
from carecard.tools.bench import heap_rows, on_both_ports

CARD_ENCODE = """
import time, ccproto
e = ccproto.Encoder(861234567890123, bytes(range(16)))
m = {'lat_e7': 249012345, 'lon_e7': 1184567890, 'alt_m': 30, 'hdop_x10': 9, 'sats': 8, 'fix': 2,
     'fix_age_s': 3, 'speed_cms': 120, 'course_x10': 900, 'source': 0}
n = %d
t0 = time.ticks_us()
for counter in range(n):
    e.encode('position', m, counter, 1764374400)
dt = time.ticks_diff(time.ticks_us(), t0)
print(n * 1000000 // max(dt, 1))
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--frames", type=int, default=200_000, help="frames per host measurement")
    parser.add_argument("--rounds", type=int, default=5, help="alternating rounds (median is reported)")
    parser.add_argument("--card-frames", type=int, default=5_000, help="frames encoded on MicroPython")


def _rate(fn, frame: bytes, count: int) -> float:
    start = time.perf_counter()
    for _ in range(count):
        fn(frame)
    return count / (time.perf_counter() - start)


def run(args: argparse.Namespace) -> int:
    if args.frames < 1 or args.rounds < 1 or args.card_frames < 1:
        raise CommandError("--frames, --rounds and --card-frames must be positive")
    frame = encode_frame(EXAMPLE_POSITION, EXAMPLE_KEY)
    ring = KeyRing({EXAMPLE_POSITION["device"]: EXAMPLE_KEY})
    mac_key = ring.get(EXAMPLE_POSITION["device"]).mac_key  # type: ignore[union-attr]
    header = struct.Struct(">BBBQII")

    def baseline(data: bytes) -> bytes:
        header.unpack_from(data)
        return hmac.digest(mac_key, data[:-8], "sha256")

    def codec(data: bytes) -> dict:
        return decode_frame(data, ring)

    print(f"carecard bench protocol: measuring {args.rounds} rounds of {args.frames:,} host decodes, "
          "then the card's codec on MicroPython; each figure is printed when it is measured",
          file=sys.stderr, flush=True)
    print(f"position frame: {len(frame)} bytes", flush=True)
    codec_rates, base_rates = [], []
    for _ in range(args.rounds):  # alternate so machine noise hits both alike
        base_rates.append(_rate(baseline, frame, args.frames))
        codec_rates.append(_rate(codec, frame, args.frames))
    codec_rate = statistics.median(codec_rates)
    base_rate = statistics.median(base_rates)
    print(f"host decode+verify: {codec_rate:,.0f} frames/s ({1e6 / codec_rate:.2f} us/frame)")
    print(f"baseline unpack+hmac: {base_rate:,.0f} frames/s ({1e6 / base_rate:.2f} us/frame)")
    print(f"ratio (time per frame, codec/baseline): {base_rate / codec_rate:.2f}x (target <= 3x)")
    card_rate = int(micropython.run(CARD_ENCODE % args.card_frames).strip())
    print(f"card encode on MicroPython unix port ({micropython.current().name}): {card_rate:,} frames/s")
    image = micropython.card_image(compiled=True)

    def heaps() -> list[int]:
        workload = CARD_ENCODE % 100
        with tempfile.TemporaryDirectory(prefix="carecard-bench-protocol-") as tmp:
            rom = micropython.flash_folder(image, ("ccproto", "cccrypto", "ccspec"), Path(tmp))
            heap_rom = micropython.smallest_heap(workload, image=image, rom=rom)
        return [heap_rom, micropython.smallest_heap(workload, image=image),
                micropython.smallest_heap(workload)]

    measured = list(on_both_ports(heaps))
    labels = ["the .mpy files in flash (ROMFS, as a card ships them)", "the .mpy files loaded into RAM",
              "from source (compiled on the device)"]
    print(heap_rows("card codec smallest heap in bytes (import + 100 position frames encoded; the "
                    "card's figures are the 32-bit port's):",
                    [(label, [figures[i] for _, figures in measured]) for i, label in enumerate(labels)],
                    [port for port, _ in measured]))
    return 0
