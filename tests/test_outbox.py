"""firmware/lib/outbox.py on MicroPython, over real files of the unix port.

Power loss is simulated two ways: by truncating a finished log at every byte offset (what a cut
during the last append leaves), and by a filesystem wrapper that stops writing after a budget of
bytes (the byte at which the power went) and fails every later call, after which the card
reopens the outbox with the real filesystem.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st

from carecard.protocol import spec

from power_cut_fs import POWER_CUT_FS

SOS, CALL, ROUTINE = 0, 1, 2

SERVICE = POWER_CUT_FS + r"""
import sys, json, binascii, random
import outbox

RANDS = {"zero": lambda n: 0, "max": lambda n: n - 1, "random": lambda n: random.getrandbits(16) % n}

def state(box):
    return {"counters": box.counters(),
            "prios": [box.priority(c) for c in box.counters()],
            "frames": [binascii.hexlify(box.read(c)).decode() for c in box.counters()],
            "file_bytes": box.file_bytes, "live_bytes": box.live_bytes, "evicted": box.evicted,
            "refused": box.refused, "unknown_acks": box.unknown_acks, "torn_bytes": box.torn_bytes,
            "compactions": box.compactions, "due_all": box.due(1 << 40)}

box = None
while True:
    line = sys.stdin.readline()
    if not line:
        break
    req = json.loads(line)
    out = []
    ans = {}
    try:
        if "open" in req:
            o = req["open"]
            if box is not None:
                try:
                    box.close()
                except OSError:
                    pass
            fs = CutFs(o["cut"]) if o.get("cut") is not None else None
            box = outbox.Outbox(o["path"], o.get("entries", 16), o.get("bytes", 8192),
                                o.get("base", 1000), o.get("cap", 60000),
                                RANDS[o.get("rand", "zero")], fs=fs)
        for op in req.get("ops", ()):
            k = op[0]
            r = None
            if k == "a":
                r = box.append(op[1], binascii.unhexlify(op[2]), op[3], op[4])
            elif k == "k":
                r = box.on_ack(op[1])
            elif k == "s":
                box.on_sent(op[1], op[2])
                r = box.attempts(op[1])
            elif k == "d":
                r = box.due(op[1], op[2] if len(op) > 2 else 0)
            elif k == "n":
                r = box.next_due(op[1])
            elif k == "r":
                box.retry_all(op[1])
            elif k == "c":
                box.compact()
            elif k == "size":
                r = box.file_bytes
            out.append(r)
        ans["out"] = out
        ans["state"] = state(box)
    except Exception as exc:
        ans["out"] = out
        ans["error"] = "%s: %s" % (type(exc).__name__, exc)
        box = None
    print(json.dumps(ans))
