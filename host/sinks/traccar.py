"""Traccar sink: the cards' positions, battery, SOS and alerts sent to an existing Traccar server
with its OsmAnd protocol (the HTTP protocol of Traccar's phone clients, port 5055 by default):
https://www.traccar.org/osmand/ and Traccar's decoder of it (OsmAndProtocolDecoder).

One request per report, in log order: `POST <url>` with the parameters as an
application/x-www-form-urlencoded body. Traccar identifies the device by `id`, the card's IMEI:
add each card in Traccar with its IMEI as the identifier.

| parameter | from | unit |
| --- | --- | --- |
| `id` | the event's `device` | IMEI |
| `timestamp` | the position's fix time (message time less `fix_age_s`), else the message time, else when the host received it | Unix seconds |
| `lat`, `lon` | `lat`, `lon` (only with a fix) | degrees |
| `valid` | `true` with a fix, `false` for a position report without one | |
| `altitude` | `alt_m` | metres |
| `speed` | `speed_ms` x 3600 / 1852 | knots (what the protocol takes) |
| `bearing` | `course` | degrees |
| `hdop` | `hdop` (when known) | |
| `accuracy` | the engine's accuracy radius of the fix (HDOP x 10 m, at least 25 m; 100 m without HDOP) | metres |
| `sat` | `sats` | satellites |
| `batt` | the last known `battery_pct` (never sent when unknown) | percent |
| `charge` | the last known charger state: `true` when charging or full | |
| `battery` | `battery_v` of a status or power report | volts |
| `rssi` | `rssi_dbm` of a status report (when known) | dBm |
| `alarm` | `sos` for an SOS (and for the engine's SOS raised by a check-in answer "help"), `lowBattery` (low, critical and shutdown power events; the engine's `low_battery`), `general` (the engine's `inactivity` when the family is alerted), `removing` (`card_not_worn`) | |
| other | `sosTrigger`, `powerEvent`, `callKey`, `callOutcome`, `checkinAnswer`; for alert steps `alert`, `alertStep`, `alertState`, `alertId` | Traccar keeps them as position attributes |

A report without a fix (status, power, call, check-in, alert steps, and positions without one)
has no `lat`/`lon`: Traccar then takes the device's last known location, as it does for its own
clients. A track sends one request per point (the protocol has one location per request),
points without a synced time are skipped. `hello` and `command_result` are not sent.

Delivery, retries and dead letters are the webhook sink's: 2xx accepts; 5xx, 408, 429 and
timeouts are retried `max_retries` times; any other answer dead-letters the event. Traccar
answers 400 to a device it does not know: the dead letter says so.

Keys: url (default http://localhost:5055/), timeout, max_retries, dead_letter, headers.
"""

from __future__ import annotations

import urllib.parse
from pathlib import Path
from typing import Any

from carecard.host.paths import dead_letter_path
from carecard.host.sinks.base import (
    DEFAULT_RETRY_MAX,
    DEFAULT_RETRY_MIN,
    ConfigError,
    SinkError,
    SinkTable,
)
from carecard.host.sinks.cards import CardStates, accuracy_m, event_unix, fix_unix, has_fix, state_path
from carecard.host.sinks.webhook import WebhookSink
from carecard.host.timefmt import parse_iso_utc

DEFAULT_URL = "http://localhost:5055/"
USER_AGENT = "carecard-traccar/1"
KNOTS_PER_MS = 3600 / 1852  # one knot is one nautical mile (1852 m) per hour

# Traccar's alarm names (org.traccar.model.Position.ALARM_*)
ALARM_SOS = "sos"
ALARM_LOW_BATTERY = "lowBattery"
ALARM_GENERAL = "general"
ALARM_REMOVING = "removing"

