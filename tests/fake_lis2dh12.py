# A register-level fake of the ST LIS2DH12 for tests, runs on MicroPython and CPython.
# Written from the datasheet's register map (DocID025056, section 8), independently of the
# driver: register addresses and access, reset values, reserved bits, the I2C sub-address
# auto-increment (MSB), the interrupt generator 1 (INT1_CFG / INT1_SRC / INT1_THS /
# INT1_DURATION) with threshold steps per full scale, latching (LIR_INT1) and the INT1 pin.
# The high-pass filter is modelled as "acceleration minus the reference taken when REFERENCE is
# read" (its reset in normal mode); events compare absolute values with the threshold (the low
# events' AND is the free-fall detector, which only works on absolute values).

# address -> (name, access, reset value)
REGISTERS = {
    0x07: ("STATUS_REG_AUX", "r", 0), 0x0C: ("OUT_TEMP_L", "r", 0), 0x0D: ("OUT_TEMP_H", "r", 0),
    0x0F: ("WHO_AM_I", "r", 0x33), 0x1E: ("CTRL_REG0", "rw", 0x10), 0x1F: ("TEMP_CFG_REG", "rw", 0),
    0x20: ("CTRL_REG1", "rw", 0x07), 0x21: ("CTRL_REG2", "rw", 0), 0x22: ("CTRL_REG3", "rw", 0),
    0x23: ("CTRL_REG4", "rw", 0), 0x24: ("CTRL_REG5", "rw", 0), 0x25: ("CTRL_REG6", "rw", 0),
    0x26: ("REFERENCE", "rw", 0), 0x27: ("STATUS_REG", "r", 0),
    0x28: ("OUT_X_L", "r", 0), 0x29: ("OUT_X_H", "r", 0), 0x2A: ("OUT_Y_L", "r", 0),
    0x2B: ("OUT_Y_H", "r", 0), 0x2C: ("OUT_Z_L", "r", 0), 0x2D: ("OUT_Z_H", "r", 0),
    0x2E: ("FIFO_CTRL_REG", "rw", 0), 0x2F: ("FIFO_SRC_REG", "r", 0),
    0x30: ("INT1_CFG", "rw", 0), 0x31: ("INT1_SRC", "r", 0), 0x32: ("INT1_THS", "rw", 0),
    0x33: ("INT1_DURATION", "rw", 0), 0x34: ("INT2_CFG", "rw", 0), 0x35: ("INT2_SRC", "r", 0),
    0x36: ("INT2_THS", "rw", 0), 0x37: ("INT2_DURATION", "rw", 0), 0x38: ("CLICK_CFG", "rw", 0),
    0x39: ("CLICK_SRC", "r", 0), 0x3A: ("CLICK_THS", "rw", 0), 0x3B: ("TIME_LIMIT", "rw", 0),
    0x3C: ("TIME_LATENCY", "rw", 0), 0x3D: ("TIME_WINDOW", "rw", 0), 0x3E: ("ACT_THS", "rw", 0),
    0x3F: ("ACT_DUR", "rw", 0),
}
# Bits the datasheet says must be written 0 (reserved or "must be set to 0").
MUST_BE_ZERO = {0x1F: 0x3F, 0x24: 0x30, 0x25: 0x05, 0x32: 0x80, 0x33: 0x80, 0x36: 0x80,
                0x37: 0x80, 0x3A: 0x80, 0x3B: 0x80, 0x3E: 0x80}
# CTRL_REG1 ODR[3:0] -> Hz (low-power mode rates where they differ).
ODR_HZ = {0: 0, 1: 1, 2: 10, 3: 25, 4: 50, 5: 100, 6: 200, 7: 400, 8: 1620, 9: 5376}
# CTRL_REG4 FS[1:0] -> INT1_THS step in mg.
THS_STEP_MG = {0: 16, 1: 32, 2: 62, 3: 186}

ENODEV = 19


