"""A virtual MicroPython board behind a real pty, for the real `mpremote` (tests, demos, a
factory line without cards).

    with VirtualDevice(folder) as dev:       # folder: the board's flash filesystem
        subprocess.run(["mpremote", "connect", dev.port, "exec", "print(1)"])

The MicroPython unix port runs behind a second pty of its own and a proxy thread copies bytes
between the two. What a board does and the unix port does not, the proxy and a start-up script
make up for (design.md, "what a virtual device must handle"):

- flash: the folder is mounted at `/` (`vfs.VfsPosix`), the working folder is `/`, `sys.path` is
  a board's (`''`, `.frozen`, `/lib`), so mpremote's `fs` commands (which run `os`/`open` on the
  device) and `cp -r dir :` work on the folder; `flash_size` makes `os.statvfs` report a flash
  of that size with the folder's files counted in it (a nearly full card);
- boot: `boot.py`, then `main.py` unless the client is in the raw REPL, then the friendly REPL
  with its banner;
- soft reset: Ctrl-D on an empty REPL ends the unix port; the proxy starts it again, prints
  `MPY: soft reboot` and re-enters the raw REPL if the client was in it;
- Ctrl-C: the child's pty keeps ISIG, so it interrupts running code (boot.py and main.py too);
- output: the child's pty has OPOST off (no newline translation: mpremote must see its prompts
  byte for byte); input that arrives while the child starts is held until its REPL reads
  (the REPL flushes pending input when it switches its terminal to raw mode).

The client end is a real `/dev/pts/N` (a symlink would make pyserial poll, ten times slower),
whose slave side this object keeps open, so clients can connect, disconnect and connect again.
Several devices run at once, each with its own pair of ptys and its own thread.

Hardware a board has beyond its REPL is reached through UARTs: `uarts={1: "/dev/pts/7"}` opens
those ptys (non-blocking) for the child, which finds them as `vdevice.uarts[1]`, file objects
(`import vdevice`: a namespace the start-up puts in `sys.modules`; `vdevice.reset()` ends the
interpreter as a hardware reset would, and the device starts it again). The firmware's
`board.open_board()` finds the device's board (tools/vdevice_mpy/vdboard.py, registered as
`simboard`): the modem on UART 1 (the simulated A7670, carecard.tools.vcard.pty_modem), the
GNSS on UART 2, in real time.
"""

from __future__ import annotations

import argparse
import errno
import fcntl
import os
import pty
import select
import signal
import subprocess
import sys
import termios
import threading
import time
import tty
from pathlib import Path
from typing import Any

SOFT_REBOOT = b"MPY: soft reboot\r\n"
_BANNER_END = b'for more information.\r\n>>> '
_RAW_PROMPT = b"raw REPL; CTRL-B to exit\r\n"
_FRIENDLY_PROMPT = b"\r\n>>> "
_CTRL_A = b"\x01"
# What the REPL prints when it waits for input: friendly, continuation, paste mode, raw.
_PROMPTS = (b">>> ", b"... ", b"=== ", b"\r\n>", b"\x04>")
# Input after which the friendly REPL (or the raw REPL leaving for it) resets its terminal.
_FRIENDLY_GATES = (b"\r", b"\n", b"\x01", b"\x02", b"\x03", b"\x04", b"\x05")
_RAW_GATES = (b"\x02",)
_CTRL_C = 0x03
# Printed by the start-up script when it has its Ctrl-C handler (never reaches the client): a
# SIGINT before that would end the unix port (its default action), not interrupt it.
_UP_MARKER = b"\x1b_vdevice-up\x1b\\"
# The ROMFS partition (romfs_size > 0): the file FOLDER.romfs beside the flash folder, of this
# default size: the card's image libraries take ~160 KB as ROMFS today (hardware/ gives no
# partition table; 256 KiB leaves them room to grow and fits a 4 MB flash's spare space).
DEFAULT_ROMFS_SIZE = 256 * 1024
ROMFS_BLOCK_SIZE = 4096  # an ESP32's flash erase sector
ROMFS_VARIABLE = "VDEVICE_ROMFS"
# The device's board (the interface of firmware/board), registered as `simboard` at start-up.
BOARD_DIR = Path(__file__).resolve().parent / "vdevice_mpy"

