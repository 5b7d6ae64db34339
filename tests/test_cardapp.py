"""The card application (firmware/lib/cardapp.py) on MicroPython, wired as the scheduler wires it:
keys.Keys for the four keys, the modem driver against the scripted modem of the driver's tests
(tests/scripted_modem.py), a configuration file on the interpreter's filesystem, and every
uplink message encoded by the card's codec (ccproto) so each one is a valid protocol message.
Virtual time: `run(ms)` advances the clock in 10 ms steps; the timings a person feels (dialling
after a key press, the SOS frame after a long press) are measured in it."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest

from scripted_modem import SIM

DEVICE = 861234567890123
KEY = "00112233445566778899aabbccddeeff"
CONTACTS = [
    {"key": 1, "name": "大儿子", "number": "13800000001"},
    {"key": 2, "name": "二儿子", "number": "+8613800000002"},
    {"key": 4, "name": "网格员", "number": "13800000004"},
]

CARD = SIM + r'''
import binascii, ccproto, config, keys, cardapp
class Card(Sim):
    """The scripted modem, the keys and the application, pumped as a scheduler does."""
    def __init__(self, cfg_path, extra=None, dtmf=True):
        r = dict((k, list(v) if isinstance(v, list) else v) for k, v in A7670_UP.items())
        if extra:
            r.update(extra)
        self.app = None
        Sim.__init__(self, modem_a7670.A7670(), r, apn="cmnet")
        self.stamps = []        # (ms, command) of every command written
        self.m.power_on(0)
        self.pump()
        self.run(1300)                      # probes time out -> PWRKEY
        self.feed(b"\r\n*ATREADY: 1\r\n")
        self.run(2000)
        self.take()
        self.m.features["dtmf"] = dtmf
        self.uplinks = []       # (ms, mtype, values, prio)
        self.acts = []          # (ms, action) of the other actions
        self.enc = ccproto.Encoder(%d, binascii.unhexlify("%s"))
        self.counter = 0
        self.keys = keys.Keys(4, 30, 2000, 30000)
        self.keys.start([0, 0, 0, 0], self.now)
        self.app = cardapp.CardApp(config.load(cfg_path), self.m, self.now)
        self.app.on_fix(249301200, 1185802100, "3d", 9, 8, self.now)
        self.app.on_battery(76)
    def _answer(self, data):
        if data.endswith(b"\r"):
            self.stamps.append((self.now, data[:-1].decode()))
        Sim._answer(self, data)
    def pump(self):
        Sim.pump(self)
        app = self.app
        if app is None:
            return
        for e in self.take():
            app.on_modem_event(e, self.now)
        while True:
            ev = self.keys.next_event()
            if ev is None:
                break
            app.on_key(ev, self.now)
        while True:
            a = app.next_action()
            if a is None:
                break
            if a[0] == "uplink":
                self.counter += 1
                self.enc.encode(a[1], a[2], self.counter, 1724366400)   # a valid message
                self.uplinks.append((self.now, a[1], a[2], a[3]))
            else:
                self.acts.append((self.now,) + (a if a[0] != "config" else ("config", "cfg")))
    def run(self, ms, step=10):
        if self.app is None:
            return Sim.run(self, ms, step)
        end = self.now + ms
        while self.now < end:
            self.now += step
            self.m.tick(self.now)
            self.keys.poll(self.now)
            self.app.poll(self.now)
            self.pump()
            while self.inbox:
                self.m.receive_data(self.inbox.pop(0))
                self.pump()
    def press(self, key0, ms):
        self.keys.edge(key0, 1, self.now)
        self.run(ms)
        self.keys.edge(key0, 0, self.now)
        released = self.now
        self.run(100)
        return released
    def since(self, t):
        return [c for when, c in self.stamps if when >= t]
    def first(self, cmd, t=0):
        for when, c in self.stamps:
            if when >= t and c == cmd:
                return when
        return None
def sms_texts(card):
    """The SMS the card sent: [(number, text)], parts joined."""
    import smspdu
    out = []
    for w in card.writes:
        if w.endswith(b"\x1a"):
            msg = smspdu.decode(w[:-1].decode())
            if msg.concat is None or msg.concat[2] == 1:
                out.append([msg.number, msg.text])
            else:
                out[-1][1] += msg.text
    return [tuple(x) for x in out]
''' % (DEVICE, KEY)

SENT = {"AT+CMGS=%d" % n: b"\r\n> " for n in range(10, 177)}
SENT["PAYLOAD"] = b"\r\n+CMGS: 9\r\n\r\nOK\r\n"


@pytest.fixture
def cfg_path(tmp_path: Path) -> str:
    path = tmp_path / "config.json"
    path.write_text(json.dumps({
        "device_id": DEVICE, "device_key": KEY, "server_host": "127.0.0.1", "server_port": 9999,
        "contacts": CONTACTS, "sos_rounds": 2, "auto_answer_rings": 3,
    }), encoding="utf-8")
    return str(path)


def run_card(mpy, cfg_path: str, body: str, extra: dict | None = None, dtmf: bool = True) -> list:
    script = CARD + "c = Card(%r, %r, %r)\n" % (cfg_path, extra, dtmf) + body
    out = mpy.run(script)
    return [ast.literal_eval(line) for line in out.splitlines()]


def test_short_press_dials_the_contact_within_two_seconds_and_records_the_call(mpy, cfg_path):
    # far end answers (VOICE CALL: BEGIN), talks 50 s and hangs up: a call from a key is never
    # hung up by the card for want of a confirmation (ring-back looks the same)
    out = run_card(mpy, cfg_path, r'''
released = c.press(1, 200)
t_dial = c.first("ATD+8613800000002;")
c.feed(b"\r\nVOICE CALL: BEGIN\r\n")
c.run(50000)
hung_up = "AT+CHUP" in c.since(released)
c.feed(b"\r\nVOICE CALL: END: 000050\r\n\r\nNO CARRIER\r\n")
c.run(100)
show(released, t_dial, hung_up, c.uplinks, [a for a in c.acts if a[1] == "alert"])
''')
    released, t_dial, hung_up, uplinks, alerts = out
    assert t_dial is not None and t_dial - released <= 2000   # within 2 s of the release
    assert not hung_up
    assert [u[1:] for u in uplinks] == [("call", {"key": 2, "number": "+8613800000002",
                                                  "outcome": "rejected", "ring_s": 0,
                                                  "talk_s": 50}, 1)]
    assert alerts[0][1:] == ("alert", "key", True)


def test_key_without_contact_and_a_press_that_hangs_up(mpy, cfg_path):
    out = run_card(mpy, cfg_path, r'''
c.press(2, 200)              # key 3 has no contact
show([u[1:] for u in c.uplinks], [x for x in c.since(0) if x.startswith("ATD")])
c.uplinks = []
c.press(0, 200)
c.replies["AT+CHUP"] = b"\r\nOK\r\n\r\nVOICE CALL: END: 000000\r\n"
c.run(3000)
t = c.press(0, 200)           # a second press ends the call it started
c.run(500)
show(c.since(t), [u[1:] for u in c.uplinks])
''')
    assert out[0] == [("call", {"key": 3, "number": "", "outcome": "no_number", "ring_s": 0,
                                "talk_s": 0}, 1)]
    assert out[1] == []
    assert out[2][0] == "AT+CHUP"
    assert out[3][0][1]["outcome"] == "cancelled" and out[3][0][1]["key"] == 1


def test_sos_frame_first_then_cascade_until_a_callee_confirms(mpy, cfg_path):
    out = run_card(mpy, cfg_path, r'''
c.run(5000)
c.keys.edge(3, 1, c.now)
pressed = c.now
c.run(2500)
first = c.uplinks[0] if c.uplinks else None
t1 = c.first("ATD13800000001;", pressed)
c.feed(b"\r\nBUSY\r\n")                           # contact 1 busy
c.run(3000)
c.keys.edge(3, 0, c.now)
t2 = c.first("ATD+8613800000002;", pressed)
c.feed(b"\r\nVOICE CALL: BEGIN\r\n")
c.run(5000)
c.feed(b"\r\n+RXDTMF: 1\r\n")                     # contact 2 pressed a key
c.run(60000)
c.feed(b"\r\nVOICE CALL: END: 000065\r\n")
c.run(10000)
show(pressed, first, t1, t2, [u[1:] for u in c.uplinks[1:]], c.app.sos_active, sms_texts(c),
     [a[1:] for a in c.acts], [x for x in c.since(pressed) if x.startswith("ATD")])
''', extra=SENT)
    pressed, first, t1, t2, calls, active, sms, acts, dials = out
    # the SOS frame is the first action, at the long press (2 s of hold), position and battery
    assert first[0] - pressed == 2000
    assert first[1:] == ("sos", {"trigger": "long_press", "lat_e7": 249301200, "lon_e7": 1185802100,
                                 "fix": "3d", "fix_age_s": 7, "battery_pct": 76}, 0)
    assert t1 - first[0] <= 2000 and t2 > t1
    assert [c_[1]["outcome"] for c_ in calls] == ["busy", "confirmed"]
    assert [c_[1]["key"] for c_ in calls] == [1, 2] and calls[1][1]["talk_s"] == 65
    assert not active and sms == []                  # confirmed, data up: no SMS
    assert ("alert", "sos") in [a[:2] for a in acts]
    assert dials == ["ATD13800000001;", "ATD+8613800000002;"]   # the cascade stopped there


def test_sos_nobody_confirms_all_rounds_then_sms_to_every_contact(mpy, cfg_path):
    out = run_card(mpy, cfg_path, r'''
c.app.set_clock(1724366400, c.now)       # 2024-08-22 22:40:00 UTC = 08-23 06:40 in Beijing
t = c.now
c.press(0, 2100)
for i in range(6):                       # 3 contacts x 2 rounds, each ring-back then timeout
    c.feed(b"\r\nVOICE CALL: BEGIN\r\n")
    c.run(45000)
    c.feed(b"\r\nVOICE CALL: END: 000045\r\n")
    c.run(3000)
c.run(5000)
show([x for x in c.since(t) if x.startswith("ATD") or x == "AT+CHUP"],
     [u[1:][1]["outcome"] for u in c.uplinks if u[1] == "call"], c.app.sos_active, sms_texts(c))
''', extra=SENT)
    cmds, outcomes, active, sms = out
    dials = [x for x in cmds if x.startswith("ATD")]
    assert dials == ["ATD13800000001;", "ATD+8613800000002;", "ATD13800000004;"] * 2
    assert cmds.count("AT+CHUP") == 6 and outcomes == ["no_answer"] * 6
    assert not active
    assert [n for n, _ in sms] == ["13800000001", "+8613800000002", "13800000004"]
    text = sms[0][1]
    assert "紧急求助" in text and "2024-08-23 06:40" in text
    assert "24.93012,118.58021" in text
    assert "https://uri.amap.com/marker?position=118.58021,24.93012&coordinate=wgs84" in text
    assert len({t for _, t in sms}) == 1


def test_sos_with_data_down_sends_the_sms_at_once(mpy, cfg_path):
    # the bearer never comes up: the SOS frame may not get out, the family hears it by SMS now
    extra = dict(SENT)
    extra["AT+NETOPEN"] = b"\r\nOK\r\n\r\n+NETOPEN: 1\r\n"
    out = run_card(mpy, cfg_path, r'''
t = c.now
c.press(2, 2100)
c.run(3000)
show(c.m.data.net_up, [u[1] for u in c.uplinks], [n for n, _ in sms_texts(c)],
     c.first("ATD13800000001;", t) is not None)
''', extra=extra)
    assert out[0] is False and out[1] == ["sos"]
    assert out[2] == ["13800000001", "+8613800000002", "13800000004"] and out[3]


def test_the_sos_sms_names_the_owner_when_the_config_has_the_name(mpy, cfg_path):
    # the family may look after more than one elder: the SMS says whose card it is
    data = json.loads(Path(cfg_path).read_text(encoding="utf-8"))
    data["owner_name"] = "王秀英"
    Path(cfg_path).write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")
    extra = dict(SENT)
    extra["AT+NETOPEN"] = b"\r\nOK\r\n\r\n+NETOPEN: 1\r\n"
    out = run_card(mpy, cfg_path, r'''
c.press(2, 2100)
c.run(3000)
show(c.app.cfg.problems, sms_texts(c)[0][1])
''', extra=extra)
    problems, text = out
    assert problems == []
    assert text.startswith("【紧急求助】王秀英按了爱心卡的求助键。")


def test_without_dtmf_a_long_active_call_counts_as_reached_and_the_sms_still_goes(mpy, cfg_path):
    out = run_card(mpy, cfg_path, r'''
t = c.now
c.press(0, 2100)
c.feed(b"\r\nVOICE CALL: BEGIN\r\n")
c.run(60000)                              # no ring timeout on such a modem
hung = "AT+CHUP" in c.since(t)
c.feed(b"\r\nVOICE CALL: END: 000060\r\n")
c.run(10000)
show(hung, [x for x in c.since(t) if x.startswith("ATD")], c.app.sos_active,
     [n for n, _ in sms_texts(c)], [u[1:][1]["outcome"] for u in c.uplinks if u[1] == "call"])
''', extra=SENT, dtmf=False)
    hung, dials, active, sms, outcomes = out
    assert not hung and dials == ["ATD13800000001;"] and not active
    assert sms == ["13800000001", "+8613800000002", "13800000004"]
    assert outcomes == ["rejected"]      # the record keeps what the modem knew


def test_incoming_calls_auto_answer_contacts_after_the_rings_and_keys_answer_others(mpy, cfg_path):
    out = run_card(mpy, cfg_path, r'''
RING = b'\r\nRING\r\n\r\n+CLIP: "+8613800000001",145,,,,0\r\n'
t = c.now
for i in range(3):
    c.feed(RING)
    c.run(5000)
answered = c.first("ATA", t)
rings_at = c.now
c.feed(b"\r\nVOICE CALL: END: 000030\r\n")
c.run(100)
show(answered is not None and answered < rings_at, [u[1:] for u in c.uplinks])
c.uplinks = []
t = c.now
for i in range(5):
    c.feed(b'\r\nRING\r\n\r\n+CLIP: "02188888888",129,,,,0\r\n')
    c.run(5000)
show(c.first("ATA", t), c.app.stats["calls_unknown"])
c.press(2, 200)                           # the elder answers it
c.run(3000)
c.feed(b"\r\nVOICE CALL: END: 000003\r\n")
c.run(100)
show(c.first("ATA", t) is not None, [u[1:] for u in c.uplinks])
c.uplinks = []
c.feed(RING)
c.run(2000)
c.feed(b"\r\nNO CARRIER\r\n")            # the caller gave up before the third ring
c.run(100)
show([u[1:] for u in c.uplinks])
''')
    assert out[0] is True
    record = out[1][0]
    assert record[0] == "call" and record[1]["key"] == 1 and record[1]["outcome"] == "answered"
    assert out[2] is None and out[3] == 1
    assert out[4] is True
    assert out[5][0][1]["key"] == 3 and out[5][0][1]["number"] == "02188888888"
    assert out[5][0][1]["outcome"] == "answered"
    assert out[6][0][1]["outcome"] == "missed" and out[6][0][1]["key"] == 1


def test_sms_where_from_a_contact_is_answered_with_the_position(mpy, cfg_path):
    # SMS-DELIVER PDUs as a network hands them over (smspdu.encode_deliver, checked against
    # smspdudecoder in the SMS tests), read with AT+CMGR after +CMTI
    extra = dict(SENT)
    out = run_card(mpy, cfg_path, r'''
import smspdu
def deliver(sender, text):
    n, pdu = smspdu.encode_deliver(sender, text, 1724366400, 32)[0]
    return b"\r\n+CMGR: 0,," + str(n).encode() + b"\r\n" + pdu + b"\r\n\r\nOK\r\n"
c.replies["AT+CMGR=1"] = deliver("+8613800000004", "定位")
c.replies["AT+CMGR=2"] = deliver("+8613900000000", "WHERE")
c.replies["AT+CMGR=3"] = deliver("13800000001", " where ")
c.replies["AT+CMGR=4"] = deliver("13800000001", "你好")
c.app.set_clock(1724366400, c.now)
for i in (1, 2, 3, 4):
    c.feed(('\r\n+CMTI: "SM",%d\r\n' % i).encode())
    c.run(2000)
show(sms_texts(c), c.app.stats["sms_unknown"], c.app.stats["sms_other"],
     [x for x in c.since(0) if x.startswith("AT+CMGD")])
''', extra=extra)
    sms, unknown, other, deleted = out
    assert [n for n, _ in sms] == ["+8613800000004", "13800000001"]
    assert "24.93012,118.58021" in sms[0][1] and "位置" in sms[0][1]
    assert unknown == 1 and other == 1
    assert deleted == ["AT+CMGD=1", "AT+CMGD=2", "AT+CMGD=3", "AT+CMGD=4"]


def test_checkin_prompt_ok_no_response_and_help(mpy, cfg_path):
    out = run_card(mpy, cfg_path, r'''
c.app.on_commands([{"cmd": "checkin_prompt", "seq": 5, "prompt_id": 7, "timeout_s": 60}], c.now)
c.pump()
c.run(10000)
c.press(1, 200)                           # any key in the window: OK, no call
c.run(1000)
show([u[1:] for u in c.uplinks], [a[1:] for a in c.acts if a[1] == "alert" and a[2] == "checkin"],
     [x for x in c.since(0) if x.startswith("ATD")])
c.uplinks = []
c.app.on_commands([{"cmd": "checkin_prompt", "seq": 6, "prompt_id": 8, "timeout_s": 60}], c.now)
c.run(61000)
show([u[1:] for u in c.uplinks])
c.uplinks = []
c.app.on_commands([{"cmd": "checkin_prompt", "seq": 9, "prompt_id": 9, "timeout_s": 60}], c.now)
c.pump()
c.press(0, 2100)                          # a long press: help, and the SOS as always
show([(u[1], u[2].get("answer"), u[3]) for u in c.uplinks])
''')
    assert out[0][0] == ("command_result", {"seq": 5, "result": "done"}, 1)
    assert out[0][1][0] == "checkin" and out[0][1][1]["answer"] == "ok"
    assert out[0][1][1]["prompt_id"] == 7 and out[0][1][1]["response_s"] == 10
    assert out[1] == [("alert", "checkin", True), ("alert", "checkin", False)]
    assert out[2] == []
    assert out[3][1][1] == {"prompt_id": 8, "answer": "no_response", "response_s": 60}
    assert out[4][1:] == [("checkin", "help", 0), ("sos", None, 0)]


def test_downlink_commands_applied_persisted_confirmed_once(mpy, cfg_path):
    out = run_card(mpy, cfg_path, r'''
c.app.on_commands([
    {"cmd": "set_intervals", "seq": 1, "position_s": 600, "status_s": 7200, "gnss_timeout_s": 90},
    {"cmd": "set_intervals", "seq": 2, "position_s": 5, "status_s": 7200, "gnss_timeout_s": 90},
    {"cmd": "set_contacts", "seq": 3, "contacts": [
        {"key": 1, "name": "女儿", "number": "13700000001"}, {"key": 2, "name": "", "number": ""}]},
    {"cmd": "locate_now", "seq": 4},
    {"cmd": "set_time", "seq": 5, "unix": 1760000000},
    {"cmd": "reboot", "seq": 6, "delay_s": 5},
    {"cmd": "something_new", "seq": 7},
], c.now)
c.app.on_commands([{"cmd": "set_intervals", "seq": 1, "position_s": 900, "status_s": 3600,
                    "gnss_timeout_s": 120}], c.now)
c.pump()
stored = config.load(%r)
show([u[2] for u in c.uplinks], [a[1:] for a in c.acts], stored.values["position_s"],
     stored.values["status_s"], stored.contacts, c.app.cfg.contacts, c.app.unix(c.now),
     c.app.stats["commands_repeated"])
c.press(0, 200)
show([x for x in c.since(0) if x.startswith("ATD")])
''' % cfg_path)
    results, acts, position_s, status_s, stored_contacts, live_contacts, unix, repeated, dials = out
    assert results == [{"seq": 1, "result": "done"}, {"seq": 2, "result": "bad_value"},
                       {"seq": 3, "result": "done"}, {"seq": 4, "result": "done"},
                       {"seq": 5, "result": "done"}, {"seq": 6, "result": "done"},
                       {"seq": 7, "result": "unsupported"}, {"seq": 1, "result": "done"}]
    assert position_s == 600 and status_s == 7200 and repeated == 1   # seq 1 not applied again
    assert stored_contacts == [(1, "女儿", "13700000001")] == live_contacts
    assert ("locate", "downlink") in acts and ("set_time", 1760000000) in acts
    assert acts[-1] == ("reboot", 5) and ("config", "cfg") in acts
    assert unix == 1760000000
    assert dials == ["ATD13700000001;"]


def test_every_driver_outcome_has_a_protocol_code(mpy):
    out = mpy.run("import ccspec, cardapp, modem_voice\n"
                  "print(repr([cardapp._OUTCOMES[o] for o in modem_voice.OUTCOMES]))\n"
                  "print(repr(ccspec.ENUMS['call_outcome']))\n")
    mapped, enum = [ast.literal_eval(line) for line in out.splitlines()]
    assert set(mapped) <= set(enum) and len(set(mapped)) == len(mapped)


def test_a_press_dials_within_two_seconds_from_sleep_and_waits_for_a_modem_coming_up(mpy, cfg_path):
    out = run_card(mpy, cfg_path, r'''
c.m.sleep()
c.run(500)
asleep = c.m.sleeping
t = c.press(0, 150)
c.run(2000)
t_dial = c.first("ATD13800000001;", t)
c.feed(b"\r\nNO CARRIER\r\n")
c.run(3000)
show(asleep, t_dial - t)
# the modem restarts (a brown-out) and its SIM is busy for a while: a press meanwhile waits and
# dials once the modem is ready
c.uplinks = []
c.replies["AT+CPIN?"] = [b"\r\n+CME ERROR: 14\r\n"] * 3 + [b"\r\n+CPIN: READY\r\n\r\nOK\r\n"]
c.feed(b"\r\nRDY\r\n")
t = c.press(1, 150)
waiting = c.first("ATD+8613800000002;", t)
c.run(8000)
show(waiting, c.m.state, c.first("ATD+8613800000002;", t) is not None)
# the modem gives no answer at all: the waiting call is recorded as failed after dial_wait_ms
c.feed(b"\r\nNO CARRIER\r\n")
c.run(1000)
c.uplinks = []
c.silent = True
c.feed(b"\r\nRDY\r\n")
c.press(3, 150)
c.run(65000)
show([(u[2]["key"], u[2]["outcome"]) for u in c.uplinks if u[1] == "call"])
''')
    asleep, delay = out[0], out[1]
    assert asleep and delay <= 2000
    assert out[2] is None and out[3] == "ready" and out[4]
    assert out[5] == [(4, "failed")]


def test_a_contact_calling_back_during_the_sos_is_answered_at_once_and_ends_the_cascade(mpy, cfg_path):
    out = run_card(mpy, cfg_path, r'''
t = c.now
c.press(0, 2100)
c.feed(b"\r\nBUSY\r\n")                                   # contact 1 busy
c.run(500)                                                # in the gap between two calls
c.feed(b'\r\nRING\r\n\r\n+CLIP: "13800000004",129,,,,0\r\n')
c.run(500)
answered = c.first("ATA", t)
c.run(30000)
c.feed(b"\r\nVOICE CALL: END: 000030\r\n")
c.run(10000)
show(answered is not None, [x for x in c.since(t) if x.startswith("ATD")], c.app.sos_active,
     [(u[2]["key"], u[2]["outcome"]) for u in c.uplinks if u[1] == "call"])
''', extra=SENT)
    answered, dials, active, calls = out
    assert answered and dials == ["ATD13800000001;"] and not active
    assert calls == [(1, "busy"), (4, "answered")]


def test_hostile_commands_and_messages_are_counted_never_a_crash(mpy, cfg_path):
    out = run_card(mpy, cfg_path, r'''
c.app.on_commands([{"cmd": "set_intervals", "seq": 11},
                   {"cmd": "checkin_prompt", "seq": 12, "prompt_id": 1},
                   {"cmd": "set_contacts", "seq": 13, "contacts": "13800000001"},
                   {"cmd": "reboot"}, "not a command"], c.now)
c.replies["AT+CMGR=1"] = b"\r\n+CMGR: 0,,30\r\n0791FFFF\r\n\r\nOK\r\n"
c.feed(b'\r\n+CMTI: "SM",1\r\n')
c.feed(b'\r\n+CMT: ,3\r\nZZZZ\r\n')
c.run(1000)
show([u[2] for u in c.uplinks], c.app.stats["commands_failed"], c.app.stats["sms_unreadable"],
     [a[1:] for a in c.acts if a[1] == "reboot"])
''')
    results, failed, unreadable, reboots = out
    assert results == [{"seq": 11, "result": "rejected"}, {"seq": 12, "result": "rejected"},
                       {"seq": 13, "result": "rejected"}]
    assert failed == 5 and unreadable == 2 and reboots == []


def test_the_sms_codec_is_imported_only_when_an_sms_is_made_or_read(mpy) -> None:
    """smspdu is the largest module the application uses (14.8 KB of heap on the 32-bit port
    with the .mpy in RAM, 4.6 KB from ROMFS): a card that has not sent or read an SMS does not
    carry it."""
    out = mpy.run("import sys, gc\nimport cardapp\nprint('smspdu' in sys.modules)\n")
    assert out.strip() == "False"
