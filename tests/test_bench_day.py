"""`carecard bench day`'s workload: the card's firmware image on the virtual card (simboard, the
simulated A7670 and L76K, a loopback receiver) through a simulated day's morning, on both
MicroPython ports; it does what the day holds (held positions at home, moving mode and tracks on
the walk, confirmed calls, the check-in prompt answered, a status an hour) and completes without
a reset. The heap bisection itself is the benchmark's (`carecard bench day`), not run here."""

from __future__ import annotations

from carecard.tools.bench import day


def test_the_days_morning_runs_on_the_virtual_card_on_both_ports(mpy) -> None:
    run = day.play(mpy.card_image(compiled=True), 11)
    assert run.completed, run.failure or run.resets
    assert run.decode_errors == 0
    assert run.frames["hello"] == 1 and run.frames["status"] >= 11
    assert run.held >= 10                     # at home, lying still: the last fix re-sent
    assert run.frames["track"] >= 1           # the walk at 9:00: moving mode, fixes in tracks
    assert run.calls["confirmed"] == 2        # 8:10 and 10:10: the son confirms with a key
    assert run.frames["checkin"] == 1 and run.frames["command_result"] == 1


def test_the_day_runs_with_the_libraries_in_a_romfs_partition(mpy) -> None:
    """The bench's ROMFS row: the image's lib/ in simulated flash (mounted at /rom, first on the
    path), as `mpremote romfs deploy` ships it; the card's morning completes from it, in a heap
    the same day does not fit in with the .mpy files loaded into RAM (on the 32-bit port: the
    bytecode and constants stay in flash)."""
    image = mpy.card_image(compiled=True)
    run = day.play(image, 2, rom=True)
    assert run.completed, run.failure or run.resets
    assert run.frames["hello"] == 1 and run.frames["status"] >= 2
    if mpy.current().bits == 32:
        assert day.play(image, 2, heapsize=160 * 1024, rom=True).completed
        assert not day.play(image, 2, heapsize=160 * 1024).completed
