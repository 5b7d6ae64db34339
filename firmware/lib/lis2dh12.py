# ST LIS2DH12 accelerometer: the card's motion sensor, register level, over an injected I2C
# object (machine.I2C's readfrom_mem_into / writeto_mem; the board layer makes it).
#
#   acc = LIS2DH12(i2c)                      # part data: hwdata.load("accel_lis2dh12")
#   acc.present()                            # False: no sensor (the card reports motion unknown)
#   acc.configure(threshold_mg, duration_ms) # low-power any-motion interrupt on INT1, latched
#   src = acc.service()                      # after INT1 rose (ISR flag): reads INT1_SRC, which
#                                            # clears the latch; counts the interrupt
#   acc.take_count()                         # interrupts since the last call (for status frames)
#   acc.power_down()
#
# Any-motion detection: the interrupt generator 1 compares the high-pass-filtered acceleration
# (gravity removed; the filter is reset by reading REFERENCE) with INT1_THS on every axis, OR of
# the three "high" events, for INT1_DURATION samples; INT1 is latched (LIR_INT1) so a sleeping
# MCU finds the cause when it wakes. Register addresses and bits below are the datasheet's
# register map (ST LIS2DH12 datasheet DocID025056, section 8); threshold scaling, data rate and
# address are data in hardware/accel_lis2dh12.json.

try:
    from micropython import const
except ImportError:  # CPython (host tools)

    def const(x):
        return x


WHO_AM_I = const(0x0F)
CTRL_REG1 = const(0x20)
CTRL_REG2 = const(0x21)
CTRL_REG3 = const(0x22)
CTRL_REG4 = const(0x23)
CTRL_REG5 = const(0x24)
CTRL_REG6 = const(0x25)
REFERENCE = const(0x26)
INT1_CFG = const(0x30)
INT1_SRC = const(0x31)
INT1_THS = const(0x32)
INT1_DURATION = const(0x33)

_LPEN = const(0x08)  # CTRL_REG1: low-power mode
_XYZ = const(0x07)  # CTRL_REG1: X, Y, Z enabled
_HP_IA1 = const(0x01)  # CTRL_REG2: high-pass filter on interrupt generator 1
_I1_IA1 = const(0x40)  # CTRL_REG3: interrupt generator 1 on the INT1 pin
_BDU = const(0x80)  # CTRL_REG4: block data update
_LIR_INT1 = const(0x08)  # CTRL_REG5: latch INT1 until INT1_SRC is read
_CFG_ANY_HIGH = const(0x2A)  # INT1_CFG: OR of ZHIE, YHIE, XHIE
SRC_IA = const(0x40)  # INT1_SRC: an interrupt is active
_SEVEN_BITS = const(0x7F)

# CTRL_REG1 ODR[3:0] by output data rate (Hz) in low-power mode.
_ODR_CODES = {1: 1, 10: 2, 25: 3, 50: 4, 100: 5, 200: 6, 400: 7}
# CTRL_REG4 FS[1:0] by full scale (g).
_FS_CODES = {2: 0, 4: 1, 8: 2, 16: 3}


class MotionError(Exception):
    """The sensor is absent, answers wrongly or its data is unusable (says what and why)."""