# Run by the child before its REPL: the folder becomes the filesystem, then boot.py/main.py.
_BOOT_SCRIPT = """\
import os, sys, vfs

class vdevice:
    uarts = {}

    @staticmethod
    def reset():
        # a hardware reset: the interpreter ends and the device starts it again
        os.system("kill -TERM $PPID")

for _id, _fd in UARTS.items():
    vdevice.uarts[_id] = open(_fd, "r+b")
sys.modules["vdevice"] = vdevice
sys.path.insert(0, BOARD_DIR)
import vdboard
sys.path.pop(0)
sys.modules["simboard"] = vdboard
del vdboard
if ROM_SIZE:
    # The ROMFS partition: the placeholder environment strings (the first ones, together at
    # least ROM_SIZE bytes: memory outside the heap, as a card's memory-mapped flash) hold the
    # partition file's bytes; `vfs` becomes the built-in one plus rom_ioctl over them, written
    # through to the file.
    def _vdevice_partition():
        sys.path.insert(0, BOARD_DIR)
        import envmem
        sys.path.pop(0)
        rom = envmem.environment_memory(ROM_KEY, ROM_SIZE)
        for name in ROM_NAMES:
            os.unsetenv(name)  # its memory is the partition's now, not a string for children
        f = open(ROM_FILE, "r+b")  # kept open: the host's paths are gone once / is the folder
        envmem.fill(rom, f, "vdevice: the ROMFS partition file")
        del sys.modules["envmem"]
        return rom, f

    _rom, _rom_file = _vdevice_partition()
    del _vdevice_partition
vfs.umount("/")
_fs = vfs.VfsPosix(ROOT)
if FLASH_SIZE:
    class _SizedFlash:
        # The folder as a flash of FLASH_SIZE bytes: statvfs counts the files' sizes.
        def __init__(self, inner):
            self.inner = inner
        def mount(self, readonly, mkfs):
            pass
        def umount(self):
            pass
        def statvfs(self, path):
            used = self._used("/")
            total = FLASH_SIZE // 4096
            free = max(0, total - used)
            return (4096, 4096, total, free, free, 0, 0, 0, 0, 255)
        def _used(self, folder):
            blocks = 1
            for entry in self.inner.ilistdir(folder):
                path = folder.rstrip("/") + "/" + entry[0]
                if entry[1] == 0x4000:
                    blocks += self._used(path)
                else:
                    blocks += (self.inner.stat(path)[6] + 4095) // 4096
            return blocks
    for _name in ("open", "ilistdir", "stat", "chdir", "getcwd", "mkdir", "remove", "rename", "rmdir"):
        setattr(_SizedFlash, _name, (lambda n: lambda self, *a: getattr(self.inner, n)(*a))(_name))
    _fs = _SizedFlash(_fs)
vfs.mount(_fs, "/")
del _fs
os.chdir("/")
sys.path[:] = ["", ".frozen", "/lib"]
if ROM_SIZE:
    def _vdevice_rom_ioctl(rom, rom_file):
        # MicroPython's vfs.rom_ioctl: 1 partitions; 2 the partition (memoryview); 3 prepare
        # (erase to 0xFF, returns the smallest write); 4 write at an offset; 5 finish; 6 block
        # size. Its state lives in this closure, never in the REPL's globals.
        def put(offset, data):
            rom[offset:offset + len(data)] = data
            rom_file.seek(offset)
            rom_file.write(data)
            rom_file.flush()

        def rom_ioctl(op, *args):
            if op == 1:
                return 1
            if not args or args[0] != 0:
                return -19  # ENODEV
            if op == 2:
                return rom
            if op == 6:
                return ROM_BLOCK
            if op == 3:
                offset, length = (0, args[1]) if len(args) == 2 else (args[1], args[2])
                if offset < 0 or length < 0 or offset + length > ROM_SIZE:
                    return -22  # EINVAL
                erased = b"\\xff" * ROM_BLOCK
                for at in range(offset, offset + length, ROM_BLOCK):
                    put(at, erased[:min(ROM_BLOCK, offset + length - at)])
                return 4
            if op == 4:
                offset, data = args[1], args[2]
                if offset < 0 or offset + len(data) > ROM_SIZE:
                    return -22
                put(offset, data)
                return 0
            if op == 5:
                return 0  # every write went to the file already
            return -22

        return rom_ioctl

    class _vfs_with_rom:
        rom_ioctl = staticmethod(_vdevice_rom_ioctl(_rom, _rom_file))

    for _name in dir(vfs):
        if not _name.startswith("__"):
            setattr(_vfs_with_rom, _name, getattr(vfs, _name))
    sys.modules["vfs"] = _vfs_with_rom
    # as a port with ROMFS boots: a valid image is mounted at /rom, ahead of /lib on sys.path
    if bytes(_rom[:3]) == b"\\xd2\\xcd\\x31":
        try:
            vfs.mount(vfs.VfsRom(_rom), "/rom")
            sys.path[:] = ["", ".frozen", "/rom", "/rom/lib", "/lib"]
        except OSError as e:
            print("vdevice: the ROMFS partition does not mount:", e)
    del _vfs_with_rom, _vdevice_rom_ioctl, _rom, _rom_file, _name

def _vdevice_run(name):
    try:
        os.stat(name)
    except OSError:
        return
    try:
        exec(open(name).read(), {"__name__": "__main__"})
    except KeyboardInterrupt:
        print("KeyboardInterrupt in", name)
    except SystemExit:
        pass
    except Exception as e:
        sys.print_exception(e)

print(UP_MARKER, end="")
_vdevice_run("boot.py")
if not RAW:
    _vdevice_run("main.py")
del _vdevice_run, vdevice, os, sys, vfs
"""


