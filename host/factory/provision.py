"""Provisioning a flashed card for one elder: its config written on the card by the firmware's
own config.save (validated, temporary file, read back, renamed: a reset leaves the old config or
the new one), read back again with config.load and compared, a fresh per-device key, the frame
counter kept monotonic, and the device registered on the host so a running receiver accepts it.

    plan = plan_card(elder, identity, existing)      # pure: the config values to write
    result = provision_card(link, elder, identity, data_dir=..., records=...)
"""

from __future__ import annotations

import json
import secrets
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from carecard.host.factory.flash import firmware_image_id
from carecard.host.factory.link import DeviceError, DeviceLink
from carecard.host.factory.sheet import Elder

CONFIG_PATH = "/config.json"
COUNTER_PATH = "/uplink.cnt"  # the card's uplink counter record (firmware/lib/counter.py)
KEY_BYTES = 16


@dataclass(frozen=True)
class CardIdentity:
    imei: int
    iccid: str | None = None
    sim: str = "unknown"  # the SIM's PIN state as the modem driver reported it
    registration: str = "unknown"


@dataclass
class ProvisionResult:
    port: str
    elder: str
    identity: CardIdentity
    firmware: str
    config_version: int
    counter_from: int
    label: str
    values: dict[str, Any] = field(default_factory=dict)


def config_values(elder: Elder, identity: CardIdentity, key: bytes, config_version: int) -> dict[str, Any]:
    """The card's config (firmware/lib/config.py's fields) for this elder."""
    return {"config_version": config_version, "device_id": identity.imei, "device_key": key.hex(),
            **elder_config(elder)}


def elder_config(elder: Elder) -> dict[str, Any]:
    """The card's config fields that come from the elder's row of the sheet."""
    values: dict[str, Any] = {
        "server_host": elder.server_host,
        "server_port": elder.server_port,
        "contacts": [{"key": c.key, "name": c.name, "number": c.number} for c in elder.contacts],
        "apn": elder.apn,
        "grid_worker_key": elder.grid_worker_key,
        "quiet_hours": list(elder.quiet_hours) if elder.quiet_hours else None,
        "sim_pin": elder.sim_pin,
        "owner_name": elder.name,
    }
    return values


def engine_settings(elder: Elder) -> dict[str, Any]:
    """The elder's alert-engine settings (host/engine/settings.py's keys) from the sheet."""
    settings: dict[str, Any] = {"name": elder.name, "wake": elder.wake, "bedtime": elder.bed}
    if elder.home_lat is not None and elder.home_lon is not None:
        settings["home"] = {"lat": elder.home_lat, "lon": elder.home_lon}
    family = [f"{c.number} {c.name}" for c in elder.contacts if c.key != elder.grid_worker_key]
    grid = [f"{c.number} {c.name}" for c in elder.contacts if c.key == elder.grid_worker_key]
    if family:
        settings["family"] = family
    if grid:
        settings["grid_worker"] = grid
    return settings


_READ_STATE = """\
import json, config, counter
_c = config.load(%(config)r)
_n = counter.FileStore(%(counter)r).load()
print(json.dumps({"version": _c.values.get("config_version", 0) if _c.source else None,
                  "device": _c.values.get("device_id"),
                  "limit": counter.decode_record(_n) if _n else None}))
del _c, _n
"""

_WRITE_CONFIG = """\
import json, config
config.save(json.loads(%(data)r), %(config)r)
_c = config.load(%(config)r)
print(json.dumps({"ok": _c.ok, "problems": _c.problems, "values": _c.values}))
del _c
"""

_WRITE_COUNTER = """\
import counter
counter.FileStore(%(counter)r).save(counter.encode_record(%(limit)d))
print(counter.decode_record(counter.FileStore(%(counter)r).load()))
"""


def read_card_state(link: DeviceLink) -> dict[str, Any]:
    """The card's config version and device id (None if not provisioned), its counter limit."""
    text = link.exec(_READ_STATE % {"config": CONFIG_PATH, "counter": COUNTER_PATH})
    return json.loads(text.strip().splitlines()[-1])


