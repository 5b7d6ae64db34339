"""Every AT capture in ../shared/data/at/ replayed through the firmware's parser on MicroPython.

The captures become UART bytes with carecard.tools.bench.at.load_captures (host-side artefacts
removed, modem text kept); commands found in them are submitted as the host did. Per capture the
events that must come out are asserted; over all of them, nothing crashes and every line is
accounted for (response, URC, echo, unknown or typed error)."""

from __future__ import annotations

import ast
from collections import Counter

import pytest

from carecard.tools.bench.at import REPLAY_CODE, URCS_CODE, load_captures

SCRIPT = URCS_CODE + REPLAY_CODE + r'''
for i, path in enumerate(PATHS):
    print("=== %d" % i)
    e = replay_lines(file_lines(path), lambda ev: print(repr(plain(ev))))
    st = e.stats
    print(repr(("stats", st["lines"], st["urc"], st["unknown"], st["echo"], st["done"])))
'''


@pytest.fixture(scope="module")
def replayed(shared_data, mpy, tmp_path_factory):
    captures = load_captures(shared_data)
    folder = tmp_path_factory.mktemp("at-captures")
    paths = []
    for i, (_, data) in enumerate(captures):
        path = folder / f"{i:03d}.txt"
        path.write_bytes(data)
        paths.append(str(path))
    out = mpy.run(f"PATHS = {paths!r}\n" + SCRIPT)
    result: dict[str, list[tuple]] = {}
    current = None
    for line in out.splitlines():
        if line.startswith("=== "):
            current = captures[int(line[4:])][0]
            result[current] = []
        else:
            ev = ast.literal_eval(line)
            if ev[0] == "done":   # the response text as its lines, for the checks below
                ev = ev[:3] + (ev[3].split("\n") if ev[3] else [],) + ev[4:]
            result[current].append(ev)
    assert len(result) == len(captures)
    return result


def _urcs(events, name=None):
    return [(e[1], e[2]) for e in events if e[0] == "urc" and (name is None or e[1] == name)]


def _done(events, text):
    return [e for e in events if e[0] == "done" and e[1] == text]


def _one(replayed, fragment):
    names = [name for name in replayed if fragment in name]
    assert len(names) == 1, (fragment, names)
    return replayed[names[0]]


def test_every_relevant_capture_is_replayed(replayed):
    groups = Counter(name.split("/")[0] for name in replayed)
    assert groups["lilygo-t-a76xx"] == 3
    assert groups["issues"] == 15
    assert groups["python-gsmmodem"] == 2
    assert groups["gammu"] == 100
    assert groups["unattributed"] == 1


def test_every_line_is_accounted_for(replayed):
    total = Counter()
    for name, events in replayed.items():
        stats = events[-1]
        assert stats[0] == "stats", name
        lines, urc, unknown, echo, done = stats[1:]
        kinds = Counter(e[0] for e in events[:-1])
        # nothing vanished: each URC / unknown line / finished command surfaced as an event
        assert kinds["urc"] == urc and kinds["unknown"] == unknown and kinds["done"] == done, name
        total.update(kinds)
    assert total["done"] > 300 and total["urc"] > 50 and total["unknown"] > 20


def test_a7670_boot_gnss_and_text_sms(replayed):
    ev = _one(replayed, "a76xx_SendLocationFromSMS")
    urcs = _urcs(ev)
    for expected in [("*ATREADY", "1"), ("+CPIN", "READY"), ("+CGEV", "EPS PDN ACT 1"),
                     ("+CGEV", "ME PDN ACT 8,1"), ("SMS DONE", ""), ("+CGNSSPWR", "READY!")]:
        assert expected in urcs
    assert _done(ev, "AT+CGREG?")[0][2:4] == ("OK", ["+CGREG: 0,1"])
    gnss = _done(ev, "AT+CGNSSINFO")
    assert len(gnss) > 20
    assert sum(1 for d in gnss if d[3] == ["+CGNSSINFO: ,,,,,,,,"]) >= 20
    assert any(d[3] == ["+CGNSSINFO: 3,09,,03,00,22.6550274,N,114.0600586,E,230824,063956.00,"
                        "83.9,0.000,,10.83,10.01,4.13,0"] for d in gnss)
    cmgs = _done(ev, 'AT+CMGS="+86xxxxxxxxxxxxx"')
    assert cmgs and cmgs[0][2] == "OK" and "+CMGS: 222" in cmgs[0][3]
    unknown = [e[1] for e in ev if e[0] == "unknown"]
    assert "Start modem..." in unknown and "FixMode:3" in unknown


