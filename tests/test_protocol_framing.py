"""Stream framing: every frame is found in garbage, however the bytes are chunked."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from carecard.protocol import StreamDeframer, encode_stream_frame, spec
from carecard.protocol.framing import MAX_ENCODED, StreamFrame, StreamGarbage, cobs_decode, cobs_encode

FRAMES = st.lists(st.binary(min_size=spec.MIN_FRAME, max_size=spec.MAX_FRAME), min_size=1, max_size=8)
GARBAGE = st.binary(max_size=300)


def _feed(deframer: StreamDeframer, data: bytes, cuts: list[int]) -> list:
    events = []
    start = 0
    for cut in sorted(set(c % (len(data) + 1) for c in cuts)) + [len(data)]:
        deframer.receive_data(data[start:cut])
        start = cut
        while (event := deframer.next_event()) is not None:
            events.append(event)
    return events


@settings(max_examples=300)
@given(st.binary(max_size=2000))
def test_cobs_round_trip(data):
    encoded = cobs_encode(data)
    assert b"\x00" not in encoded
    assert cobs_decode(encoded) == data


@settings(max_examples=300, deadline=None)
@given(FRAMES, st.lists(GARBAGE, min_size=9, max_size=9), st.sampled_from(["whole", "bytes", "chunks"]),
       st.lists(st.integers(0, 10**6), max_size=40))
def test_every_frame_is_found_between_garbage(frames, garbage, mode, cuts):
    stream = garbage[0]
    for frame, junk in zip(frames, garbage[1:]):
        stream += encode_stream_frame(frame) + junk
    if mode == "whole":
        cuts = []
    elif mode == "bytes":
        cuts = list(range(len(stream)))
    deframer = StreamDeframer()
    events = _feed(deframer, stream, cuts)
    found = [e.frame for e in events if isinstance(e, StreamFrame)]
    assert found == frames
    assert deframer.buffered <= MAX_ENCODED


def test_oversize_chunk_is_dropped_without_buffering_it():
    deframer = StreamDeframer()
    deframer.receive_data(b"\x01" * (MAX_ENCODED * 5))
    assert deframer.buffered <= MAX_ENCODED
    frame = bytes(range(1, 60))
    deframer.receive_data(encode_stream_frame(frame))
    events = []
    while (event := deframer.next_event()) is not None:
        events.append(event)
    assert events[0] == StreamGarbage("oversize", MAX_ENCODED * 5)
    assert events[-1] == StreamFrame(frame)


def test_corrupted_frame_is_reported_not_delivered():
    frame = bytes(range(1, 80))
    wire = bytearray(encode_stream_frame(frame))
    wire[10] ^= 0x40
    deframer = StreamDeframer()
    deframer.receive_data(bytes(wire) + encode_stream_frame(frame))
    events = [deframer.next_event(), deframer.next_event()]
    assert isinstance(events[0], StreamGarbage) and events[0].reason in ("bad_crc", "bad_cobs")
    assert events[1] == StreamFrame(frame)
