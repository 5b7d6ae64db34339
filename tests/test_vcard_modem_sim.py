"""The simulated A7670 (tools/vcard/modem_sim.py): checked against the captured transcripts in
../shared/data/at/, driven over a real pty by an AT client written by others (python-gsmmodem-new)
and by the card's own driver (firmware/lib/modem.py) on the MicroPython unix port, with its UDP
bridged to a real socket on 127.0.0.1."""

from __future__ import annotations

import ast
import dataclasses
import io
import json
import os
import re
import socket
import subprocess
import threading
import time

import pytest

from carecard.tools import micropython
from carecard.tools.cardimage import micropython_path
from carecard.tools import fwlib
from carecard.tools.vcard.modem_sim import Callee, ModemSim, Timing
from carecard.tools.vcard.pty_modem import PtyModem

FAST = Timing(boot_ms=300, cpin_after_ms=20, pdn_after_ms=30, sms_done_after_ms=40,
              ims_pdn_after_ms=45, pb_done_after_ms=50, register_after_ms=20, sleep_entry_ms=200, netopen_ms=20,
              cipsend_ms=10, sms_send_ms=30, dial_alert_ms=50, early_media_ms=80,
              network_no_answer_s=3.0, unreachable_s=0.5, ring_period_ms=300)


def lines_of(out: bytes) -> list[str]:
    return [line for line in out.decode("latin-1").split("\r\n") if line]


class Session:
    """A ModemSim driven by hand in virtual time."""

    def __init__(self, **kw):
        self.ri = 0
        self.sim = ModemSim(on_ri=self._ri, **kw)
        self.now = 0

    def _ri(self, ms):
        self.ri += 1

    def run(self, ms):
        self.now += ms
        self.sim.advance(self.now)
        return lines_of(self.sim.take_output())

    def at(self, text, ms=0):
        self.sim.receive(text.encode() + b"\r", self.now)
        return lines_of(self.sim.take_output()) + (self.run(ms) if ms else [])


def booted(**kw) -> Session:
    s = Session(**kw)
    s.sim.power_key(100, 0)
    s.run(60_000)
    s.at("ATE0")
    return s


def test_boot_urcs_in_the_order_and_spacing_of_the_a7670e_capture(shared_data):
    capture = (shared_data / "at/issues/simcom_a7670e_boot_cgnsspwr_LilyGo-Modem-Series-299.txt").read_text()
    stamped = re.findall(r"^(\d\d):(\d\d):(\d\d)\.(\d{3}) -> (\S.*)$", capture, re.M)
    real = [(int(h) * 3600_000 + int(m) * 60_000 + int(s) * 1000 + int(ms), text)
            for h, m, s, ms, text in stamped if not text.startswith(("AT", "OK", "Serial", "Type", "ERROR", "+CGNSSPWR"))][:6]
    assert [t for _, t in real][:2] == ["*ATREADY: 1", "+CPIN: READY"]
    s = Session()
    s.sim.power_key(100, 0)
    seen = []
    for _ in range(400):
        for line in s.run(50):
            seen.append((s.now, line))
    assert [t for _, t in seen] == [t for _, t in real]
    # each URC within 1 s of the capture's offset from *ATREADY
    for (sim_ms, _), (real_ms, _) in zip(seen, real):
        assert abs((sim_ms - seen[0][0]) - (real_ms - real[0][0])) <= 1000
    # the UART does not answer before *ATREADY, and a command then is dropped, not queued
    s2 = Session()
    s2.sim.power_key(100, 0)
    assert s2.at("AT", 1000) == []


def test_identity_answers_have_the_captured_forms(shared_data):
    s = booted()
    capture = (shared_data / "at/issues/simcom_a7670e_simcomati_LilyGo-Modem-Series-337.txt").read_text()
    real = capture.split("\nat+simcomati\n", 1)[1].strip().splitlines()
    out = s.at("at+simcomati")
    # the same fields in the same order (values are this simulated modem's), then OK
    assert out[-1] == real[-1] == "OK"
    assert [line.split(":")[0] for line in out if ":" in line] == \
        [line.split(":")[0] for line in real if ":" in line]
    assert s.at("AT+CGSN") == ["862771076818015", "OK"]
    assert s.at("AT+CGMR") == ["+CGMR: A110B01A7670M7_F", "OK"]
    assert s.at("AT+CICCID") == ["+ICCID: 89860012345678901234", "OK"]
    assert s.at("AT+CGNSINF") == ["ERROR"]          # a SIM70x0 command: ERROR on A76xx (issue 299)


