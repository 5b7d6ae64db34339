"""The simulated modem (modem_sim.ModemSim) behind a real pty, in real time, with its UDP bridged
to real sockets on 127.0.0.1.

    with PtyModem(powered=True) as modem:
        modem.port                     # "/dev/pts/N": give it to any AT client (pyserial, ...)
        modem.control(lambda sim: sim.incoming_call("+8613800000000"))

A thread serves the pty: bytes the client writes go to the simulator, its output goes back,
and timers run on the monotonic clock. Datagrams the card sends (AT+CIPSEND) leave from one UDP
socket bound to 127.0.0.1, so a real `carecard receive` gets them; what comes back to that socket
(acks, downlinks) is handed to the card as "RECV FROM:" / "+IPD". DTR and PWRKEY have no pty
line: they are control calls (`control(lambda sim: sim.set_dtr(1))`); RI pulses are counted in
`ri_pulses` and passed to `on_ri`.

The pty slave is put in raw mode (no echo, no line editing, no CR/NL translation), as a UART
is; the master's own copy is kept open so a client may close and reopen the port.
"""

from __future__ import annotations

import os
import select
import socket
import threading
import time
import tty
from collections.abc import Callable
from typing import Any

from carecard.tools.vcard.modem_sim import ModemSim


class PtyModem:
    def __init__(self, on_ri: Callable[[int], None] | None = None, bind_host: str = "127.0.0.1",
                 **sim_args: Any) -> None:
        self._lock = threading.RLock()
        self._t0 = time.monotonic()
        self.ri_pulses = 0
        self._user_on_ri = on_ri
        self.master, self.slave = os.openpty()
        tty.setraw(self.slave)
        self.port = os.ttyname(self.slave)
        self.udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.udp.bind((bind_host, 0))
        self.udp.setblocking(False)
        self.sim = ModemSim(on_udp_send=self._udp_send, on_ri=self._ri, **sim_args)
        self._wake_r, self._wake_w = os.pipe()
        self._stop = False
        self.errors: list[str] = []
        self._thread = threading.Thread(target=self._serve, name="pty-modem", daemon=True)
        self._thread.start()

    def _now_ms(self) -> int:
        return int((time.monotonic() - self._t0) * 1000)

    def _ri(self, pulse_ms: int) -> None:
        self.ri_pulses += 1
        if self._user_on_ri is not None:
            self._user_on_ri(pulse_ms)

    def _udp_send(self, host: str, port: int, payload: bytes) -> None:
        try:
            self.udp.sendto(payload, (host, port))
        except OSError as exc:
            self.errors.append(f"UDP to {host}:{port}: {exc}")

    def control(self, action: Callable[[ModemSim], Any]) -> Any:
        """Run `action(sim)` in step with the serving thread (world events, DTR, PWRKEY)."""
        with self._lock:
            self.sim.advance(self._now_ms())
            result = action(self.sim)
            self._flush()
        os.write(self._wake_w, b"x")
        return result

    def _flush(self) -> None:
        out = self.sim.take_output()
        while out:
            try:
                n = os.write(self.master, out)
            except BlockingIOError:
                select.select([], [self.master], [], 0.05)
                continue
            out = out[n:]

    def _serve(self) -> None:
        while not self._stop:
            with self._lock:
                deadline = self.sim.next_deadline()
            timeout = 0.5 if deadline is None else max(0.0, (deadline - self._now_ms()) / 1000)
            ready, _, _ = select.select([self.master, self.udp, self._wake_r], [], [], min(timeout, 0.5))
            with self._lock:
                now = self._now_ms()
                if self._wake_r in ready:
                    os.read(self._wake_r, 4096)
                if self.master in ready:
                    try:
                        data = os.read(self.master, 4096)
                    except OSError:
                        data = b""
                    if data:
                        self.sim.receive(data, now)
                if self.udp in ready:
                    try:
                        payload, (host, port) = self.udp.recvfrom(65536)
                    except OSError:
                        payload = b""
                    if payload:
                        self.sim.deliver_udp(host, port, payload, now)
                self.sim.advance(now)
                self._flush()

    def close(self) -> None:
        self._stop = True
        os.write(self._wake_w, b"x")
        self._thread.join(timeout=5)
        for fd in (self.master, self.slave, self._wake_r, self._wake_w):
            try:
                os.close(fd)
            except OSError:
                pass
        self.udp.close()

    def __enter__(self) -> "PtyModem":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
