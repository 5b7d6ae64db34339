"""The card image: exactly the files that go onto a card's flash, laid out as on the card.

One definition of that layout, used by flashing, by the virtual card and by the tests that run
firmware on the MicroPython unix port:

    /main.py, /boot.py         firmware/*.py (top level)
    /lib/...                   firmware/lib/... (drivers, sans-I/O cores, card codec)
    /lib/board/...             firmware/board/... (the only code that touches `machine`)
    /lib/ccspec.py             protocol/spec.py (the one protocol definition, read at import)
    /lib/hwjson/...            hardware/*.json (pin maps, battery curves: data the card reads,
                               read with `hwdata.load(name)`; the folder must not be named
                               like a module, or MicroPython imports the folder instead)
"""

from __future__ import annotations

import shutil
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


def build_card_image(dest: Path) -> Path:
    """Copy the card image into `dest` (created if needed) and return it."""
    dest.mkdir(parents=True, exist_ok=True)
    for src, rel in card_files():
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, target)
    return dest


def micropython_path(image: Path) -> str:
    """MICROPYPATH for running the image on the unix port: like a card, `/lib` then `/`."""
    return f"{image / 'lib'}:{image}"
