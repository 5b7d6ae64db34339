"""A scenario end to end: the card image's main.py on the MicroPython unix port with the simulated
board, modem and GNSS (runner.VirtualCard) in virtual time, against a real `carecard receive`.

    result = run_scenario(scenario.load(path), SimOptions())
    result.passed, result.checks, result.timeline, result.events, result.energy

The world follows the scenario: where the person is (the GNSS track), what the card feels (motion
interrupts while worn and awake, a burst at a fall, none on a table or on the charger or at
night), the battery (drained by the energy the firmware's parts actually drew, as the ledger
timed them; charged on the charger), keys, calls in, SMS, coverage, reboots, power loss, a modem
that hangs. Each datagram the card sends is decoded with the card's key for the timeline; each
answer from the receiver too. After the run the events the receiver stored are read back from
its SQLite sink and the scenario's expectations are checked against them.

Virtual and real time: the receiver stamps `received_at` with the real clock. The runner holds
the virtual clock while a datagram is on its way, so each stored event is mapped back to the
virtual time of the datagram that carried it; `events` (and `--events`) carry that virtual
`received_at`, so the alert engine can be replayed on them (`carecard replay`).
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from carecard.tools.vcard import energy
from carecard.tools.vcard.gnss_sim import GnssSim, Track, TrackPoint
from carecard.tools.vcard.modem_sim import Callee, ModemSim
from carecard.tools.vcard.lockstep import LockstepError
from carecard.tools.vcard.runner import RunnerError, VirtualCard, World
from carecard.tools.vcard.scenario import Scenario

DEMO_IMEI_BODY = 86777700000000   # sim cards' IMEIs: this body plus the scenario's seed
MOTION_MOVING_S = 8.0             # a walking person trips the any-motion interrupt every few s
MOTION_AWAKE_MEAN_S = 180.0       # a worn card of someone pottering about at home
CHARGE_MA = 500.0                 # the charger's current (0.5 C of the reference cell)
CHARGING_LIFT_MV = 80             # the charger lifts the terminal voltage above the OCV
# which scenario step starts the clock of a `delivered ... within_s` expectation, per message
TRIGGERS = {"sos": ("hold",), "call": ("press",), "hello": ("reboot", "power_loss")}


class SimError(RuntimeError):
    """The simulation could not run: no receiver, a card folder without a config, a firmware
    that would not start. The message says what and how to fix it."""


# ---- the receiver -----------------------------------------------------------------------------

class ReceiverProcess:
    """`carecard receive` as a real subprocess on 127.0.0.1 with its own data folder; its UDP
    port read from its JSON log."""

    def __init__(self, data_dir: Path, *, start_timeout_s: float = 30.0,
                 simulation_clock: Path | None = None) -> None:
        """simulation_clock: the receiver and its engine run on the virtual time in this file
        (host/simclock.py; the demo's lockstep moves it)."""
        self.data_dir = data_dir
        argv = [sys.executable, "-m", "carecard.host.cli", "receive", "--data", str(data_dir),
                "--udp", "127.0.0.1:0", "--log-format", "json"]
        if simulation_clock is not None:
            argv += ["--simulation-clock", str(simulation_clock)]
        self.log_path = data_dir / "receiver.log"
        self._log = open(self.log_path, "w", encoding="utf-8")
        self.proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        self.port: int | None = None
        try:
            self._wait_started(start_timeout_s)
        except BaseException:   # a signal or an error during start-up: not left running
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()
            self._log.close()
            raise

    def _wait_started(self, start_timeout_s: float) -> None:
        deadline = time.monotonic() + start_timeout_s
        assert self.proc.stderr is not None
        while time.monotonic() < deadline:
            line = self.proc.stderr.readline()
            if not line:
                self._log.close()
                raise SimError(f"the receiver exited with status {self.proc.wait()} at start-up; "
                               f"its log: {self.log_path}")
            self._log.write(line)
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if record.get("transport") == "udp":
                self.port = int(str(record["address"]).rsplit(":", 1)[1])
            if str(record.get("msg", "")).startswith("receiver started"):
                break
        if self.port is None:
            self.stop()
            raise SimError(f"the receiver did not start within {start_timeout_s:.0f} s; its log: "
                           f"{self.log_path}")
        # keep its log flowing to the file (a full pipe would stall it)
        import threading

        self._pump = threading.Thread(target=self._copy_log, daemon=True)
        self._pump.start()

    def _copy_log(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self._log.write(line)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if getattr(self, "_pump", None) is not None:
            self._pump.join(timeout=5)
        self._log.close()


# ---- the card ---------------------------------------------------------------------------------

@dataclass
class CardSetup:
    device: int
    key: bytes
    flash_dir: Path
    contacts: dict[int, str] = field(default_factory=dict)   # key -> number, as the card has them


def new_card(scenario: Scenario, flash_dir: Path, host: str, port: int, data_dir: Path | None) -> CardSetup:
    """A fresh card for `scenario`: its config.json (the scenario's contacts and [card] settings),
    registered in the receiver's registry at data_dir when given."""
    from carecard.host.receiver.registry import DeviceSpec, add_devices, generate_key, make_imei, parse_contact

    device = make_imei(DEMO_IMEI_BODY + scenario.seed % 1_000_000)
    key = generate_key()
    values: dict[str, Any] = {
        "device_id": device, "device_key": key.hex(), "server_host": host, "server_port": port,
        "contacts": [{"key": c.key, "name": c.name[:24], "number": c.number}
                     for c in sorted(scenario.contacts.values(), key=lambda c: c.key)],
    }
    values.update(scenario.settings)
    flash_dir.mkdir(parents=True, exist_ok=True)
    (flash_dir / "config.json").write_text(json.dumps(values, ensure_ascii=False), encoding="utf-8")
    if data_dir is not None:
        from carecard.host.paths import ingest_db_path
        from carecard.host.receiver.registry import RegistryError
        from carecard.host.storage.sqlite.store import SQLiteStore

        store = SQLiteStore(ingest_db_path(data_dir), readonly_lookups=False)
        try:
            contacts = [parse_contact(f"{c.key}:{c.number}:{c.name}") for c in scenario.contacts.values()]
            add_devices(store, data_dir, [DeviceSpec(device, f"sim {scenario.name}", key, contacts)],
                        replace=True)
        except RegistryError as exc:
            raise SimError(str(exc)) from None
        finally:
            store.close()
    return CardSetup(device, key, flash_dir, {c.key: c.number for c in scenario.contacts.values()})


def existing_card(flash_dir: Path) -> CardSetup:
    """A provisioned card's folder (`carecard provision`): its config.json says who it is."""
    path = flash_dir / "config.json"
    try:
        values = json.loads(path.read_text(encoding="utf-8"))
        contacts = {int(c["key"]): str(c["number"]) for c in values.get("contacts", [])}
        return CardSetup(int(values["device_id"]), bytes.fromhex(values["device_key"]), flash_dir,
                         contacts)
    except OSError as exc:
        raise SimError(f"card folder {flash_dir}: cannot read config.json ({exc.strerror}); "
                       "provision the card first (carecard provision)") from None
    except (ValueError, KeyError, TypeError) as exc:
        raise SimError(f"card folder {flash_dir}: config.json has no valid device_id/device_key "
                       f"({exc}); provision the card again") from None


# ---- the world --------------------------------------------------------------------------------

def _ocv_table() -> list[tuple[int, int]]:
    from carecard.tools.cardimage import HARDWARE_DIR

    data = json.loads((HARDWARE_DIR / "battery_lipo.json").read_text(encoding="utf-8"))
    return [(int(mv), int(pct)) for mv, pct in data["ocv_curve"]["points_mv_pct"]]


class BatteryModel:
    """The cell: its charge falls by the energy the ledger timed (the firmware's real states at
    the hardware/power.json currents) and rises on the charger."""

    def __init__(self, ledger: energy.Ledger, percent: float, capacity_mah: float) -> None:
        self.ledger = ledger
        self.capacity = capacity_mah
        self.mah = capacity_mah * percent / 100
        self.on_charger = False
        self._figures = {k: (0.0 if key is None else energy.power_data.figure_ma(self._data(), key))
                         for k, key in energy.FIGURES.items()}
        self._last_ms = 0
        self._last_used = 0.0
        self.ocv = _ocv_table()

    _power = None

    @classmethod
    def _data(cls) -> dict:
        if cls._power is None:
            cls._power = energy.power_data.load()
        return cls._power

    def _used_mah(self, now_ms: int) -> float:
        return sum(self._figures[k] * ms for k, ms in self.ledger.totals(now_ms).items()) / 3_600_000

    def update(self, now_ms: int) -> None:
        if now_ms <= self._last_ms:
            return
        used = self._used_mah(now_ms)
        self.mah -= used - self._last_used
        if self.on_charger:
            self.mah += CHARGE_MA * (now_ms - self._last_ms) / 3_600_000
        self.mah = max(0.0, min(self.capacity, self.mah))
        self._last_used = used
        self._last_ms = now_ms

    def set_percent(self, percent: float, now_ms: int) -> None:
        self.update(now_ms)
        self.mah = self.capacity * percent / 100

    @property
    def percent(self) -> float:
        return 100 * self.mah / self.capacity

    def full(self) -> bool:
        return self.mah >= self.capacity * 0.995

    def mv(self, now_ms: int) -> int:
        self.update(now_ms)
        pct = self.percent
        pts = self.ocv
        mv = pts[0][0]
        for (mv0, p0), (mv1, p1) in zip(pts, pts[1:]):
            if pct <= p1:
                mv = mv0 + (mv1 - mv0) * (pct - p0) / (p1 - p0) if p1 > p0 else mv0
                break
        else:
            mv = pts[-1][0]
        if self.on_charger and not self.full():
            mv += CHARGING_LIFT_MV
        return int(mv)

    def charger(self, now_ms: int) -> tuple[bool, bool]:
        self.update(now_ms)
        if not self.on_charger:
            return False, False
        return (False, True) if self.full() else (True, False)


def build_track(sc: Scenario) -> Track:
    home = sc.places[sc.home]
    points = [TrackPoint(0.0, home.lat, home.lon, home.env)]
    here = home
    for step in sc.steps:
        if step.kind != "go":
            continue
        dest = sc.places[step.args["to"]]
        minutes = float(step.args.get("minutes", 10))
        points.append(TrackPoint(step.at_s, here.lat, here.lon, "outdoor"))
        points.append(TrackPoint(step.at_s + minutes * 60, dest.lat, dest.lon, dest.env))
        here = dest
    return Track(points)


class ScenarioWorld:
    """Schedules a scenario's steps on a VirtualCard and keeps the person's state (carried how,
    asleep, fallen, walking) that decides the motion interrupts and the charger."""

    def __init__(self, sc: Scenario, card: VirtualCard, modem: ModemSim, battery: BatteryModel,
                 note: Callable[[str, dict[str, Any]], None], numbers: dict[str, str]) -> None:
        self.sc = sc
        self.numbers = numbers
        self.card = card
        self.modem = modem
        self.battery = battery
        self.note = note
        self.rng = random.Random(sc.seed)
        self.carry = "worn"
        self.asleep = False
        self.fallen = False
        self.moving_until = -1
        self._motion_gen = 0
        self.power_cuts: list[int] = []
        self.torn_writes = 0
        self._watch_outbox: int | None = None
        self.coverage_back_ms: list[int] = []
        self.step_ms: dict[str, list[int]] = {}
        card.before_request = self._before_request

    def schedule(self) -> None:
        for step in self.sc.steps:
            at = int(step.at_s * 1000)
            self.step_ms.setdefault(step.kind, []).append(at)
            self.card.at(at, lambda step=step: self._step(step))
            if step.kind in ("press", "hold"):
                hold = 150 if step.kind == "press" else int(float(step.args.get("seconds", 3)) * 1000)
                self.card.press(at, int(step.args["key"]) - 1, hold)
        self._motion_chain()

    # the person and the card
    def _step(self, step: Any) -> None:
        a = step.args
        now = self.card.now
        detail = {k: v for k, v in a.items()}
        self.note("step", {"do": step.kind, **detail})
        if step.kind == "carry":
            self.carry = a["state"]
            self.battery.update(now)
            self.battery.on_charger = self.carry == "charger"
        elif step.kind == "sleep":
            self.asleep = True
        elif step.kind == "wake":
            self.asleep = False
            self.fallen = False
        elif step.kind == "go":
            self.fallen = False
            self.moving_until = now + int(float(a.get("minutes", 10)) * 60_000)
        elif step.kind == "fall":
            for i in range(5):
                self.card.motion(now + 200 * i)
            self.fallen = True
        elif step.kind == "call_in":
            ok = self.modem.incoming_call(self.numbers.get(a["from"], a["from"]), ring_for_s=float(a.get("ring_s", 15)),
                                          talk_s=float(a.get("talk_s", 60)), now_ms=now)
            if not ok:
                self.note("call_in_failed", {"from": a["from"], "why": "the card cannot be reached"})
        elif step.kind == "sms_in":
            if not self.modem.incoming_sms(self.numbers.get(a["from"], a["from"]), a["text"], now_ms=now):
                self.note("sms_in_failed", {"from": a["from"], "why": "the card cannot be reached"})
        elif step.kind == "coverage":
            self.modem.set_coverage(bool(a["up"]), now)
            if a["up"]:
                self.coverage_back_ms.append(now)
        elif step.kind == "reboot":
            self.card.defer_reset("watchdog")
        elif step.kind == "power_loss":
            if a.get("during", "idle") == "outbox_write":
                self._watch_outbox = self._outbox_size()
            else:
                self.power_cuts.append(now)
                self.card.defer_reset("power_loss")
        elif step.kind == "battery":
            self.battery.set_percent(float(a["percent"]), now)
        elif step.kind == "modem_hang":
            self.modem.hang(now)
        self._motion_chain()

    def _outbox_size(self) -> int:
        try:
            return (self.card.flash_dir / "outbox.log").stat().st_size
        except OSError:
            return 0

    def _before_request(self) -> bool:
        """A power loss armed for an outbox write: at the first request after the outbox grew,
        tear the appended record in half (the flash write the power cut) and cut the power."""
        if self._watch_outbox is None:
            return False
        size = self._outbox_size()
        if size <= self._watch_outbox:
            self._watch_outbox = min(self._watch_outbox, size)
            return False
        old = self._watch_outbox
        self._watch_outbox = None
        with open(self.card.flash_dir / "outbox.log", "r+b") as f:
            f.truncate(old + (size - old) // 2)
        self.torn_writes += 1
        self.power_cuts.append(self.card.now)
        self.note("power_loss", {"during": "outbox_write", "record_bytes": size - old,
                                 "kept_bytes": (size - old) // 2})
        self.card.power_loss()
        return True

    def _motion_chain(self) -> None:
        """(Re)start the chain of motion interrupts for the person's state now."""
        self._motion_gen += 1
        gen = self._motion_gen
        self._next_motion(gen)

    def _next_motion(self, gen: int) -> None:
        if gen != self._motion_gen:
            return
        now = self.card.now
        if self.carry in ("table", "charger") or self.asleep or self.fallen:
            return
        if now < self.moving_until:
            delay = MOTION_MOVING_S * (0.75 + 0.5 * self.rng.random())
        else:
            delay = self.rng.expovariate(1 / MOTION_AWAKE_MEAN_S)
        at = now + max(1000, int(delay * 1000))

        def fire() -> None:
            if gen != self._motion_gen:
                return
            if not (self.carry in ("table", "charger") or self.asleep or self.fallen):
                self.card.levels |= 16
                self.card.pending_events |= 16
            self._next_motion(gen)
        self.card.at(at, fire)


# ---- the run ----------------------------------------------------------------------------------

@dataclass
class SimOptions:
    receiver: tuple[str, int] | None = None   # a running receiver; None: start one
    data_dir: Path | None = None              # the receiver's data folder (kept when given)
    card_dir: Path | None = None              # a provisioned card's folder; None: a fresh card
    until_s: float | None = None              # stop before the scenario's end
    heapsize: int | None = None
    on_event: Callable[[dict[str, Any]], None] | None = None   # each card-side event as it happens
    on_progress: Callable[[int, int], None] | None = None      # (virtual ms now, end ms)
    sink_wait_s: float = 20.0
    # cards in lockstep with a receiver on the simulation clock (tools/vcard/lockstep.py): the
    # Lockstep and this card's member key (joined by the caller before any card starts); the
    # receiver stamps received_at in virtual time
    lockstep: Any = None
    member: Any = None
    on_end: Callable[[int], None] | None = None   # the day is over (virtual ms), before it leaves


@dataclass
class Check:
    expect: dict[str, Any]
    passed: bool
    detail: str


@dataclass
class SimResult:
    scenario: str
    device: int
    end_ms: int
    start_unix: int
    timeline: list[dict[str, Any]]
    events: list[dict[str, Any]]            # what the receiver stored, received_at in virtual time
    checks: list[Check]
    energy: dict[str, Any]                  # the firmware run's ledger
    duty_energy: dict[str, Any]             # the duty model's, same scenario
    resets: list[tuple[int, str]]
    datagrams_out: int
    datagrams_in: int
    acked: set[int]
    sent_counters: set[int]
    real_s: float
    data_dir: Path
    receiver_port: int
    requests: int = 0

    @property
    def passed(self) -> bool:
        return all(c.passed for c in self.checks)


def _iso(unix: float) -> str:
    return datetime.fromtimestamp(unix, timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def _parse_iso(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def run_scenario(sc: Scenario, options: SimOptions | None = None) -> SimResult:
    """Play `sc` with the card image's main.py against a real receiver. Raises SimError."""
    from carecard.protocol.codec import decode_frame
    from carecard.protocol.errors import ProtocolError
    from carecard.tools import micropython

    opt = options or SimOptions()
    started = time.monotonic()
    own_dirs: list[Path] = []
    data_dir = opt.data_dir
    if opt.receiver is not None and data_dir is None:
        raise SimError("--receiver needs --data: the receiver's data folder, where the card is "
                       "registered and what it stored is read back")
    if data_dir is None:
        data_dir = Path(tempfile.mkdtemp(prefix="carecard-sim-data-"))
        own_dirs.append(data_dir)
    data_dir.mkdir(parents=True, exist_ok=True)
    receiver: ReceiverProcess | None = None
    try:
        if opt.card_dir is not None:
            card_setup = existing_card(opt.card_dir)
        if opt.receiver is None:
            # the registry first: the receiver loads it at start
            if opt.card_dir is None:
                flash = Path(tempfile.mkdtemp(prefix="carecard-sim-card-"))
                own_dirs.append(flash)
                card_setup = new_card(sc, flash, "127.0.0.1", 9, data_dir)
            receiver = ReceiverProcess(data_dir)
            host, port = "127.0.0.1", receiver.port or 0
            _point_card_at(card_setup.flash_dir, host, port)
        else:
            host, port = opt.receiver
            if opt.card_dir is None:
                flash = Path(tempfile.mkdtemp(prefix="carecard-sim-card-"))
                own_dirs.append(flash)
                card_setup = new_card(sc, flash, host, port, data_dir)
        # a flashed card's folder holds its image (main.py, lib/): it runs what was flashed
        flashed = opt.card_dir is not None and (opt.card_dir / "main.py").exists()
        image = opt.card_dir if flashed else micropython.card_image(compiled=True)
        result = _play(sc, opt, card_setup, data_dir, port, image, decode_frame, ProtocolError)
    finally:
        if receiver is not None:
            receiver.stop()
        for d in own_dirs:
            shutil.rmtree(d, ignore_errors=True)
    result.real_s = time.monotonic() - started
    return result


def _point_card_at(flash_dir: Path, host: str, port: int) -> None:
    path = flash_dir / "config.json"
    values = json.loads(path.read_text(encoding="utf-8"))
    values["server_host"], values["server_port"] = host, port
    path.write_text(json.dumps(values, ensure_ascii=False), encoding="utf-8")


def _play(sc: Scenario, opt: SimOptions, setup: CardSetup, data_dir: Path, port: int, image: Path,
          decode_frame: Callable, protocol_error: type[Exception]) -> SimResult:
    end_ms = int(min(sc.duration_s, opt.until_s if opt.until_s is not None else sc.duration_s) * 1000)
    timeline: list[dict[str, Any]] = []
    clock_map: dict[int, list[tuple[float, int]]] = {}   # counter -> (wall, virtual ms) per transmission
    acked: set[int] = set()
    sent: set[int] = set()
    first_sent: dict[int, int] = {}             # counter -> rank of its first transmission
    types_sent: dict[int, str] = {}
    card_ref: list[VirtualCard] = []

    def note(kind: str, detail: dict[str, Any]) -> None:
        now = card_ref[0].now if card_ref else 0
        entry = {"t_ms": now, "time": _iso(sc.start_unix + now / 1000), "kind": kind, **detail}
        timeline.append(entry)
        if opt.on_event is not None:
            opt.on_event(entry)

    def on_datagram(direction: str, payload: bytes, now: int) -> None:
        try:
            msg = decode_frame(payload, setup.key)
        except protocol_error as exc:
            note("datagram_" + direction, {"bytes": len(payload), "undecodable": str(exc)})
            return
        if direction == "out":
            counter = msg["counter"]
            clock_map.setdefault(counter, []).append((card_ref[0].last_send_wall, now))
            again = counter in sent
            sent.add(counter)
            first_sent.setdefault(counter, len(first_sent))
            types_sent[counter] = msg["type"]
            fields = {k: v for k, v in msg.items()
                      if k not in ("type", "direction", "device", "counter", "time", "clock_synced")}
            note("uplink", {"type": msg["type"], "counter": counter, "retransmission": again,
                            "bytes": len(payload), "fields": _jsonable(fields)})
        else:
            if msg["type"] == "ack":
                acked.add(msg["acked"])
                note("ack", {"acked": msg["acked"], "of": types_sent.get(msg["acked"]),
                             "commands": _jsonable(msg.get("commands", []))})
            else:
                note("downlink", {"type": msg["type"], "fields": _jsonable(msg)})

    def on_output(name: str, value: int, now: int) -> None:
        if name in ("led", "buzzer", "vibration"):
            note("output", {"name": name, "on": bool(value)})

    # how each contact behaves is the scenario's, by key: a provisioned card's own numbers answer
    # as the scenario's contact on the same key; calls and SMS "from" a scenario contact come
    # from the card's contact on that key
    numbers = {c.number: setup.contacts.get(c.key, c.number) for c in sc.contacts.values()}
    modem = ModemSim(callees={numbers[c.number]: Callee(c.answers, ring_s=c.ring_s, talk_s=c.talk_s)
                              for c in sc.contacts.values()},
                     seed=sc.seed, utc_offset_quarters=sc.tz_quarters, clock_unix_s=sc.start_unix)
    gnss = GnssSim(build_track(sc), seed=sc.seed, start_unix=sc.start_unix)
    holder: dict[str, BatteryModel] = {}
    world = World(modem=modem, gnss=gnss,
                  battery_mv=lambda ms: holder["b"].mv(ms),
                  charging=lambda ms: holder["b"].charger(ms))
    lock = opt.lockstep
    gate = None
    if lock is not None:
        def gate(now_ms: int) -> int:
            limit = lock.allowed(opt.member, sc.start_unix + now_ms / 1000)
            return max(now_ms + 1, round((limit - sc.start_unix) * 1000))
    try:
        card = VirtualCard(image, setup.flash_dir, world, heapsize=opt.heapsize,
                           on_output=on_output, on_datagram=on_datagram, gate=gate)
    except RunnerError as exc:
        if lock is not None:
            lock.leave(opt.member)
        raise SimError(str(exc)) from None
    card_ref.append(card)
    battery = BatteryModel(card.ledger, sc.battery_percent, energy.capacity_mah())
    holder["b"] = battery
    world_state = ScenarioWorld(sc, card, modem, battery, note, numbers)
    with card:
        world_state.schedule()
        if opt.on_progress is not None:
            step = max(60_000, end_ms // 200)
            for t in range(step, end_ms, step):
                card.at(t, lambda t=t: opt.on_progress(t, end_ms))
        # the runner's own notes (boots, keys, prints, watchdog) join the timeline as they come
        seen = 0
        chunk = 3_600_000
        target = 0
        try:
            if lock is not None:
                lock.wait_until(opt.member, sc.start_unix)
            while target < end_ms:
                target = min(end_ms, target + chunk)
                card.run(target)
                for ms, what, detail in card.run_log.timeline[seen:]:
                    if what in ("boot", "watchdog", "crash", "hang", "reset", "udp_error", "bad_request"):
                        timeline.append({"t_ms": ms, "time": _iso(sc.start_unix + ms / 1000),
                                         "kind": what, "detail": detail})
                        if opt.on_event is not None:
                            opt.on_event(timeline[-1])
                    elif what == "print":
                        timeline.append({"t_ms": ms, "time": _iso(sc.start_unix + ms / 1000),
                                         "kind": "card_print", "detail": detail})
                seen = len(card.run_log.timeline)
        except (RunnerError, LockstepError) as exc:
            raise SimError(f"scenario {sc.name}: {exc}") from None
        finally:
            if lock is not None:
                try:
                    if opt.on_end is not None:
                        opt.on_end(card.now)
                finally:
                    lock.leave(opt.member)
        if opt.on_progress is not None:
            opt.on_progress(end_ms, end_ms)
        fw_energy = energy.energy_report(card.ledger, card.now)
        resets = list(card.run_log.resets)
        requests = card.run_log.requests
        out_n, in_n = card.datagrams_out, card.datagrams_in
    timeline.sort(key=lambda e: e["t_ms"])
    events = _stored_events(data_dir, setup.device, acked, sent, clock_map, opt.sink_wait_s,
                            virtual_start=sc.start_unix if lock is not None else None)
    for event in events:
        event["sent_rank"] = first_sent.get(event.get("counter"), len(first_sent))
    duty = energy.DutyModel().with_settings(sc.settings)
    ledger, duty_end = energy.play_duty(sc, duty)
    duty_energy = energy.energy_report(ledger, duty_end)
    result = SimResult(sc.name, setup.device, end_ms, sc.start_unix, timeline, events, [], fw_energy,
                       duty_energy, resets, out_n, in_n, acked, sent, 0.0, data_dir, port)
    result.requests = requests
    result.checks = check_expectations(sc, result, world_state, modem)
    return result


def _jsonable(value: Any) -> Any:
    if isinstance(value, (bytes, bytearray)):
        return value.hex()
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value


def _stored_events(data_dir: Path, device: int, acked: set[int], sent: set[int],
                   clock_map: dict[int, list[tuple[float, int]]], wait_s: float,
                   virtual_start: float | None = None) -> list[dict[str, Any]]:
    """The device's events from the receiver's SQLite sink, once every acked frame reached it
    (and, for a few seconds more, every frame sent: the last ones may have left just before the
    end, their acks not yet back); `received_at` mapped to the virtual clock (the datagram that
    carried it). `virtual_start`: the receiver ran on the simulation clock, its received_at is
    virtual already (the end of the lockstep quantum the datagram arrived in) and the card's
    day began at this unix time."""
    from carecard.host.export import QueryError, iter_events, open_query_store_readonly

    deadline = time.monotonic() + wait_s
    all_sent_by = None
    stored: list[dict[str, Any]] = []
    while True:
        try:
            conn = open_query_store_readonly(data_dir)
            try:
                stored = list(iter_events(conn, device=str(device)))
            finally:
                conn.close()
        except (QueryError, sqlite3.Error):
            stored = []
        counters = {e.get("counter") for e in stored}
        if sent <= counters or time.monotonic() >= deadline:
            break
        if acked <= counters:
            all_sent_by = all_sent_by or time.monotonic() + 3.0
            if time.monotonic() >= all_sent_by:
                break
        time.sleep(0.1)
    events = []
    for event in stored:
        if event.get("kind") == "alert":
            continue   # the receiver's engine ran in real time: replay the events instead
        try:
            wall = _parse_iso(event["received_at"])
        except (KeyError, ValueError):
            continue
        # the transmission that was stored: the last one that left before the receiver read it
        sends = clock_map.get(event.get("counter"), [])
        if virtual_start is not None:
            received_ms = (wall - virtual_start) * 1000
            before = [v for _w, v in sends if v <= received_ms + 0.5]
        else:
            before = [v for w, v in sends if w <= wall + 0.0005]
        virtual_ms = before[-1] if before else (sends[0][1] if sends else 0)
        event["received_at_wall"] = event["received_at"]
        event["virtual_ms"] = virtual_ms
        events.append(event)
    return events


def virtual_events(result: SimResult) -> list[dict[str, Any]]:
    """The stored events in the documented schema with `received_at` on the virtual clock."""
    out = []
    for event in sorted(result.events, key=lambda e: (e["virtual_ms"], e.get("counter") or 0)):
        e = {k: v for k, v in event.items() if k not in ("received_at_wall", "virtual_ms", "sent_rank")}
        e["received_at"] = _iso(result.start_unix + event["virtual_ms"] / 1000)
        out.append(e)
    return out


# ---- expectations -----------------------------------------------------------------------------

def check_expectations(sc: Scenario, r: SimResult, world: ScenarioWorld, modem: ModemSim) -> list[Check]:
    checks = []
    by_kind: dict[str, list[dict[str, Any]]] = {}
    for e in sorted(r.events, key=lambda e: e["virtual_ms"]):
        by_kind.setdefault(e["kind"], []).append(e)
    for expect in sc.expect:
        kind = expect["kind"]
        if kind == "delivered":
            checks.append(_delivered(expect, by_kind, world))
        elif kind == "call":
            calls = by_kind.get("call", [])
            want = {k: expect[k] for k in ("key", "outcome") if k in expect}
            hit = [c for c in calls if all(c["data"].get(k) == v for k, v in want.items())]
            seen = ", ".join(f"key {c['data'].get('key')} {c['data'].get('outcome')}" for c in calls) or "none"
            checks.append(Check(expect, bool(hit), f"call records stored: {seen}"))
        elif kind == "sms_sent":
            n = len(modem.sent_sms)
            want = int(expect.get("count", 1))
            checks.append(Check(expect, n >= want, f"{n} SMS sent by the card"))
        elif kind == "no_loss":
            stored = {e.get("counter") for e in r.events}
            missing = sorted(r.sent_counters - stored)
            gaps = _gaps(sorted(c for c in stored if isinstance(c, int)))
            allowed = world.torn_writes
            ok = not missing and len(gaps) <= allowed
            detail = (f"{len(stored)} frames stored, {len(r.sent_counters)} counters sent; "
                      f"sent but not stored: {missing[:10] or 'none'}; counter gaps: {gaps[:10] or 'none'}"
                      + (f" ({allowed} allowed: records torn by the power cut)" if allowed else ""))
            checks.append(Check(expect, ok, detail))
        elif kind == "order":
            first = expect.get("first")
            after = world.coverage_back_ms[-1] if world.coverage_back_ms else 0
            # by the transmission that was stored (virtual_ms), not by the frame's first attempt:
            # a frame first tried before the hole is retransmitted after it in outbox order
            later = [e for e in sorted(r.events, key=lambda e: (e["virtual_ms"], e["sent_rank"]))
                     if e["virtual_ms"] >= after]
            got = later[0]["kind"] if later else None
            checks.append(Check(expect, got == first,
                                f"first sent after coverage came back: {got or 'nothing'}"))
        elif kind == "min_days":
            days = r.energy.get("days_per_charge") or 0.0
            want = float(expect.get("days", 0))
            checks.append(Check(expect, days >= want,
                                f"{days:.1f} days per charge from the firmware run (duty model: "
                                f"{r.duty_energy.get('days_per_charge') or 0:.1f}); target {want:g}"))
    return checks


def _gaps(counters: list[int]) -> list[tuple[int, int]]:
    return [(a, b) for a, b in zip(counters, counters[1:]) if b > a + 1]


def _delivered(expect: dict[str, Any], by_kind: dict[str, list[dict[str, Any]]], world: ScenarioWorld) -> Check:
    mtype = expect.get("type")
    want = {k: v for k, v in expect.items() if k not in ("kind", "type", "within_s")}
    hits = [e for e in by_kind.get(mtype, []) if all(e["data"].get(k) == v for k, v in want.items())]
    what = f"{mtype}" + "".join(f" {k}={v}" for k, v in want.items())
    if not hits:
        kinds = ", ".join(f"{k} {len(v)}" for k, v in sorted(by_kind.items())) or "nothing"
        return Check(expect, False, f"no {what} stored (stored: {kinds})")
    within = expect.get("within_s")
    if within is None:
        return Check(expect, True, f"{len(hits)} {what} stored")
    starts = [ms for step in TRIGGERS.get(mtype, ()) for ms in world.step_ms.get(step, [])]
    start = min(starts) if starts else 0
    took = (hits[0]["virtual_ms"] - start) / 1000
    return Check(expect, took <= float(within), f"{what} stored {took:.1f} s after the step that "
                                                f"caused it (at most {within} s)")