def test_a7670_cme_error_before_sim_ready_and_netopen(replayed):
    ev = _one(replayed, "a76xx_MqttsAzure")
    assert _done(ev, "AT+CPIN?")[0][2:5] == ("CME", [], 13)
    assert ("+CPIN", "READY") in _urcs(ev)
    assert _done(ev, "AT+CEREG?")[0][3] == ["+CEREG: 0,1"]
    assert _done(ev, "AT+IPADDR")[0][3] == ["+IPADDR: 10.4.112.219"]
    assert ("+CMQTTSTART", "0") in _urcs(ev)
    # the +NETOPEN URC glued to the next echo by the log is still recognised as +NETOPEN
    assert any(name == "+NETOPEN" for name, _ in _urcs(ev))


def test_a7670_boot_urcs_and_error_reply(replayed):
    ev = _one(replayed, "a7670e_boot_cgnsspwr")
    assert [u for u in _urcs(ev)] == [("*ATREADY", "1"), ("+CPIN", "READY"), ("+CGEV", "EPS PDN ACT 1"),
                                      ("SMS DONE", ""), ("+CGEV", "ME PDN ACT 8,1"), ("PB DONE", ""),
                                      ("+CGNSSPWR", "READY!")]
    assert [d[2] for d in _done(ev, "AT+CGNSINF")] == ["ERROR", "ERROR", "ERROR"]
    simcomati = _done(ev, "AT+SIMCOMATI")[0]
    assert "Model: A7670E-FASE" in simcomati[3] and "IMEI: 862771076818015" in simcomati[3]


def test_sim_removed_and_gnss_fix_in_response(replayed):
    ev = _one(replayed, "a7670e_cgnssinfo_nofix_then_fix")
    assert ("+CPIN", "SIM REMOVED") in _urcs(ev)
    ati = _done(ev, "ATI")[0]
    assert "Model: A7670E-FASE" in ati[3] and "+GCAP: +CGSM,+FCLASS,+DS" in ati[3]
    lines = [line for d in _done(ev, "AT+CGNSSINFO") for line in d[3]]
    assert lines.count("+CGNSSINFO: ,,,,,,,,") == 3
    assert ("+CGNSSINFO: 3,15,,05,00,xx.xxxxx778,N,xxxx.xxxxx9518,E,180425,072255.00,169.9,0.379,,"
            "10.40,6.39,8.20,0") in lines


def test_sms_read_text_and_pdu_mode(replayed):
    ev = _one(replayed, "cmgrd_text_vs_pdu")
    reads = _done(ev, "AT+CMGRD=1")
    assert reads[0][3][:2] == ['+CMGRD: "REC UNREAD","+34626704066","","25/04/27,13:44:52+8"', "1234 estado"]
    assert reads[1][3][:2] == ['+CMGRD: 0,"",30',
                               "07914346220050F0040B914326764060F60000524072319385800C31D98C062ACFE961F21B04"]
    assert ("+CMTI", ",-1") in _urcs(_one(replayed, "cmti_no_storage"))


def test_voice_call_end_urcs_both_spellings(replayed):
    ev = _one(replayed, "sim7600g_voice_call_end")
    assert _done(ev, "AT+CVHU=0")[0][2] == "OK"
    assert ("VOICE CALL", "END: 000017") in _urcs(ev)
    assert _done(ev, "ATH")[0][2:4] == ("OK", [])
    ua = replayed["unattributed/simcom_a7672sa_claro_call_traces.txt"]
    urcs = _urcs(ua)
    assert ("VOICE CALL", "BEGIN") in urcs and ("VOICE CALL", "END: 000004") in urcs
    assert ("NO CARRIER", "") in urcs and ("+CEER", '"16 Normal call clearing"') in urcs
    assert ("+CIREG", "2,1,15") in urcs and ("+CGEV", "NW PDN DEACT 1") in urcs
    assert ("+CREG", "0,0") in urcs
    assert _done(ua, "AT+CLCC")[0][3] == ['+CLCC: 1,0,0,0,0,"+5491168619589",145']
    # the verbose +CMS ERROR text (here it lands on the ATH the notes show before it)
    assert any(e[0] == "done" and e[2] == "CMS" and e[4] == "Network timeout" for e in ua)
    ring = replayed["python-gsmmodem/test_modem_captured_snippets.txt"]
    assert ("RING", "") in _urcs(ring) and ("+CRING", "VOICE") in _urcs(ring)
    assert ("+CLIP", '"+27821231234",145,,,,0') in _urcs(ring)
    assert ("+CUSD", '2,"Initiating Release",15') in _urcs(ring)  # issue #14: before the OK


