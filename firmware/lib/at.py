# AT command engine: a sans-I/O line parser and a one-in-flight command queue.
#
# Bytes from the modem UART go in with `receive_data(data)`, the clock (milliseconds, any
# monotonic or ticks_ms-style wrapping counter) with `tick(now_ms)`; bytes to write come out of
# `data_to_send()` and parsed results out of `next_event()`. Nothing here touches a UART.
#
# Events (tuples, first item is the kind):
#   ("done", cmd, status, text, err)  a command finished. status is the final result code as
#       received ("OK", "ERROR", "NO CARRIER", "BUSY", "NO ANSWER", "NO DIALTONE", "CONNECT",
#       "SEND OK", "SEND FAIL") or "CME" / "CMS" (err = the error number, or its text when the
#       modem sends verbose errors) or "TIMEOUT" (after the retries) or "ABORTED" (by abort()).
#       text: the information text lines that belonged to the command, as one str with "\n"
#       between lines ("" when there were none; text.split("\n") gives the lines).
#   ("urc", name, args, body)  a known unsolicited result code: name is the text before the
#       first ':' ("+CREG", "VOICE CALL", "RING"), args the rest, stripped; body is the line that
#       follows for two-line URCs (+CMT, +CDS), else None.
#   ("unknown", line)  a line that is neither a response nor a known URC: reported, not dropped.
#   ("data", header, payload)  raw bytes announced by a header line (+IPD, +RECEIVE, +QIURC
#       "recv", +QIRD, +CIPRXGET: 2): payload is exactly the announced number of bytes.
#   ("stray", line)  a final result code with no command in flight.
#   ("error", exc)  hostile input: exc is an ATError whose `kind` is "too_long", "binary",
#       "data_too_long", "response_too_long" or "cut", the stats counter it is counted in; the
#       parser carries on.
#
# Echo: a line equal to the command in flight, before any line of its response, is that
# command's echo (ATE1, or before ATE0 takes effect) and is dropped; any other line, whatever it
# starts with ("At home" in an SMS text), is parsed as what it is.
# Input cut short: when a line, raw data announced by a header, or the body of a two-line URC
# stops arriving (a modem that reboots mid-transfer) and no byte comes between two ticks
# _STALE_MS apart, what was received is dropped as "cut", so the next lines (RDY, an OK) are
# read as lines, not as the rest of the cut data.
# Prompt: the "> " prompt is recognised after noise bytes (0x00, 0xFF); when a command that waits
# for it times out without it, ESC (0x1B) is written first (the modem may be waiting for the text
# and would take the next command as that), and the command stays in flight until the modem's
# answer to the ESC (or _ESC_GUARD_MS) and the next tick, so that answer ends it ("TIMEOUT"),
# not the command after it.
#
# receive_data() never raises: every byte sequence is either parsed or reported as an error
# event. Misuse of the API (queue full, bad command, bad URC table) raises ATError (kind
# "queue_full" or "command") or ValueError.
#
# Memory (a card has tens of KB of heap, and every name in a loaded module is a qstr that stays
# on the heap): the URC names are one bytes table, b"\nNAME\nNAME\n", searched with find (no
# dict, no per-name objects; a profile passes its table as such, a sequence of names is joined
# into one), behind a 64-byte filter of the names' hashes that turns most other lines away
# without a search; one buffer, allocated once, holds the line being received (or, once its
# header line has been taken out, the raw data it announces) and, in a region of its own, the
# response of the command in flight as text (one str made of it when the command ends, not a
# str per line); lines become str once, when they are complete, and are classified by their
# bytes; final result codes are bytes tables too (a tuple of str costs an object per name); no
# str is indexed or iterated character by character (that interns each character); byte values
# are written as numbers (a public const name is a qstr too); the constructor's arguments are
# kept under their own names (one qstr for both); the parser's own state is one list indexed by
# private constants (no attribute name, no attribute table slot per item); every function costs
# about 100 bytes once loaded, so line classification lives inside receive_data. Sizes: see
# ATEngine (max_line, max_data, max_response).

