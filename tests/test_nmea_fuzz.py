"""Hostile bytes into firmware/lib/nmea.py on MicroPython: never a crash, every byte accounted
for, good sentences after garbage still parsed, corrupted sentences never used."""

from __future__ import annotations

import re

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from test_nmea_parser import GGA, GSA, RMC, expected_e7, nmea, sentence  # noqa: F401 (fixture)

FUZZ = settings(max_examples=150, suppress_health_check=[HealthCheck.too_slow])
GOOD = sentence(GGA) + sentence(GSA) + sentence(RMC)


def counters_sane(c: dict, size: int) -> None:
    assert all(v >= 0 for v in c.values()), c
    assert c["skipped_bytes"] <= size
    assert c["epochs"] <= c["sentences"]


@FUZZ
@given(st.binary(max_size=3000))
def test_random_bytes_never_crash(nmea, data):
    fixes, c, _ = nmea.parse(data)
    counters_sane(c, len(data))
    assert all(not f["valid"] or f["lat_e7"] is not None for f in fixes)


@FUZZ
@given(garbage=st.binary(max_size=2000), cut=st.integers(0, 4000))
def test_good_sentences_after_garbage_are_parsed(nmea, garbage, cut):
    clean, _, _ = nmea.parse(GOOD)
    data = garbage + GOOD
    fixes, c, _ = nmea.parse(data, cuts=[min(cut, len(data))])
    assert fixes[-1] == clean[0]
    # every byte is accounted for: the garbage is skipped, the good sentences are not
    assert c["skipped_bytes"] == len(garbage)
    assert c["sentences"] >= 3


@FUZZ
@given(st.lists(st.binary(min_size=1, max_size=300), min_size=1, max_size=8))
def test_garbage_between_lines_of_a_real_log_changes_nothing(nmea, shared_data, junk):
    lines = (shared_data / "nmea" / "mt3339.log").read_bytes().splitlines(True)[:60]
    clean = nmea.parse(b"".join(lines))
    mixed = []
    step = max(1, len(lines) // len(junk))
    for i, line in enumerate(lines):
        if i % step == 0 and i // step < len(junk):
            mixed.append(junk[i // step])
        mixed.append(line)
    data = b"".join(mixed)
    fixes, c, _ = nmea.parse(data)
    assert fixes == clean[0]
    assert c["sentences"] == clean[1]["sentences"]
    assert c["skipped_bytes"] == clean[1]["skipped_bytes"] + sum(map(len, junk))


_POS = re.compile(rb"\$..(GGA|RMC),(\d{6}(?:\.\d+)?),(?:[AV],)?(\d{2})(\d{2})\.?(\d*),([NS]),"
                  rb"(\d{3})(\d{2})\.?(\d*),([EW])")


def positions_by_time(data: bytes) -> dict[str, set[tuple[int, int]]]:
    """Every (lat_e7, lon_e7) a GGA or RMC of the clean log states, by its time field."""
    out: dict[str, set[tuple[int, int]]] = {}
    for m in _POS.finditer(data):
        lat = expected_e7(int(m[3]), int(m[4]), m[5].decode()) * (1 if m[6] == b"N" else -1)
        lon = expected_e7(int(m[7]), int(m[8]), m[9].decode()) * (1 if m[10] == b"E" else -1)
        out.setdefault(m[2].decode(), set()).add((lat, lon))
    return out


@FUZZ
@given(st.data())
def test_one_corrupted_byte_per_line_is_never_used(nmea, shared_data, data):
    """Replace one byte in some lines of a real log (never by '$' or a newline, which would
    split the line): the XOR checksum catches every such change, so every position reported
    is one the clean log states for that time, and nothing crashes."""
    name = data.draw(st.sampled_from(["mt3339.log", "quectel-l76k-nmea.log", "neo-m8n.log"]))
    raw = (shared_data / "nmea" / name).read_bytes()[:12_000]
    lines = raw.splitlines(True)
    allowed = positions_by_time(raw)
    which = data.draw(st.sets(st.integers(0, len(lines) - 1), max_size=40))
    out = []
    for i, line in enumerate(lines):
        if i in which and len(line) > 3:
            pos = data.draw(st.integers(0, len(line) - 3))
            new = data.draw(st.integers(0, 255).filter(lambda b: b not in (0x24, 0x0A)))
            line = line[:pos] + bytes([new]) + line[pos + 1:]
        out.append(line)
    fixes, c, _ = nmea.parse(b"".join(out))
    counters_sane(c, len(raw))
    for f in fixes:
        if f["lat_e7"] is None:
            continue
        if f["time"] is None:  # no date yet (its RMC was corrupted): any stated position
            assert any((f["lat_e7"], f["lon_e7"]) in v for v in allowed.values()), f
            continue
        hhmmss = {t for t in allowed if int(t[:2]) * 3600 + int(t[2:4]) * 60 + int(t[4:6])
                  == f["time"] % 86400}
        assert hhmmss, f
        assert any((f["lat_e7"], f["lon_e7"]) in allowed[t] for t in hhmmss), f


@pytest.mark.parametrize("name", ["quectel-l76k-nmea.log", "simcom_a7670_gnss_nofix_with_noise_"
                                  "LilyGo-Modem-Series-25.nmea", "beidou-bd.log"])
def test_truncating_a_real_log_anywhere_never_crashes(nmea, shared_data, name):
    raw = (shared_data / "nmea" / name).read_bytes()[:6000]
    for end in range(0, len(raw), 97):
        fixes, c, _ = nmea.parse(raw[:end])
        counters_sane(c, end)
