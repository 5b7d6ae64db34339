"""The modem driver (firmware/lib/modem.py + the A7670 and EC800M profiles) on MicroPython,
against a scripted modem that answers each command as the real ones do (replies taken from the
captures in ../shared/data/at/ where they exist). Bring-up, SIM states, registration (denied,
SMS-only), network time, UDP, voice call outcomes and hang-up, SMS, sleep/wake, recovery, and
reboots of the modem while it is up."""

from __future__ import annotations

import ast
import calendar

import pytest

from scripted_modem import SIM


def mpy_events(mpy, body: str) -> list:
    out = mpy.run(SIM + body)
    return [ast.literal_eval(line) for line in out.splitlines()]


def test_a7670_bring_up_from_off(mpy):
    cmds, pins, events, state = mpy_events(mpy, "s = a7670_up()\nshow(s.cmds(), s.pins, s.events, s.m.state)")
    assert state == "ready"
    assert pins[:2] == [("dtr", 0), ("pwrkey", 100)]  # hardware/modem_a7670.json pwrkey_on_ms
    assert cmds[:3] == ["AT", "AT", "AT"]
    order = cmds.index
    assert order("ATE0") < order("AT+CVHU=0") < order("AT+CPIN?") < order("AT+CSQ") < order("AT+CREG?")
    assert order("AT+CEREG?") < order("AT+CCLK?") and 'AT+CGDCONT=1,"IP","cmnet"' in cmds
    assert order("AT+NETOPEN") < order("AT+IPADDR")
    expected_time = calendar.timegm((2024, 8, 22, 22, 39, 56))  # 06:39:56 at UTC+8 (+32 quarters)
    for ev in [("sim", "ready"), ("signal", -77, 18), ("reg", "home", 1, 1), ("time", expected_time, 32),
               ("net", True, "10.4.112.219"), ("ready",)]:
        assert ev in events, ev
    assert events.index(("state", "booting")) < events.index(("ready",))


def test_cclk_time_zones_and_unset_clock(mpy):
    out = mpy_events(mpy, r'''
for text in ('"24/08/23,06:39:56+32"', '"26/09/06,13:52:00-12"', '"00/01/01,00:00:00+00"',
             '"24/02/29,23:59:59-00"', '"70/01/01,00:00:10+00"', '"24/13/01,00:00:00+00"', 'garbage'):
    try:
        show(modem.parse_cclk(text))
    except ValueError as exc:
        show(("ValueError", str(exc)[:20]))
''')
    assert out[0] == (calendar.timegm((2024, 8, 22, 22, 39, 56)), 32)
    assert out[1] == (calendar.timegm((2026, 9, 6, 16, 52, 0)), -12)   # -03:00 (Argentina)
    assert out[2][0] == "ValueError"                                    # year 2000: never set
    assert out[3] == (calendar.timegm((2024, 2, 29, 23, 59, 59)), 0)
    assert [o[0] for o in out[4:]] == ["ValueError"] * 3


def test_sim_states(mpy):
    out = mpy_events(mpy, r'''
s = a7670_up({"AT+CPIN?": b"\r\n+CPIN: SIM PIN\r\n\r\nOK\r\n"})
show(s.m.state, [e for e in s.events if e[0] == "sim"])
s = a7670_up({"AT+CPIN?": [b"\r\n+CPIN: SIM PIN\r\n\r\nOK\r\n", b"\r\n+CPIN: READY\r\n\r\nOK\r\n"]}, pin="1234")
show(s.m.state, 'AT+CPIN="1234"' in s.cmds())
s = a7670_up({"AT+CPIN?": b"\r\n+CME ERROR: 10\r\n"})
show(s.m.state, [e for e in s.events if e[0] == "sim"])
s = a7670_up({"AT+CPIN?": [b"\r\n+CME ERROR: 14\r\n", b"\r\n+CME ERROR: 13\r\n", b"\r\n+CPIN: READY\r\n\r\nOK\r\n"]})
s.run(6000)
show(s.m.state, [e for e in s.events if e[0] == "sim"])
s = a7670_up()
s.feed(b"\r\n+CPIN: SIM REMOVED\r\n")
show(s.m.state)
''')
    assert out[0] == "sim_locked" and out[1] == [("sim", "pin_required")]
    assert out[2] == "ready" and out[3] is True
    assert out[4] == "no_sim" and out[5] == [("sim", "absent")]
    assert out[6] == "ready" and out[7] == [("sim", "not_ready"), ("sim", "not_ready"), ("sim", "ready")]
    assert out[8] == "no_sim"


