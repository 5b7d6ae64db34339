"""The clock of a simulation (`carecard demo`): virtual time that a simulator moves, shared with
a real `carecard receive` and its alert engine through a small file.

Simulation only: `carecard receive --simulation-clock FILE`. A receiver without it runs on the
real clock, as it must with real cards.

Why two times: virtual cards run in lockstep, a quantum of virtual time at a time. While they
play (receiver_time .. receiver_time + quantum), the receiver stamps what it receives with the
quantum's end (a frame is received after it was sent, never before); the engine's clock stays at
the quantum's start, so it cannot run past a frame still on its way. When every card has reached
the quantum's end and every frame has been committed, the simulator moves the engine's clock
there and waits until the engine has stepped at it (`engine_stepped`), then opens the next
quantum. So alerts, escalations and check-in prompts happen at the virtual times they would
have had on the real clock.

The file: 32 bytes, four little-endian float64 (unix seconds): receiver time, engine time,
engine stepped (written by the engine), and a format marker. Each value is written by one
process only; an aligned 8-byte store is not torn.
"""

from __future__ import annotations

import mmap
import os
import struct
import time
from pathlib import Path

_FORMAT = struct.Struct("<dddd")
_VALUE = struct.Struct("<d")
_MARKER = 20261204.0  # tells a clock file from any other 32 bytes
RECEIVER, ENGINE, ENGINE_STEPPED, _MARK = 0, 8, 16, 24


class SimulationClockError(RuntimeError):
    """The clock file is missing or is not a simulation clock."""


class SimulationClock:
    """A view of a clock file. `receiver()` and `engine()` read the two clocks; the simulator
    moves them with `set_receiver` / `set_engine`; the engine reports with `set_engine_stepped`."""

    def __init__(self, path: Path, *, writable: bool = False) -> None:
        self.path = Path(path)
        try:
            fd = os.open(self.path, os.O_RDWR if writable else os.O_RDONLY)
        except OSError as exc:
            raise SimulationClockError(f"simulation clock {self.path}: {exc.strerror or exc} "
                                       "(it is made by the simulator, e.g. carecard demo)") from None
        try:
            if os.fstat(fd).st_size != _FORMAT.size:
                raise SimulationClockError(f"simulation clock {self.path}: not {_FORMAT.size} bytes: not a "
                                           "clock file (written by carecard demo)")
            self._map = mmap.mmap(fd, _FORMAT.size, access=mmap.ACCESS_WRITE if writable else mmap.ACCESS_READ)
        finally:
            os.close(fd)
        if _VALUE.unpack_from(self._map, _MARK)[0] != _MARKER:
            self._map.close()
            raise SimulationClockError(f"simulation clock {self.path}: no clock marker: not a clock file")

    @classmethod
    def create(cls, path: Path, start: float) -> "SimulationClock":
        """A new clock file at `start` (both clocks), for the simulator that moves it."""
        tmp = Path(f"{path}.tmp")
        tmp.write_bytes(_FORMAT.pack(start, start, 0.0, _MARKER))
        os.replace(tmp, path)
        return cls(path, writable=True)

    def receiver(self) -> float:
        return _VALUE.unpack_from(self._map, RECEIVER)[0]

    def engine(self) -> float:
        return _VALUE.unpack_from(self._map, ENGINE)[0]

    def engine_stepped(self) -> float:
        return _VALUE.unpack_from(self._map, ENGINE_STEPPED)[0]

    def set_receiver(self, t: float) -> None:
        _VALUE.pack_into(self._map, RECEIVER, t)

    def set_engine(self, t: float) -> None:
        _VALUE.pack_into(self._map, ENGINE, t)

    def set_engine_stepped(self, t: float) -> None:
        _VALUE.pack_into(self._map, ENGINE_STEPPED, t)

    def wait_engine_stepped(self, t: float, timeout: float, poll_s: float = 0.0005) -> bool:
        """Wait (real time) until the engine has stepped with its clock at `t` or later."""
        deadline = time.monotonic() + timeout
        while self.engine_stepped() < t:
            if time.monotonic() > deadline:
                return False
            time.sleep(poll_s)
        return True

    def close(self) -> None:
        self._map.close()
