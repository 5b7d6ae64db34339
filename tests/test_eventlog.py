"""The durable event log: ordered, gap-free seqs, transactional with the
caller, readable concurrently, cursors that persist."""

from __future__ import annotations

import json
import sqlite3
import threading
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from carecard.host.events import event_from_message, event_json, parse_body
from carecard.host.paths import DEFAULT_DATA_DIR, events_db_path, ingest_db_path
from carecard.host.storage import EventLogError
from carecard.host.storage.sqlite.eventlog import SQLiteEventLog
from carecard.host.storage.sqlite.sql import insert_rows, multi_row_chunks

from eventgen import DEVICE, T0, position_event, position_message


def test_paths() -> None:
    assert DEFAULT_DATA_DIR == Path("data")
    assert ingest_db_path("d") == Path("d/carecard.sqlite")
    assert events_db_path(Path("d")) == Path("d/events.sqlite")


def test_append_is_part_of_the_callers_transaction(tmp_path: Path) -> None:
    db = tmp_path / "carecard.sqlite"
    writer = SQLiteEventLog.connect_writer(db)
    reader = SQLiteEventLog(db)
    writer.execute("BEGIN IMMEDIATE")
    writer.execute("CREATE TABLE other (n INTEGER)")
    writer.execute("INSERT INTO other VALUES (1)")
    assert SQLiteEventLog.append(writer, [position_event(1), position_event(2)]) == 2
    assert reader.last_seq() == 0 and reader.events_after(0) == []  # not committed yet
    writer.execute("ROLLBACK")
    assert reader.last_seq() == 0
    writer.execute("BEGIN IMMEDIATE")
    SQLiteEventLog.append(writer, [position_event(1), position_event(2)])
    writer.execute("COMMIT")
    assert [(seq, e["id"]) for seq, e in reader.events_after(0)] == [(1, position_event(1)["id"]),
                                                                     (2, position_event(2)["id"])]
    assert reader.events_after(1, 10)[0][1] == position_event(2)


def test_python_default_isolation_level(tmp_path: Path) -> None:
    """With sqlite3's default isolation level the insert opens a transaction that the caller commits."""
    db = tmp_path / "c.sqlite"
    SQLiteEventLog.connect_writer(db).close()
    conn = sqlite3.connect(db)
    conn.execute("CREATE TABLE IF NOT EXISTS other (n INTEGER)")
    conn.execute("INSERT INTO other VALUES (1)")
    SQLiteEventLog.append(conn, [position_event(1)])
    reader = SQLiteEventLog(db)
    assert reader.last_seq() == 0
    conn.commit()
    assert reader.last_seq() == 1


def test_every_event_is_appended_in_order_without_gaps(tmp_path: Path) -> None:
    db = tmp_path / "c.sqlite"
    writer = SQLiteEventLog.connect_writer(db)
    assert SQLiteEventLog.append(writer, [position_event(1), position_event(2)]) == 2
    assert SQLiteEventLog.append(writer, []) == 2
    assert SQLiteEventLog.append(writer, [position_event(3)]) == 3
    assert [(seq, e["counter"]) for seq, e in SQLiteEventLog(db).events_after(0)] == [(1, 1), (2, 2), (3, 3)]


@settings(max_examples=15, deadline=None)
@given(sizes=st.lists(st.integers(0, 400), min_size=1, max_size=5))
def test_large_appends_in_the_callers_transaction(tmp_path_factory: pytest.TempPathFactory,
                                                  sizes: list[int]) -> None:
    """Batches spanning several multi-row statements: order, bodies and gap-free seqs kept."""
    db = tmp_path_factory.mktemp("log") / "c.sqlite"
    writer = SQLiteEventLog.connect_writer(db)
    counters: list[int] = []
    for size in sizes:
        batch = list(range(len(counters) + 1, len(counters) + size + 1))
        writer.execute("BEGIN IMMEDIATE")
        head = SQLiteEventLog.append(writer, [position_event(n) for n in batch])
        writer.execute("COMMIT")
        counters += batch
        assert head == len(counters)
    with SQLiteEventLog(db) as reader:
        got = reader.entries_after(0, 10_000)
    assert [entry.seq for entry in got] == list(range(1, len(counters) + 1))
    assert [entry.event["counter"] for entry in got] == counters
    assert all(entry.body == event_json(entry.event) for entry in got)
    writer.close()