def test_registration_denied_sms_only_and_urc_loss(mpy):
    out = mpy_events(mpy, r'''
s = a7670_up({"AT+CREG?": b"\r\n+CREG: 1,3\r\n\r\nOK\r\n", "AT+CEREG?": b"\r\n+CEREG: 1,3\r\n\r\nOK\r\n"})
show(s.m.state, [e for e in s.events if e[0] == "reg"])
s = a7670_up({"AT+CREG?": b"\r\n+CREG: 1,0\r\n\r\nOK\r\n", "AT+CEREG?": b"\r\n+CEREG: 1,7\r\n\r\nOK\r\n"})
show(s.m.state, [e for e in s.events if e[0] == "reg"], "AT+NETOPEN" in s.cmds())
s = a7670_up({"AT+CREG?": b"\r\n+CREG: 1,2\r\n\r\nOK\r\n", "AT+CEREG?": b"\r\n+CEREG: 1,2\r\n\r\nOK\r\n"})
s.feed(b"\r\n+CEREG: 5\r\n")
s.run(2000)
show(s.m.state, [e for e in s.events if e[0] == "reg"])
s.feed(b"\r\n+CREG: 0\r\n+CEREG: 0\r\n")
show(s.m.state, s.m.data.net_up)
''')
    assert out[0] == "denied" and out[1] == [("reg", "denied", 3, 3)]
    assert out[2] == "ready" and out[3] == [("reg", "sms_only", 0, 7)] and out[4] is False
    assert out[5] == "ready" and ("reg", "roaming", 2, 5) in out[6]
    assert out[7] == "registering" and out[8] is False


def test_a7670_udp_open_send_receive_close(mpy):
    out = mpy_events(mpy, r'''
s = a7670_up({'AT+CIPOPEN=0,"UDP",,,50000': b"\r\nOK\r\n\r\n+CIPOPEN: 0,0\r\n",
              'AT+CIPSEND=0,9,"1.2.3.4",5000': b"\r\n> ",
              "PAYLOAD": b"\r\nOK\r\n\r\n+CIPSEND: 0,9,9\r\n"})
s.take()
s.m.data.udp_open("1.2.3.4", 5000)
s.run(200)
s.m.data.udp_send(b"\x00\x01hi\r\nabc")
s.run(200)
show(s.writes[-1], s.take())
s.feed(b"\r\nRECV FROM:1.2.3.4:5000\r\n+IPD5\r\nab\r\nc")
s.feed(b"\r\n+RECEIVE,0,3\r\nxyz\r\n+IPCLOSE: 0,1\r\n")
show(s.take())
s.feed(b"\r\n+CIPEVENT: NETWORK CLOSED UNEXPECTEDLY\r\n")
show(s.take(), s.m.data.net_up)
try:
    s.m.data.udp_send(b"x")
except modem.ModemError as exc:
    show("ModemError")
''')
    assert out[0] == b"\x00\x01hi\r\nabc"          # exactly the payload after the prompt
    assert ("udp", "open", None) in out[1] and ("udp_sent", 9) in out[1]
    assert out[2] == [("udp_recv", b"ab\r\nc", "1.2.3.4:5000"), ("udp_recv", b"xyz", None),
                      ("udp", "closed", "0,1")]
    assert ("net", False, "+CIPEVENT NETWORK CLOSED UNEXPECTEDLY") in out[3] and out[4] is False
    assert out[5] == "ModemError"


CALL = r'''
s = a7670_up()
s.m.features["dtmf"] = True
# AT+CHUP as the A7672SA notes show a hang-up: OK, then the call's end as URCs
s.replies["AT+CHUP"] = b'\r\nOK\r\n\r\n+CLCC: 1,0,6,0,0,"10086",129\r\nNO CARRIER\r\n\r\nVOICE CALL: END: 000000\r\n'
s.take()
'''


