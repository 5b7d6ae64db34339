"""`carecard bench nmea` runs and prints its figures; the parser's heap stays within the card's
16 KB target (a memory figure, deterministic for one MicroPython build: not a timing)."""

from __future__ import annotations

import argparse
import re

from carecard.tools import micropython
from carecard.tools.bench import nmea as bench


def test_bench_prints_rates_ratio_and_heaps(capsys, shared_data, card_port):
    """Speed on the PyPI port; the heaps on both ports (the bench selects each in turn)."""
    with micropython.using(micropython.pypi_port()):
        assert bench.run(argparse.Namespace(rounds=1, chunk=256, capture=None)) == 0
    out = capsys.readouterr().out
    assert re.search(r"64-bit +32-bit \(card\)", out)
    assert re.search(r"in flash \(ROMFS.*\) +[\d,]+ +[\d,]+$", out, re.M)
    assert "target (16384 bytes) met on the card's 32-bit port" in out
    assert "quectel-l76k-nmea.log" in out and "2280 checksum-valid sentences" in out
    assert re.search(r"parser \(sentences -> fixes\): +[\d,]+ sentences/s", out)
    assert re.search(r"baseline \(line \+ checksum\): +[\d,]+ sentences/s", out)
    assert re.search(r"ratio: the parser takes [\d.]+x", out)
    assert "nmea.mpy" in out and "from source" in out and "in flash" in out


def test_parser_in_flash_streams_the_largest_capture_in_less_than_in_ram(shared_data, mpy, tmp_path):
    path = bench.largest_capture()
    assert bench.heap(path, precompiled=True, rom=tmp_path / "rom") < bench.heap(path, precompiled=True)


def test_precompiled_parser_streams_the_largest_capture_in_16k(shared_data, mpy):
    """The card's 16 KB target holds on the 32-bit port (the card's object sizes: 11.4 KB) even
    with the .mpy loaded into RAM; the 64-bit port's objects are about twice the size (16.4 KB:
    bound 17 KB, against regressions)."""
    path = bench.largest_capture()
    assert path.name == "quectel-l76k-nmea.log"
    bound = 16 * 1024 if mpy.current().bits == 32 else 17 * 1024
    assert bench.heap(path, precompiled=True) <= bound
