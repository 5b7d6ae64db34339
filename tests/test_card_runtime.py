"""The card's firmware image as it ships (firmware/main.py -> cardloop.CardLoop driving
cardapp.CardApp) on the virtual card (carecard.tools.vcard.runner: the simulated board, the
simulated A7670 on a pty, the simulated GNSS), sending to a receiver on 127.0.0.1 that decodes
every frame with the host's codec and acks it, carrying downlink commands when the test queues
them. Virtual time throughout: the timings a person feels are measured on the simulated clock."""

from __future__ import annotations

import json
from pathlib import Path

from carecard.protocol import decode_frame
from carecard.tools import micropython
from carecard.tools import fwlib
from carecard.tools.vcard.gnss_sim import GnssSim, Track, TrackPoint
from carecard.tools.vcard.modem_sim import ANSWERS, CONFIRMS, NO_ANSWER, Callee, ModemSim
from carecard.tools.vcard.runner import VirtualCard, World

from loopback_receiver import DEVICE, KEY, receiver  # noqa: F401  (receiver: a fixture)

HOME = (24.905321, 118.587112)
SON, SECOND_SON, GRID = "13800000001", "+8613800000002", "13800000004"


def flash_with_config(tmp_path: Path, port: int) -> Path:
    flash = tmp_path / "flash"
    flash.mkdir()
    config = {"device_id": DEVICE, "device_key": KEY.hex(), "server_host": "127.0.0.1",
              "server_port": port, "auto_answer_rings": 2, "sos_rounds": 2,
              "contacts": [{"key": 1, "name": "大儿子", "number": SON},
                           {"key": 2, "name": "二儿子", "number": SECOND_SON},
                           {"key": 4, "name": "网格员", "number": GRID}]}
    (flash / "config.json").write_text(json.dumps(config, ensure_ascii=False), encoding="utf-8")
    return flash


def dialled(sim: ModemSim) -> list[tuple[int, str]]:
    """(ms, number) of every ATD the card wrote to the modem."""
    out = []
    for ms, direction, data in sim.transcript:
        if direction == "in" and data.startswith(b"ATD"):
            out.append((ms, data[3:].split(b";")[0].decode()))
    return out


def sms_texts(sim: ModemSim) -> dict[str, str]:
    """Destination -> the text of every SMS the card sent (parts joined)."""
    smspdu = fwlib.smspdu()
    texts: dict[str, str] = {}
    for sms in sim.sent_sms:
        msg = smspdu.decode(sms.pdu_hex)
        texts[msg.number] = texts.get(msg.number, "") + msg.text
    return texts