@pytest.mark.parametrize("script, outcome", [
    # callee answers and presses a key: the only trustworthy "answered"
    ('s.feed(b"\\r\\n+CLCC: 1,0,2,0,0,\\"10086\\",129\\r\\n+CLCC: 1,0,3,0,0,\\"10086\\",129\\r\\n")\n'
     's.run(3000)\ns.feed(b"\\r\\nVOICE CALL: BEGIN\\r\\n")\ns.run(2000)\ns.feed(b"\\r\\n+RXDTMF: 1\\r\\n")\n'
     's.run(4000)\ns.feed(b"\\r\\nVOICE CALL:END:000006\\r\\n")', "confirmed"),
    # VOICE CALL: BEGIN and +CLCC "active" at ring-back (A76xx on real networks), no key press:
    # the ring timeout still runs out, the call is hung up, and it is not "answered"
    ('s.feed(b"\\r\\nVOICE CALL: BEGIN\\r\\n+CLCC: 1,0,0,0,0,\\"10086\\",129\\r\\n")\ns.run(46000)', "no_answer"),
    # ... and ended by the far end before that: still not "answered"
    ('s.feed(b"\\r\\nVOICE CALL: BEGIN\\r\\n+CLCC: 1,0,0,0,0,\\"10086\\",129\\r\\n")\ns.run(4000)\n'
     's.feed(b"\\r\\nNO CARRIER\\r\\n\\r\\nVOICE CALL: END: 000004\\r\\n")', "rejected"),
    ('s.feed(b"\\r\\nBUSY\\r\\n")', "busy"),
    ('s.feed(b"\\r\\n+CLCC: 1,0,3,0,0,\\"10086\\",129\\r\\n")\ns.feed(b"\\r\\nNO ANSWER\\r\\n")', "no_answer"),
    ('s.feed(b"\\r\\n+CLCC: 1,0,3,0,0,\\"10086\\",129\\r\\n")\ns.run(46000)', "no_answer"),   # our ring timeout
    ('s.feed(b"\\r\\n+CLCC: 1,0,3,0,0,\\"10086\\",129\\r\\n")\ns.run(2000)\ns.feed(b"\\r\\nNO CARRIER\\r\\n")', "rejected"),
    ('s.feed(b"\\r\\n+CLCC: 1,0,3,0,0,\\"10086\\",129\\r\\n")\ns.run(1000)\ns.m.voice.hangup()\ns.run(500)', "cancelled"),
])
def test_call_outcomes(mpy, script, outcome):
    out = mpy_events(mpy, CALL + "s.m.voice.dial('10086')\ns.run(300)\n" + script + "\ns.run(500)\n"
                     "show(s.cmds(), s.take())")
    cmds, events = out
    assert "ATD10086;" in cmds
    assert cmds.index("AT+CVHU=0") < cmds.index("ATD10086;")
    ends = [e for e in events if e[0] == "call_end"]
    assert len(ends) == 1 and ends[0][1] == outcome, events
    if outcome == "confirmed":
        assert ("dtmf", "1") in events and ends[0][3] == 6   # talk seconds from BEGIN to END
    assert outcome != "answered"   # an outgoing call is never "answered" on the modem's word
    if script.endswith("s.run(46000)"):   # the ring timeout hung up, with AT+CHUP
        assert cmds[-1] == "AT+CHUP" and ends[0][4] == "released"
    else:
        assert "AT+CHUP" not in cmds or outcome == "cancelled"


def test_ring_back_keeps_the_ring_timeout_until_a_key_confirms(mpy):
    # A7672SA on a real network: +CLCC 2, 3, then 0 with VOICE CALL: BEGIN and +COLP at
    # ring-back, and nothing more when (if) the callee answers (shared/data/at/unattributed)
    out = mpy_events(mpy, CALL + r'''
RINGBACK = (b'\r\n+CLCC: 1,0,2,0,0,"10086",129\r\n\r\n+CLCC: 1,0,3,0,0,"10086",129\r\n'
            b'\r\nVOICE CALL: BEGIN\r\n\r\n+CLCC: 1,0,0,0,0,"10086",129\r\n\r\n+COLP: "10086",129\r\n')
s.m.voice.dial("10086")
s.run(300)
s.feed(RINGBACK)
s.run(44000)                      # 44.3 s after dialling: still within the 45 s ring timeout
show("AT+CHUP" in s.cmds(), s.take())
s.run(1500)                       # the ring timeout: hung up, and the end confirmed
show(s.cmds()[-1], s.take())
s.writes = []
s.m.voice.dial("10086")
s.run(300)
s.feed(RINGBACK)
s.run(10000)
s.feed(b"\r\n+RXDTMF: 5\r\n")     # the callee pressed a key: now someone is on the line
s.run(50000)
show("AT+CHUP" in s.cmds(), s.take())
s.feed(b"\r\nVOICE CALL:END:000060\r\n")
show(s.take())
s.writes = []
s.m.voice.dial("10086", ring_timeout_ms=0)   # no ring timeout: the application ends the call
s.run(300)
s.feed(RINGBACK)
s.run(100000)
show(s.cmds())
s.feed(b"\r\nNO CARRIER\r\n\r\nVOICE CALL: END: 000100\r\n")
show([e for e in s.take() if e[0] == "call_end"])
''')
    hung_up, events = out[0], out[1]
    assert not hung_up and ("call", "active", "10086") in events
    assert not [e for e in events if e[0] == "call_end"]
    assert out[2] == "AT+CHUP"
    ends = [e for e in out[3] if e[0] == "call_end"]
    assert [e[1] for e in ends] == ["no_answer"] and ("call", "idle", "10086") in out[3]
    assert not out[4] and ("dtmf", "5") in out[5]
    assert not [e for e in out[5] if e[0] == "call_end"]
    assert out[6][-1][:2] == ("call_end", "confirmed") and out[6][-1][3] == 60
    assert out[7] == ["ATD10086;"]
    # ended by the far end, never confirmed: not "answered" (the modem's "active" is kept as
    # talk time and its words as the detail)
    assert out[8] == [("call_end", "rejected", 0, 100, "NO CARRIER")]


