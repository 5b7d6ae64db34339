"""`carecard flash` onto cards with a ROMFS partition: the libraries deployed there with the real
`mpremote romfs deploy` (virtual devices with a partition, tools/vdevice.py), verified on the
card, trusted at boot only when the factory verified them (firmware/boot.py)."""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from carecard.host.cli import main
from carecard.host.factory.flash import ROMFS_MARKER, flash_device
from carecard.tools.cardimage import romfs_image
from carecard.tools.micropython import card_image
from carecard.tools.vdevice import DEFAULT_ROMFS_SIZE, VirtualDevice

MPREMOTE = str(Path(sys.executable).parent / "mpremote")
WHERE = "import sys, ccproto, romprobe; print(ccproto.__file__, romprobe.__file__, romprobe.VALUE)"


def mpremote(port: str, *args: str) -> str:
    proc = subprocess.run([MPREMOTE, "connect", port, *args], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


@pytest.fixture
def card(tmp_path, card_port):
    folder = tmp_path / "card"
    folder.mkdir()
    with VirtualDevice(folder, interpreter=card_port.executable, romfs_size=DEFAULT_ROMFS_SIZE) as dev:
        yield dev


def _image(folder: Path, value: int) -> Path:
    """The card image (bytecode .mpy) plus a library whose value tells versions apart."""
    shutil.copytree(card_image(compiled=True), folder)
    (folder / "lib" / "romprobe.py").write_text(f"VALUE = {value}\n")
    return folder


def test_flash_deploys_the_libraries_to_romfs_then_nothing_then_only_a_changed_image(card, tmp_path, capsys):
    first = _image(tmp_path / "v1", 1)
    args = ["flash", "--port", card.port, "--image", str(first)]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert f"{card.port}: ROMFS: deploying" in out and f"{card.port}: ROMFS: writing at 0 of" in out
    assert f"{card.port}: ROMFS deployed" in out
    rom = romfs_image(first / "lib")
    local = hashlib.sha256(rom).hexdigest()
    assert (card.folder / ROMFS_MARKER).read_text() == local
    assert card.romfs_path.read_bytes()[:len(rom)] == rom
    # the card boots its libraries from /rom; the filesystem keeps its copy as the fallback
    assert mpremote(card.port, "exec", WHERE).split() == ["/rom/ccproto.mpy", "/rom/romprobe.py", "1"]
    assert (card.folder / "lib" / "ccproto.mpy").exists()
    query = mpremote(card.port, "romfs", "query")
    assert f"ROMFS0 partition has size {DEFAULT_ROMFS_SIZE} bytes" in query
    assert "ROMFS image size: " in query and "Not a valid ROMFS" not in query

    assert main(args) == 0  # again: nothing copied, nothing deployed
    out = capsys.readouterr().out
    assert "up to date: image" in out and "ROMFS up to date" in out and "deploying" not in out
    row = out.splitlines()[-1].split()
    assert row[:4] == [card.port, "up", "to", "date"] and row[5:] == ["0", "up", "to", "date"]

    second = _image(tmp_path / "v2", 2)
    assert main(["flash", "--port", card.port, "--image", str(second)]) == 0
    out = capsys.readouterr().out
    assert "copying lib/romprobe.py (1/1" in out and "ROMFS deployed" in out
    assert mpremote(card.port, "exec", WHERE).split() == ["/rom/ccproto.mpy", "/rom/romprobe.py", "2"]


def test_an_interrupted_deploy_boots_the_libraries_from_the_filesystem(card, tmp_path):
    flash_device(card.port, _image(tmp_path / "v1", 1))
    assert mpremote(card.port, "exec", WHERE).split()[2] == "1"

    def pull_the_cable(port: str, message: str) -> None:
        if message.startswith("ROMFS: writing at"):
            raise KeyboardInterrupt("cable pulled")  # mpremote is killed mid-write

    second = _image(tmp_path / "v2", 2)
    with pytest.raises(KeyboardInterrupt):
        flash_device(card.port, second, progress=pull_the_cable)
    assert not (card.folder / ROMFS_MARKER).exists()
    # boot.py does not trust /rom: the new firmware's libraries come from the filesystem
    assert mpremote(card.port, "exec", WHERE).split() == ["/lib/ccproto.mpy", "/lib/romprobe.py", "2"]
    # the card's main.py boots from there as far as its board (no modem here) lets it
    assert "ImportError" not in mpremote(card.port, "exec", "import board, cardloop, config")
    result = flash_device(card.port, second)
    assert result.romfs == "deployed" and result.copied == []
    assert mpremote(card.port, "exec", WHERE).split() == ["/rom/ccproto.mpy", "/rom/romprobe.py", "2"]


def test_an_image_in_rom_that_the_marker_does_not_name_is_not_trusted(card, tmp_path):
    image = _image(tmp_path / "v1", 1)
    flash_device(card.port, image)
    # a deploy that stopped halfway (its header whole, its files cut): written by mpremote, the
    # marker still naming the complete image
    rom = romfs_image(image / "lib")
    cut = tmp_path / "cut.romfs"
    cut.write_bytes(rom[:len(rom) // 2])
    mpremote(card.port, "romfs", "deploy", str(cut))
    assert mpremote(card.port, "exec", WHERE).split() == ["/lib/ccproto.mpy", "/lib/romprobe.py", "1"]
    assert "not mounted" in mpremote(card.port, "exec",
                                     "import os\ntry:\n os.listdir('/rom')\nexcept OSError:\n print('not mounted')")
    result = flash_device(card.port, image)  # flashing again repairs it
    assert result.romfs == "deployed"
    assert mpremote(card.port, "exec", WHERE).split()[0] == "/rom/ccproto.mpy"


def test_an_image_bigger_than_the_partition_is_refused_before_anything_is_written(tmp_path, card_port, capsys):
    folder = tmp_path / "small"
    folder.mkdir()
    image = _image(tmp_path / "v1", 1)
    size = len(romfs_image(image / "lib"))
    with VirtualDevice(folder, interpreter=card_port.executable, romfs_size=64 * 1024) as dev:
        assert main(["flash", "--port", dev.port, "--image", str(image)]) == 1
        out = capsys.readouterr().out
        assert (f"the libraries' ROMFS image is {size} bytes but the card's ROMFS partition holds "
                f"{64 * 1024} bytes") in out
        assert "--no-romfs" in out
        assert list(folder.iterdir()) == []  # nothing written
        assert main(["flash", "--port", dev.port, "--image", str(image), "--no-romfs"]) == 0
        assert "ROMFS partition not used" in capsys.readouterr().out
        assert mpremote(dev.port, "exec", WHERE).split() == ["/lib/ccproto.mpy", "/lib/romprobe.py", "1"]
