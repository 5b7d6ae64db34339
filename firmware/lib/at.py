# AT command engine: a sans-I/O line parser and a one-in-flight command queue.
#
# Bytes from the modem UART go in with `receive_data(data)`, the clock (milliseconds, any
# monotonic or ticks_ms-style wrapping counter) with `tick(now_ms)`; bytes to write come out of
# `data_to_send()` and parsed results out of `next_event()`. Nothing here touches a UART.
#
# Events (tuples, first item is the kind):
#   ("done", cmd, status, lines, err)  a command finished. status is the final result code as
#       received ("OK", "ERROR", "NO CARRIER", "BUSY", "NO ANSWER", "NO DIALTONE", "CONNECT",
#       "SEND OK", "SEND FAIL") or "CME" / "CMS" (err = the error number, or its text when the
#       modem sends verbose errors) or "TIMEOUT" (after the retries) or "ABORTED" (by abort()).
#       lines: the information text lines (str) that belonged to the command.
#   ("urc", name, args, body)  a known unsolicited result code: name is the text before the
#       first ':' ("+CREG", "VOICE CALL", "RING"), args the rest, stripped; body is the line that
#       follows for two-line URCs (+CMT, +CDS), else None.
#   ("unknown", line)  a line that is neither a response nor a known URC: reported, not dropped.
#   ("data", header, payload)  raw bytes announced by a header line (+IPD, +RECEIVE, +QIURC
#       "recv", +QIRD, +CIPRXGET: 2): payload is exactly the announced number of bytes.
#   ("stray", line)  a final result code with no command in flight.
#   ("error", exc)  hostile input: exc is an instance of a typed ATInputError subclass
#       (LineTooLong, BinaryLine, DataTooLong, ResponseTooLong). Counted in `stats`; the parser
#       carries on.
#
# receive_data() never raises: every byte sequence is either parsed or reported as an error
# event. Misuse of the API (queue full, bad command, bad URC table) raises ATError subclasses or
# ValueError.
#
# Memory (a card has tens of KB of heap): the URC names are one string, "\nNAME\nNAME\n",
# searched with str.find (no dict, no per-name objects; a profile passes its table as such a
# string, a sequence of names is joined into one); one preallocated buffer holds the line being
# received and, once its header line has been taken out, the raw data it announces; lines become
# str once, when they are complete.
try:
    from micropython import const
except ImportError:  # CPython (host tools)
    def const(x):
        return x

_CR = const(13)
_LF = const(10)
_SP = const(32)
_GT = const(62)
_PLUS = const(43)
_A = const(65)
_A_LOW = const(97)
_MASK = const(0x3FFFFFFF)  # ticks_ms period on MicroPython ports (2**30)
_HALF = const(0x20000000)

DEFAULT_TIMEOUT_MS = 5000


class ATError(Exception):
    """Base of every error raised or reported by the AT engine."""


class ATQueueFull(ATError):
    """send() while the command queue is full."""


class ATCommandError(ATError):
    """A command that cannot be sent (empty, or contains CR/LF)."""


class ATInputError(ATError):
    """Hostile or broken input from the modem; reported as ("error", exc), never raised."""

    counter = "input_errors"


class LineTooLong(ATInputError):
    counter = "too_long"


class BinaryLine(ATInputError):
    counter = "binary"


class DataTooLong(ATInputError):
    counter = "data_too_long"


class ResponseTooLong(ATInputError):
    counter = "response_too_long"


# Final result codes that end any command; those that end only a dial / answer command (else
# they are call-progress URCs); those that end only a command that sent a payload (Quectel).
_FINAL_ANY = ("OK", "ERROR", "COMMAND NOT SUPPORT")
_FINAL_DIAL = ("NO CARRIER", "BUSY", "NO ANSWER", "NO DIALTONE", "CONNECT")
_FINAL_SEND = ("SEND OK", "SEND FAIL")


def ticks_diff(a, b):
    """a - b for millisecond counters that may wrap at 2**30 (ticks_ms) or never wrap."""
    return ((a - b + _HALF) & _MASK) - _HALF


def _int(text, default=-1):
    try:
        return int(text)
    except ValueError:
        return default