def test_hang_up_ends_the_call_only_when_the_modem_confirms_it(mpy):
    # "OK" to a hang-up command is not the end (ATH does nothing to a voice call once
    # AT+CVHU=0 is lost): the end is +CLCC stat 6, VOICE CALL: END (either spelling), NO
    # CARRIER, or AT+CLCC listing no call; until then the other hang-up command is tried
    out = mpy_events(mpy, CALL + r'''
s.replies["AT+CHUP"] = b"\r\nOK\r\n"
s.replies["ATH"] = b"\r\nOK\r\n"
s.replies["AT+CLCC"] = [b'\r\n+CLCC: 1,0,3,0,0,"10086",129\r\n\r\nOK\r\n', b"\r\nOK\r\n"]
s.m.voice.dial("10086")
s.run(300)
s.feed(b'\r\n+CLCC: 1,0,3,0,0,"10086",129\r\n')
s.run(1000)
s.writes = []
s.take()
s.m.voice.hangup()
s.run(1000)
show(s.cmds(), [e for e in s.take() if e[0] in ("call", "call_end")])
s.run(5000)                       # no end within 5 s: ask; still listed: ATH
show(s.cmds(), [e for e in s.take() if e[0] in ("call", "call_end")])
s.feed(b"\r\nVOICE CALL:END:000000\r\n")
show([e for e in s.take() if e[0] == "call_end"])
s.writes = []
s.m.voice.dial("10086")
s.run(300)
s.feed(b'\r\n+CLCC: 1,0,3,0,0,"10086",129\r\n')
s.m.voice.hangup()
s.run(6000)                       # OK, no URC; AT+CLCC lists no call: ended
show(s.cmds(), [e for e in s.take() if e[0] == "call_end"])
''')
    assert out[0] == ["AT+CHUP"] and out[1] == []
    assert out[2] == ["AT+CHUP", "AT+CLCC", "ATH"] and out[3] == []
    assert out[4] == [("call_end", "cancelled", 7, 0, "END:000000")]
    assert out[5] == ["ATD10086;", "AT+CHUP", "AT+CLCC"]
    assert out[6] == [("call_end", "cancelled", 5, 0, "hangup")]


def test_dial_error_incoming_call_and_answer(mpy):
    out = mpy_events(mpy, CALL + r'''
s.replies["ATD112;"] = b"\r\n+CME ERROR: 30\r\n"
s.m.voice.dial("112")
s.run(300)
show([e for e in s.take() if e[0] == "call_end"])
s.feed(b'\r\nRING\r\n\r\n+CLIP: "+8613800000000",145,,,,0\r\n')
show(s.take())
s.m.voice.answer()
s.run(300)
s.feed(b"\r\nVOICE CALL: END: 000010\r\n")
show([e for e in s.take() if e[0] in ("call", "call_end")])
''')
    assert out[0] == [("call_end", "failed", 0, 0, "CME 30")]
    assert ("incoming", None) in out[1] and ("incoming", "+8613800000000") in out[1]
    assert ("call", "active", "+8613800000000") in out[2]
    assert out[2][-1][0:2] == ("call_end", "answered")


def test_a_second_answer_while_ata_is_under_way_sends_no_second_ata(mpy):
    """RING and +CLIP each make an application answer a contact's call (auto-answer on the
    ring count, on the number): one ATA. A second ATA reaching the modem after the call is up
    answers NO CARRIER (seen with the simulated A7670), which ended the talking call as failed."""
    out = mpy_events(mpy, CALL + r'''
s.replies["ATA"] = [b'\r\nOK\r\n\r\nVOICE CALL: BEGIN\r\n', b"\r\nNO CARRIER\r\n"]
s.feed(b'\r\nRING\r\n\r\n+CLIP: "+8613800000000",145,,,,0\r\n')
s.take()
s.m.voice.answer()
s.m.voice.answer()
s.run(1000)
show(s.cmds().count("ATA"), [e for e in s.take() if e[0] in ("call", "call_end")], s.m.voice.state)
''')
    assert out == [1, [("call", "active", "+8613800000000")], "active"]


