"""firmware/lib/nmea.py on MicroPython: framing, checksums, noise, units, epochs, rollover.

Every case runs on the MicroPython unix port through one long-lived interpreter (`NMEAService`):
a request line carries the bytes (hex) and how to chunk them, the answer line carries the fixes
and the parser's counters.
"""

from __future__ import annotations

import datetime as dt
import json
from fractions import Fraction
from functools import reduce

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from carecard.host.commands.nmea_cmd import COUNTERS, FIX_FIELDS

SERVICE = """
import sys, json, binascii
from civil import days_from_civil
from nmea import NMEAParser, NMEAError
FIELDS = %(fields)r
COUNTERS = %(counters)r
def drain(p, out):
    while True:
        e = p.next_event()
        if e is None:
            return
        out.append([getattr(e, k) for k in FIELDS])
while True:
    line = sys.stdin.readline()
    if not line:
        break
    req = json.loads(line)
    op = req["op"]
    try:
        if op == "parse":
            p = NMEAParser(req["nb"]) if req.get("nb") is not None else NMEAParser()
            out = []
            if "path" in req:
                with open(req["path"], "rb") as f:
                    while True:
                        piece = f.read(4096)
                        if not piece:
                            break
                        p.receive_data(piece)
                        drain(p, out)
            else:
                data = binascii.unhexlify(req["hex"])
                prev = 0
                for c in req.get("cuts", []) + [len(data)]:
                    p.receive_data(data[prev:c])
                    prev = c
                    drain(p, out)
            if req.get("flush", True):
                p.flush()
                drain(p, out)
            ans = {"fixes": out, "c": [getattr(p, k) for k in COUNTERS], "err": p.last_error}
        elif op == "days":
            ans = [days_from_civil(y, m, d) for y, m, d in req["dates"]]
        elif op == "misuse":
            p = NMEAParser()
            try:
                p.receive_data(req["value"])
                ans = "accepted"
            except NMEAError as exc:
                ans = "NMEAError: " + str(exc)
        else:
            ans = {"error": "unknown op"}
    except Exception as exc:
        ans = {"crash": "%%s: %%s" %% (type(exc).__name__, exc)}
    print(json.dumps(ans))
""" % {"fields": FIX_FIELDS, "counters": COUNTERS}


class NMEAService:
    """Large inputs (whole captures) go through a file, read by the service in 4 KB pieces: as
    hex on one request line they would need several contiguous copies of hundreds of KB on the
    interpreter's heap (the 32-bit port's default heap is 1 MB), the harness's need, not the
    parser's."""

    LARGE = 32 * 1024

    def __init__(self, batch, scratch):
        self.batch = batch
        self.scratch = scratch

    def parse(self, data: bytes, cuts: list[int] | None = None, not_before: int | None = 0,
              flush: bool = True) -> tuple[list[dict], dict, str | None]:
        req = {"op": "parse", "nb": not_before, "flush": flush}
        if len(data) > self.LARGE and not cuts:
            path = self.scratch / "input.nmea"
            path.write_bytes(data)
            req["path"] = str(path)
        else:
            req.update(hex=data.hex(), cuts=sorted(cuts or []))
        ans = json.loads(self.batch.call(json.dumps(req)))
        assert "crash" not in ans, f"parser crashed on MicroPython: {ans['crash']}"
        fixes = [dict(zip(FIX_FIELDS, f)) for f in ans["fixes"]]
        return fixes, dict(zip(COUNTERS, ans["c"])), ans["err"]

    def call(self, req: dict):
        ans = json.loads(self.batch.call(json.dumps(req)))
        assert not (isinstance(ans, dict) and "crash" in ans), ans
        return ans


@pytest.fixture(scope="module")
def nmea(mpy, tmp_path_factory):
    with mpy.Batch(SERVICE) as batch:
        yield NMEAService(batch, tmp_path_factory.mktemp("nmea-service"))


