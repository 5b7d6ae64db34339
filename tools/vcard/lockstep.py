"""Several virtual cards on one virtual time, with a real receiver and alert engine following it
(the demo village: `carecard demo`).

Each card's runner plays in its own thread on its own virtual clock; a `Lockstep` holds them
together, a quantum of virtual time at a time: no card passes the quantum's end until every card
in the village has reached it (or left). When the last one arrives, the quantum ends:

1. every frame sent in it has been answered or given up on by its card, so it is in the log:
   the engine's clock moves to the quantum's end (host/simclock.py), and the lockstep waits
   until the engine has stepped there (its alerts, escalations and check-in prompts committed);
2. `on_quantum(t)` runs (the demo shows new alerts, the progress bar);
3. the receiver's clock moves to the next quantum's end (it stamps frames received during
   the quantum with it), and the cards go on.

A card's day may start later than the village's (it waits until the village's time reaches its
start) and end earlier (it leaves).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

ENGINE_WAIT_S = 60.0   # real time an engine step may take before the lockstep gives up on it


class LockstepError(RuntimeError):
    """The alert engine did not follow the virtual clock (its process is stuck or gone)."""


class Lockstep:
    def __init__(self, start: float, quantum_s: float, clock: Any = None, *,
                 on_quantum: Callable[[float], None] | None = None,
                 engine_wait_s: float = ENGINE_WAIT_S) -> None:
        """`start`: the village's first moment (unix s); `clock`: a writable
        host.simclock.SimulationClock (None: cards in lockstep without a receiver's clock)."""
        if quantum_s <= 0:
            raise ValueError(f"quantum_s must be positive, got {quantum_s!r}")
        self.limit = float(start)     # no card passes this virtual time (unix s)
        self.quantum_s = float(quantum_s)
        self.clock = clock
        self.on_quantum = on_quantum
        self.engine_wait_s = engine_wait_s
        self.quanta = 0
        self.error: BaseException | None = None
        self._members: set[Any] = set()
        self._waiting: dict[Any, Callable[[], bool]] = {}   # member: can it go on?
        self._cond = threading.Condition()
        if clock is not None:
            clock.set_receiver(self.limit)
            clock.set_engine(self.limit)

    def join(self, member: Any) -> None:
        with self._cond:
            self._members.add(member)

    def leave(self, member: Any) -> None:
        """The member's day is over (or it failed): the others no longer wait for it."""
        with self._cond:
            self._members.discard(member)
            self._waiting.pop(member, None)
            self._maybe_advance()

    def stop(self, reason: str) -> None:
        """Stop every member at its next gate with LockstepError(reason) (an interrupted demo)."""
        with self._cond:
            if self.error is None:
                self.error = LockstepError(reason)
            self._cond.notify_all()

    def wait_until(self, member: Any, t: float) -> None:
        """Block until the village's time reaches `t` (a card whose day starts later)."""
        self._block(member, lambda: self.limit >= t)

    def allowed(self, member: Any, at: float) -> float:
        """The member is at `at` and wants to go on: block until the limit is past it; the new
        limit (unix s)."""
        self._block(member, lambda: self.limit > at)
        return self.limit

    def _block(self, member: Any, ready: Callable[[], bool]) -> None:
        with self._cond:
            if self.error is None and ready():
                return
            self._waiting[member] = ready
            try:
                while self.error is None and not ready():
                    self._maybe_advance()
                    if self.error is not None or ready():
                        break
                    self._cond.wait()
            finally:
                self._waiting.pop(member, None)
            if self.error is not None:
                raise LockstepError(str(self.error))

    def _maybe_advance(self) -> None:
        """With the condition held: while every member waits and none can go on yet, end the
        quantum (a member woken by the last one may not have run yet: it still waits, ready)."""
        waiting = self._waiting
        try:
            while (self.error is None and self._members and self._members <= waiting.keys()
                   and not any(ready() for ready in waiting.values())):
                self._end_quantum()
        except BaseException as exc:   # every card stops, with the reason
            self.error = exc
        self._cond.notify_all()

    def step_engine(self, t: float) -> None:
        """Move the engine's clock to `t` (every frame before it is in the log) and wait until
        the engine has stepped there. Raises LockstepError when it does not within engine_wait_s."""
        clock = self.clock
        if clock is None:
            return
        if clock.engine() < t:
            clock.set_engine(t)
        if not clock.wait_engine_stepped(t, self.engine_wait_s):
            raise LockstepError(f"the alert engine did not step to the virtual time {t:.0f} within "
                                f"{self.engine_wait_s:.0f} s: is the receiver's engine child running? "
                                "(see the receiver's log)")

    def _end_quantum(self) -> None:
        t = self.limit
        self.step_engine(t)
        if self.on_quantum is not None:
            self.on_quantum(t)
        self.quanta += 1
        self.limit = t + self.quantum_s
        if self.clock is not None:
            self.clock.set_receiver(self.limit)