def raw_length(line):
    """Bytes of raw data announced by a header line, or -1 when `line` is no such header.

    SIMCom A76xx/SIM7600: "+IPD<n>", "+RECEIVE,<link>,<n>", "+CIPRXGET: 2,<link>,<n>,<rest>".
    Quectel EC800M/EC200: '+QIURC: "recv",<id>,<n>[,ip,port]', "+QIRD: <n>[,ip,port]".
    """
    if line.startswith("+IPD"):
        return _int(line[4:])
    if line.startswith("+QIRD: "):
        n = _int(line[7:].split(",")[0])
        return n if n > 0 else -1
    if (line.startswith("+RECEIVE,") or line.startswith("+CIPRXGET: 2,")
            or line.startswith('+QIURC: "recv",')):
        parts = line.split(",")
        return _int(parts[2]) if len(parts) >= 3 else -1
    return -1


def split_args(args):
    """Split "a,\"b,c\",d" into ["a", "b,c", "d"], quotes removed (robust to odd quotes)."""
    # by find, not character by character: iterating a str interns each character on the heap
    out = []
    piece = ""
    quoted = False
    i = 0
    while True:
        q = args.find('"', i)
        c = -1 if quoted else args.find(",", i)
        if c >= 0 and (q < 0 or c < q):
            out.append((piece + args[i:c]).strip())
            piece = ""
            i = c + 1
        elif q >= 0:
            piece += args[i:q]
            quoted = not quoted
            i = q + 1
        else:
            out.append((piece + args[i:]).strip())
            return out


def _table(names):
    # "\nNAME\nNAME\n" from a sequence of names; a string is taken as such a table already
    if isinstance(names, str):
        if not (names.startswith("\n") and names.endswith("\n")):
            raise ValueError("URC table must be a string that starts and ends with a newline, "
                             "names separated by newlines (or a sequence of names)")
        return names
    return "\n" + "\n".join(names) + "\n"


def _has(table, name):
    # name is one whole entry of the table (not a part of a longer name); startswith, not
    # table[k]: indexing a str interns the character on the heap
    n = len(name)
    k = table.find(name, 1)
    while k > 0:
        if table.startswith("\n", k - 1) and table.startswith("\n", k + n):
            return True
        k = table.find(name, k + 1)
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

    def __init__(self, text, prefix=None, timeout_ms=DEFAULT_TIMEOUT_MS, retries=0,
                 payload=None, tag=None, strict=None):
        if not text or "\r" in text or "\n" in text:
            raise ATCommandError("AT command %r is empty or contains CR/LF" % (text,))
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
        self.lines = []
        self.attempts = 0

    def __repr__(self):
        return "Command(%r)" % (self.text,)


def prefixes_of(text):
    """Response prefixes of a command line as typed ("AT+CPIN?;+CSQ" -> ("+CPIN", "+CSQ"))."""
    out = []
    body = text[2:] if text[:2].upper() == "AT" else text
    for part in body.split(";"):
        if part.startswith("+"):
            end = len(part)
            for stop in "=?":
                k = part.find(stop)
                if 0 <= k < end:
                    end = k
            out.append(part[:end].upper())
    return tuple(out)


