"""The life of a downlink command: its states, the transitions between them, and what moves it.

    queued -> sent (attempts n) -> done | rejected | unsupported | bad_value   (the card's answer)
                                -> failed    (max_attempts acks carried it, no answer)
                                -> expired   (older than expire_after_s, no answer)
    queued | sent -> cancelled                (carecard send ... cancel SEQ)

A queued command can also be answered: the ack of a retransmission carries open commands without
counting an attempt, so the card may confirm one that never left `queued`.

Pure functions, no I/O: `on_ack`, `on_result`, `expire` and `cancel` take a command and the time
and return the change (a CommandChange: the row the store writes, in CHANGE_COLUMNS order), or
raise CommandStateError for a transition the table does not allow. `apply` makes a change on the
in-memory record. The store's SQL and the ingest take the states from here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NamedTuple

from carecard.protocol import spec

QUEUED = "queued"
SENT = "sent"
# The card's answers (spec.ENUMS["command_result"]): done, rejected, unsupported, bad_value.
RESULT_STATES: tuple[str, ...] = tuple(spec.ENUMS["command_result"])
DONE = "done"
REJECTED = "rejected"  # also the state of an answer this receiver does not know
FAILED = "failed"
EXPIRED = "expired"
CANCELLED = "cancelled"

OPEN_STATES = (QUEUED, SENT)
FINAL_STATES = RESULT_STATES + (FAILED, EXPIRED, CANCELLED)
STATES = OPEN_STATES + FINAL_STATES
if DONE not in RESULT_STATES or REJECTED not in RESULT_STATES:
    raise ImportError("protocol/spec.py ENUMS['command_result'] must name 'done' and 'rejected'")

# state -> the states it may move to; final states move nowhere.
TRANSITIONS: dict[str, frozenset[str]] = {
    QUEUED: frozenset((SENT,) + FINAL_STATES),
    SENT: frozenset((SENT,) + FINAL_STATES),
    **{state: frozenset() for state in FINAL_STATES},
}

# The columns a change writes, the command's id last (the row's key).
CHANGE_COLUMNS = ("state", "attempts", "first_sent_at", "last_sent_at", "result", "detail", "updated_at", "id")


class CommandStateError(ValueError):
    """A transition the lifecycle does not allow (e.g. cancelling a command already done)."""


@dataclass
class CommandRecord:
    id: int
    device: int
    seq: int
    cmd: str
    args: dict[str, Any]
    state: str
    attempts: int = 0
    created_at: float = 0.0
    updated_at: float = 0.0
    first_sent_at: float | None = None
    last_sent_at: float | None = None
    result: str | None = None
    detail: str | None = None

    @property
    def is_open(self) -> bool:
        return self.state in OPEN_STATES


class CommandChange(NamedTuple):
    """A command's new state and counters, in CHANGE_COLUMNS order."""

    state: str
    attempts: int
    first_sent_at: float | None
    last_sent_at: float | None
    result: str | None
    detail: str | None
    updated_at: float
    id: int


def _move(command: CommandRecord, state: str, now: float, *, attempts: int | None = None,
          first_sent_at: float | None = None, last_sent_at: float | None = None,
          result: str | None = None, detail: str | None = None) -> CommandChange:
    if state not in TRANSITIONS[command.state]:
        raise CommandStateError(f"command #{command.seq} {command.cmd} of device {command.device} "
                                f"is {command.state}: it cannot become {state}")
    return CommandChange(state, command.attempts if attempts is None else attempts,
                         command.first_sent_at if first_sent_at is None else first_sent_at,
                         command.last_sent_at if last_sent_at is None else last_sent_at,
                         result if result is not None else command.result,
                         detail if detail is not None else command.detail, now, command.id)


def on_ack(command: CommandRecord, now: float) -> CommandChange:
    """The command went out in the ack of a new frame: one more attempt."""
    return _move(command, SENT, now, attempts=command.attempts + 1,
                 first_sent_at=command.first_sent_at if command.first_sent_at is not None else now,
                 last_sent_at=now)


def on_result(command: CommandRecord, result: str, now: float) -> CommandChange:
    """The card answered with a command_result; an answer not in the spec counts as rejected."""
    return _move(command, result if result in RESULT_STATES else REJECTED, now, result=result)


def expire(command: CommandRecord, now: float, expire_after_s: float,
           max_attempts: int | None = None) -> CommandChange | None:
    """The command's end for want of an answer, or None while it may still go out: expired when
    older than `expire_after_s`, failed when `max_attempts` acks carried it (if given)."""
    if now - command.created_at > expire_after_s:
        return _move(command, EXPIRED, now, detail=f"not confirmed within {expire_after_s:g} s")
    if max_attempts is not None and command.attempts >= max_attempts:
        return _move(command, FAILED, now, detail=f"sent in {command.attempts} acks without a command_result")
    return None


def cancel(command: CommandRecord, now: float, detail: str = "cancelled by the operator") -> CommandChange:
    """Cancelled by the operator (`detail` says why). Raises CommandStateError when the command
    is already final."""
    if not command.is_open:
        raise CommandStateError(f"command {command.seq} of device {command.device} is already {command.state}")
    return _move(command, CANCELLED, now, detail=detail)


def apply(command: CommandRecord, change: CommandChange) -> None:
    """Make the change on the in-memory record."""
    (command.state, command.attempts, command.first_sent_at, command.last_sent_at, command.result,
     command.detail, command.updated_at, _id) = change


def states_sql(states: tuple[str, ...]) -> str:
    """`('queued', 'sent')`: the states as an SQL list (they are fixed words, never input)."""
    return "(" + ", ".join(f"'{state}'" for state in states) + ")"
