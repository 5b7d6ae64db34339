# Memory outside the MicroPython heap for simulated flash (the virtual device's ROMFS partition,
# tools/vdevice.py; the runner's flash, tools/micropython.py): the unix port can address nothing
# outside its GC heap but its environment strings (no ffi, no mmap), so the host starts it with
# placeholder variables first in its environment, together as long as the flash; this finds
# their bytes (/proc/self/stat ends with env_start, env_end, exit_code).
import uctypes


def environment_memory(key, size):
    """`size` bytes from the value of the first environment variable, whose `key` is b"NAME=".
    Raises OSError when it is not the first one."""
    with open("/proc/self/stat", "rb") as f:
        stat = f.read()
    start = int(stat[stat.rfind(b")") + 2:].split()[-3]) + len(key)
    if uctypes.bytes_at(start - len(key), len(key)) != key:
        raise OSError("%s is not the first environment variable" % key[:-1].decode())
    return memoryview(uctypes.bytearray_at(start, size))


def fill(view, f, what):
    """`view` filled from the open file `f`; OSError naming `what` when the file is shorter."""
    n = 0
    size = len(view)
    while n < size:
        got = f.readinto(view[n:n + 256])
        if not got:
            break
        n += got
    if n != size:
        raise OSError("%s: %d of %d bytes read" % (what, n, size))