def sentence(body: str, lower: bool = False) -> bytes:
    """'$body*hh\\r\\n' with the right checksum."""
    cs = reduce(lambda a, c: a ^ c, body.encode(), 0)
    hexcs = f"{cs:02x}" if lower else f"{cs:02X}"
    return f"${body}*{hexcs}\r\n".encode()


GGA = "GNGGA,055234.200,4739.71890,N,12219.58362,W,1,14,0.9,76.5,M,-21.6,M,,"
GSA = "GNGSA,A,3,02,07,14,15,17,20,22,30,,,,,1.5,0.9,1.2,1"
RMC = "GNRMC,055234.200,A,4739.71890,N,12219.58362,W,0.00,286.35,050826,,,A,V"
EPOCH_T = int(dt.datetime(2026, 8, 5, 5, 52, 34, tzinfo=dt.timezone.utc).timestamp())


def one_epoch() -> bytes:
    return sentence(GGA) + sentence(GSA) + sentence(RMC)


# --- checksums -------------------------------------------------------------------------------

def test_one_epoch_is_one_fix_with_every_field(nmea):
    fixes, c, err = nmea.parse(one_epoch())
    assert len(fixes) == 1 and err is None
    f = fixes[0]
    assert f["time"] == EPOCH_T and f["ms"] == 200
    assert f["valid"] is True and f["fix"] == "3d"
    assert f["lat_e7"] == 476619817  # 47 deg 39.71890 min = 47.661981666.. deg
    assert f["lon_e7"] == -1223263937
    assert (f["alt"], f["hdop"], f["sats"], f["speed"], f["course"]) == (77, 9, 14, 0, 2864)
    assert (f["quality"], f["status"], f["rollover"]) == (1, "A", False)
    assert c["sentences"] == 3 and c["bad_checksum"] == 0 and c["skipped_bytes"] == 0
    assert c["epochs"] == 1


def test_lower_case_checksum_hex_is_accepted(nmea):
    data = sentence(GGA, lower=True) + sentence(RMC, lower=True)
    assert b"*4a" in data.lower() and data != data.upper()
    fixes, c, _ = nmea.parse(data)
    assert c["sentences"] == 2 and c["bad_checksum"] == 0
    assert fixes[0]["lat_e7"] == 476619817


def test_bad_checksum_is_counted_and_its_data_never_used(nmea):
    # GGA claims another latitude but keeps the old checksum: it must not reach the fix
    bad_gga = sentence(GGA).replace(b"4739.71890", b"4739.71990")
    fixes, c, err = nmea.parse(bad_gga + sentence(GSA) + sentence(RMC))
    assert c["bad_checksum"] == 1 and err == "checksum"
    assert c["skipped_bytes"] == len(bad_gga)
    assert fixes[0]["lat_e7"] == 476619817  # RMC's latitude, not 47.6620
    assert fixes[0]["alt"] is None and fixes[0]["quality"] is None  # GGA not used at all


def test_bad_checksum_on_every_position_sentence_means_no_fix(nmea):
    data = sentence(GGA)[:-4] + b"00\r\n" + sentence(GSA) + sentence(RMC)[:-4] + b"FF\r\n"
    fixes, c, _ = nmea.parse(data)
    assert c["bad_checksum"] == 2 and fixes == []


def test_missing_or_non_hex_checksum_is_truncated(nmea):
    data = b"$GNGGA,055234.200,4739.71890,N\r\n" + sentence(RMC)[:-4] + b"ZZ\r\n" + sentence(RMC)
    fixes, c, _ = nmea.parse(data)
    assert c["truncated"] == 2 and c["sentences"] == 1 and len(fixes) == 1


# --- noise between and before sentences ------------------------------------------------------