class ATEngine:
    """The line parser and command queue (see the module comment for the events).

    `current` is the command in flight (None when idle); read it, never assign it.
    """

    def __init__(self, urcs=(), body_urcs=("+CMT", "+CDS", "+CBM"), raw=raw_length,
                 max_line=1024, max_data=1536, queue_max=16, max_lines=48):
        table = _table(urcs)
        for name in body_urcs:   # two-line URCs are URCs too
            if not _has(table, name):
                table += name + "\n"
        self._urcs = table
        self._body = _table(body_urcs)
        self._raw = raw
        # one buffer: the line being received, then (its header line taken out) raw data
        self._buf = bytearray(max_line if max_line > max_data else max_data)
        self._mv = memoryview(self._buf)
        self._cap = max_line
        self._max_data = max_data
        self._len = 0
        self._overflow = False
        self._raw_left = 0      # raw bytes still to read
        self._raw_len = 0       # raw bytes announced
        self._raw_header = None
        self._skip_lf = False   # a CR ended the header: swallow one LF before raw data
        self._body_for = None   # (name, args) of a two-line URC waiting for its body
        self._queue = []
        self._queue_max = queue_max
        self._max_lines = max_lines
        self.current = None
        self._await_prompt = False
        self._deadline = 0
        self._events = []
        self._out = []
        self.now = 0
        self.stats = {"lines": 0, "urc": 0, "unknown": 0, "echo": 0, "stray": 0,
                      "too_long": 0, "binary": 0, "data_too_long": 0, "response_too_long": 0,
                      "noise": 0, "data": 0, "timeouts": 0, "retries": 0, "done": 0}

    # ---- commands ---------------------------------------------------------------------------
    def send(self, cmd):
        """Queue a Command (or a plain string); it is written when nothing else is in flight."""
        if not isinstance(cmd, Command):
            cmd = Command(cmd)
        q = self._queue
        if len(q) >= self._queue_max:
            raise ATQueueFull("AT queue full (%d commands waiting); %s not queued"
                              % (len(q), cmd.text))
        q.append(cmd)
        if self.current is None:
            self._write()
        return cmd

    @property
    def busy(self):
        return self.current is not None

    def pending(self):
        return len(self._queue) + (self.current is not None)

    def abort(self):
        """Drop the command in flight and the queue (modem power-cycled): each gets "ABORTED"."""
        queue = self._queue
        if self.current is not None:
            queue.insert(0, self.current)
        self.current = None
        self._queue = []
        self._await_prompt = False
        for cmd in queue:
            if len(cmd.lines) > self._max_lines:
                cmd.lines.pop()
            self._events.append(("done", cmd, "ABORTED", cmd.lines, None))
        self._len = 0
        self._overflow = False
        self._raw_left = 0
        self._body_for = None
        self._skip_lf = False
        self._out = []

    def _write(self, cmd=None):
        # write `cmd` again (a retry), or the next queued command, which goes in flight
        if cmd is None:
            if not self._queue:
                self.current = None
                return
            cmd = self.current = self._queue.pop(0)
        cmd.attempts += 1
        cmd.lines = []
        self._await_prompt = cmd.payload is not None
        self._deadline = self.now + cmd.timeout_ms
        self._out.append(cmd.text.encode() + b"\r")

    def data_to_send(self):
        """Bytes to write to the modem, or None."""
        out = self._out
        if not out:
            return None
        if len(out) == 1:
            return out.pop()
        self._out = []
        return b"".join(out)

    def tick(self, now):
        """Advance the clock; a command past its deadline is retried or ends with TIMEOUT."""
        self.now = now
        cmd = self.current
        if cmd is not None and ticks_diff(now, self._deadline) >= 0:
            if cmd.attempts <= cmd.retries:
                self.stats["retries"] += 1
                self._write(cmd)
            else:
                self.stats["timeouts"] += 1
                self._finish("TIMEOUT", None)

    def next_timeout(self):
        """Milliseconds until the command in flight times out (None when idle)."""
        if self.current is None:
            return None
        return max(0, ticks_diff(self._deadline, self.now))

    def next_event(self):
        ev = self._events
        return ev.pop(0) if ev else None

    def _finish(self, status, err):
        cmd = self.current
        lines = cmd.lines
        if len(lines) > self._max_lines:
            lines.pop()   # the None that marked a cut
        self._await_prompt = False
        self.stats["done"] += 1
        self._events.append(("done", cmd, status, lines, err))
        self._write()

    def _error(self, exc):
        self.stats[exc.counter] += 1
        self._events.append(("error", exc))

    # ---- bytes in ---------------------------------------------------------------------------
    def receive_data(self, data):
        """Feed bytes read from the UART (any chunking). Never raises on any input."""
        n = len(data)
        i = 0
        mv = memoryview(data)
        buf = self._buf
        cap = self._cap
        while i < n:
            if self._skip_lf:
                self._skip_lf = False
                if data[i] == _LF:
                    i += 1
                    continue
            left = self._raw_left
            if left:
                # raw data announced by a header line: exactly that many bytes, whatever they are
                if left > n - i:
                    left = n - i
                got = self._raw_len - self._raw_left
                buf[got:got + left] = mv[i:i + left]
                i += left
                self._raw_left -= left
                if not self._raw_left:
                    self.stats["data"] += 1
                    self._events.append(("data", self._raw_header, bytes(self._mv[:self._raw_len])))
                    self._raw_header = None
                continue
            # the end of this line: the first CR or LF from i
            j = data.find(b"\n", i)
            k = data.find(b"\r", i, j if j >= 0 else n)
            if k >= 0:
                j = k
            end = j if j >= 0 else n
            have = self._len
            if end > i:
                if end - i > cap - have:
                    if cap > have:
                        buf[have:cap] = mv[i:i + cap - have]
                    have = cap
                    self._overflow = True
                else:
                    buf[have:have + end - i] = mv[i:end]
                    have += end - i
                if self._await_prompt and have and buf[0] == _GT:
                    # "> " from the modem: write the payload, drop the prompt from the line
                    skip = 2 if have > 1 and buf[1] == _SP else 1
                    have -= skip
                    if have > 0:
                        buf[0:have] = buf[skip:skip + have]
                    else:
                        have = 0
                    self._await_prompt = False
                    cmd = self.current
                    self._out.append(cmd.payload)
                    self._deadline = self.now + cmd.timeout_ms
                self._len = have
            if j < 0:
                return
            i = j + 1
            if data[j] == _CR:
                # a CRLF pair ends one line: swallow its LF (now, or first thing next chunk)
                if i < n:
                    if data[i] == _LF:
                        i += 1
                else:
                    self._skip_lf = True
            if have or self._overflow or self._body_for is not None:
                self._line(have)

    def _line(self, n):
        # a line ended: classify the n bytes in the buffer
        self._len = 0
        stats = self.stats
        events = self._events
        if self._overflow:
            self._overflow = False
            cap = self._cap
            self._error(LineTooLong("line longer than %d bytes dropped: %r..."
                                    % (cap, bytes(self._mv[:24 if cap > 24 else cap]))))
            return
        buf = self._buf
        line = ""   # an empty line where a two-line URC's body belongs: the body is empty
        c0 = 0
        if n:
            start = 0
            while start < n and (buf[start] == 0 or buf[start] == 0xFF):
                start += 1
            if start:
                stats["noise"] += start
            while n > start and buf[n - 1] == _SP:
                n -= 1
            if n <= start:
                return
            try:
                line = str(self._mv[start:n], "utf-8")
            except UnicodeError:
                self._error(BinaryLine("line is not text: %r"
                                       % (bytes(self._mv[start:min(n, start + 32)]),)))
                return
            if "\x00" in line:
                self._error(BinaryLine("line holds NUL bytes: %r" % (line[:32],)))
                return
            stats["lines"] += 1
            c0 = buf[start]   # the first byte (an int: indexing the str would intern a char)
        if self._body_for is not None:
            name, args = self._body_for
            self._body_for = None
            stats["urc"] += 1
            events.append(("urc", name, args, line))
            return
        if c0 == _PLUS and self._raw is not None:
            count = self._raw(line)
            if count >= 0:
                if count == 0:
                    events.append(("data", line, b""))
                elif count > self._max_data:
                    # more than a datagram can be: refuse it rather than swallow the stream
                    self._error(DataTooLong("%s announces %d bytes; the buffer holds %d"
                                            % (line[:24], count, self._max_data)))
                else:
                    self._raw_left = self._raw_len = count
                    self._raw_header = line
                return
        if (c0 == _A or c0 == _A_LOW) and line[:2].upper() == "AT":
            stats["echo"] += 1  # our own command echoed (ATE1), or host-side echo
            return
        k = line.find(":")
        name = line[:k] if k > 0 else line
        cmd = self.current
        if cmd is not None:
            if (line in _FINAL_ANY or cmd.dial and line in _FINAL_DIAL
                    or cmd.payload is not None and line in _FINAL_SEND):
                self._finish(line, None)
                return
            if name == "+CME ERROR" or name == "+CMS ERROR":
                text = line[k + 1:].strip()
                self._finish("CME" if name == "+CME ERROR" else "CMS", _int(text, text))
                return
            # its response, unless a known URC (or, strict, any foreign "+NAME:" line)
            known = name not in cmd.prefixes and _has(self._urcs, name)
            if not known and (name in cmd.prefixes or not (cmd.strict and c0 == _PLUS and k > 0)):
                lines = cmd.lines
                if len(lines) < self._max_lines:
                    lines.append(line)
                elif len(lines) == self._max_lines:
                    lines.append(None)  # marks the cut; removed when the command ends
                    self._error(ResponseTooLong("%s: more than %d response lines, the rest dropped"
                                                % (cmd.text, self._max_lines)))
                return
        else:
            known = _has(self._urcs, name)
        if known:
            args = line[k + 1:].strip() if k > 0 else ""
            if _has(self._body, name):
                self._body_for = (name, args)
            else:
                stats["urc"] += 1
                events.append(("urc", name, args, None))
        elif cmd is None and (line in _FINAL_ANY or name == "+CME ERROR" or name == "+CMS ERROR"):
            stats["stray"] += 1
            events.append(("stray", line))
        else:
            stats["unknown"] += 1
            events.append(("unknown", line))
