"""`carecard bench day`'s workload: a simulated day of the card's runtime completes on both
MicroPython ports with the libraries in flash as the card ships them, and does what a day does
(fixes, held positions while still, moving mode on the walks, a status an hour, the SOS); the
heap bisection itself is the benchmark's (`carecard bench day`), not timed here."""

from __future__ import annotations

from pathlib import Path

from carecard.tools.bench import day


def test_a_simulated_day_runs_from_flash_on_both_ports(mpy, tmp_path: Path) -> None:
    image = mpy.card_image(compiled=True)
    code = day.workload(tmp_path / "card", 24)
    rom = mpy.flash_folder(image, day.CARD_MODULES, tmp_path / "rom")
    out = mpy.run(code, image=image, rom=rom, timeout=300)
    line = next(line for line in out.splitlines() if line.startswith("DAY "))
    turns, uplinks, fixes, no_fixes, held, depth, evicted, problems = (int(x) for x in line.split()[1:])
    assert problems == 0 and no_fixes == 0
    assert fixes >= 24 and held >= 24  # walks are fixed every minute; the rest of the day held
    assert uplinks == depth + evicted  # the modem never answers: nothing left the outbox
    assert turns < 24 * 3600  # the loop waits for deadlines, not every second of the day