@pytest.mark.parametrize("prefix", [b"$", b"GN", b"C", b"\x00\xff\xba\xce", b"$$$", b"GN$GN"])
def test_noise_glued_before_a_sentence_is_skipped(nmea, prefix):
    data = prefix + sentence(GGA) + b"noise" + sentence(RMC)
    fixes, c, _ = nmea.parse(data)
    assert len(fixes) == 1 and fixes[0]["valid"] and fixes[0]["alt"] == 77
    assert c["sentences"] == 2
    assert c["skipped_bytes"] == len(prefix) + len(b"noise") - (0 if b"$" not in prefix else 0)


def test_real_simcom_noise_lines(nmea, shared_data):
    path = next((shared_data / "nmea").glob("simcom_a7670*.nmea"))
    fixes, c, _ = nmea.parse(path.read_bytes())
    # C$GNRMC and GN$GNRMC lines are decoded; the last line is cut off after '*'
    assert [(f["time"] - 1675790962, f["ms"]) for f in fixes] == [(0, 0), (0, 500), (1, 0)]
    assert all(not f["valid"] and f["fix"] == "none" and f["lat_e7"] is None for f in fixes)
    assert c["bad_checksum"] == 0 and c["truncated"] >= 1


def test_sentences_glued_without_newline(nmea):
    data = sentence(GGA).rstrip() + sentence(GSA).rstrip() + sentence(RMC)
    fixes, c, _ = nmea.parse(data)
    assert c["sentences"] == 3 and len(fixes) == 1 and fixes[0]["valid"]


def test_truncated_sentence_followed_by_a_good_one(nmea):
    data = b"$GNRMC,172923.50,V,,,,,,,070223,,,N" + sentence(GGA) + sentence(RMC)
    fixes, c, _ = nmea.parse(data)
    assert c["truncated"] == 1 and c["sentences"] == 2 and fixes[0]["valid"]


def test_over_long_line_is_dropped_and_parsing_resumes(nmea):
    junk = b"$GPTXT," + b"A" * 300 + b"*00\r\n"
    for cuts in ([], [5], [100, 200, 250]):
        fixes, c, err = nmea.parse(junk + one_epoch(), cuts=cuts)
        assert c["too_long"] == 1 and c["sentences"] == 3 and len(fixes) == 1, cuts
        assert c["skipped_bytes"] == len(junk)


def casic_frame(cls: int, mid: int, payload: bytes) -> bytes:
    """A CASIC binary frame as the L76K/AT6558R send them: 0xBA 0xCE, payload length (LE16),
    class, id, payload, 32-bit checksum (id<<24 + class<<16 + length + payload words)."""
    if len(payload) % 4:
        payload += b"\x00" * (4 - len(payload) % 4)
    ck = (mid << 24) + (cls << 16) + len(payload)
    for i in range(0, len(payload), 4):
        ck += int.from_bytes(payload[i:i + 4], "little")
    return (b"\xba\xce" + len(payload).to_bytes(2, "little") + bytes([cls, mid]) + payload
            + (ck & 0xFFFFFFFF).to_bytes(4, "little"))


def test_casic_binary_frames_between_sentences_are_skipped(nmea):
    hostile = b"\x24GPGGA,\x0a\x2a\x0d\x24\x00\xff" * 3  # '$', '\n', '*' inside binary
    frames = casic_frame(0x05, 0x01, hostile) + casic_frame(0x01, 0x02, bytes(range(256))[:40])
    data = frames + sentence(GGA) + frames + sentence(GSA) + frames + sentence(RMC) + frames
    for cuts in ([], list(range(7, len(data), 13))):
        fixes, c, _ = nmea.parse(data, cuts=cuts)
        assert c["sentences"] == 3 and len(fixes) == 1 and fixes[0]["lat_e7"] == 476619817
        assert fixes[0]["alt"] == 77 and fixes[0]["hdop"] == 9


def test_unknown_types_and_talkers_are_counted(nmea):
    data = (sentence("PMTK001,320,2") + sentence("GPTXT,01,01,02,ANTENNA OK")
            + sentence("QZGGA,055234.200,4739.71890,N,12219.58362,W,1,14,0.9,76.5,M,,M,,")
            + one_epoch())
    fixes, c, _ = nmea.parse(data)
    assert c["unknown"] == 3 and c["sentences"] == 6 and len(fixes) == 1


