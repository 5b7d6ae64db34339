"""firmware/lib/keys.py on MicroPython: debouncing and press classification of the four keys,
checked case by case and against a reference model written here from the definition (stable
levels from the raw signal's segments), polled at every deadline or only at the edges."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from carecard.tools.micropython import json_lines_service

DEBOUNCE, LONG, STUCK = 30, 2000, 20000

SERVICE = json_lines_service(r"""
import keys
k = None
def handle(req, out):
    global k
    if "new" in req:
        n = req["new"]
        k = keys.Keys(n[0], n[1], n[2], n[3])
        k.start(req.get("levels", [0] * n[0]), req.get("t0", 0))
    for op in req.get("ops", ()):
        if op[0] == "e":
            k.edge(op[1], op[2], op[3])
        elif op[0] == "p":
            k.poll(op[1])
        elif op[0] == "deadlines":
            # poll at every deadline up to op[1], then at op[1]
            while True:
                d = k.next_deadline()
                if d is None or d > op[1]:
                    break
                k.poll(d)
            k.poll(op[1])
        ev = k.next_event()
        while ev is not None:
            out.append(list(ev))
            ev = k.next_event()
    ans = {"events": out, "deadline": k.next_deadline(), "bounces": k.bounces,
           "down": [k.down(i) for i in range(k.count)]}
    return ans