POWER_ALARMS = {"low": ALARM_LOW_BATTERY, "critical": ALARM_LOW_BATTERY, "shutdown": ALARM_LOW_BATTERY}
# engine alert (kind, step) -> alarm: the step at which someone must act
ALERT_ALARMS = {
    ("low_battery", "raised"): ALARM_LOW_BATTERY,
    ("inactivity", "family"): ALARM_GENERAL,
    ("card_not_worn", "raised"): ALARM_REMOVING,
}


def _number(value: float, places: int) -> str:
    """A decimal number without exponent or trailing zeros."""
    text = f"{value:.{places}f}".rstrip("0").rstrip(".")
    return "0" if text in ("", "-0") else text


class TraccarSink(WebhookSink):
    type_name = "traccar"

    def __init__(self, name: str, url: str, *, data_dir: Path, **options: Any):
        super().__init__(name, url, "", **options)
        self.states = CardStates(state_path(data_dir, name))
        self._loaded = False
        self.requests_built = 0
        self.unconvertible = 0
        self._resume: tuple[Any, int] | None = None  # (event id, its requests delivered)

    @classmethod
    def from_config(cls, table: SinkTable, data_dir: Path, name: str) -> "TraccarSink":
        url = table.str("url", DEFAULT_URL) or DEFAULT_URL
        parts = urllib.parse.urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ConfigError(table.where, "url", f"{url!r}: expected an http:// or https:// URL "
                              "(Traccar's OsmAnd port, e.g. http://traccar.example:5055/)")
        try:
            parts.port
        except ValueError:
            raise ConfigError(table.where, "url", f"{url!r}: bad port") from None
        headers_raw = table.raw("headers", {})
        if not isinstance(headers_raw, dict) or not all(
                isinstance(k, str) and isinstance(v, str) and "\n" not in k + v and "\r" not in k + v
                for k, v in headers_raw.items()):
            raise ConfigError(table.where, "headers", "expected a table of text header values")
        dead = table.str("dead_letter")
        return cls(
            name, url, data_dir=data_dir,
            timeout=table.float("timeout", 10.0, minimum=0.05, maximum=600),
            max_retries=table.int("max_retries", 5, minimum=0, maximum=1000),
            dead_letter=Path(dead) if dead else dead_letter_path(data_dir, name),
            headers=headers_raw,
            retry_min=table.float("retry_min", DEFAULT_RETRY_MIN, minimum=0.001, maximum=3600),
            retry_max=table.float("retry_max", DEFAULT_RETRY_MAX, minimum=0.001, maximum=86400),
        )

    async def start(self) -> None:
        if not self._loaded:
            await self.run_io(self.states.load)
            self._loaded = True

    # --- the OsmAnd requests --------------------------------------------------------------------

    def request_headers(self, body: bytes, event_id: str) -> dict[str, str]:
        return {**self.headers, "Content-Type": "application/x-www-form-urlencoded",
                "User-Agent": USER_AGENT}

    def explain_rejection(self, status: int, text: str, event: dict[str, Any]) -> str:
        if status == 400:
            return (f"Traccar answered 400: it has no device with identifier {event['device']} (add the "
                    f"card in Traccar with its IMEI as identifier) or refused the request")
        return super().explain_rejection(status, text, event)

    def report_parameters(self, event: dict[str, Any]) -> list[dict[str, str]]:
        """The OsmAnd parameters of every request that reports this event (none for kinds
        Traccar has no use for). Takes the event's battery, charger and alert news first."""
        self.states.apply(event)
        device, kind = event["device"], event["kind"]
        data = event.get("data") or {}
        if kind == "track":
            return [self._with_battery(device, {
                "id": device, "timestamp": str(int(parse_iso_utc(point["time"]))),
                "lat": _number(point["lat"], 7), "lon": _number(point["lon"], 7), "valid": "true",
                "accuracy": _number(accuracy_m(None), 1)})
                for point in data.get("points", []) if point.get("time")]
        params: dict[str, str] = {"id": device}
        if kind in ("position", "sos") and has_fix(data):
            params["timestamp"] = str(int(fix_unix(event)))
            params["lat"] = _number(data["lat"], 7)
            params["lon"] = _number(data["lon"], 7)
            params["valid"] = "true"
            params["accuracy"] = _number(accuracy_m(data.get("hdop")), 1)
        else:
            params["timestamp"] = str(int(event_unix(event)))
            if kind == "position":
                params["valid"] = "false"
        if kind == "position" and has_fix(data):
            params["altitude"] = str(data["alt_m"])
            params["speed"] = _number(data["speed_ms"] * KNOTS_PER_MS, 2)
            params["bearing"] = _number(data["course"], 1)
            if data.get("hdop") is not None:
                params["hdop"] = _number(data["hdop"], 1)
            params["sat"] = str(data["sats"])
        elif kind == "status":
            params["battery"] = _number(data["battery_v"], 3)
            if data.get("rssi_dbm") is not None:
                params["rssi"] = str(data["rssi_dbm"])
        elif kind == "sos":
            params["alarm"] = ALARM_SOS
            params["sosTrigger"] = str(data.get("trigger"))
        elif kind == "power":
            params["battery"] = _number(data["battery_v"], 3)
            params["powerEvent"] = str(data.get("event"))
            if data.get("event") in POWER_ALARMS:
                params["alarm"] = POWER_ALARMS[data["event"]]
        elif kind == "call":
            params["callKey"] = str(data.get("key"))
            params["callOutcome"] = str(data.get("outcome"))
        elif kind == "checkin":
            params["checkinAnswer"] = str(data.get("answer"))
        elif kind == "alert":
            details = data.get("details") or {}
            alert, step = str(data.get("alert")), str(details.get("step"))
            params.update({"alert": alert, "alertStep": step, "alertState": str(details.get("state")),
                           "alertId": str(details.get("alert_id"))})
            alarm = ALERT_ALARMS.get((alert, step))
            if alert == "sos" and step == "raised" and details.get("trigger") == "checkin_help":
                alarm = ALARM_SOS  # an SOS frame carried its own alarm; this one had none
            if alarm:
                params["alarm"] = alarm
        elif kind != "position":
            return []  # hello, command_result: nothing for a tracking server
        return [self._with_battery(device, params)]

    def _with_battery(self, device: str, params: dict[str, str]) -> dict[str, str]:
        battery = self.states.battery(device)
        if battery is not None:
            params["batt"] = str(battery)
        charging = self.states.charging(device)
        if charging is not None:
            params["charge"] = "true" if charging in ("charging", "full") else "false"
        return params

    def request_bodies(self, event: dict[str, Any]) -> list[bytes]:
        bodies = [urllib.parse.urlencode(params).encode("ascii")
                  for params in self.report_parameters(event)]
        self.requests_built += len(bodies)
        return bodies

    async def deliver(self, events: list[dict[str, Any]]) -> None:
        # An event whose requests Traccar got only in part (a track cut off when the server went
        # away): the retry, which starts at that event, skips the points it already has.
        resume, self._resume = self._resume, None
        for index, event in enumerate(events):
            try:
                bodies = self.request_bodies(event)
            except (KeyError, TypeError, ValueError, AttributeError) as exc:
                # not of the event schema (a foreign or hand-edited log): never blocks the rest
                self.unconvertible += 1
                await self._dead_letter(event, index, 0, "cannot convert the event to an OsmAnd report "
                                        f"({type(exc).__name__}: {exc}): not of the event schema?", None)
                continue
            skip = resume[1] if index == 0 and resume is not None and resume[0] == event.get("id") else 0
            for number, body in enumerate(bodies[skip:], skip):
                try:
                    sent = await self._send(event, index, body)
                except SinkError:
                    if number:
                        self._resume = (event.get("id"), number)
                    raise
                if not sent:
                    break
        await self.run_io(self.states.save)

    def stats(self) -> dict[str, Any]:
        return {**super().stats(), "requests": self.requests_built, "unconvertible": self.unconvertible}

