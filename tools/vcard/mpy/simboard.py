# The virtual card's board (the interface of firmware/board/__init__.py) on the MicroPython unix
# port. Not part of the card image: the runner (carecard.tools.vcard.runner) puts this folder on
# the path and hands over three file descriptors in the environment:
#   CARECARD_SIM_CTL   a pipe pair "r,w" to the runner: one request line, one reply line
#   CARECARD_SIM_MODEM the modem UART: a pty (the simulated A7670 on its master side)
#   CARECARD_SIM_GNSS  the GNSS UART: a pty (the simulated receiver)
# Time is virtual and owned by the runner: now_ms() is the time of the last reply, frozen while
# the firmware computes; idle() and deep_sleep() are where simulated time passes. Every reply
# carries "<now_ms> <event bits> <key and motion levels>", so keys, motion and RI cost no extra
# round trip. Outputs (LED, buzzer, PWRKEY, DTR, supplies) are one-way lines starting with "!".
import os
import select
import sys

_CTL = os.getenv("CARECARD_SIM_CTL")


def _fd(name):
    value = os.getenv(name)
    if value is None:
        raise OSError("simboard: %s is not set: run the firmware with carecard sim" % name)
    return int(value)


class _Uart:
    def __init__(self, fd):
        self.f = open(fd, "r+b")
        self.p = select.poll()
        self.p.register(self.f, select.POLLIN)

    def read(self, buf):
        if not self.p.poll(0):
            return 0
        n = self.f.readinto(buf)
        return n or 0

    def write(self, data):
        self.f.write(data)


class _MotionBus:
    """An LIS2DH12 at the register level, as far as the driver uses it (WHO_AM_I, control
    registers stored, INT1_SRC reporting and clearing the interrupt the runner raised)."""

    def __init__(self, board):
        self.b = board
        self.regs = bytearray(0x40)
        self.regs[0x0F] = 0x33   # WHO_AM_I

    def readfrom_mem_into(self, addr, reg, buf):
        reg &= 0x7F
        for i in range(len(buf)):
            r = (reg + i) & 0x3F
            if r == 0x31:        # INT1_SRC: IA bit while latched; reading clears the latch
                buf[i] = 0x40 | 0x2A if self.b._levels & 16 else 0
                self.b._levels &= ~16
            else:
                buf[i] = self.regs[r]

    def writeto_mem(self, addr, reg, buf):
        reg &= 0x7F
        for i in range(len(buf)):
            self.regs[(reg + i) & 0x3F] = buf[i]


class SimBoard:
    name = "sim"
    key_count = 4

    def __init__(self):
        r, w = _CTL.split(",")
        self._in = open(int(r), "rb")
        self._out = open(int(w), "wb")
        self._now = 0
        self._events = 0
        self._levels = 0
        self._fed = 0
        self._wd = 0
        self._analog = (0, False, False)
        self._analog_at = -1
        self.modem = _Uart(_fd("CARECARD_SIM_MODEM"))
        self.gnss = _Uart(_fd("CARECARD_SIM_GNSS"))
        reply = self._ask("hello")
        self._reset = reply[3] if len(reply) > 3 else "power_on"
        self._wake = "none"
        self.has_motion_bus = reply[4] == "1" if len(reply) > 4 else False
        self.motion_i2c = _MotionBus(self) if self.has_motion_bus else None

    # ---- the channel -------------------------------------------------------------------------
    def _ask(self, line):
        self._out.write(line.encode() + b"\n")   # unbuffered: no flush (fsync on a pipe fails)
        reply = self._in.readline()
        if not reply:
            sys.exit(0)          # the runner went away: the card is off
        words = reply.decode().split()
        self._now = int(words[0])
        self._events |= int(words[1])
        self._levels = int(words[2])
        return words

    def _tell(self, line):
        self._out.write(b"!" + line.encode() + b"\n")

    # ---- the interface -----------------------------------------------------------------------
    def now_ms(self):
        return self._now

    def take_events(self):
        ev = self._events
        self._events = 0
        return ev

    def key_level(self, k):
        return bool(self._levels & (1 << k))

    def motion_level(self):
        return bool(self._levels & 16)

    def modem_read(self, buf):
        return self.modem.read(buf)

    def modem_write(self, data):
        self.modem.write(data)

    def modem_pwrkey(self, pressed):
        self._tell("pwrkey %d" % (1 if pressed else 0))

    def modem_dtr(self, level):
        self._tell("dtr %d" % (1 if level else 0))

    def modem_power(self, on):
        self._tell("modem_power %d" % (1 if on else 0))
        return True

    def gnss_read(self, buf):
        return self.gnss.read(buf)

    def gnss_write(self, data):
        self.gnss.write(data)

    def gnss_power(self, on):
        self._tell("gnss_power %d" % (1 if on else 0))

    def gnss_backup(self, on):
        self._tell("gnss_backup %d" % (1 if on else 0))

    def battery_uv(self):
        if self._analog_at == self._now:
            return self._analog[0]
        return int(self._ask("battery")[3])

    def charger_pins(self):
        if self._analog_at == self._now:
            return self._analog[1], self._analog[2]
        words = self._ask("charger")
        return words[3] == "1", words[4] == "1"

    def buzzer(self, on):
        self._tell("buzzer %d" % (1 if on else 0))

    def vibration(self, on):
        self._tell("vibration %d" % (1 if on else 0))

    def led(self, on):
        self._tell("led %d" % (1 if on else 0))

    def watchdog_start(self, timeout_ms):
        self._wd = timeout_ms
        self._fed = self._now
        self._tell("watchdog %d" % timeout_ms)

    def feed(self):
        self._fed = self._now

    def rtc_unix(self):
        value = self._ask("rtc")[3]
        return None if value == "-" else int(value)

    def set_rtc_unix(self, unix_s):
        self._ask("set_rtc %d" % unix_s)

    def reset_cause(self):
        return self._reset

    def wake_cause(self):
        return self._wake

    def idle(self, ms, sleep):
        words = self._ask("idle %d %d %d" % (max(0, ms), 1 if sleep else 0, self._fed))
        self._wake = words[3]
        # the battery divider and charger pins as they are now (read with the reply: no
        # round trip per reading)
        self._analog = (int(words[4]), words[5] == "1", words[6] == "1")
        self._analog_at = self._now
        return self._wake

    def deep_sleep(self, ms):
        self._ask("deep %d %d" % (max(0, ms), self._fed))
        sys.exit(0)              # the runner restarts the card (reset cause deep_sleep)

    def reboot(self):
        self._ask("reboot")
        sys.exit(0)


_board = None


def open_board():
    global _board
    if _board is None:
        _board = SimBoard()
    return _board
