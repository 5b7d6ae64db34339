"""The 32-bit MicroPython port like the card's (carecard.tools.port32): built from the vendored
source, cached with a stamp of that source, a missing compiler or a broken source a clear error."""

from __future__ import annotations

import io
import shutil
import tarfile
from pathlib import Path

import pytest

from carecard.tools import port32


def test_the_card_port_is_32_bit_with_cryptolib_and_asyncio(card_port):
    from carecard.tools import micropython

    with micropython.using(card_port):
        out = micropython.run("import sys, cryptolib, asyncio, vfs\nprint(sys.maxsize, 1 << 30)")
        assert micropython.current().bits == 32
    assert out.split() == ["2147483647", str(1 << 30)]
    assert port32.is_current()


def test_stamp_follows_the_vendored_source(tmp_path):
    vendor = tmp_path / "vendor"
    shutil.copytree(port32.VENDOR_DIR, vendor)
    (vendor / port32.MANIFEST_NAME).chmod(0o644)
    before = port32.source_key(vendor)
    assert before == port32.source_key(port32.VENDOR_DIR)
    with open(vendor / port32.MANIFEST_NAME, "a") as manifest:
        manifest.write("# changed\n")
    assert port32.source_key(vendor) != before
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / "micropython").write_bytes(b"")
    (cache / "stamp").write_text(before + "\n")
    assert port32.is_current(cache, port32.VENDOR_DIR)
    assert not port32.is_current(cache, vendor)  # the manifest changed: rebuild


def test_missing_compiler_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    with pytest.raises(port32.Port32Error, match="gcc not found.*gcc-multilib"):
        port32.build(cache=tmp_path / "cache")
    assert not (tmp_path / "cache" / "micropython").exists()


def test_missing_or_broken_source_is_a_clear_error(tmp_path):
    with pytest.raises(port32.Port32Error, match="vendored MicroPython source not found"):
        port32.build(cache=tmp_path / "cache", vendor=tmp_path)
    vendor = tmp_path / "vendor"
    vendor.mkdir()
    shutil.copyfile(port32.VENDOR_DIR / port32.MANIFEST_NAME, vendor / port32.MANIFEST_NAME)
    with tarfile.open(vendor / "micropython-0-src.tar.gz", "w:gz") as archive:
        info = tarfile.TarInfo("micropython/README")
        info.size = 5
        archive.addfile(info, io.BytesIO(b"hello"))
    with pytest.raises(port32.Port32Error, match="does not hold micropython/ports/unix"):
        port32.build(cache=tmp_path / "cache", vendor=vendor)
    assert not list(Path(tmp_path / "cache").glob("build-*"))  # the scratch folder is gone