def test_multi_row_chunks_cover_every_row_once() -> None:
    for rows in range(0, 700):
        chunks = multi_row_chunks(rows)
        assert [start for start, _n in chunks] == [sum(n for _s, n in chunks[:i]) for i in range(len(chunks))]
        assert sum(n for _s, n in chunks) == rows
        assert len({n for _s, n in chunks}) <= 8


def test_insert_rows_without_fallback_raises(tmp_path: Path) -> None:
    conn = SQLiteEventLog.connect_writer(tmp_path / "c.sqlite")
    conn.execute("CREATE TABLE t (a INTEGER PRIMARY KEY, b TEXT)")
    conn.execute("BEGIN IMMEDIATE")
    insert_rows(conn, "INSERT INTO t (a, b) VALUES ", 2, [1, "x", 2, "y"])
    with pytest.raises(sqlite3.IntegrityError):
        insert_rows(conn, "INSERT INTO t (a, b) VALUES ", 2, [3, "z", 2, "again"])
    conn.execute("COMMIT")  # the failed statement was backed out alone
    assert conn.execute("SELECT a, b FROM t ORDER BY a").fetchall() == [(1, "x"), (2, "y")]


def test_prune_and_cursors(tmp_path: Path) -> None:
    db = tmp_path / "c.sqlite"
    writer = SQLiteEventLog.connect_writer(db)
    SQLiteEventLog.append(writer, [position_event(n) for n in range(1, 11)])
    log = SQLiteEventLog(db)
    assert log.load_cursor("sqlite") is None
    log.save_cursor("sqlite", 6)
    log.save_cursor("sqlite", 7)
    log.save_cursor("mqtt", 3)
    assert SQLiteEventLog(db).cursors() == {"sqlite": 7, "mqtt": 3}
    assert SQLiteEventLog.prune(writer, 3, max_rows=2) == 2
    assert SQLiteEventLog.prune(writer, 3) == 1
    assert log.first_seq() == 4 and log.last_seq() == 10
    SQLiteEventLog.append(writer, [position_event(11)])
    assert log.events_after(9) == [(10, position_event(10)), (11, position_event(11))]
    SQLiteEventLog.prune(writer, 11)
    assert log.first_seq() == 0 and log.last_seq() == 11  # seqs are never reused
    assert SQLiteEventLog.append(writer, [position_event(12)]) == 12


def test_open_errors(tmp_path: Path) -> None:
    with pytest.raises(EventLogError, match="does not exist"):
        SQLiteEventLog(tmp_path / "missing.sqlite")
    other = tmp_path / "other.sqlite"
    sqlite3.connect(other).execute("CREATE TABLE x (y)")
    with pytest.raises(EventLogError, match="no event_log or sink_cursor table"):
        SQLiteEventLog(other)
    junk = tmp_path / "junk.sqlite"
    junk.write_bytes(b"this is not a database" * 100)
    with pytest.raises(EventLogError):
        SQLiteEventLog(junk)


def test_reader_sees_a_gap_free_prefix_while_the_writer_appends(tmp_path: Path) -> None:
    db = tmp_path / "c.sqlite"
    writer = SQLiteEventLog.connect_writer(db)
    reader = SQLiteEventLog(db)
    total = 2000
    done = threading.Event()
    problems: list[str] = []

    def read() -> None:
        seq = 0
        while seq < total:
            for got, event in reader.events_after(seq, 100):
                if got != seq + 1 or event["counter"] != got:
                    problems.append(f"expected {seq + 1}, got {got}")
                seq = got
            if done.is_set() and reader.last_seq() == seq:
                break

    thread = threading.Thread(target=read)
    thread.start()
    for start in range(1, total + 1, 20):
        writer.execute("BEGIN IMMEDIATE")
        SQLiteEventLog.append(writer, [position_event(n) for n in range(start, start + 20)])
        writer.execute("COMMIT")
    done.set()
    thread.join(30)
    assert not thread.is_alive() and problems == []


def test_rows_that_are_not_json_are_a_typed_error(tmp_path: Path) -> None:
    db = tmp_path / "c.sqlite"
    writer = SQLiteEventLog.connect_writer(db)
    SQLiteEventLog.append(writer, [position_event(1)])
    good = event_json(position_event(2))
    for n, body in enumerate([" " + good + " ", good + "x", "{", "", "[1, 2", good.replace(":", "=", 1)], start=3):
        writer.execute("INSERT INTO event_log (event_id, appended_at, body) VALUES (?, 0, ?)", (f"e-{n}", body))
    with SQLiteEventLog(db) as reader:
        assert reader.events_after(0, 2) == [(1, position_event(1)), (2, position_event(2))]
        for seq in range(2, 7):
            with pytest.raises(EventLogError, match=f"seq {seq + 1} is not JSON"):
                reader.entries_after(seq, 1)


_JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.integers(min_value=2**62, max_value=2**70).map(lambda n: -n)
    | st.integers(min_value=2**62, max_value=2**70) | st.floats(allow_nan=False, allow_infinity=False) | st.text(),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=8), inner, max_size=5),
    max_leaves=25)


@settings(max_examples=400, deadline=None)
@given(_JSON_VALUES)
def test_parse_body_is_json_loads(value: object) -> None:
    body = json.dumps(value, separators=(",", ":"), ensure_ascii=False)
    assert repr(parse_body(body)) == repr(json.loads(body))


@pytest.mark.parametrize("body", [
    '{"x":18446744073709551616}', '{"x":-9223372036854775809}', '{"a":[{"b":123456789012345678901234}]}',
    '{"x":1e19}', '{"x":NaN}', '{"x":"\\ud800"}', '{"a":1,"a":2}', ' {"x":1} ', '18446744073709551617',
])
def test_parse_body_wide_integers_and_what_only_json_takes(body: str) -> None:
    assert repr(parse_body(body)) == repr(json.loads(body))


def test_entries_after_keeps_wide_integers_exact(tmp_path: Path) -> None:
    writer = SQLiteEventLog.connect_writer(tmp_path / "log.sqlite")
    event = {"id": "e1", "big": 2**70, "neg": -(2**64), "nested": {"n": [2**65, 1.5]}}
    SQLiteEventLog.append(writer, [event])
    with SQLiteEventLog(tmp_path / "log.sqlite") as log:
        (entry,) = log.entries_after(0)
    assert entry.event == event and type(entry.event["big"]) is int
    writer.close()


def test_a_damaged_opened_frame_in_the_log_is_a_clear_error_naming_its_row(tmp_path: Path) -> None:
    """A frame's event is logged as its opened frame; a row whose bytes are not one (a damaged
    file) stops the reader with an error that names the row, instead of a wrong event."""
    db = tmp_path / "c.sqlite"
    writer = SQLiteEventLog.connect_writer(db)
    SQLiteEventLog.append(writer, [position_event(1)])
    SQLiteEventLog.append_frames(writer, [(DEVICE, 2, bytes(8), "position", 0, 1.5, "udp", b"frame",
                                     b"\x01\x02garbage")])
    with SQLiteEventLog(db) as reader:
        assert reader.entries_after(0, 1)[0].event == position_event(1)  # the good row before it
        with pytest.raises(EventLogError, match="seq 2 is not an opened frame"):
            reader.entries_after(0)


_STORE_VALUES = """
import json, sqlite3, sys
conn = sqlite3.connect(":memory:")
conn.execute("CREATE TABLE t (v)")
values = [b"", bytes(range(256)), None, True, False, bytearray(b"ab"), memoryview(b"cd"), 0, -1,
          2**63 - 1, 1.5, "text", "\\u00e9"]
conn.executemany("INSERT INTO t VALUES (?)", [(v,) for v in values])
print(json.dumps(conn.execute("SELECT typeof(v), quote(v) FROM t ORDER BY rowid").fetchall()))
"""


def test_identity_adapters_store_exactly_what_sqlite3_stores_without_them(tmp_path: Path) -> None:
    """The adapters registered by carecard.host.storage.sqlite.sql (to spare sqlite3's failing adaptation
    lookup per bytes/None/bool parameter) change nothing that is stored: the same values give the
    same types and contents here as in an interpreter that never imported carecard. Opening a
    writer registers them."""
    import subprocess
    import sys

    SQLiteEventLog.connect_writer(tmp_path / "log.sqlite").close()
    assert sqlite3.adapters[(bytes, sqlite3.PrepareProtocol)] is bytes.__bytes__
    assert sqlite3.adapters[(type(None), sqlite3.PrepareProtocol)] is not None
    assert sqlite3.adapters[(bool, sqlite3.PrepareProtocol)] is int
    register = "from carecard.host.storage.sqlite.sql import register_identity_adapters\nregister_identity_adapters()\n"
    with_adapters = subprocess.run([sys.executable, "-c", register + _STORE_VALUES], capture_output=True,
                                   text=True, check=True).stdout
    without = subprocess.run([sys.executable, "-c", _STORE_VALUES], capture_output=True, text=True,
                             check=True).stdout
    assert json.loads(with_adapters) == json.loads(without)
    assert [kind for kind, _value in json.loads(without)][:5] == ["blob", "blob", "null", "integer", "integer"]


