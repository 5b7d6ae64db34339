"""Unix seconds as ISO 8601 UTC text and back, fast for the times a receiver sees (a bounded
cache of day and second texts), and always the same text as datetime's."""

from __future__ import annotations

import math
from datetime import datetime, timezone

# Unix day -> "YYYY-MM-DDT"; whole Unix second -> "YYYY-MM-DDTHH:MM:SS". Both bounded (cleared when
# full): the receiver formats two times per frame, and cards' clocks cluster around now.
_DAY_TEXT: dict[int, str] = {}
_SECOND_TEXT: dict[int, str] = {}
_TEXT_CACHE_MAX = 8192
_FAST_LIMIT = 253402300800  # 10000-01-01: datetime's own limit


def _second_text(whole: int) -> str:
    text = _SECOND_TEXT.get(whole)
    if text is None:
        days, rest = divmod(whole, 86400)
        day = _DAY_TEXT.get(days)
        if day is None:
            if len(_DAY_TEXT) >= _TEXT_CACHE_MAX:
                _DAY_TEXT.clear()
            day = _DAY_TEXT[days] = datetime.fromtimestamp(days * 86400, timezone.utc).isoformat()[:11]
        hours, rest = divmod(rest, 3600)
        minutes, seconds = divmod(rest, 60)
        if len(_SECOND_TEXT) >= _TEXT_CACHE_MAX:
            _SECOND_TEXT.clear()
        text = _SECOND_TEXT[whole] = f"{day}{hours:02d}:{minutes:02d}:{seconds:02d}"
    return text


def _iso_slow(unix: float, millis: bool) -> str:
    moment = datetime.fromtimestamp(unix, timezone.utc)
    text = moment.isoformat(timespec="milliseconds" if millis else "seconds")
    return text.replace("+00:00", "Z")


def iso_utc(unix: float, *, millis: bool = False) -> str:
    """Unix seconds -> ISO 8601 UTC with a Z suffix (whole seconds, or milliseconds).

    The same text as `datetime.fromtimestamp(unix, timezone.utc).isoformat(...)` (a test checks
    it), including its rounding of floats to the microsecond (half to even) before the digits
    are cut; computed without a datetime object for the times the receiver sees."""
    if type(unix) is int:
        if 0 <= unix < _FAST_LIMIT:
            return _second_text(unix) + (".000Z" if millis else "Z")
        return _iso_slow(unix, millis)
    if type(unix) is not float or not 0.0 <= unix < _FAST_LIMIT:  # NaN fails the test too
        return _iso_slow(unix, millis)
    fraction, whole = math.modf(unix)
    micro = round(fraction * 1e6)
    if micro >= 1_000_000:
        whole += 1.0
        micro -= 1_000_000
    text = _second_text(int(whole))
    return f"{text}.{micro // 1000:03d}Z" if millis else text + "Z"


# "YYYY-MM-DDTHH:MM:SS" -> Unix seconds, for the texts iso_utc makes (bounded like the others).
_SECONDS_OF_TEXT: dict[str, int] = {}


def parse_iso_utc(text: str) -> float:
    """ISO 8601 (a Z or an offset; naive means UTC) -> Unix seconds. Raises ValueError.

    The texts iso_utc makes ("...:SSZ", "...:SS.fffZ") are parsed with a cache of their seconds
    part, to the same float as datetime (a test checks it)."""
    if type(text) is str and text[-1:] == "Z" and len(text) in (20, 24) and text[10:11] == "T":
        whole = _SECONDS_OF_TEXT.get(text[:19])
        if whole is None:
            whole = int(_parse_iso_slow(text[:19] + "Z"))
            if len(_SECONDS_OF_TEXT) >= _TEXT_CACHE_MAX:
                _SECONDS_OF_TEXT.clear()
            _SECONDS_OF_TEXT[text[:19]] = whole
        if len(text) == 20:
            return float(whole)
        millis = text[20:23]
        if text[19] == "." and millis.isdigit() and millis.isascii():
            return (whole * 1_000_000 + int(millis) * 1000) / 1_000_000  # as timedelta does
    return _parse_iso_slow(text)


def _parse_iso_slow(text: str) -> float:
    value = text.strip()
    if value.endswith(("Z", "z")):
        value = value[:-1] + "+00:00"
    moment = datetime.fromisoformat(value)
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return moment.timestamp()
