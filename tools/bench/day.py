"""A simulated day of card activity and the smallest heap it runs in, on both MicroPython ports.

The firmware's runtime (firmware/lib/cardloop.py with every core it drives) runs 24 hours of
virtual time on a simulated board: a GNSS receiver that answers with NMEA fixes while powered
(a walk in the morning and in the afternoon, at home otherwise), motion interrupts while walking,
a key press every two hours in the daytime and one SOS long press, battery and charger pins, and
a modem that never answers (the modem simulator is the virtual card's: here the driver powers it,
probes, recovers and gives up, as with a dead module). Frames go into the flash outbox.

Printed: the day's counts (loop turns, uplinks, fixes), the wall time, and the smallest
`-X heapsize` that completes the day (bisection), on the 64-bit port and on the 32-bit one like
the card's, with the libraries as the card ships them: .mpy files in flash (ROMFS), also loaded
into RAM for comparison. Target: at most 64 KB on the card.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

from carecard.host.commands.errors import CommandError
from carecard.tools import micropython
from carecard.tools.cardimage import HARDWARE_DIR, HARDWARE_MODULE_PREFIX
from carecard.tools.bench import heap_rows, on_both_ports

TARGET = 64 * 1024

# The hardware data as the image's generated constant modules (hwdata.load prefers them).
HARDWARE_MODULES = tuple(HARDWARE_MODULE_PREFIX + p.stem for p in sorted(HARDWARE_DIR.glob("*.json")))
# Every module the runtime imports (the card's /lib), flashed as .mpy.
CARD_MODULES = ("at", "battery", "cardapp", "cardfs", "cardloop", "ccproto", "cccrypto", "ccspec",
                "civil", "config", "counter", "gnss", "hwdata", "keys", "lis2dh12", "modem",
                "modem_a7670", "modem_data", "modem_sms", "modem_voice", "nmea", "outbox",
                "positions", "scheduler", "smspdu") + HARDWARE_MODULES

DAY = r'''
import gc, os, board, config, cardloop

ROOT = %(root)r
HOURS = %(hours)d
for name in ("outbox.log", "outbox.log.tmp", "uplink.cnt", "uplink.cnt.tmp"):
    try:
        os.remove(ROOT + name)
    except OSError:
        pass

def _sum(s):
    c = 0
    for ch in s:
        c ^= ord(ch)
    return "%%02X" %% c

class I2C:
    def __init__(self):
        self.regs = bytearray(64)
        self.regs[0x0F] = 0x33
        self.regs[0x31] = 0x6A
    def readfrom_mem_into(self, addr, reg, buf):
        r = reg & 0x7F
        for i in range(len(buf)):
            buf[i] = self.regs[r + i]
    def writeto_mem(self, addr, reg, buf):
        r = reg & 0x7F
        for i in range(len(buf)):
            self.regs[r + i] = buf[i]

BASE_DAY = 20426  # 2025-12-04
BASE_UNIX = BASE_DAY * 86400

class DayBoard:
    name = "sim"
    key_count = 4
    has_motion_bus = True
    def __init__(self):
        self.t = 0
        self.events = 0
        self.keys = [False, False, False, False]
        self.motion_i2c = I2C()
        self.gnss_on = False
        self.nmea_sent = -1
        self.pending = []
        self.script = []
        self.turns = 0
        t = 0
        for hour in range(HOURS):
            base = hour * 3600000
            if 8 <= hour < 20 and hour %% 2 == 0:
                self.script.append((base + 600000, 0, True))
                self.script.append((base + 600300, 0, False))
            if hour == 15:
                self.script.append((base + 1800000, 1, True))
                self.script.append((base + 1803000, 1, False))
            if hour in (9, 16):
                for m in range(0, 1800000, 10000):
                    self.script.append((base + m, -1, None))
        self.script.sort()
    def walking(self):
        h = self.t // 3600000
        return h in (9, 16) and self.t %% 3600000 < 1800000
    def now_ms(self):
        return self.t
    def take_events(self):
        e = self.events
        self.events = 0
        return e
    def key_level(self, k):
        return self.keys[k]
    def motion_level(self):
        return False
    def modem_read(self, buf):
        return 0
    def modem_write(self, data):
        pass
    def modem_pwrkey(self, pressed):
        pass
    def modem_dtr(self, level):
        pass
    def modem_power(self, on):
        return False
    def _epoch(self, s):
        # one NMEA epoch (RMC, GGA, GSA) at second s of the day, at home or along the walk
        metres = (self.t %% 3600000) // 1000 if self.walking() else 0
        lat = 24.9012345 + metres * 0.00001
        secs = s %% 86400
        hh, mm, ss = secs // 3600, secs %% 3600 // 60, secs %% 60
        t = "%%02d%%02d%%02d.00" %% (hh, mm, ss)
        d, m = int(lat), (lat - int(lat)) * 60
        la = "%%02d%%08.5f" %% (d, m)
        out = []
        for body in ("GNRMC,%%s,A,%%s,N,11834.5678,E,0.5,90.0,041225,,,A" %% (t, la),
                     "GNGGA,%%s,%%s,N,11834.5678,E,1,08,0.9,30.0,M,0.0,M,," %% (t, la),
                     "GNGSA,A,3,01,02,03,04,05,06,07,08,,,,,1.5,0.9,1.2"):
            out.append("$%%s*%%s\r\n" %% (body, _sum(body)))
        return "".join(out).encode()
    def gnss_read(self, buf):
        if not self.gnss_on:
            return 0
        s = self.t // 1000
        if s == self.nmea_sent:
            return 0
        self.nmea_sent = s
        data = self._epoch(BASE_UNIX + s)
        n = min(len(data), len(buf))
        buf[:n] = data[:n]
        return n
    def gnss_write(self, data):
        pass
    def gnss_power(self, on):
        self.gnss_on = on
    def gnss_backup(self, on):
        pass
    def battery_uv(self):
        return 1950000 - self.t // 100000
    def charger_pins(self):
        return False, False
    def buzzer(self, on):
        pass
    def vibration(self, on):
        pass
    def led(self, on):
        pass
    def watchdog_start(self, ms):
        pass
    def feed(self):
        pass
    def rtc_unix(self):
        return None
    def set_rtc_unix(self, s):
        pass
    def reset_cause(self):
        return "power_on"
    def wake_cause(self):
        return board.WAKE_NONE
    def idle(self, ms, sleep):
        self.turns += 1
        end = self.t + ms
        script = self.script
        if script and script[0][0] <= end:
            t, k, level = script.pop(0)
            if t > self.t:
                self.t = t
            if k < 0:
                self.events |= board.EV_MOTION
                return board.WAKE_MOTION
            self.keys[k] = level
            self.events |= board.EV_KEY << k
            return board.WAKE_KEY
        self.t = end
        return board.WAKE_TIMER

cfg = config.load(ROOT + "config.json")
hw = DayBoard()
loop = cardloop.CardLoop(hw, cfg, root=ROOT)
end = HOURS * 3600000
while hw.t < end:
    loop.step()
pol = loop.positions
print("DAY", hw.turns, loop.uplinks_made, pol.fixes, pol.no_fixes, pol.held_sent, len(loop.outbox),
      loop.outbox.evicted, len(loop.problems))
'''


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--hours", type=int, default=24, help="simulated hours (default 24)")


def workload(root: Path, hours: int) -> str:
    config = {"device_id": 861234567890123, "device_key": "000102030405060708090a0b0c0d0e0f",
              "server_host": "127.0.0.1", "server_port": 9,
              "contacts": [{"key": k, "name": f"contact {k}", "number": f"+86138000000{k:02d}"}
                           for k in range(1, 5)]}
    root.mkdir(parents=True, exist_ok=True)
    (root / "config.json").write_text(json.dumps(config))
    return DAY % {"root": str(root) + "/", "hours": hours}


def run(args: argparse.Namespace) -> int:
    if not 1 <= args.hours <= 24 * 7:
        raise CommandError("--hours must be 1 to 168")
    print(f"carecard bench day: {args.hours} simulated hours of the card's runtime on a simulated "
          "board, then the smallest heap on both ports (a bisection of whole days)",
          file=sys.stderr, flush=True)
    image = micropython.card_image(compiled=True)
    with tempfile.TemporaryDirectory(prefix="carecard-bench-day-") as tmp:
        code = workload(Path(tmp) / "card", args.hours)
        rom = micropython.flash_folder(image, CARD_MODULES, Path(tmp) / "rom")
        started = time.perf_counter()
        out = micropython.run(code, image=image, rom=rom, timeout=600)
        wall = time.perf_counter() - started
        day = next((line.split() for line in out.splitlines() if line.startswith("DAY ")), None)
        if day is None:
            raise CommandError(f"the simulated day printed no result: {out[-500:]}")
        turns, uplinks, fixes, no_fixes, held, depth, evicted, problems = (int(x) for x in day[1:])
        print(f"simulated day: {args.hours} h in {wall:.1f} s wall time "
              f"({micropython.current().name} port): {turns:,} loop turns, {uplinks} uplinks "
              f"({depth} in the outbox, {evicted} evicted), {fixes} fixes, {no_fixes} without a fix, "
              f"{held} held positions, {problems} problems")

        def heaps() -> list[int]:
            return [micropython.smallest_heap(code, image=image, rom=rom, high=512 * 1024, step=512),
                    micropython.smallest_heap(code, image=image, high=512 * 1024, step=512)]

        measured = list(on_both_ports(heaps))
    labels = ["the .mpy files in flash (ROMFS, as a card ships them)", "the .mpy files loaded into RAM"]
    print(heap_rows(f"card runtime smallest heap in bytes (a simulated day of {args.hours} h; the card's "
                    "figures are the 32-bit port's):",
                    [(label, [figures[i] for _, figures in measured]) for i, label in enumerate(labels)],
                    [port for port, _ in measured]))
    card = next(figures[0] for port, figures in measured if port.bits == 32)
    verdict = "within" if card <= TARGET else "OVER"
    print(f"card heap (32-bit, ROMFS): {card:,} bytes, {verdict} the {TARGET:,}-byte target")
    return 0
