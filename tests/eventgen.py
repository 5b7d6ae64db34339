"""Test data for the event, log, sink and query tests: hypothesis strategies for every uplink
message built from protocol/spec.py (no field list copied here), and simple event factories."""

from __future__ import annotations

from typing import Any

from hypothesis import strategies as st

from carecard.host.events import event_from_message
from carecard.protocol import spec
from carecard.protocol.codec import value_bounds

DEVICE = 861234567890123
T0 = 1764374400  # 2025-11-29T00:00:00Z



def _int_kind(kind: str) -> st.SearchStrategy[int]:
    bits = int(kind[1:])
    if kind[0] == "u":
        return st.integers(0, 2**bits - 1)
    return st.integers(-(2 ** (bits - 1)), 2 ** (bits - 1) - 1)


def field_strategy(name: str, kind: str) -> st.SearchStrategy[Any]:
    bounds = value_bounds(name)
    if bounds is not None:
        low, high, unknown = bounds
        allowed = st.integers(low, high)
        return allowed if unknown is None else st.one_of(allowed, st.just(unknown))
    if kind.startswith("enum:"):
        return st.sampled_from(spec.ENUMS[kind[5:]])
    if kind == "str":
        rule = spec.FIELDS.get(name, {}).get("text")
        if rule is None:
            return st.text(max_size=20)
        first_only, anywhere = spec.TEXT_RULES[rule]
        return st.tuples(st.sampled_from(["", *first_only]), st.text(alphabet=anywhere, max_size=20)).map("".join)
    if kind == "track":
        point = st.fixed_dictionaries({"time": st.integers(0, 2**32 - 1),
                                       "lat_e7": field_strategy("lat_e7", "i32"),
                                       "lon_e7": field_strategy("lon_e7", "i32")})
        return st.lists(point, min_size=1, max_size=spec.MAX_TRACK_POINTS)
    return _int_kind(kind)


@st.composite
def uplink_messages(draw: st.DrawFn, kinds: tuple[str, ...] | None = None) -> dict[str, Any]:
    code, name, fields = draw(st.sampled_from([m for m in spec.UPLINK if kinds is None or m[1] in kinds]))
    message: dict[str, Any] = {
        "type": name,
        "direction": "uplink",
        "device": draw(st.integers(0, 2**64 - 1)),
        "counter": draw(st.integers(0, 2**32 - 1)),
        "time": draw(st.integers(0, 2**32 - 1)),
        "clock_synced": draw(st.booleans()),
    }
    for fname, kind, _doc in fields:
        message[fname] = draw(field_strategy(fname, kind))
    return message


def position_message(counter: int, *, device: int = DEVICE, t: int | None = None,
                     synced: bool = True) -> dict[str, Any]:
    return {"type": "position", "direction": "uplink", "device": device, "counter": counter,
            "time": (T0 + counter * 60) if t is None else t, "clock_synced": synced,
            "lat_e7": 247000000 + counter * 10, "lon_e7": 1184000000 - counter * 10, "alt_m": 30,
            "hdop_x10": 12, "sats": 8, "fix": "3d", "fix_age_s": 2, "speed_cms": 150,
            "course_x10": 900, "source": "fresh"}


def position_event(counter: int, *, device: int = DEVICE, received_at: float | None = None) -> dict[str, Any]:
    return event_from_message(position_message(counter, device=device),
                              received_at if received_at is not None else T0 + counter * 60 + 1)


def status_event(counter: int, *, device: int = DEVICE) -> dict[str, Any]:
    message = {"type": "status", "direction": "uplink", "device": device, "counter": counter,
               "time": T0 + counter * 60, "clock_synced": True, "battery_mv": 3900, "battery_pct": 80,
               "charging": "discharging", "rssi_dbm": -70, "motion_count": 3, "outbox_depth": 0}
    return event_from_message(message, T0 + counter * 60 + 1)