from micropython import const

# the parser's state, ATEngine._s: indices
_LEN = const(0)         # bytes of the line being received (max_line + 1: it overflowed), or of
                        # the raw data read so far
_RAW = const(1)         # bytes of raw data announced by a header line (0: none being read)
_SKIP_LF = const(2)     # 1: a CR ended the last line at the end of a chunk, swallow one LF
_PROMPT = const(3)      # 1: the command in flight waits for the "> " prompt
_DEADLINE = const(4)    # when the command in flight times out
_RLEN = const(5)        # bytes of its response text (lines, a "\n" between them)
_RCOUNT = const(6)      # its response lines (max_lines + 1 once cut)
_HEADER = const(7)      # the header line of the raw data being read
_BODY_FOR = const(8)    # (name, args) of a two-line URC waiting for its body
_FED = const(9)         # 1: bytes came in since the last tick
_FED_AT = const(10)     # the tick that last saw bytes come in

# _PROMPT values: the command in flight waits for the prompt; it timed out waiting and ESC went
_WAIT_PROMPT = const(1)
_ESCAPED = const(2)

_STALE_MS = const(1000)      # silence in the middle of input that makes it "cut" (at 9600 baud a
                             # 512-byte datagram takes 0.53 s; a booting modem is silent ~11 s)
_ESC_GUARD_MS = const(500)   # how long the modem's answer to an ESC is waited for


class ATError(Exception):
    """Every error raised or reported by the AT engine; `kind` tells which (one class, not one
    per kind: each class costs heap on a card). Raised on misuse: "queue_full" (send() while the
    queue is full), "command" (a command that cannot be sent: empty, or holds CR/LF). Reported as
    ("error", exc), never raised, for hostile or broken input from the modem, with kind the name
    of its counter in ATEngine.stats: "too_long" (a line longer than max_line), "binary" (not
    text, or NUL bytes), "data_too_long" (raw data announced beyond max_data),
    "response_too_long" (a response over max_lines lines or max_response bytes), "cut" (a
    line, raw data or a two-line URC's body that stopped arriving: see the module comment)."""


def ticks_diff(a, b):
    """a - b for millisecond counters that may wrap at 2**30 (ticks_ms) or never wrap."""
    # 0x3FFFFFFF: the ticks_ms period on MicroPython ports (2**30) minus one; 0x20000000: half.
    # For ticks_ms values only small-int arithmetic: 2**30 itself is no small int on a 32-bit
    # card, and arithmetic on one allocates (this runs at every tick).
    if 0 <= a <= 0x3FFFFFFF and 0 <= b <= 0x3FFFFFFF:
        d = a - b
        if d >= 0x20000000:
            d -= 0x20000000
            d -= 0x20000000
        elif d < -0x20000000:
            d += 0x20000000
            d += 0x20000000
        return d
    return ((a - b + 0x20000000) & 0x3FFFFFFF) - 0x20000000


def ticks_add(t, delta):
    """The ticks_ms value `delta` (0 <= delta < 2**29) milliseconds after `t`, wrapped at 2**30
    as ticks_ms wraps (a deadline stays a small int on a 32-bit card: see ticks_diff)."""
    if 0 <= t <= 0x3FFFFFFF:
        if t > 0x3FFFFFFF - delta:
            t -= 0x20000000
            t -= 0x20000000
        return t + delta
    return (t + delta) & 0x3FFFFFFF