def test_sms_send_and_receive(mpy):
    out = mpy_events(mpy, r'''
s = a7670_up({"AT+CMGS=24": [b"\r\n> ", b"\r\n> "],
              "PAYLOAD": [b"\r\n+CMGS: 12\r\n\r\nOK\r\n", b"\r\n+CMS ERROR: 500\r\n"],
              "AT+CMGR=3": b"\r\n+CMGR: 0,,24\r\n07917248014000F506B70AA18092020000317071518590803170715185418000\r\n\r\nOK\r\n",
              "AT+CMGR=4": b'\r\n+CMGR: "REC UNREAD","+34626704066","","25/04/27,13:44:52+8"\r\n1234 estado\r\n\r\nOK\r\n'})
s.take()
pdu = "0011000B915121551532F40008AA0A4F60597D"
s.m.sms.send_pdu(pdu + "00" * 7, 24, tag="t1")
s.run(300)
show(s.writes[-1])
s.m.sms.send_pdu(pdu + "00" * 7, 24, tag="t2")
s.run(300)
show([e for e in s.take() if e[0].startswith("sms")])
s.feed(b'\r\n+CMTI: "SM",3\r\n')
s.run(300)
s.feed(b'\r\n+CMTI: "SM",4\r\n')
s.run(300)
s.feed(b'\r\n+CMTI: ,-1\r\n+CMT: ,24\r\n07917248014000F506B70AA18092020000317071518590803170715185418000\r\n')
s.run(300)
show([e for e in s.take() if e[0].startswith("sms")])
for bad in (("zz", 1), ("00", 2), ("0011", 0)):
    try:
        s.m.sms.send_pdu(*bad)
        show("accepted")
    except modem.ModemError:
        show("rejected")
''')
    assert out[0] == b"0011000B915121551532F40008AA0A4F60597D00000000000000\x1a"
    assert out[1] == [("sms_sent", 12, "t1"), ("sms_failed", 500, "t2")]
    pdu = "07917248014000F506B70AA18092020000317071518590803170715185418000"
    assert out[2] == [("sms_new", "SM", 3), ("sms", "pdu", 3, "0,,24", pdu), ("sms_new", "SM", 4),
                      ("sms", "text", 4, '"REC UNREAD","+34626704066","","25/04/27,13:44:52+8"', "1234 estado"),
                      ("sms_new", "", -1), ("sms", "pdu", None, ",24", pdu)]
    assert out[3:] == ["rejected"] * 3


def test_sleep_wake_and_ri(mpy):
    out = mpy_events(mpy, r'''
s = a7670_up()
s.take(); s.pins = []
s.m.sleep()
s.run(100)
show(s.pins, s.take(), s.cmds()[-1])
s.m.query_signal()            # a command while asleep wakes the modem first
s.pump()
show(s.cmds()[-1], s.pins[-1])
s.run(200)
show(s.cmds()[-1], s.take())
s.m.sleep()
s.run(100)
s.pins = []
s.m.ri()
s.run(200)
show(s.pins, [e for e in s.take() if e[0] in ("ri", "awake")])
''')
    assert out[0] == [("dtr", 1)] and ("sleep",) in out[1] and out[2] == "AT+CSCLK=1"
    assert out[3] == "AT+CSCLK=1" and out[4] == ("dtr", 0)   # not written before the wake time
    assert out[5] == "AT+CSQ" and ("awake",) in out[6] and ("signal", -77, 18) in out[6]
    assert out[7] == [("dtr", 0)] and out[8] == [("ri",), ("awake",)]


def test_recovery_power_cycles_a_silent_modem(mpy):
    out = mpy_events(mpy, r'''
s = a7670_up()
s.take(); s.pins = []
s.silent = True
for i in range(3):
    s.m.query_signal()
    s.run(6000)
show(s.pins, [e for e in s.take() if e[0] in ("recovery", "state")])
s.silent = False
s.replies["AT"] = b"\r\nOK\r\n"
s.run(4000)
s.feed(b"\r\n*ATREADY: 1\r\n")
s.run(2000)
show(s.pins, s.m.state)
''')
    pins, events = out[0], out[1]
    assert ("recovery", "no_response", 1) in events
    assert pins == [("pwrkey", 3000)]                         # pwrkey_off_ms, then wait power_off_ms
    assert out[2] == [("pwrkey", 3000), ("dtr", 0), ("pwrkey", 100)] and out[3] == "ready"


def test_recovery_from_garbage_and_giving_up(mpy):
    out = mpy_events(mpy, r'''
s = a7670_up()
s.take()
s.feed(b"\xc3\x28\x00\xfe\r\n" * 12)
show([e for e in s.take() if e[0] in ("recovery", "at_error")][-2:])
s = a7670_up()
s.take()
s.silent = True
for i in range(3):
    s.m.query_signal()
    s.run(6000)
s.run(120000, step=50)
show([e for e in s.take() if e[0] in ("recovery", "failed")], s.m.state)
''')
    assert out[0] == [("at_error", "binary"), ("recovery", "garbage", 1)]
    assert out[1][-1] == ("failed", "no_response_after_boot") and out[2] == "off"
    assert [e[2] for e in out[1] if e[0] == "recovery"] == [1, 2, 3, 4]


EC800M = r'''
EC_UP = {
    "AT": [None, None, b"\r\nOK\r\n"],
    "AT+CPIN?": b"\r\n+CPIN: READY\r\n\r\nOK\r\n",
    "AT+CSQ": b"\r\n+CSQ: 17,99\r\n\r\nOK\r\n",
    "AT+CREG?": b'\r\n+CREG: 2,1,"00A8","5355E8D",7\r\n\r\nOK\r\n',
    "AT+CEREG?": b"\r\n+CEREG: 1,1\r\n\r\nOK\r\n",
    "AT+CCLK?": b'\r\n+CCLK: "25/01/27,10:00:00+32"\r\n\r\nOK\r\n',
    "AT+QIACT?": b'\r\n+QIACT: 1,1,1,"10.7.157.1"\r\n\r\nOK\r\n',
    'AT+QIOPEN=1,0,"UDP","5.6.7.8",9000,0,1': b"\r\nOK\r\n\r\n+QIOPEN: 0,0\r\n",
    "AT+QISEND=0,4": b"\r\n> ",
    "PAYLOAD": b"\r\nSEND OK\r\n",
    "AT+QIRD=0,1500": b"\r\n+QIRD: 3\r\nxyz\r\n\r\nOK\r\n",
}
s = Sim(modem_ec800m.EC800M(), EC_UP, apn="cmnet")
s.m.power_on(0)
s.pump()
s.run(1300)
s.feed(b"\r\nRDY\r\n")
s.run(2000)
'''


