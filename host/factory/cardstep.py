"""The card step of provisioning that needs the modem: the card's own driver (firmware/lib/
modem.py and its profile, through firmware/lib/modemcheck.py) run on the card over its raw REPL
reads the IMEI and ICCID, reports the SIM state and the network registration, and writes the
elder's contacts into the SIM phonebook, read back to verify.

    with DeviceLink(port) as link:
        session = ModemSession(link, pin=elder.sim_pin)
        report = session.check(wait_s=60)
        identity = identity_of(report, elder, port)      # DeviceError: no SIM, PIN, no network, ...
        book = session.write_phonebook(elder)            # DeviceError when it does not read back
        session.close()

Every refusal is a DeviceError naming the port, the sheet row and elder, what is wrong and the
fix, for a technician with a box of cards.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from carecard.host.factory.link import DeviceError, DeviceLink
from carecard.host.factory.provision import CardIdentity
from carecard.host.factory.sheet import Elder

PROFILE = "a7670"  # the card's modem (hardware/modem_a7670.json); "ec800m" for the second profile
SESSION = "_carecard_modem"  # the driver's session between commands on the card (a global there)
PHONEBOOK_KEYS = 4
# driver states in which the modem never answered: nothing about the SIM is known
_SILENT_STATES = ("off", "probing", "booting", "probing_boot", "recovering")
# SIM states in which the SIM itself answered (any other, with the driver in no_sim: no answer)
_SIM_ANSWERED = ("ready", "pin_required", "pin_rejected", "puk_required")


@dataclass(frozen=True)
class ModemReport:
    """What the card's driver found (firmware/lib/modemcheck.py Session.check)."""

    state: str
    sim: str
    registration: str
    imei: str | None
    iccid: str | None
    model: str | None
    rssi_dbm: int | None
    gave_up: str | None

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ModemReport":
        return cls(str(data.get("state")), str(data.get("sim")), str(data.get("registration")),
                   data.get("imei"), data.get("iccid"), data.get("model"), data.get("rssi_dbm"),
                   data.get("gave_up"))


@dataclass
class PhonebookResult:
    """The SIM phonebook as read back: [(index, number, name)]; keys whose name was cut to fit."""

    entries: list[tuple[int, str, str]] = field(default_factory=list)
    shortened: list[int] = field(default_factory=list)


def _last_json(port: str, text: str) -> Any:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    try:
        return json.loads(lines[-1])
    except (IndexError, ValueError):
        raise DeviceError(port, f"unexpected answer from the card's modem check: {text.strip()[-200:]!r}",
                          "is the CareCard firmware flashed (carecard flash)?") from None


class ModemSession:
    """The card's modem driver, kept on the card between the steps (one bring-up)."""

    def __init__(self, link: DeviceLink, *, pin: str | None = None, profile: str = PROFILE) -> None:
        self.link = link
        self.pin = pin
        self.profile = profile
        self.started = False

    def check(self, *, wait_s: float = 60.0) -> ModemReport:
        """Bring the modem up under the driver (at most wait_s for SIM and network) and ask it
        who it is."""
        code = (f"import board, modemcheck, json\n"
                f"{SESSION} = modemcheck.Session(board.open_board(), {self.profile!r}, {self.pin!r})\n"
                f"print(json.dumps({SESSION}.check({int(wait_s * 1000)})))\n")
        self.started = True
        text = self.link.exec(code, timeout=wait_s + 60)
        return ModemReport.from_dict(_last_json(self.link.port, text))

    def write_phonebook(self, elder: Elder) -> PhonebookResult:
        """The elder's contacts as SIM phonebook entries 1-4 (entry k: key k's contact; the
        others cleared), read back and compared. DeviceError when the modem refuses or what it
        reads back differs."""
        port = self.link.port
        contacts = [(c.key, c.number, c.name) for c in elder.contacts]
        code = f"import json\nprint(json.dumps({SESSION}.phonebook({contacts!r}, {PHONEBOOK_KEYS})))\n"
        answer = _last_json(port, self.link.exec(code, timeout=120))
        if answer.get("error"):
            raise DeviceError(port, f"{elder.where}: the modem refused the SIM phonebook: {answer['error']}",
                              "check the SIM is seated and ready, then provision the card again")
        shortened = [int(k) for k in answer.get("shortened", [])]
        read = {int(e[0]): (str(e[1]), str(e[3])) for e in answer.get("entries", [])}
        result = PhonebookResult(sorted((i, n, t) for i, (n, t) in read.items()), shortened)
        for contact in elder.contacts:
            got = read.get(contact.key)
            if got is None:
                raise DeviceError(port, f"{elder.where}: SIM phonebook entry {contact.key} "
                                        f"({contact.name}) is missing when read back",
                                  "provision the card again; if it repeats, try another SIM")
            number, name = got
            if number.lstrip("+") != contact.number.lstrip("+"):
                raise DeviceError(port, f"{elder.where}: SIM phonebook entry {contact.key} reads back "
                                        f"{number}, not {contact.number}",
                                  "provision the card again; if it repeats, try another SIM")
            if not contact.name.startswith(name) or (name != contact.name
                                                     and contact.key not in shortened):
                raise DeviceError(port, f"{elder.where}: SIM phonebook entry {contact.key} reads back "
                                        f"the name {name!r}, not {contact.name!r}",
                                  "provision the card again; if it repeats, try another SIM")
        extra = sorted(set(read) - {c.key for c in elder.contacts})
        if extra:
            raise DeviceError(port, f"{elder.where}: SIM phonebook entry {extra[0]} is still there "
                                    "although that key has no contact",
                              "provision the card again; if it repeats, try another SIM")
        return result

    def close(self) -> None:
        if self.started and self.link.transport is not None:
            try:
                self.link.exec(f"del {SESSION}")
            except DeviceError:
                pass
        self.started = False


