"""Counters across reboots (docs/protocol.md, "Counters across reboots"): the card's block-reserved
counters (firmware/lib/counter.py, on MicroPython), the host's resync of a card that lost its
uplink counter, and downlinks never applied twice after a reboot."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from carecard.protocol import decode_frame, encode_frame

from receiver_helpers import Card, Harness, provision

# Runs on the card's interpreter: boots an UplinkCounter over a real file `count` times per entry
# of BOOTS, taking the given number of counters each time; the file store counts its writes.
UPLINK_BOOTS = r"""
import json, counter

class CountingStore(counter.FileStore):
    saves = 0
    def save(self, data):
        CountingStore.saves += 1
        counter.FileStore.save(self, data)

taken, statuses, writes = [], [], []
for count in BOOTS:
    CountingStore.saves = 0
    up = counter.UplinkCounter(CountingStore(PATH), BLOCK)
    statuses.append(up.status)
    for _ in range(count):
        taken.append(up.take())
    writes.append(CountingStore.saves)
print(json.dumps({"taken": taken, "statuses": statuses, "writes": writes}))
"""


def _boots(mpy, path: Path, boots: list[int], block: int) -> dict:
    code = f"PATH = {str(path)!r}\nBOOTS = {boots!r}\nBLOCK = {block}\n" + UPLINK_BOOTS
    return json.loads(mpy.run(code))


def test_a_reboot_never_reuses_an_uplink_counter_and_flash_is_written_once_per_block(mpy, tmp_path):
    path = tmp_path / "uplink.ctr"
    boots = [3, 8, 20, 0, 1, 17]
    out = _boots(mpy, path, boots, 8)
    taken = out["taken"]
    assert len(taken) == sum(boots) and taken == sorted(set(taken))  # unique, increasing
    assert out["statuses"] == ["missing"] + ["ok"] * (len(boots) - 1)
    # each boot: one write reserving a block at once, then one per 8 counters beyond it
    assert out["writes"] == [1 + (count - 1) // 8 if count else 1 for count in boots]
    # each boot starts at the end of the block the previous one reserved last
    starts = [0, 8, 16, 40, 48, 56]
    assert taken == [start + i for start, count in zip(starts, boots) for i in range(count)]


def test_a_missing_or_corrupt_counter_record_starts_from_zero_and_says_so(mpy, tmp_path):
    path = tmp_path / "uplink.ctr"
    assert _boots(mpy, path, [2], 4)["statuses"] == ["missing"]
    good = path.read_bytes()
    for damaged in (b"", good[:-1], good + b"\x00", b"x" * len(good), good[:5] + bytes([good[5] ^ 1]) + good[6:]):
        path.write_bytes(damaged)
        out = _boots(mpy, path, [2, 1], 4)
        assert out["statuses"] == ["corrupt", "ok"], damaged
        assert out["taken"][0] == 0
    path.unlink()
    (tmp_path / "uplink.ctr.tmp").write_bytes(b"half a rec")  # a write cut short before its rename
    assert _boots(mpy, path, [1], 4)["statuses"] == ["missing"]
    (tmp_path / "uplink.ctr.tmp").write_bytes(b"half a rec")
    out = _boots(mpy, path, [1], 4)
    assert out["statuses"] == ["ok"] and out["taken"] == [4]


def test_a_failed_flash_write_leaves_the_record_and_uses_no_counter(mpy, tmp_path):
    """Persist before use: when the record cannot be written, take() raises and the counter it
    would have returned is not used; the record on flash is the old one, whole."""
    path = tmp_path / "uplink.ctr"
    _boots(mpy, path, [1], 4)
    before = path.read_bytes()
    code = f"""
import counter
class FailingFs:
    def rename(self, a, b):
        raise OSError(28)  # ENOSPC
store = counter.FileStore({str(path)!r})
up = counter.UplinkCounter(store, 4)
up.blocks.store = counter.FileStore({str(path)!r}, FailingFs())
taken = [up.take() for _ in range(4)]
try:
    up.take()
except OSError:
    print(taken, up.next)