def raw_length(line):
    """Bytes of raw data announced by a header line, or -1 when `line` is no such header.

    SIMCom A76xx/SIM7600: "+IPD<n>", "+RECEIVE,<link>,<n>", "+CIPRXGET: 2,<link>,<n>,<rest>".
    Quectel EC800M/EC200: '+QIURC: "recv",<id>,<n>[,ip,port]', "+QIRD: <n>[,ip,port]".
    """
    n = -1
    try:
        if line.startswith("+IPD"):
            n = int(line[4:])
        elif line.startswith("+QIRD: "):
            n = int(line[7:].split(",")[0])
            if n <= 0:   # "+QIRD: 0": nothing left to read
                n = -1
        elif (line.startswith("+RECEIVE,") or line.startswith("+CIPRXGET: 2,")
                or line.startswith('+QIURC: "recv",')):
            n = int(line.split(",")[2])
    except (ValueError, IndexError):   # not a number, or no such item: no header
        pass
    return n


def _table(names):
    # the b"\nNAME\nNAME\n" table of a sequence of names, or of a table given as str or bytes
    if isinstance(names, str):
        names = names.encode()
    elif not isinstance(names, bytes):
        names = ("\n" + "\n".join(names) + "\n").encode()
    if not (names.startswith(b"\n") and names.endswith(b"\n")):
        raise ValueError("bad URC table: want names or b\"\\nNAME\\nNAME\\n\"")
    return names


def _has(table, name):
    # name (bytes) is one whole entry of the table (not a part of a longer name); bytes, so that
    # find gives byte offsets and table[i] a number (no character indexing)
    n = len(name)
    pos = table.find(name, 1)
    while pos > 0:
        if table[pos - 1] == 10 and table[pos + n] == 10:
            return True
        pos = table.find(name, pos + 1)
    return False


class Command:
    """One AT command. `text` without the trailing CR ("AT+CSQ").

    prefix: the information-text prefix(es) of its response ("+CSQ", or a tuple); lines with
        that prefix are the response even when the same name is also a known URC. With
        strict=True (the default when a prefix is given) a foreign "+NAME:" line arriving during
        the command is reported as a URC (known or unknown) instead of being swallowed.
    payload: bytes written after the modem's "> " prompt (SMS PDU + Ctrl-Z, socket data).
    retries: how many times the command is re-sent after a timeout before "TIMEOUT".
    tag: anything; handed back in the "done" event through `cmd.tag`.
    """

    def __init__(self, text, prefix=None, timeout_ms=5000, retries=0,
                 payload=None, tag=None, strict=None):
        if not text or "\r" in text or "\n" in text:
            exc = ATError("AT command %r is empty or holds CR/LF" % (text,))
            exc.kind = "command"
            raise exc
        self.text = text
        if prefix is None:
            prefix = ()
        elif not isinstance(prefix, tuple):
            prefix = (prefix,)
        self.prefixes = prefix
        self.strict = bool(prefix) if strict is None else strict
        self.timeout_ms = timeout_ms
        self.retries = retries
        self.payload = payload
        self.tag = tag
        self.dial = text[:3].upper() == "ATD" or text.upper() == "ATA"
        self.attempts = 0

    def __repr__(self):
        return "Command(%r)" % (self.text,)


def prefixes_of(text):
    """Response prefixes of a command line as typed ("AT+CPIN?;+CSQ" -> ("+CPIN", "+CSQ"))."""
    items = []
    if text[:2].upper() == "AT":
        text = text[2:]
    for name in text.split(";"):
        if name.startswith("+"):
            end = len(name)
            for stop in (name.find("="), name.find("?")):
                if 0 <= stop < end:
                    end = stop
            items.append(name[:end].upper())
    return tuple(items)


# the tables the last engine was built from, its merged URC table and filter (read-only, shared):
# a driver builds its engines from the same profile tables, which are worked out once
_LAST = [None, None, None, None]


