# The ESP32-S3 reference board (hardware/pins_carecard_s3.json, hardware/parts.md): the board
# interface of board/__init__.py on `machine` and `esp32`. Every pin and figure comes from
# hardware/ through hwdata; nothing is made at import, everything in ESP32S3Board().
#
# Interrupts: the keys, the motion sensor's INT1 and the modem's RI each have a Pin.irq whose
# handler only sets a bit in self._events (soft IRQs on this port, run between bytecodes, so an
# int attribute is safe to set); take_events() reads and clears it with interrupts disabled.
#
# Sleep: keys (active high) and INT1 (active high) share the ext1 ANY_HIGH wake set; RI (active
# low) is the ext0 source. Outputs that must keep their level through deep sleep (PWRKEY, DTR,
# GNSS power and backup) are RTC GPIOs held with Pin(hold=True) around each change.
import esp32
import machine
import time

import board
import hwdata
from msclock import MsClock
from rtcdate import rtc_from_unix, unix_from_rtc

# machine.reset_cause() -> the protocol's reset_cause names (ENUMS["reset_cause"]); a brownout
# reset reads as HARD_RESET on this port.
_RESET_NAMES = {
    machine.PWRON_RESET: "power_on",
    machine.HARD_RESET: "hard",
    machine.WDT_RESET: "watchdog",
    machine.DEEPSLEEP_RESET: "deep_sleep",
    machine.SOFT_RESET: "soft",
}
# Pin.init's `hold` keyword (esp32 port: gpio_hold_en, the level survives deep sleep; see the
# esp32 quick reference, "Pins and GPIO") is missing from the ESP32-S3 stubs' signature.
_HOLD_ON = {"hold": True}
_HOLD_OFF = {"hold": False}
_KEY_NAMES = ("key1", "key2", "key3", "key4")
# the RTC holds no date before this year only if nobody set it (it starts at 2000 after power-on)
_RTC_VALID_FROM_YEAR = 2024


def _gpio(pins, name):
    try:
        return pins[name]["gpio"]
    except (KeyError, TypeError):
        raise ValueError("pin map: no gpio for %r (hardware/pins_carecard_s3.json)" % name)


def _baud(hw, what):
    try:
        return hw["uart"]["baud"]["value"]
    except (KeyError, TypeError):
        raise ValueError("%s: no uart.baud.value (hardware/%s.json)" % (what, what))


