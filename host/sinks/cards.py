"""What the bridge sinks (Traccar, OwnTracks, Home Assistant) know of a card beyond one event.

An event alone does not say everything a tracking system shows: a position carries no battery
level (the last status does), an alert step says nothing of the card's other alerts, and the
elder's name is in the device registry, not in the events. So each bridge keeps, per card:

- the last known battery percentage and charger state (from status, power and SOS events; an
  unknown value never replaces a known one and is never shown as 0);
- the state of every alert not yet resolved, by alert id, from the engine's `alert` events
  (docs/events.md, Alert vocabulary);
- which cards it has announced (Home Assistant entities, OwnTracks cards), so that a card
  removed from the registry while the receiver was stopped is still withdrawn.

That state is a function of the events delivered so far: every update is "this key now has this
value", so applying a suffix of the log again after a crash (at-least-once delivery) gives the
same state. It is saved in DATA/<sink name>.state.json after every delivered batch.

Names come from the device registry of the receiver's store (the ingest database DATA/carecard.sqlite
read-only, or PostgreSQL), reloaded when its generation changes (every admin change bumps it).
"""

from __future__ import annotations

import copy
import json
import logging
import os
from pathlib import Path
from typing import Any, Iterable, Mapping

from carecard.host.engine.core import fix_radius_m
from carecard.host.engine.settings import DeviceSettings
from carecard.host.events import ALERT_KIND, NO_FIX
from carecard.host.sinks.base import SinkError
from carecard.host.storage import STORE_SQLITE, RegistryReader, StoreError, registry_reader_for
from carecard.host.timefmt import parse_iso_utc

log = logging.getLogger("carecard.host.sinks")

STATE_VERSION = 1
OPEN = "open"
RESOLVED = "resolved"
OFFLINE_ALERT = "offline"
SOS_ALERT = "sos"

# The engine's accuracy radius of a fix (HDOP x receiver error, at least its floor), with the
# engine's default settings: the bridges report the same accuracy the engine judges stillness by.
_DEFAULT_SETTINGS = DeviceSettings()


def accuracy_m(hdop: float | None) -> float:
    """The accuracy radius in metres of a fix with this HDOP (None: unknown HDOP)."""
    return fix_radius_m(hdop, _DEFAULT_SETTINGS)


def state_path(data_dir: Path | str, sink_name: str) -> Path:
    """Where a bridge sink keeps its card state."""
    return Path(data_dir) / f"{sink_name}.state.json"


def event_unix(event: Mapping[str, Any]) -> float:
    """When the event happened, in Unix seconds: the card's time, or when the host received it
    when the card's clock was not synced."""
    return parse_iso_utc(event.get("time") or event["received_at"])


def has_fix(data: Mapping[str, Any]) -> bool:
    """The message carries a usable position."""
    return data.get("fix") != NO_FIX and data.get("lat") is not None and data.get("lon") is not None


def fix_unix(event: Mapping[str, Any]) -> float:
    """When the position of a position or SOS event was fixed: the message time less the fix's
    age when it is known."""
    age = event["data"].get("fix_age_s")
    return event_unix(event) - (age if isinstance(age, int) else 0)


def display_name(device: str, name: str | None) -> str:
    """The elder's name, or the card's IMEI when the registry has no name."""
    return name.strip() if name and name.strip() else f"CareCard {device}"


class CardRegistry:
    """The elder's name of every registered card, read through the store's registry reader
    (storage.RegistryReader: the ingest database read-only, or PostgreSQL). `refresh()` (worker
    thread) reloads when the registry generation changed and says whether it did."""

    def __init__(self, data_dir: Path | str, store: str = STORE_SQLITE):
        self.data_dir = Path(data_dir)
        self.store = store
        self._reader: RegistryReader | None = None
        self.generation: int | None = None
        self.names: dict[str, str] = {}

    def refresh(self) -> bool:
        try:
            if self._reader is None:
                self._reader = registry_reader_for(self.store, self.data_dir)
            generation = self._reader.generation()
            if generation == self.generation:
                return False
            devices = self._reader.load_devices()
        except StoreError as exc:
            self.close()
            raise SinkError(str(exc)) from None
        # a row without a name is not a registered card (the ingest keeps rows of keyed devices)
        self.names = {str(device): record.name for device, record in devices.items() if record.name.strip()}
        self.generation = generation
        return True

    def close(self) -> None:
        reader, self._reader = self._reader, None
        if reader is not None:
            reader.close()


