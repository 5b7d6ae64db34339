"""The inactivity and alert engine: a sans-I/O core.

Events of the schema in docs/events.md go in (`feed`), the clock is whatever the caller says
(`advance(now)`), and actions come out as data: `Notify` (an alert's step, which becomes an
`alert` event with `Notify.event()`) and `SendCheckin` (a check-in prompt for the card's
downlink queue). Nothing here reads a clock, a file or a socket.

Per device the engine keeps one small object and at most one timer entry in a heap: the time
at which something about that device may next become true (a stillness threshold, an
escalation step, offline, a reminder). Entries are lazily invalidated: a device's earlier
wake-up is pushed, a later one waits until the earlier entry fires and re-evaluates.

Times: evidence is judged at its own time (a fix at the message time minus its age), alerts are
raised at the engine's `now`, and only when still true then: a stay whose newest evidence is
older than the evidence gap is unknown, never stillness, so a card that reconnects with hours of
queued data raises an inactivity alert only if its newest data still shows it still.
"""

from __future__ import annotations

import heapq
import math
import operator
from typing import Any, Iterable, Mapping, NamedTuple

from carecard.host.engine.settings import DeviceSettings, Settings
from carecard.host.engine.vocabulary import NOTIFY, VOCABULARY_VERSION
from carecard.host.events import REGISTRY_CHANGES, REGISTRY_KIND, alert_event
from carecard.host.timefmt import iso_utc, parse_iso_utc

STATE_VERSION = 1
_M_PER_DEG = 6371008.8 * math.pi / 180.0
_DAY = 86400


class EngineError(ValueError):
    """An event the engine cannot use (not of the event schema); the message says what and where."""


class UnknownAlert(KeyError):
    """An acknowledgement for an alert id that is not open (never raised, or already closed)."""


class Notify(NamedTuple):
    """One step of an alert: becomes an `alert` event (docs/events.md, Alert vocabulary)."""

    at: float
    device: str
    kind: str
    alert_id: str
    step: str
    state: str
    notify: tuple[str, ...]
    recipients: tuple[str, ...]
    details: dict[str, Any]

    def event(self) -> dict[str, Any]:
        details = {"vocabulary": VOCABULARY_VERSION, "alert_id": self.alert_id, "step": self.step,
                   "state": self.state, "notify": list(self.notify),
                   "recipients": list(self.recipients), **self.details}
        return alert_event(self.device, self.kind, details, self.at,
                           alert_id=f"{self.alert_id}-{self.step}-{round(self.at * 1000)}")


class SendCheckin(NamedTuple):
    """Queue the protocol's `checkin_prompt` command for the card (rides on its next ack)."""

    at: float
    device: str
    alert_id: str
    prompt_id: int
    timeout_s: int


Action = Notify | SendCheckin


