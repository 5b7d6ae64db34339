"""Cross-check: the card's NMEA parser, RUNNING ON MICROPYTHON, against two real peers.

Every NMEA capture in ../shared/data/nmea/ (gpsd's logs, the A7670's noisy no-fix output, the
AT6558R captures pasted in code comments) is decoded by firmware/lib/nmea.py on the MicroPython
unix port, and each fix epoch is compared with:

- pynmeagps (PyPI), which frames and decodes the same file on CPython; its sentences are grouped
  into epochs by the documented rule (same UTC time; GSA joins the open epoch) and judged by the
  documented validity rule (RMC status A and mode not N/E, GGA quality 1..5, GSA 2D/3D);
- gpsd: its `.log.chk` regression decodes (TPV JSON lines) and, for captures without one, and as a
  third opinion on all of them, the `gpsdecode` binary run live on the capture.

Agreement means: same time (to the millisecond), same validity (gpsd: TPV mode >= 2), and for
valid epochs latitude and longitude within 1e-6 degree. Documented differences, encoded here as
rules rather than skips:

- gpsd reports a TPV at its own cycle ends, so an epoch may have no gpsd TPV with its time (the
  first epoch of a log, epochs gpsd merges); such epochs are counted "not reported by gpsd", and
  every capture must still have agreements and no disagreements.
- GPS week rollover: gpsd reports the Telit's 1999-08-22 as is; our parser moves dates before the
  capture's not-before floor forward by 1024 weeks, so our time must equal gpsd's + 7168 days.
- gpsd keeps the last fix's position and mode when a receiver's epoch is invalid in ways gpsd does
  not check (e.g. RMC V with a position, GGA quality 0): validity then differs, and the test
  requires our verdict to be the stricter documented one (see VALIDITY_RULE_DIFFERENCES).
"""

from __future__ import annotations

import datetime as dt
import io
import json
import re
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from pynmeagps import ERR_IGNORE, VALCKSUM, NMEAReader

from carecard.host.commands.nmea_cmd import decode_capture, iso_time

TALKERS = {"GP", "GN", "BD", "GB", "GL", "GA"}
ROLLOVER_DAYS = 7168
EPOCH = dt.date(1970, 1, 1)
TOLERANCE_DEG = 1e-6


def captures(shared: Path) -> list[Path]:
    nmea = shared / "nmea"
    found = sorted(nmea.glob("*.log")) + sorted(nmea.glob("*.nmea")) + sorted(nmea.glob("*.txt"))
    return found


def not_before_days(path: Path) -> int:
    """The capture's rollover floor: 1 January ten years before the first date in its header
    (the submission date of a gpsd log, the posting date of an issue or comment). Captures are
    submitted after they are taken (myguide-3100.log: taken 2009-10-08, submitted 2011-03-23), and
    a rollover moves a date back by 19.6 years: a ten-year margin tells the two apart."""
    for line in path.read_text("utf-8", "replace").splitlines():
        if not line.startswith("#"):
            break
        m = re.search(r"(19|20)\d\d-\d{1,2}-\d{1,2}", line)
        if m:
            year = int(m.group(0)[:4])
            return (dt.date(year - 10, 1, 1) - EPOCH).days
    raise AssertionError(f"{path.name}: no date in the header to set the rollover floor")


def segments(path: Path) -> list[bytes]:
    """The capture split where it was spliced: a '#' comment line after the first sentence
    (bt451.log's "# Stationary", "# Moving in car") joins recordings made at different times."""
    out: list[bytes] = []
    cur: list[bytes] = []
    started = False
    for line in path.read_bytes().splitlines(keepends=True):
        if line.startswith(b"#"):
            if started and cur:
                out.append(b"".join(cur))
                cur = []
            continue
        if b"$" in line:
            started = True
        cur.append(line)
    if cur:
        out.append(b"".join(cur))
    return out


# --- reference 1: pynmeagps decodes, grouped and judged by the documented rules ------------------

@dataclass
class RefEpoch:
    tod: dt.time | None = None
    kinds: set[str] = field(default_factory=set)
    date: dt.date | None = None
    lat: float | None = None
    lon: float | None = None
    rmc_status: str | None = None
    rmc_mode: str | None = None
    quality: int | None = None
    gsa_mode: int = 0


def _num(value: object) -> int | None:
    return value if isinstance(value, int) else None


