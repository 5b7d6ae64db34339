"""A batch of cards provisioned from the sheet, one card per port, which `carecard provision
--port` runs: on each card the modem step through the card's own driver (IMEI, ICCID, SIM and
network, the SIM phonebook; host/factory/cardstep.py), then its config with a fresh key, written
and read back (host/factory/provision.py); then every card that got through is registered at
once (registry, records file, engine settings, log), so a running receiver accepts its frames.

    pairs = pair_ports(elders, ports, rows)          # BatchError: which port gets which elder
    outcomes = provision_batch(pairs, data_dir=..., records=..., progress=say)

A card that fails is reported (DeviceError: port, sheet row, what, fix) and left out of the
registration; the others go on.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from carecard.host.factory.cardstep import ModemSession, PhonebookResult, identity_of
from carecard.host.factory.link import DeviceError, DeviceLink
from carecard.host.factory.provision import ProvisionResult, provision_card, register
from carecard.host.factory.sheet import Elder

Progress = Callable[[str, str], None]  # (port, message)
MAX_PARALLEL = 8  # cards worked on at once (each mostly waits for its modem)


class BatchError(ValueError):
    """The ports and the sheet's rows do not pair up (nothing was touched)."""


@dataclass
class CardOutcome:
    """One port's card: its result, or the DeviceError that stopped it."""

    port: str
    elder: Elder
    result: ProvisionResult | None = None
    phonebook: PhonebookResult | None = None
    error: DeviceError | None = None


def pair_ports(elders: list[Elder], ports: list[str], rows: list[int] | None = None) -> list[tuple[str, Elder]]:
    """Which card gets which elder: the i-th port the i-th of `rows` (the sheet's row numbers),
    or the i-th elder of the sheet when no rows are given (then the counts must match)."""
    if len(set(ports)) != len(ports):
        twice = next(p for p in ports if ports.count(p) > 1)
        raise BatchError(f"port {twice} is given twice: one card per port")
    if rows:
        if len(set(rows)) != len(rows):
            twice_row = next(r for r in rows if rows.count(r) > 1)
            raise BatchError(f"row {twice_row} is given twice: one card per elder")
        by_row = {e.row: e for e in elders}
        missing = [r for r in rows if r not in by_row]
        if missing:
            raise BatchError(f"no elder on row {missing[0]} of the sheet")
        chosen = [by_row[r] for r in rows]
    else:
        chosen = list(elders)
    if len(chosen) != len(ports):
        what = f"{len(rows)} rows given" if rows else f"{len(chosen)} elders in the sheet"
        raise BatchError(f"{len(ports)} port{'s' if len(ports) != 1 else ''} but {what}: give one "
                         "--row per --port, in the same order, to say which card gets which elder")
    return list(zip(ports, chosen))


def host_counters(data_dir: Path) -> dict[int, int]:
    """The highest uplink counter the host has stored per IMEI (for re-provisioning);
    RegistryError when the database cannot be read."""
    import sqlite3

    from carecard.host.files import connect_readonly
    from carecard.host.paths import ingest_db_path
    from carecard.host.receiver.registry import RegistryError
    from carecard.host.storage.sqlite.store import load_devices

    path = ingest_db_path(data_dir)
    if not path.exists():
        return {}
    conn = connect_readonly(path, RegistryError, where=f"database {path}")
    try:
        devices = load_devices(conn)
    except sqlite3.Error as exc:
        if "no such table" in str(exc):
            return {}  # no device registered yet
        raise RegistryError(f"cannot read the device registry in {path}: {exc}") from None
    finally:
        conn.close()
    return {d: r.last_counter for d, r in devices.items() if r.last_counter is not None}


def provision_one(port: str, elder: Elder, *, counters: dict[int, int], modem_wait_s: float = 60.0,
                  timeout: float = 8.0, progress: Progress | None = None) -> CardOutcome:
    """One card: the modem step, then its config; a DeviceError goes into the outcome."""
    say = progress or (lambda _port, _message: None)
    outcome = CardOutcome(port, elder)
    try:
        with DeviceLink(port, timeout=timeout) as link:
            if link.interrupted:
                say(port, "stopped the program that was running (Ctrl-C)")
            say(port, f"{elder.where}: asking the card's modem for its SIM and network "
                      f"(up to {modem_wait_s:g} s)")
            session = ModemSession(link, pin=elder.sim_pin)
            try:
                identity = identity_of(session.check(wait_s=modem_wait_s), elder, port, wait_s=modem_wait_s)
                say(port, f"IMEI {identity.imei}, ICCID {identity.iccid or '-'}, SIM ready, "
                          f"registered ({identity.registration})")
                outcome.phonebook = session.write_phonebook(elder)
                cut = outcome.phonebook.shortened
                say(port, f"SIM phonebook: {len(outcome.phonebook.entries)} contacts written and read back"
                          + (f" (names of keys {', '.join(map(str, cut))} cut to fit the SIM)" if cut else ""))
            finally:
                session.close()
            outcome.result = provision_card(link, elder, identity, host_counter=counters.get(identity.imei))
            say(port, f"config v{outcome.result.config_version} written and read back, counter from "
                      f"{outcome.result.counter_from}")
    except DeviceError as exc:
        outcome.error = exc
        say(port, f"FAILED: {exc.what}; {exc.fix}")
    return outcome


def provision_batch(pairs: list[tuple[str, Elder]], *, data_dir: Path, records: Path,
                    modem_wait_s: float = 60.0, timeout: float = 8.0,
                    progress: Progress | None = None) -> list[CardOutcome]:
    """Provision every (port, elder) card at once, then register the ones that got through
    (all of them in one registry change). RegistryError if the registration fails."""
    counters = host_counters(data_dir)
    with ThreadPoolExecutor(max_workers=max(1, min(MAX_PARALLEL, len(pairs)))) as pool:
        outcomes = list(pool.map(
            lambda pair: provision_one(pair[0], pair[1], counters=counters, modem_wait_s=modem_wait_s,
                                       timeout=timeout, progress=progress), pairs))
    done = [o for o in outcomes if o.result is not None]
    if done:
        register([o.result for o in done if o.result is not None], {o.port: o.elder for o in done},
                 data_dir, records)
    return outcomes