def distance_m(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    """Metres between two points (equirectangular: exact enough within a few kilometres)."""
    dy = (lat2 - lat1) * _M_PER_DEG
    dx = (lon2 - lon1) * _M_PER_DEG * math.cos(math.radians((lat1 + lat2) * 0.5))
    return math.hypot(dx, dy)


def fix_radius_m(hdop: float | None, settings: DeviceSettings) -> float:
    """The accuracy radius of a fix: HDOP x the receiver error figure, at least the floor."""
    if hdop is None:
        return settings.unknown_accuracy_m
    return max(settings.radius_floor_m, hdop * settings.uere_m)


class Alert:
    __slots__ = ("id", "kind", "state", "step", "opened_at", "next_at", "acked_by",
                 "closed_reason", "prompt_id", "episode", "info")

    def __init__(self, alert_id: str, kind: str, opened_at: float, episode: float | None,
                 info: dict[str, Any]):
        self.id = alert_id
        self.kind = kind
        self.state = "open"
        self.step = ""
        self.opened_at = opened_at
        self.next_at: float | None = None
        self.acked_by: str | None = None
        self.closed_reason: str | None = None
        self.prompt_id: int | None = None
        self.episode = episode
        self.info = info

    def as_dict(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self.__slots__}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "Alert":
        alert = cls(data["id"], data["kind"], data["opened_at"], data["episode"], dict(data["info"]))
        for name in cls.__slots__:
            setattr(alert, name, data[name])
        return alert


class Device:
    """One card's state. None means "not known yet" throughout (no allocation for it)."""

    __slots__ = (
        "id", "settings", "due", "last_rx", "max_counter", "seen",
        "c_lat", "c_lon", "c_w", "c_wr", "p_lat", "p_lon", "p_r", "p_t",
        "move_t", "ev_t", "gap_s", "charging", "charge_t", "chg_since",
        "batt_pct", "batt_low", "power", "rssi", "motion_t", "count_t", "sensor", "alerts",
        "ep_inactivity", "ep_offline", "ep_not_worn", "ep_not_charged", "prompt_seq",
    )

    def __init__(self, device_id: str, settings: DeviceSettings):
        self.id = device_id
        self.settings = settings
        self.due: float | None = None
        self.last_rx: float | None = None
        self.max_counter: int | None = None
        self.seen = 0  # bit i: counter max_counter - i was seen
        self.c_lat: float | None = None  # stay centre (weighted mean of its fixes)
        self.c_lon: float | None = None
        self.c_w = 0.0  # sum of weights (1 / radius^2)
        self.c_wr = 0.0  # sum of weight x radius: the centre's own radius is c_wr / c_w
        self.p_lat: float | None = None  # a fix outside the stay, not yet confirmed
        self.p_lon: float | None = None
        self.p_r = 0.0
        self.p_t: float | None = None
        self.move_t: float | None = None  # last movement (or start of what we know)
        self.ev_t: float | None = None  # newest evidence of stillness
        self.gap_s = 0.0  # unknown time (gaps, charging) inside the current stay
        self.charging = False
        self.charge_t: float | None = None  # last time seen charging (or first seen)
        self.chg_since: float | None = None
        self.batt_pct: int | None = None
        self.batt_low = False
        self.power: str | None = None
        self.rssi: int | None = None
        self.motion_t: float | None = None
        self.count_t: float | None = None  # movement dated by a status's motion count (at its time)
        # the card has a motion sensor: what its hello or statuses said (None: the settings' motion_sensor)
        self.sensor: bool | None = None
        self.alerts: list[Alert] | None = None
        self.ep_inactivity: float | None = None
        self.ep_offline: float | None = None
        self.ep_not_worn: float | None = None
        self.ep_not_charged: float | None = None
        self.prompt_seq = 0

    def has_sensor(self) -> bool:
        return self.settings.motion_sensor if self.sensor is None else self.sensor

    def open_alert(self, kind: str) -> Alert | None:
        if self.alerts:
            for alert in self.alerts:
                if alert.kind == kind:
                    return alert
        return None


# "YYYY-MM-DDTHH:MM" -> Unix seconds of that minute (bounded: cleared when full)
_MINUTE: dict[str, int] = {}


# the last texts read -> their Unix seconds (bounded: cleared when full). Frames of one wake of
# the receiver share their received_at, and cards' clocks share their seconds, so most of an
# event's times were read a moment ago.
_SEEN: dict[str, float] = {}


def _t(text: Any) -> float | None:
    """An event's ISO time -> Unix seconds; None when null or not a time. The texts the receiver
    writes ("...:SSZ", "...:SS.mmmZ") take a fast path through a cache of their minute."""
    if type(text) is str:
        seen = _SEEN.get(text)
        if seen is not None:
            return seen
        value = _t_uncached(text)
        if value is not None:
            if len(_SEEN) >= 4096:
                _SEEN.clear()
            _SEEN[text] = value
        return value
    return _t_uncached(text)


def _t_uncached(text: Any) -> float | None:
    if type(text) is str and text[-1:] == "Z" and len(text) in (20, 24) and text[16:17] == ":":
        minute = _MINUTE.get(text[:16])
        seconds = text[17:19]
        if minute is not None and seconds.isdigit():
            if len(text) == 20:
                return float(minute + int(seconds))
            millis = text[20:23]
            if text[19] == "." and millis.isdigit():
                return (minute + int(seconds)) + int(millis) / 1000
    if text is None:
        return None
    try:
        value = parse_iso_utc(text)
    except (TypeError, ValueError, IndexError, AttributeError):
        return None
    if type(text) is str and text[-1:] == "Z" and len(text) in (20, 24) and text[16:17] == ":":
        if len(_MINUTE) >= 8192:
            _MINUTE.clear()
        _MINUTE[text[:16]] = int(value) - int(value) % 60
    return value


# An event's time text -> Unix seconds, as the engine reads it (for a driver advancing its clock)
event_seconds = _t


class Engine:
    """feed(event) and advance(now) -> actions; acknowledge(alert_id, by, now) -> actions."""

    def __init__(self, settings: Settings | None = None):
        self.settings = settings or Settings()
        self.devices: dict[str, Device] = {}
        self.now = 0.0
        self._heap: list[tuple[float, str]] = []
        self._open: dict[str, Device] = {}  # alert id -> its device (open or acknowledged alerts)
        # cards taken out of the registry (a `registry` "removed" event) -> when: not judged
        # until a `registry` "added" event
        self.removed: dict[str, float] = {}
        self.ignored_removed = 0  # events of removed cards
        self.rejected = 0  # events that were not of the schema
        self.duplicates = 0
        # devices whose state changed since the caller last took them (take_dirty): what a
        # durable driver writes back with its cursor
        self.dirty: set[str] = set()

    # --- input ---------------------------------------------------------------------------

    def feed(self, event: Mapping[str, Any], now: float | None = None) -> list[Action]:
        """One event of the log. `now` defaults to the event's received_at (never backwards).

        Alert events (the engine's own output) are ignored; an event that is not of the schema
        raises EngineError (counted in `rejected`) and changes nothing. A `registry` event
        "removed" closes the card's alerts (reason "removed") and forgets it: its events are
        ignored until a `registry` event "added", after which it is judged from fresh."""
        try:
            kind = event["kind"]
            if kind == "alert":
                return []
            device_id = event["device"]
            counter = event["counter"]
            data = event["data"]
            rx = _t(event["received_at"])
        except (KeyError, TypeError):
            self.rejected += 1
            raise EngineError(f"event {_describe(event)}: not an event of the schema "
                              "(kind, device, counter, received_at, data)") from None
        if rx is None or type(device_id) is not str or (type(data) is not dict and not isinstance(data, Mapping)):
            self.rejected += 1
            raise EngineError(f"event {_describe(event)}: bad received_at, device or data")
        if now is None or now < rx:
            now = rx
        if now > self.now:
            self.now = now
        now = self.now
        if kind == REGISTRY_KIND:
            return self._registry(device_id, data, event, now)
        dev = self.devices.get(device_id)
        if dev is None:
            if device_id in self.removed:
                self.ignored_removed += 1
                return []
            dev = self.devices[device_id] = Device(device_id, self.settings.for_device(device_id))
        if type(counter) is int and self._seen(dev, counter):
            self.duplicates += 1
            return []
        t = _t(event.get("time"))
        if t is None or t > rx + 300:  # clock not synced, or a card clock ahead of the host's
            t = rx
        out: list[Action] = []
        if dev.last_rx is None or rx > dev.last_rx:
            dev.last_rx = rx
        # what came before the first frame heard is unknown: the clocks of "not charged" and
        # "no motion" start when the card is first heard, not at its (possibly old) data
        if dev.charge_t is None:
            dev.charge_t = rx
        if dev.motion_t is None:
            dev.motion_t = rx
        offline = dev.open_alert("offline")
        if offline is not None:
            self._close(dev, offline, "reconnected", now, out)
        handler = _HANDLERS.get(kind)
        if handler is not None:
            handler(self, dev, t, data, event, now, out)
        self._evaluate(dev, now, out)
        return out

    def _registry(self, device_id: str, data: Mapping[str, Any], event: Mapping[str, Any],
                  now: float) -> list[Action]:
        change = data.get("change")
        out: list[Action] = []
        if change == "removed":
            dev = self.devices.pop(device_id, None)
            if dev is not None:
                for alert in list(dev.alerts or ()):
                    self._close(dev, alert, "removed", now, out)
            self.removed[device_id] = now
            self.dirty.add(device_id)
        elif change == "added":
            if self.removed.pop(device_id, None) is not None:
                self.dirty.add(device_id)
        else:
            self.rejected += 1
            raise EngineError(f"event {_describe(event)}: registry change {change!r} is not one of "
                              f"{', '.join(REGISTRY_CHANGES)}")
        return out

    def advance(self, now: float) -> list[Action]:
        """Fire every wake-up due at or before `now` (the engine's clock never goes back)."""
        if now > self.now:
            self.now = now
        out: list[Action] = []
        heap = self._heap
        devices = self.devices
        while heap and heap[0][0] <= now:
            due, device_id = heapq.heappop(heap)
            dev = devices.get(device_id)
            if dev is None or dev.due != due:
                continue  # superseded by an earlier wake-up
            dev.due = None
            self._evaluate(dev, due, out)  # at its own time: virtual time stays exact
        if len(heap) > 2 * len(devices) + 1024:
            self._heap = [(d.due, d.id) for d in devices.values() if d.due is not None]
            heapq.heapify(self._heap)
        return out

    def next_due(self) -> float | None:
        """The earliest pending wake-up (for a driver that sleeps until then)."""
        heap = self._heap
        while heap:
            due, device_id = heap[0]
            dev = self.devices.get(device_id)
            if dev is not None and dev.due == due:
                return due
            heapq.heappop(heap)
        return None

    def acknowledge(self, alert_id: str, by: str, now: float | None = None) -> list[Action]:
        """Someone (`by`: a name, a number, a backend user) acknowledged the alert: its
        escalation stops, and it is never raised again for the same episode. Raises UnknownAlert
        for an id that is not open."""
        dev = self._open.get(alert_id)
        if dev is None:
            raise UnknownAlert(alert_id)
        if now is not None and now > self.now:
            self.now = now
        alert = next(a for a in dev.alerts or () if a.id == alert_id)
        out: list[Action] = []
        if alert.state != "open":
            return out
        alert.state = "acknowledged"
        alert.acked_by = str(by)
        alert.next_at = None
        if alert.kind == "sos":
            self._close(dev, alert, "acknowledgement", self.now, out, step="acknowledged")
        else:
            self._emit(dev, alert, "acknowledged", self.now, out, ())
        self._evaluate(dev, self.now, out)
        return out

    def resolve(self, alert_id: str, by: str, now: float | None = None) -> list[Action]:
        """Someone (`by`) closed the alert by hand (the person is fine, it was dealt with): it
        is resolved with the reason "resolved_by_hand" and never raised again for its episode.
        Raises UnknownAlert for an id that is not open or acknowledged."""
        dev = self._open.get(alert_id)
        if dev is None:
            raise UnknownAlert(alert_id)
        if now is not None and now > self.now:
            self.now = now
        alert = next(a for a in dev.alerts or () if a.id == alert_id)
        out: list[Action] = []
        alert.info["resolved_by"] = str(by)
        self._close(dev, alert, "resolved_by_hand", self.now, out)
        self._evaluate(dev, self.now, out)
        return out

    def update_settings(self, settings: Settings) -> list[Action]:
        """New settings (the registry's changed): every device is judged again with its own, at
        the engine's now; what becomes due by then comes out."""
        self.settings = settings
        out: list[Action] = []
        for dev in self.devices.values():
            dev.settings = settings.for_device(dev.id)
            dev.due = None  # its wake-up is computed again with the new settings
            self._evaluate(dev, self.now, out)
        return out

    def take_dirty(self) -> set[str]:
        """The devices whose state changed since the last call (and forget them)."""
        dirty, self.dirty = self.dirty, set()
        return dirty

    def open_alerts(self) -> list[dict[str, Any]]:
        return [dict(a.as_dict(), device=d.id) for d in self.devices.values() for a in d.alerts or ()]

    # --- duplicates ----------------------------------------------------------------------

    @staticmethod
    def _seen(dev: Device, counter: int) -> bool:
        top = dev.max_counter
        if top is None or counter > top:
            shift = 64 if top is None else counter - top
            dev.seen = ((dev.seen << shift) | 1) & 0xFFFFFFFFFFFFFFFF if shift < 64 else 1
            dev.max_counter = counter
            return False
        back = top - counter
        if back >= 64:
            return False  # too old to remember: judged again (every handler tolerates old data)
        bit = 1 << back
        if dev.seen & bit:
            return True
        dev.seen |= bit
        return False

    # --- evidence ------------------------------------------------------------------------

    def _movement(self, dev: Device, t: float, now: float, out: list[Action]) -> None:
        if dev.move_t is not None and t < dev.move_t:
            return
        dev.move_t = t
        dev.ev_t = t
        dev.gap_s = 0.0
        if dev.alerts:
            alert = dev.open_alert("inactivity")
            if alert is not None:
                self._close(dev, alert, "movement", now, out)

    def _still(self, dev: Device, t: float) -> None:
        if dev.move_t is None:
            dev.move_t = dev.ev_t = t
            return
        if t < dev.move_t:
            return
        ev = dev.ev_t if dev.ev_t is not None else dev.move_t
        if t > ev:
            if t - ev > dev.settings.stillness_gap_s:
                dev.gap_s += t - ev  # a gap in the data is unknown time, never stillness
            dev.ev_t = t

    def _fix(self, dev: Device, t: float, lat: float, lon: float, radius: float, poor: bool,
             now: float, out: list[Action]) -> None:
        if dev.charging:
            return  # on the charger: where the card lies says nothing about the person
        if dev.move_t is not None and t < dev.move_t:
            return
        w = 1.0 / (radius * radius)
        if dev.c_lat is None:
            self._new_stay(dev, lat, lon, radius, w)
            self._still(dev, t)
            return
        c_r = dev.c_wr / dev.c_w
        d = distance_m(dev.c_lat, dev.c_lon, lat, lon)
        if d <= radius + c_r:
            total = dev.c_w + w
            dev.c_lat += (lat - dev.c_lat) * w / total
            dev.c_lon += (lon - dev.c_lon) * w / total
            dev.c_w = total
            dev.c_wr += w * radius
            dev.p_t = None
            self._still(dev, t)
            return
        if not poor and d > 2.0 * (radius + c_r):
            self._new_stay(dev, lat, lon, radius, w)
            self._movement(dev, t, now, out)
            return
        if dev.p_t is not None and distance_m(dev.p_lat, dev.p_lon, lat, lon) <= radius + dev.p_r:
            # two fixes agree outside the stay: the card moved there by the first of them
            moved_at = dev.p_t
            p_w = 1.0 / (dev.p_r * dev.p_r)
            self._new_stay(dev, dev.p_lat, dev.p_lon, dev.p_r, p_w)
            total = p_w + w
            dev.c_lat += (lat - dev.c_lat) * w / total
            dev.c_lon += (lon - dev.c_lon) * w / total
            dev.c_w = total
            dev.c_wr += w * radius
            self._movement(dev, moved_at, now, out)
            self._still(dev, t)
            return
        # an outlier (poor HDOP, or just outside): unknown until a second fix confirms it
        dev.p_lat, dev.p_lon, dev.p_r, dev.p_t = lat, lon, radius, t

    @staticmethod
    def _new_stay(dev: Device, lat: float, lon: float, radius: float, w: float) -> None:
        dev.c_lat, dev.c_lon, dev.c_w, dev.c_wr = lat, lon, w, w * radius
        dev.p_t = None

    def _charging(self, dev: Device, on: bool, t: float, now: float, out: list[Action]) -> None:
        if on:
            dev.charge_t = t if dev.charge_t is None or t > dev.charge_t else dev.charge_t
            if not dev.charging:
                dev.charging = True
                dev.chg_since = t
                self._still(dev, t)
            dev.batt_low = False
            for kind in ("low_battery", "not_charged"):
                alert = dev.open_alert(kind)
                if alert is not None:
                    self._close(dev, alert, "charging", now, out)
        elif dev.charging:
            dev.charging = False
            dev.chg_since = None
            dev.gap_s = 0.0
            self._movement(dev, t, now, out)  # someone took the card off the charger
            alert = dev.open_alert("card_not_worn")
            if alert is not None:
                self._close(dev, alert, "worn", now, out)

    def _low(self, dev: Device, t: float, now: float, out: list[Action], why: str) -> None:
        if dev.batt_low or dev.charging:
            return
        dev.batt_low = True
        alert = self._raise(dev, "low_battery", now, None,
                            {"reason": why, "battery_pct": dev.batt_pct, "since": iso_utc(t)}, out)
        alert.next_at = now + dev.settings.low_battery_reminder

    # --- handlers, by event kind -----------------------------------------------------------

    def _on_position(self, dev: Device, t: float, data: Mapping[str, Any], event: Mapping[str, Any],
                     now: float, out: list[Action]) -> None:
        lat, lon, age = data.get("lat"), data.get("lon"), data.get("fix_age_s")
        if lat is None or lon is None or age is None or data.get("fix") == "none":
            return  # a lost fix is unknown
        hdop = data.get("hdop")
        radius, poor = fix_radius_m(hdop, dev.settings), hdop is None or hdop >= dev.settings.poor_hdop
        if data.get("source") == "held":
            # the card re-sent its last fix because its sensor saw no motion since: no new
            # observation, so never movement (not even as the second fix that confirms an
            # outlier), and only a start for a stay not known yet; the sensor's "no motion
            # since" is stillness evidence up to this report, as a status with no motion is
            if dev.charging:
                return
            dev.sensor = True  # a card holds fixes only with a sensor
            fix_t = t - age
            if dev.c_lat is None:
                self._fix(dev, fix_t, lat, lon, radius, poor, now, out)
            if dev.count_t is not None and dev.move_t == dev.count_t and fix_t < dev.move_t:
                # a status counted motion since the one before and was dated at its own time; no
                # motion since this fix, says the sensor: that motion came before the fix
                dev.move_t = dev.count_t = fix_t
            self._still(dev, t)
            return
        self._fix(dev, t - age, lat, lon, radius, poor, now, out)

    def _on_track(self, dev: Device, t: float, data: Mapping[str, Any], event: Mapping[str, Any],
                  now: float, out: list[Action]) -> None:
        radius = dev.settings.unknown_accuracy_m
        for point in data.get("points") or ():
            pt = _t(point.get("time"))
            if pt is None or point.get("lat") is None or point.get("lon") is None:
                continue
            self._fix(dev, pt, point["lat"], point["lon"], radius, True, now, out)

    def _on_status(self, dev: Device, t: float, data: Mapping[str, Any], event: Mapping[str, Any],
                   now: float, out: list[Action]) -> None:
        pct = data.get("battery_pct")
        if pct is not None:
            dev.batt_pct = pct
        if data.get("rssi_dbm") is not None:
            dev.rssi = data["rssi_dbm"]
        self._charging(dev, data.get("charging") in ("charging", "full"), t, now, out)
        motion = data.get("motion_count")
        if motion is None and "motion_count" in data:
            dev.sensor = False  # unknown motion count: the card has no sensor (protocol v3)
        if motion:
            dev.motion_t = t if dev.motion_t is None or t > dev.motion_t else dev.motion_t
            self._movement(dev, t, now, out)
            if dev.move_t == t:
                dev.count_t = t
            alert = dev.open_alert("card_not_worn")
            if alert is not None and not dev.charging:
                self._close(dev, alert, "worn", now, out)
        elif motion == 0 and dev.has_sensor() and not dev.charging:
            self._still(dev, t)
        if pct is not None and not dev.charging:
            if pct <= dev.settings.low_battery_pct:
                self._low(dev, t, now, out, "battery_pct")
            elif dev.batt_low:
                # recovered (charged unseen): 10 points above the threshold, or above what the
                # card said when it reported low by its own (voltage) threshold
                alert = dev.open_alert("low_battery")
                floor = dev.settings.low_battery_pct
                at_low = alert.info.get("battery_pct") if alert is not None else None
                if type(at_low) is int and at_low > floor:
                    floor = at_low
                if pct > floor + 10:
                    dev.batt_low = False
                    if alert is not None:
                        self._close(dev, alert, "charging", now, out)

    def _on_power(self, dev: Device, t: float, data: Mapping[str, Any], event: Mapping[str, Any],
                  now: float, out: list[Action]) -> None:
        what = data.get("event")
        dev.power = what
        if data.get("battery_pct") is not None:
            dev.batt_pct = data["battery_pct"]
        if what in ("charger_connected", "charger_full"):
            self._charging(dev, True, t, now, out)
        elif what == "charger_removed":
            self._charging(dev, False, t, now, out)
        elif what in ("low", "critical", "shutdown"):
            self._low(dev, t, now, out, what)

    def _on_hello(self, dev: Device, t: float, data: Mapping[str, Any], event: Mapping[str, Any],
                  now: float, out: list[Action]) -> None:
        sensor = data.get("motion_sensor")
        if sensor == "none":
            dev.sensor = False
        elif sensor not in (None, "unknown"):  # a sensor by name ("unknown": a v2 card did not say)
            dev.sensor = True

    def _on_activity(self, dev: Device, t: float, data: Mapping[str, Any], event: Mapping[str, Any],
                     now: float, out: list[Action]) -> None:
        self._movement(dev, t, now, out)  # a key press: the person is there and able

    def _on_checkin(self, dev: Device, t: float, data: Mapping[str, Any], event: Mapping[str, Any],
                    now: float, out: list[Action]) -> None:
        answer = data.get("answer")
        alert = dev.open_alert("inactivity")
        if alert is not None and alert.prompt_id != data.get("prompt_id"):
            alert = None
        if answer == "no_response":
            if alert is not None and alert.state == "open" and alert.step == "checkin":
                alert.next_at = now  # nobody answered at the card: the family now
            return
        if alert is not None:
            self._close(dev, alert, "checkin", now, out)
        self._movement(dev, t, now, out)
        if answer == "help":
            self._raise_sos(dev, t, now, {"trigger": "checkin_help", "event": event.get("id")}, out)

    def _on_sos(self, dev: Device, t: float, data: Mapping[str, Any], event: Mapping[str, Any],
                now: float, out: list[Action]) -> None:
        details = {"trigger": data.get("trigger"), "event": event.get("id"), "sos_time": iso_utc(t),
                   "lat": data.get("lat"), "lon": data.get("lon"), "battery_pct": data.get("battery_pct")}
        self._raise_sos(dev, t, now, details, out)

    def _raise_sos(self, dev: Device, t: float, now: float, details: dict[str, Any],
                   out: list[Action]) -> None:
        # never merged: every SOS is an alert of its own, notified to everyone at once
        alert = self._raise(dev, "sos", now, None, details, out, first_step="raised",
                            notify=("family", "grid_worker"), origin=t)
        alert.next_at = now + dev.settings.expire_after

    # --- alerts --------------------------------------------------------------------------

    def _raise(self, dev: Device, kind: str, now: float, episode: float | None,
               info: dict[str, Any], out: list[Action], *, first_step: str = "raised",
               notify: tuple[str, ...] = ("family",), origin: float | None = None) -> Alert:
        alert_id = f"{dev.id}-alert-{kind}-{round((origin if origin is not None else now) * 1000)}"
        while alert_id in self._open:
            alert_id += "+"
        alert = Alert(alert_id, kind, now, episode, info)
        if dev.alerts is None:
            dev.alerts = []
        dev.alerts.append(alert)
        self._open[alert_id] = dev
        if first_step == "checkin":
            dev.prompt_seq = dev.prompt_seq % 65535 + 1
            alert.prompt_id = dev.prompt_seq
            out.append(SendCheckin(now, dev.id, alert_id, alert.prompt_id, dev.settings.checkin_timeout))
        self._emit(dev, alert, first_step, now, out, notify)
        return alert

    def _emit(self, dev: Device, alert: Alert, step: str, now: float, out: list[Action],
              notify: tuple[str, ...]) -> None:
        if step not in ("acknowledged", "resolved"):
            alert.step = step
        recipients: tuple[str, ...] = ()
        s = dev.settings
        for who in notify:
            recipients += s.family if who == "family" else s.grid_worker if who == "grid_worker" else ()
        details = dict(alert.info)
        details["opened_at"] = iso_utc(alert.opened_at)
        if s.name:
            details["name"] = s.name
        if alert.prompt_id is not None:
            details["prompt_id"] = alert.prompt_id
        if alert.acked_by is not None:
            details["acknowledged_by"] = alert.acked_by
        if alert.closed_reason is not None:
            details["closed_reason"] = alert.closed_reason
        out.append(Notify(now, dev.id, alert.kind, alert.id, step, alert.state, notify, recipients, details))

    def _close(self, dev: Device, alert: Alert, reason: str, now: float, out: list[Action], *,
               step: str = "resolved") -> None:
        alert.state = "resolved"
        alert.closed_reason = reason
        alert.next_at = None
        if dev.alerts is not None:
            dev.alerts = [a for a in dev.alerts if a is not alert] or None
        self._open.pop(alert.id, None)
        self._emit(dev, alert, step, now, out, ())

    def _escalate(self, dev: Device, alert: Alert, now: float, out: list[Action]) -> None:
        s = dev.settings
        if alert.kind == "inactivity" and alert.step == "checkin":
            alert.next_at = now + s.family_window
            self._emit(dev, alert, "family", now, out, NOTIFY["family"])
        elif alert.kind == "inactivity" and alert.step == "family":
            alert.next_at = now + s.expire_after
            self._emit(dev, alert, "grid_worker", now, out, NOTIFY["grid_worker"])
        elif alert.kind == "low_battery":
            alert.next_at = now + s.low_battery_reminder
            self._emit(dev, alert, "reminder", now, out, ("family",))
        else:
            self._close(dev, alert, "timeout", now, out)

    # --- the clock -----------------------------------------------------------------------

    def _evaluate(self, dev: Device, now: float, out: list[Action]) -> None:
        """Raise or escalate whatever is due for `dev` at `now`; schedule its next wake-up."""
        self.dirty.add(dev.id)
        s = dev.settings
        nxt = math.inf
        if dev.alerts:
            for alert in list(dev.alerts):
                if alert.next_at is not None and alert.next_at <= now and alert.state == "open":
                    self._escalate(dev, alert, now, out)
                if alert.next_at is not None and alert.next_at < nxt:
                    nxt = alert.next_at
        # inactivity
        if dev.move_t is not None and not dev.charging and dev.ep_inactivity != dev.move_t \
                and (dev.alerts is None or dev.open_alert("inactivity") is None):
            fresh_until = (dev.ev_t if dev.ev_t is not None else dev.move_t) + s.stillness_gap_s
            if fresh_until >= now:
                threshold = s.stillness_threshold
                if s.home is not None and dev.c_lat is not None and \
                        distance_m(s.home[0], s.home[1], dev.c_lat, dev.c_lon) > s.home_radius_m:
                    threshold = s.away_stillness_threshold
                due = dev.move_t + dev.gap_s + threshold
                if _asleep(s, due):
                    due = _sleep_end(s, due)
                if due <= now and _asleep(s, now):
                    due = _sleep_end(s, now)
                if due <= now:
                    dev.ep_inactivity = dev.move_t
                    still_s = now - dev.move_t - dev.gap_s
                    info = {"still_since": iso_utc(dev.move_t), "still_s": round(still_s),
                            "threshold_s": threshold, "lat": dev.c_lat, "lon": dev.c_lon,
                            "newest_data": iso_utc(dev.ev_t if dev.ev_t is not None else dev.move_t)}
                    alert = self._raise(dev, "inactivity", now, dev.move_t, info, out,
                                        first_step="checkin", notify=NOTIFY["checkin"])
                    alert.next_at = now + s.checkin_window
                    if alert.next_at < nxt:
                        nxt = alert.next_at
                else:
                    if due < nxt:
                        nxt = due
        # offline
        if dev.last_rx is not None and dev.ep_offline != dev.last_rx:
            due = dev.last_rx + s.offline_after_s
            if due <= now:
                dev.ep_offline = dev.last_rx
                low = dev.batt_low or dev.power in ("low", "critical", "shutdown") or (
                    dev.batt_pct is not None and dev.batt_pct <= s.low_battery_pct)
                self._raise(dev, "offline", now, dev.last_rx,
                            {"reason": "battery_low" if low else "coverage_lost",
                             "last_frame": iso_utc(dev.last_rx), "battery_pct": dev.batt_pct,
                             "rssi_dbm": dev.rssi}, out)
            else:
                if due < nxt:
                    nxt = due
        # not charged for days
        if dev.charge_t is not None and not dev.charging and dev.ep_not_charged != dev.charge_t:
            due = dev.charge_t + s.not_charged
            if due <= now:
                dev.ep_not_charged = dev.charge_t
                self._raise(dev, "not_charged", now, dev.charge_t,
                            {"last_charged": iso_utc(dev.charge_t), "battery_pct": dev.batt_pct}, out)
            else:
                if due < nxt:
                    nxt = due
        # card not worn: on the charger long into the day, or no motion for a day (with a sensor)
        if dev.alerts is None or dev.open_alert("card_not_worn") is None:
            if dev.charging and dev.chg_since is not None and dev.ep_not_worn != dev.chg_since:
                start = _sleep_end(s, dev.chg_since) if _asleep(s, dev.chg_since) else dev.chg_since
                due = start + s.on_charger_daytime
                if due <= now and not _asleep(s, now):
                    dev.ep_not_worn = dev.chg_since
                    self._raise(dev, "card_not_worn", now, dev.chg_since,
                                {"reason": "on_charger", "since": iso_utc(dev.chg_since)}, out)
                else:
                    later = due if due > now else _sleep_end(s, now)
                    if later < nxt:
                        nxt = later
            elif dev.has_sensor() and not dev.charging and dev.motion_t is not None \
                    and dev.ep_not_worn != dev.motion_t and dev.last_rx is not None:
                due = dev.motion_t + s.not_worn
                if due <= now and now - dev.last_rx <= s.offline_after_s:
                    dev.ep_not_worn = dev.motion_t
                    self._raise(dev, "card_not_worn", now, dev.motion_t,
                                {"reason": "no_motion", "since": iso_utc(dev.motion_t)}, out)
                elif due > now:
                    if due < nxt:
                        nxt = due
        if nxt != math.inf and (dev.due is None or nxt < dev.due):
            dev.due = nxt
            heapq.heappush(self._heap, (nxt, dev.id))

    # --- state ---------------------------------------------------------------------------

    def to_state(self) -> dict[str, Any]:
        """Everything the engine knows, as JSON-able data (`from_state` restores it)."""
        devices = {device_id: self.device_state(device_id) for device_id in [*self.devices, *self.removed]}
        return {"version": STATE_VERSION, "now": self.now, "devices": devices}

    def device_state(self, device_id: str) -> dict[str, Any]:
        """One device's state as JSON-able data (`restore` takes it back); a removed card's is
        {"removed": when}. Raises KeyError for a device the engine does not know."""
        dev = self.devices.get(device_id)
        if dev is None:
            return {"removed": self.removed[device_id]}
        row = dict(zip(_STATE_NAMES, _state_values(dev)))
        row["alerts"] = [a.as_dict() for a in dev.alerts or ()]
        return row

    @classmethod
    def from_state(cls, state: Mapping[str, Any], settings: Settings | None = None) -> "Engine":
        if not isinstance(state, Mapping) or state.get("version") != STATE_VERSION:
            raise EngineError(f"engine state: expected version {STATE_VERSION}, got "
                              f"{state.get('version') if isinstance(state, Mapping) else state!r}")
        return cls.restore(float(state["now"]), state["devices"], settings)

    @classmethod
    def restore(cls, now: float, devices: Mapping[str, Mapping[str, Any]],
                settings: Settings | None = None) -> "Engine":
        """An engine at clock `now` with these devices' states (device_state rows); their
        wake-ups are scheduled again. Raises EngineError for a row it cannot use."""
        engine = cls(settings)
        engine.now = float(now)
        for device_id, row in devices.items():
            if isinstance(row, Mapping) and row.keys() == {"removed"}:
                engine.removed[device_id] = float(row["removed"])
                continue
            dev = engine.devices[device_id] = Device(device_id, engine.settings.for_device(device_id))
            try:
                for name, value in row.items():
                    if name != "alerts":
                        setattr(dev, name, value)
                dev.alerts = [Alert.from_dict(a) for a in row["alerts"]] or None
            except (KeyError, TypeError, AttributeError, ValueError) as exc:
                raise EngineError(f"engine state of device {device_id}: {exc!r}") from None
            for alert in dev.alerts or ():
                engine._open[alert.id] = dev
            engine._evaluate(dev, engine.now, [])
        engine.dirty.clear()
        return engine


# A device's saved state: every slot but those rebuilt on restore (id, settings, due) and the
# alerts (saved as a list of their own); read with one attrgetter call (a state per device and
# step is the engine's commit's main cost).
_STATE_NAMES = tuple(name for name in Device.__slots__ if name not in ("id", "settings", "due", "alerts"))
_state_values = operator.attrgetter(*_STATE_NAMES)


def _local_s(s: DeviceSettings, t: float) -> float:
    return (t + s.utc_offset) % _DAY


def _asleep(s: DeviceSettings, t: float) -> bool:
    """Inside the sleeping hours: from bedtime to the usual waking time plus the grace."""
    local = _local_s(s, t)
    start, end = s.bedtime, (s.wake + s.wake_grace) % _DAY
    if start > end:
        return local >= start or local < end
    return start <= local < end


def _sleep_end(s: DeviceSettings, t: float) -> float:
    end = (s.wake + s.wake_grace) % _DAY
    return t + ((end - _local_s(s, t)) % _DAY or _DAY)


def _describe(event: Any) -> str:
    if isinstance(event, Mapping):
        return repr(event.get("id", "(no id)"))
    return f"of type {type(event).__name__}"


_HANDLERS = {
    "position": Engine._on_position,
    "track": Engine._on_track,
    "status": Engine._on_status,
    "power": Engine._on_power,
    "call": Engine._on_activity,
    "checkin": Engine._on_checkin,
    "sos": Engine._on_sos,
    "hello": Engine._on_hello,
}


def run_actions(engine: Engine, events: Iterable[Mapping[str, Any]]) -> list[Action]:
    """Feed a whole log in order in virtual time (timers fire between events); for tests."""
    out: list[Action] = []
    for event in events:
        rx = _t(event.get("received_at")) if isinstance(event, Mapping) else None
        if rx is not None:
            out += engine.advance(rx)
        out += engine.feed(event)
    return out
