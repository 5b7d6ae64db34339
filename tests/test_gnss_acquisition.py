"""firmware/lib/gnss.py on MicroPython: power on, wait for a good fix or the timeout, power off
keeping the backup supply, hot starts; real captures replayed at UART speed on a virtual clock.
The receiver profiles are the real hardware/gnss_*.json, read on the card's path via hwdata."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from carecard.host.commands.nmea_cmd import FIX_FIELDS
from carecard.tools.micropython import json_lines_service

SERVICE = json_lines_service("""
import binascii, hwdata
import gnss
FIELDS = %(fields)r
def ev_json(ev):
    if isinstance(ev, str):
        return ev
    fix = ev.fix
    return {"status": ev.status, "elapsed_ms": ev.elapsed_ms, "epochs": ev.epochs, "hot": ev.hot,
            "timeout_ms": ev.timeout_ms,
            "fix": None if fix is None else dict(zip(FIELDS, [getattr(fix, k) for k in FIELDS]))}
acqs = {}
def handle(req, out):
    name = req.get("id", "a")
    if "profile" in req:
        acqs[name] = gnss.FixAcquisition(hwdata.load(req["profile"]), **req.get("kw", {}))
    acq = acqs[name]
    for step in req["steps"]:
        op = step[0]
        if op == "start":
            acq.start(step[1])
        elif op == "feed":
            acq.receive_data(binascii.unhexlify(step[1]), step[2])
        elif op == "poll":
            acq.poll(step[1])
        elif op == "cancel":
            acq.cancel(step[1])
        elif op == "backup_lost":
            acq.backup_lost()
        elif op == "storage":
            acq.storage_mode()
        while True:
            ev = acq.next_event()
            if ev is None:
                break
            out.append([op, ev_json(ev)])
    ans = {"events": out, "ignored": acq.ignored_bytes, "acquiring": acq.acquiring}
    return ans