class LIS2DH12:
    def __init__(self, i2c, part=None):
        if part is None:
            import hwdata

            part = hwdata.load("accel_lis2dh12")
        try:
            self.address = int(part["i2c"]["address"])
            self._who = int(part["i2c"]["who_am_i"])
            mode = part["mode"]
            self.odr_hz = int(mode["odr_hz"])
            self.full_scale_g = int(mode["full_scale_g"])
            low_power = mode["low_power"]
            self.lsb_mg = int(part["threshold_lsb_mg"][str(self.full_scale_g)])
        except (KeyError, TypeError, ValueError) as e:
            raise MotionError("accel_lis2dh12 data lacks or mangles %r" % (e.args[0] if e.args else e,))
        if self.odr_hz not in _ODR_CODES or self.full_scale_g not in _FS_CODES or self.lsb_mg < 1:
            raise MotionError("accel_lis2dh12 mode: odr_hz %r must be one of %r, full_scale_g %r one of %r"
                              % (self.odr_hz, sorted(_ODR_CODES), self.full_scale_g, sorted(_FS_CODES)))
        self._ctrl1 = (_ODR_CODES[self.odr_hz] << 4) | (_LPEN if low_power else 0) | _XYZ
        self._i2c = i2c
        self._b1 = bytearray(1)
        self.count = 0  # interrupts serviced since boot
        self._taken = 0
        self.spurious = 0  # services that found no interrupt active (a missed or shared edge)
        self.threshold_mg = 0  # what the chip was set to, after rounding to its steps
        self.duration_ms = 0

    # -------------------------------------------------------------------------- registers

    def _read(self, reg):
        try:
            self._i2c.readfrom_mem_into(self.address, reg, self._b1)
        except OSError as e:
            raise MotionError("LIS2DH12 at 0x%02x: reading register 0x%02x failed (%s): check the "
                              "I2C wiring and pull-ups" % (self.address, reg, e))
        return self._b1[0]

    def _write(self, reg, value):
        self._b1[0] = value
        try:
            self._i2c.writeto_mem(self.address, reg, self._b1)
        except OSError as e:
            raise MotionError("LIS2DH12 at 0x%02x: writing register 0x%02x failed (%s)"
                              % (self.address, reg, e))

    # ---------------------------------------------------------------------------- public

    def present(self):
        """True when the chip answers with its WHO_AM_I; False when nothing (or something else)
        is at the address: the card then has no motion sensor."""
        try:
            return self._read(WHO_AM_I) == self._who
        except MotionError:
            return False

    def steps(self, threshold_mg, duration_ms):
        """The chip's (INT1_THS, INT1_DURATION) for a threshold and duration, rounded to the
        nearest step: at least one threshold step (zero would fire on noise), at most 127."""
        if threshold_mg < 0 or duration_ms < 0:
            raise MotionError("motion threshold %r mg and duration %r ms cannot be negative"
                              % (threshold_mg, duration_ms))
        ths = (threshold_mg * 2 + self.lsb_mg) // (2 * self.lsb_mg)
        ths = 1 if ths < 1 else (_SEVEN_BITS if ths > _SEVEN_BITS else ths)
        dur = (duration_ms * self.odr_hz * 2 + 1000) // 2000
        dur = _SEVEN_BITS if dur > _SEVEN_BITS else dur
        return ths, dur

    def configure(self, threshold_mg, duration_ms):
        """Low-power any-motion interrupt on INT1. Checks WHO_AM_I first and every register
        written after; raises MotionError saying what went wrong."""
        who = self._read(WHO_AM_I)
        if who != self._who:
            raise MotionError("no LIS2DH12 at 0x%02x: WHO_AM_I reads 0x%02x, expected 0x%02x"
                              % (self.address, who, self._who))
        ths, dur = self.steps(threshold_mg, duration_ms)
        # The interrupt generator is off while it is set up, so a half-made setting never fires.
        settings = (
            (INT1_CFG, 0),
            (CTRL_REG1, self._ctrl1),
            (CTRL_REG2, _HP_IA1),
            (CTRL_REG3, _I1_IA1),
            (CTRL_REG4, _BDU | (_FS_CODES[self.full_scale_g] << 4)),
            (CTRL_REG5, _LIR_INT1),
            (CTRL_REG6, 0),
            (INT1_THS, ths),
            (INT1_DURATION, dur),
        )
        for reg, value in settings:
            self._write(reg, value)
        for reg, value in settings:
            got = self._read(reg)
            if got != value:
                raise MotionError("LIS2DH12 register 0x%02x reads 0x%02x after writing 0x%02x"
                                  % (reg, got, value))
        self._read(REFERENCE)  # sets the high-pass filter's reference to the acceleration now
        self._write(INT1_CFG, _CFG_ANY_HIGH)
        if self._read(INT1_CFG) != _CFG_ANY_HIGH:
            raise MotionError("LIS2DH12 INT1_CFG did not take the any-motion setting")
        self._read(INT1_SRC)  # clears a latch left from before
        self.threshold_mg = ths * self.lsb_mg
        self.duration_ms = dur * 1000 // self.odr_hz

    def service(self):
        """Read and clear the interrupt source (INT1_SRC); counts it when an interrupt was
        active. Returns the source bits (SRC_IA, then ZH ZL YH YL XH XL)."""
        src = self._read(INT1_SRC)
        if src & SRC_IA:
            self.count += 1
        else:
            self.spurious += 1
        return src

    def take_count(self):
        """Interrupts since the previous call."""
        n = self.count - self._taken
        self._taken = self.count
        return n

    def power_down(self):
        self._write(INT1_CFG, 0)
        self._write(CTRL_REG1, 0)  # ODR 0: power-down mode
