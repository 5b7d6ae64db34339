"""The downlink command lifecycle (host/downlink_lifecycle.py): the transition table,
the pure functions that move a command, and the SQL and ingest that take their states from it."""

from __future__ import annotations

import re
import sqlite3
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from carecard.host import downlink_lifecycle as lifecycle
from carecard.host.downlink_lifecycle import CommandRecord, CommandStateError
from carecard.protocol import spec

HOST = Path(__file__).resolve().parent.parent / "host"


def _command(state: str = lifecycle.QUEUED, attempts: int = 0, created_at: float = 1000.0) -> CommandRecord:
    return CommandRecord(7, 861234567890123, 3, "locate_now", {}, state, attempts, created_at, created_at)


def test_the_states_are_the_specs_answers_plus_the_receivers_own() -> None:
    assert lifecycle.RESULT_STATES == tuple(spec.ENUMS["command_result"])
    assert set(lifecycle.TRANSITIONS) == set(lifecycle.STATES)
    assert len(set(lifecycle.STATES)) == len(lifecycle.STATES)
    for state in lifecycle.FINAL_STATES:
        assert lifecycle.TRANSITIONS[state] == frozenset()
    for state in lifecycle.OPEN_STATES:
        assert lifecycle.TRANSITIONS[state] == {lifecycle.SENT, *lifecycle.FINAL_STATES}


def test_an_ack_counts_an_attempt_and_keeps_the_first_send_time() -> None:
    command = _command()
    first = lifecycle.on_ack(command, 1010.0)
    assert first == (lifecycle.SENT, 1, 1010.0, 1010.0, None, None, 1010.0, 7)
    assert (command.state, command.attempts) == (lifecycle.QUEUED, 0), "pure: the record is unchanged"
    lifecycle.apply(command, first)
    second = lifecycle.on_ack(command, 1020.0)
    assert (second.attempts, second.first_sent_at, second.last_sent_at) == (2, 1010.0, 1020.0)


@pytest.mark.parametrize("result, state", [*((r, r) for r in spec.ENUMS["command_result"]),
                                           ("something_new", lifecycle.REJECTED)])
def test_a_result_ends_an_open_command_in_its_state(result: str, state: str) -> None:
    for start in lifecycle.OPEN_STATES:
        change = lifecycle.on_result(_command(start), result, 1100.0)
        assert (change.state, change.result, change.updated_at) == (state, result, 1100.0)


def test_expiry_by_age_and_failure_by_attempts() -> None:
    assert lifecycle.expire(_command(), 1000.0 + 60, 60) is None
    expired = lifecycle.expire(_command(), 1000.0 + 60.5, 60)
    assert expired is not None and expired.state == lifecycle.EXPIRED and "within 60 s" in expired.detail
    assert lifecycle.expire(_command(lifecycle.SENT, attempts=20), 1001.0, 60) is None  # age only
    failed = lifecycle.expire(_command(lifecycle.SENT, attempts=20), 1001.0, 60, max_attempts=20)
    assert failed is not None and failed.state == lifecycle.FAILED and "20 acks" in failed.detail


def test_a_final_command_moves_nowhere() -> None:
    for state in lifecycle.FINAL_STATES:
        command = _command(state)
        for move in (lambda c: lifecycle.on_ack(c, 2000.0), lambda c: lifecycle.on_result(c, "done", 2000.0),
                     lambda c: lifecycle.cancel(c, 2000.0)):
            with pytest.raises(CommandStateError, match=f"is (already )?{state}"):
                move(command)
        with pytest.raises(CommandStateError):
            lifecycle.expire(command, 10_000.0, 60)


_EVENTS = st.lists(st.one_of(
    st.just(("ack",)), st.tuples(st.just("result"), st.sampled_from(list(spec.ENUMS["command_result"]) + ["x"])),
    st.tuples(st.just("expire"), st.floats(0, 200)), st.just(("cancel",))), max_size=30)


@settings(max_examples=200, deadline=None)
@given(events=_EVENTS, max_attempts=st.integers(1, 5))
def test_any_sequence_of_events_follows_the_table(events: list[tuple], max_attempts: int) -> None:
    """Whatever happens to a command, every change is a transition of the table, attempts only
    grow, and once final it stays final (further events are refused, never applied)."""
    command = _command()
    now = 1000.0
    for event in events:
        now += 1.0
        before = command.state
        try:
            if event[0] == "ack":
                change = lifecycle.on_ack(command, now)
            elif event[0] == "result":
                change = lifecycle.on_result(command, event[1], now)
            elif event[0] == "expire":
                change = lifecycle.expire(command, now + event[1], 100.0, max_attempts)
            else:
                change = lifecycle.cancel(command, now)
        except CommandStateError:
            assert before in lifecycle.FINAL_STATES
            continue
        if change is None:
            continue
        assert change.state in lifecycle.TRANSITIONS[before] and change.attempts >= command.attempts
        lifecycle.apply(command, change)
        assert command.state == change.state


def test_the_store_writes_a_change_only_to_an_open_command(tmp_path: Path) -> None:
    """UPDATE_COMMAND is made from CHANGE_COLUMNS and OPEN_STATES: a change to a command that an
    operator finished meanwhile (cancelled) leaves it as it is."""
    from carecard.host.storage.sqlite.store import UPDATE_COMMAND, SQLiteStore, list_commands

    store = SQLiteStore(tmp_path / "c.sqlite", readonly_lookups=False)
    try:
        with store.transaction() as conn:
            conn.execute("INSERT INTO devices (device, name, created_at, updated_at) VALUES (1, 'a', 0, 0)")
            for command_id, state in ((1, lifecycle.QUEUED), (2, lifecycle.CANCELLED)):
                conn.execute("INSERT INTO commands (id, device, seq, cmd, args, state, created_at, updated_at) "
                             "VALUES (?, 1, ?, 'locate_now', '{}', ?, 0, 0)", (command_id, command_id, state))
        queued, cancelled = list_commands(store.connection, 1)
        with store.transaction() as conn:
            conn.execute(UPDATE_COMMAND, lifecycle.on_ack(queued, 5.0))
            conn.execute(UPDATE_COMMAND, lifecycle.on_ack(_command(lifecycle.SENT), 5.0)._replace(id=2))
        after = list_commands(store.connection, 1)
        assert (after[0].state, after[0].attempts, after[0].first_sent_at) == (lifecycle.SENT, 1, 5.0)
        assert (after[1].state, after[1].attempts) == (lifecycle.CANCELLED, 0)
    finally:
        store.close()


def test_no_command_state_is_spelled_outside_the_lifecycle() -> None:
    """The receiver's own states are words of downlink_lifecycle only: no 'queued', 'sent',
    'failed', 'expired' or 'cancelled' literal elsewhere in the host's code (SQL included). (The
    card's answers are the protocol's words, spec.ENUMS["command_result"], used as such.)"""
    words = "|".join((*lifecycle.OPEN_STATES, lifecycle.FAILED, lifecycle.EXPIRED, lifecycle.CANCELLED))
    literal = re.compile(rf"""(['"])({words})\1""")
    offenders = []
    for path in sorted(HOST.rglob("*.py")):
        if path.name == "downlink_lifecycle.py":
            continue
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if literal.search(line):
                offenders.append(f"{path.relative_to(HOST)}:{number}: {line.strip()}")
    assert offenders == []