def test_malformed_fields_are_counted_and_not_used(nmea):
    bad = sentence(GGA.replace("4739.71890", "47x9.71890"))
    fixes, c, err = nmea.parse(bad + sentence(RMC))
    assert c["malformed"] == 1 and err == "malformed" and fixes[0]["alt"] is None
    assert fixes[0]["lat_e7"] == 476619817


def test_receive_data_rejects_text_with_a_typed_error(nmea):
    ans = nmea.call({"op": "misuse", "value": "$GNGGA,text"})
    assert ans.startswith("NMEAError")


# --- units, integer arithmetic ----------------------------------------------------------------

def expected_e7(deg: int, minutes: int, frac: str) -> int:
    """The documented rule: minutes rounded half up to 1e-7 minute, then /60 rounded half up."""
    digits = (frac + "0" * 8)[:8]
    m_e7 = minutes * 10**7 + int(digits[:7]) + (1 if int(digits[7]) >= 5 else 0)
    return deg * 10**7 + (m_e7 + 30) // 60


@settings(max_examples=150)
@given(lat_deg=st.integers(0, 89), lon_deg=st.integers(0, 179), lat_min=st.integers(0, 59),
       lon_min=st.integers(0, 59), lat_frac=st.text("0123456789", max_size=10),
       lon_frac=st.text("0123456789", max_size=10), ns=st.sampled_from("NS"),
       ew=st.sampled_from("EW"))
def test_coordinates_are_exact_integers(nmea, lat_deg, lon_deg, lat_min, lon_min, lat_frac,
                                        lon_frac, ns, ew):
    lat = f"{lat_deg:02d}{lat_min:02d}" + (f".{lat_frac}" if lat_frac else "")
    lon = f"{lon_deg:03d}{lon_min:02d}" + (f".{lon_frac}" if lon_frac else "")
    gga = f"GPGGA,120000.00,{lat},{ns},{lon},{ew},1,08,1.0,10.0,M,0.0,M,,"
    rmc = f"GPRMC,120000.00,A,{lat},{ns},{lon},{ew},0.0,0.0,010125,,,A"
    fixes, c, _ = nmea.parse(sentence(gga) + sentence(rmc))
    assert c["sentences"] == 2 and len(fixes) == 1
    want_lat = expected_e7(lat_deg, lat_min, lat_frac) * (-1 if ns == "S" else 1)
    want_lon = expected_e7(lon_deg, lon_min, lon_frac) * (-1 if ew == "W" else 1)
    assert fixes[0]["lat_e7"] == want_lat and fixes[0]["lon_e7"] == want_lon
    exact = (lat_deg + (lat_min + Fraction(f"0.{lat_frac or '0'}")) / 60) * 10**7
    assert abs(abs(want_lat) - exact) <= Fraction(51, 100)  # within 0.51e-7 degree


@pytest.mark.parametrize("field,value,key,want", [
    ("hdop", "0.98", "hdop", 10), ("hdop", "99.99", "hdop", 1000), ("hdop", "12.5", "hdop", 125),
    ("alt", "-10.7", "alt", -11), ("alt", "1127.4", "alt", 1127), ("alt", "0.5", "alt", 1),
    ("knots", "5.19", "speed", 267), ("knots", "0.117", "speed", 6), ("knots", "100", "speed", 5144),
    ("course", "77.74", "course", 777), ("course", "359.99", "course", 3600),
])
def test_unit_conversions(nmea, field, value, key, want):
    gga = GGA.replace(",0.9,76.5,", ",0.9,76.5,")
    if field == "hdop":
        gga = GGA.replace(",14,0.9,", f",14,{value},")
    if field == "alt":
        gga = GGA.replace(",76.5,M", f",{value},M")
    rmc = RMC
    if field == "knots":
        rmc = RMC.replace(",0.00,286.35,", f",{value},286.35,")
    if field == "course":
        rmc = RMC.replace(",0.00,286.35,", f",0.00,{value},")
    fixes, c, _ = nmea.parse(sentence(gga) + sentence(rmc))
    assert c["sentences"] == 2 and fixes[0][key] == want


