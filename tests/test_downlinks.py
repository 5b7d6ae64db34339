"""Downlink commands: queued, carried in acks until the card confirms, failed/expired when not,
and `carecard send` while a receiver runs."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from carecard.host.paths import ingest_db_path
from carecard.host.receiver.config import DownlinkSettings, Endpoint, ReceiverConfig
from carecard.host.receiver.downlinks import CommandError, check_command, queue_command
from carecard.host.receiver.service import ReceiverThread
from carecard.host.storage.sqlite.store import SQLiteStore, list_commands, load_devices

from receiver_helpers import Card, Harness, exchange, provision, run_cli, udp_client


def queue(data_dir: Path, device: int, cmd: str, args: dict | None = None, *, now: float | None = None) -> int:
    store = SQLiteStore(ingest_db_path(data_dir), readonly_lookups=False)
    try:
        return queue_command(store, device, cmd, args or {}, now=now).seq
    finally:
        store.close()


def commands(data_dir: Path, device: int) -> list:
    store = SQLiteStore(ingest_db_path(data_dir), readonly_lookups=False)
    try:
        return list_commands(store.connection, device)
    finally:
        store.close()


def round_trip(h: Harness, card: Card, mtype: str = "status", **fields: object) -> dict:
    assert h.feed(card.frame(mtype, **fields)) is None
    acks = h.commit()
    return card.ack(acks[-1])


def test_command_rides_on_acks_until_confirmed(tmp_path: Path) -> None:
    device, key = next(iter(provision(tmp_path, 1).items()))
    seq = queue(tmp_path, device, "set_intervals", {"position_s": 300, "status_s": 3600, "gnss_timeout_s": 60})
    h = Harness(tmp_path, {device: key})
    card = Card(device, key)
    first = round_trip(h, card)
    assert first["commands"] == [{"seq": seq, "cmd": "set_intervals", "position_s": 300, "status_s": 3600,
                                  "gnss_timeout_s": 60}]
    assert round_trip(h, card)["commands"][0]["seq"] == seq  # not confirmed yet: sent again
    (state,) = commands(tmp_path, device)
    assert (state.state, state.attempts) == ("sent", 2)
    done = round_trip(h, card, "command_result", seq=seq, result="done")
    assert done["commands"] == []  # the ack of the confirmation no longer carries it
    (state,) = commands(tmp_path, device)
    assert (state.state, state.result) == ("done", "done")
    assert round_trip(h, card)["commands"] == []
    assert h.metrics.commands_finished["done"] == 1
    h.store.close()


def test_unconfirmed_command_fails_after_max_attempts_and_card_answers_are_kept(tmp_path: Path) -> None:
    device, key = next(iter(provision(tmp_path, 1).items()))
    locate = queue(tmp_path, device, "locate_now")
    reboot = queue(tmp_path, device, "reboot", {"delay_s": 5})
    h = Harness(tmp_path, {device: key}, downlinks=DownlinkSettings(max_attempts=3))
    card = Card(device, key)
    assert [c["seq"] for c in round_trip(h, card)["commands"]] == [locate, reboot]
    assert round_trip(h, card, "command_result", seq=reboot, result="unsupported")["commands"] == [
        {"seq": locate, "cmd": "locate_now"}]
    assert round_trip(h, card)["commands"] == [{"seq": locate, "cmd": "locate_now"}]
    assert round_trip(h, card)["commands"] == []  # three attempts made: given up
    states = {c.seq: (c.state, c.attempts, c.result) for c in commands(tmp_path, device)}
    assert states == {locate: ("failed", 3, None), reboot: ("unsupported", 1, "unsupported")}
    h.store.close()


def test_old_commands_expire_and_set_time_carries_the_ack_time(tmp_path: Path) -> None:
    device, key = next(iter(provision(tmp_path, 1).items()))
    # queued two hours ago, past the one-hour expiry; the other one now: however slow the machine
    # is between queueing and the frame (it once was: 0.3 s of real time), only the old one expires
    old = queue(tmp_path, device, "locate_now", now=time.time() - 7200)
    h = Harness(tmp_path, {device: key}, downlinks=DownlinkSettings(expire_after_s=3600))
    clock = queue(tmp_path, device, "set_time")
    h.reopen()
    card = Card(device, key)
    before = int(time.time())
    ack = round_trip(h, card)
    assert [c["cmd"] for c in ack["commands"]] == ["set_time"]
    assert before <= ack["commands"][0]["unix"] <= int(time.time()) + 1
    states = {c.seq: c.state for c in commands(tmp_path, device)}
    assert states == {old: "expired", clock: "sent"}
    h.store.close()


def test_confirmed_contacts_update_the_registry(tmp_path: Path) -> None:
    device, key = next(iter(provision(tmp_path, 1).items()))
    contacts = [{"key": 1, "number": "+8613800000001", "name": "大儿子"},
                {"key": 4, "number": "+8613900000004", "name": "网格员"}]
    seq = queue(tmp_path, device, "set_contacts", {"contacts": contacts})
    h = Harness(tmp_path, {device: key})
    card = Card(device, key)
    assert round_trip(h, card)["commands"][0]["contacts"] == contacts
    round_trip(h, card, "command_result", seq=seq, result="done")
    devices = load_devices(h.store.connection)
    assert [c.as_dict() for c in devices[device].contacts] == contacts
    h.store.close()


def test_commands_are_checked_when_queued(tmp_path: Path) -> None:
    device, _key = next(iter(provision(tmp_path, 1).items()))
    with pytest.raises(CommandError, match="not registered"):
        queue(tmp_path, 123456789012347, "locate_now")
    with pytest.raises(CommandError, match="unknown command"):
        check_command("self_destruct", {})
    with pytest.raises(CommandError, match="position_s"):
        check_command("set_intervals", {"position_s": -1, "status_s": 1, "gnss_timeout_s": 1})
    with pytest.raises(CommandError, match="unexpected field"):
        check_command("locate_now", {"when": 1})
    huge = [{"key": k, "number": "+" + "1" * 63, "name": "名" * 21} for k in range(1, 5)]
    with pytest.raises(CommandError, match="exceeds"):
        check_command("set_contacts", {"contacts": huge})
    assert commands(tmp_path, device) == []


@pytest.mark.parametrize("contact, text", [
    ({"key": 9, "number": "+8613800138000", "name": "x"}, "key: 9 is outside 1..4"),
    ({"key": 0, "number": "+8613800138000", "name": "x"}, "key: 0 is outside 1..4"),
    ({"key": 1, "number": "+8613800138000;ATH", "name": "x"}, "number"),
    ({"key": 1, "number": "13800138000\r\nAT+CFUN=0", "name": "x"}, "number"),
    ({"key": 1, "number": "1+3800", "name": "x"}, "number"),
    ({"key": 1, "number": "\u0661\u0662", "name": "x"}, "number"),  # digits, but not ASCII
])
def test_the_downlink_encoder_refuses_a_contact_the_card_must_not_dial(contact: dict, text: str) -> None:
    """A number goes into the modem's ATD command on the card: only digits and a leading +."""
    with pytest.raises(CommandError, match=text):
        check_command("set_contacts", {"contacts": [contact]})


