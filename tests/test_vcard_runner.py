"""The virtual card's runner and simulated board (tools/vcard/runner.py, tools/vcard/mpy/simboard.py):
a firmware entry point on the MicroPython unix port, using the card's board interface
(firmware/board: open_board() -> simboard) and the real modem driver over a pty to the simulated
A7670, in virtual time: keys, RI, the watchdog, reboots, and a simulated week in seconds."""

from __future__ import annotations

import shutil
import socket
import threading
from pathlib import Path

import pytest

from carecard.tools import micropython
from carecard.tools.vcard import energy
from carecard.tools.vcard.gnss_sim import GnssSim, Track, TrackPoint
from carecard.tools.vcard.modem_sim import ModemSim
from carecard.tools.vcard.runner import RunnerError, VirtualCard, World

DAY = 86_400_000

# A small firmware entry point written for this test (the card's own main.py boots the
# application): the real board interface and the real modem driver, one loop.
ENTRY = r'''
import board, hwdata, modem, modem_a7670
hw = board.open_board()
print("boot", hw.reset_cause(), hw.now_ms(), hw.name)
hw.watchdog_start(120000)
if hw.reset_cause() != "power_on":
    # the modem kept its session through the card's reset: start it afresh (supply switch)
    hw.modem_power(False)
    hw.idle(3000, False)
    hw.modem_power(True)
m = modem.Modem(modem_a7670.A7670(), hwdata.load("modem_a7670"), apn="cmnet")
m.power_on(hw.now_ms())
buf = bytearray(512)
def actions():
    while True:
        a = m.next_action()
        if a is None:
            break
        if a[0] == "write":
            hw.modem_write(a[1])
        elif a[0] == "pwrkey":
            hw.modem_pwrkey(True)
            hw.idle(a[1], False)
            hw.modem_pwrkey(False)
        elif a[0] == "dtr":
            hw.modem_dtr(a[1])
opened = False
feeding = True
while True:
    n = hw.modem_read(buf)
    while n:
        m.receive_data(bytes(buf[:n]))
        n = hw.modem_read(buf)
    m.tick(hw.now_ms())
    actions()
    while True:
        e = m.next_event()
        if e is None:
            break
        if e[0] in ("ready", "udp", "udp_sent", "udp_recv", "incoming", "sleep", "awake", "time"):
            print("event", hw.now_ms(), repr(e))
        if e[0] == "udp" and e[1] == "failed":
            # after a reset of the card the modem still holds the socket: close, open again
            m.data.udp_close()
            opened = False
    ev = hw.take_events()
    if ev & 32:
        m.ri()
    if ev & 1 and hw.key_level(0) and m.data.udp_state == "open":
        m.data.udp_send(b"key 1 at %d" % hw.now_ms())
    if ev & 2 and hw.key_level(1):
        print("not feeding any more", hw.now_ms())
        feeding = False
    if ev & 4 and hw.key_level(2):
        hw.reboot()
    if feeding:
        hw.feed()
    if m.state == "ready" and not opened:
        m.data.udp_open("127.0.0.1", PORT)
        opened = True
    if m.state == "ready" and m.data.udp_state == "open" and not m.sleeping and not m.at.pending():
        m.sleep()
    actions()
    if m.sleeping and not m._held:    # asleep with nothing waiting for the modem to wake
        hw.idle(60000, True)           # within the watchdog timeout
    else:
        hw.idle(100, False)
'''


@pytest.fixture
def echo_server():
    server = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    server.bind(("127.0.0.1", 0))
    server.settimeout(0.2)
    got: list[bytes] = []
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                data, addr = server.recvfrom(2048)
            except OSError:
                continue
            got.append(data)
            server.sendto(b"ack " + data, addr)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield server.getsockname()[1], got
    stop.set()
    thread.join()
    server.close()


def image_with_entry(tmp_path: Path, port: int) -> Path:
    image = tmp_path / "image"
    shutil.copytree(micropython.card_image(compiled=True), image)
    (image / "test_main.py").write_text(ENTRY.replace("PORT", str(port)), encoding="utf-8")
    return image


def test_a_simulated_week_with_keys_ri_watchdog_and_reboot(mpy, tmp_path, echo_server):
    port, got = echo_server
    image = image_with_entry(tmp_path, port)
    flash = tmp_path / "flash"
    flash.mkdir()
    sim = ModemSim(seed=4)
    with VirtualCard(image, flash, World(modem=sim), entry="test_main.py") as card:
        card.press(60_000, 0)                      # key 1 after a minute: a datagram
        card.at(2 * DAY, lambda: sim.incoming_call("+8613800000001", ring_for_s=10))
        card.press(3 * DAY, 1)                     # key 2: the firmware stops feeding
        card.press(5 * DAY, 2)                     # key 3: a reboot
        run = card.run(7 * DAY)
        prints = [d for _, what, d in run.timeline if what == "print"]
        ledger = card.ledger.totals(card.now)
    assert card.now >= 7 * DAY
    assert prints[0].startswith("boot power_on 0 sim")
    ready = [p for p in prints if "('ready',)" in p]
    # the modem booted on the virtual clock: *ATREADY after the A7670's ~11 s
    assert ready and int(ready[0].split()[1]) >= 11_000
    assert got and got[0].startswith(b"key 1 at ") and int(got[0].split()[-1]) >= 60_000
    assert any("udp_recv" in p and "ack key 1" in p for p in prints)
    # the incoming call came while the modem slept: RI woke the card, the URC came after DTR low
    assert any("('incoming', '+8613800000001')" in p and int(p.split()[1]) >= 2 * DAY for p in prints)
    causes = [cause for _, cause in run.resets]
    assert causes == ["power_on", "watchdog", "soft"]
    watchdog_at = [ms for ms, cause in run.resets if cause == "watchdog"][0]
    assert 3 * DAY < watchdog_at <= 3 * DAY + 120_000
    assert any(p.startswith("boot watchdog") for p in prints) and any(p.startswith("boot soft") for p in prints)
    # most of the week in DRX sleep, the MCU in light sleep: the energy ledger saw it
    assert ledger[("modem", "sleep")] > 6 * DAY
    assert ledger[("mcu", "light")] > 6 * DAY
    assert run.requests < 20_000                   # it slept: no tick-by-tick polling of a week


