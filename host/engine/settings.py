"""Per-device settings of the alert engine, with defaults, from a JSON or TOML file.

The file (docs/events.md, "Alert engine settings") has an optional `defaults` table and one
table per device under `devices`, keyed by the card's IMEI as text:

    [defaults]
    stillness_threshold = "3h"
    [devices."861234567890123"]
    name = "王奶奶"
    home = { lat = 24.7, lon = 118.4 }
    wake = "06:30"
    bedtime = "21:00"
    family = ["+8613800138000 Son"]
    grid_worker = "+8613900139000 Grid worker Li"

Durations are seconds (an integer) or text with a unit: "90s", "45m", "3h", "6d". Clock times
are "HH:MM" in the card's local time (`utc_offset`, "+08:00" by default). Every key is checked:
an unknown key or a bad value is a SettingsError naming the table, the key and the fix.
"""

from __future__ import annotations

import json
import math
import re
import tomllib
from pathlib import Path
from typing import Any, Mapping

_DURATION_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhd])\s*$")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_CLOCK_RE = re.compile(r"^([01]\d|2[0-3]):([0-5]\d)$")
_OFFSET_RE = re.compile(r"^([+-])(\d{2}):(\d{2})$")


class SettingsError(ValueError):
    """A settings file or value that cannot be used; the message says where, why and the fix."""


def _duration(value: Any, where: str) -> int:
    if isinstance(value, bool):
        raise SettingsError(f"{where}: expected a duration (seconds, or text like \"3h\"), got {value!r}")
    if isinstance(value, (int, float)) and math.isfinite(value) and value >= 0:
        return int(value)
    if isinstance(value, str):
        found = _DURATION_RE.match(value)
        if found:
            return int(float(found.group(1)) * _UNIT_S[found.group(2)])
    raise SettingsError(f"{where}: expected a duration (seconds >= 0, or text like \"90s\", "
                        f"\"45m\", \"3h\", \"6d\"), got {value!r}")


def _clock(value: Any, where: str) -> int:
    found = _CLOCK_RE.match(value) if isinstance(value, str) else None
    if not found:
        raise SettingsError(f"{where}: expected a local time \"HH:MM\" (24-hour), got {value!r}")
    return int(found.group(1)) * 3600 + int(found.group(2)) * 60


def _offset(value: Any, where: str) -> int:
    found = _OFFSET_RE.match(value) if isinstance(value, str) else None
    if not found or int(found.group(2)) > 14 or int(found.group(3)) > 59:
        raise SettingsError(f"{where}: expected a UTC offset like \"+08:00\", got {value!r}")
    sign = -1 if found.group(1) == "-" else 1
    return sign * (int(found.group(2)) * 3600 + int(found.group(3)) * 60)


def _number(value: Any, where: str, low: float, high: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
            or not low <= value <= high:
        raise SettingsError(f"{where}: expected a number from {low:g} to {high:g}, got {value!r}")
    return float(value)


def _home(value: Any, where: str) -> tuple[float, float] | None:
    if value is None:
        return None
    if not isinstance(value, Mapping) or set(value) != {"lat", "lon"}:
        raise SettingsError(f"{where}: expected {{lat = DEGREES, lon = DEGREES}}, got {value!r}")
    return (_number(value["lat"], where + ".lat", -90, 90), _number(value["lon"], where + ".lon", -180, 180))


def _people(value: Any, where: str) -> tuple[str, ...]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) and v.strip() for v in value):
        raise SettingsError(f"{where}: expected a list of contacts (text, e.g. \"+8613800138000 Son\")")
    return tuple(v.strip() for v in value)


def _text(value: Any, where: str) -> str:
    if not isinstance(value, str):
        raise SettingsError(f"{where}: expected text, got {value!r}")
    return value


def _flag(value: Any, where: str) -> bool:
    if not isinstance(value, bool):
        raise SettingsError(f"{where}: expected true or false, got {value!r}")
    return value


