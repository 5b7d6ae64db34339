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
#       (LineTooLong, BinaryLine, DataTooLong). Counted in `stats`; the parser carries on.
#
# receive_data() never raises: every byte sequence is either parsed or reported as an error
# event. Misuse of the API (queue full, bad command) raises ATError subclasses.
try:
    from micropython import const
except ImportError:  # CPython (host tools)
    def const(x):
        return x

_CR = const(13)
_LF = const(10)
_SP = const(32)
_GT = const(62)
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


# Final result codes that end any command.
_FINAL_ANY = {"OK": 1, "ERROR": 1, "COMMAND NOT SUPPORT": 1}
# Final only for dial / answer commands (else they are call-progress URCs).
_FINAL_DIAL = {"NO CARRIER": 1, "BUSY": 1, "NO ANSWER": 1, "NO DIALTONE": 1, "CONNECT": 1}
# Final only for commands that sent a payload after the prompt (Quectel QISEND).
_FINAL_SEND = {"SEND OK": 1, "SEND FAIL": 1}


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
    if line.startswith("+RECEIVE,"):
        parts = line.split(",")
        if len(parts) >= 3:
            return _int(parts[2])
        return -1
    if line.startswith("+CIPRXGET: 2,"):
        parts = line.split(",")
        if len(parts) >= 3:
            return _int(parts[2])
        return -1
    if line.startswith("+QIRD: "):
        n = _int(line[7:].split(",")[0])
        return n if n > 0 else -1
    if line.startswith('+QIURC: "recv",'):
        parts = line.split(",")
        if len(parts) >= 3:
            return _int(parts[2])
        return -1
    return -1


def split_args(args):
    """Split "a,\"b,c\",d" into ["a", "b,c", "d"], quotes removed (robust to odd quotes)."""
    out = []
    cur = []
    quoted = False
    for ch in args:
        if ch == '"':
            quoted = not quoted
        elif ch == "," and not quoted:
            out.append("".join(cur).strip())
            cur = []
        else:
            cur.append(ch)
    out.append("".join(cur).strip())
    return out


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
            self.prefixes = ()
        elif isinstance(prefix, tuple):
            self.prefixes = prefix
        else:
            self.prefixes = (prefix,)
        self.strict = bool(self.prefixes) if strict is None else strict
        self.timeout_ms = timeout_ms
        self.retries = retries
        self.payload = payload
        self.tag = tag
        head = text[:3].upper()
        self.dial = head == "ATD" or text.upper() == "ATA"
        self.lines = []
        self.attempts = 0

    def __repr__(self):
        return "Command(%r)" % (self.text,)


def prefixes_of(text):
    """Response prefixes of a command line as typed ("AT+CPIN?;+CSQ" -> ("+CPIN", "+CSQ"))."""
    out = []
    body = text[2:] if text[:2].upper() == "AT" else text
    for part in body.split(";"):
        if not part.startswith("+"):
            continue
        end = len(part)
        for stop in "=?":
            k = part.find(stop)
            if 0 <= k < end:
                end = k
        out.append(part[:end].upper())
    return tuple(out)


