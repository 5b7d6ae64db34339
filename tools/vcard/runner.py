"""The virtual card's runner: a firmware image on the MicroPython unix port with the simulated
board (tools/vcard/mpy/simboard.py), the simulated A7670 on a pty, the simulated GNSS on a pty,
and one virtual clock.

    card = VirtualCard(image, flash_dir, world=World(modem=ModemSim(...), gnss=GnssSim(...)))
    card.run(until_ms)                   # plays until the virtual clock reaches until_ms
    card.timeline, card.ledger, card.resets

Virtual time: the firmware's clock (board.now_ms()) is the runner's; it stands still while the
firmware computes and moves only in board.idle() / board.deep_sleep(), to the earlier of the
requested deadline and the next thing that wakes the card (a key, a motion interrupt, RI, bytes
from the modem or the GNSS receiver, a scheduled world event). So a simulated week of a card
that sleeps between events takes seconds.

The watchdog: the firmware starts it with board.watchdog_start(timeout) and feeds it; every
idle() tells the runner when it was last fed. A card that lets it run out in virtual time, or
that stops talking to the runner for `hang_s` real seconds (a busy loop), is reset: the process
is killed and started again with reset cause "watchdog". board.reboot() restarts it with
"soft", deep_sleep() with "deep_sleep"; a power loss (cut) with "power_on".

Energy: the modem and GNSS simulators report their states to the ledger; the MCU is "active"
while the firmware waits in idle(sleep=False) and between requests, "light" in idle(sleep=True),
"deep" in deep_sleep().
"""

from __future__ import annotations

import heapq
import os
import select
import socket
import subprocess
import time
import tty
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from carecard.tools import micropython
from carecard.tools.cardimage import micropython_path
from carecard.tools.vcard.energy import Ledger
from carecard.tools.vcard.modem_sim import ModemSim

SIMBOARD_DIR = Path(__file__).resolve().parent / "mpy"
EV_KEY, EV_MOTION, EV_RI = 1, 16, 32
KEYS = 4


class RunnerError(RuntimeError):
    """The virtual card could not run (no image, the interpreter failed to start)."""


@dataclass
class World:
    """What surrounds the card: its modem and GNSS simulators (a GNSS of None: no receiver
    output), the battery and charger, and the RTC."""

    modem: ModemSim
    gnss: Any = None
    battery_mv: Callable[[int], int] = lambda now_ms: 3900
    charging: Callable[[int], tuple[bool, bool]] = lambda now_ms: (False, False)
    has_motion_bus: bool = True
    rtc_unix_at_zero: float | None = None   # None: the RTC was never set (a card out of the box)
    divider: tuple[int, int] = (2, 1)       # battery mV = pin mV * num / den (470k/470k)


@dataclass
class Run:
    timeline: list[tuple[int, str, str]] = field(default_factory=list)   # (ms, what, detail)
    resets: list[tuple[int, str]] = field(default_factory=list)          # (ms, cause)
    requests: int = 0


def _raw_pty() -> tuple[int, int]:
    master, slave = os.openpty()
    tty.setraw(slave)
    os.set_blocking(master, False)
    # the card's side reads with poll + readinto: MicroPython's readinto waits for a full
    # buffer on a blocking descriptor, and returns what is there on a non-blocking one
    os.set_blocking(slave, False)
    return master, slave