"""
    assert mpy.run(code).split() == ["[4,", "5,", "6,", "7]", "8"]
    assert path.read_bytes() != before  # the boot's own reservation was written (8)
    assert _boots(mpy, path, [1], 4)["taken"] == [8]


DOWNLINK_SCRIPT = r"""
import binascii, json, counter, ccproto
guard = counter.DownlinkGuard(counter.FileStore(PATH), 4)
decoder = ccproto.Decoder(DEVICE, KEY, last_counter=guard.lowest - 1)
out = [guard.status, guard.lowest]
for hexframe in FRAMES:
    try:
        message = decoder.decode(binascii.unhexlify(hexframe))
    except ccproto.ProtoError as e:
        out.append(e.reason)
        continue
    assert guard.claim(message["counter"])  # persisted before it is applied
    decoder.accept(message["counter"])
    out.append("applied %d" % message["counter"])
print(json.dumps(out))
"""


def test_a_recorded_downlink_replayed_after_a_reboot_is_never_applied_twice(mpy, tmp_path):
    device, key = 861234567890123, bytes(range(16))
    contacts = [{"seq": 1, "cmd": "set_contacts", "contacts": [{"key": 1, "number": "+86138", "name": "x"}]}]

    def ack(counter: int, commands: list) -> str:
        return encode_frame({"type": "ack", "device": device, "counter": counter, "time": 0, "acked": 1,
                             "commands": commands}, key).hex()

    def boot(frames: list[str]) -> list:
        code = (f"PATH = {str(tmp_path / 'downlink.ctr')!r}\nDEVICE = {device}\nKEY = {key!r}\n"
                f"FRAMES = {frames!r}\n" + DOWNLINK_SCRIPT)
        return json.loads(mpy.run(code))

    set_contacts, reboot = ack(1, contacts), ack(2, [{"seq": 2, "cmd": "reboot", "delay_s": 1}])
    assert boot([set_contacts, reboot]) == ["missing", 0, "applied 1", "applied 2"]
    # after the reboot: both recorded downlinks replayed, then a fresh one from the host
    assert boot([reboot, set_contacts, ack(3, [])]) == ["ok", 5, "replay", "replay", "replay"]
    assert boot([ack(5, [])]) == ["ok", 5, "applied 5"]


# --- the host: resync and the downlink floor -----------------------------------------------------


def _setup(tmp_path: Path, window: int = 256) -> tuple[Harness, Card]:
    devices = provision(tmp_path)
    device, key = next(iter(devices.items()))
    return Harness(tmp_path, devices, window=window), Card(device, key)


def test_a_card_that_lost_its_counter_is_told_the_next_one_and_its_frame_is_then_stored(tmp_path):
    harness, card = _setup(tmp_path)
    sent = [card.frame("status", battery_pct=n) for n in range(1, 6)]  # counters 1..5
    for frame in sent:
        assert harness.feed(frame) is None
    downlinks = [decode_frame(a, card.key) for a in harness.commit()]
    assert len(downlinks) == 5
    # the card lost its counter: counter 1 again, other content
    assert harness.feed(card.frame("status", counter=1, battery_pct=77)) == "replay"
    (answer,) = harness.commit()
    resync = decode_frame(answer, card.key)
    downlinks.append(resync)
    assert resync["type"] == "resync" and resync["rejected"] == 1 and resync["next_counter"] == 6
    assert harness.frames() == [(card.device, n) for n in range(1, 6)]  # nothing stored
    # its retransmission draws the same answer again (and stores nothing)
    assert harness.feed(card.frame("status", counter=1, battery_pct=77)) == "replay"
    (answer,) = harness.commit()
    downlinks.append(decode_frame(answer, card.key))
    assert downlinks[-1]["next_counter"] == 6
    # the card continues from there: stored and acked
    assert harness.feed(card.frame("status", counter=resync["next_counter"], battery_pct=77)) is None
    (answer,) = harness.commit()
    downlinks.append(card.ack(answer))
    assert downlinks[-1]["acked"] == 6 and harness.frames()[-1] == (card.device, 6)
    # a retransmission of a stored frame is still only acked again, never resynced
    assert harness.feed(sent[2]) is None
    (answer,) = harness.commit()
    downlinks.append(card.ack(answer))
    assert downlinks[-1]["acked"] == 3
    counters = [d["counter"] for d in downlinks]
    assert counters == sorted(set(counters))  # one downlink counter sequence, acks and resyncs


def test_a_counter_older_than_the_window_and_never_stored_is_resynced(tmp_path):
    harness, card = _setup(tmp_path, window=4)
    for counter in range(10, 20):
        assert harness.feed(card.frame("status", counter=counter)) is None
    harness.commit()
    assert harness.feed(card.frame("status", counter=3)) == "replay"
    (answer,) = harness.commit()
    assert decode_frame(answer, card.key)["next_counter"] == 20


def test_hello_raises_the_hosts_downlink_counter_above_the_cards_floor(tmp_path):
    harness, card = _setup(tmp_path)
    assert harness.feed(card.frame("status")) is None
    (first,) = harness.commit()
    assert card.ack(first)["counter"] < 9000
    hello = card.frame("hello", fw_major=1, fw_minor=0, fw_patch=0, reset_cause="soft",
                       config_version=1, modem="a7670", downlink_min=9000,
                       motion_sensor="lis2dh12")
    assert harness.feed(hello) is None
    (answer,) = harness.commit()
    assert card.ack(answer)["counter"] == 9000
    harness.reopen()  # a receiver restart keeps the counters above it
    assert harness.feed(card.frame("status")) is None
    (answer,) = harness.commit()
    assert card.ack(answer)["counter"] > 9000
    assert harness.feed(hello) is None  # its retransmission: acked again, the counter only rises
    (answer,) = harness.commit()
    assert card.ack(answer)["counter"] > 9001


CARD_BOOT = r"""
import binascii, json, ccproto, counter
up = counter.UplinkCounter(counter.FileStore(PATH), 16)
enc = ccproto.Encoder(DEVICE, KEY)
dec = ccproto.Decoder(DEVICE, KEY)
out = {"status": up.status, "frames": []}
def send(battery_pct):
    frame = enc.encode("status", {"battery_mv": 3900, "battery_pct": battery_pct, "charging": 0,
                                  "rssi_dbm": -70, "motion_count": 0, "outbox_depth": 0},
                       up.take(), 1764374400)
    out["frames"].append(binascii.hexlify(frame).decode())
