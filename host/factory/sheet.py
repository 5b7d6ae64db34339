"""The village's list of elders (docs/provisioning-sheet.md): a CSV or .xlsx sheet, one elder a
row, read and validated whole before any card is touched.

`read_sheet(path)` returns every row as an Elder or raises SheetError listing every problem,
each naming its row (as the spreadsheet numbers it: the header is row 1) and column.
"""

from __future__ import annotations

import csv
import io
import re
import unicodedata
from dataclasses import dataclass, field
from datetime import datetime, time
from pathlib import Path
from typing import Any

from carecard.protocol import spec

CONTACT_KEYS = range(1, spec.MAX_CONTACTS + 1)
CONTACT_COLUMNS = tuple(f"contact{k}_{part}" for k in CONTACT_KEYS for part in ("number", "name"))
REQUIRED_COLUMNS = ("name", "contact1_number", "contact1_name", "wake_time", "bed_time", "server")
OPTIONAL_COLUMNS = ("grid_worker_key", "home", "home_lat", "home_lon", "apn", "quiet_hours",
                    "imei", "sim_pin", "village")
COLUMNS = ("name",) + CONTACT_COLUMNS + tuple(c for c in REQUIRED_COLUMNS + OPTIONAL_COLUMNS
                                               if c != "name" and c not in CONTACT_COLUMNS)
MAX_SHEET_BYTES = 16 * 1024 * 1024

_MOBILE_RE = re.compile(r"^(?:\+?86)?(1[3-9]\d{9})$")
# 0 + area code (2 digits for 010/02x, else 3) + a 7- or 8-digit local number
_LANDLINE_RE = re.compile(r"^0(10|2\d|[3-9]\d{2})(\d{7,8})$")
_E164_RE = re.compile(r"^\+([1-9]\d{7,14})$")
_CLOCK_RE = re.compile(r"^(\d{1,2}):(\d{2})$")
_HOST_RE = re.compile(r"^[A-Za-z0-9.\-]{1,253}$|^\[[0-9A-Fa-f:]+\]$")


@dataclass(frozen=True)
class SheetProblem:
    row: int
    column: str  # the column's header name ("" for the file as a whole)
    message: str

    def __str__(self) -> str:
        where = f"row {self.row}" + (f", column {self.column}" if self.column else "")
        return f"{where}: {self.message}"


class SheetError(ValueError):
    """The sheet cannot be used; `problems` lists every problem found (row, column, why)."""

    def __init__(self, source: str, problems: list[SheetProblem]) -> None:
        self.source = source
        self.problems = problems
        first = problems[0] if problems else "no problem"
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        super().__init__(f"{source}: {first}{more}")


@dataclass(frozen=True)
class SheetContact:
    key: int
    number: str  # E.164 (+86... for Chinese numbers)
    name: str


@dataclass
class Elder:
    row: int
    name: str
    contacts: list[SheetContact]
    wake: str  # "HH:MM" local time
    bed: str
    server_host: str
    server_port: int
    grid_worker_key: int | None = None
    home: str = ""
    home_lat: float | None = None
    home_lon: float | None = None
    apn: str = ""
    quiet_hours: tuple[int, int] | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    imei: int | None = None  # the card this row must go on (from its box label), if given
    sim_pin: str | None = None  # the SIM's PIN when its PIN lock is on
    village: str | None = None  # the village (grid) the card belongs to: its grid worker sees it

    @property
    def where(self) -> str:
        """The row for messages: `row 3 (王奶奶)`."""
        return f"row {self.row} ({self.name})"


