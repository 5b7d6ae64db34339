"""OwnTracks sink: the cards' positions as OwnTracks location messages on MQTT, and each card's
elder as an OwnTracks card, so the OwnTracks Recorder and Frontend draw the track and the
family's OwnTracks apps show the card as a friend. Format: https://owntracks.org/booklet/tech/json/

Topics (`topic_prefix` "owntracks", `user` "carecard", the device level is the card's IMEI):

    owntracks/<user>/<IMEI>         _type "location", retained (apps show a friend's last one)
    owntracks/<user>/<IMEI>/info    _type "card", retained: {"_type": "card", "name", "tid"}

A location (from a position or SOS with a fix, and one per track point with a synced time):

| key | from | unit |
| --- | --- | --- |
| `_type` | `"location"` | |
| `tst` | fix time: message time less `fix_age_s` (track points: their own time) | Unix seconds, integer |
| `lat`, `lon` | `lat`, `lon` | degrees |
| `acc` | the engine's accuracy radius of the fix (HDOP x 10 m, at least 25 m; 100 m without HDOP) | metres, integer |
| `alt` | `alt_m` (positions) | metres, integer |
| `vel` | `speed_ms` x 3.6 (positions) | km/h, integer |
| `cog` | `course` (positions) | degrees, integer |
| `batt` | the last known `battery_pct`; absent while unknown | percent, integer |
| `bs` | the last known charger state: 1 discharging, 2 charging, 3 full; absent while unknown | |
| `tid` | the first two characters of the elder's name, else the IMEI's last two digits | |
| `created_at` | when the host received the message | Unix seconds, integer |
| `t` | `"u"` (a manual report: the elder pressed SOS) for SOS, absent otherwise | |

Reports without a fix publish nothing (OwnTracks has no location without coordinates); their
battery level goes with the next location. A card removed from the registry has its retained
card and location cleared (empty retained messages).

Keys: the MQTT connection keys, qos, registry_poll_s, topic_prefix ("owntracks"), user
("carecard"), retain_location (true).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from carecard.host.sinks.base import ConfigError, SinkTable
from carecard.host.sinks.cards import accuracy_m, fix_unix, has_fix
from carecard.host.sinks.mqtt_bridge import Message, MqttBridge, json_payload, topic_part
from carecard.host.timefmt import parse_iso_utc

DEFAULT_PREFIX = "owntracks"
DEFAULT_USER = "carecard"
BATTERY_STATUS = {"discharging": 1, "charging": 2, "full": 3}


def tracker_id(device: str, name: str | None) -> str:
    """Two characters for the map: the start of the elder's name, else the IMEI's end."""
    letters = "".join((name or "").split())
    return letters[:2] if letters else device[-2:]


class OwnTracksSink(MqttBridge):
    type_name = "owntracks"

    def __init__(self, name: str, *, topic_prefix: str = DEFAULT_PREFIX, user: str = DEFAULT_USER,
                 retain_location: bool = True, **options: Any):
        super().__init__(name, **options)
        self.base = f"{topic_prefix}/{user}"
        self.retain_location = retain_location
        self.locations = 0

    @classmethod
    def from_config(cls, table: SinkTable, data_dir: Path, name: str) -> "OwnTracksSink":
        prefix = topic_part(table, "topic_prefix", DEFAULT_PREFIX)
        user = topic_part(table, "user", DEFAULT_USER)
        if "/" in user:
            raise ConfigError(table.where, "user", f"{user!r}: one topic level, no '/'")
        return cls(name, topic_prefix=prefix, user=user,
                   retain_location=table.bool("retain_location", True),
                   **cls.bridge_options(table, data_dir))

    def topic(self, device: str) -> str:
        return f"{self.base}/{device}"

    def _tid(self, device: str) -> str:
        return tracker_id(device, self.registry.names.get(device))

    def announce(self, device: str, name: str) -> list[Message]:
        card = {"_type": "card", "name": name, "tid": self._tid(device)}
        return [(f"{self.topic(device)}/info", json_payload(card), True)]

    def withdraw(self, device: str) -> list[Message]:
        return [(f"{self.topic(device)}/info", b"", True), (self.topic(device), b"", True)]

    def _location(self, device: str, tst: float, lat: float, lon: float, acc: float,
                  received: float, extra: dict[str, Any]) -> Message:
        location: dict[str, Any] = {"_type": "location", "tid": self._tid(device), "tst": int(tst),
                                    "lat": lat, "lon": lon, "acc": round(acc), **extra}
        battery = self.states.battery(device)
        if battery is not None:
            location["batt"] = battery
        charging = self.states.charging(device)
        if charging in BATTERY_STATUS:
            location["bs"] = BATTERY_STATUS[charging]
        location["created_at"] = int(received)
        self.locations += 1
        return (self.topic(device), json_payload(location), self.retain_location)

    def event_messages(self, event: dict[str, Any]) -> list[Message]:
        device, kind = event["device"], event["kind"]
        data = event.get("data") or {}
        received = parse_iso_utc(event["received_at"])
        if kind == "track":
            return [self._location(device, parse_iso_utc(point["time"]), point["lat"], point["lon"],
                                   accuracy_m(None), received, {})
                    for point in data.get("points", []) if point.get("time")]
        if kind not in ("position", "sos") or not has_fix(data):
            return []
        if kind == "sos":
            extra: dict[str, Any] = {"t": "u"}
            acc = accuracy_m(None)
        else:
            extra = {"alt": data["alt_m"], "vel": round(data["speed_ms"] * 3.6),
                     "cog": round(data["course"]) % 360}
            acc = accuracy_m(data.get("hdop"))
        return [self._location(device, fix_unix(event), data["lat"], data["lon"], acc, received, extra)]

    def stats(self) -> dict[str, Any]:
        return {**super().stats(), "locations": self.locations}