def test_voice_end_urcs_match_the_captures_and_ath_needs_cvhu(shared_data):
    s = booted(timing=FAST, callees={"10086": Callee("answers", ring_s=1, talk_s=0)}, seed=3)
    s.at("AT+CLCC=1")
    assert s.at("ATD10086;") == ["OK", '+CLCC: 1,0,2,0,0,"10086",129']
    out = s.run(3000)
    # ring-back: "connected" before anybody answered (the A7672SA notes' trap)
    assert out[:3] == ['+CLCC: 1,0,3,0,0,"10086",129', "VOICE CALL: BEGIN", '+CLCC: 1,0,0,0,0,"10086",129']
    assert s.at("ATH", 1000) == ["OK"]                # AT+CVHU=1 (default): the call goes on
    assert s.sim.call is not None
    s.at("AT+CVHU=0")
    s.run(14_000)
    ended = s.at("ATH")
    assert ended[0] == "OK" and ended[1] == '+CLCC: 1,0,6,0,0,"10086",129'
    end = ended[-1]
    capture = (shared_data / "at/issues/simcom_sim7600g_voice_call_end_T-SIM7600X-65.txt").read_text()
    assert re.search(r"^VOICE CALL: END: \d{6}$", capture, re.M)
    assert re.fullmatch(r"VOICE CALL: ?END: ?0000(1[5-9]|2\d)", end), end
    # both spellings of the end URC appear over many calls (seeded)
    spellings = set()
    for _ in range(12):
        s.at("ATD10086;", 2000)
        spellings.add(s.at("AT+CHUP")[-1].split("END")[0])
    assert spellings == {"VOICE CALL: ", "VOICE CALL:"}


def test_udp_open_send_and_receive_forms():
    sent = []
    s = booted(timing=FAST, on_udp_send=lambda h, p, b: sent.append((h, p, b)))
    s.at("AT+CIPSRIP=1")
    assert s.at("AT+NETOPEN", 100) == ["OK", "+NETOPEN: 0"]
    assert s.at("AT+NETOPEN") == ["+IP ERROR: Network is already opened", "ERROR"]
    assert s.at('AT+CIPOPEN=0,"UDP",,,50000') == ["OK", "+CIPOPEN: 0,0"]
    assert s.at('AT+CIPSEND=0,5,"127.0.0.1",4000') == ["> "]
    s.sim.receive(b"a\r\nbc", s.now)
    assert lines_of(s.sim.take_output()) == ["OK"]
    assert s.run(100) == ["+CIPSEND: 0,5,5"] and sent == [("127.0.0.1", 4000, b"a\r\nbc")]
    s.sim.deliver_udp("127.0.0.1", 4000, b"\x00ack", s.now)
    assert s.sim.take_output() == b"\r\nRECV FROM:127.0.0.1:4000\r\n+IPD4\r\n\x00ack"
    # coverage lost: the PDN drops (URC of the A7672SA notes), registration says searching
    s.at("AT+CREG=1")
    s.sim.set_coverage(False, s.now)
    assert lines_of(s.sim.take_output()) == ["+CGEV: NW PDN DEACT 1", "+CREG: 2"]
    assert s.at('AT+CIPSEND=0,5,"127.0.0.1",4000') == ["ERROR"]
    s.sim.set_coverage(True, s.now)
    assert s.run(1000) == ["+CREG: 1"]


def test_sleep_needs_csclk_dtr_and_an_idle_uart_and_holds_urcs_until_dtr_low():
    s = booted(timing=FAST)
    s.at("AT+CNMI=2,1,0,0,0")
    s.sim.set_dtr(1, s.now)
    s.run(1000)
    assert s.sim.power_state == "idle"          # DTR high alone: no sleep without AT+CSCLK=1
    s.at("AT+CSCLK=1")
    s.run(1000)
    assert s.sim.power_state == "sleep"
    assert s.at("AT", 100) == []                # asleep: the UART is off
    ri = s.ri
    s.sim.incoming_sms("+8613800000001", "定位", s.now)
    assert s.sim.take_output() == b"" and s.ri == ri + 1
    s.sim.set_dtr(0, s.now)
    assert s.run(100) == ['+CMTI: "SM",0']
    assert s.sim.power_state == "idle"


def test_incoming_sms_pdu_decodes_with_the_firmware_and_with_smspdudecoder():
    s = booted(timing=FAST)
    s.at("AT+CNMI=2,1,0,0,0")
    s.sim.incoming_sms("+8613800000001", "位置 WHERE", s.now)
    assert lines_of(s.sim.take_output()) == ['+CMTI: "SM",0']
    out = s.at("AT+CMGR=0")
    header, pdu, final = out
    assert header.startswith("+CMGR: 0,,") and final == "OK"
    msg = fwlib.smspdu().decode(pdu)
    assert msg.text == "位置 WHERE" and msg.number == "+8613800000001"
    from smspdudecoder.fields import SMSDeliver

    decoded = SMSDeliver.decode(io.StringIO(pdu))
    assert decoded["sender"]["number"] == "8613800000001"
    assert decoded["user_data"]["data"] == "位置 WHERE"