class ESP32S3Board:
    name = "esp32s3"

    def __init__(self, modem_hw="modem_a7670", gnss_hw="gnss_l76k"):
        self._clock = MsClock(time.ticks_ms)
        self._events = 0
        self._woke = board.WAKE_NONE
        self._wdt = None
        pinmap = hwdata.load("pins_carecard_s3")
        pins = pinmap["pins"]
        adc = pinmap["battery_adc"]
        i2c = pinmap["accel_i2c"]
        modem_baud = _baud(hwdata.load(modem_hw), modem_hw)
        gnss_baud = _baud(hwdata.load(gnss_hw), gnss_hw)

        self._keys = []
        for index in range(len(_KEY_NAMES)):
            pin = machine.Pin(_gpio(pins, _KEY_NAMES[index]), machine.Pin.IN, machine.Pin.PULL_DOWN)
            pin.irq(self._key_handler(index), machine.Pin.IRQ_RISING | machine.Pin.IRQ_FALLING)
            self._keys.append(pin)
        self.key_count = len(self._keys)

        self._int1 = machine.Pin(_gpio(pins, "accel_int1"), machine.Pin.IN, machine.Pin.PULL_DOWN)
        self._int1.irq(self._on_motion, machine.Pin.IRQ_RISING)
        self.has_motion_bus = True
        self.motion_i2c = machine.I2C(i2c["bus"], scl=machine.Pin(_gpio(pins, "accel_scl")),
                                      sda=machine.Pin(_gpio(pins, "accel_sda")), freq=i2c["freq_hz"])

        self._ri = machine.Pin(_gpio(pins, "modem_ri"), machine.Pin.IN, machine.Pin.PULL_UP)
        self._ri.irq(self._on_ri, machine.Pin.IRQ_FALLING)
        self._pwrkey = self._held_output(_gpio(pins, "modem_pwrkey"), 0)
        self._dtr = self._held_output(_gpio(pins, "modem_dtr"), 0)
        self._modem = machine.UART(pins["modem_tx"]["uart"], modem_baud, tx=_gpio(pins, "modem_tx"),
                                   rx=_gpio(pins, "modem_rx"), rxbuf=1024)

        self._gnss_power = self._held_output(_gpio(pins, "gnss_power"), 0)
        self._gnss_backup = self._held_output(_gpio(pins, "gnss_backup"), 1)
        self._gnss = machine.UART(pins["gnss_tx"]["uart"], gnss_baud, tx=_gpio(pins, "gnss_tx"),
                                  rx=_gpio(pins, "gnss_rx"), rxbuf=512)

        self._adc = machine.ADC(machine.Pin(adc["gpio"]), atten=machine.ADC.ATTN_11DB)
        self._chrg = machine.Pin(_gpio(pins, "charger_chrg"), machine.Pin.IN, machine.Pin.PULL_UP)
        self._stdby = machine.Pin(_gpio(pins, "charger_stdby"), machine.Pin.IN, machine.Pin.PULL_UP)

        self._buzzer_pin = machine.Pin(_gpio(pins, "buzzer"), machine.Pin.OUT, value=0)
        self._buzzer = None
        self._vibration = machine.Pin(_gpio(pins, "vibration"), machine.Pin.OUT, value=0)
        self._led = machine.Pin(_gpio(pins, "led"), machine.Pin.OUT, value=0)

        esp32.wake_on_ext1(self._keys + [self._int1], esp32.WAKEUP_ANY_HIGH)
        esp32.wake_on_ext0(self._ri, esp32.WAKEUP_ALL_LOW)
        self._rtc = machine.RTC()

    # ---- interrupts: set a bit, nothing else --------------------------------------------------
    def _key_handler(self, index):
        bit = board.EV_KEY << index

        def handler(pin):
            self._events |= bit

        return handler

    def _on_motion(self, pin):
        self._events |= board.EV_MOTION

    def _on_ri(self, pin):
        self._events |= board.EV_RI

    def take_events(self):
        state = machine.disable_irq()
        events = self._events
        self._events = 0
        machine.enable_irq(state)
        return events

    # ---- clock, keys, motion -------------------------------------------------------------------
    def now_ms(self):
        return self._clock.now()

    def key_level(self, k):
        return self._keys[k].value() == 1

    def motion_level(self):
        return self._int1.value() == 1

    # ---- modem ---------------------------------------------------------------------------------
    def _held_output(self, gpio, level):
        pin = machine.Pin(gpio, machine.Pin.OUT, value=level)
        pin.init(**_HOLD_ON)
        return pin

    def _set_held(self, pin, level):
        pin.init(**_HOLD_OFF)
        pin.value(level)
        pin.init(**_HOLD_ON)

    def modem_read(self, buf):
        if not self._modem.any():
            return 0
        n = self._modem.readinto(buf)
        return n or 0

    def modem_write(self, data):
        self._modem.write(data)

    def modem_pwrkey(self, pressed):
        self._set_held(self._pwrkey, 1 if pressed else 0)

    def modem_dtr(self, level):
        self._set_held(self._dtr, 1 if level else 0)

    def modem_power(self, on):
        return False  # the modem sits on VBAT: no supply switch on this board

    # ---- GNSS ----------------------------------------------------------------------------------
    def gnss_read(self, buf):
        if not self._gnss.any():
            return 0
        n = self._gnss.readinto(buf)
        return n or 0

    def gnss_write(self, data):
        self._gnss.write(data)

    def gnss_power(self, on):
        self._set_held(self._gnss_power, 1 if on else 0)

    def gnss_backup(self, on):
        self._set_held(self._gnss_backup, 1 if on else 0)

    # ---- battery and outputs -------------------------------------------------------------------
    def battery_uv(self):
        return self._adc.read_uv()

    def charger_pins(self):
        return self._chrg.value() == 0, self._stdby.value() == 0

    def buzzer(self, on):
        if on:
            if self._buzzer is None:
                self._buzzer = machine.PWM(self._buzzer_pin, freq=2700, duty_u16=32768)
        elif self._buzzer is not None:
            self._buzzer.deinit()
            self._buzzer = None
            self._buzzer_pin.init(machine.Pin.OUT, value=0)

    def vibration(self, on):
        self._vibration.value(1 if on else 0)

    def led(self, on):
        self._led.value(1 if on else 0)

    # ---- watchdog, RTC, resets, sleep ----------------------------------------------------------
    def watchdog_start(self, timeout_ms):
        if self._wdt is None:
            self._wdt = machine.WDT(timeout=timeout_ms)

    def feed(self):
        if self._wdt is not None:
            self._wdt.feed()

    def rtc_unix(self):
        dt = self._rtc.datetime()
        if dt[0] < _RTC_VALID_FROM_YEAR:
            return None
        return unix_from_rtc(dt)

    def set_rtc_unix(self, unix_s):
        self._rtc.datetime(rtc_from_unix(unix_s))

    def reset_cause(self):
        return _RESET_NAMES.get(machine.reset_cause(), "unknown")

    def wake_cause(self):
        return self._woke

    def _cause_after_sleep(self):
        reason = machine.wake_reason()
        if reason == machine.EXT0_WAKE:
            return board.WAKE_RI
        if reason == machine.EXT1_WAKE:
            # the ext1 set holds the keys and INT1: INT1 stays latched until the driver reads it
            for pin in self._keys:
                if pin.value():
                    return board.WAKE_KEY
            return board.WAKE_MOTION
        if reason == machine.TIMER_WAKE:
            return board.WAKE_TIMER
        return board.WAKE_NONE

    def idle(self, ms, sleep):
        if ms <= 0:
            return board.WAKE_NONE
        if sleep:
            machine.lightsleep(ms)
            self._woke = self._cause_after_sleep()
            return self._woke
        # awake: wait in short slices so an interrupt bit is seen within one slice
        end = self.now_ms() + ms
        while self._events == 0:
            left = end - self.now_ms()
            if left <= 0:
                break
            time.sleep_ms(left if left < 10 else 10)
        self._woke = board.WAKE_NONE
        return self._woke

    def deep_sleep(self, ms):
        machine.deepsleep(ms)

    def reboot(self):
        machine.reset()