""" % {"fields": FIX_FIELDS}, collected="events")


class Card:
    """Requests go in pieces of at most STEPS_PER_REQUEST steps (the acquisition lives on in the
    service between them): a whole replay in one line would need several contiguous copies of
    hundreds of KB on the interpreter's heap (the 32-bit port's default heap is 1 MB), which is
    the harness's need, not the firmware's."""

    STEPS_PER_REQUEST = 200

    def __init__(self, batch):
        self.batch = batch

    def run(self, steps, profile=None, kw=None, ident="a") -> dict:
        merged: dict = {"events": []}
        for i in range(0, max(len(steps), 1), self.STEPS_PER_REQUEST):
            req = {"id": ident, "steps": steps[i:i + self.STEPS_PER_REQUEST]}
            if profile and i == 0:
                req["profile"] = profile
                req["kw"] = kw or {}
            ans = json.loads(self.batch.call(json.dumps(req)))
            merged["events"] += ans.pop("events")
            merged.update(ans)
            if "error" in ans:
                break
        return merged


@pytest.fixture(scope="module")
def card(mpy):
    with mpy.Batch(SERVICE) as batch:
        yield Card(batch)


def uart_steps(data: bytes, t0: int, baud: int = 9600, chunk: int = 64, poll_every_ms=500):
    """Feed `data` as a UART at `baud` delivers it (10 bits a byte), polling in between."""
    steps = []
    sent = 0
    last_poll = t0
    while sent < len(data):
        piece = data[sent:sent + chunk]
        sent += len(piece)
        now = t0 + sent * 10_000 // baud
        steps.append(["feed", piece.hex(), now])
        if now - last_poll >= poll_every_ms:
            steps.append(["poll", now])
            last_poll = now
    return steps, t0 + sent * 10_000 // baud


def nmea_only(path: Path) -> bytes:
    return b"".join(line for line in path.read_bytes().splitlines(True)
                    if not line.startswith(b"#"))


def results(ans: dict) -> list[dict]:
    return [ev for _op, ev in ans["events"] if isinstance(ev, dict)]


def actions(ans: dict) -> list[str]:
    return [ev for _op, ev in ans["events"] if isinstance(ev, str)]


@pytest.fixture(scope="module")
def l76k(shared_data) -> bytes:
    return nmea_only(shared_data / "nmea" / "quectel-l76k-nmea.log")


@pytest.fixture(scope="module")
def nofix(shared_data) -> bytes:
    return nmea_only(next((shared_data / "nmea").glob("simcom_a7670*.nmea")))


def test_cold_start_then_fix_then_power_off_keeping_backup(card, l76k):
    feed, _ = uart_steps(l76k[:20_000], t0=1_000)
    ans = card.run([["start", 1_000]] + feed, profile="gnss_l76k")
    assert "error" not in ans, ans
    assert actions(ans) == ["gnss_backup_on", "gnss_power_on", "gnss_power_off"]
    (res,) = results(ans)
    assert res["status"] == "fix" and res["hot"] is False
    assert res["timeout_ms"] == 4 * 30_000  # 4 x the L76K's cold TTFF from gnss_l76k.json
    fix = res["fix"]
    assert fix["valid"] and fix["fix"] == "3d" and fix["hdop"] == 9 and fix["sats"] == 14
    assert fix["lat_e7"] == 476619817 and fix["lon_e7"] == -1223263937
    assert (fix["time"], fix["ms"]) == (1785909154, 200)  # 2026-08-05T05:52:34.2Z
    assert fix["alt"] == 77 and fix["speed"] == 0 and fix["course"] == 2864
    # the power-off comes with the result, in the same step: no NMEA after it is needed
    ops = {op for op, ev in ans["events"] if ev == "gnss_power_off" or isinstance(ev, dict)}
    assert len(ops) == 1 and ans["acquiring"] is False


def test_power_off_then_hot_start_within_two_hours(card, l76k):
    feed, end = uart_steps(l76k[:20_000], t0=0)
    ans = card.run([["start", 0]] + feed, profile="gnss_l76k", ident="hot")
    assert results(ans)[0]["status"] == "fix"
    later = end + 3_600_000  # one hour later, backup kept on
    feed, _ = uart_steps(l76k[:20_000], t0=later)
    ans = card.run([["start", later]] + feed, ident="hot")
    assert actions(ans) == ["gnss_power_on", "gnss_power_off"]  # backup already on
    res = results(ans)[0]
    assert res["hot"] is True and res["timeout_ms"] == 4 * 5_500
    # more than two hours later: cold again
    much_later = later + 3 * 3_600_000
    ans = card.run([["start", much_later], ["cancel", much_later + 10]], ident="hot")
    assert results(ans)[0]["hot"] is False and results(ans)[0]["status"] == "cancelled"
    # backup supply lost (battery swap): cold, and the backup is switched on again
    t = much_later + 60_000
    feed, _ = uart_steps(l76k[:20_000], t0=t)
    ans = card.run([["backup_lost"], ["start", t]] + feed, ident="hot")
    assert actions(ans)[:2] == ["gnss_backup_on", "gnss_power_on"]
    assert results(ans)[0]["hot"] is False


def test_no_fix_times_out_with_best_partial_info(card, nofix):
    # the A7670's indoor no-fix output, repeated for three minutes of UART time
    data = nofix * 150
    feed, end = uart_steps(data, t0=5_000, baud=9600)
    steps = [["start", 5_000]] + feed + [["poll", 5_000 + 130_000]]
    ans = card.run(steps, profile="gnss_l76k")
    assert "error" not in ans, ans
    (res,) = results(ans)
    assert res["status"] == "no_fix" and res["timeout_ms"] == 120_000
    assert res["elapsed_ms"] >= 120_000 and res["elapsed_ms"] < 121_000
    best = res["fix"]
    assert best is not None and best["valid"] is False and best["lat_e7"] is None
    assert best["time"] is not None and best["sats_in_view"] == 3 and best["hdop"] == 1000
    # a 2023 capture is older than the card's rollover floor (2024-01-01): moved 1024 weeks on
    assert best["rollover"] is True
    assert actions(ans) == ["gnss_backup_on", "gnss_power_on", "gnss_power_off"]
    assert res["epochs"] > 100


def test_fix_not_good_enough_is_the_best_partial_at_timeout(card, l76k):
    # demand HDOP <= 0.5: the L76K's 0.9 never qualifies; the valid fix is still returned
    feed, end = uart_steps(l76k[:30_000], t0=0, baud=115200)
    ans = card.run([["start", 0]] + feed + [["poll", 200_000]], profile="gnss_l76k",
                   kw={"max_hdop_x10": 5})
    (res,) = results(ans)
    assert res["status"] == "no_fix"
    assert res["fix"]["valid"] is True and res["fix"]["hdop"] == 9


def test_settle_waits_for_consecutive_good_epochs(card, l76k):
    feed, _ = uart_steps(l76k[:30_000], t0=0, baud=115200)
    ans = card.run([["start", 0]] + feed, profile="gnss_l76k", kw={"settle": 3})
    res = results(ans)[0]
    assert res["status"] == "fix" and (res["fix"]["time"], res["fix"]["ms"]) == (1785909154, 600)
    assert res["epochs"] == 4  # RMC-only first epoch (no HDOP) then three good ones


def test_min_sats(card, l76k):
    feed, _ = uart_steps(l76k[:30_000], t0=0, baud=115200)
    ans = card.run([["start", 0]] + feed + [["poll", 999_999]], profile="gnss_l76k",
                   kw={"min_sats": 15})
    assert results(ans)[0]["status"] == "no_fix"


def test_atgm336h_timeouts_from_its_profile(card):
    ans = card.run([["start", 0], ["poll", 127_999], ["poll", 128_000]],
                   profile="gnss_atgm336h")
    res = results(ans)[0]
    assert res["timeout_ms"] == 4 * 32_000 and res["status"] == "no_fix"
    assert [op for op, ev in ans["events"] if isinstance(ev, dict)] == ["poll"]
    assert res["fix"] is None  # not one byte came: nothing partial either


def test_bytes_while_idle_are_ignored_and_counted(card, l76k):
    ans = card.run([["feed", l76k[:500].hex(), 0]], profile="gnss_l76k")
    assert ans["ignored"] == 500 and ans["events"] == []


def test_misuse_is_a_typed_error(card):
    ans = card.run([["start", 0], ["start", 1]], profile="gnss_l76k")
    assert ans["error"].startswith("GNSSError")
    ans = card.run([["start", 0]], profile="gnss_l76k", kw={"settle": 0})
    assert ans["error"].startswith("GNSSError")


def test_storage_mode_turns_the_backup_off(card, l76k):
    feed, end = uart_steps(l76k[:20_000], t0=0)
    ans = card.run([["start", 0]] + feed + [["storage"], ["start", end + 1000],
                                             ["cancel", end + 2000]], profile="gnss_l76k")
    assert actions(ans) == ["gnss_backup_on", "gnss_power_on", "gnss_power_off",
                            "gnss_backup_off", "gnss_backup_on", "gnss_power_on",
                            "gnss_power_off"]
    assert results(ans)[1]["hot"] is False


def test_profiles_cite_a_source_for_every_figure():
    hw = Path(__file__).resolve().parent.parent / "hardware"
    for name in ("gnss_l76k.json", "gnss_atgm336h.json"):
        doc = json.loads((hw / name).read_text())
        for section in ("timing", "uart"):
            for key, fact in doc[section].items():
                assert isinstance(fact["value"], int) and fact["value"] > 0, (name, key)
                assert fact["source"] and fact["figure"] and "verified" in fact, (name, key)
        power = json.loads((hw / "power.json").read_text())["figures"]
        for key in doc["power_figures"]:
            assert key in power and power[key]["source"], (name, key)


def _sentence(body: str) -> bytes:
    checksum = 0
    for ch in body.encode():
        checksum ^= ch
    return f"${body}*{checksum:02X}\r\n".encode()


FUJIAN_EPOCH = (_sentence("GNGGA,031500.000,2457.12345,N,11835.67891,E,1,09,1.1,12.3,M,-4.1,M,,")
                + _sentence("GNGSA,A,3,02,07,14,15,17,20,22,30,,,,,1.5,1.1,1.2,1")
                + _sentence("GNRMC,031500.000,A,2457.12345,N,11835.67891,E,1.25,123.4,041226,,,A,V"))


@pytest.mark.parametrize("where", ["fujian", "seattle-capture"])
@pytest.mark.parametrize("clock_ms", [5_000, 20 * 86_400_000])  # 20 days: past 2**30 ms
def test_feeding_and_polling_allocate_nothing(mpy, l76k, where, clock_ms):
    """With the heap locked, an epoch's sentences and the polls between them go through the
    controller at a clock past 2**30 ms (12.4 days of uptime: no small int on the 32-bit port)
    and at coordinates whose 1e-7 degree values are no small ints either: nothing allocates.
    Only a closed epoch (its Fix) and the result allocate."""
    if where == "fujian":
        epoch = FUJIAN_EPOCH
    else:
        lines = l76k.splitlines(True)
        start = next(i for i, line in enumerate(lines) if line.startswith(b"$GNGGA"))
        end = next(i for i in range(start + 1, len(lines)) if lines[i].startswith(b"$GNGGA"))
        epoch = b"".join(lines[start:end])
    code = f"""
import micropython, hwdata, gnss
acq = gnss.FixAcquisition(hwdata.load("gnss_l76k"))
t0 = {clock_ms}
acq.start(t0)
while acq.next_event() is not None:
    pass
epoch = {epoch!r}
pieces = [epoch[i:i + 64] for i in range(0, len(epoch), 64)]
count = len(pieces)
now = [t0 + 1000, t0 + 1500]
k = 0
micropython.heap_lock()
try:
    while k < count:
        acq.receive_data(pieces[k], now[0])
        acq.poll(now[1])
        k += 1
finally:
    micropython.heap_unlock()
acq.poll(t0 + 10 ** 6)
acq.parser.flush()
print(acq.acquiring, [e if isinstance(e, str) else e.status for e in (acq.next_event(), acq.next_event())])
"""
    assert mpy.run(code).strip() == "False ['gnss_power_off', 'fix']"