@settings(max_examples=60)
@given(st.dates(min_value=dt.date(1980, 1, 6), max_value=dt.date(2199, 12, 31)))
def test_calendar_arithmetic_matches_datetime(nmea, day):
    got = nmea.call({"op": "days", "dates": [[day.year, day.month, day.day]]})
    assert got == [(day - dt.date(1970, 1, 1)).days]


def test_unix_time_from_rmc_date_and_time(nmea):
    rmc = "GPRMC,235959.999,A,4739.71890,N,12219.58362,W,0.0,0.0,291228,,,A"
    fixes, _, _ = nmea.parse(sentence(rmc))
    want = dt.datetime(2028, 12, 29, 23, 59, 59, tzinfo=dt.timezone.utc).timestamp()
    assert fixes[0]["time"] == want and fixes[0]["ms"] == 999


def test_invalid_dates_give_no_time_but_keep_the_position(nmea):
    for date in ("310224", "290223", "2208-1", "001324"):
        rmc = f"GPRMC,000231.42,A,4829.0005,N,00022.0016,E,0.16,212.28,{date},,,A"
        fixes, c, _ = nmea.parse(sentence(rmc))
        assert fixes[0]["time"] is None and fixes[0]["valid"], date
        assert fixes[0]["lat_e7"] == 484833417


# --- GPS week rollover -------------------------------------------------------------------------

def test_week_rollover_april6_capture(nmea, shared_data):
    """The Telit HE910 (gpsd's april6_2019.log) says 1999-08-22 00:02:31.42 just after the
    2019-04-06 rollover: 1024 weeks late, it was 2019-04-07."""
    data = (shared_data / "nmea" / "april6_2019.log").read_bytes()
    floor_2010 = (dt.date(2010, 1, 1) - dt.date(1970, 1, 1)).days
    fixes, _, _ = nmea.parse(data, not_before=floor_2010)
    stamp = dt.datetime.fromtimestamp(fixes[-1]["time"], dt.timezone.utc)
    assert stamp == dt.datetime(2019, 4, 7, 0, 2, 31, tzinfo=dt.timezone.utc)
    assert fixes[-1]["ms"] == 420 and fixes[-1]["rollover"] is True
    # no floor: the receiver's date as is (what gpsd's .chk shows)
    fixes, _, _ = nmea.parse(data, not_before=0)
    stamp = dt.datetime.fromtimestamp(fixes[-1]["time"], dt.timezone.utc)
    assert stamp.date() == dt.date(1999, 8, 22) and fixes[-1]["rollover"] is False
    # the card's own floor (2024-01-01: no card runs before it) moves it into the present epoch
    fixes, _, _ = nmea.parse(data, not_before=None)
    stamp = dt.datetime.fromtimestamp(fixes[-1]["time"], dt.timezone.utc)
    assert stamp.date() == dt.date(1999, 8, 22) + dt.timedelta(weeks=2048) \
        == dt.date(2038, 11, 21)


def test_dates_after_the_floor_are_left_alone(nmea, shared_data):
    # gp-320fw: a receiver that kept the right date across the 2019-04-06 rollover
    data = (shared_data / "nmea" / "gp-320fw-2019-04-06-overflow.log").read_bytes()
    floor = (dt.date(2015, 1, 1) - dt.date(1970, 1, 1)).days
    fixes, _, _ = nmea.parse(data, not_before=floor)
    assert all(not f["rollover"] for f in fixes)
    assert dt.datetime.fromtimestamp(fixes[0]["time"], dt.timezone.utc).date() == \
        dt.date(2019, 4, 6)


