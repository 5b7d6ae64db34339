"""Home Assistant sink: MQTT discovery makes every registered card a Home Assistant device named
after the elder, with four entities; their states follow the event log. Formats:
https://www.home-assistant.io/integrations/mqtt/ (discovery, availability, device),
device_tracker.mqtt, sensor.mqtt, binary_sensor.mqtt and event.mqtt on the same site.

Discovery (retained; `discovery_prefix` "homeassistant", node id `carecard_<IMEI>`):

    homeassistant/device_tracker/carecard_<IMEI>/location/config       the card's position
    homeassistant/sensor/carecard_<IMEI>/battery/config                battery, %
    homeassistant/binary_sensor/carecard_<IMEI>/needs_checking/config  device class problem
    homeassistant/event/carecard_<IMEI>/sos/config                     event type "sos"

State topics (under `topic_prefix` "carecard/ha"):

    <prefix>/<IMEI>/location         retained JSON attributes: latitude, longitude, gps_accuracy
                                     (metres), altitude (m), hdop, satellites, fix_time (ISO 8601)
    <prefix>/<IMEI>/battery          retained, the percentage as text; never published while
                                     unknown (Home Assistant keeps the last known or "unknown")
    <prefix>/<IMEI>/needs_checking   retained "ON" while one of the card's alerts is open (raised,
                                     nobody has acknowledged it), else "OFF"
    <prefix>/<IMEI>/alerts           retained JSON attributes of needs_checking: {"alerts":
                                     [{alert_id, kind, state, step, opened_at}]} (open and acknowledged)
    <prefix>/<IMEI>/sos              not retained: {"event_type": "sos", "trigger", "time",
                                     "latitude", "longitude" (with a fix), "battery" (when known)}
    <prefix>/<IMEI>/availability     retained "offline" while the engine's offline alert for the
                                     card is not resolved, else "online"
    <prefix>/bridge/<sink name>/status   retained "online"; "offline" as the MQTT last will and
                                     when the sink stops

The tracker and the battery sensor are available when both the bridge and the card are online
(availability_mode "all"); the needs-checking sensor and the SOS event only need the bridge, so
an offline card shows as a problem rather than vanishing. A card without a fix publishes no
location (the tracker keeps its last one). An SOS fires the event; so does the engine's SOS alert
raised by the answer "help" to a check-in (no SOS frame then). A card removed from the registry
gets empty retained configs (Home Assistant removes its entities) and its retained states cleared.
Every card is announced again when the sink starts and when Home Assistant publishes `online` on
`<discovery_prefix>/status` (its birth message: it has just started and reads discovery).

Keys: the MQTT connection keys, qos, registry_poll_s, discovery_prefix ("homeassistant"),
topic_prefix ("carecard/ha").
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from carecard.host.events import ALERT_KIND
from carecard.host.sinks.base import SinkTable
from carecard.host.sinks.cards import OFFLINE_ALERT, SOS_ALERT, accuracy_m, fix_unix, has_fix
from carecard.host.sinks.mqtt_bridge import Message, MqttBridge, json_payload, topic_part
from carecard.host.timefmt import iso_utc, parse_iso_utc

DEFAULT_DISCOVERY_PREFIX = "homeassistant"
DEFAULT_TOPIC_PREFIX = "carecard/ha"
ONLINE, OFFLINE = "online", "offline"
ON, OFF = "ON", "OFF"
SOS_EVENT_TYPE = "sos"
ORIGIN = {"name": "CareCard receiver"}
MANUFACTURER = "CareCard"
MODEL = "Neighbourhood care card"
# entity -> (component, name (None: the device's name alone))
ENTITIES = {
    "location": ("device_tracker", None),
    "battery": ("sensor", "Battery"),
    "needs_checking": ("binary_sensor", "Needs checking"),
    "sos": ("event", "SOS"),
}
STATE_TOPICS = ("location", "battery", "needs_checking", "alerts", "availability")


def node_id(device: str) -> str:
    return f"carecard_{device}"


class HomeAssistantSink(MqttBridge):
    type_name = "homeassistant"

    def __init__(self, name: str, *, discovery_prefix: str = DEFAULT_DISCOVERY_PREFIX,
                 topic_prefix: str = DEFAULT_TOPIC_PREFIX, **options: Any):
        super().__init__(name, **options)
        self.discovery_prefix = discovery_prefix
        self.state_prefix = topic_prefix
        self.bridge_topic = f"{topic_prefix}/bridge/{name}/status"
        self.status_topic = (self.bridge_topic, ONLINE.encode(), OFFLINE.encode())
        # Home Assistant's birth message: it (re)started and reads discovery now
        self.birth_topic = f"{discovery_prefix}/status"
        self.subscriptions = [self.birth_topic]
        self.sos_events = 0

    @classmethod
    def from_config(cls, table: SinkTable, data_dir: Path, name: str) -> "HomeAssistantSink":
        return cls(name, discovery_prefix=topic_part(table, "discovery_prefix", DEFAULT_DISCOVERY_PREFIX),
                   topic_prefix=topic_part(table, "topic_prefix", DEFAULT_TOPIC_PREFIX),
                   **cls.bridge_options(table, data_dir))

    # --- topics ---------------------------------------------------------------------------------

    def config_topic(self, device: str, entity: str) -> str:
        return f"{self.discovery_prefix}/{ENTITIES[entity][0]}/{node_id(device)}/{entity}/config"

    def state_topic(self, device: str, what: str) -> str:
        return f"{self.state_prefix}/{device}/{what}"

    # --- discovery ------------------------------------------------------------------------------

    def discovery_config(self, device: str, entity: str, name: str) -> dict[str, Any]:
        """The discovery payload of one entity of a card."""
        bridge = {"topic": self.bridge_topic}
        card = {"topic": self.state_topic(device, "availability")}
        config: dict[str, Any] = {
            "name": ENTITIES[entity][1],
            "unique_id": f"{node_id(device)}_{entity}",
            "device": {"identifiers": [node_id(device)], "name": name, "manufacturer": MANUFACTURER,
                       "model": MODEL, "serial_number": device},
            "origin": ORIGIN,
            "qos": self.qos,
        }
        if entity == "location":
            config.update({"json_attributes_topic": self.state_topic(device, "location"),
                           "source_type": "gps", "availability": [bridge, card],
                           "availability_mode": "all"})
        elif entity == "battery":
            config.update({"state_topic": self.state_topic(device, "battery"),
                           "device_class": "battery", "unit_of_measurement": "%",
                           "state_class": "measurement", "availability": [bridge, card],
                           "availability_mode": "all"})
        elif entity == "needs_checking":
            config.update({"state_topic": self.state_topic(device, "needs_checking"),
                           "payload_on": ON, "payload_off": OFF, "device_class": "problem",
                           "json_attributes_topic": self.state_topic(device, "alerts"),
                           "availability": [bridge]})
        else:
            config.update({"state_topic": self.state_topic(device, "sos"),
                           "event_types": [SOS_EVENT_TYPE], "icon": "mdi:alarm-light",
                           "availability": [bridge]})
        return config

    def announce(self, device: str, name: str) -> list[Message]:
        messages = [(self.config_topic(device, entity), json_payload(self.discovery_config(device, entity, name)), True)
                    for entity in ENTITIES]
        return messages + self._alert_messages(device) + self._availability(device)

    def withdraw(self, device: str) -> list[Message]:
        return ([(self.config_topic(device, entity), b"", True) for entity in ENTITIES]
                + [(self.state_topic(device, what), b"", True) for what in STATE_TOPICS])

    def received(self, topic: str, payload: bytes) -> None:
        if topic == self.birth_topic and payload == ONLINE.encode():
            self.announce_all = True  # the next registry check (within registry_poll_s) sends them

    # --- states ---------------------------------------------------------------------------------

    def _availability(self, device: str) -> list[Message]:
        state = OFFLINE if self.states.offline(device) else ONLINE
        return [(self.state_topic(device, "availability"), state.encode(), True)]

    def _alert_messages(self, device: str) -> list[Message]:
        alerts = [{"alert_id": alert_id, **alert} for alert_id, alert in sorted(self.states.alerts(device).items())]
        return [(self.state_topic(device, "needs_checking"),
                 (ON if self.states.needs_checking(device) else OFF).encode(), True),
                (self.state_topic(device, "alerts"), json_payload({"alerts": alerts}), True)]

    def _location(self, device: str, lat: float, lon: float, hdop: float | None, fixed_at: float,
                  extra: dict[str, Any]) -> Message:
        attributes = {"latitude": lat, "longitude": lon, "gps_accuracy": round(accuracy_m(hdop)),
                      **extra, "fix_time": iso_utc(fixed_at)}
        return (self.state_topic(device, "location"), json_payload(attributes), True)

    def _sos(self, device: str, payload: dict[str, Any]) -> Message:
        self.sos_events += 1
        return (self.state_topic(device, "sos"), json_payload({"event_type": SOS_EVENT_TYPE, **payload}), False)

    def event_messages(self, event: dict[str, Any]) -> list[Message]:
        device, kind = event["device"], event["kind"]
        data = event.get("data") or {}
        messages: list[Message] = []
        if kind == "position" and has_fix(data):
            extra = {"altitude": data["alt_m"], "satellites": data["sats"]}
            if data.get("hdop") is not None:
                extra["hdop"] = data["hdop"]
            messages.append(self._location(device, data["lat"], data["lon"], data.get("hdop"),
                                           fix_unix(event), extra))
        elif kind == "track":
            timed = [point for point in data.get("points", []) if point.get("time")]
            if timed:
                newest = timed[-1]
                messages.append(self._location(device, newest["lat"], newest["lon"], None,
                                               parse_iso_utc(newest["time"]), {}))
        elif kind == "sos":
            payload: dict[str, Any] = {"trigger": data.get("trigger"),
                                       "time": event.get("time") or event["received_at"]}
            if has_fix(data):
                payload.update({"latitude": data["lat"], "longitude": data["lon"]})
                messages.append(self._location(device, data["lat"], data["lon"], None, fix_unix(event), {}))
            if data.get("battery_pct") is not None:
                payload["battery"] = data["battery_pct"]
            messages.append(self._sos(device, payload))
        elif kind == ALERT_KIND:
            details = data.get("details") or {}
            messages += self._alert_messages(device)
            if data.get("alert") == OFFLINE_ALERT:
                messages += self._availability(device)
            if (data.get("alert") == SOS_ALERT and details.get("step") == "raised"
                    and details.get("trigger") == "checkin_help"):
                messages.append(self._sos(device, {"trigger": "checkin_help", "time": event["time"]}))
        if kind in ("status", "power", "sos") and data.get("battery_pct") is not None:
            messages.append((self.state_topic(device, "battery"), str(data["battery_pct"]).encode(), True))
        return messages

    # --- life cycle -----------------------------------------------------------------------------

    def _close(self) -> None:
        client = self._client
        if client is not None and client.is_connected():
            try:  # a clean stop sends no last will: say it ourselves
                client.publish(self.bridge_topic, OFFLINE.encode(), qos=self.qos, retain=True).wait_for_publish(2)
            except (RuntimeError, ValueError, OSError):
                pass
        super()._close()

    def stats(self) -> dict[str, Any]:
        return {**super().stats(), "sos_events": self.sos_events}
