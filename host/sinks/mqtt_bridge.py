"""The common part of the MQTT bridges (OwnTracks, Home Assistant): an MQTT sink that turns each
event into the messages of another system's format, keeps per-card state (carecard.host.sinks.
cards) and announces every card of the device registry, withdrawing those removed from it.

Everything runs on the sink's one worker thread, so a delivery and a registry check never
interleave. A delivery publishes the messages of a batch and returns once the broker
acknowledged all of them; a failure part-way reports the events whose messages all got through.
The registry is checked before every delivery and, from the first start, every
`registry_poll_s` seconds, so cards added, renamed or removed in the registry appear, change
or disappear without an event of theirs; every card is announced again after a start (a broker
without persistence forgets retained messages). Events of cards not in the registry are not
published (counted): their retained states would stay behind with nothing to remove them.

Keys: the MQTT sink's connection keys (host, port, tls, username, password, client_id,
keepalive, publish_timeout, reconnect_min, reconnect_max), qos (1 or 2), registry_poll_s (5).
"""

from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path
from typing import Any

from carecard.host.sinks.base import SinkError, SinkTable, SinkUnavailable
from carecard.host.sinks.cards import CardRegistry, CardStates, display_name, state_path
from carecard.host.sinks.mqtt import MqttSink, check_topic_prefix, connection_options
from carecard.host.storage import STORE_SQLITE

log = logging.getLogger("carecard.host.sinks")

Message = tuple[str, bytes, bool]  # topic, payload, retained
DEFAULT_REGISTRY_POLL_S = 5.0


def json_payload(value: Any) -> bytes:
    """A message payload: compact JSON, UTF-8, non-ASCII text as is."""
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode("utf-8")


def topic_part(table: SinkTable, key: str, default: str) -> str:
    """A configured topic or topic level: no wildcards, not empty."""
    value = (table.str(key, default) or default).strip("/")
    check_topic_prefix(table, key, value)
    return value