def identity_of(report: ModemReport, elder: Elder, port: str, *, wait_s: float = 60.0) -> CardIdentity:
    """The card's identity from the driver's report, or DeviceError saying what stops this card
    (for sheet row `elder`) and the fix: a silent modem, no SIM, a locked SIM, no network,
    an IMEI other than the sheet's."""
    where = elder.where
    if report.state in _SILENT_STATES or report.gave_up:
        raise DeviceError(port, f"{where}: the card's modem does not answer on its UART (driver state "
                                f"{report.state}{', gave up: ' + report.gave_up if report.gave_up else ''})",
                          "check the modem is fitted and powered (battery in, or USB), power the "
                          "card off and on, and provision it again")
    if not report.imei or len(report.imei) != 15:
        raise DeviceError(port, f"{where}: the modem gave no IMEI (AT+CGSN answered {report.imei!r})",
                          "power the card off and on and provision it again; if it repeats, the "
                          "modem needs service")
    imei = int(report.imei)
    if elder.imei is not None and elder.imei != imei:
        raise DeviceError(port, f"{where}: the card on this port has IMEI {imei}, the sheet says "
                                f"{elder.imei}",
                          f"put the card labelled {elder.imei} on {port} (or correct the imei "
                          f"column of row {elder.row}) and provision it again")
    sim = report.sim
    if sim == "absent" or report.state == "no_sim" and sim not in _SIM_ANSWERED:
        what = "no SIM card in the modem" if sim == "absent" else "the SIM does not answer"
        raise DeviceError(port, f"{where}: {what}",
                          "insert the elder's SIM (contacts down, cut corner as marked), or reseat "
                          "it, and provision the card again")
    if sim == "pin_required":
        raise DeviceError(port, f"{where}: the SIM asks for its PIN",
                          f"write the SIM's PIN in the sim_pin column of row {elder.row}, or switch "
                          "the SIM's PIN lock off in a phone, and provision the card again")
    if sim == "pin_rejected":
        raise DeviceError(port, f"{where}: the SIM refused the PIN in the sim_pin column",
                          f"correct the sim_pin of row {elder.row} (each wrong PIN uses up one of "
                          "the SIM's three tries; after that it needs its PUK) and provision again")
    if sim == "puk_required":
        raise DeviceError(port, f"{where}: the SIM is blocked and asks for its PUK",
                          "unblock it in a phone with the PUK from the SIM's card holder (or ask "
                          "the operator), then provision the card again")
    if sim != "ready":
        raise DeviceError(port, f"{where}: the SIM did not become ready (modem says {sim!r})",
                          "reseat the SIM, power the card off and on, and provision it again")
    if report.registration not in ("home", "roaming", "sms_only"):
        signal = f", signal {report.rssi_dbm} dBm" if report.rssi_dbm is not None else ", no signal"
        if report.registration == "denied":
            raise DeviceError(port, f"{where}: the network refused the SIM (registration denied)",
                              "the SIM is not activated or is barred: ask the operator to activate "
                              "it, then provision the card again")
        raise DeviceError(port, f"{where}: not registered on a network within {wait_s:g} s "
                                f"(status {report.registration}{signal})",
                          "check the antenna is connected and there is coverage here (try near a "
                          "window), that the SIM is activated, and provision the card again")
    return CardIdentity(imei, report.iccid, sim.upper(), report.registration)