""", collected="events")


class Card:
    def __init__(self, batch):
        self.batch = batch

    def new(self, levels=None, t0=0, count=4, debounce=DEBOUNCE, long=LONG, stuck=STUCK) -> dict:
        req: dict = {"new": [count, debounce, long, stuck], "t0": t0}
        if levels is not None:
            req["levels"] = levels
        return json.loads(self.batch.call(json.dumps(req)))

    def ops(self, *ops) -> dict:
        ans = json.loads(self.batch.call(json.dumps({"ops": list(ops)})))
        assert "error" not in ans, ans
        return ans


@pytest.fixture(scope="module")
def card(mpy):
    with mpy.Batch(SERVICE) as batch:
        yield Card(batch)


def test_short_press_reports_the_key_at_release(card):
    card.new()
    ans = card.ops(["e", 2, 1, 1000], ["p", 1100], ["e", 2, 0, 1300], ["p", 1400])
    assert ans["events"] == [["short", 2, 1300, 300]]


def test_bounces_shorter_than_the_debounce_time_are_ignored(card):
    card.new()
    # contact chatter: 5 ms pulses, then a real press with bouncy edges
    ops = [["e", 0, 1, 100], ["e", 0, 0, 105], ["e", 0, 1, 200], ["e", 0, 0, 229], ["p", 400]]
    ans = card.ops(*ops)
    assert ans["events"] == [] and ans["bounces"] == 2 and ans["down"] == [False] * 4
    ans = card.ops(["e", 1, 1, 1000], ["e", 1, 0, 1003], ["e", 1, 1, 1008], ["p", 1100],
                   ["e", 1, 0, 1500], ["e", 1, 1, 1502], ["e", 1, 0, 1510], ["p", 1600])
    assert ans["events"] == [["short", 1, 1510, 502]]


def test_long_press_is_sos_while_still_held_and_no_short_after(card):
    card.new()
    ans = card.ops(["e", 3, 1, 5000])
    assert ans["deadline"] == 5000 + DEBOUNCE
    ans = card.ops(["p", 5000 + DEBOUNCE])
    assert ans["deadline"] == 5000 + LONG
    ans = card.ops(["p", 5000 + LONG - 1])
    assert ans["events"] == []
    ans = card.ops(["p", 5000 + LONG])
    assert ans["events"] == [["sos", 3, 5000 + LONG, LONG]]
    ans = card.ops(["p", 9000], ["e", 3, 0, 9000], ["p", 9100])
    assert ans["events"] == [] and ans["deadline"] is None


def test_long_press_time_is_configurable(card):
    card.new(long=3500, stuck=30000)
    ans = card.ops(["e", 0, 1, 0], ["e", 0, 0, 3000], ["p", 3100])
    assert ans["events"] == [["short", 0, 3000, 3000]]
    ans = card.ops(["e", 0, 1, 4000], ["p", 7500])
    assert ans["events"] == [["sos", 0, 7500, 3500]]


def test_a_long_press_noticed_only_at_release_is_still_sos(card):
    card.new()
    ans = card.ops(["e", 1, 1, 0], ["e", 1, 0, 2500], ["p", 2600])
    assert ans["events"] == [["sos", 1, LONG, LONG]]


def test_several_keys_at_once_are_each_their_own_press(card):
    card.new()
    ans = card.ops(["e", 0, 1, 0], ["e", 1, 1, 10], ["e", 0, 0, 400], ["p", 500],
                   ["e", 2, 1, 600], ["p", 700], ["e", 2, 0, 900], ["p", 1000])
    assert ans["events"] == [["short", 0, 400, 400], ["short", 2, 900, 300]]
    ans = card.ops(["p", 10 + LONG], ["e", 3, 1, 2500], ["p", 2500 + LONG])
    assert ans["events"] == [["sos", 1, 10 + LONG, LONG], ["sos", 3, 2500 + LONG, LONG]]


def test_a_stuck_key_is_reported_once_and_its_release_once(card):
    card.new()
    ans = card.ops(["e", 2, 1, 0], ["deadlines", 10 * STUCK])
    assert ans["events"] == [["sos", 2, LONG, LONG], ["stuck", 2, STUCK, STUCK]]
    assert ans["deadline"] is None
    ans = card.ops(["p", 20 * STUCK], ["deadlines", 30 * STUCK])
    assert ans["events"] == []
    ans = card.ops(["e", 2, 0, 40 * STUCK], ["p", 40 * STUCK + 100])
    assert ans["events"] == [["released", 2, 40 * STUCK, 40 * STUCK]]
    # works again afterwards
    ans = card.ops(["e", 2, 1, 50 * STUCK], ["e", 2, 0, 50 * STUCK + 200], ["p", 60 * STUCK])
    assert ans["events"] == [["short", 2, 50 * STUCK + 200, 200]]


def test_a_key_down_at_boot_is_no_press_and_no_sos(card):
    card.new(levels=[0, 1, 0, 0], t0=100)
    ans = card.ops(["deadlines", 5000], ["e", 1, 0, 5000], ["p", 6000])
    assert ans["events"] == []
    card.new(levels=[0, 1, 0, 0], t0=100)
    ans = card.ops(["deadlines", 100 + STUCK + 1])
    assert ans["events"] == [["stuck", 1, 100 + STUCK, STUCK]]
    ans = card.ops(["e", 1, 0, 100 * STUCK], ["p", 100 * STUCK + 50])
    assert ans["events"] == [["released", 1, 100 * STUCK, 100 * STUCK - 100]]


def test_a_release_still_bouncing_at_the_long_press_time_is_a_short_press(card):
    card.new()
    ans = card.ops(["e", 0, 1, 0], ["e", 0, 0, LONG - 10], ["p", LONG + 5], ["p", LONG + 100])
    assert ans["events"] == [["short", 0, LONG - 10, LONG - 10]]


def test_a_missed_opposite_edge_changes_nothing(card):
    card.new()
    ans = card.ops(["e", 0, 1, 0], ["e", 0, 1, 100], ["e", 0, 0, 300], ["e", 0, 0, 350], ["p", 400])
    assert ans["events"] == [["short", 0, 300, 300]]


@pytest.mark.parametrize("args,message", [
    ([4, 30, 2000, 2000], "debounce_ms < long_press_ms < stuck_ms"),
    ([4, 3000, 2000, 9000], "debounce_ms < long_press_ms"),
    ([0, 30, 2000, 9000], "at least one key"),
])
def test_bad_timing_figures_are_clear_errors(card, args, message):
    ans = card.new(count=args[0], debounce=args[1], long=args[2], stuck=args[3])
    assert message in ans["error"]


def test_key_out_of_range_is_a_clear_error(card):
    card.new()
    ans = json.loads(card.batch.call(json.dumps({"ops": [["e", 4, 1, 0]]})))
    assert "key 4 out of range 0..3" in ans["error"]


# ------------------------------------------------------------------------- reference model


def reference(edges: list[tuple[int, int, int]], end: int, levels: list[int], t0: int) -> dict[int, list]:
    """Events per key from the definition: the stable level changes at a raw edge whose level
    then holds DEBOUNCE ms (by `end`); presses classified by their stable duration."""
    out: dict[int, list] = {}
    for key in range(4):
        raw = levels[key]
        segments = [(t0, raw)]
        for t, k, level in edges:
            if k == key and level != segments[-1][1]:
                segments.append((t, level))
        stable = levels[key]
        armed = False
        press = t0
        events = []
        pending_release = None
        for i, (t, level) in enumerate(segments):
            nxt = segments[i + 1][0] if i + 1 < len(segments) else None
            held_long_enough = (nxt if nxt is not None else end) - t >= DEBOUNCE
            if level == stable:
                continue
            if not held_long_enough:
                if nxt is None and stable:
                    pending_release = t
                continue
            if level:
                stable, armed, press = 1, True, t
            else:
                events += timed(press, t, armed)
                held = t - press
                if held >= STUCK:
                    events.append(["released", key, t, held])
                elif armed and held < LONG:
                    events.append(["short", key, t, held])
                stable = 0
        if stable:
            events += timed(press, pending_release if pending_release is not None else end, armed)
        out[key] = [[e[0], key, e[2], e[3]] for e in events]
    return out


def timed(press: int, until: int, armed: bool) -> list:
    events = []
    if armed and until - press >= LONG:
        events.append(["sos", None, press + LONG, LONG])
    if until - press >= STUCK:
        events.append(["stuck", None, press + STUCK, STUCK])
    return events


edge_lists = st.lists(
    st.tuples(st.one_of(st.integers(1, 80), st.integers(1, 3000)), st.integers(0, 3), st.integers(0, 1)),
    max_size=40)


@settings(max_examples=150)
@given(gaps=edge_lists, levels=st.lists(st.integers(0, 1), min_size=4, max_size=4),
       tail=st.integers(0, 30000), every=st.booleans(), between=st.floats(0, 1))
def test_events_match_the_reference_however_often_it_is_polled(card, gaps, levels, tail, every,
                                                               between):
    t0 = 1000
    t = t0
    edges = []
    for gap, key, level in gaps:
        t += gap
        edges.append((t, key, level))
    end = t + tail
    card.new(levels=levels, t0=t0)
    ops = []
    for i, (when, key, level) in enumerate(edges):
        if every:
            ops.append(["deadlines", when])
        ops.append(["e", key, level, when])
        if between:  # and once more somewhere before the next edge
            nxt = edges[i + 1][0] if i + 1 < len(edges) else end
            ops.append(["p", when + int(between * (nxt - when))])
    ops.append(["deadlines", end] if every else ["p", end])
    got = card.ops(*ops)["events"]
    want = reference(edges, end, levels, t0)
    for key in range(4):
        assert [e for e in got if e[1] == key] == want[key], key
