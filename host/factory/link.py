"""One card's raw REPL over its serial port, through mpremote's own transport.

Every failure is a DeviceError naming the port, what went wrong and what to do about it, for a
technician with a box of cards: no such port, the port cannot be opened, no device answering,
a device running code that does not stop on Ctrl-C, code failing on the device, a full
filesystem."""

from __future__ import annotations

import ast
import binascii
import errno
import os
import re
from typing import Any

RAW_PROMPT = b"raw REPL; CTRL-B to exit\r\n"  # then ">", which mpremote's exec reads
WRITE_CHUNK = 3072  # bytes per exec when writing a file (base64 in the script: ~4 KB)


class DeviceError(RuntimeError):
    """A card-side failure: `port`, `what` happened, `fix` says what to do."""

    def __init__(self, port: str, what: str, fix: str) -> None:
        super().__init__(f"{port}: {what}; {fix}")
        self.port = port
        self.what = what
        self.fix = fix


class DeviceFull(DeviceError):
    """The card's filesystem has no room for what must be written."""


def _last_line(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1].strip() if lines else text.strip()


class DeviceLink:
    """The raw REPL of the MicroPython board on `port` (open() first, close() after)."""

    def __init__(self, port: str, *, timeout: float = 8.0) -> None:
        self.port = port
        self.timeout = timeout
        self.transport: Any = None
        self.interrupted = False  # a running program was stopped with Ctrl-C on open()

    def __enter__(self) -> "DeviceLink":
        return self.open()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def open(self) -> "DeviceLink":
        from mpremote.transport import TransportError
        from mpremote.transport_serial import SerialTransport
        import serial

        if not os.path.exists(self.port):
            raise DeviceError(self.port, "no such port",
                              "check the USB cable and the port name (`mpremote devs` lists the "
                              "serial ports of this computer)")
        try:
            # a read timeout: a card that stops answering must not block a read for ever (a
            # busy computer running a batch may take seconds to serve a card's pty)
            self.transport = SerialTransport(self.port, baudrate=115200, timeout=10)
        except (TransportError, serial.SerialException, OSError) as exc:
            raise DeviceError(self.port, f"cannot open the port ({exc})",
                              "another program may hold it (mpremote, a terminal, another carecard "
                              "run): close it and try again") from None
        try:
            self._enter_raw_repl()
        except BaseException:
            self.close()
            raise
        return self

    def _enter_raw_repl(self) -> None:
        import time

        transport = self.transport
        port = transport.serial
        seen = data = b""
        deadline = time.monotonic() + self.timeout
        # A card that was just reset may start main.py after the first Ctrl-C (which then only
        # stopped boot.py): ask again until the raw REPL answers or the time is up.
        while True:
            port.write(b"\r\x03\x03")  # Ctrl-C twice: stop whatever runs
            seen += self._read_until(b">>> ", 1.0)
            port.write(b"\r\x01")  # Ctrl-A: raw REPL
            data = self._read_until(RAW_PROMPT, min(2.0, max(0.1, deadline - time.monotonic())))
            seen += data
            if data.endswith(RAW_PROMPT) or time.monotonic() >= deadline:
                break
        self.interrupted = b"KeyboardInterrupt" in seen
        if data.endswith(RAW_PROMPT):
            transport.in_raw_repl = True
            self._soft_reset()
            return
        if not seen:
            raise DeviceError(self.port, f"no device answering (nothing came back in {self.timeout:g} s)",
                              "is a MicroPython card on this port, powered and out of its bootloader? "
                              "Replug it or press its reset button, then try again")
        tail = seen[-120:].decode("utf-8", "replace").replace("\r", "").replace("\n", " | ")
        raise DeviceError(self.port, f"device busy: it keeps running code and does not stop on Ctrl-C "
                                     f"(last output: {tail.strip()!r})",
                          "press its reset button (or unplug and replug it) and run this again "
                          "right away; firmware that ignores Ctrl-C must be erased (esptool "
                          "erase_flash) and MicroPython written again")

    def _soft_reset(self) -> None:
        """Ctrl-D in the raw REPL: the card restarts its interpreter and, being in the raw REPL,
        does not run main.py again (mpremote does the same before its first command). Ctrl-C
        stops main.py wherever it was: halfway through an import, with the modem's UART and
        timers set up; on the unix port even with the interpreter's own qstr lock left held, so
        that the next code compiled hangs for ever: the factory's code runs on a fresh
        interpreter instead."""
        import time

        port = self.transport.serial
        deadline = time.monotonic() + self.timeout
        port.write(b"\x04")
        seen = self._read_until(b"soft reboot\r\n", self.timeout)
        if seen.endswith(b"soft reboot\r\n"):
            seen += self._read_until(RAW_PROMPT, max(0.1, deadline - time.monotonic()))
        if not seen.endswith(RAW_PROMPT):
            tail = seen[-120:].decode("utf-8", "replace").replace("\r", "").replace("\n", " | ")
            raise DeviceError(self.port, f"no raw REPL after a soft reset (last output: {tail.strip()!r})",
                              "press the card's reset button (or unplug and replug it) and run this "
                              "again; if boot.py never ends, erase the card's filesystem")

    def _read_until(self, ending: bytes, within: float) -> bytes:
        """What the card sends until `ending` or `within` seconds (mpremote's read_until keeps
        reading for as long as a busy card keeps printing)."""
        import time

        port = self.transport.serial
        deadline = time.monotonic() + within
        data = b""
        saved, port.timeout = port.timeout, 0.05
        try:
            while not data.endswith(ending) and time.monotonic() < deadline:
                data += port.read(1)
        finally:
            port.timeout = saved
        return data

    def close(self) -> None:
        transport, self.transport = self.transport, None
        if transport is None:
            return
        try:
            if transport.in_raw_repl:
                transport.serial.write(b"\r\x02")  # back to the friendly REPL
            transport.close()
        except OSError:
            pass

    # --- running code ---------------------------------------------------------------------------

    def exec(self, code: str, *, timeout: float = 30.0) -> str:
        """Run `code` on the card; its stdout. A traceback on the card raises DeviceError
        (DeviceFull for ENOSPC)."""
        from mpremote.transport import TransportError

        if self.transport is None:
            raise DeviceError(self.port, "not connected", "open the link first")
        try:
            out, err = self.transport.exec_raw(code, timeout=timeout)
        except (TransportError, OSError) as exc:
            raise DeviceError(self.port, f"the connection broke while running code ({exc})",
                              "check the cable, replug the card and run this again") from None
        if err:
            text = err.decode("utf-8", "replace")
            last = _last_line(text)
            if "ENOSPC" in text or f"[Errno {errno.ENOSPC}]" in text:
                raise DeviceFull(self.port, f"filesystem full ({last})",
                                 "remove files from the card (`mpremote fs rm`) or erase it")
            raise DeviceError(self.port, f"code failed on the card: {last}",
                              "see the traceback: " + text.strip().replace("\n", " | "))
        return out.decode("utf-8", "replace")

    def eval(self, expression: str) -> Any:
        """The value of a Python literal the card prints for `expression`."""
        text = self.exec(f"print(repr({expression}))").strip()
        try:
            return ast.literal_eval(text)
        except (ValueError, SyntaxError):
            raise DeviceError(self.port, f"unexpected answer {text[:80]!r} to {expression[:40]!r}",
                              "is this a MicroPython board?") from None

    def write_file(self, path: str, data: bytes) -> None:
        """Write `data` to `path` on the card (created or replaced)."""
        self.exec(f"import binascii\n_f = open({path!r}, 'wb')")
        try:
            for start in range(0, len(data), WRITE_CHUNK):
                chunk = binascii.b2a_base64(data[start:start + WRITE_CHUNK], newline=False)
                self.exec(f"_f.write(binascii.a2b_base64({chunk!r}))")
        finally:
            self.exec("_f.close()\ndel _f")

    def read_file(self, path: str) -> bytes | None:
        """The bytes of `path` on the card, None when there is no such file."""
        text = self.exec(
            "import binascii\ntry:\n _f = open(%r, 'rb')\nexcept OSError:\n print('-')\nelse:\n"
            " while True:\n  _b = _f.read(768)\n  if not _b:\n   break\n"
            "  print(binascii.b2a_base64(_b).decode().strip())\n _f.close()\n print('.')\n" % path)
        lines = text.split()
        if lines == ["-"]:
            return None
        if not lines or lines[-1] != ".":
            raise DeviceError(self.port, f"reading {path} was cut short", "run this again")
        return b"".join(binascii.a2b_base64(line) for line in lines[:-1])

    def hashes(self, paths: list[str]) -> dict[str, str | None]:
        """sha256 (hex) of each file as the card reads it back (None: no such file)."""
        code = _HASH_CODE.replace("PATHS", repr(list(paths)))
        text = self.exec(code, timeout=120)
        result: dict[str, str | None] = {}
        for line in text.splitlines():
            match = re.match(r"^([0-9a-f]{64}|-) (.*)$", line.strip())
            if match:
                result[match.group(2)] = None if match.group(1) == "-" else match.group(1)
        missing = [p for p in paths if p not in result]
        if missing:
            raise DeviceError(self.port, f"no hash came back for {missing[0]}", "run this again")
        return result


_HASH_CODE = """\
def _hash_all(paths):
    import hashlib, binascii
    buf = bytearray(512)
    mv = memoryview(buf)
    for p in paths:
        try:
            f = open(p, 'rb')
        except OSError:
            print('-', p)
            continue
        h = hashlib.sha256()
        while True:
            n = f.readinto(buf)
            if not n:
                break
            h.update(mv[:n])
        f.close()
        print(binascii.hexlify(h.digest()).decode(), p)
_hash_all(PATHS)
del _hash_all
"""