def provision_card(link: DeviceLink, elder: Elder, identity: CardIdentity, *,
                   host_counter: int | None = None, key: bytes | None = None) -> ProvisionResult:
    """Write and verify the card's config for `elder`. `host_counter` is the highest uplink
    counter the host has stored for this IMEI (re-provisioning): the card's counter record is
    moved above it, so with a new key no counter is reused and the host's replay window holds."""
    firmware = firmware_image_id(link)
    if firmware is None:
        raise DeviceError(link.port, "no CareCard firmware on the card (no /firmware.json)",
                          "flash it first: carecard flash --port " + link.port)
    state = read_card_state(link)
    version = (state["version"] + 1) if isinstance(state.get("version"), int) else 1
    version = min(version, 0xFFFF)
    card_limit = state.get("limit") or 0
    if host_counter is not None and host_counter + 1 > card_limit:
        text = link.exec(_WRITE_COUNTER % {"counter": COUNTER_PATH, "limit": host_counter + 1})
        if text.strip() != str(host_counter + 1):
            raise DeviceError(link.port, f"the counter record reads back {text.strip()!r}",
                              "provision the card again")
        card_limit = host_counter + 1
    key = key or secrets.token_bytes(KEY_BYTES)
    values = config_values(elder, identity, key, version)
    data = json.dumps(values, ensure_ascii=False)
    out = link.exec(_WRITE_CONFIG % {"data": data, "config": CONFIG_PATH})
    back = json.loads(out.strip().splitlines()[-1])
    if not back["ok"]:
        raise DeviceError(link.port, "the card rejects its new config: " + "; ".join(back["problems"]),
                          "fix the sheet row and provision again")
    expected = dict(values, contacts=[[c["key"], c["name"], c["number"]] for c in values["contacts"]])
    for name, value in expected.items():
        if back["values"].get(name) != value:
            raise DeviceError(link.port, f"config field {name} reads back as {back['values'].get(name)!r}",
                              "provision the card again; if it repeats the card's flash is failing")
    label = f"{identity.imei}  {identity.iccid or '-'}  {elder.name}"
    return ProvisionResult(link.port, elder.name, identity, firmware, version, card_limit, label,
                           values)


def settings_path_of(records: Path) -> Path:
    """The elders' alert-engine settings beside the records (host/engine/settings.py format)."""
    return records.with_name(records.stem + ".settings.json")


def log_path(records: Path) -> Path:
    """What was done to each card (IMEI, ICCID, elder, firmware, config version, time; no key)."""
    return records.with_name(records.stem + ".log.jsonl")


def register(results: list[ProvisionResult], elders: dict[str, Elder], data_dir: Path,
             records: Path) -> None:
    """Record the provisioned cards: the host registry (all or nothing, replacing earlier
    provisioning of the same IMEIs) with the elders' engine settings, the provisioning records
    file (docs/provisioning-records.md, JSON lines, appended), the engine settings and a log of
    the cards beside it."""
    from carecard.host.paths import ingest_db_path
    from carecard.host.receiver.registry import DeviceSpec, add_devices
    from carecard.host.storage import Contact
    from carecard.host.storage.sqlite.store import SQLiteStore

    specs = []
    lines = []
    log: list[str] = []
    settings: dict[str, Any] = {}
    stamp = time.time()
    for result in results:
        elder = elders[result.port]
        contacts = [Contact(c.key, c.number, c.name) for c in elder.contacts]
        key = bytes.fromhex(result.values["device_key"])
        specs.append(DeviceSpec(result.identity.imei, elder.name, key, contacts, result.identity.iccid,
                                None, f"{result.port} (row {elder.row})", village=elder.village))
        lines.append(json.dumps({"imei": str(result.identity.imei), "key": key.hex(), "name": elder.name,
                                 "contacts": [c.as_dict() for c in contacts],
                                 **({"iccid": result.identity.iccid} if result.identity.iccid else {}),
                                 **({"village": elder.village} if elder.village else {})},
                                ensure_ascii=False))
        settings[str(result.identity.imei)] = engine_settings(elder)
        log.append(json.dumps({"imei": str(result.identity.imei), "iccid": result.identity.iccid,
                               "elder": elder.name, "row": elder.row, "port": result.port,
                               "sim": result.identity.sim, "registration": result.identity.registration,
                               "firmware": result.firmware, "config_version": result.config_version,
                               "counter_from": result.counter_from, "at": stamp}, ensure_ascii=False))
    data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    store = SQLiteStore(ingest_db_path(data_dir), readonly_lookups=False)
    try:
        add_devices(store, data_dir, specs, replace=True, now=stamp)
        # the elders' engine settings in the registry too: a running receiver's engine reloads
        # them with the registry (the settings file beside the records is for `carecard replay`)
        store.save_engine_settings(None, {int(imei): table for imei, table in settings.items()}, stamp)
    finally:
        store.close()
    records.parent.mkdir(parents=True, exist_ok=True)
    import os

    for path, text in ((records, lines), (log_path(records), log)):
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        with os.fdopen(fd, "a", encoding="utf-8") as handle:
            handle.write("".join(line + "\n" for line in text))
    settings_path = settings_path_of(records)
    existing: dict[str, Any] = {}
    if settings_path.exists():
        try:
            existing = json.loads(settings_path.read_text(encoding="utf-8")).get("devices", {})
        except (ValueError, AttributeError):
            existing = {}
    existing.update(settings)
    tmp = settings_path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"devices": existing}, ensure_ascii=False, indent=1), encoding="utf-8")
    tmp.replace(settings_path)