class VirtualCard:
    def __init__(self, image: Path, flash_dir: Path, world: World, *, entry: str = "main.py",
                 heapsize: int | None = None, hang_s: float = 10.0,
                 network_rtt_ms: int = 300, reply_wait_s: float = 1.0,
                 on_output: Callable[[str, int, int], None] | None = None,
                 on_datagram: Callable[[str, bytes, int], None] | None = None,
                 rom: bool = False, gate: Callable[[int], int] | None = None) -> None:
        """rom: the image's lib/ in simulated flash (a ROMFS partition at /rom, first on the
        path: the .mpy files run in place, as a card ships them); else loaded into RAM.
        gate: cards in lockstep (tools/vcard/lockstep.py): called with the clock (ms) when it
        reached the last time it may reach, it blocks until the others caught up and returns
        the next such time."""
        if not (image / entry).exists():
            raise RunnerError(f"the card image {image} has no {entry}: nothing to run "
                              "(firmware/main.py boots the card)")
        # absolute: the process runs with the flash folder as its working directory
        self.image = image.resolve()
        self.flash_dir = flash_dir.resolve()
        self.world = world
        self.entry = entry
        self.rom = rom
        self._rom_dir: str | None = None   # the flash set-up, made at the first start
        self.heapsize = heapsize
        self.hang_s = hang_s
        self.on_output = on_output
        self.on_datagram = on_datagram   # ("out" | "in", payload, virtual ms) per datagram
        # a check run before each request of the card; True: it reset the card (the request
        # of the process that was reset is dropped)
        self.before_request: Callable[[], bool] | None = None
        self._deferred: str | None = None   # a reset the world asked for: "power_loss" or a cause
        self._eof = False
        self.now = 0
        self.gate = gate
        self._gate_ms = 0 if gate is not None else None   # the clock may not pass this
        self.ledger = Ledger(0)
        self.run_log = Run()
        self.levels = 0                 # key bits 0..3, motion latch bit 4
        self.pending_events = 0
        self.outputs: dict[str, int] = {}
        self._pwrkey_since: int | None = None
        self._wd_timeout = 0
        self._rtc_offset = world.rtc_unix_at_zero   # unix = offset + now/1000
        self._schedule: list[tuple[int, int, Callable[[], None]]] = []
        self._seq = 0
        self._proc: subprocess.Popen | None = None
        self._reset_cause = "power_on"
        self._stopped = False
        self.max_crashes = 3
        self._crashes = 0
        self._crash_at = -1
        # the modem's UDP, bridged to real sockets: datagrams leave from this socket, answers to
        # it come back as the modem's URCs. A send holds virtual time at send + network_rtt_ms
        # until an answer came or reply_wait_s of real time passed (a real receiver answers in
        # milliseconds; one that does not costs that wait per datagram).
        self.network_rtt_ms = network_rtt_ms
        self.reply_wait_s = reply_wait_s
        self.udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.udp.bind(("127.0.0.1", 0))
        self.udp.setblocking(False)
        self._awaiting: int | None = None
        self.reply_waits_expired = 0    # waits for an answer that ran out (reply_wait_s each)
        self._owed = 0                  # datagrams sent whose answer has not come in yet
        self.datagrams_out = 0
        self.last_send_wall = 0.0
        self.datagrams_in = 0
        if world.modem.on_udp_send is None:
            world.modem.on_udp_send = self._udp_send
        self.modem_master, self.modem_slave = _raw_pty()
        self.gnss_master, self.gnss_slave = _raw_pty()
        world.modem.on_ri = self._ri
        world.modem.on_power = lambda state, ms: self.ledger.set("modem", state, ms)
        self.ledger.set("modem", world.modem.power_state or "off", 0)
        if world.gnss is not None:
            world.gnss.on_power = lambda state, ms: self.ledger.set("gnss", state, ms)
            self.ledger.set("gnss", world.gnss.power_state or "off", 0)
        self.ledger.set("mcu", "active", 0)
        self.ledger.set("motion", "on" if world.has_motion_bus else "off", 0)

    # ---- world scheduling --------------------------------------------------------------------
    def at(self, when_ms: int, action: Callable[[], None]) -> None:
        """Run `action` when the virtual clock reaches when_ms (it wakes an idle card)."""
        self._seq += 1
        heapq.heappush(self._schedule, (when_ms, self._seq, action))

    def press(self, when_ms: int, key: int, hold_ms: int = 150) -> None:
        """Key `key` (0-based) pressed at when_ms for hold_ms."""
        def down() -> None:
            self.levels |= 1 << key
            self.pending_events |= EV_KEY << key
            self.note("key", f"{key + 1} down")

        def up() -> None:
            self.levels &= ~(1 << key)
            self.pending_events |= EV_KEY << key
            self.note("key", f"{key + 1} up")
        self.at(when_ms, down)
        self.at(when_ms + hold_ms, up)

    def motion(self, when_ms: int) -> None:
        def interrupt() -> None:
            self.levels |= 16
            self.pending_events |= EV_MOTION
        self.at(when_ms, interrupt)

    def note(self, what: str, detail: str) -> None:
        self.run_log.timeline.append((self.now, what, detail))

    def _udp_send(self, host: str, port: int, payload: bytes) -> None:
        self.last_send_wall = time.time()   # before it leaves: the receiver stamps it later
        try:
            self.udp.sendto(payload, (host, port))
        except OSError as exc:
            self.note("udp_error", f"to {host}:{port}: {exc}")
            return
        self.datagrams_out += 1
        self._owed += 1
        self._awaiting = self.now + self.network_rtt_ms
        if self.on_datagram is not None:
            self.on_datagram("out", payload, self.now)

    def _udp_receive(self, wait_s: float) -> None:
        """Answers that came in; with wait_s, wait up to that long (real time) for one, but
        only while an answer is owed (one read on an earlier turn needs no wait)."""
        if wait_s > 0 and self._owed > 0 and not select.select([self.udp], [], [], wait_s)[0]:
            self.reply_waits_expired += 1
            self._owed = 0   # lost, or never to come: later sends start the count again
        while True:
            try:
                payload, (host, port) = self.udp.recvfrom(65536)
            except (BlockingIOError, OSError):
                return
            self.datagrams_in += 1
            self._owed = max(0, self._owed - 1)
            if not self.world.modem.deliver_udp(host, port, payload, self.now):
                self.note("udp_lost", f"{len(payload)} bytes from {host}:{port}: no bearer")
            elif self.on_datagram is not None:
                self.on_datagram("in", payload, self.now)

    def _ri(self, pulse_ms: int) -> None:
        self.pending_events |= EV_RI

    # ---- the process -------------------------------------------------------------------------
    def _start(self) -> None:
        ctl_to_card_r, ctl_to_card_w = os.pipe()
        ctl_from_card_r, ctl_from_card_w = os.pipe()
        env: dict[str, str] = {}
        script = str(self.image / self.entry)
        if self.rom:
            import tempfile

            if self._rom_dir is None:
                self._rom_dir = tempfile.mkdtemp(prefix="carecard-vcard-rom-")
            code = (self.image / self.entry).read_text(encoding="utf-8")
            script, first = micropython.flash_script(code, self.image / "lib", Path(self._rom_dir))
            env.update(first)   # first in the environment (micropython.flash_script)
        env.update((k, v) for k, v in os.environ.items() if k not in env)
        env["MICROPYPATH"] = micropython_path(self.image) + f":{SIMBOARD_DIR}"
        env["CARECARD_SIM_CTL"] = f"{ctl_to_card_r},{ctl_from_card_w}"
        env["CARECARD_SIM_MODEM"] = str(self.modem_slave)
        env["CARECARD_SIM_GNSS"] = str(self.gnss_slave)
        argv = [micropython.micropython_executable()]
        if self.heapsize:
            argv += ["-X", f"heapsize={self.heapsize}"]
        argv.append(script)
        self._proc = subprocess.Popen(
            argv, cwd=self.flash_dir, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            pass_fds=(ctl_to_card_r, ctl_from_card_w, self.modem_slave, self.gnss_slave))
        os.close(ctl_to_card_r)
        os.close(ctl_from_card_w)
        self._to_card = ctl_to_card_w
        self._from_card = os.fdopen(ctl_from_card_r, "rb", buffering=0)
        self._from_buf = b""
        os.set_blocking(self._proc.stdout.fileno(), False)
        self.run_log.resets.append((self.now, self._reset_cause))
        self.note("boot", self._reset_cause)
        self.ledger.set("mcu", "active", self.now)

    def _kill(self) -> None:
        proc = self._proc
        if proc is None:
            return
        self._drain_stdout()
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        for f in (self._from_card,):
            f.close()
        try:
            os.close(self._to_card)
        except OSError:
            pass
        self._proc = None

    def reset(self, cause: str) -> None:
        """Restart the firmware (a reset of the MCU; the modem and GNSS keep their state)."""
        self._kill()
        self._reset_cause = cause
        # the MCU's pins float at reset: DTR (pulled down on the board) lets the modem wake
        self.world.modem.set_dtr(0, self.now)
        self.levels &= 15
        self._wd_timeout = 0
        self._start()

    def defer_reset(self, cause: str) -> None:
        """From a world event (`at`): reset the card with `cause` ("watchdog", "soft", ...) or
        cut its power ("power_loss") as soon as the running request is over."""
        self._deferred = cause

    def power_loss(self) -> None:
        """The battery disconnected and reconnected: everything restarts."""
        self._kill()
        self.world.modem.power_cut(self.now)
        if self.world.gnss is not None:
            self.world.gnss.set_power(False, self.now)
            self.world.gnss.set_backup(False, self.now)
        self._rtc_offset = None
        self._reset_cause = "power_on"
        self._start()

    def _drain_stdout(self) -> None:
        proc = self._proc
        if proc is None or proc.stdout is None:
            return
        try:
            data = proc.stdout.read()
        except (BlockingIOError, ValueError):
            data = None
        if data:
            for line in data.decode("utf-8", "replace").splitlines():
                self.note("print", line)

    def _readline(self) -> bytes | None:
        """The next request line from the card, or None when it exited or hung."""
        deadline = time.monotonic() + self.hang_s
        self._eof = False
        while b"\n" not in self._from_buf:
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            self._pump_modem_in()
            ready, _, _ = select.select([self._from_card, self.modem_master, self.gnss_master], [], [],
                                        min(left, 0.5))
            if self._from_card in ready:
                chunk = os.read(self._from_card.fileno(), 4096)
                if not chunk:
                    self._eof = True
                    return None
                self._from_buf += chunk
        line, _, self._from_buf = self._from_buf.partition(b"\n")
        return line

    # ---- the UARTs ---------------------------------------------------------------------------
    def _pump_modem_in(self) -> None:
        try:
            data = os.read(self.modem_master, 65536)
        except (BlockingIOError, OSError):
            data = b""
        if data:
            self.world.modem.receive(data, self.now)
        self._flush_modem()
        if self.world.gnss is not None:
            try:
                os.read(self.gnss_master, 65536)   # commands to the receiver: not simulated
            except (BlockingIOError, OSError):
                pass

    def _flush_modem(self) -> int:
        out = self.world.modem.take_output()
        if out:
            self._write_all(self.modem_master, out)
        return len(out)

    def _write_all(self, fd: int, data: bytes) -> None:
        while data:
            try:
                n = os.write(fd, data)
                data = data[n:]
            except BlockingIOError:
                select.select([], [fd], [], 0.1)

    def _uart_waiting(self) -> bool:
        return any(select.select([self.modem_slave, self.gnss_slave], [], [], 0)[0])

    # ---- time --------------------------------------------------------------------------------
    def _advance_to(self, target: int) -> None:
        """Move the clock to target, running world events and simulators on the way; stops early
        (self.now < target) when something wakes the card."""
        modem, gnss = self.world.modem, self.world.gnss
        while True:
            if self._gate_ms is not None and self.now >= self._gate_ms:
                assert self.gate is not None   # _gate_ms is kept only with a gate
                self._gate_ms = self.gate(self.now)
            candidates = [target]
            if self._gate_ms is not None:
                candidates.append(self._gate_ms)
            if self._schedule:
                candidates.append(self._schedule[0][0])
            d = modem.next_deadline()
            if d is not None:
                candidates.append(d)
            if self._awaiting is not None:
                candidates.append(self._awaiting)
            if gnss is not None:
                d = gnss.next_deadline()
                if d is not None:
                    candidates.append(d)
            step = max(self.now, min(candidates))
            self.now = step
            while self._schedule and self._schedule[0][0] <= self.now:
                _, _, action = heapq.heappop(self._schedule)
                action()
            modem.advance(self.now)
            if self._awaiting is not None and self.now >= self._awaiting:
                self._awaiting = None
                self._udp_receive(self.reply_wait_s)
            else:
                self._udp_receive(0)
            self._flush_modem()
            if gnss is not None:
                out = gnss.advance(self.now)
                if out:
                    self._write_all(self.gnss_master, out)
            if self.pending_events or self._deferred or self._uart_waiting() or self.now >= target:
                return

    def _do_deferred(self) -> None:
        cause, self._deferred = self._deferred, None
        self.note("reset", cause)
        if cause == "power_loss":
            self.power_loss()
        else:
            self.reset(cause)

    def _reply(self, extra: str = "") -> None:
        events = self.pending_events
        self.pending_events = 0
        line = f"{self.now} {events} {self.levels}{(' ' + extra) if extra else ''}\n"
        try:
            os.write(self._to_card, line.encode())
        except BrokenPipeError:
            pass   # the card died meanwhile: the next read sees it

    def _battery_uv(self) -> int:
        num, den = self.world.divider
        return self.world.battery_mv(self.now) * den * 1000 // num

    def _wake_cause(self, events: int, deadline: int) -> str:
        if events & 15:
            return "key"
        if events & EV_MOTION:
            return "motion"
        if events & EV_RI:
            return "ri"
        return "timer" if self.now >= deadline else "none"

    # ---- the loop ----------------------------------------------------------------------------
    def run(self, until_ms: int) -> Run:
        """Play until the virtual clock reaches until_ms."""
        if self._proc is None:
            self._start()
        while self.now < until_ms and not self._stopped:
            line = self._readline()
            if line is None:
                self._crashes += 1
                if self._crashes > self.max_crashes:
                    self._drain_stdout()
                    raise RunnerError(f"the firmware failed {self._crashes} times in a row at "
                                      f"{self.now} ms without time passing; its last output: "
                                      + " | ".join(d for _, w, d in self.run_log.timeline[-6:]))
                self._drain_stdout()
                if self._eof and self._proc is not None:
                    try:   # its end of the pipe closed: it is exiting
                        self._proc.wait(timeout=5)
                    except subprocess.TimeoutExpired:
                        pass
                exited = self._proc is not None and self._proc.poll() is not None
                self.note("crash" if exited else "hang",
                          f"exit status {self._proc.returncode}" if exited else f"no request in {self.hang_s} s")
                self._crash_at = self.now
                self.reset("watchdog" if self._wd_timeout and not exited else "hard")
                continue
            self.run_log.requests += 1
            self._drain_stdout()
            if self.before_request is not None and self.before_request():
                continue
            if self.now > self._crash_at:
                self._crashes = 0
            self._pump_modem_in()
            self._request(line.decode("utf-8", "replace").split(), until_ms)
        self._drain_stdout()
        return self.run_log

    def _request(self, words: list[str], until_ms: int) -> None:
        if not words:
            return
        cmd = words[0]
        if cmd.startswith("!"):
            self._output(cmd[1:], int(words[1]) if len(words) > 1 else 0)
            return
        if cmd == "hello":
            self._reply(f"{self._reset_cause} {1 if self.world.has_motion_bus else 0}")
        elif cmd == "idle" or cmd == "deep":
            ms = int(words[1])
            fed = int(words[-1])
            mode = "deep" if cmd == "deep" else ("light" if words[2] == "1" else "active")
            self.ledger.set("mcu", mode, self.now)
            deadline = min(self.now + ms, until_ms)
            if self._wd_timeout:
                deadline = min(deadline, fed + self._wd_timeout)
            self._advance_to(deadline)
            if self._deferred:
                self._do_deferred()
                return
            if self._wd_timeout and self.now >= fed + self._wd_timeout:
                self.note("watchdog", f"not fed for {self.now - fed} ms")
                self.reset("watchdog")
                return
            if cmd == "deep":
                self.reset("deep_sleep")
                return
            self.ledger.set("mcu", "active", self.now)
            sleep = words[2] == "1"
            # the battery and charger readings ride on the reply: the card reads them every
            # turn, and they change only while time passes
            chrg, stdby = self.world.charging(self.now)
            self._reply(f"{self._wake_cause(self.pending_events, deadline) if sleep else 'none'} "
                        f"{self._battery_uv()} {int(chrg)} {int(stdby)}")
        elif cmd == "battery":
            self._reply(str(self._battery_uv()))
        elif cmd == "charger":
            chrg, stdby = self.world.charging(self.now)
            self._reply(f"{int(chrg)} {int(stdby)}")
        elif cmd == "rtc":
            off = self._rtc_offset
            self._reply("-" if off is None else str(int(off + self.now / 1000)))
        elif cmd == "set_rtc":
            self._rtc_offset = int(words[1]) - self.now / 1000
            self._reply()
        elif cmd == "reboot":
            self.reset("soft")
        else:
            self._reply("error")
            self.note("bad_request", " ".join(words))

    def _output(self, name: str, value: int) -> None:
        modem, gnss = self.world.modem, self.world.gnss
        if name == "pwrkey":
            if value:
                self._pwrkey_since = self.now
            elif self._pwrkey_since is not None:
                modem.power_key(max(1, self.now - self._pwrkey_since), self.now)
                self._pwrkey_since = None
        elif name == "dtr":
            modem.set_dtr(value, self.now)
        elif name == "modem_power":
            if not value:
                modem.power_cut(self.now)
        elif name == "gnss_power" and gnss is not None:
            self._write_all(self.gnss_master, gnss.set_power(bool(value), self.now))
        elif name == "gnss_backup" and gnss is not None:
            self._write_all(self.gnss_master, gnss.set_backup(bool(value), self.now))
        elif name == "watchdog":
            self._wd_timeout = value
        if self.outputs.get(name) != value:
            self.outputs[name] = value
            if self.on_output is not None:
                self.on_output(name, value, self.now)
            if name in ("led", "buzzer", "vibration"):
                self.note(name, "on" if value else "off")
        self._flush_modem()

    def close(self) -> None:
        self._kill()
        for fd in (self.modem_master, self.modem_slave, self.gnss_master, self.gnss_slave):
            try:
                os.close(fd)
            except OSError:
                pass
        self.udp.close()
        if self._rom_dir is not None:
            import shutil

            shutil.rmtree(self._rom_dir, ignore_errors=True)

    def __enter__(self) -> "VirtualCard":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