def test_ec800m_bring_up_udp_and_sms(mpy):
    out = mpy_events(mpy, EC800M + r'''
show(s.m.state, s.pins[:2], s.cmds(), s.take())
s.m.data.udp_open("5.6.7.8", 9000)
s.run(300)
s.m.data.udp_send(b"ping")
s.run(300)
s.feed(b'\r\n+QIURC: "recv",0,4\r\npong\r\n+QIURC: "recv",0\r\n')
s.run(300)
s.feed(b'\r\n+QIURC: "closed",0\r\n+QIURC: "pdpdeact",1\r\n')
show(s.writes[-3:], s.take())
s.replies["AT+CMGS=24"] = b"\r\n> "
s.replies["PAYLOAD"] = b"\r\n+CMGS: 7\r\n\r\nOK\r\n"
s.m.sms.send_pdu("0011000B915121551532F40008AA0A4F60597D" + "00" * 7, 24)
s.run(300)
s.feed(b'\r\n+CMTI: "SM",2\r\n')
s.run(300)
show([e for e in s.take() if e[0].startswith("sms")])
''')
    state, pins, cmds, events = out[0], out[1], out[2], out[3]
    assert state == "ready" and pins == [("dtr", 0), ("pwrkey", 600)]
    assert 'AT+QURCCFG="urcport","uart1"' in cmds and "AT+QTONEDET=1" in cmds
    assert cmds.index('AT+QICSGP=1,1,"cmnet","","",1') < cmds.index("AT+QIACT=1") < cmds.index("AT+QIACT?")
    assert ("net", True, "10.7.157.1") in events and ("reg", "home", 1, 1) in events
    writes, ev = out[4], out[5]
    assert b"ping" in writes and b"AT+QIRD=0,1500\r" in writes
    assert ("udp", "open", None) in ev and ("udp_sent", 4) in ev
    assert ("udp_recv", b"pong", None) in ev and ("udp_recv", b"xyz", None) in ev
    assert ("udp", "closed", "remote") in ev and ("net", False, "pdpdeact") in ev
    assert out[6][0] == ("sms_sent", 7, None) and out[6][1] == ("sms_new", "SM", 2)


def test_ec800m_dtmf_and_power_down(mpy):
    out = mpy_events(mpy, EC800M + r'''
s.take()
s.m.voice.dial("10086")
s.run(300)
s.feed(b"\r\n+CLCC: 1,0,0,0,0,\"10086\",129\r\n")
s.run(1000)
s.feed(b"\r\n+QTONEDET: 49\r\n")
s.run(1000)
s.feed(b"\r\nNO CARRIER\r\n")
show([e for e in s.take() if e[0] in ("dtmf", "call_end")])
s.feed(b"\r\nPOWERED DOWN\r\n")
show(s.m.state, s.take()[-2:])
''')
    assert out[0][0] == ("dtmf", "1") and out[0][1][:2] == ("call_end", "confirmed")
    assert out[1] == "off" and ("powered_down", "POWERED DOWN") in out[2]


def test_modem_reboot_while_ready_reinitialises_at_once(mpy):
    # a brown-out on a transmit burst restarts the modem: its boot URCs while the driver is up
    # are a reboot: counted, reported, every setting applied again at once
    out = mpy_events(mpy, r"""
s = a7670_up({'AT+CIPOPEN=0,"UDP",,,50000': b"\r\nOK\r\n\r\n+CIPOPEN: 0,0\r\n"})
s.m.data.udp_open("1.2.3.4", 5000)
s.run(200)
s.feed(b"\r\n+CPIN: READY\r\n\r\nSMS DONE\r\n\r\nPB DONE\r\n")   # the bring-up's own boot tail
s.run(100)
show(s.m.reboots, s.m.state)
s.take()
s.writes = []
s.feed(b"\r\nRDY\r\n")
s.run(3000)
show(s.take(), s.cmds(), s.m.state, s.m.reboots)
s.feed(b"\r\n*ATREADY: 1\r\n\r\n+CPIN: READY\r\n")
s.run(3000)
s.feed(b"\r\nSMS DONE\r\n")       # the reboot's own tail: no new reboot
s.run(100)
show(s.m.reboots, s.m.state)
s.feed(b"\r\nSMS DONE\r\n")       # once more since the last boot: it restarted, RDY lost
s.run(3000)
show(s.m.reboots, s.m.state)
s.take()
s.run(61000)
s.feed(b"\r\n+CPIN: READY\r\n")   # long after the last boot
s.run(3000)
show(s.m.reboots, s.m.state, [e for e in s.take() if e[0] == "modem_reboot"])
""")
    assert out[0] == 0 and out[1] == "ready"
    events, cmds = out[2], out[3]
    assert ("modem_reboot", "RDY", 1) in events
    assert ("udp", "closed", "modem_reboot") in events and ("net", False, "modem_reboot") in events
    for cmd in ("ATE0", "AT+CMEE=1", "AT+CVHU=0", "AT+CLIP=1", "AT+CLCC=1", "AT+CMGF=0",
                "AT+CNMI=2,1,0,0,0", "AT+CREG=1", "AT+CEREG=1", "AT+CPIN?", "AT+CREG?", "AT+NETOPEN"):
        assert cmd in cmds, cmd
    assert cmds[0] == "ATE0"               # at once: no probing, no waiting for a timeout
    assert events.index(("modem_reboot", "RDY", 1)) < events.index(("ready",))
    assert out[4] == "ready" and out[5] == 1
    assert out[6] == 2 and out[7] == "ready"
    assert out[8] == 3 and out[9] == "ready"
    assert out[10] == 4 and out[11] == "ready"
    assert out[12] == [("modem_reboot", "+CPIN", 4)]