def normalise_number(text: str) -> str:
    """A phone number as E.164 text: a Chinese mobile (11 digits from 1[3-9]), a Chinese landline
    with its area code (0595-22345678), or E.164 (+...). Raises ValueError saying why not."""
    raw = str(text).strip()
    compact = re.sub(r"[\s\-()]", "", raw)
    if compact.startswith("00"):
        compact = "+" + compact[2:]
    mobile = _MOBILE_RE.match(compact)
    if mobile and (compact.startswith("+86") or not compact.startswith("+")):
        return "+86" + mobile.group(1)
    landline = _LANDLINE_RE.match("0" + compact[3:] if compact.startswith("+86") else compact)
    if landline:
        return "+86" + landline.group(1) + landline.group(2)
    if compact.startswith("+86"):
        raise ValueError(f"{raw!r} is not a Chinese number: +86 then a mobile (1[3-9] and 9 digits) "
                         "or an area code without its 0 and a 7-8 digit number")
    if _E164_RE.match(compact):
        return compact
    if compact.isdigit() and compact.startswith("1"):
        raise ValueError(f"{raw!r} is not a Chinese mobile number (11 digits starting 13-19)")
    if compact.isdigit() and compact.startswith("0"):
        raise ValueError(f"{raw!r} is not a landline number with its area code (e.g. 0595-22345678)")
    raise ValueError(f"{raw!r} is not a phone number: give a mobile (13800138000), a landline "
                     "with its area code (0595-22345678) or an international number (+85291234567)")


def parse_clock(text: str) -> str:
    found = _CLOCK_RE.match(text.strip())
    if not found or int(found.group(1)) > 23 or int(found.group(2)) > 59:
        raise ValueError(f"{text.strip()!r} is not a time of day: HH:MM, 24-hour (e.g. 06:30)")
    return f"{int(found.group(1)):02d}:{found.group(2)}"


def parse_quiet_hours(text: str) -> tuple[int, int]:
    parts = re.split(r"\s*[-~–]\s*", text.strip())
    hours = []
    for part in parts if len(parts) == 2 else []:
        found = re.match(r"^(\d{1,2})(?::00)?$", part)
        if found and int(found.group(1)) <= 23:
            hours.append(int(found.group(1)))
    if len(hours) != 2 or hours[0] == hours[1]:
        raise ValueError(f"{text.strip()!r}: quiet hours are two different whole hours, "
                         "START-END (e.g. 22-07 or 22:00-07:00)")
    return hours[0], hours[1]


def parse_server(text: str) -> tuple[str, int]:
    value = text.strip()
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not 1 <= int(port) <= 65535 or not _HOST_RE.match(host):
        raise ValueError(f"{value!r} is not HOST:PORT (the receiver's address, e.g. "
                         "care.example.cn:4500 or 203.0.113.7:4500)")
    return host.strip("[]"), int(port)


def parse_name(text: str) -> str:
    value = unicodedata.normalize("NFC", text.strip())
    if not value:
        raise ValueError("empty: a name is required")
    if any(unicodedata.category(ch).startswith("C") for ch in value):
        raise ValueError(f"{value[:20]!r} contains control or invisible characters")
    if len(value.encode("utf-8")) > spec.MAX_STR:
        raise ValueError(f"{len(value.encode('utf-8'))} bytes of UTF-8, at most {spec.MAX_STR} "
                         "fit on the card")
    return value


