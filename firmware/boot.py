# Runs first at every boot, before any library is imported. The libraries in the ROMFS partition
# (mounted at /rom by MicroPython, ahead of /lib) are used only when `carecard flash` verified
# them: romfs.sha256 holds the sha256 of the image it deployed, written after the deploy was
# checked and removed before a new one starts. Anything else (an interrupted deploy, an image
# written by other means) is unmounted, so the libraries come from /lib (the same firmware's
# copy on the filesystem).
def _check_romfs():
    import sys
    import vfs

    if not hasattr(vfs, "rom_ioctl"):
        return
    try:
        with open("romfs.sha256") as f:
            want = f.read().strip()
        rom = memoryview(vfs.rom_ioctl(2, 0))
        size = 0
        end = 3
        while True:  # the header: d2 cd 31, then the length of the rest (7 bits a byte)
            b = rom[end]
            end += 1
            size = (size << 7) | (b & 0x7F)
            if not b & 0x80:
                break
        import hashlib
        import binascii

        good = bytes(rom[:3]) == b"\xd2\xcd\x31" and \
            binascii.hexlify(hashlib.sha256(rom[:end + size]).digest()).decode() == want
    except Exception:  # no marker, no partition, a broken header: not verified
        good = False
    if not good:
        try:
            vfs.umount("/rom")
        except OSError:
            pass
        sys.path[:] = [p for p in sys.path if p != "/rom" and not p.startswith("/rom/")]


_check_romfs()
del _check_romfs