def _frame_row(device: int, counter: int) -> tuple:
    """A FRAME_ROW as the ingest hands it over (archive columns, then an opened frame)."""
    from carecard.protocol import decode_frame, encode_frame

    message = position_message(counter, device=device)
    frame = encode_frame(message, bytes(16))
    opened: list[bytes] = []
    decode_frame(frame, bytes(16), opened)
    return (device, counter, frame[-8:], "position", message["time"], T0 + counter, "udp", frame, opened[0])


def test_frames_rows_are_the_archive_unique_and_never_pruned(tmp_path: Path) -> None:
    """append_frames writes one row per frame: the sinks read it as the frame's event, the
    `frames` view shows it as the archive, (device, counter) is unique, and pruning takes the
    other events' rows only."""
    db = tmp_path / "c.sqlite"
    writer = SQLiteEventLog.connect_writer(db)
    SQLiteEventLog.append(writer, [position_event(1)])
    assert SQLiteEventLog.append_frames(writer, [_frame_row(DEVICE, 2), _frame_row(DEVICE, 3)]) == 3
    SQLiteEventLog.append(writer, [position_event(4)])
    with pytest.raises(sqlite3.IntegrityError):
        SQLiteEventLog.append_frames(writer, [_frame_row(DEVICE, 5), _frame_row(DEVICE, 3)])
    assert writer.execute("SELECT device, counter, type, transport FROM frames").fetchall() == [
        (DEVICE, 2, "position", "udp"), (DEVICE, 3, "position", "udp")]
    log = SQLiteEventLog(db)
    assert [(seq, event["id"]) for seq, event in log.events_after(0)] == [
        (1, position_event(1)["id"]), (2, f"{DEVICE}-2"), (3, f"{DEVICE}-3"), (4, position_event(4)["id"])]
    assert log.events_after(1)[0][1] == event_from_message(position_message(2), T0 + 2)
    assert SQLiteEventLog.prune(writer, 4) == 2
    assert [row[0] for row in writer.execute("SELECT seq FROM event_log")] == [2, 3]
    assert log.first_seq() == 2 and log.last_seq() == 4
    log.close()
    writer.close()


def test_the_hot_queries_use_their_indexes(tmp_path: Path) -> None:
    """The ingest's replay lookups go through the frames' unique index and pruning through the
    partial index of prunable rows: neither reads the whole log (the archive of every frame)."""
    from carecard.host.storage.sqlite.store import SQLiteStore

    store = SQLiteStore(tmp_path / "c.sqlite")
    conn = store.connection

    def plan(sql: str, params: tuple) -> str:
        return " | ".join(row[3] for row in conn.execute("EXPLAIN QUERY PLAN " + sql, params))

    assert "USING INDEX event_log_frame (device=?)" in plan(
        "SELECT counter, tag FROM frames WHERE device = ? ORDER BY counter DESC LIMIT ?", (1, 64))
    assert "USING INDEX event_log_frame (device=? AND counter=?)" in plan(
        "SELECT tag FROM frames WHERE device = ? AND counter = ?", (1, 2))
    assert "USING INDEX event_log_prunable" in plan(
        "DELETE FROM event_log WHERE seq IN (SELECT seq FROM event_log WHERE device IS NULL "
        "AND seq <= ? ORDER BY seq LIMIT ?)", (5, 10))
    store.close()


def test_every_sqlite_writer_registers_the_identity_adapters(tmp_path: Path) -> None:
    """The ingest store's and the SQLite sink's connections register the adapters themselves (the
    sinks run in a child process that opens no ingest writer), in a fresh interpreter."""
    import subprocess
    import sys

    for n, opener in enumerate(("from carecard.host.sinks.sqlite_store import open_query_store as o; o(p)",
                                "from carecard.host.storage.sqlite import SQLiteStore as o; o(p).close()")):
        script = (f"import pathlib, sqlite3\np = pathlib.Path({str(tmp_path / f'{n}.sqlite')!r})\n{opener}\n"
                  "print(sqlite3.adapters.get((bytes, sqlite3.PrepareProtocol)) is bytes.__bytes__)")
        out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout
        assert out.strip() == "True", opener