# key -> (default, parser, meaning). The one list of settings; docs/events.md describes the same.
SETTINGS: dict[str, tuple[Any, Any, str]] = {
    "name": ("", _text, "the elder's name, shown in alerts"),
    "family": ((), _people, "family contacts alerted at the `family` step"),
    "grid_worker": ((), _people, "the grid worker(s) alerted at the `grid_worker` step"),
    "home": (None, _home, "home location; stillness away from it uses `away_stillness_threshold`"),
    "utc_offset": (8 * 3600, _offset, "the card's local time zone"),
    "wake": (7 * 3600, _clock, "usual waking time"),
    "bedtime": (21 * 3600 + 1800, _clock, "usual bedtime"),
    "wake_grace": (5400, _duration, "overnight stillness is normal until wake + this"),
    "stillness_threshold": (3 * 3600, _duration, "daytime stillness that raises `inactivity`"),
    "away_stillness_threshold": (2 * 3600, _duration, "the same, away from home"),
    "home_radius_m": (150.0, lambda v, w: _number(v, w, 10, 10000), "how far from home is away"),
    "report_interval": (900, _duration, "expected time between the card's frames"),
    "offline_factor": (4.0, lambda v, w: _number(v, w, 1.5, 100), "offline after this many intervals without a frame"),
    "evidence_gap_factor": (2.5, lambda v, w: _number(v, w, 1, 100), "a longer gap between fixes is unknown time"),
    "motion_sensor": (False, _flag, "the card counts motion; without one only key presses count (what the "
                                    "card says, in its hello, statuses or held fixes, wins)"),
    "uere_m": (10.0, lambda v, w: _number(v, w, 1, 100), "metres of error per unit of HDOP (receiver error figure)"),
    "radius_floor_m": (25.0, lambda v, w: _number(v, w, 1, 1000), "smallest accuracy radius of a fix"),
    "unknown_accuracy_m": (100.0, lambda v, w: _number(v, w, 1, 5000), "accuracy radius of a fix without HDOP (track points)"),
    "poor_hdop": (3.0, lambda v, w: _number(v, w, 0.5, 25.5), "from this HDOP up a fix alone never counts as movement"),
    "checkin_window": (1500, _duration, "time for the card to get the prompt and the elder to answer"),
    "checkin_timeout": (300, _duration, "how long the card buzzes for an answer"),
    "family_window": (1800, _duration, "time for the family to acknowledge before the grid worker"),
    "expire_after": (12 * 3600, _duration, "an alert nobody acknowledges closes (timeout) after this"),
    "low_battery_pct": (20.0, lambda v, w: _number(v, w, 1, 99), "battery percentage that raises `low_battery`"),
    "low_battery_reminder": (4 * 3600, _duration, "reminder while still low and not charging"),
    "not_charged": (6 * 86400, _duration, "raise `not_charged` after this long without charging"),
    "not_worn": (86400, _duration, "a card with a motion sensor that counts no motion this long"),
    "on_charger_daytime": (3 * 3600, _duration, "on the charger this long after wake + grace"),
}


class DeviceSettings:
    """The settings of one device (every key of SETTINGS as an attribute)."""

    __slots__ = tuple(SETTINGS) + ("stillness_gap_s", "offline_after_s")

    def __init__(self, values: Mapping[str, Any] | None = None):
        merged = {key: spec[0] for key, spec in SETTINGS.items()}
        merged.update(values or {})
        for key, value in merged.items():
            setattr(self, key, value)
        self.stillness_gap_s = int(self.report_interval * self.evidence_gap_factor)
        self.offline_after_s = int(self.report_interval * self.offline_factor)

    def as_dict(self) -> dict[str, Any]:
        return {key: getattr(self, key) for key in SETTINGS}