def pynmeagps_epochs(data: bytes, floor_days: int) -> list[dict]:
    epochs: list[RefEpoch] = []
    cur = RefEpoch()

    def close() -> None:
        nonlocal cur
        if cur.kinds & {"GGA", "RMC"}:
            epochs.append(cur)
        cur = RefEpoch()

    with io.BytesIO(data) as fh:
        for _raw, msg in NMEAReader(fh, validate=VALCKSUM, quitonerror=ERR_IGNORE):
            if msg is None or msg.talker not in TALKERS:
                continue
            mid = msg.msgID
            if mid in ("GGA", "RMC"):
                tod = msg.time if isinstance(msg.time, dt.time) else None
                if cur.kinds & {"GGA", "RMC"} and (mid in cur.kinds or tod != cur.tod):
                    close()
                cur.kinds.add(mid)
                cur.tod = tod
                if mid == "GGA":
                    cur.quality = _num(msg.quality)
                if mid == "RMC":
                    cur.rmc_status = msg.status
                    cur.rmc_mode = getattr(msg, "posMode", "") or None
                    if isinstance(msg.date, dt.date):
                        cur.date = msg.date
                if mid in ("GGA", "RMC") and isinstance(msg.lat, float) \
                        and isinstance(msg.lon, float):
                    cur.lat, cur.lon = msg.lat, msg.lon
            elif mid == "GSA":
                cur.kinds.add("GSA")
                mode = _num(msg.navMode)
                if mode and mode > cur.gsa_mode:
                    cur.gsa_mode = mode
    close()

    out = []
    last: tuple[dt.date, int] | None = None
    for ep in epochs:
        tod_ms = None
        if ep.tod is not None:
            tod_ms = ((ep.tod.hour * 60 + ep.tod.minute) * 60 + ep.tod.second) * 1000 \
                + ep.tod.microsecond // 1000
        date = ep.date
        if date is not None:
            while (date - EPOCH).days < floor_days:
                date += dt.timedelta(days=ROLLOVER_DAYS)
            last = (date, tod_ms if tod_ms is not None else -1)
        elif tod_ms is not None and last is not None:
            date = last[0]
            if tod_ms + 43_200_000 < last[1]:
                date += dt.timedelta(days=1)
            last = (date, tod_ms)
        valid = ep.lat is not None and ep.lon is not None
        if "RMC" in ep.kinds:
            valid = valid and ep.rmc_status == "A" and ep.rmc_mode not in ("N", "E")
        if "GGA" in ep.kinds:
            valid = valid and ep.quality is not None and 1 <= ep.quality <= 5
        if ep.gsa_mode:
            valid = valid and ep.gsa_mode >= 2
        time = None
        if date is not None and tod_ms is not None:
            time = (date - EPOCH).days * 86400 + tod_ms // 1000
        out.append({"time": time, "ms": (tod_ms or 0) % 1000, "valid": valid,
                    "lat": ep.lat, "lon": ep.lon})
    return out


# --- reference 2: gpsd TPV reports -----------------------------------------------------------------

CYCLE_MS = ROLLOVER_DAYS * 86_400_000


def _unix_ms(iso: str) -> int:
    stamp = dt.datetime.strptime(iso, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=dt.timezone.utc)
    return int(stamp.timestamp()) * 1000 + stamp.microsecond // 1000


def gpsd_tpvs(lines: list[str]) -> dict[int, dict]:
    """gpsd's TPV reports keyed by their instant modulo 1024 GPS weeks (last TPV per time: gpsd
    refines a cycle's TPV as its sentences arrive).

    gpsd applies the 1024-week rollover rule too, with its own floor (its build date): the
    regression .chk of neo-m8n.log (2015) says 2034-11-01, Debian's gpsdecode moves mt3339.log's
    2015 to 2034 as well, while our floor is the capture's own year. Both are the same instant
    within the 1024-week cycle, which is what is compared; the tests on the rollover rule itself
    are in test_nmea_parser.py."""
    by_time: dict[int, dict] = {}
    for line in lines:
        line = line.strip()
        if not line.startswith("{"):
            continue
        obj = json.loads(line)
        if obj.get("class") == "TPV" and "time" in obj:
            by_time[_unix_ms(obj["time"]) % CYCLE_MS] = obj
    return by_time


def gpsdecode(path: Path) -> list[str]:
    proc = subprocess.run(["gpsdecode"], input=path.read_bytes(), capture_output=True,
                          timeout=30, check=True)
    return proc.stdout.decode().splitlines()


def gpsd_key(fix: dict) -> int | None:
    if fix["time"] is None:
        return None
    return (fix["time"] * 1000 + fix["ms"]) % CYCLE_MS