GNSS_ENTRY = r'''
import board, battery, nmea
hw = board.open_board()
bat = battery.Battery()
print("battery", bat.pin_uv_to_mv(hw.battery_uv()), hw.charger_pins())
print("rtc", hw.rtc_unix())
hw.set_rtc_unix(1780000000)
hw.gnss_backup(True)
hw.gnss_power(True)
p = nmea.NMEAParser()
buf = bytearray(256)
first = None
while first is None:
    n = hw.gnss_read(buf)
    while n:
        p.receive_data(bytes(buf[:n]))
        n = hw.gnss_read(buf)
    while True:
        f = p.next_event()
        if f is None:
            break
        if f.valid and first is None:
            first = f
    if first is None:
        hw.idle(5000, False)
print("fix", hw.now_ms(), first.lat_e7, first.lon_e7, first.hdop)
hw.gnss_power(False)
print("rtc", hw.rtc_unix())
hw.idle(3600000, True)
hw.deep_sleep(3600000)
'''


def test_gnss_battery_rtc_and_deep_sleep_through_the_board(mpy, tmp_path):
    image = tmp_path / "image"
    shutil.copytree(micropython.card_image(compiled=True), image)
    (image / "gnss_main.py").write_text(GNSS_ENTRY, encoding="utf-8")
    flash = tmp_path / "flash"
    flash.mkdir()
    home = (24.905321, 118.587112)
    gnss = GnssSim(Track([TrackPoint(0, *home, "outdoor")]), seed=9)
    world = World(modem=ModemSim(), gnss=gnss, battery_mv=lambda ms: 3800,
                  charging=lambda ms: (True, False))
    with VirtualCard(image, flash, world, entry="gnss_main.py") as card:
        run = card.run(3 * 3_600_000)
        report = energy.energy_report(card.ledger, card.now)
    prints = [d for _, what, d in run.timeline if what == "print"]
    # the card's own battery module reads the simulated divider: 3800 mV, charging
    assert "battery 3800 (True, False)" in prints
    assert prints[1] == "rtc None"                       # a card out of the box: RTC never set
    fix = [p for p in prints if p.startswith("fix")][0].split()
    assert 24_000 <= int(fix[1]) <= 40_000               # a cold start, on the virtual clock
    assert abs(int(fix[2]) - home[0] * 1e7) < 500 and abs(int(fix[3]) - home[1] * 1e7) < 500
    assert int([p for p in prints if p.startswith("rtc 17")][0].split()[1]) >= 1780000000 + 20
    # deep sleep restarts the card (reset cause deep_sleep); the ledger saw every MCU state
    assert [c for _, c in run.resets][:2] == ["power_on", "deep_sleep"]
    mcu = report["breakdown"]["mcu"]["states"]
    assert {"active", "light", "deep"} <= set(mcu)
    assert report["breakdown"]["gnss"]["states"]["acquiring"]["hours_per_day"] > 0


def test_an_image_without_the_entry_point_is_refused(tmp_path):
    with pytest.raises(RunnerError, match="has no main.py"):
        VirtualCard(tmp_path, tmp_path, World(modem=ModemSim()))


CRASH_ENTRY = r'''
import board
hw = board.open_board()
hw.idle(1000, False)
raise ValueError("the firmware fails")
'''


def test_a_firmware_that_dies_is_reported_as_a_crash_and_restarted_hard(mpy, tmp_path):
    image = tmp_path / "image"
    shutil.copytree(micropython.card_image(compiled=True), image)
    (image / "crash_main.py").write_text(CRASH_ENTRY, encoding="utf-8")
    flash = tmp_path / "flash"
    flash.mkdir()
    with VirtualCard(image, flash, World(modem=ModemSim()), entry="crash_main.py") as card:
        run = card.run(2500)
    crashes = [(ms, detail) for ms, what, detail in run.timeline if what in ("crash", "hang")]
    # it exited with its traceback: a crash (not a hang that the watchdog would end), at once
    assert crashes == [(1000, "exit status 1"), (2000, "exit status 1")]
    assert [cause for _, cause in run.resets] == ["power_on", "hard", "hard"]
    assert any("ValueError: the firmware fails" in d for _, what, d in run.timeline if what == "print")
