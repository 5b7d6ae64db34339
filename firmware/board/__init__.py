# The board layer: the only code of the card that touches `machine` and `esp32`. On the card it
# is the package /lib/board (this folder); the cores in /lib never import it, they are handed
# what it makes (the motion sensor's I2C bus, bytes read from the UARTs, the clock's readings).
#
#   import board
#   hw = board.open_board()       # the board this firmware runs on (see open_board)
#
# The interface every board implements (the ESP32-S3 reference board in board/esp32s3.py, the
# virtual card's simulated board in the module `simboard`). Times are milliseconds of
# hw.now_ms(), which never wraps; levels are booleans, True = active (pressed, on, charging).
#
#   name                    "esp32s3", "sim", ...: which board (logged in the hello)
#   key_count               number of keys (4)
#   has_motion_bus          True when the board has the motion sensor's I2C bus wired; whether
#                           a sensor answers on it is the motion driver's present()
#   motion_i2c              the sensor's bus (machine.I2C: readfrom_mem_into, writeto_mem) for
#                           lis2dh12.LIS2DH12, or None
#
#   now_ms()                monotonic ms since boot, never wraps (msclock.MsClock on ticks_ms)
#   take_events()           bits set by interrupts since the last call, cleared by the call:
#                           EV_KEY << k for key k (0-based) changing level, EV_MOTION (motion
#                           interrupt), EV_RI (modem ring indicator pulse). Interrupt handlers
#                           only set these bits; everything else happens in the main loop.
#   key_level(k)            the key's level now (True = pressed)
#   motion_level()          the motion interrupt pin's level (True = interrupt latched)
#
#   modem_read(buf)         bytes waiting from the modem UART into buf (a bytearray): count
#   modem_write(data)       bytes to the modem UART
#   modem_pwrkey(pressed)   PWRKEY (True = pressed: the modem's PWRKEY pulled low)
#   modem_dtr(level)        DTR (1 = the modem may sleep after AT+CSCLK=1, 0 = keep it awake)
#   modem_power(on)         the modem's supply switch; False = the board has none
#   gnss_read(buf) / gnss_write(data)   the GNSS UART, as for the modem
#   gnss_power(on)          the GNSS main supply
#   gnss_backup(on)         the GNSS backup supply (V_BCKP: keeps hot-start data while off)
#
#   battery_uv()            the battery divider's pin voltage in microvolts (calibrated);
#                           battery.Battery.pin_uv_to_mv gives battery millivolts
#   charger_pins()          (chrg_low, stdby_low): the charger's status pins, True = pulled low
#   buzzer(on) / vibration(on) / led(on)   the alert outputs
#
#   watchdog_start(timeout_ms)   start the watchdog (cannot be stopped once started)
#   feed()                  feed it
#   rtc_unix()              Unix seconds from the RTC, or None when it was never set since power-on
#   set_rtc_unix(unix_s)    set the RTC
#   reset_cause()           why the card started: a name of the protocol's ENUMS["reset_cause"]
#   wake_cause()            why the last sleep ended: one of WAKE_CAUSES
#   idle(ms, sleep)         wait up to ms, returning early when an event bit is set if it can;
#                           sleep=True allows light sleep (modem UART quiet, GNSS off): then keys,
#                           motion and RI wake it, and the return is the wake cause
#   deep_sleep(ms)          sleep until ms passed or a key, motion or RI wakes the card; the card
#                           then restarts from main.py (reset_cause "deep_sleep"); never returns
#   reboot()                restart the card; never returns
EV_KEY = 1  # key k: EV_KEY << k (bits 0..3)
EV_MOTION = 16
EV_RI = 32
EV_KEYS = 15  # any key

WAKE_KEY = "key"
WAKE_MOTION = "motion"
WAKE_RI = "ri"
WAKE_TIMER = "timer"
WAKE_NONE = "none"  # not woken from sleep (a power-on, or idle without sleep ran out)
WAKE_CAUSES = (WAKE_KEY, WAKE_MOTION, WAKE_RI, WAKE_TIMER, WAKE_NONE)


def open_board():
    """The board this firmware runs on: the ESP32-S3 reference board on an ESP32 port; on any
    other port (the unix port of the virtual card) the module `simboard`'s open_board(), which
    the virtual card puts on the path."""
    import sys

    if sys.platform == "esp32":
        from board.esp32s3 import ESP32S3Board

        return ESP32S3Board()
    try:
        import simboard  # pyright: ignore[reportMissingImports]  (the virtual card's, not in firmware/)
    except ImportError:
        raise ImportError("board: no board for platform %r: on the unix port the virtual card "
                          "provides the module simboard (carecard sim)" % sys.platform)
    return simboard.open_board()