def test_the_shipped_image_calls_runs_the_sos_cascade_answers_sms_and_applies_downlinks(
        mpy, tmp_path, receiver) -> None:
    image = micropython.card_image(compiled=True)
    flash = flash_with_config(tmp_path, receiver.port)
    sim = ModemSim(seed=3, callees={SON: Callee(NO_ANSWER), SECOND_SON: Callee(CONFIRMS),
                                    GRID: Callee(ANSWERS, talk_s=5)})
    gnss = GnssSim(Track([TrackPoint(0, *HOME, "outdoor")]), seed=5)
    world = World(modem=sim, gnss=gnss)
    with VirtualCard(image, flash, world, reply_wait_s=0.2) as card:
        card.press(90_000, 3)                           # key 4: the grid worker, who answers
        card.press(300_000, 2, hold_ms=2500)            # a long press: SOS
        card.at(700_000, lambda: sim.incoming_sms(SON, "定位"))
        card.at(800_000, lambda: sim.incoming_call(SECOND_SON, ring_for_s=30, talk_s=20))
        card.at(900_000, lambda: receiver.commands.extend([
            {"seq": 1, "cmd": "checkin_prompt", "prompt_id": 7, "timeout_s": 600},
            {"seq": 2, "cmd": "set_intervals", "position_s": 1200, "status_s": 3600,
             "gnss_timeout_s": 90}]))
        card.press(905_000, 2)                          # key 3 has no number: a call record
        card.press(1_000_000, 0)                        # answers the check-in prompt
        run = card.run(1_100_000)
    assert receiver.errors == []
    crashes = [d for _, what, d in run.timeline if what in ("crash", "hang", "watchdog")]
    assert crashes == [] and [c for _, c in run.resets] == ["power_on"]
    # a short press dials its contact within 2 s (the modem may be asleep), and is recorded
    calls = dialled(sim)
    assert calls[0][1] == GRID and calls[0][0] - 90_000 <= 2_000
    records = receiver.of("call")
    assert records[0]["key"] == 4 and records[0]["number"] == GRID
    # the SOS frame reaches the receiver within 10 s of the press, with the GNSS's position
    sos_sent = [d for d in sim.sent_datagrams if decode_frame(d.payload, KEY)["type"] == "sos"]
    assert sos_sent and sos_sent[0].at_ms - 300_000 <= 10_000
    sos = receiver.of("sos")[0]
    assert sos["trigger"] == "long_press" and sos["fix"] in ("2d", "3d")
    assert abs(sos["lat_e7"] / 1e7 - HOME[0]) < 1e-3 and abs(sos["lon_e7"] / 1e7 - HOME[1]) < 1e-3
    # the cascade: key order, the son does not answer, the second son confirms with a key: done
    cascade = [n for ms, n in calls if 300_000 < ms < 700_000]
    assert cascade == [SON, SECOND_SON]
    outcomes = [(r["key"], r["outcome"]) for r in records]
    assert (1, "no_answer") in outcomes and (2, "confirmed") in outcomes
    # the card asks the callee to press a key: a spoken prompt (AT+CTTS, played to the far end
    # after AT+CDTAM=1) once the call is up, and the key comes after the prompt was spoken
    assert any(d == "in" and data.startswith(b"AT+CDTAM=1") for _, d, data in sim.transcript)
    prompts = [(ms, to, text) for ms, to, text in sim.spoken if to == SECOND_SON]
    assert prompts and all("请按任意键确认" in text for _, _, text in prompts)
    confirm_call = next(ms for ms, n in calls if n == SECOND_SON and ms > 300_000)
    said = [ms for ms, d, data in sim.transcript if d == "in" and data.startswith(b"AT+CTTS=1,")
            and ms > confirm_call]
    key = next(ms for ms, d, data in sim.transcript if d == "out" and b"+RXDTMF" in data and ms > confirm_call)
    assert said and said[0] < prompts[0][0] <= key
    # "定位" from a contact is answered by SMS with the place and a map link; nobody else got one
    texts = sms_texts(sim)
    assert list(texts) == [SON] or set(texts) == {SON, "+86" + SON[-11:]}
    reply = next(iter(texts.values()))
    assert reply.startswith("【位置】") and "uri.amap.com" in reply and "24.905" in reply
    # the contact's call is answered by itself after two rings, and recorded as answered
    answered = [ms for ms, d, data in sim.transcript if d == "in" and data.startswith(b"ATA")]
    assert answered and 800_000 < answered[0] < 800_000 + 3 * 3_000 + 2_000
    assert (2, "answered") in outcomes
    # downlinks: the check-in prompt buzzes and blinks until a key answers "ok"; the intervals
    # are applied, saved in the config file and confirmed
    results = {(r["seq"], r["result"]) for r in receiver.of("command_result")}
    assert results == {(1, "done"), (2, "done")}
    checkin = receiver.of("checkin")
    assert [(c["prompt_id"], c["answer"]) for c in checkin] == [(7, "ok")]
    buzz = [ms for ms, what, d in run.timeline if what == "buzzer" and d == "on" and ms > 905_000]
    assert len(buzz) > 10 and buzz[-1] < 1_000_500
    assert (3, "no_number") in outcomes
    saved = json.loads((flash / "config.json").read_text(encoding="utf-8"))
    assert saved["position_s"] == 1200 and saved["gnss_timeout_s"] == 90
    assert saved["contacts"][0]["name"] == "大儿子"