for pct in PCTS:
    send(pct)
for answer in ANSWERS:
    message = dec.decode(binascii.unhexlify(answer))
    dec.accept(message["counter"])
    if message["type"] == "resync":
        up.resync(message["next_counter"])
        send(99)  # the message again, under a counter the host has not seen
print(json.dumps(out))
"""


def test_a_card_whose_counter_file_is_corrupted_recovers_through_the_host(mpy, tmp_path):
    """The card's real encoder and counter on MicroPython, the host's real ingest: after the
    counter record is damaged the card restarts from 0, the host answers resync, the card jumps
    and its next frame is stored."""
    devices = provision(tmp_path / "host")
    device, key = next(iter(devices.items()))
    harness = Harness(tmp_path / "host", devices)
    path = tmp_path / "uplink.ctr"

    def boot(pcts: list[int], answers: list[bytes] = ()) -> dict:
        code = (f"PATH = {str(path)!r}\nDEVICE = {device}\nKEY = {key!r}\nPCTS = {pcts!r}\n"
                f"ANSWERS = {[a.hex() for a in answers]!r}\n" + CARD_BOOT)
        return json.loads(mpy.run(code))

    first = boot(list(range(40)))  # counters 0..39
    for frame in first["frames"]:
        assert harness.feed(bytes.fromhex(frame)) is None
    assert len(harness.commit()) == 40
    path.write_bytes(b"\xff" * 12)  # flash damage
    second = boot([13])
    assert second["status"] == "corrupt"
    assert harness.feed(bytes.fromhex(second["frames"][0])) == "replay"  # counter 0 again
    answers = harness.commit()
    # (a reboot in between: it starts at 16, past the corrupt boot's block, still a used counter)
    third = boot([], answers)
    assert harness.feed(bytes.fromhex(third["frames"][-1])) is None
    assert len(harness.commit()) == 1
    stored = harness.frames()
    assert len(stored) == 41 and stored[-1][1] == 40  # continued from the host's next counter
