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