class MqttBridge(MqttSink):
    """Subclasses define `event_messages`, `announce` and `withdraw`."""

    start_at_once = True

    def __init__(self, name: str, *, data_dir: Path, qos: int = 1,
                 registry_poll_s: float = DEFAULT_REGISTRY_POLL_S, store: str = STORE_SQLITE,
                 **connection: Any):
        super().__init__(name, qos=qos, **connection)
        self.registry = CardRegistry(data_dir, store)
        self.states = CardStates(state_path(data_dir, name))
        self.registry_poll_s = registry_poll_s
        self._loaded = False
        self._poller: asyncio.Task[None] | None = None
        self.announcements = 0
        self.withdrawals = 0
        self.unconvertible = 0
        self.unregistered = 0
        # announce every card again at the next registry check (set at start: a broker without
        # persistence may have lost the retained announcements; and when the other side asks)
        self.announce_all = True

    @classmethod
    def bridge_options(cls, table: SinkTable, data_dir: Path) -> dict[str, Any]:
        return {"data_dir": data_dir, "store": table.store, "qos": table.int("qos", 1, minimum=1, maximum=2),
                "registry_poll_s": table.float("registry_poll_s", DEFAULT_REGISTRY_POLL_S,
                                               minimum=0.05, maximum=3600),
                **connection_options(table)}

    # --- what subclasses say --------------------------------------------------------------------

    def event_messages(self, event: dict[str, Any]) -> list[Message]:
        """The messages for one event; `self.states` already holds what the event says."""
        raise NotImplementedError

    def announce(self, device: str, name: str) -> list[Message]:
        """The messages that make a registered card known (with the elder's name)."""
        raise NotImplementedError

    def withdraw(self, device: str) -> list[Message]:
        """The messages that remove a card that left the registry."""
        raise NotImplementedError

    # --- worker thread --------------------------------------------------------------------------

    def _registry_messages(self) -> tuple[list[Message], dict[str, str | None]]:
        """Announcements and withdrawals the registry calls for, and the announced-map changes
        to make once they are acknowledged (None: forget the card)."""
        self.registry.refresh()
        messages: list[Message] = []
        changes: dict[str, str | None] = {}
        again = self.announce_all
        self.announce_all = False
        for device, name in sorted(self.registry.names.items()):
            shown = display_name(device, name)
            if again or self.states.announced.get(device) != shown:
                messages += self.announce(device, shown)
                changes[device] = shown
        for device in sorted(set(self.states.announced) - set(self.registry.names)):
            messages += self.withdraw(device)
            changes[device] = None
        return messages, changes

    def _commit_registry(self, changes: dict[str, str | None]) -> None:
        for device, shown in changes.items():
            if shown is None:
                self.states.forget(device)
                self.withdrawals += 1
                log.info("sink %s: card %s left the registry: withdrawn", self.name, device)
            else:
                self.states.announced[device] = shown
                self.announcements += 1

    def _sync_registry(self) -> None:
        again = self.announce_all
        messages, changes = self._registry_messages()
        if messages:
            try:
                self.publish_messages(messages)
            except SinkError:
                self.announce_all = self.announce_all or again
                raise
            self._commit_registry(changes)
            self.states.save()

    def _deliver_batch(self, events: list[dict[str, Any]]) -> None:
        again = self.announce_all
        registry_messages, changes = self._registry_messages()
        messages = list(registry_messages)
        ends = []  # index just past each event's messages
        # what the states were before the batch: if it fails part-way, only the events delivered
        # count, so a retry never shows an earlier event with a later one's battery level
        before = self.states.snapshot(str(event.get("device")) for event in events)
        for event in events:
            if event.get("device") not in self.registry.names:
                # a card not (or no longer) registered: its retained states would stay forever
                self.unregistered += 1
                ends.append(len(messages))
                continue
            try:
                self.states.apply(event)
                messages += self.event_messages(event)
            except (KeyError, TypeError, ValueError, AttributeError) as exc:
                # not of the event schema (a foreign or hand-edited log): never blocks the rest
                self.unconvertible += 1
                log.error("sink %s: event %s skipped, it cannot be converted (%s: %s): not of the "
                          "event schema?", self.name, event.get("id"), type(exc).__name__, exc)
            ends.append(len(messages))
        try:
            self.publish_messages(messages)
        except SinkError as exc:
            done = exc.delivered
            if done >= len(registry_messages):
                self._commit_registry(changes)
            else:
                self.announce_all = self.announce_all or again
            events_done = sum(1 for end in ends if end <= done)
            self.states.restore(before)
            for event in events[:events_done]:
                if event.get("device") in self.registry.names:
                    try:
                        self.states.apply(event)
                    except (KeyError, TypeError, ValueError, AttributeError):
                        pass  # counted as unconvertible above
            raise SinkUnavailable(str(exc), delivered=events_done) from None
        self._commit_registry(changes)
        self.states.save()

    # --- life cycle -----------------------------------------------------------------------------

    def _load_state(self) -> None:
        if not self._loaded:
            self.states.load()
            self._loaded = True

    async def start(self) -> None:
        await self.run_io(self._load_state)
        await super().start()
        if self._poller is None or self._poller.done():
            self._poller = asyncio.create_task(self._poll_registry(), name=f"carecard-sink-{self.name}-registry")

    async def _poll_registry(self) -> None:
        failing = False
        while True:
            try:
                await self.run_io(self._sync_registry)
                failing = False
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # retried at the next poll (and before every delivery)
                if not failing:
                    log.warning("sink %s: registry changes not published yet: %s", self.name, exc)
                failing = True
            await asyncio.sleep(self.registry_poll_s)

    async def deliver(self, events: list[dict[str, Any]]) -> None:
        await self.run_io(self._deliver_batch, events)

    async def close(self) -> None:
        poller, self._poller = self._poller, None
        if poller is not None:
            poller.cancel()
            await asyncio.gather(poller, return_exceptions=True)
        try:
            await self.run_io(self.registry.close)
        except Exception:  # closing must not raise
            pass
        await super().close()

    def stats(self) -> dict[str, Any]:
        return {**super().stats(), "cards_announced": len(self.states.announced),
                "announcements": self.announcements, "withdrawals": self.withdrawals,
                "unconvertible": self.unconvertible, "unregistered": self.unregistered}
