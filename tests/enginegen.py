"""Events for the alert engine's tests: real schema-1 events made by event_from_message."""

from __future__ import annotations

import math
from typing import Any

from carecard.host.engine import Engine, Notify, SendCheckin, Settings
from carecard.host.events import event_from_message

DEV = 861234567890123
HOME = (24.7, 118.4)
# 2025-11-04 00:00 local time (+08:00)
MIDNIGHT = 1762185600


def local(hours: float, day: int = 0) -> int:
    return MIDNIGHT + day * 86400 + int(hours * 3600)


class Gen:
    """Makes one card's events with increasing counters."""

    def __init__(self, device: int = DEV):
        self.device = device
        self.counter = 0

    def _event(self, kind: str, t: float, fields: dict[str, Any], delay: float = 1.0) -> dict[str, Any]:
        self.counter += 1
        message = {"type": kind, "direction": "uplink", "device": self.device, "counter": self.counter,
                   "time": int(t), "clock_synced": True, **fields}
        return event_from_message(message, float(int(t)) + delay)

    def pos(self, t: float, lat: float = HOME[0], lon: float = HOME[1], *, hdop: float | None = 1.0,
            fix: str = "3d", age: int | None = 2, delay: float = 1.0, source: str = "fresh") -> dict[str, Any]:
        return self._event("position", t, dict(
            lat_e7=round(lat * 1e7), lon_e7=round(lon * 1e7), alt_m=30,
            hdop_x10=255 if hdop is None else round(hdop * 10), sats=8, fix=fix,
            fix_age_s=65535 if age is None else age, speed_cms=0, course_x10=0,
            source=source), delay)

    def status(self, t: float, motion: int | None = 0, *, pct: int = 80, charging: str = "discharging",
               delay: float = 1.0) -> dict[str, Any]:
        """`motion` None: the card has no motion sensor (the protocol's unknown, 65535)."""
        return self._event("status", t, dict(battery_mv=3900, battery_pct=pct, charging=charging,
                                              rssi_dbm=-70, motion_count=65535 if motion is None else motion,
                                              outbox_depth=0), delay)

    def hello(self, t: float, motion_sensor: str = "lis2dh12") -> dict[str, Any]:
        return self._event("hello", t, dict(fw_major=1, fw_minor=0, fw_patch=0, reset_cause="power_on",
                                             config_version=1, modem="a7670", downlink_min=0,
                                             motion_sensor=motion_sensor))

    def power(self, t: float, what: str, pct: int = 50) -> dict[str, Any]:
        return self._event("power", t, dict(event=what, battery_mv=3700, battery_pct=pct))

    def sos(self, t: float, trigger: str = "long_press", delay: float = 1.0) -> dict[str, Any]:
        return self._event("sos", t, dict(trigger=trigger, lat_e7=0, lon_e7=0, fix="none", fix_age_s=65535,
                                           battery_pct=50), delay)

    def checkin(self, t: float, prompt_id: int, answer: str = "ok") -> dict[str, Any]:
        return self._event("checkin", t, dict(prompt_id=prompt_id, answer=answer, response_s=10))

    def call(self, t: float) -> dict[str, Any]:
        return self._event("call", t, dict(key=1, number="+8613800138000", outcome="confirmed", ring_s=5, talk_s=60))


def offset(point: tuple[float, float], north_m: float, east_m: float) -> tuple[float, float]:
    lat = point[0] + north_m / 111195.0
    lon = point[1] + east_m / (111195.0 * math.cos(math.radians(point[0])))
    return lat, lon


def run(engine: Engine, events: list[dict[str, Any]], until: float | None = None) -> list[Any]:
    """Feed in received order with the clock running between events (as `carecard replay`)."""
    from carecard.host.timefmt import parse_iso_utc

    out: list[Any] = []
    for event in sorted(events, key=lambda e: e["received_at"]):
        out += engine.advance(parse_iso_utc(event["received_at"]))
        out += engine.feed(event)
    if until is not None:
        out += engine.advance(until)
    return out


def steps(actions: list[Any], kind: str | None = None) -> list[tuple[str, str]]:
    return [(a.kind, a.step) for a in actions if isinstance(a, Notify) and (kind is None or a.kind == kind)]


def sensor_settings(**extra: Any) -> Settings:
    return Settings({"motion_sensor": True, "family": ("son",), "grid_worker": ("grid",), **extra})


__all__ = ["DEV", "Gen", "HOME", "MIDNIGHT", "Notify", "SendCheckin", "local", "offset", "run", "steps",
           "sensor_settings"]