"""


class Card:
    def __init__(self, batch, folder: Path):
        self.batch = batch
        self.folder = folder

    def call(self, req: dict) -> dict:
        return json.loads(self.batch.call(json.dumps(req)))

    def open(self, name: str, **kw) -> dict:
        ans = self.call({"open": {"path": str(self.folder / name), **kw}})
        assert "error" not in ans, ans
        return ans["state"]

    def ops(self, *ops) -> dict:
        ans = self.call({"ops": list(ops)})
        assert "error" not in ans, ans
        return ans


@pytest.fixture()
def card(mpy, tmp_path):
    with mpy.Batch(SERVICE) as batch:
        yield Card(batch, tmp_path)


def frame(counter: int, size: int = 40) -> str:
    return bytes((counter * 7 + i) & 0xFF for i in range(size)).hex()


def test_append_read_and_reopen_keep_entries_and_order(card):
    card.open("ob.log")
    ops = [["a", c, frame(c, 20 + c), p, 0] for c, p in ((5, ROUTINE), (6, SOS), (9, CALL), (7, ROUTINE))]
    st = card.ops(*ops)["state"]
    assert st["counters"] == [5, 6, 9, 7]
    assert st["frames"] == [frame(c, 20 + c) for c in (5, 6, 9, 7)]
    again = card.open("ob.log")
    assert again["counters"] == [5, 6, 9, 7] and again["prios"] == [ROUTINE, SOS, CALL, ROUTINE]
    assert again["frames"] == st["frames"] and again["torn_bytes"] == 0


def test_entries_leave_only_when_acked_and_the_ack_survives_a_reboot(card):
    card.open("ob.log")
    card.ops(*[["a", c, frame(c), ROUTINE, 0] for c in (1, 2, 3)])
    ans = card.ops(["k", 2], ["k", 2], ["k", 99])
    assert ans["out"] == [True, False, False]
    assert ans["state"]["counters"] == [1, 3] and ans["state"]["unknown_acks"] == 2
    assert card.open("ob.log")["counters"] == [1, 3]


def test_due_sends_sos_first_then_calls_then_routine_oldest_first(card):
    card.open("ob.log")
    card.ops(["a", 10, frame(10), ROUTINE, 0], ["a", 11, frame(11), CALL, 0],
             ["a", 12, frame(12), SOS, 0], ["a", 13, frame(13), ROUTINE, 0],
             ["a", 14, frame(14), SOS, 0])
    ans = card.ops(["d", 0], ["d", 0, 2])
    assert ans["out"] == [[12, 14, 11, 10, 13], [12, 14]]
    # after a reboot everything waiting is due at once, in the same order
    card.open("ob.log")
    assert card.ops(["d", 5])["out"] == [[12, 14, 11, 10, 13]]


def test_retry_all_makes_every_entry_due_so_the_sos_goes_first_when_the_link_is_back(card):
    # sent into a dead link: the SOS backed off further than a call record appended after it
    card.open("ob.log")
    card.ops(["a", 20, frame(20), SOS, 0], ["s", 20, 0], ["s", 20, 1000], ["s", 20, 3000],
             ["a", 21, frame(21), CALL, 4000])
    assert card.ops(["d", 5000])["out"] == [[21]]
    assert card.ops(["r", 5000], ["d", 5000], ["n", 5000])["out"] == [None, [20, 21], 5000]


def test_retransmission_backoff_doubles_to_the_cap_with_jitter_below_it(card):
    base, cap = 1000, 20000
    card.open("ob.log", base=base, cap=cap, rand="zero")
    card.ops(["a", 1, frame(1), ROUTINE, 0])
    t = 0
    waits = []
    for _ in range(8):
        card.ops(["s", 1, t])
        nxt = card.ops(["n", t])["out"][0]
        assert card.ops(["d", nxt - 1])["out"] == [[]]
        assert card.ops(["d", nxt])["out"] == [[1]]
        waits.append(nxt - t)
        t = nxt
    assert waits == [1000, 2000, 4000, 8000, 16000, 20000, 20000, 20000]
    # jitter takes up to 25% off, never adds: with the largest draw every wait is 75% of it
    card.open("jit.log", base=base, cap=cap, rand="max")
    card.ops(["a", 1, frame(1), ROUTINE, 0])
    t = 0
    waits = []
    for _ in range(7):
        card.ops(["s", 1, t])
        nxt = card.ops(["n", t])["out"][0]
        waits.append(nxt - t)
        t = nxt
    assert waits == [750, 1500, 3000, 6000, 12000, 15000, 15000]
    card.open("rnd.log", base=base, cap=cap, rand="random")
    card.ops(["a", 1, frame(1), ROUTINE, 0])
    seen = set()
    for i in range(40):
        card.ops(["s", 1, 0])
        w = card.ops(["n", 0])["out"][0]
        full = min(cap, base << min(i, 10))
        assert full * 3 // 4 <= w <= full
        seen.add(w)
    assert len(seen) > 5, "jitter from the injected random source"


def test_next_due_is_none_when_empty_and_now_when_overdue(card):
    card.open("ob.log")
    assert card.ops(["n", 50])["out"] == [None]
    card.ops(["a", 1, frame(1), ROUTINE, 100])
    assert card.ops(["n", 50], ["n", 300])["out"] == [100, 300]


def test_full_outbox_drops_oldest_routine_first_never_sos_or_calls(card):
    card.open("ob.log", entries=4)
    st = card.ops(["a", 1, frame(1), ROUTINE, 0], ["a", 2, frame(2), SOS, 0],
                  ["a", 3, frame(3), ROUTINE, 0], ["a", 4, frame(4), CALL, 0])["state"]
    assert st["counters"] == [1, 2, 3, 4]
    ans = card.ops(["a", 5, frame(5), SOS, 0])
    assert ans["out"] == [1] and ans["state"]["counters"] == [2, 3, 4, 5]
    ans = card.ops(["a", 6, frame(6), ROUTINE, 0])
    assert ans["out"] == [1] and ans["state"]["counters"] == [2, 4, 5, 6]
    ans = card.ops(["a", 7, frame(7), CALL, 0])
    assert ans["state"]["counters"] == [2, 4, 5, 7] and ans["state"]["evicted"] == 3
    # Only SOS and calls left: a routine report and even an SOS are refused, clearly, and counted.
    ans = card.call({"ops": [["a", 8, frame(8), ROUTINE, 0]]})
    assert ans["error"].startswith("OutboxFull: outbox full: 4 entries") and "frame 8" in ans["error"]
    st = card.open("ob.log", entries=4)
    assert st["counters"] == [2, 4, 5, 7]
    ans = card.call({"ops": [["a", 9, frame(9), SOS, 0]]})
    assert "OutboxFull" in ans["error"]
    assert card.open("ob.log", entries=4)["counters"] == [2, 4, 5, 7]


def test_byte_bound_evicts_as_many_routine_reports_as_the_new_frame_needs(card):
    big = spec.MAX_FRAME
    record = 4 + 5 + big + 4
    card.open("ob.log", entries=50, bytes=3 * record)
    card.ops(*[["a", c, frame(c, big), ROUTINE, 0] for c in (1, 2, 3)])
    ans = card.ops(["a", 4, frame(4, big), SOS, 0])
    assert ans["out"] == [1] and ans["state"]["counters"] == [2, 3, 4]
    assert ans["state"]["live_bytes"] <= 3 * record
    small = card.ops(["a", 5, frame(5, 30), CALL, 0])
    assert small["out"] == [1] and small["state"]["counters"] == [3, 4, 5]
    # a routine report is queued, but evicting it frees too little for another large frame:
    # refused, nothing evicted, and the error says why
    card.open("tight.log", entries=50, bytes=3 * record - 10)
    card.ops(["a", 1, frame(1, big), SOS, 0], ["a", 2, frame(2, big), CALL, 0],
             ["a", 3, frame(3, 30), ROUTINE, 0])
    ans = card.call({"ops": [["a", 4, frame(4, big), SOS, 0]]})
    assert "OutboxFull" in ans["error"], ans
    assert "evicting every routine report (1) frees too little" in ans["error"], ans
    assert card.open("tight.log", entries=50, bytes=3 * record - 10)["counters"] == [1, 2, 3]


@pytest.mark.parametrize("req,message", [
    (["a", 1, "", ROUTINE, 0], "frame of 0 bytes"),
    (["a", 1, "00" * (spec.MAX_FRAME + 1), ROUTINE, 0], f"frame of {spec.MAX_FRAME + 1} bytes"),
    (["a", 1, "00", 3, 0], "priority 3"),
    (["a", -1, "00", 0, 0], "counter -1 is not a u32"),
    (["a", 1 << 32, "00", 0, 0], "is not a u32"),
    (["a", None, "00", 0, 0], "counter None is not a u32"),
    (["a", 1, "00", None, 0], "priority None is not 0 (SOS)"),
    (["s", 77, 0], "no frame with counter 77"),
])
def test_misuse_is_a_clear_error(card, req, message):
    card.open("ob.log")
    ans = card.call({"ops": [req]})
    assert message in ans["error"], ans
    card.open("ob.log")
    card.ops(["a", 1, "00", ROUTINE, 0])
    ans = card.call({"ops": [["a", 1, "01", ROUTINE, 0]]})
    assert "counter 1 is already queued" in ans["error"]


def _build_log(card, name):
    """A multi-entry log; returns [(file size after the op, expected counters after the op)]."""
    card.open(name, entries=32, bytes=16384)
    steps = [
        ["a", 1, frame(1, 30), ROUTINE, 0],
        ["a", 2, frame(2, 1), SOS, 0],
        ["a", 3, frame(3, 77), CALL, 0],
        ["k", 1],
        ["a", 4, frame(4, 120), ROUTINE, 0],
        ["k", 3],
        ["a", 5, frame(5, 9), ROUTINE, 0],
    ]
    model: list[int] = []
    marks = [(0, [])]
    for op in steps:
        ans = card.ops(op, ["size"])
        if op[0] == "a":
            model.append(op[1])
        else:
            model.remove(op[1])
        marks.append((ans["out"][1], list(model)))
        assert ans["state"]["counters"] == model
    return marks


def test_a_cut_at_every_byte_of_the_log_keeps_every_earlier_entry(card):
    marks = _build_log(card, "full.log")
    data = (card.folder / "full.log").read_bytes()
    assert len(data) == marks[-1][0]
    frames = {c: frame(c, n) for c, n in ((1, 30), (2, 1), (3, 77), (4, 120), (5, 9))}
    requests = []
    expected = []
    for k in range(len(data) + 1):
        path = card.folder / f"cut{k}.log"
        path.write_bytes(data[:k])
        whole = [m for m in marks if m[0] <= k][-1]
        expected.append((whole, k))
        # reopen the torn log, then append and reopen: the new entry follows the intact ones
        requests.append(json.dumps({"open": {"path": str(path), "entries": 32, "bytes": 16384}}))
        requests.append(json.dumps({"ops": [["a", 100, frame(100, 5), ROUTINE, 0]]}))
        requests.append(json.dumps({"open": {"path": str(path), "entries": 32, "bytes": 16384}}))
    answers = [json.loads(a) for a in card.batch.call_many(requests)]
    for i, ((good_end, counters), k) in enumerate(expected):
        opened, appended, reopened = answers[3 * i: 3 * i + 3]
        assert "error" not in opened, (k, opened)
        st = opened["state"]
        assert st["counters"] == counters, k
        assert st["frames"] == [frames[c] for c in counters], k
        assert st["torn_bytes"] == k - good_end, k
        assert "error" not in appended, (k, appended)
        assert reopened["state"]["counters"] == counters + [100], k
        assert reopened["state"]["torn_bytes"] == 0, k
    assert len(answers) == 3 * (len(data) + 1)


def test_corrupt_record_keeps_the_entries_before_it(card):
    marks = _build_log(card, "full.log")
    data = bytearray((card.folder / "full.log").read_bytes())
    # flip one bit inside the fifth record (the append of 4): entries up to the ack of 1 stay
    start = marks[4][0]
    data[start + 20] ^= 0x10
    (card.folder / "bad.log").write_bytes(bytes(data))
    st = card.open("bad.log", entries=32, bytes=16384)
    assert st["counters"] == [2, 3] and st["torn_bytes"] == len(data) - start


def test_compaction_bounds_the_file_and_keeps_the_entries(card):
    card.open("ob.log", entries=8, bytes=8192)
    sizes = []
    for c in range(1, 200):
        ans = card.ops(["a", c, frame(c, 60), ROUTINE if c % 3 else CALL, 0], ["k", c - 2] if c > 2 else ["n", 0])
        sizes.append(ans["state"]["file_bytes"])
    st = ans["state"]
    assert st["counters"] == [198, 199] and st["compactions"] > 0
    assert max(sizes) < 2 * 4096 + 3 * 8192
    assert card.open("ob.log", entries=8, bytes=8192)["counters"] == [198, 199]


def test_a_cut_at_every_byte_of_a_compaction_leaves_the_same_entries(card):
    card.open("src.log", entries=32, bytes=16384)
    card.ops(*[["a", c, frame(c, 25 + c), [SOS, CALL, ROUTINE][c % 3], 0] for c in range(1, 9)],
             ["k", 2], ["k", 5], ["k", 8])
    want = card.ops(["n", 0])["state"]
    src = (card.folder / "src.log").read_bytes()
    budget = 0
    while True:
        path = card.folder / "c.log"
        path.write_bytes(src)
        (card.folder / "c.log.new").unlink(missing_ok=True)
        card.open("c.log", entries=32, bytes=16384, cut=budget)
        ans = card.call({"ops": [["c"]]})
        st = card.open("c.log", entries=32, bytes=16384)
        assert st["counters"] == want["counters"], budget
        assert st["frames"] == want["frames"], budget
        assert not (card.folder / "c.log.new").exists()
        if "error" not in ans:
            break
        assert "power" in ans["error"]
        budget += 1
    assert st["file_bytes"] == st["live_bytes"] and budget > st["live_bytes"]


# ------------------------------------------------------------------------------ properties

_append = st.tuples(st.just("a"), st.sampled_from([SOS, CALL, ROUTINE, ROUTINE]), st.integers(1, 200))
ops_strategy = st.lists(
    st.one_of(
        _append, _append, _append,
        st.tuples(st.just("k"), st.integers(0, 12)),
        st.tuples(st.just("reboot")),
        st.tuples(st.just("cut"), st.integers(0, 300)),
        st.tuples(st.just("compact")),
    ),
    max_size=40,
)


@settings(max_examples=80)
@given(ops=ops_strategy)
def test_any_sequence_of_appends_acks_reboots_and_cuts_keeps_the_invariants(mpy, tmp_path_factory, ops):
    folder = tmp_path_factory.mktemp("prop")
    entries, limit = 4, 700
    with mpy.Batch(SERVICE) as batch:
        card = Card(batch, folder)
        model: list[tuple[int, int, str]] = []  # (counter, prio, frame) in order
        state = card.open("p.log", entries=entries, bytes=limit)
        next_counter = 1
        cut = None
        for op in ops:
            if op[0] == "reboot":
                state = card.open("p.log", entries=entries, bytes=limit)
            elif op[0] == "cut":
                cut = op[1]
                card.open("p.log", entries=entries, bytes=limit, cut=cut)
                continue
            elif op[0] == "compact":
                ans = card.call({"ops": [["c"]]})
                state = ans.get("state")
            elif op[0] == "k":
                target = model[op[1]][0] if op[1] < len(model) else 10_000 + op[1]
                ans = card.call({"ops": [["k", target]]})
                if "error" not in ans:
                    assert ans["out"] == [op[1] < len(model)]
                    model = [m for m in model if m[0] != target]
                state = ans.get("state")
            else:
                counter = next_counter
                next_counter += 1
                data = frame(counter, op[2])
                ans = card.call({"ops": [["a", counter, data, op[1], 0]]})
                if "error" not in ans:
                    model.append((counter, op[1], data))
                    state = ans["state"]
                elif "OutboxFull" in ans["error"]:
                    # refused only when even evicting every routine report leaves no room
                    critical = [m for m in model if m[1] != ROUTINE]
                    need = sum(4 + 5 + len(f) // 2 + 4 for _, _, f in critical) + 4 + 5 + op[2] + 4
                    assert len(critical) + 1 > entries or need > limit, "refused with room"
                    assert cut is None or "power" not in ans["error"]
                    state = card.open("p.log", entries=entries, bytes=limit)
                else:
                    state = None
                    cutting_model = model + [(counter, op[1], data)]
                if "error" not in ans:
                    # evictions: the model drops its oldest routine entries the card dropped
                    kept = set(state["counters"])
                    dropped = [m for m in model if m[0] not in kept]
                    event(f"evicted {len(dropped)}")
                    assert all(p == ROUTINE for _, p, _ in dropped)
                    routine = [m for m in model if m[1] == ROUTINE]
                    assert dropped == routine[: len(dropped)], "the oldest routine go first"
                    model = [m for m in model if m[0] in kept]
            if state is None:
                # The power went during the operation: reboot on the real filesystem. What the
                # card holds now is the model before the operation or after it (an append may
                # also have evicted routine reports first).
                state = card.open("p.log", entries=entries, bytes=limit)
                got = list(zip(state["counters"], state["prios"], state["frames"]))
                before = [m for m in model]
                if op[0] == "a":
                    after = [m for m in cutting_model]
                    extra = [m for m in got if m not in before]
                    assert extra in ([], [after[-1]])
                    assert [m for m in got if m in before] == [m for m in before if m in got]
                    lost = [m for m in before if m not in got]
                    assert all(p == ROUTINE for _, p, _ in lost)
                elif op[0] == "k":
                    assert got in (before, [m for m in before if m[0] != target])
                else:
                    assert got == before
                model = got
            cut = None
            assert state is not None
            assert list(zip(state["counters"], state["prios"], state["frames"])) == model
            assert len(model) <= entries
            # everything waiting is due eventually, SOS first, then calls, then routine, in order
            assert state["due_all"] == [c for p in (SOS, CALL, ROUTINE) for c, q, _ in model if q == p]
            assert state["live_bytes"] == sum(4 + 5 + len(f) // 2 + 4 for _, _, f in model)
            assert state["live_bytes"] <= limit
        final = card.open("p.log", entries=entries, bytes=limit)
        assert list(zip(final["counters"], final["prios"], final["frames"])) == model


HEAP_WORKLOAD = """
import gc, os, outbox
try:
    os.remove(PATH)