def test_send_while_the_receiver_runs(tmp_path: Path) -> None:
    device, key = next(iter(provision(tmp_path, 1).items()))
    card = Card(device, key)
    config = ReceiverConfig(udp=[Endpoint("127.0.0.1", 0)], data_dir=tmp_path, log_level="warning")
    config.ingest.registry_poll_s = 0.05
    with ReceiverThread(config) as rt:
        port = rt.receiver.udp_ports[0]
        client = udp_client()
        assert card.ack(exchange(client, port, card.frame()))["commands"] == []
        result = run_cli("send", str(device), "checkin", "--timeout", "120", "--data", str(tmp_path))
        assert result.returncode == 0, result.stderr
        assert "checkin_prompt" in result.stdout
        deadline = time.monotonic() + 5
        carried = []
        while not carried and time.monotonic() < deadline:
            carried = card.ack(exchange(client, port, card.frame()))["commands"]
            time.sleep(0.05)
        assert carried and carried[0]["cmd"] == "checkin_prompt" and carried[0]["timeout_s"] == 120
        assert carried[0]["prompt_id"] == carried[0]["seq"]
        listing = run_cli("devices", "--data", str(tmp_path), "--json")
        (record,) = [json.loads(line) for line in listing.stdout.splitlines()]
        assert record["commands"][0]["state"] == "sent"
        cancel = run_cli("send", "Elder 0", "cancel", str(carried[0]["seq"]), "--data", str(tmp_path))
        assert cancel.returncode == 0, cancel.stderr
        deadline = time.monotonic() + 5
        while carried and time.monotonic() < deadline:
            time.sleep(0.1)
            carried = card.ack(exchange(client, port, card.frame()))["commands"]
        assert carried == []
    states = [c.state for c in commands(tmp_path, device)]
    assert states == ["cancelled"]
    bad = run_cli("send", "nobody", "locate", "--data", str(tmp_path))
    assert bad.returncode == 1 and "no device named" in bad.stderr


@settings(max_examples=300, deadline=None)
@given(device=st.integers(0, 2**64 - 1), counter=st.integers(0, 2**32 - 1),
       now=st.integers(0, 2**32 - 1), acked=st.integers(0, 2**32 - 1),
       key=st.binary(min_size=16, max_size=16) | st.binary(min_size=32, max_size=32))
def test_ack_without_commands_fast_path_is_byte_identical_to_the_codec(device: int, counter: int, now: int,
                                                                      acked: int, key: bytes) -> None:
    """The common ack (no command) is packed with one struct derived from the spec's ack fields,
    not through the construct codec: it must be the codec's bytes exactly, and decode as an ack."""
    from carecard.protocol import KeyRing, ack, decode_frame, encode_frame

    assert ack._EMPTY_ACK is not None, "the fast path must be in use"
    ring = KeyRing({device: key})
    fast = ack.AckEncoder(ring).encode(device, counter, now, acked)
    assert fast == encode_frame({"type": "ack", "device": device, "counter": counter, "time": now,
                                 "acked": acked, "commands": []}, key)
    message = decode_frame(fast, ring)
    assert (message["type"], message["acked"], message["commands"]) == ("ack", acked, [])


