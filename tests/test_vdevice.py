"""The virtual MicroPython board (carecard.tools.vdevice) as the real mpremote sees it."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from carecard.tools.vdevice import VirtualDevice, VirtualDeviceError

MPREMOTE = str(Path(sys.executable).parent / "mpremote")


def mpremote(port: str, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([MPREMOTE, "connect", port, *args], capture_output=True, text=True,
                          timeout=timeout)


def ok(port: str, *args: str) -> str:
    proc = mpremote(port, *args)
    assert proc.returncode == 0, f"mpremote {' '.join(args)}: {proc.stdout}\n{proc.stderr}"
    return proc.stdout


@pytest.fixture
def device(tmp_path, card_port):
    flash = tmp_path / "flash"
    flash.mkdir()
    with VirtualDevice(flash, interpreter=card_port.executable) as dev:
        yield dev


def test_exec_eval_and_the_folder_is_the_filesystem(device, tmp_path):
    assert device.port.startswith("/dev/pts/")
    assert ok(device.port, "exec", "print('hello', 6 * 7)").strip() == "hello 42"
    assert ok(device.port, "eval", "1 << 40").strip() == str(1 << 40)
    # the device writes into its folder, and sees it as /
    ok(device.port, "exec", "f = open('/made_here.txt', 'w'); f.write('x' * 10); f.close()")
    assert (device.folder / "made_here.txt").read_text() == "x" * 10
    assert ok(device.port, "exec", "import os; print(os.getcwd(), sorted(os.listdir('/')))").strip() \
        == "/ ['made_here.txt']"


def test_fs_cp_ls_sha256sum_rm_and_recursive_copy(device, tmp_path):
    payload = bytes(range(256)) * 40  # binary, over several mpremote chunks
    src = tmp_path / "blob.bin"
    src.write_bytes(payload)
    ok(device.port, "fs", "cp", str(src), ":blob.bin")
    assert (device.folder / "blob.bin").read_bytes() == payload
    assert "blob.bin" in ok(device.port, "fs", "ls")
    assert hashlib.sha256(payload).hexdigest() in ok(device.port, "fs", "sha256sum", ":blob.bin")
    tree = tmp_path / "lib"
    (tree / "sub").mkdir(parents=True)
    (tree / "a.py").write_text("A = 1\n")
    (tree / "sub" / "b.py").write_text("B = 2\n")
    ok(device.port, "fs", "cp", "-r", str(tree), ":")
    assert (device.folder / "lib" / "sub" / "b.py").read_text() == "B = 2\n"
    # /lib is on the board's path: the copied module imports
    assert ok(device.port, "exec", "import a; print(a.A)").strip() == "1"
    ok(device.port, "fs", "cp", ":blob.bin", str(tmp_path / "back.bin"))
    assert (tmp_path / "back.bin").read_bytes() == payload
    ok(device.port, "fs", "rm", ":blob.bin")
    assert not (device.folder / "blob.bin").exists()


def test_soft_reset_restarts_the_interpreter_and_runs_boot_py(device):
    (device.folder / "boot.py").write_text("f = open('boots.txt', 'a'); f.write('b'); f.close()\n")
    ok(device.port, "exec", "pass")  # the device has booted with boot.py in place
    # state set in one session is gone after mpremote's soft reset (a new interpreter)
    boots = device.boots
    before = len((device.folder / "boots.txt").read_text())
    out = ok(device.port, "exec", "left = 1", "exec", "print('left' in globals())", "soft-reset",
             "exec", "print('left' in globals())")
    assert out.split() == ["True", "False"]
    assert device.boots >= boots + 2
    assert len((device.folder / "boots.txt").read_text()) - before == device.boots - boots


def test_friendly_repl_banner_ctrl_c_and_ctrl_d(device):
    """Through pyserial as a terminal would: the banner, Ctrl-C of a running loop, Ctrl-D."""
    import serial

    port = serial.Serial(device.port, 115200, timeout=5)
    try:
        # The first boot must be over before main.py exists, or that boot (not the soft reset)
        # runs it: a prompt answering Enter says the board sits at its friendly REPL.
        port.write(b"\r")
        read_until(port, b">>> ")
        (device.folder / "main.py").write_text("print('main running')\nwhile True:\n    pass\n")
        port.write(b"\x04")  # soft reset at the friendly prompt: main.py runs and loops
        seen = read_until(port, b"main running")
        assert b"MPY: soft reboot\r\n" in seen
        port.write(b"\x03")  # Ctrl-C interrupts it; the REPL comes up with its banner
        seen = read_until(port, b">>> ")
        assert b"KeyboardInterrupt" in seen and b"MicroPython" in seen
        port.write(b"print(2 + 2)\r")
        assert b"4" in read_until(port, b">>> ")
    finally:
        port.close()


def read_until(port, marker: bytes) -> bytes:
    seen = b""
    while not seen.endswith(marker):
        chunk = port.read(1)
        assert chunk, f"timed out waiting for {marker!r}; got {seen[-300:]!r}"
        seen += chunk
    return seen


def test_running_main_is_interrupted_and_raw_paste_is_used(device):
    (device.folder / "main.py").write_text("import time\nwhile True:\n    time.sleep_ms(10)\n")
    ok(device.port, "exec", "pass")  # mpremote interrupts whatever runs
    # a script longer than one raw-REPL window goes through raw-paste flow control
    code = "total = 0\n" + "".join(f"total += {i}\n" for i in range(600)) + "print(total)\n"
    assert ok(device.port, "exec", code).strip() == str(sum(range(600)))
    assert device.raw_paste_accepted >= 1


def test_several_devices_at_once(tmp_path, card_port):
    devices = []
    try:
        for i in range(3):
            folder = tmp_path / f"card{i}"
            folder.mkdir()
            devices.append(VirtualDevice(folder, interpreter=card_port.executable).start())
        assert len({d.port for d in devices}) == 3
        with ThreadPoolExecutor(3) as pool:
            outs = list(pool.map(lambda d: ok(d.port, "exec", f"open('id','w').write('{d.port}'); print('done')"),
                                 devices))
        assert outs == ["done\n"] * 3
        for d in devices:
            assert (d.folder / "id").read_text() == d.port
    finally:
        for d in devices:
            d.stop()


def test_the_64_bit_port_runs_as_a_device_too(tmp_path):
    from carecard.tools.micropython import pypi_executable

    with VirtualDevice(tmp_path, interpreter=pypi_executable()) as dev:
        assert ok(dev.port, "eval", "1 << 62").strip() == str(1 << 62)


def test_a_missing_folder_is_a_clear_error(tmp_path):
    with pytest.raises(VirtualDeviceError, match="no such folder"):
        VirtualDevice(tmp_path / "nope", interpreter="/bin/true")


def test_a_romfs_partition_for_mpremote_romfs_query_and_deploy_kept_across_restarts(tmp_path, card_port, device):
    # a device without the option has no partition, as a port built without ROMFS
    assert "ROMFS is not enabled on this device" in ok(device.port, "romfs", "query")
    flash = tmp_path / "card"
    flash.mkdir()
    source = tmp_path / "src"
    source.mkdir()
    (source / "probe.py").write_text("VALUE = 'from rom'\n")
    with VirtualDevice(flash, interpreter=card_port.executable, romfs_size=64 * 1024) as dev:
        assert dev.romfs_path == tmp_path / "card.romfs"
        assert dev.romfs_path.read_bytes() == b"\xff" * 65536  # erased flash
        query = ok(dev.port, "romfs", "query")
        assert "ROMFS0 partition has size 65536 bytes (16 blocks of 4096 bytes each)" in query
        assert "Not a valid ROMFS" in query
        assert "ROMFS image deployed" in ok(dev.port, "romfs", "deploy", str(source))
        image = dev.romfs_path.read_bytes()
        assert image.startswith(b"\xd2\xcd\x31") and image.endswith(b"\xff" * 4096)
        # mounted at boot (a soft reset), ahead of /lib
        assert ok(dev.port, "exec", "import sys, probe; print(probe.__file__, probe.VALUE, sys.path)").strip() \
            == "/rom/probe.mpy from rom ['', '.frozen', '/rom', '/rom/lib', '/lib']"
        # erase and write land at their offsets, in the memory and in the file
        ok(dev.port, "exec", "import vfs\nassert vfs.rom_ioctl(3, 0, 4096, 4096) == 4\n"
                             "assert vfs.rom_ioctl(4, 0, 4100, b'abc') == 0\n"
                             "assert vfs.rom_ioctl(4, 0, 65535, b'ab') < 0\n"
                             "assert bytes(vfs.rom_ioctl(2, 0)[4098:4104]) == b'\\xff\\xffabc\\xff'")
        assert dev.romfs_path.read_bytes()[4096:8192] == b"\xff" * 4 + b"abc" + b"\xff" * 4089
    with VirtualDevice(flash, interpreter=card_port.executable, romfs_size=64 * 1024) as dev:
        assert ok(dev.port, "exec", "import probe; print(probe.VALUE)").strip() == "from rom"
    with pytest.raises(VirtualDeviceError, match="has 65536 bytes, not 131072"):
        VirtualDevice(flash, interpreter=card_port.executable, romfs_size=128 * 1024).start()