def parse_table(table: Any, where: str) -> dict[str, Any]:
    if not isinstance(table, Mapping):
        raise SettingsError(f"{where}: expected a table of settings, got {type(table).__name__}")
    out: dict[str, Any] = {}
    for key, value in table.items():
        spec = SETTINGS.get(key)
        if spec is None:
            raise SettingsError(f"{where}: unknown key {key!r} (known: {', '.join(SETTINGS)})")
        out[key] = spec[1](value, f"{where}.{key}")
    return out


class Settings:
    """Defaults plus per-device settings; `for_device(device)` is shared for devices without any."""

    def __init__(self, defaults: Mapping[str, Any] | None = None,
                 devices: Mapping[str, Mapping[str, Any]] | None = None):
        """Values as a settings file writes them (checked: SettingsError)."""
        self._default_values = parse_table(defaults or {}, "defaults")
        devices = {device: parse_table(values, f"devices.{device}") for device, values in (devices or {}).items()}
        self.defaults = DeviceSettings(self._default_values)
        self.devices: dict[str, DeviceSettings] = {
            device: DeviceSettings({**self._default_values, **values})
            for device, values in (devices or {}).items()}

    def for_device(self, device: str) -> DeviceSettings:
        return self.devices.get(device, self.defaults)

    @classmethod
    def from_mapping(cls, data: Any, where: str = "settings") -> "Settings":
        if not isinstance(data, Mapping):
            raise SettingsError(f"{where}: expected a table with `defaults` and `devices`")
        unknown = set(data) - {"defaults", "devices"}
        if unknown:
            raise SettingsError(f"{where}: unknown top-level key(s) {sorted(unknown)} "
                                "(only `defaults` and `devices`)")
        defaults = data.get("defaults", {})
        parse_table(defaults, f"{where}: defaults")
        devices_table = data.get("devices", {})
        if not isinstance(devices_table, Mapping):
            raise SettingsError(f"{where}: `devices` must be a table keyed by IMEI")
        devices = {}
        for device, table in devices_table.items():
            if not (isinstance(device, str) and device.isdigit() and device.isascii()):
                raise SettingsError(f"{where}: devices key {device!r} is not an IMEI (decimal digits)")
            parse_table(table, f"{where}: devices.{device}")
            devices[device] = table
        return cls(defaults, devices)

    @classmethod
    def combine(cls, *tables: Mapping[str, Any], where: str = "settings") -> "Settings":
        """Settings from several documents of the file's format ({"defaults", "devices"}), each
        overriding the ones before it key by key (the settings file, then the registry's).
        Raises SettingsError."""
        defaults: dict[str, Any] = {}
        devices: dict[str, dict[str, Any]] = {}
        for table in tables:
            defaults.update(table.get("defaults") or {})
            for device, values in (table.get("devices") or {}).items():
                devices.setdefault(str(device), {}).update(values)
        return cls.from_mapping({"defaults": defaults, "devices": devices}, where)

    @staticmethod
    def load_tables(path: Path | str) -> dict[str, Any]:
        """A settings file's document, checked (Settings.load), as its plain tables."""
        Settings.load(path)
        return Settings._read(Path(path))

    @classmethod
    def load(cls, path: Path | str) -> "Settings":
        """A .toml or .json settings file. Raises SettingsError."""
        path = Path(path)
        return cls.from_mapping(cls._read(path), str(path))

    @staticmethod
    def _read(path: Path) -> Any:
        try:
            raw = path.read_bytes()
        except OSError as exc:
            raise SettingsError(f"{path}: cannot read the settings file: {exc.strerror or exc}") from None
        try:
            if path.suffix.lower() == ".json":
                data = json.loads(raw.decode("utf-8"))
            else:
                data = tomllib.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError, tomllib.TOMLDecodeError) as exc:
            raise SettingsError(f"{path}: not valid {'JSON' if path.suffix.lower() == '.json' else 'TOML'}: "
                                f"{exc}") from None
        return data
