"""The provisioning sheet (host/factory/sheet.py): every problem named by row and column, the
whole sheet rejected on any problem; CSV and .xlsx alike."""

from __future__ import annotations

import csv
import io
from datetime import time
from pathlib import Path

import pytest
from hypothesis import given, settings, strategies as st

from carecard.host.factory.sheet import (
    COLUMNS,
    SheetError,
    normalise_number,
    read_sheet,
    validate_rows,
)

HEADER = ["name", "contact1_number", "contact1_name", "contact2_number", "contact2_name",
          "contact4_number", "contact4_name", "grid_worker_key", "home", "home_lat", "home_lon",
          "wake_time", "bed_time", "server", "apn", "quiet_hours", "village"]
GOOD = [
    ["王奶奶", "13800138000", "大儿子", "0595-22345678", "二儿子", "+85291234567", "网格员 陈", "4",
     "南安市 官桥镇 1号", "24.95", "118.38", "6:30", "21:00", "care.example.cn:4500", "cmnet", "22-07", "官桥村"],
    ["李爷爷", "139 0013 9000", "女儿", "", "", "15900001111", "网格员 陈", "4",
     "南安市 官桥镇 2号", "", "", "05:45", "20:30", "203.0.113.7:4500", "", "", "官桥村"],
    ["陈奶奶", "+8613700001111", "儿子", "", "", "", "", "", "", "", "", "07:00", "21:30",
     "care.example.cn:4500", "", "", ""],
]


def csv_file(tmp_path: Path, rows: list[list[str]], name: str = "elders.csv") -> Path:
    out = io.StringIO()
    csv.writer(out).writerows(rows)
    path = tmp_path / name
    path.write_text(out.getvalue(), encoding="utf-8")
    return path


def problems_of(rows: list[list[str]]) -> list[tuple[int, str]]:
    with pytest.raises(SheetError) as info:
        validate_rows(list(enumerate(rows, 1)))
    return [(p.row, p.column) for p in info.value.problems]


def test_a_good_sheet(tmp_path):
    elders = read_sheet(csv_file(tmp_path, [HEADER] + GOOD))
    assert [e.name for e in elders] == ["王奶奶", "李爷爷", "陈奶奶"]
    first = elders[0]
    assert [(c.key, c.number, c.name) for c in first.contacts] == [
        (1, "+8613800138000", "大儿子"), (2, "+8659522345678", "二儿子"), (4, "+85291234567", "网格员 陈")]
    assert (first.wake, first.bed, first.quiet_hours, first.grid_worker_key) == ("06:30", "21:00", (22, 7), 4)
    assert (first.server_host, first.server_port, first.home_lat) == ("care.example.cn", 4500, 24.95)
    assert elders[1].contacts[0].number == "+8613900139000" and elders[1].row == 3
    assert [e.village for e in elders] == ["官桥村", "官桥村", None]


@pytest.mark.parametrize("column, value, why", [
    ("contact1_number", "1380013800", "not a Chinese mobile"),
    ("contact1_number", "05952234567890", "not a landline"),
    ("contact1_number", "+86 23", "not a Chinese number"),
    ("contact2_number", "call me", "not a phone number"),
    ("wake_time", "25:00", "not a time of day"),
    ("bed_time", "6.30pm", "not a time of day"),
    ("server", "care.example.cn", "not HOST:PORT"),
    ("server", "care.example.cn:70000", "not HOST:PORT"),
    ("grid_worker_key", "3", "key 3 has no contact"),
    ("grid_worker_key", "5", "not a key number"),
    ("quiet_hours", "22", "two different whole hours"),
    ("home_lat", "95", "outside -90..90"),
    ("apn", "cm net", "not an APN"),
    ("name", "", "missing"),
    ("name", "王\x07奶奶", "control"),
    ("contact1_name", "很" * 30, "bytes of UTF-8"),
    # fits the sheet and a frame, not the card's config (owner_name: 32 bytes): said here, before
    # any card is touched, not by the card halfway through a batch
    ("name", "王" * 11, "the card keeps at most 32"),
])
def test_each_bad_cell_is_named_by_row_and_column(column, value, why):
    rows = [HEADER] + [list(r) for r in GOOD]
    rows[1][HEADER.index(column)] = value
    with pytest.raises(SheetError) as info:
        validate_rows(list(enumerate(rows, 1)), "elders.csv")
    problem, = info.value.problems
    assert (problem.row, problem.column) == (2, column)
    assert why in problem.message
    assert str(info.value).startswith(f"elders.csv: row 2, column {column}: ")


def test_whole_sheet_problems():
    assert problems_of([HEADER + ["phone_colour"]] + GOOD) == [(1, "phone_colour")]
    assert problems_of([[c for c in HEADER if c != "server"]]) == [(1, "server")]
    assert problems_of([HEADER + ["name"]]) == [(1, "name")]
    # the same elder at the same home twice: the second row is named
    assert problems_of([HEADER] + GOOD + [GOOD[0]]) == [(5, "name")]
    # a contact with a number and no name; both contacts' problems and a third row's, all listed
    rows = [HEADER] + [list(r) for r in GOOD]
    rows[1][HEADER.index("contact2_name")] = ""
    rows[3][HEADER.index("wake_time")] = "x"
    rows[3][HEADER.index("bed_time")] = "y"
    assert problems_of(rows) == [(2, "contact2_name"), (4, "wake_time"), (4, "bed_time")]
    assert problems_of([HEADER]) == [(1, "")]
    assert problems_of([]) == [(0, "")]
    rows = [HEADER] + [list(r) for r in GOOD]
    rows[2] = rows[2] + ["stray"]
    assert problems_of(rows) == [(3, "")]