def test_reboot_in_the_middle_of_received_data_is_seen(mpy):
    # the reboot cuts a datagram short: the parser drops the cut data after a second of
    # silence, so the modem's RDY is read as RDY (not as the rest of the data) and the driver
    # re-initialises; a call in progress ends as failed
    out = mpy_events(mpy, CALL + r"""
s.m.voice.dial("10086")
s.run(300)
s.feed(b"\r\nRECV FROM:1.2.3.4:5000\r\n+IPD100\r\n0123456789")
s.run(2000)
s.feed(b"\r\nRDY\r\n")
s.run(3000)
show([e for e in s.take() if e[0] in ("at_error", "modem_reboot", "call_end", "udp_recv", "ready")], s.m.state)
""")
    events, state = out
    assert events[0] == ("at_error", "cut")
    assert events[1] == ("modem_reboot", "RDY", 1)
    assert events[2][:2] == ("call_end", "failed") and events[2][4] == "modem_reboot"
    assert ("ready",) in events and state == "ready"
    assert not [e for e in events if e[0] == "udp_recv"]


def test_ec800m_reboot_and_quectel_boot_urcs(mpy):
    out = mpy_events(mpy, EC800M + r"""
s.feed(b"\r\n+CPIN: READY\r\n\r\n+QIND: SMS DONE\r\n\r\n+QIND: PB DONE\r\n")
s.run(100)
show(s.m.reboots)
s.take()
s.writes = []
s.feed(b"\r\n+QIND: PB DONE\r\n")
s.run(3000)
show(s.m.reboots, s.m.state, s.cmds()[:3], [e for e in s.take() if e[0] == "modem_reboot"])
s.feed(b"\r\nRDY\r\n")
s.run(3000)
show(s.m.reboots, s.m.state)
""")
    assert out[0] == 0
    assert out[1] == 1 and out[2] == "ready"
    assert out[3] == ["ATE0", "AT+CMEE=1", 'AT+QURCCFG="urcport","uart1"']
    assert out[4] == [("modem_reboot", "PB DONE", 1)]
    assert out[5] == 2 and out[6] == "ready"


def test_hang_up_that_never_takes_is_reported_and_can_be_retried(mpy):
    out = mpy_events(mpy, CALL + r"""
s.replies["AT+CHUP"] = b"\r\nOK\r\n"
s.replies["ATH"] = b"\r\nOK\r\n"
s.replies["AT+CLCC"] = b'\r\n+CLCC: 1,0,0,0,0,"10086",129\r\n\r\nOK\r\n'
s.m.voice.dial("10086")
s.run(300)
s.writes = []
s.take()
s.m.voice.hangup()
s.run(20000)
show(s.cmds(), [e for e in s.take() if e[0] in ("hangup_failed", "call_end")], s.m.voice.call)
s.writes = []
s.m.voice.hangup()
s.run(100)
show(s.cmds())
""")
    assert out[0] == ["AT+CHUP", "AT+CLCC", "ATH", "AT+CLCC", "AT+CHUP", "AT+CLCC"]
    assert out[1] == [("hangup_failed", "still up", "OK", None)] and out[2] != 0   # still up
    assert out[3] == ["AT+CHUP"]


