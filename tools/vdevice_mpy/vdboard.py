# The board of a virtual mpremote device (carecard.tools.vdevice), on the MicroPython unix port:
# the interface of firmware/board/__init__.py in real time. The device's start-up registers
# this module as `simboard`, so the firmware's own board.open_board() finds it. Not part of the
# card image.
#
# What it has: the modem UART is the device's UART 1 and the GNSS UART its UART 2
# (vdevice.uarts: ptys opened non-blocking; a missing one reads nothing and swallows writes).
# What a bench card on a USB cable has and no more: no key is ever pressed, no motion sensor,
# the battery reads a charged cell on USB power (charger full), the RTC is the host's clock
# once set, the watchdog is not enforced. Outputs (PWRKEY, DTR, supplies, buzzer, LED) are
# counted in `outputs` so a test can see what the firmware drove.
import select
import sys
import time

_BATTERY_MV = 4150     # a charged cell on the bench


class _Uart:
    def __init__(self, f):
        self.f = f
        self.p = select.poll()
        if f is not None:
            self.p.register(f, select.POLLIN)

    def read(self, buf):
        if self.f is None or not self.p.poll(0):
            return 0
        n = self.f.readinto(buf)   # the fd is non-blocking: what is there, or None
        return n or 0

    def write(self, data):
        if self.f is None:
            return
        view = memoryview(data)
        while view:
            try:
                n = self.f.write(view)
            except OSError:   # EAGAIN: the other side is slow to read
                n = 0
            if n:
                view = view[n:]
            else:
                time.sleep_ms(2)


class VDeviceBoard:
    name = "vdevice"
    key_count = 4
    has_motion_bus = False
    motion_i2c = None

    def __init__(self):
        import vdevice

        self._t0 = time.ticks_ms()
        self._wrap = 0
        self._last = 0
        self.modem = _Uart(vdevice.uarts.get(1))
        self.gnss = _Uart(vdevice.uarts.get(2))
        self._rtc_offset = None
        self._wake = "none"
        self.outputs = {}

    def _out(self, name, value):
        self.outputs[name] = value

    def now_ms(self):
        # ticks_ms wraps (2**30 ms on the unix port); count the wraps so this never does
        t = time.ticks_diff(time.ticks_ms(), self._t0)
        if t < self._last:
            self._wrap += 1 << 30
        self._last = t
        return self._wrap + t

    def take_events(self):
        return 0

    def key_level(self, k):
        return False

    def motion_level(self):
        return False

    def modem_read(self, buf):
        return self.modem.read(buf)

    def modem_write(self, data):
        self.modem.write(data)

    def modem_pwrkey(self, pressed):
        self._out("pwrkey", pressed)

    def modem_dtr(self, level):
        self._out("dtr", level)

    def modem_power(self, on):
        return False   # no supply switch on the bench

    def gnss_read(self, buf):
        return self.gnss.read(buf)

    def gnss_write(self, data):
        self.gnss.write(data)

    def gnss_power(self, on):
        self._out("gnss_power", on)

    def gnss_backup(self, on):
        self._out("gnss_backup", on)

    def battery_uv(self):
        import hwdata

        adc = hwdata.load("pins_carecard_s3")["battery_adc"]
        top, bottom = adc["divider_top_ohm"], adc["divider_bottom_ohm"]
        return _BATTERY_MV * 1000 * bottom // (top + bottom)

    def charger_pins(self):
        return (False, True)   # on USB, charged: STDBY low

    def buzzer(self, on):
        self._out("buzzer", on)

    def vibration(self, on):
        self._out("vibration", on)

    def led(self, on):
        self._out("led", on)

    def watchdog_start(self, timeout_ms):
        self._out("watchdog", timeout_ms)

    def feed(self):
        pass

    def rtc_unix(self):
        if self._rtc_offset is None:
            return None
        return int(time.time()) + self._rtc_offset

    def set_rtc_unix(self, unix_s):
        self._rtc_offset = int(unix_s) - int(time.time())

    def reset_cause(self):
        return "power_on"

    def wake_cause(self):
        return self._wake

    def idle(self, ms, sleep):
        # wait for input from the modem or GNSS UART, or for ms
        poll = select.poll()
        for uart in (self.modem, self.gnss):
            if uart.f is not None:
                poll.register(uart.f, select.POLLIN)
        poll.poll(max(0, min(ms, 1000)))
        self._wake = "none"
        return self._wake

    def deep_sleep(self, ms):
        time.sleep_ms(max(0, ms))
        sys.exit(0)        # the device restarts the interpreter, as a reset would

    def reboot(self):
        sys.exit(0)


_board = None


def open_board():
    global _board
    if _board is None:
        _board = VDeviceBoard()
    return _board