def test_a_replayed_frame_never_uses_up_commands_nor_draws_a_larger_ack(tmp_path: Path) -> None:
    """A captured uplink resent 20 times from another address: every ack it draws is no larger
    than the frame and carries no command; no command changes state or counts an attempt, so
    the real card still gets them all. Retransmissions from the card's own (last verified)
    address are acked with the open commands, still without counting an attempt."""
    device, key = next(iter(provision(tmp_path, 1).items()))
    contacts = [{"key": k, "number": "+861380000000" + str(k), "name": "名字" * 8} for k in range(1, 5)]
    seqs = [queue(tmp_path, device, "set_contacts", {"contacts": contacts}),
            queue(tmp_path, device, "locate_now"),
            queue(tmp_path, device, "reboot", {"delay_s": 5})]
    h = Harness(tmp_path, {device: key})
    card = Card(device, key)
    home = ("10.0.0.1", 5000)
    captured = card.frame("command_result", seq=999, result="done")  # the smallest uplink: 30 bytes
    assert h.feed(captured, address=home) is None
    (first,) = h.commit()
    assert [c["seq"] for c in card.ack(first)["commands"]] == seqs
    attacker = ("192.0.2.66", 4444)
    for _ in range(20):
        assert h.feed(captured, source=attacker[0], address=attacker) is None
        for ack in h.commit():
            assert len(ack) <= len(captured)
            assert card.ack(ack)["commands"] == []
    assert all(address == home for address, _ack in h.sent)  # no ack fits in 30 bytes
    bigger = card.frame("status")
    h.feed(bigger, address=home)
    h.commit()
    for _ in range(20):
        h.feed(bigger, source=attacker[0], address=attacker)
        for ack in h.commit():
            assert len(ack) <= len(bigger) and card.ack(ack)["commands"] == []
    assert sum(address == attacker for address, _ack in h.sent) == 20
    assert h.feed(bigger, address=home) is None  # the card retransmits: its commands, no attempt
    (again,) = h.commit()
    assert [c["seq"] for c in card.ack(again)["commands"]] == seqs
    assert {c.seq: (c.state, c.attempts) for c in commands(tmp_path, device)} == {
        seq: ("sent", 2) for seq in seqs}
    assert h.metrics.duplicates == 41 and h.metrics.acks_withheld == 20
    # the real card's next frame carries every command still (and counts the attempt)
    assert [c["seq"] for c in round_trip(h, card)["commands"]] == seqs
    assert {c.attempts for c in commands(tmp_path, device)} == {3}
    h.store.close()


def test_a_duplicate_after_a_restart_is_acked_with_commands_only_at_the_stored_address(tmp_path: Path) -> None:
    device, key = next(iter(provision(tmp_path, 1).items()))
    seq = queue(tmp_path, device, "locate_now")
    h = Harness(tmp_path, {device: key})
    card = Card(device, key)
    frame = card.frame("status")
    h.feed(frame, address=("10.0.0.7", 6000))
    h.commit()  # the first commit writes the device statistics, the last source among them
    h.reopen()  # a restarted receiver: the last verified address comes from the registry
    h.feed(frame, address=("10.0.0.7", 6000))
    h.feed(frame, source="192.0.2.1", address=("192.0.2.1", 6000))
    home, elsewhere = (card.ack(ack) for ack in h.commit())
    assert [c["seq"] for c in home["commands"]] == [seq] and elsewhere["commands"] == []
    assert [(c.state, c.attempts) for c in commands(tmp_path, device)] == [("sent", 1)]
    h.store.close()


def test_attempts_count_only_commands_that_went_out_in_an_ack(tmp_path: Path) -> None:
    device, key = next(iter(provision(tmp_path, 1).items()))
    big = [{"key": k, "number": "+" + "8" * 20, "name": "名" * 21} for k in range(1, 5)]
    contacts = [queue(tmp_path, device, "set_contacts", {"contacts": big}) for _ in range(3)]
    locate = queue(tmp_path, device, "locate_now")
    h = Harness(tmp_path, {device: key})
    card = Card(device, key)
    for _ in range(5):
        assert [c["seq"] for c in round_trip(h, card)["commands"]] == [contacts[0]]
    attempts = {c.seq: (c.state, c.attempts) for c in commands(tmp_path, device)}
    assert attempts == {contacts[0]: ("sent", 5), contacts[1]: ("queued", 0), contacts[2]: ("queued", 0),
                        locate: ("queued", 0)}
    assert h.metrics.commands_sent == 5
    round_trip(h, card, "command_result", seq=contacts[0], result="done")
    assert [c["seq"] for c in round_trip(h, card)["commands"]] == [contacts[1]]
    h.store.close()