# --- epochs and validity ------------------------------------------------------------------------

def test_untimed_no_fix_cycles_are_separate_epochs(nmea, shared_data):
    data = (shared_data / "nmea" / "bt451.log").read_bytes()
    fixes, _, _ = nmea.parse(data)
    untimed = [f for f in fixes if f["time"] is None]
    assert len(untimed) == 4 and all(not f["valid"] for f in untimed)
    assert all(f["hdop"] == 1000 for f in untimed)  # 99.99 x10 from the GGA of each cycle


@pytest.mark.parametrize("change,valid", [
    ((RMC, RMC.replace(",A,4739", ",V,4739")), False),
    ((GGA, GGA.replace(",W,1,14,", ",W,0,14,")), False),
    ((GGA, GGA.replace(",W,1,14,", ",W,6,14,")), False),  # estimated (dead reckoning)
    ((GGA, GGA.replace(",W,1,14,", ",W,2,14,")), True),
    ((GSA, GSA.replace("A,3,", "A,1,")), False),
    ((RMC, RMC.replace(",,,A,V", ",,,N,V")), False),
    ((RMC, RMC.replace(",,,A,V", ",,,D,V")), True),
])
def test_validity_rules(nmea, change, valid):
    old, new = change
    parts = [new if s == old else s for s in (GGA, GSA, RMC)]
    fixes, _, _ = nmea.parse(b"".join(sentence(s) for s in parts))
    assert fixes[0]["valid"] is valid
    assert (fixes[0]["lat_e7"] is not None) is valid
    assert fixes[0]["fix"] == ("3d" if valid else "none")


def test_fix_type_without_gsa(nmea):
    fixes, _, _ = nmea.parse(sentence(RMC))
    assert fixes[0]["fix"] == "2d"
    fixes, _, _ = nmea.parse(sentence(GGA) + sentence(RMC))
    assert fixes[0]["fix"] == "3d"
    fixes, _, _ = nmea.parse(sentence(GGA) + sentence(GSA.replace("A,3,", "A,2,")))
    assert fixes[0]["fix"] == "2d"


def test_gga_only_epochs_take_the_date_across_midnight(nmea):
    rmc = "GPRMC,235959.00,A,4739.71890,N,12219.58362,W,0.0,0.0,311226,,,A"
    gga = "GPGGA,000000.00,4739.71890,N,12219.58362,W,1,08,1.0,10.0,M,0.0,M,,"
    fixes, _, _ = nmea.parse(sentence(rmc) + sentence(gga))
    assert [dt.datetime.fromtimestamp(f["time"], dt.timezone.utc) for f in fixes] == [
        dt.datetime(2026, 12, 31, 23, 59, 59, tzinfo=dt.timezone.utc),
        dt.datetime(2027, 1, 1, 0, 0, 0, tzinfo=dt.timezone.utc)]


def test_epoch_is_emitted_when_the_next_starts_or_on_flush(nmea):
    fixes, c, _ = nmea.parse(one_epoch(), flush=False)
    assert fixes == [] and c["epochs"] == 0
    nxt = sentence(GGA.replace("055234.200", "055234.400"))
    fixes, c, _ = nmea.parse(one_epoch() + nxt, flush=False)
    assert len(fixes) == 1 and fixes[0]["ms"] == 200


@settings(max_examples=40)
@given(st.lists(st.integers(min_value=1, max_value=20_000), max_size=40))
def test_chunking_never_changes_the_result(nmea, shared_data, cuts):
    data = (shared_data / "nmea" / "quectel-l76k-nmea.log").read_bytes()[:20_000]
    whole = nmea.parse(data)
    assert nmea.parse(data, cuts=sorted(set(cuts))) == whole


def test_byte_by_byte_feed_equals_whole_feed(nmea, shared_data):
    data = (shared_data / "nmea" / "mt3339.log").read_bytes()[:3000]
    assert nmea.parse(data, cuts=list(range(1, len(data)))) == nmea.parse(data)