def _cell_text(value: Any) -> str:
    """A cell as text; spreadsheets give numbers and times as such."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, (datetime, time)):
        return f"{value.hour:02d}:{value.minute:02d}"
    return str(value)


def _rows_from_csv(data: bytes, source: str) -> list[tuple[int, list[str]]]:
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        row = data[:exc.start].count(b"\n") + 1
        raise SheetError(source, [SheetProblem(row, "", "not UTF-8 text (a sheet saved as GBK? "
                                                        "save it as \"CSV UTF-8\")")]) from None
    reader = csv.reader(io.StringIO(text, newline=""))
    rows = []
    for cells in reader:
        rows.append((reader.line_num, cells))
    return rows


def _rows_from_xlsx(path: Path, source: str) -> list[tuple[int, list[str]]]:
    import zipfile

    try:
        from openpyxl import load_workbook
    except ImportError:
        raise SheetError(source, [SheetProblem(0, "", "reading .xlsx needs openpyxl (make setup)")]) from None
    try:
        book = load_workbook(path, read_only=True, data_only=True)
    except (zipfile.BadZipFile, KeyError, OSError, ValueError) as exc:
        raise SheetError(source, [SheetProblem(0, "", f"not a readable .xlsx workbook ({exc})")]) from None
    try:
        sheet = book.worksheets[0]
        return [(number, [_cell_text(v) for v in values])
                for number, values in enumerate(sheet.iter_rows(values_only=True), 1)]
    finally:
        book.close()


def read_sheet(path: Path | str) -> list[Elder]:
    """Every elder of the sheet, or SheetError with every problem (nothing partial)."""
    path = Path(path)
    source = str(path)
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise SheetError(source, [SheetProblem(0, "", f"cannot be read: {exc.strerror}")]) from None
    if size > MAX_SHEET_BYTES:
        raise SheetError(source, [SheetProblem(0, "", f"{size} bytes: not a sheet of elders "
                                                      f"(at most {MAX_SHEET_BYTES} bytes)")])
    if path.suffix.lower() in (".xlsx", ".xlsm"):
        rows = _rows_from_xlsx(path, source)
    else:
        rows = _rows_from_csv(path.read_bytes(), source)
    return validate_rows(rows, source)


def validate_rows(rows: list[tuple[int, list[str]]], source: str = "sheet") -> list[Elder]:
    """Validate (row number, cells) rows, the first non-blank one the header."""
    problems: list[SheetProblem] = []
    header: list[str] | None = None
    header_row = 0
    elders: list[Elder] = []
    seen: dict[tuple[str, str], int] = {}
    imeis: dict[int, int] = {}
    for number, cells in rows:
        if not any(str(c).strip() for c in cells) or str(cells[0]).lstrip().startswith("#"):
            continue
        if header is None:
            header_row = number
            header = [str(c).strip().lower() for c in cells]
            while header and not header[-1]:
                header.pop()
            for index, name in enumerate(header):
                if name not in COLUMNS:
                    problems.append(SheetProblem(number, name or f"#{index + 1}",
                                                 f"unknown column (columns: {', '.join(COLUMNS)})"))
                elif header.index(name) != index:
                    problems.append(SheetProblem(number, name, "column given twice"))
            for name in REQUIRED_COLUMNS:
                if name not in header:
                    problems.append(SheetProblem(number, name, "required column missing"))
            if problems:
                raise SheetError(source, problems)
            continue
        extra = [c for c in cells[len(header):] if str(c).strip()]
        if extra:
            problems.append(SheetProblem(number, "", f"{len(extra)} cells beyond the last column"))
            continue
        values = {name: str(cells[i]).strip() if i < len(cells) else "" for i, name in enumerate(header)}
        elder = _validate_row(number, values, problems)
        if elder is None:
            continue
        card_problems = _card_config_problems(number, elder)
        if card_problems:
            problems.extend(card_problems)
            continue
        key = (elder.name, elder.home)
        if key in seen:
            problems.append(SheetProblem(number, "name", f"{elder.name!r} at {elder.home or 'the same home'!r} "
                                                          f"is already on row {seen[key]} (a duplicate)"))
            continue
        if elder.imei is not None and elder.imei in imeis:
            problems.append(SheetProblem(number, "imei", f"{elder.imei} is already on row "
                                                          f"{imeis[elder.imei]} (one card, one elder)"))
            continue
        seen[key] = number
        if elder.imei is not None:
            imeis[elder.imei] = number
        elders.append(elder)
    if header is None:
        problems.append(SheetProblem(header_row, "", "empty: no header row and no elders"))
    elif not elders and not problems:
        problems.append(SheetProblem(header_row, "", "no elders below the header"))
    if problems:
        raise SheetError(source, problems)
    return elders


# the card's config fields (firmware/lib/config.py) a row becomes, and the column each comes from
_CONFIG_COLUMNS = {"owner_name": "name", "server_host": "server", "server_port": "server", "apn": "apn",
                   "quiet_hours": "quiet_hours", "grid_worker_key": "grid_worker_key", "sim_pin": "sim_pin",
                   "contacts": "contact1_number"}
_PER_CARD = ("device_id", "device_key")  # made at provisioning, not from the sheet


def _card_config_problems(row: int, elder: Elder) -> list[SheetProblem]:
    """What the card's own config rules (firmware/lib/config.py, run here on CPython) say of
    the config this row becomes, so a value the card would refuse stops the whole sheet here,
    not one card halfway through a batch."""
    from carecard.host.factory.provision import elder_config
    from carecard.tools import fwlib

    values = elder_config(elder)
    found = []
    for text in fwlib.config().validate(values).problems:
        field_name, _, why = text.partition(": ")
        base = field_name.split("[")[0]
        if base in _PER_CARD:
            continue
        found.append(SheetProblem(row, _CONFIG_COLUMNS.get(base, ""), f"the card's config refuses it: {why}"))
    return found


def _validate_row(row: int, values: dict[str, str], problems: list[SheetProblem]) -> Elder | None:
    before = len(problems)

    def check(column: str, parse: Any, required: bool = False) -> Any:
        text = values.get(column, "")
        if not text:
            if required:
                problems.append(SheetProblem(row, column, "missing (required)"))
            return None
        try:
            return parse(text)
        except ValueError as exc:
            problems.append(SheetProblem(row, column, str(exc)))
            return None

    name = check("name", parse_name, True)
    contacts = []
    for key in CONTACT_KEYS:
        number_col, name_col = f"contact{key}_number", f"contact{key}_name"
        number = check(number_col, normalise_number, key == 1)
        contact_name = check(name_col, parse_name, key == 1)
        if key > 1 and bool(values.get(number_col)) != bool(values.get(name_col)):
            missing = name_col if values.get(number_col) else number_col
            problems.append(SheetProblem(row, missing, f"missing: contact {key} needs both a number and a name"))
        if number and contact_name:
            contacts.append(SheetContact(key, number, contact_name))
    wake = check("wake_time", parse_clock, True)
    bed = check("bed_time", parse_clock, True)
    if wake and bed and wake == bed:
        problems.append(SheetProblem(row, "bed_time", f"the same as wake_time ({wake})"))
    server = check("server", parse_server, True)
    grid = check("grid_worker_key", lambda t: _key(t), False)
    if grid is not None and not values.get(f"contact{grid}_number"):
        problems.append(SheetProblem(row, "grid_worker_key", f"key {grid} has no contact on this row"))
    lat = check("home_lat", lambda t: _degrees(t, 90), False)
    lon = check("home_lon", lambda t: _degrees(t, 180), False)
    if (values.get("home_lat") or "") and not values.get("home_lon"):
        problems.append(SheetProblem(row, "home_lon", "missing: give both home_lat and home_lon"))
    if (values.get("home_lon") or "") and not values.get("home_lat"):
        problems.append(SheetProblem(row, "home_lat", "missing: give both home_lat and home_lon"))
    home = check("home", parse_name, False) or ""
    apn = check("apn", _apn, False) or ""
    quiet = check("quiet_hours", parse_quiet_hours, False)
    imei = check("imei", parse_imei, False)
    sim_pin = check("sim_pin", parse_sim_pin, False)
    village = check("village", parse_name, False)
    if len(problems) != before:
        return None
    return Elder(row, name, contacts, wake, bed, server[0], server[1], grid, home, lat, lon, apn, quiet,
                 imei=imei, sim_pin=sim_pin, village=village)


def parse_imei(text: str) -> int:
    """15 digits with a right Luhn check digit (the card's label)."""
    from carecard.host.receiver.registry import RegistryError
    from carecard.host.receiver.registry import parse_imei as registry_imei

    try:
        return registry_imei(text, "imei")
    except RegistryError as exc:
        raise ValueError(str(exc).removeprefix("imei: ")) from None


def parse_sim_pin(text: str) -> str:
    if not text.isdigit() or not 4 <= len(text) <= 8:
        raise ValueError(f"{text!r} is not a SIM PIN (4 to 8 digits)")
    return text


def _key(text: str) -> int:
    if not text.isdigit() or int(text) not in CONTACT_KEYS:
        raise ValueError(f"{text!r} is not a key number 1-{spec.MAX_CONTACTS}")
    return int(text)


def _degrees(text: str, limit: int) -> float:
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"{text!r} is not a number of degrees") from None
    if not -limit <= value <= limit:
        raise ValueError(f"{value} is outside -{limit}..{limit} degrees")
    return value


def _apn(text: str) -> str:
    if " " in text or len(text) > 63 or not text.isascii():
        raise ValueError(f"{text!r} is not an APN (up to 63 ASCII characters, no spaces; e.g. cmnet)")
    return text
