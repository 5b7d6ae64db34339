"""The benchmarks print heap figures for both MicroPython ports side by side: the 64-bit PyPI
port and the 32-bit build like the card's (whose figures are the card's)."""

from __future__ import annotations

import argparse
import re

from carecard.tools import micropython
from carecard.tools.bench import protocol


def test_protocol_bench_prints_the_heap_on_both_ports(capsys, card_port):
    with micropython.using(micropython.pypi_port()):
        assert protocol.run(argparse.Namespace(frames=200, rounds=1, card_frames=50)) == 0
    out = capsys.readouterr().out
    assert re.search(r"64-bit +32-bit \(card\)", out)
    rows = re.findall(r"^  (.+?) {2,}([\d,]+) +([\d,]+)$", out, re.M)
    assert [label for label, _, _ in rows] == [
        "the .mpy files in flash (ROMFS, as a card ships them)", "the .mpy files loaded into RAM",
        "from source (compiled on the device)"]
    for _label, wide, narrow in rows:
        # the card's objects are about half the size: its heap is always the smaller
        assert int(narrow.replace(",", "")) < int(wide.replace(",", ""))