def test_mutated_checksums_in_a_real_capture_are_never_used(nmea, shared_data):
    """Every 7th GGA/RMC of the L76K capture gets a wrong latitude and keeps its checksum: no
    fix may carry a wrong latitude, and each one is counted."""
    lines = (shared_data / "nmea" / "quectel-l76k-nmea.log").read_bytes().splitlines(True)
    clean_fixes, clean_c, _ = nmea.parse(b"".join(lines))
    mutated = []
    n = 0
    for line in lines:
        if line[3:6] in (b"GGA", b"RMC") and b",4739." in line:
            n += 1
            if n % 7 == 0:
                line = line.replace(b",4739.", b",4738.")
        mutated.append(line)
    fixes, c, _ = nmea.parse(b"".join(mutated))
    assert c["bad_checksum"] == n // 7 > 20
    assert c["sentences"] == clean_c["sentences"] - n // 7
    # the capture sits at 47.6619..47.6620 N; a mutated sentence would say 47.645
    assert all(f["lat_e7"] is None or 476600000 < f["lat_e7"] < 476700000 for f in fixes)
    # every epoch still there (the other sentence of the pair carries it) with the same position
    by_time = {(f["time"], f["ms"]): f for f in clean_fixes}
    for f in fixes:
        ref = by_time[(f["time"], f["ms"])]
        assert (f["lat_e7"], f["lon_e7"]) == (ref["lat_e7"], ref["lon_e7"]) or \
            f["lat_e7"] is None


def test_largest_capture_counts(nmea, shared_data):
    data = (shared_data / "nmea" / "quectel-l76k-nmea.log").read_bytes()
    fixes, c, _ = nmea.parse(data)
    assert c["sentences"] == 2280 and c["bad_checksum"] == 0 and c["truncated"] == 0
    assert c["epochs"] == len(fixes) == 151
    # comment lines are the only bytes skipped
    comments = sum(len(line) for line in data.splitlines(True) if line.startswith(b"#"))
    assert c["skipped_bytes"] == comments
    assert sum(f["valid"] for f in fixes) == 151
    # GP + BD + GL GSV "in view" summed per epoch (gpsd's SKY nSat says 25/26 for this log)
    in_view = [f["sats_in_view"] for f in fixes[1:]]
    assert all(v is not None and 12 <= v <= 26 for v in in_view)
    assert sum(v in (25, 26) for v in in_view) > 140


def test_no_heap_allocation_per_sentence(mpy, shared_data):
    """With the heap locked (any allocation raises MemoryError), a whole L76K epoch of
    sentences goes through the parser, fed in one piece and in 7-byte UART-sized pieces: nothing
    is allocated per sentence or per chunk. Only closing an epoch allocates (its Fix)."""
    lines = (shared_data / "nmea" / "quectel-l76k-nmea.log").read_bytes().splitlines(True)
    start = next(i for i, line in enumerate(lines) if line.startswith(b"$GNGGA"))
    end = next(i for i in range(start + 1, len(lines)) if lines[i].startswith(b"$GNGGA"))
    epoch = b"".join(lines[start:end]) + b"\x00garbage\xba\xce$$GN" + b"$GNRMC,1*00\r\n"
    code = f"""
import micropython
from nmea import NMEAParser
p = NMEAParser()
epoch = {epoch!r}
pieces = [epoch[i:i + 7] for i in range(0, len(epoch), 7)]
for feed in ([epoch], pieces):
    k = 0
    count = len(feed)
    micropython.heap_lock()
    try:
        while k < count:  # (a for loop would allocate its iterator)
            p.receive_data(feed[k])
            k += 1
    finally:
        micropython.heap_unlock()
    assert p.next_event() is None
    p.flush()
    fix = p.next_event()
    assert fix is not None and fix.valid and fix.lat_e7 == 476619817, fix
print(p.sentences, p.bad_checksum, p.truncated, p.unknown)
"""
    sentences = [line for line in lines[start:end] if line.startswith(b"$")]
    not_decoded = [line for line in sentences if line[3:6] not in (b"GGA", b"RMC", b"GSA", b"GSV")]
    assert len(not_decoded) >= 3  # GLL, VTG, ZDA (and TXT)
    out = mpy.run(code).split()
    assert out == [str(2 * len(sentences)), "2", "2", str(2 * len(not_decoded))]