def test_what_comes_before_at_on_a_line_is_discarded():
    # the card's AT engine writes ESC after a prompt timed out; a modem in command mode ignores it
    s = booted()
    s.sim.receive(b"\x1bAT+CSQ\r", s.now)
    assert lines_of(s.sim.take_output()) == ["+CSQ: 20,99", "OK"]


def test_a_hung_modem_answers_nothing_until_its_power_is_cut():
    s = booted(timing=FAST)
    s.sim.hang(s.now)
    assert s.at("AT", 2000) == []
    s.sim.power_key(3000, s.now)                 # PWRKEY off is ignored by a hung modem
    assert s.run(5000) == []
    s.sim.power_cut(s.now)
    s.sim.power_key(100, s.now)
    assert s.run(1000)[0] == "*ATREADY: 1"
    assert s.at("AT") == ["AT\r", "OK"]          # echo is on again after a restart


# ---- a real AT client written by others: python-gsmmodem-new --------------------------------

def test_python_gsmmodem_reads_identity_sends_sms_places_and_takes_calls():
    from gsmmodem.modem import GsmModem

    received = []
    rang = []
    # python-gsmmodem polls AT+CLCC every 0.5 s for a SIMCom modem: the call stays dialling and
    # alerting long enough for it to see
    timing = dataclasses.replace(FAST, dial_alert_ms=700, early_media_ms=1400)
    with PtyModem(powered=True, timing=timing, seed=1,
                  callees={"+8613911112222": Callee("confirms", ring_s=1.5, key_after_s=0.2, talk_s=0)}) as pm:
        modem = GsmModem(pm.port, 115200, smsReceivedCallbackFunc=received.append,
                         incomingCallCallbackFunc=rang.append)
        modem.connect()
        try:
            assert (modem.imei, modem.manufacturer, modem.model) == (
                "862771076818015", "SIMCOM INCORPORATED", "A7670E-FASE")
            assert modem.imsi == "460001234567890"
            modem.waitForNetworkCoverage(10)
            modem.sendSms("+8613911112222", "孩子们好 ok")
            assert len(pm.sim.sent_sms) == 1
            pdu = pm.sim.sent_sms[0].pdu_hex
            submit = fwlib.smspdu().decode(pdu)   # python-gsmmodem's PDU, empty SMSC part
            assert (submit.number, submit.text) == ("+8613911112222", "孩子们好 ok")
            call = modem.dial("+8613911112222")
            for _ in range(100):
                if any(b"+RXDTMF: 1" in d for _, way, d in pm.sim.transcript if way == "out"):
                    break
                time.sleep(0.05)
            call.hangup()                            # ATH, after the client's AT+CVHU=0
            for _ in range(100):
                if pm.sim.call is None:
                    break
                time.sleep(0.05)
            assert pm.sim.call is None
            wrote = b"".join(d for _, way, d in pm.sim.transcript if way == "in")
            assert b"ATD+8613911112222;\r" in wrote and b"ATH\r" in wrote
            # incoming: an SMS (our SMS-DELIVER, read and decoded by python-gsmmodem) and a call
            pm.control(lambda sim: sim.incoming_sms("+8613800000001", "定位"))
            pm.control(lambda sim: sim.incoming_call("+8613800000002", ring_for_s=2))
            for _ in range(100):
                if received and rang:
                    break
                time.sleep(0.05)
            assert received and received[0].text == "定位" and received[0].number == "+8613800000001"
            assert rang and rang[0].number == "+8613800000002"
        finally:
            modem.close()


# ---- the card's own driver on MicroPython, over the pty --------------------------------------