def test_timing_is_injected_and_checked(mpy):
    # the driver reads no file: the caller hands it the profile's hardware data; a missing or
    # bad figure is a clear error naming it
    out = mpy_events(mpy, r"""
hw = hwdata.load("modem_a7670")
m = modem.Modem(modem_a7670.A7670(), hw)
show(m.t_pwrkey_on, m.t_wake)
import json
for bad in ({}, {"timing": {}}, json.loads(json.dumps(hw).replace('"value": 100', '"value": -1'))):
    try:
        modem.Modem(modem_a7670.A7670(), bad)
        show("accepted")
    except modem.ModemError as exc:
        show(str(exc))
""")
    assert out[0] == 100 and out[1] == 100
    assert "timing.pwrkey_on_ms.value" in out[2] and "timing.pwrkey_on_ms.value" in out[3]
    assert "-1" in out[4]


def test_dtmf_urc_forms_confirm_a_call(mpy):
    # +RXDTMF as SIMCom modems send it (ModemManager's SIMCom plugin tests it with one or two
    # CRs before the LF; keys 0-9, *, #, A-D; a SIM7600G-H session log shows VOICE CALL: BEGIN,
    # +RXDTMF: 1, VOICE CALL: END); each confirms an outgoing call
    out = mpy_events(mpy, CALL + r"""
for urc in (b"\r\r\n+RXDTMF: 8\r\r\n", b"\r\n+RXDTMF: *\r\n", b"\r\n+RXDTMF: #\r\n", b"\r\n+RXDTMF: A\r\n"):
    s.m.voice.dial("10086")
    s.run(300)
    s.feed(b"\r\nVOICE CALL: BEGIN\r\n")
    s.run(1000)
    s.feed(urc)
    s.run(1000)
    s.feed(b"\r\nVOICE CALL: END: 000002\r\n")
    show([e for e in s.take() if e[0] in ("dtmf", "call_end")])
""")
    assert [o[0] for o in out] == [("dtmf", "8"), ("dtmf", "*"), ("dtmf", "#"), ("dtmf", "A")]
    assert all(o[1][:2] == ("call_end", "confirmed") for o in out)


def test_incoming_call_not_answered_is_missed(mpy):
    out = mpy_events(mpy, CALL + r"""
s.feed(b'\r\nRING\r\n\r\n+CLIP: "13900000000",129,,,,0\r\n')
s.run(8000)
s.feed(b'\r\nNO CARRIER\r\n\r\nMISSED_CALL: 09:12AM 13900000000\r\n')
show([e for e in s.take() if e[0] in ("call_end", "missed_call")])
""")
    assert out[0][0][:2] == ("call_end", "missed") and out[0][0][2] == 8
    assert out[0][1] == ("missed_call", "09:12AM 13900000000")


def test_event_queue_is_first_in_first_out_without_moving_items(mpy):
    out = mpy_events(mpy, r"""
q = modem.Fifo()
got = []
for i in range(5):
    q.put(i)
got.append(q.get())
q.put(5)
while len(q):
    got.append(q.get())
show(got, q.get(), len(q._items))
""")
    assert out == [[0, 1, 2, 3, 4, 5], None, 0]


def test_a7670_bearer_already_open_after_a_card_reset_is_taken_as_up(mpy):
    """After the card (not the modem) resets, the bearer is still open and AT+NETOPEN answers
    "+IP ERROR: Network is already opened" then ERROR (SIMCom A76xx AT manual): the driver takes
    the bearer as up and asks its address, instead of failing every time until a power cycle."""
    ((state, nets, asked_address),) = mpy_events(mpy, r'''
s = a7670_up({"AT+NETOPEN": b"\r\n+IP ERROR: Network is already opened\r\n\r\nERROR\r\n"})
show((s.m.state, [e for e in s.events if e[0] == "net"], "AT+IPADDR" in s.cmds()))
''')
    assert state == "ready"
    assert asked_address is True
    assert nets == [("net", True, "10.4.112.219")]


def test_a7670_udp_link_still_open_after_a_card_reset_is_closed_and_opened_again(mpy):
    """After the card (not the modem) resets, the modem still holds the card's UDP link, so
    AT+CIPOPEN answers "+CIPOPEN: 0,4" then ERROR (the simulated A7670 in the virtual card's
    reboot scenario): the driver closes the link and opens it again, instead of failing until
    the modem is power-cycled (the card then never sent another frame)."""
    ((udp, cmds),) = mpy_events(mpy, r'''
s = a7670_up({'AT+CIPOPEN=0,"UDP",,,50000': [b"\r\n+CIPOPEN: 0,4\r\n\r\nERROR\r\n",
                                             b"\r\nOK\r\n\r\n+CIPOPEN: 0,0\r\n"],
              "AT+CIPCLOSE=0": b"\r\nOK\r\n\r\n+CIPCLOSE: 0,0\r\n"})
s.take()
s.m.data.udp_open("1.2.3.4", 5000)
s.run(500)
show(([e for e in s.take() if e[0] == "udp"], [c for c in s.cmds() if c.startswith(("AT+CIPOPEN", "AT+CIPCLOSE"))]))
''')
    assert udp == [("udp", "open", None)]
    assert cmds == ['AT+CIPOPEN=0,"UDP",,,50000', "AT+CIPCLOSE=0", 'AT+CIPOPEN=0,"UDP",,,50000']
