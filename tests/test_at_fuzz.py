"""Hostile bytes into the AT parser on MicroPython (hypothesis): random bytes and mutated real
captures, in random chunks, with commands in flight. receive_data() never raises; the only
problems reported are typed input errors (at.ATError, its kind one of INPUT_KINDS); afterwards
the parser is still in sync: once the commands in flight have timed out (the clock moves on and
the modem stays silent), a valid response to a new command is parsed exactly, with nothing fed
in between to flush the parser."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from carecard.tools.bench.at import load_captures
from carecard.tools.micropython import Batch

# Request: "<garbage hex> <chunk size>". Answer: "ok <events> <typed errors>" or "bad <why>".
SCRIPT = r'''
import sys, binascii, at
# the kinds of error events (hostile input), each a counter of ATEngine.stats
INPUT_KINDS = ("too_long", "binary", "data_too_long", "response_too_long", "cut")
URCS = ("+CREG", "RING", "+CMTI", "+CMT", "VOICE CALL", "NO CARRIER", "+CPIN", "RECV FROM")
def check(garbage, chunk):
    e = at.ATEngine(urcs=URCS)
    e.send(at.Command("AT+CSQ", prefix="+CSQ", timeout_ms=1000))
    e.send(at.Command("ATD112;", timeout_ms=1000))
    e.send(at.Command("AT+CMGS=5", prefix="+CMGS", payload=b"00\x1a", timeout_ms=1000))
    n = 0
    errors = 0
    for i in range(0, len(garbage), chunk):
        e.receive_data(garbage[i:i + chunk])
        while True:
            ev = e.next_event()
            if ev is None:
                break
            n += 1
            if ev[0] == "error":
                if type(ev[1]) is not at.ATError or ev[1].kind not in INPUT_KINDS:
                    return "bad error event %r" % (ev,)
                errors += 1
    for t in (2000, 4000, 6000, 8000):
        e.tick(t)              # whatever is still in flight times out; cut input is dropped
    while True:
        ev = e.next_event()
        if ev is None:
            break
        if ev[0] == "error" and ev[1].kind not in INPUT_KINDS:
            return "bad error event %r" % (ev,)
    if e.busy:
        return "bad: still busy after timeouts"
    e.data_to_send()
    e.send(at.Command("AT+CSQ", prefix="+CSQ"))
    if e.data_to_send() != b"AT+CSQ\r":
        return "bad: command not written"
    e.receive_data(b"\r\n+CSQ: 17,99\r\n\r\nRING\r\n\r\nOK\r\n")
    evs = []
    while True:
        ev = e.next_event()
        if ev is None:
            break
        evs.append(ev)
    if len(evs) != 2 or evs[0] != ("urc", "RING", "", None) or evs[1][0] != "done" \
            or evs[1][2] != "OK" or evs[1][3] != "+CSQ: 17,99":
        return "bad: out of sync after garbage: %r" % (evs,)
    return "ok %d %d" % (n, errors)
while True:
    line = sys.stdin.readline()
    if not line:
        break
    hexdata, chunk = line.split()
    try:
        print(check(binascii.unhexlify(hexdata), int(chunk)))
    except Exception as exc:
        print("bad raised %s: %s" % (type(exc).__name__, exc))
'''


@pytest.fixture(scope="module")
def batch(mpy):
    with Batch(SCRIPT) as b:
        yield b


@pytest.fixture(scope="module")
def capture_blobs(shared_data):
    blobs = [data for _, data in load_captures(shared_data) if data]
    assert len(blobs) > 100
    return blobs


def _ask(batch, data: bytes, chunk: int) -> str:
    answer = batch.call(f"{data.hex() or '00'} {chunk}")
    assert answer.startswith("ok "), answer
    return answer


# bytes biased towards what confuses an AT parser
_TOKENS = [b"\r", b"\n", b"\r\n", b"> ", b"OK", b"ERROR", b"+CME ERROR: ", b"+IPD", b"+IPD5\r\n",
           b"+RECEIVE,0,", b'+QIURC: "recv",0,3\r\n', b"+CMT: ,30\r\n", b"RING", b"\x00", b"\xff",
           b"\xc3", b"AT+CSQ", b"NO CARRIER", b"VOICE CALL:END:", b"+CREG: ", b"9" * 12]
_noisy = st.lists(st.one_of(st.binary(max_size=40), st.sampled_from(_TOKENS)), max_size=40).map(b"".join)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.one_of(st.binary(max_size=800), _noisy), chunk=st.integers(1, 64))
def test_random_bytes_never_break_the_parser(batch, data, chunk):
    _ask(batch, data, chunk)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(pick=st.integers(0, 10_000), edits=st.lists(
    st.tuples(st.integers(0, 10_000), st.sampled_from(["flip", "drop", "insert", "cut"]),
              st.integers(0, 255)), max_size=12), chunk=st.integers(1, 97))
def test_mutated_captures_never_break_the_parser(batch, capture_blobs, pick, edits, chunk):
    data = bytearray(capture_blobs[pick % len(capture_blobs)][:3000])
    for pos, kind, value in edits:
        if not data:
            break
        pos %= len(data)
        if kind == "flip":
            data[pos] ^= value or 1
        elif kind == "drop":
            del data[pos]
        elif kind == "insert":
            data.insert(pos, value)
        else:
            del data[pos:]
    _ask(batch, bytes(data), chunk)


def test_every_capture_whole_in_odd_chunks(batch, capture_blobs):
    # the unmutated captures too, split at every odd size: typed errors only, still in sync
    total_errors = 0
    for i, blob in enumerate(capture_blobs):
        answer = _ask(batch, blob[:4000], 1 + i % 13)
        total_errors += int(answer.split()[2])
    assert total_errors >= 1  # the +CLAC lists are over-long: reported, not hidden


# Request: "<names hex> <queries hex>" (each "\n"-separated). Answer: one letter per query, "u"
# when the engine reports it as a URC, "n" when as an unknown line; or "bad <why>".
TABLE_SCRIPT = r'''
import sys, binascii, at
while True:
    line = sys.stdin.readline()
    if not line:
        break
    names, queries = line.split()
    names = [n for n in binascii.unhexlify(names).decode().split("\n") if n]
    out = []
    try:
        for table in (names, ("\n" + "\n".join(names) + "\n").encode()):
            e = at.ATEngine(urcs=table, body_urcs=(), raw=None)
            res = ""
            for q in binascii.unhexlify(queries).decode().split("\n"):
                e.receive_data(q.encode() + b": 1\r\n")
                ev = e.next_event()
                res += "u" if ev == ("urc", q, "1", None) else "n" if ev == ("unknown", q + ": 1") else "?"
            out.append(res)
        print(out[0] if out[0] == out[1] else "bad %r" % (out,))
    except Exception as exc:
        print("bad raised %s: %s" % (type(exc).__name__, exc))
'''

# names as URCs have them: no ':', CR/LF, NUL, no leading or trailing space (a name starting
# with "AT" is a name too: only the echo of a command in flight is dropped)
_name = st.text(alphabet="ABCDEFGHIKLMNOPQRSTUVWXYZ0123456789+*_- \u00e9\u4e2d", min_size=1,
                max_size=12).map(str.strip).filter(bool)


@pytest.fixture(scope="module")
def table_batch(mpy):
    with Batch(TABLE_SCRIPT) as b:
        yield b


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(names=st.lists(_name, max_size=120), others=st.lists(_name, max_size=20), data=st.data())
def test_urc_lookup_is_exact_membership(table_batch, names, others, data):
    # the table search and the hash filter in front of it: a name is a URC exactly when it is one
    # of the table's names (not a part of one, not a neighbour sharing its filter bit)
    extra = [n + t for n in names[:10] for t in ("X", " 1", "+")] + [n[:-1] for n in names[:10]]
    queries = [q for q in names + others + extra if q and q.strip() == q] or ["Z"]
    queries = data.draw(st.permutations(queries))
    answer = table_batch.call(f"{chr(10).join(names).encode().hex() or '0a'} "
                              f"{chr(10).join(queries).encode().hex()}")
    assert answer == "".join("u" if q in names else "n" for q in queries), (names, queries, answer)