DRIVER_LOOP = r'''
import select, sys, time, hwdata, modem, modem_a7670, smspdu
fd = FD
uart = open(fd, "r+b")
poll = select.poll()
poll.register(uart, select.POLLIN)
buf = bytearray(512)
m = modem.Modem(modem_a7670.A7670(), hwdata.load("modem_a7670"), apn="cmnet", ring_timeout_ms=4000)
def out(*v):
    print(repr(v))
def control(*v):
    print("CTL " + " ".join(str(x) for x in v))
m.power_on(time.ticks_ms())
plan = [("udp",), ("send", b"\x00hello\r\n"), ("dial", "+8613911112222"), ("dial", "+8613900000000"), ("end",)]
step = None
deadline = time.ticks_add(time.ticks_ms(), 30000)
while time.ticks_diff(deadline, time.ticks_ms()) > 0:
    for _ in poll.poll(20):
        n = uart.readinto(buf)
        if n:
            m.receive_data(bytes(buf[:n]))
    m.tick(time.ticks_ms())
    while True:
        a = m.next_action()
        if a is None:
            break
        if a[0] == "write":
            uart.write(a[1])
        else:
            control(*a)
    while True:
        e = m.next_event()
        if e is None:
            break
        if e[0] in ("ready", "net", "udp", "udp_sent", "udp_recv", "call_end", "dtmf", "time", "sms", "modem_reboot"):
            if e[0] == "sms":
                msg = smspdu.decode(e[4])
                e = ("sms", msg.number, msg.text)
            out(*e)
        if e[0] in ("ready", "udp", "udp_recv", "call_end"):
            step = None
    if step is None and m.state == "ready" and plan:
        step = plan.pop(0)
        if step[0] == "udp":
            m.data.udp_open("127.0.0.1", PORT)
        elif step[0] == "send":
            m.data.udp_send(step[1])
        elif step[0] == "dial":
            m.voice.dial(step[1])
        elif step[0] == "end":
            control("sms")
            step = ("wait",)
'''


def test_card_driver_on_micropython_over_the_pty(mpy):
    server = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    server.bind(("127.0.0.1", 0))
    server.settimeout(20)
    got = []

    def echo() -> None:
        data, addr = server.recvfrom(2048)
        got.append((data, addr))
        server.sendto(b"ack:" + data, addr)

    responder = threading.Thread(target=echo, daemon=True)
    responder.start()
    callees = {"+8613911112222": Callee("confirms", ring_s=0.3, key_after_s=0.3, talk_s=1),
               "+8613900000000": Callee("unreachable")}
    with PtyModem(timing=FAST, callees=callees, seed=2) as pm:
        fd = os.open(pm.port, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
        script = DRIVER_LOOP.replace("FD", str(fd)).replace("PORT", str(server.getsockname()[1]))
        env = dict(os.environ, MICROPYPATH=micropython_path(micropython.card_image()))
        proc = subprocess.Popen([micropython.micropython_executable(), "-c", script],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, pass_fds=(fd,),
                                env=env, text=True)
        os.close(fd)
        events = []
        try:
            for line in proc.stdout:
                line = line.strip()
                if line.startswith("CTL "):
                    words = line[4:].split()
                    if words[0] == "pwrkey":
                        pm.control(lambda sim: sim.power_key(int(words[1])))
                    elif words[0] == "dtr":
                        pm.control(lambda sim: sim.set_dtr(int(words[1])))
                    elif words[0] == "sms":
                        pm.control(lambda sim: sim.incoming_sms("+8613800000001", "位置"))
                    continue
                events.append(ast.literal_eval(line))
                if events[-1][0] == "sms":
                    break
        finally:
            proc.kill()
            proc.wait()
            server.close()
        stderr = proc.stderr.read()
    assert not stderr or "Traceback" not in stderr, stderr
    kinds = [e[0] for e in events]
    assert kinds[0] == "ready" or "ready" in kinds
    assert ("udp", "open", None) in events
    assert got and got[0][0] == b"\x00hello\r\n"
    recv = [e for e in events if e[0] == "udp_recv"]
    assert recv and recv[0][1] == b"ack:\x00hello\r\n" and recv[0][2].startswith("127.0.0.1:")
    ends = [e for e in events if e[0] == "call_end"]
    assert ends[0][1] == "confirmed"
    # the unreachable number's announcement came as "VOICE CALL: BEGIN" (early media): the
    # driver did not take it as answered
    assert ends[1][1] in ("rejected", "no_answer")
    assert ("sms", "+8613800000001", "位置") in events
    assert any(e[0] == "time" and e[1] for e in events)


def test_the_radio_leaves_tx_when_its_transmission_ends_on_a_clock_driven_by_next_deadline():
    # a virtual clock only stops at the simulator's deadlines: the end of a transmission must be
    # one, or TX is charged (at ~600 mA) until whatever happens next
    powers = []
    s = booted(timing=FAST, on_power=lambda state, ms: powers.append((state, ms)))
    s.at("AT+NETOPEN", 100)
    s.at('AT+CIPOPEN=0,"UDP",,,50000')
    s.at('AT+CIPSEND=0,2,"127.0.0.1",4000')
    sent_at = s.now
    s.sim.receive(b"hi", s.now)
    while True:
        deadline = s.sim.next_deadline()
        if deadline is None or deadline > sent_at + 600_000:
            break
        s.now = deadline
        s.sim.advance(deadline)
    tx = [ms for state, ms in powers if state == "tx"]
    assert tx == [sent_at]
    after = [(state, ms) for state, ms in powers if ms > sent_at]
    assert after and after[0] == ("idle", sent_at + FAST.tx_ms)