class ATEngine:
    """The line parser and command queue (see the module comment for the events).

    `current` is the command in flight (None when idle). The constructor's arguments stay as
    attributes of the same names (urcs and body_urcs as b"\\nNAME\\n" tables); read them, never
    assign them, nor `current`.

    Sizes (bytes, all allocated once, in one buffer):
      max_line      the longest line read; a longer one is dropped as "too_long". The default
                    holds the longest line the driver must read: a +CUSD (USSD) answer with a
                    UCS-2 string of up to 182 characters is 4 * 182 = 728 hex digits plus
                    `+CUSD: 1,"",72` (3GPP TS 27.007 7.15, TS 23.038 6.1.2.3; the Quectel M35
                    capture in shared/data/at/gammu has a 566-byte one); an SMS PDU in hex (a
                    +CMT body, the second line of +CMGR) is at most 2 * (12 + 164) = 352
                    (SMSC address up to 12 octets, TPDU up to 164: TS 23.040 9.2, TS 27.005
                    3.1); +COPS=? and +CLCC lines are shorter.
      max_data      the most raw bytes a data header may announce (a received datagram): the
                    largest frame of the card's protocol, MAX_FRAME in protocol/spec.py (512;
                    the modem driver passes it), or "data_too_long".
      max_response  the response text of one command (its lines, a "\\n" between them); the
                    default holds the driver's longest, an SMS read in PDU mode (a +CMGR header
                    line and a 352-character PDU); the rest is dropped as "response_too_long",
                    as are lines past max_lines.
    """

    def __init__(self, urcs=(), body_urcs=b"\n+CMT\n+CDS\n+CBM\n", raw=raw_length,
                 max_line=768, max_data=512, queue_max=16, max_lines=48, max_response=512):
        # first, while the heap still has room in one piece: one buffer for the line being
        # received, then (its header line taken out) raw data, and after them the response text
        # of the command in flight
        self._buf = memoryview(bytearray((max_line if max_line > max_data else max_data)
                                         + max_response))   # sliced without copies
        urcs = _table(urcs)
        body_urcs = _table(body_urcs)
        if _LAST[0] == urcs and _LAST[1] == body_urcs:
            self.urcs, self._filter = _LAST[2], _LAST[3]   # the same tables as the last engine's
        else:
            # the names of both tables, one at a time (no list of them, no copy of a table): a
            # two-line URC is a URC too (added to the table unless already there); a 512-bit
            # filter of the names' hashes (one bit each) tells most lines that are no URC so
            # without searching the table (hashed as bytes here, as str in _line: the same
            # value on MicroPython)
            self.urcs = urcs
            self._filter = bytearray(64)
            for table in (urcs, body_urcs):
                start = 1
                while start < len(table):
                    end = table.find(b"\n", start)
                    if end > start:
                        name = table[start:end]
                        if table is body_urcs and not _has(self.urcs, name):
                            self.urcs += name + b"\n"
                        key = hash(name) & 511
                        self._filter[key >> 3] |= 1 << (key & 7)
                    start = end + 1
            # remembered only once complete
            _LAST[0] = urcs
            _LAST[1] = body_urcs
            _LAST[2] = self.urcs
            _LAST[3] = self._filter
        self.body_urcs = body_urcs
        self.raw = raw
        self.max_line = max_line
        self.max_data = max_data
        self.queue_max = queue_max
        self.max_lines = max_lines
        self.max_response = max_response
        self.current = None
        self.now = 0
        self._s = [0, 0, 0, 0, 0, 0, 0, None, None, 0, 0]   # see _LEN ... _FED_AT
        self._queue = []
        self._events = []
        self._out = None   # bytes to write
        # counters: input lines, events by kind ("done": every "done" event, aborted ones too),
        # input errors by kind, noise bytes, retries, timeouts
        self.stats = {"lines": 0, "urc": 0, "unknown": 0, "echo": 0, "stray": 0,
                      "too_long": 0, "binary": 0, "data_too_long": 0, "response_too_long": 0,
                      "cut": 0, "noise": 0, "data": 0, "timeouts": 0, "retries": 0, "done": 0}

    # ---- commands ---------------------------------------------------------------------------
    def send(self, cmd):
        """Queue a Command (or a plain string); it is written when nothing else is in flight."""
        if not isinstance(cmd, Command):
            cmd = Command(cmd)
        if len(self._queue) >= self.queue_max:
            exc = ATError("AT queue full (%d waiting): %s not queued" % (len(self._queue), cmd.text))
            exc.kind = "queue_full"
            raise exc
        self._queue.append(cmd)
        if self.current is None:
            self._write()
        return cmd

    @property
    def busy(self):
        return self.current is not None

    def pending(self):
        return len(self._queue) + (self.current is not None)

    def abort(self):
        """Drop the command in flight and the queue (modem power-cycled): each gets "ABORTED"
        (the one in flight with the response text received so far)."""
        items = self._queue
        self._queue = []
        if self.current is not None:
            items.insert(0, self.current)
        for cmd in items:
            self.current = cmd
            self._finish("ABORTED", None)   # nothing queued: writes nothing, resets the response
        s = self._s
        s[_LEN] = s[_RAW] = s[_SKIP_LF] = 0
        s[_HEADER] = s[_BODY_FOR] = None
        self._out = None

    def _write(self, cmd=None):
        # write `cmd` again (a retry), or the next queued command, which goes in flight; either
        # way with an empty response
        s = self._s
        s[_RLEN] = s[_RCOUNT] = 0
        if cmd is None:
            if not self._queue:
                self.current = None
                return
            cmd = self.current = self._queue.pop(0)
        cmd.attempts += 1
        s[_PROMPT] = cmd.payload is not None
        s[_DEADLINE] = ticks_add(self.now, cmd.timeout_ms)
        data = cmd.text.encode() + b"\r"
        # one bytes object for all that data_to_send has not taken yet (most often one write)
        self._out = data if self._out is None else self._out + data

    def data_to_send(self):
        """Bytes to write to the modem, or None."""
        data = self._out
        self._out = None
        return data

    def tick(self, now):
        """Advance the clock; a command past its deadline is retried or ends with TIMEOUT
        (after an ESC when it still waited for the prompt); input cut short is dropped."""
        self.now = now
        s = self._s
        if s[_FED]:
            s[_FED] = 0
            s[_FED_AT] = now
        elif ((s[_LEN] or s[_RAW] or s[_BODY_FOR] is not None)
                and ticks_diff(now, s[_FED_AT]) >= _STALE_MS):
            self._error("cut", "input stopped after %d bytes of %s (modem reset?): dropped "
                        "after %d ms of silence" % (s[_LEN], s[_HEADER] or "a line", _STALE_MS))
            s[_LEN] = s[_RAW] = 0
            s[_HEADER] = s[_BODY_FOR] = None
        cmd = self.current
        if cmd is not None and ticks_diff(now, s[_DEADLINE]) >= 0:
            if s[_PROMPT] == _WAIT_PROMPT:
                s[_PROMPT] = _ESCAPED
                s[_DEADLINE] = ticks_add(now, _ESC_GUARD_MS)
                self._out = b"\x1b" if self._out is None else b"\x1b" + self._out
            elif cmd.attempts <= cmd.retries:
                self.stats["retries"] += 1
                self._write(cmd)
            else:
                self.stats["timeouts"] += 1
                self._finish("TIMEOUT", None)

    def next_timeout(self):
        """Milliseconds until the command in flight times out (None when idle)."""
        if self.current is None:
            return None
        return max(0, ticks_diff(self._s[_DEADLINE], self.now))

    def next_event(self):
        items = self._events
        return items.pop(0) if items else None

    def _finish(self, code, value):
        # the command in flight ends with final result `code` (error number or text `value`),
        # its response text made a str; the next queued command goes in flight
        s = self._s
        n = s[_RLEN]
        start = len(self._buf) - self.max_response
        s[_PROMPT] = 0
        self.stats["done"] += 1
        self._events.append(("done", self.current, code,
                             str(self._buf[start:start + n], "utf-8") if n else "", value))
        self._write()

    def _error(self, kind, message):
        # hostile input: counted under its kind, reported as an event
        self.stats[kind] += 1
        exc = ATError(message)
        exc.kind = kind
        self._events.append(("error", exc))

    # ---- bytes in ---------------------------------------------------------------------------
    def receive_data(self, data):
        """Feed bytes read from the UART (any chunking). Never raises on any input."""
        n = len(data)
        pos = 0
        v = memoryview(data)
        buf = self._buf
        s = self._s
        stats = self.stats
        if n:
            s[_FED] = 1
        while pos < n:
            if s[_SKIP_LF]:
                s[_SKIP_LF] = 0
                if data[pos] == 10:   # LF
                    pos += 1
                    continue
            length = s[_LEN]
            count = s[_RAW]
            if count:
                # raw data announced by a header line: exactly that many bytes, whatever they are
                count -= length
                if count > n - pos:
                    count = n - pos
                buf[length:length + count] = v[pos:pos + count]
                pos += count
                length += count
                s[_LEN] = length
                if length == s[_RAW]:
                    stats["data"] += 1
                    self._events.append(("data", s[_HEADER], bytes(self._buf[:length])))
                    s[_LEN] = s[_RAW] = 0
                    s[_HEADER] = None
                continue
            # the end of this line: the first CR or LF from pos
            stop = data.find(b"\n", pos)
            end = data.find(b"\r", pos, stop if stop >= 0 else n)
            if end >= 0:
                stop = end
            end = stop if stop >= 0 else n
            if end > pos:
                count = self.max_line
                if end - pos > count - length:
                    if count > length:
                        buf[length:count] = v[pos:pos + count - length]
                    length = count + 1   # overflowed: dropped when it ends
                else:
                    buf[length:length + end - pos] = v[pos:end]
                    length += end - pos
                    if s[_PROMPT] == _WAIT_PROMPT:
                        start = 0
                        while start < length and (buf[start] == 0 or buf[start] == 0xFF):
                            start += 1   # noise before the prompt
                        if start < length and buf[start] == 62:   # ">"
                            # "> " from the modem: write the payload, drop the prompt (and the
                            # noise before it) from the line
                            stats["noise"] += start
                            start += 2 if length > start + 1 and buf[start + 1] == 32 else 1
                            length -= start
                            if length > 0:
                                buf[0:length] = buf[start:start + length]
                            else:
                                length = 0
                            s[_PROMPT] = 0
                            start = self.current.payload
                            self._out = start if self._out is None else self._out + start
                            s[_DEADLINE] = ticks_add(self.now, self.current.timeout_ms)
                s[_LEN] = length
            if stop < 0:
                return
            pos = stop + 1
            if data[stop] == 13:   # CR: a CRLF pair ends one line, swallow its LF
                if pos < n:
                    if data[pos] == 10:
                        pos += 1
                else:
                    s[_SKIP_LF] = 1   # first thing next chunk
            if not length and s[_BODY_FOR] is None:
                continue   # an empty line
            s[_LEN] = 0

            # ---- a line ended: classify its `length` bytes in the buffer
            if length > self.max_line:
                self._error("too_long", "line over %d bytes dropped: %r..."
                            % (self.max_line, bytes(self._buf[:min(24, self.max_line)])))
                continue
            line = ""   # an empty line where a two-line URC's body belongs: the body is empty
            head = 0    # its first byte (a number: indexing a str would intern a character)
            if length:
                start = 0
                while start < length and (buf[start] == 0 or buf[start] == 0xFF):
                    start += 1
                if start:
                    stats["noise"] += start
                while length > start and buf[length - 1] == 32:   # trailing spaces
                    length -= 1
                if length <= start:
                    continue
                try:
                    line = str(self._buf[start:length], "utf-8")
                    if "\x00" in line:
                        raise UnicodeError
                except UnicodeError:
                    self._error("binary", "line is not text (bad UTF-8 or NUL): %r"
                                % (bytes(self._buf[start:min(length, start + 32)]),))
                    continue
                stats["lines"] += 1
                head = buf[start]
            if s[_BODY_FOR] is not None:
                name, args = s[_BODY_FOR]
                s[_BODY_FOR] = None
                stats["urc"] += 1
                self._events.append(("urc", name, args, line))
                continue
            if head == 43 and self.raw is not None:   # "+": maybe a raw data header
                count = self.raw(line)
                if count > self.max_data:
                    # more than a datagram can be: refuse it rather than swallow the stream
                    self._error("data_too_long", "%s announces %d bytes, over max_data %d"
                                % (line[:24], count, self.max_data))
                    continue
                if count == 0:
                    self._events.append(("data", line, b""))
                    continue
                if count > 0:
                    s[_RAW] = count
                    s[_HEADER] = line
                    continue
            cmd = self.current
            if cmd is not None and not s[_RCOUNT] and line == cmd.text:
                stats["echo"] += 1   # the command in flight echoed (ATE1)
                continue
            end = line.find(":")
            name = line[:end] if end > 0 else line
            # a final result code: "+CME ERROR: <err>", "+CMS ERROR: <err>" or a whole line
            # (bytes tables, as the URCs: a tuple of str costs an object per name)
            final = False
            if head == 43:
                final = name == "+CME ERROR" or name == "+CMS ERROR"
            elif end < 0:
                key = line.encode()
                final = _has(b"\nOK\nERROR\nCOMMAND NOT SUPPORT\n", key) or cmd is not None and (
                    cmd.dial and _has(b"\nNO CARRIER\nBUSY\nNO ANSWER\nNO DIALTONE\nCONNECT\n", key)
                    or cmd.payload is not None and _has(b"\nSEND OK\nSEND FAIL\n", key))
            if final and cmd is not None:
                if s[_PROMPT] == _ESCAPED:
                    # the modem's answer to our ESC: the command timed out at the next tick
                    s[_PROMPT] = 0
                    s[_DEADLINE] = self.now
                elif head == 43:
                    args = line[end + 1:].strip()
                    try:
                        args = int(args)   # the error number, else its text (verbose errors)
                    except ValueError:
                        pass
                    self._finish(name[1:4], args)   # "CME" / "CMS"
                else:
                    self._finish(line, None)
                continue
            if cmd is not None and name in cmd.prefixes:
                known = False
            else:
                # a URC name? The filter answers "no" for most lines without searching the table
                key = hash(name) & 511
                known = self._filter[key >> 3] >> (key & 7) & 1 and _has(self.urcs, name.encode())
            if cmd is not None and not known and (
                    name in cmd.prefixes or not (cmd.strict and head == 43 and end > 0)):
                # its response (not a known URC, nor, strict, a foreign "+NAME:" line): its text
                # goes after the response so far and a "\n", in the buffer's response region;
                # what does not fit is dropped, reported once
                count = s[_RCOUNT]
                key = s[_RLEN] + (count > 0)   # where it goes (after a "\n" unless first)
                length -= start                # its bytes
                if count < self.max_lines and key + length <= self.max_response:
                    s[_RLEN] = key + length
                    s[_RCOUNT] = count + 1
                    key += len(buf) - self.max_response
                    if count:
                        buf[key - 1] = 10   # "\n"
                    buf[key:key + length] = self._buf[start:start + length]
                elif count <= self.max_lines:
                    s[_RCOUNT] = self.max_lines + 1
                    self._error("response_too_long", "%s: response over %d lines or %d bytes, "
                                "rest dropped" % (cmd.text, self.max_lines, self.max_response))
            elif known:
                args = line[end + 1:].strip() if end > 0 else ""
                if _has(self.body_urcs, name.encode()):
                    s[_BODY_FOR] = (name, args)
                else:
                    stats["urc"] += 1
                    self._events.append(("urc", name, args, None))
            elif final:   # with no command in flight
                stats["stray"] += 1
                self._events.append(("stray", line))
            else:
                stats["unknown"] += 1
                self._events.append(("unknown", line))