# Places whose coordinates in 1e-7 degree are beyond the 32-bit port's small ints (|v| >
# 1,073,741,823: east or west of 107.37 degrees) and within them, in every hemisphere, at the
# poles and the antimeridian, with minutes that round up into the next degree.
PLACES = {
    "nanan-fujian": ("2457.12345", "N", "11835.67891", "E"),
    "fujian-8-decimals": ("2457.12345678", "N", "11835.67891234", "E"),
    "seattle": ("4739.71890", "N", "12219.58362", "W"),
    "sydney": ("3351.12345", "S", "15112.34567", "E"),
    "buenos-aires": ("3436.12345", "S", "05822.54321", "W"),
    "greenwich": ("5128.67890", "N", "00000.12345", "W"),
    "east-of-antimeridian": ("1504.12345", "S", "17959.99999", "E"),
    "antimeridian-west": ("6530.00000", "N", "18000.00000", "W"),
    "north-pole": ("9000.00000", "N", "04500.00000", "E"),
    "near-south-pole": ("8959.9999999", "S", "13959.9999999", "W"),
    "rounds-into-next-degree": ("2459.99999999", "N", "11859.99999999", "E"),
}


def _e7(value: str, hemisphere: str, degree_digits: int) -> int:
    minutes, _, frac = value[degree_digits:].partition(".")
    v = expected_e7(int(value[:degree_digits]), int(minutes), frac)
    return -v if hemisphere in "SW" else v


@pytest.mark.parametrize("place", list(PLACES))
def test_no_heap_allocation_per_sentence_anywhere_on_earth(mpy, place):
    """GGA, GSA, GSV and RMC at the place go through the parser with the heap locked, whole and
    in 7-byte pieces: nothing is allocated per sentence at any coordinate (on the 32-bit port a
    longitude in 1e-7 degree beyond 107.37 degrees is not a small int). The Fix then carries the
    exact coordinates."""
    lat, ns, lon, ew = PLACES[place]
    epoch = (sentence(f"GNGGA,031500.000,{lat},{ns},{lon},{ew},1,09,1.1,12.3,M,-4.1,M,,")
             + sentence("GNGSA,A,3,02,07,14,15,17,20,22,30,,,,,1.5,1.1,1.2,1")
             + sentence("GPGSV,3,1,11,02,45,123,40,07,30,210,35,14,60,045,42,15,12,300,20,0")
             + sentence(f"GNRMC,031500.000,A,{lat},{ns},{lon},{ew},1.25,123.4,041226,,,A,V"))
    code = f"""
import micropython
from nmea import NMEAParser
p = NMEAParser()
epoch = {epoch!r}
pieces = [epoch[i:i + 7] for i in range(0, len(epoch), 7)]
for feed in ([epoch], pieces):
    k = 0
    count = len(feed)
    micropython.heap_lock()
    try:
        while k < count:  # (a for loop would allocate its iterator)
            p.receive_data(feed[k])
            k += 1
    finally:
        micropython.heap_unlock()
    p.flush()
    fix = p.next_event()
    print(fix.valid, fix.lat_e7, fix.lon_e7, fix.time)
print(p.sentences, p.malformed)
"""
    out = mpy.run(code).split("\n")
    want = f"True {_e7(lat, ns, 2)} {_e7(lon, ew, 3)} {int(dt.datetime(2026, 12, 4, 3, 15, tzinfo=dt.timezone.utc).timestamp())}"
    assert out[:3] == [want, want, "8 0"]