def test_a_sheet_not_in_utf8_is_refused_with_its_row(tmp_path):
    text = "\n".join(",".join(r) for r in [HEADER] + GOOD) + "\n"
    path = tmp_path / "gbk.csv"
    path.write_bytes(text.encode("gbk"))
    with pytest.raises(SheetError, match=r"row 2: not UTF-8 text \(a sheet saved as GBK"):
        read_sheet(path)
    bom = tmp_path / "bom.csv"
    bom.write_bytes(b"\xef\xbb\xbf" + text.encode("utf-8"))
    assert len(read_sheet(bom)) == 3


def test_xlsx_with_numbers_and_times_as_cells(tmp_path):
    from openpyxl import Workbook

    book = Workbook()
    sheet = book.active
    sheet.append(HEADER)
    for row in GOOD:
        cells: list[object] = list(row)
        cells[HEADER.index("contact1_number")] = int(row[1].replace(" ", "").lstrip("+")) if row[1][0] != "+" else row[1]
        cells[HEADER.index("wake_time")] = time(*map(int, row[HEADER.index("wake_time")].split(":")))
        cells[HEADER.index("home_lat")] = float(row[HEADER.index("home_lat")]) if row[HEADER.index("home_lat")] else None
        cells[HEADER.index("grid_worker_key")] = int(row[7]) if row[7] else None
        sheet.append(cells)
    path = tmp_path / "elders.xlsx"
    book.save(path)
    from_xlsx = read_sheet(path)
    from_csv = read_sheet(csv_file(tmp_path, [HEADER] + GOOD))
    assert [(e.name, e.contacts, e.wake, e.home_lat, e.grid_worker_key) for e in from_xlsx] == \
        [(e.name, e.contacts, e.wake, e.home_lat, e.grid_worker_key) for e in from_csv]
    sheet.append(["赵奶奶", 12345, "儿子"] + [""] * 8 + ["06:00", "21:00", "h:1", "", ""])
    book.save(path)
    with pytest.raises(SheetError, match=r"row 5, column contact1_number: '12345'"):
        read_sheet(path)
    (tmp_path / "broken.xlsx").write_bytes(b"PK not a workbook")
    with pytest.raises(SheetError, match="not a readable .xlsx"):
        read_sheet(tmp_path / "broken.xlsx")


# --- properties -------------------------------------------------------------------------------

mobiles = st.builds(lambda second, rest: f"1{second}{rest:09d}", st.sampled_from("3456789"),
                    st.integers(0, 10 ** 9 - 1))
landlines = st.builds(lambda area, local: f"0{area}-{local}",
                      st.sampled_from(["10", "21", "595", "591", "755"]),
                      st.integers(10 ** 6, 10 ** 8 - 1).map(str))
e164 = st.builds(lambda cc, rest: f"+{cc}{rest}", st.sampled_from(["852", "1", "44", "65"]),
                 st.integers(10 ** 7, 10 ** 10).map(str))
names = st.text(st.characters(whitelist_categories=("Lo", "Lu", "Ll")), min_size=1, max_size=10)
clocks = st.tuples(st.integers(0, 23), st.integers(0, 59))


@given(mobiles | landlines | e164)
def test_valid_numbers_normalise_to_e164_digits(number):
    out = normalise_number(number)
    assert out.startswith("+") and out[1:].isdigit() and 8 <= len(out) - 1 <= 15
    assert normalise_number(out) == out  # idempotent


@given(st.text(max_size=16))
def test_any_text_is_a_number_or_a_clear_error(text):
    try:
        out = normalise_number(text)
    except ValueError as exc:
        assert "number" in str(exc)
    else:
        assert out.startswith("+") and out[1:].isdigit()


@st.composite
def sheets(draw):
    count = draw(st.integers(1, 5))
    rows = [HEADER]
    used = set()
    for i in range(count):
        name = draw(names.filter(lambda n: n not in used))
        used.add(name)
        wake, bed = draw(clocks), draw(clocks.filter(lambda c: True))
        if wake == bed:
            bed = ((wake[0] + 1) % 24, wake[1])
        rows.append([name, draw(mobiles | landlines | e164), draw(names), "", "",
                     draw(mobiles), draw(names), "4", f"{i}号", "", "",
                     f"{wake[0]}:{wake[1]:02d}", f"{bed[0]:02d}:{bed[1]:02d}",
                     "care.example.cn:4500", "cmnet", ""])
    return rows


@settings(max_examples=50)
@given(sheets())
def test_generated_good_sheets_validate(rows):
    elders = validate_rows(list(enumerate(rows, 1)))
    assert [e.row for e in elders] == list(range(2, len(rows) + 1))
    assert all(e.grid_worker_key == 4 and len(e.contacts) == 2 for e in elders)


@settings(max_examples=50)
@given(sheets(), st.data())
def test_one_bad_cell_rejects_the_whole_sheet_naming_it(rows, data):
    row = data.draw(st.integers(1, len(rows) - 1))
    column, bad = data.draw(st.sampled_from([
        ("contact1_number", "12"), ("wake_time", "24:00"), ("bed_time", "noon"),
        ("server", "nowhere"), ("grid_worker_key", "9"), ("name", "  "), ("contact4_name", ""),
        ("quiet_hours", "7-7")]))
    rows = [list(r) for r in rows]
    rows[row][HEADER.index(column)] = bad
    with pytest.raises(SheetError) as info:
        validate_rows(list(enumerate(rows, 1)))
    assert {(p.row, p.column) for p in info.value.problems} == {(row + 1, column)}


def test_the_documented_columns_are_the_columns():
    doc = (Path(__file__).resolve().parent.parent / "docs" / "provisioning-sheet.md").read_text(encoding="utf-8")
    for column in COLUMNS:
        assert f"`{column}`" in doc, column