class CardStates:
    """Per card: last known battery and charger state, alerts not yet resolved; plus the cards
    announced. Persisted as JSON (see the module docstring)."""

    def __init__(self, path: Path):
        self.path = path
        self.cards: dict[str, dict[str, Any]] = {}
        self.announced: dict[str, str] = {}  # device -> the name it was announced with
        self.ignored_alerts = 0

    # --- persistence ----------------------------------------------------------------------------

    def load(self) -> None:
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            return
        except OSError as exc:
            raise SinkError(f"cannot read the bridge state {self.path}: {exc.strerror}") from None
        try:
            document = json.loads(raw)
            if document.get("version") != STATE_VERSION:
                raise ValueError(f"version {document.get('version')!r}, expected {STATE_VERSION}")
            cards = document["cards"]
            announced = document["announced"]
            if not isinstance(cards, dict) or not isinstance(announced, dict):
                raise ValueError("cards and announced must be objects")
        except (ValueError, KeyError, AttributeError) as exc:
            # Derived data only: the events rebuild it; the unreadable file is kept for a look.
            aside = self.path.with_suffix(".unreadable.json")
            log.error("bridge state %s is unreadable (%s): moved to %s; battery levels and open "
                      "alerts are rebuilt from the events delivered from now on", self.path, exc, aside)
            try:
                os.replace(self.path, aside)
            except OSError:
                pass
            return
        self.cards = cards
        self.announced = announced

    def save(self) -> None:
        document = {"version": STATE_VERSION, "cards": self.cards, "announced": self.announced}
        data = json.dumps(document, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
        temporary = self.path.with_suffix(".tmp")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with open(temporary, "wb") as out:
                out.write(data)
                out.flush()
                os.fsync(out.fileno())
            os.replace(temporary, self.path)
        except OSError as exc:
            raise SinkError(f"cannot write the bridge state {self.path}: {exc.strerror}") from None

    # --- updates --------------------------------------------------------------------------------

    def card(self, device: str) -> dict[str, Any]:
        return self.cards.setdefault(device, {"battery_pct": None, "charging": None, "alerts": {}})

    def apply(self, event: Mapping[str, Any]) -> None:
        """Take what the event says about its card."""
        card = self.card(event["device"])
        data = event.get("data") or {}
        battery = data.get("battery_pct")
        if isinstance(battery, int) and not isinstance(battery, bool):
            card["battery_pct"] = battery
        if event["kind"] == "status" and isinstance(data.get("charging"), str):
            card["charging"] = data["charging"]
        if event["kind"] == ALERT_KIND:
            details = data.get("details") or {}
            alert_id, state = details.get("alert_id"), details.get("state")
            if not isinstance(alert_id, str) or not isinstance(state, str):
                self.ignored_alerts += 1  # not of the alert vocabulary: no state to follow
                return
            if state == RESOLVED:
                card["alerts"].pop(alert_id, None)
            else:
                card["alerts"][alert_id] = {"kind": data.get("alert"), "state": state,
                                            "step": details.get("step"),
                                            "opened_at": details.get("opened_at")}

    def snapshot(self, devices: Iterable[str]) -> dict[str, Any]:
        """A copy of these cards' state (None: no state yet), for `restore`."""
        return {device: copy.deepcopy(self.cards.get(device)) for device in set(devices)}

    def restore(self, snapshot: Mapping[str, Any]) -> None:
        for device, card in snapshot.items():
            if card is None:
                self.cards.pop(device, None)
            else:
                self.cards[device] = card

    def battery(self, device: str) -> int | None:
        return self.cards.get(device, {}).get("battery_pct")

    def charging(self, device: str) -> str | None:
        return self.cards.get(device, {}).get("charging")

    def alerts(self, device: str) -> dict[str, dict[str, Any]]:
        """Alerts not yet resolved (open or acknowledged), by alert id."""
        return self.cards.get(device, {}).get("alerts", {})

    def needs_checking(self, device: str) -> bool:
        """An alert of the card is open: raised and nobody has acknowledged it yet."""
        return any(alert["state"] == OPEN for alert in self.alerts(device).values())

    def offline(self, device: str) -> bool:
        """The engine's offline alert for the card is not resolved."""
        return any(alert["kind"] == OFFLINE_ALERT for alert in self.alerts(device).values())

    def forget(self, device: str) -> None:
        self.cards.pop(device, None)
        self.announced.pop(device, None)
