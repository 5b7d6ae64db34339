"""MicroPython source of a filesystem that loses power, for the services of the flash-backed cores'
tests (outbox, config): prepended to a service script, it defines PowerCut, CutFile and CutFs.

CutFs(budget, flip=False) wraps cardfs.OsFs: writes go through until `budget` bytes are spent
(the byte at which the power went; the partial write reaches the file), a rename or remove costs
one unit (it happens whole or not), and after the cut every call raises PowerCut. flip=True
corrupts the last byte of every write (a flash that writes wrong bits)."""

POWER_CUT_FS = r"""
import cardfs

class PowerCut(OSError):
    pass

class CutFile:
    def __init__(self, fs, f):
        self.fs = fs
        self.f = f
    def write(self, data):
        fs = self.fs
        fs.check()
        n = len(data)
        if n > fs.budget:
            self.f.write(data[:fs.budget])
            self.f.close()
            fs.budget = -1
            raise PowerCut("power cut")
        fs.budget -= n
        if fs.flip:
            data = bytes(data[:-1]) + bytes([data[-1] ^ 1])
        return self.f.write(data)
    def read(self):
        self.fs.check()
        return self.f.read()
    def readinto(self, b):
        self.fs.check()
        return self.f.readinto(b)
    def seek(self, *a):
        self.fs.check()
        return self.f.seek(*a)
    def tell(self):
        return self.f.tell()
    def flush(self):
        self.fs.check()
        return self.f.flush()
    def close(self):
        self.f.close()

class CutFs:
    def __init__(self, budget, flip=False):
        self.budget = budget
        self.flip = flip
        self.real = cardfs.OsFs()
    def check(self):
        if self.budget < 0:
            raise PowerCut("power is off")
    def meta(self):
        self.check()
        if self.budget == 0:
            self.budget = -1
            raise PowerCut("power cut")
        self.budget -= 1
    def open(self, path, mode):
        self.check()
        return CutFile(self, self.real.open(path, mode))
    def rename(self, a, b):
        self.meta()
        self.real.rename(a, b)
    def remove(self, p):
        self.meta()
        self.real.remove(p)
"""