@dataclass
class Tally:
    compared: int = 0
    agree: int = 0
    startup: int = 0
    segment_end: int = 0
    no_cycle_end: int = 0
    untimed: int = 0
    disagreements: list[str] = field(default_factory=list)

    def record(self, name: str, fix: dict, problem: str | None) -> None:
        if problem:
            self.disagreements.append(f"{name} {iso_time(fix)}: {problem}")
        else:
            self.agree += 1


def segment_sizes(path: Path, floor_days: int) -> list[int]:
    return [len(pynmeagps_epochs(seg, floor_days)) for seg in segments(path)]


def report_triggers(chk_lines: list[str]) -> dict[int, str]:
    """For each instant gpsd reported in a .chk, the sentence type after which it first did: the
    type gpsd was treating as the end of the receiver's reporting cycle at that moment."""
    out: dict[int, str] = {}
    last = None
    for line in chk_lines:
        if line.startswith("$"):
            last = line[3:6]
        elif line.startswith("{") and '"TPV"' in line and '"time"' in line and last:
            key = _unix_ms(json.loads(line)["time"]) % CYCLE_MS
            out.setdefault(key, last)
    return out


def sentence_times(data: bytes, kind: str) -> set[int]:
    """Times of day (ms) of the checksum-valid sentences of one type in a capture."""
    out = set()
    with io.BytesIO(data) as fh:
        for _raw, msg in NMEAReader(fh, validate=VALCKSUM, quitonerror=ERR_IGNORE):
            if msg is not None and msg.msgID == kind and isinstance(getattr(msg, "time", None),
                                                                     dt.time):
                t = msg.time
                out.add(((t.hour * 60 + t.minute) * 60 + t.second) * 1000
                        + t.microsecond // 1000)
    return out


def compare_gpsd(ours: list[dict], tpvs: dict[int, dict], name: str, sizes: list[int],
                 triggers: dict[int, str] | None = None, data: bytes = b"") -> Tally:
    """Compare every epoch gpsd reported with a time. Epochs gpsd reports without one are
    accounted for by gpsd's documented behaviour, per segment of the capture:

    - start-up: gpsd puts no time in a TPV until it trusts the date (an RMC with status A) and
      has seen a full cycle (gpsdecode reports nothing for the first epoch); every epoch before
      gpsd's first timed report of the segment is "startup";
    - segment end: gpsd reports a cycle when it sees the cycle's last sentence again or the next
      cycle start; the last epoch before the end of the log (or a splice) is never closed;
    - no cycle end: gpsd reports a cycle on the sentence type it learned as the cycle's last
      (the one after which it reported the previous epoch, `report_triggers` from the .chk); an
      epoch in which the receiver skipped that sentence is not reported, gpsd then relearns
      (gp-320fw-2019-04-06-overflow.log sends GLL in 9 of 20 cycles). Allowed only when the
      capture really has no sentence of that type with the epoch's time.
    Any other epoch gpsd did not report is a disagreement."""
    tally = Tally()
    if sum(sizes) != len(ours):
        tally.disagreements.append(f"{name}: segment sizes {sizes} do not add up to {len(ours)}")
        return tally
    start = 0
    for size in sizes:
        seg = ours[start:start + size]
        start += size
        keys = [gpsd_key(fix) for fix in seg]
        reported = [i for i, k in enumerate(keys) if k is not None and k in tpvs]
        first = reported[0] if reported else len(seg)
        for i, fix in enumerate(seg):
            key = keys[i]
            if key is None:
                tally.untimed += 1
                continue
            ref = tpvs.get(key)
            if ref is None:
                if i < first:
                    tally.startup += 1
                elif i == len(seg) - 1:
                    tally.segment_end += 1
                elif triggers and i > 0 and keys[i - 1] in triggers and \
                        key % 86_400_000 not in sentence_times(data, triggers[keys[i - 1]]):
                    tally.no_cycle_end += 1
                else:
                    tally.disagreements.append(
                        f"{name} {iso_time(fix)}: gpsd reported no TPV for this mid-log epoch")
                continue
            tally.compared += 1
            gvalid = ref.get("mode", 0) >= 2 and "lat" in ref
            problem = None
            if gvalid != fix["valid"]:
                problem = f"validity ours={fix['valid']} gpsd mode={ref.get('mode')}"
            elif gvalid:
                problem = position_problem(fix, ref["lat"], ref["lon"])
            tally.record(name, fix, problem)
    return tally


def position_problem(fix: dict, lat: float, lon: float) -> str | None:
    """Why our valid fix disagrees with a reference position, or None within the tolerance."""
    dlat = abs(fix["lat_e7"] / 1e7 - lat)
    dlon = abs(fix["lon_e7"] / 1e7 - lon)
    if dlat > TOLERANCE_DEG or dlon > TOLERANCE_DEG:
        return f"position differs by {dlat:.2e}, {dlon:.2e} deg"
    return None


def compare_pynmeagps(ours: list[dict], ref: list[dict], name: str) -> Tally:
    tally = Tally()
    if len(ours) != len(ref):
        tally.disagreements.append(f"{name}: {len(ours)} epochs, pynmeagps {len(ref)}")
    for fix, r in zip(ours, ref):
        tally.compared += 1
        problem = None
        if (fix["time"], fix["ms"] if fix["time"] is not None else 0) != \
                (r["time"], r["ms"] if r["time"] is not None else 0):
            problem = f"time ours={iso_time(fix)} pynmeagps={r['time']}.{r['ms']}"
        elif fix["valid"] != r["valid"]:
            problem = f"validity ours={fix['valid']} pynmeagps={r['valid']}"
        elif fix["valid"]:
            problem = position_problem(fix, r["lat"], r["lon"])
        tally.record(name, fix, problem)
    return tally


@pytest.fixture(scope="module")
def decoded(shared_data, mpy):
    out = {}
    for path in captures(shared_data):
        out[path.name] = (path, decode_capture(path, not_before_days=not_before_days(path)))
    return out


def test_every_capture_is_covered(shared_data, decoded):
    names = set(decoded)
    assert len(names) >= 14
    assert "quectel-l76k-nmea.log" in names
    assert any(n.startswith("simcom_a7670") for n in names)
    assert any(n.startswith("at6558r") for n in names)


def test_agrees_with_pynmeagps(decoded, capsys):
    rows = []
    total = Tally()
    for name, (path, dec) in sorted(decoded.items()):
        ref = pynmeagps_epochs(path.read_bytes(), not_before_days(path))
        tally = compare_pynmeagps(dec.fixes, ref, name)
        rows.append(f"  {name:62s} epochs {tally.compared:4d} agree {tally.agree:4d}")
        total.compared += tally.compared
        total.agree += tally.agree
        total.disagreements += tally.disagreements
    with capsys.disabled():
        print(f"\nNMEA vs pynmeagps: {total.compared} epochs compared, {total.agree} agree, "
              f"{len(total.disagreements)} disagree")
        print("\n".join(rows))
        for d in total.disagreements:
            print("  DISAGREE", d)
    assert total.compared >= 321
    assert not total.disagreements


@pytest.mark.parametrize("source", ["chk", "gpsdecode"])
def test_agrees_with_gpsd(decoded, capsys, source):
    rows = []
    total = Tally()
    for name, (path, dec) in sorted(decoded.items()):
        chk = path.with_name(path.name + ".chk")
        if source == "chk":
            if not chk.exists():
                continue
            lines = chk.read_text().splitlines()
        else:
            lines = gpsdecode(path)
        sizes = segment_sizes(path, not_before_days(path))
        triggers = report_triggers(chk.read_text().splitlines()) if chk.exists() else None
        tally = compare_gpsd(dec.fixes, gpsd_tpvs(lines), name, sizes, triggers,
                             path.read_bytes())
        rows.append(f"  {name:62s} epochs {len(dec.fixes):4d} compared {tally.compared:4d} "
                    f"agree {tally.agree:4d} startup {tally.startup:2d} "
                    f"segment-end {tally.segment_end:2d} no-cycle-end {tally.no_cycle_end:2d} "
                    f"untimed {tally.untimed:2d}")
        if source == "chk" and any(f["valid"] for f in dec.fixes):
            assert tally.agree > 0, f"{name}: no valid epoch compared with gpsd ({source})"
        for attr in ("compared", "agree", "startup", "segment_end", "no_cycle_end", "untimed"):
            setattr(total, attr, getattr(total, attr) + getattr(tally, attr))
        total.disagreements += tally.disagreements
    with capsys.disabled():
        print(f"\nNMEA vs gpsd ({source}): {total.compared} epochs compared, {total.agree} agree, "
              f"{len(total.disagreements)} disagree; not reported by gpsd: {total.startup} at "
              f"start-up, {total.segment_end} at a segment end, {total.no_cycle_end} without "
              f"gpsd's cycle-end sentence; {total.untimed} without time "
              "on either side")
        print("\n".join(rows))
        for d in total.disagreements:
            print("  DISAGREE", d)
    assert total.compared >= 280
    assert not total.disagreements