class FakeLIS2DH12:
    def __init__(self, address=0x18, who_am_i=0x33, stuck=None):
        self.address = address
        self.regs = bytearray(0x40)
        for reg, (_name, _access, reset) in REGISTERS.items():
            self.regs[reg] = reset
        self.regs[0x0F] = who_am_i
        self.stuck = stuck or {}  # register -> value it always reads (a broken part)
        self.errors = []  # writes the datasheet forbids
        self.reference = (0, 0, 0)
        self.accel = (0, 0, 1000)  # mg; lying flat: gravity on Z
        self.run_count = 0  # consecutive samples meeting the interrupt condition
        self.pin_rises = 0
        self.pin = False
        self.writes = 0
        self._carry_us = 0

    # ------------------------------------------------------------------- machine.I2C API

    def _check(self, addr):
        if addr != self.address:
            raise OSError(ENODEV)

    def readfrom_mem_into(self, addr, memaddr, buf):
        self._check(addr)
        reg = memaddr & 0x7F
        for i in range(len(buf)):
            buf[i] = self._read(reg)
            if memaddr & 0x80:
                reg += 1

    def readfrom_mem(self, addr, memaddr, n):
        buf = bytearray(n)
        self.readfrom_mem_into(addr, memaddr, buf)
        return bytes(buf)

    def writeto_mem(self, addr, memaddr, buf):
        self._check(addr)
        reg = memaddr & 0x7F
        for b in buf:
            self._write(reg, b)
            if memaddr & 0x80:
                reg += 1

    # ----------------------------------------------------------------------- registers

    def _read(self, reg):
        if reg not in REGISTERS:
            self.errors.append("read of reserved register 0x%02x" % reg)
            return 0
        if reg in self.stuck:
            return self.stuck[reg]
        value = self.regs[reg]
        if reg == 0x26:
            self.reference = self.accel
        elif reg == 0x31:
            if self.latched():
                self.regs[0x31] = 0  # reading INT1_SRC releases the latch
                self._update_pin()
        return value

    def _write(self, reg, value):
        self.writes += 1
        info = REGISTERS.get(reg)
        if info is None:
            self.errors.append("write to reserved register 0x%02x (may damage the part)" % reg)
            return
        if info[1] != "rw":
            self.errors.append("write to read-only %s" % info[0])
            return
        if value & MUST_BE_ZERO.get(reg, 0):
            self.errors.append("%s: reserved bits set in 0x%02x" % (info[0], value))
        if reg == 0x1E and value != 0x10:
            self.errors.append("CTRL_REG0 must be 0x10 (pull-up on SA0 kept), got 0x%02x" % value)
        self.regs[reg] = value

    # --------------------------------------------------------------------- what is set

    def odr_hz(self):
        return ODR_HZ.get(self.regs[0x20] >> 4, 0)

    def low_power(self):
        return bool(self.regs[0x20] & 0x08)

    def full_scale_g(self):
        return (2, 4, 8, 16)[(self.regs[0x23] >> 4) & 3]

    def threshold_mg(self):
        return (self.regs[0x32] & 0x7F) * THS_STEP_MG[(self.regs[0x23] >> 4) & 3]

    def duration_samples(self):
        return self.regs[0x33] & 0x7F

    def latched(self):
        return bool(self.regs[0x24] & 0x08)

    def int1_routed(self):
        return bool(self.regs[0x22] & 0x40)

    def hp_on_int1(self):
        return bool(self.regs[0x21] & 0x01)

    # ----------------------------------------------------------------------- physics

    def hold(self, accel_mg, ms):
        """The card undergoes `accel_mg` (x, y, z) for `ms`: samples at the set data rate."""
        self.accel = tuple(accel_mg)
        hz = self.odr_hz()
        if not hz:
            return
        total = self._carry_us + ms * 1000
        period = 1000000 // hz
        n = total // period
        self._carry_us = total - n * period
        for _ in range(n):
            self._sample()

    def _sample(self):
        cfg = self.regs[0x30]
        ths = self.threshold_mg()
        values = self.accel
        if self.hp_on_int1():
            values = [a - r for a, r in zip(self.accel, self.reference)]
        src = 0
        for axis in range(3):
            v = abs(values[axis])
            if v > ths:
                src |= 2 << (2 * axis)  # XH, YH, ZH
            else:
                src |= 1 << (2 * axis)  # XL, YL, ZL
        enabled = cfg & 0x3F
        if cfg & 0x80:  # AOI: AND of the enabled events
            met = enabled != 0 and src & enabled == enabled
        else:
            met = src & enabled != 0
        self.run_count = self.run_count + 1 if met else 0
        active = met and self.run_count > self.duration_samples()
        if self.latched():
            if active and not self.regs[0x31] & 0x40:
                self.regs[0x31] = 0x40 | (src & enabled)
        else:
            self.regs[0x31] = (0x40 | (src & enabled)) if active else 0
        self._update_pin()

    def _update_pin(self):
        level = bool(self.regs[0x31] & 0x40) and self.int1_routed()
        if self.regs[0x25] & 0x02:  # INT_POLARITY: active low
            level = not level
        if level and not self.pin:
            self.pin_rises += 1
        self.pin = level