class ATEngine:
    """The line parser and command queue (see the module comment for the events)."""

    def __init__(self, urcs=(), body_urcs=("+CMT", "+CDS", "+CBM"), raw=raw_length,
                 max_line=1024, max_data=1536, queue_max=16, max_lines=48):
        self.urcs = {}
        for name in urcs:
            self.urcs[name] = 1
        self.body_urcs = {}
        for name in body_urcs:
            self.body_urcs[name] = 1
            self.urcs[name] = 1
        self._raw = raw
        self._buf = bytearray(max_line)
        self._mv = memoryview(self._buf)
        self._len = 0
        self._overflow = False
        self._data = bytearray(max_data)
        self._dmv = memoryview(self._data)
        self._raw_left = 0      # raw bytes still to read
        self._raw_len = 0       # raw bytes announced
        self._raw_header = None
        self._skip_lf = False   # a CR ended the header: swallow one LF before raw data
        self._body_for = None   # (name, args) of a two-line URC waiting for its body
        self._queue = []
        self._queue_max = queue_max
        self._max_lines = max_lines
        self._cur = None
        self._await_prompt = False
        self._deadline = 0
        self._events = []
        self._out = []
        self.now = 0
        self.stats = {"lines": 0, "urc": 0, "unknown": 0, "echo": 0, "stray": 0,
                      "too_long": 0, "binary": 0, "data_too_long": 0, "response_too_long": 0,
                      "noise": 0,
                      "data": 0, "timeouts": 0, "retries": 0, "done": 0}

    # ---- commands ---------------------------------------------------------------------------
    def send(self, cmd):
        """Queue a Command (or a plain string); it is written when nothing else is in flight."""
        if not isinstance(cmd, Command):
            cmd = Command(cmd)
        if len(self._queue) >= self._queue_max:
            raise ATQueueFull("AT queue full (%d commands waiting); %s not queued"
                              % (len(self._queue), cmd.text))
        self._queue.append(cmd)
        if self._cur is None:
            self._start_next()
        return cmd

    @property
    def busy(self):
        return self._cur is not None

    @property
    def current(self):
        return self._cur

    def pending(self):
        return len(self._queue) + (1 if self._cur is not None else 0)

    def abort(self):
        """Drop the command in flight and the queue (modem power-cycled): each gets "ABORTED"."""
        cur = self._cur
        queue = self._queue
        self._cur = None
        self._queue = []
        self._await_prompt = False
        if cur is not None:
            if len(cur.lines) > self._max_lines:
                cur.lines.pop()
            self._events.append(("done", cur, "ABORTED", cur.lines, None))
        for cmd in queue:
            self._events.append(("done", cmd, "ABORTED", cmd.lines, None))
        self._len = 0
        self._overflow = False
        self._raw_left = 0
        self._body_for = None
        self._skip_lf = False
        self._out = []

    def _start_next(self):
        if not self._queue:
            self._cur = None
            return
        cmd = self._queue.pop(0)
        self._cur = cmd
        self._write_cmd(cmd)

    def _write_cmd(self, cmd):
        cmd.attempts += 1
        cmd.lines = []
        self._await_prompt = cmd.payload is not None
        self._deadline = self.now + cmd.timeout_ms
        self._out.append(cmd.text.encode() + b"\r")

    def data_to_send(self):
        """Bytes to write to the modem, or None."""
        if not self._out:
            return None
        if len(self._out) == 1:
            return self._out.pop()
        data = b"".join(self._out)
        self._out = []
        return data

    def tick(self, now):
        """Advance the clock; a command past its deadline is retried or ends with TIMEOUT."""
        self.now = now
        cmd = self._cur
        if cmd is not None and ticks_diff(now, self._deadline) >= 0:
            if cmd.attempts <= cmd.retries:
                self.stats["retries"] += 1
                self._write_cmd(cmd)
            else:
                self.stats["timeouts"] += 1
                self._finish("TIMEOUT", None)

    def next_timeout(self):
        """Milliseconds until the command in flight times out (None when idle)."""
        if self._cur is None:
            return None
        return max(0, ticks_diff(self._deadline, self.now))

    def next_event(self):
        if self._events:
            return self._events.pop(0)
        return None

    def _finish(self, status, err):
        cmd = self._cur
        if len(cmd.lines) > self._max_lines:
            cmd.lines.pop()
        self._cur = None
        self._await_prompt = False
        self.stats["done"] += 1
        self._events.append(("done", cmd, status, cmd.lines, err))
        self._start_next()

    # ---- bytes in ---------------------------------------------------------------------------
    def receive_data(self, data):
        """Feed bytes read from the UART (any chunking). Never raises on any input."""
        n = len(data)
        i = 0
        mv = memoryview(data)
        buf = self._buf
        cap = len(buf)
        while i < n:
            if self._skip_lf:
                self._skip_lf = False
                if data[i] == _LF:
                    i += 1
                    continue
            if self._raw_left:
                i = self._take_raw(mv, i, n)
                continue
            # find the end of this line: the first CR or LF from i
            j = data.find(b"\n", i)
            k = data.find(b"\r", i, j if j >= 0 else n)
            if k >= 0:
                j = k
            end = j if j >= 0 else n
            seg = end - i
            if seg:
                room = cap - self._len
                if seg > room:
                    if room > 0:
                        buf[self._len:cap] = mv[i:i + room]
                        self._len = cap
                    self._overflow = True
                else:
                    buf[self._len:self._len + seg] = mv[i:end]
                    self._len += seg
                if self._await_prompt and self._len and buf[0] == _GT:
                    self._prompt()
            if j < 0:
                return
            i = j + 1
            if self._len or self._overflow:
                self._end_line()
            elif self._body_for is not None:
                # an empty line where a two-line URC's body belongs: the body is empty
                name, args = self._body_for
                self._body_for = None
                self.stats["urc"] += 1
                self._events.append(("urc", name, args, ""))
            if data[j] == _CR:
                # a CRLF pair ends one line: swallow its LF (now, or first thing next chunk)
                if i < n:
                    if data[i] == _LF:
                        i += 1
                else:
                    self._skip_lf = True

    def _take_raw(self, mv, i, n):
        take = self._raw_left
        if take > n - i:
            take = n - i
        got = self._raw_len - self._raw_left
        self._data[got:got + take] = mv[i:i + take]
        self._raw_left -= take
        if not self._raw_left:
            self.stats["data"] += 1
            self._events.append(("data", self._raw_header, bytes(self._dmv[:self._raw_len])))
            self._raw_header = None
        return i + take

    def _prompt(self):
        # "> " from the modem: write the payload, drop the prompt from the line buffer
        buf = self._buf
        skip = 1
        if self._len > 1 and buf[1] == _SP:
            skip = 2
        rest = self._len - skip
        if rest > 0:
            buf[0:rest] = buf[skip:self._len]
        self._len = rest if rest > 0 else 0
        self._await_prompt = False
        cmd = self._cur
        self._out.append(cmd.payload)
        self._deadline = self.now + cmd.timeout_ms

    def _error(self, exc):
        self.stats[exc.counter] += 1
        self._events.append(("error", exc))

    def _end_line(self):
        buf = self._buf
        n = self._len
        self._len = 0
        if self._overflow:
            self._overflow = False
            self._error(LineTooLong("line longer than %d bytes dropped: %r..."
                                    % (len(buf), bytes(self._mv[:24]))))
            return
        start = 0
        while start < n and (buf[start] == 0 or buf[start] == 0xFF):
            start += 1
        if start:
            self.stats["noise"] += start
        while n > start and buf[n - 1] == _SP:
            n -= 1
        if n <= start:
            return
        try:
            line = str(self._mv[start:n], "utf-8")
        except UnicodeError:
            self._error(BinaryLine("line is not text: %r" % (bytes(self._mv[start:min(n, start + 32)]),)))
            return
        if "\x00" in line:
            self._error(BinaryLine("line holds NUL bytes: %r" % (line[:32],)))
            return
        self.stats["lines"] += 1
        self._line(line)

    def _line(self, line):
        if self._body_for is not None:
            name, args = self._body_for
            self._body_for = None
            self.stats["urc"] += 1
            self._events.append(("urc", name, args, line))
            return
        c0 = line[0]
        if c0 == "+" and self._raw is not None:
            count = self._raw(line)
            if count >= 0:
                if count == 0:
                    self._events.append(("data", line, b""))
                    return
                if count > len(self._data):
                    # more than a datagram can be: refuse it rather than swallow the stream
                    self._error(DataTooLong("%s announces %d bytes; the buffer holds %d"
                                            % (line[:24], count, len(self._data))))
                    return
                self._raw_left = count
                self._raw_len = count
                self._raw_header = line
                return
        cmd = self._cur
        if (c0 == "A" or c0 == "a") and line[:2].upper() == "AT":
            self.stats["echo"] += 1  # our own command echoed (ATE1), or host-side echo
            return
        k = line.find(":")
        name = line[:k] if k > 0 else line
        if cmd is not None:
            if line in _FINAL_ANY:
                self._finish(line, None)
                return
            if cmd.dial and line in _FINAL_DIAL:
                self._finish(line, None)
                return
            if cmd.payload is not None and line in _FINAL_SEND:
                self._finish(line, None)
                return
            if name == "+CME ERROR" or name == "+CMS ERROR":
                text = line[k + 1:].strip()
                self._finish("CME" if name == "+CME ERROR" else "CMS", _int(text, text))
                return
            if name in cmd.prefixes:
                self._add_line(cmd, line)
                return
            if name in self.urcs:
                self._urc(name, line, k)
                return
            if cmd.strict and c0 == "+" and k > 0:
                self.stats["unknown"] += 1
                self._events.append(("unknown", line))
                return
            self._add_line(cmd, line)
            return
        if name in self.urcs:
            self._urc(name, line, k)
            return
        if line in _FINAL_ANY or name == "+CME ERROR" or name == "+CMS ERROR":
            self.stats["stray"] += 1
            self._events.append(("stray", line))
            return
        self.stats["unknown"] += 1
        self._events.append(("unknown", line))

    def _add_line(self, cmd, line):
        lines = cmd.lines
        if len(lines) < self._max_lines:
            lines.append(line)
        elif len(lines) == self._max_lines:
            lines.append(None)  # marks the cut; removed when the command ends
            self._error(ResponseTooLong("%s: more than %d response lines, the rest dropped"
                                        % (cmd.text, self._max_lines)))

    def _urc(self, name, line, k):
        args = line[k + 1:].strip() if k > 0 else ""
        if name in self.body_urcs:
            self._body_for = (name, args)
            return
        self.stats["urc"] += 1
        self._events.append(("urc", name, args, None))