def test_sim7600_session_cmti_and_missing_ok(replayed):
    ev = _one(replayed, "session_cmti_netopen_error")
    assert ("+CMTI", '"SM",4') in _urcs(ev)
    assert _done(ev, "at+csq")[0][3] == ["+CSQ: 31,99"]
    assert _done(ev, "at+creg?")[0][3] == ["+CREG: 0,1"]
    assert len(_done(ev, "at+cgdcont?")[0][3]) == 4
    assert _done(ev, "at+cgact=?")[0][2:4] == ("TIMEOUT", ["+CGACT: (0,1)"])  # no OK was pasted
    assert [d[2] for d in _done(ev, "at+netopen")] == ["ERROR", "ERROR"]
    assert any(n == "+CPING" for n, _ in _urcs(ev))
    cdns = _done(ev, 'at+cdnsgip="google.com"')[0]
    assert cdns[2:4] == ("ERROR", ["+CDNSGIP: 0,10"])


def test_udp_open_error_and_creg_states(replayed):
    ev = _one(replayed, "udp_cipopen_error")
    assert _done(ev, "AT+CGREG?")[0][3] == ["+CGREG: 0,5"]
    assert ("+NETOPEN", "0") in _urcs(ev)
    assert _done(ev, 'AT+CIPOPEN=1,"UDP","XX.XX.XX.XX",12345')[0][2:4] == ("ERROR", ["+CIPOPEN: 1,3"])
    creg = {name: _done(events, "AT+CREG?")[0][3] for name, events in replayed.items()
            if name.startswith("gammu/at-creg")}
    assert creg["gammu/at-creg/sierra312u.dump"] == ['+CREG: 2,5,"2AF5","0B88E350",2']
    assert creg["gammu/at-creg/none.dump"] == ["+CREG: 0,0"]
    assert creg["gammu/at-creg/empty.dump"] == []
    assert creg["gammu/at-creg-corner/mismatched-quotes.dump"] == ['+CREG: 2,1,"0B,"0100701",7']


def test_quectel_chained_command_out_of_order(replayed):
    ev = _one(replayed, "ec200a_multicommand")
    done = _done(ev, "AT+CPIN?;+CSQ;+COPS=3,0;+COPS?;+COPS=3,2;+COPS?;+CREG=2;+CREG?")[0]
    assert done[2] == "OK"
    assert done[3] == ["+CSQ: 17,99", '+CREG: 2,1,"00A8","5355E8D",7', "+CPIN: READY",
                       '+COPS: 0,0,"NOS",7', '+COPS: 0,2,"26803",7']
    q = _one(replayed, "ec200t_qeng")
    assert _done(q, "AT+QTEMP")[0][3] == ["+QTEMP: 38,255,255"]


def test_gammu_cmgr_dumps_give_header_and_pdu(replayed):
    sms = {n: e for n, e in replayed.items() if n.startswith(("gammu/at-sms/", "gammu/at-sms-failing/"))}
    assert len(sms) == 46  # 36 readable + 10 that a PDU decoder must reject
    for name, events in sms.items():
        reads = [e for e in events if e[0] == "done" and e[1].upper().startswith("AT+CMGR")]
        assert reads and reads[0][2] == "OK", name
        assert reads[0][3][0].startswith("+CMGR:"), name
    assert _done(replayed["gammu/at-sms/02.dump"], "AT+CMGR=1")[0][3] == [
        "+CMGR: 3,,29", "0791361907001003B17A0C913619397750320000AD11CD701E340FB3C3F23CC81D0689C3BF"]
    text = _done(replayed["gammu/at-sms-txt/timezone.dump"], "AT+CMGR=3")[0]
    assert text[3] == ['+CMGR: "REC READ","+31625044454",,"07/07/05,09:56:03+08"', "Test message 2"]
    ussd = _urcs(replayed["gammu/at-ussd/Uissue358-Quectel_M35.dump"], "+CUSD")
    assert len(ussd) == 1 and ussd[0][1].startswith('2,"0048006100760069') and len(ussd[0][1]) > 500


def test_python_gsmmodem_transcripts(replayed):
    ev = replayed["python-gsmmodem/fakemodems_transcripts.txt"]
    assert ("done", "AT+CGMI", "OK", ["huawei"], None) in ev
    assert ("done", "AT+WIND?", "COMMAND NOT SUPPORT", [], None) in ev
    # Wavecom: +CPIN reply without OK ends in a timeout, with the reply kept
    assert any(e[0] == "done" and e[1] == "AT+CPIN?" and e[2] == "TIMEOUT" and e[3] == ["+CPIN: READY"]
               for e in ev)
    # +CLAC lists longer than a line buffer / response budget give typed errors, not crashes
    errors = Counter(e[1] for e in ev if e[0] == "error")
    assert errors["too_long"] >= 1 and errors["response_too_long"] >= 1