class VirtualDeviceError(RuntimeError):
    """The virtual device cannot start (no interpreter, the folder missing)."""


def _default_interpreter() -> str:
    from carecard.tools.micropython import micropython_executable

    return micropython_executable()


class VirtualDevice:
    """One virtual board: `port` is the client's /dev/pts/N once started."""

    def __init__(self, folder: Path | str, *, interpreter: str | None = None,
                 uarts: dict[int, str] | None = None, heapsize: int | None = None,
                 flash_size: int = 0, romfs_size: int = 0) -> None:
        self.folder = Path(folder).resolve()
        if not self.folder.is_dir():
            raise VirtualDeviceError(f"{self.folder}: no such folder for the device's flash")
        if romfs_size < 0 or romfs_size % ROMFS_BLOCK_SIZE:
            raise VirtualDeviceError(f"romfs_size {romfs_size}: a ROMFS partition is a whole number "
                                     f"of {ROMFS_BLOCK_SIZE}-byte blocks")
        # > 0: a ROMFS partition of this size, kept in romfs_path (it survives resets, as flash)
        self.romfs_size = romfs_size
        self.romfs_path = self.folder.with_name(self.folder.name + ".romfs")
        self.interpreter = interpreter or _default_interpreter()
        self.uarts = dict(uarts or {})
        self.heapsize = heapsize
        self.flash_size = flash_size  # > 0: statvfs reports a flash of this size, files counted
        self.port = ""
        self.boots = 0  # interpreter starts: 1 + soft resets
        self.raw_paste_accepted = 0  # raw-paste requests the interpreter accepted (R\x01)
        self._paste_asked = False
        self._client_master = -1
        self._client_slave = -1
        self._child_master = -1
        self._child: subprocess.Popen[bytes] | None = None
        self._raw = False  # the client's REPL mode, from what the child printed last
        self._gate_closed = False  # input waits in _held until the REPL prompts again
        self._held = bytearray()
        self._tail = b""
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._script = ""
        self._lock = threading.Lock()

    # --- life cycle ---------------------------------------------------------------------------

    def start(self) -> "VirtualDevice":
        import tempfile

        if self.romfs_size:
            if not self.romfs_path.exists():
                self.romfs_path.write_bytes(b"\xff" * self.romfs_size)  # erased flash
            elif self.romfs_path.stat().st_size != self.romfs_size:
                raise VirtualDeviceError(f"{self.romfs_path}: the ROMFS partition file has "
                                         f"{self.romfs_path.stat().st_size} bytes, not {self.romfs_size}; "
                                         "delete it to start with an erased partition")

        self._client_master, self._client_slave = pty.openpty()
        tty.setraw(self._client_slave)
        self.port = os.ttyname(self._client_slave)
        folder = tempfile.mkdtemp(prefix="carecard-vdevice-")
        self._script = os.path.join(folder, "vboot.py")
        self._spawn(raw=False)
        self._thread = threading.Thread(target=self._pump, name=f"vdevice {self.port}", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._kill_child()
        for fd in (self._client_master, self._client_slave):
            if fd >= 0:
                os.close(fd)
        self._client_master = self._client_slave = -1
        if self._script:
            import shutil

            shutil.rmtree(os.path.dirname(self._script), ignore_errors=True)

    def __enter__(self) -> "VirtualDevice":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- the child interpreter ----------------------------------------------------------------

    def _spawn(self, raw: bool) -> None:
        # each UART's pty opened here, non-blocking, and handed down by number: a UART read
        # returns what is there (a blocking file's readinto waits for a full buffer)
        uart_fds = {}
        try:
            for uart_id, path in self.uarts.items():
                uart_fds[uart_id] = os.open(path, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
        except OSError as exc:
            for fd in uart_fds.values():
                os.close(fd)
            raise VirtualDeviceError(f"UART {uart_id}: cannot open {path} ({exc.strerror})") from None
        placeholders = self._romfs_placeholders()
        script = (_BOOT_SCRIPT.replace("ROOT", repr(str(self.folder)))
                  .replace("UARTS", repr(uart_fds)).replace("RAW", repr(raw))
                  .replace("FLASH_SIZE", repr(self.flash_size))
                  .replace("ROM_SIZE", repr(self.romfs_size))
                  .replace("ROM_FILE", repr(str(self.romfs_path)))
                  .replace("ROM_BLOCK", repr(ROMFS_BLOCK_SIZE))
                  .replace("ROM_KEY", repr(ROMFS_VARIABLE.encode() + b"="))
                  .replace("ROM_NAMES", repr(list(placeholders)))
                  .replace("BOARD_DIR", repr(str(BOARD_DIR)))
                  .replace("UP_MARKER", repr(_UP_MARKER.decode())))
        with open(self._script, "w", encoding="utf-8") as handle:
            handle.write(script)
        master, slave = pty.openpty()
        attrs = termios.tcgetattr(slave)
        attrs[0] &= ~(termios.ICRNL | termios.INLCR | termios.IGNCR | termios.IXON | termios.ISTRIP)
        attrs[1] = 0  # no OPOST: bytes reach the client as the interpreter wrote them
        attrs[3] = termios.ISIG  # Ctrl-C interrupts running code; no echo, no line editing
        attrs[6][termios.VINTR] = _CTRL_C
        termios.tcsetattr(slave, termios.TCSANOW, attrs)
        argv = [self.interpreter]
        if self.heapsize:
            argv += ["-X", f"heapsize={self.heapsize}"]
        argv += ["-i", self._script]
        env = dict(placeholders)  # first: the partition's memory (see _BOOT_SCRIPT)
        env.update((k, v) for k, v in os.environ.items()
                   if k != "MICROPYPATH" and not k.startswith(("CARECARD_ROM", ROMFS_VARIABLE)))
        env["MICROPYPATH"] = ".frozen"

        def controlling_tty() -> None:  # runs in the child: the pty delivers its SIGINT
            os.setsid()
            fcntl.ioctl(0, termios.TIOCSCTTY, 0)

        try:
            self._child = subprocess.Popen(argv, stdin=slave, stdout=slave, stderr=slave, env=env,
                                           preexec_fn=controlling_tty, close_fds=True,
                                           pass_fds=tuple(uart_fds.values()), cwd=str(self.folder))
        finally:
            os.close(slave)
            for fd in uart_fds.values():
                os.close(fd)
        self._child_master = master
        self._gate_closed = True  # until its banner's prompt
        self._restart_raw = raw
        self._interruptible = False  # until the start-up script says it runs
        self._interrupt_held = False
        self._pre_up = b""
        self.boots += 1

    def _romfs_placeholders(self) -> dict[str, str]:
        if not self.romfs_size:
            return {}
        from carecard.tools.micropython import _rom_placeholders

        return {ROMFS_VARIABLE + name[len("CARECARD_ROM"):]: value
                for name, value in _rom_placeholders(self.romfs_size).items()}

    def _kill_child(self) -> None:
        child, self._child = self._child, None
        if child is not None and child.poll() is None:
            child.send_signal(signal.SIGKILL)
        if child is not None:
            child.wait()
        if self._child_master >= 0:
            os.close(self._child_master)
            self._child_master = -1

    def _restart(self) -> None:
        raw = self._raw
        self._kill_child()
        self._send_client(SOFT_REBOOT)
        self._tail = b""
        self._spawn(raw)

    # --- the proxy ----------------------------------------------------------------------------

    def _send_client(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            try:
                n = os.write(self._client_master, view)
            except BlockingIOError:
                select.select([], [self._client_master], [], 0.1)
                continue
            view = view[n:]

    def _send_child(self, data: bytes) -> None:
        view = memoryview(data)
        while view and self._child_master >= 0:
            try:
                n = os.write(self._child_master, view)
            except BlockingIOError:
                select.select([], [self._child_master], [], 0.1)
                continue
            except OSError:
                return  # the child is gone; the pump restarts it
            view = view[n:]

    def _from_client(self, data: bytes) -> None:
        if b"\x05A\x01" in data:
            self._paste_asked = True
        if self._gate_closed:
            # Ctrl-C interrupts running code at once (boot.py, main.py, a line being run); the
            # rest waits for the next prompt.
            if _CTRL_C in data:
                if self._interruptible:
                    self._send_child(bytes([_CTRL_C]))
                else:
                    self._interrupt_held = True  # sent once the start-up script runs
                data = data.replace(bytes([_CTRL_C]), b"")
            self._held += data
            return
        self._feed(data)

    def _feed(self, data: bytes) -> None:
        """Send what the REPL can read now. The unix port's friendly REPL resets its terminal
        after every line or control key, flushing input that came after it: the rest of `data`
        is held until the next prompt."""
        ends = _RAW_GATES if self._raw else _FRIENDLY_GATES
        cut = min((i for i in (data.find(c) for c in ends) if i >= 0), default=-1)
        if cut < 0:
            self._send_child(data)
            return
        self._send_child(data[:cut + 1])
        self._held = bytearray(data[cut + 1:])
        self._gate_closed = True

    def _from_child(self, data: bytes) -> None:
        if not self._interruptible:
            data = self._pre_up + data
            self._pre_up = b""
            if _UP_MARKER in data:
                data = data.replace(_UP_MARKER, b"", 1)
                self._interruptible = True
                if self._interrupt_held:
                    self._interrupt_held = False
                    self._send_child(bytes([_CTRL_C]))
            elif _UP_MARKER.startswith(data):
                self._pre_up = data  # the marker, cut between two reads
                return
        self._send_client(data)
        if self._paste_asked:
            self._paste_asked = False
            if data.startswith(b"R\x01"):
                self.raw_paste_accepted += 1
        seen = self._tail + data
        self._tail = seen[-64:]
        raw_at = seen.rfind(_RAW_PROMPT)
        friendly_at = max(seen.rfind(_FRIENDLY_PROMPT), seen.rfind(_BANNER_END))
        if raw_at >= 0 or friendly_at >= 0:
            self._raw = raw_at > friendly_at
        if not self._gate_closed or not seen.endswith(_PROMPTS):
            return
        if self._restart_raw and seen.endswith(_BANNER_END):
            self._restart_raw = False  # back into the raw REPL the client was in
            self._send_child(_CTRL_A)
            return
        self._gate_closed = False
        held, self._held = bytes(self._held), bytearray()
        if held:
            self._feed(held)

    def _pump(self) -> None:
        while not self._stop.is_set():
            fds = [self._client_master]
            if self._child_master >= 0:
                fds.append(self._child_master)
            try:
                ready, _, _ = select.select(fds, [], [], 0.1)
            except (OSError, ValueError):
                return
            if self._child_master in ready:
                try:
                    data = os.read(self._child_master, 4096)
                except OSError as exc:
                    if exc.errno != errno.EIO:
                        raise
                    data = b""
                if data:
                    self._from_child(data)
                else:
                    self._restart()  # the interpreter ended: Ctrl-D, sys.exit(), a crash
                    continue
            elif self._child is not None and self._child.poll() is not None:
                self._restart()
                continue
            if self._client_master in ready:
                try:
                    data = os.read(self._client_master, 4096)
                except OSError:
                    data = b""
                if data:
                    self._from_client(data)


def main(argv: list[str] | None = None) -> int:
    """`python -m carecard.tools.vdevice [--modem] [--romfs-size [BYTES]] FOLDER [FOLDER ...]`:
    one virtual board per
    folder (created if missing), ports printed one a line, until Ctrl-C. With --modem each board
    has a simulated A7670 on its UART 1 (a SIM in, coverage), with an IMEI of its own, so
    `carecard provision --port` can run on it."""
    parser = argparse.ArgumentParser(prog="python -m carecard.tools.vdevice",
                                     description="Virtual MicroPython boards behind ptys, for mpremote.")
    parser.add_argument("folders", nargs="+", help="a folder per device: its flash filesystem")
    parser.add_argument("--interpreter", help="the MicroPython unix port to run (default: the venv's)")
    parser.add_argument("--modem", action="store_true",
                        help="a simulated A7670 modem on each board's UART 1 (IMEI printed)")
    parser.add_argument("--romfs-size", type=int, nargs="?", const=DEFAULT_ROMFS_SIZE, default=0,
                        metavar="BYTES",
                        help="a ROMFS partition on each board (for `mpremote romfs deploy`), kept "
                             f"in FOLDER.romfs beside its folder (default size {DEFAULT_ROMFS_SIZE})")
    args = parser.parse_args(argv)
    devices: list[VirtualDevice] = []
    modems: list[Any] = []
    try:
        for n, folder in enumerate(args.folders):
            Path(folder).mkdir(parents=True, exist_ok=True)
            uarts = {}
            note = ""
            if args.modem:
                modems.append(_virtual_modem(n))
                uarts[1] = modems[-1].port
                note = f"  modem IMEI {modems[-1].sim.identity.imei}"
            devices.append(VirtualDevice(folder, interpreter=args.interpreter, uarts=uarts,
                                         romfs_size=args.romfs_size).start())
            print(f"{devices[-1].port}  {Path(folder).resolve()}{note}", flush=True)
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        return 0
    except VirtualDeviceError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    finally:
        for device in devices:
            device.stop()
        for modem in modems:
            modem.close()


VIRTUAL_IMEI_BODY = 86277107690000  # the --modem boards' IMEIs: this body plus the board's number


def _virtual_modem(number: int) -> Any:
    from carecard.host.receiver.registry import make_imei
    from carecard.tools.vcard.modem_sim import Identity
    from carecard.tools.vcard.pty_modem import PtyModem

    body = VIRTUAL_IMEI_BODY + number
    return PtyModem(powered=True, identity=Identity(imei=str(make_imei(body)), iccid=f"898600{body:014d}"))

if __name__ == "__main__":
    sys.exit(main())