except OSError:
    pass
gc.collect()
box = outbox.Outbox(PATH, 64, 64 * 530, 1000, 60000, lambda n: 0)
payload = bytearray(SIZE)
for c in range(1, 41):
    payload[0] = c
    box.append(c, payload, c % 3, 0)
box.close()
box = outbox.Outbox(PATH, 64, 64 * 530, 1000, 60000, lambda n: 0)
for c in box.due(0):
    assert box.read(c)[0] == c
    box.on_sent(c, 0)
for c in range(1, 41, 2):
    box.on_ack(c)
box.close()
print(len(box))
"""


def test_frames_stay_on_flash_not_in_the_heap(mpy, tmp_path):
    """The heap an outbox of 40 frames needs does not grow with the frames' size: the index is in
    RAM, the frames are read on demand into one preallocated buffer."""
    figures = {}
    image = mpy.card_image(compiled=True)  # bytecode, as the card ships it
    for size in (16, 480):
        path = tmp_path / f"heap{size}.log"
        code = HEAP_WORKLOAD.replace("PATH", repr(str(path))).replace("SIZE", str(size))
        assert mpy.run(code, image=image).strip() == "20"
        figures[size] = mpy.smallest_heap(code, low=2048, high=256 * 1024, step=256, image=image)
        path.unlink(missing_ok=True)
    print(f"outbox heap (40 entries, {mpy.current().name} unix port): {figures[16]} B with 16-byte frames, "
          f"{figures[480]} B with 480-byte frames")
    # 40 x 464 more bytes of frames (18.5 KB) would show if they were held
    assert figures[480] - figures[16] < 2048
