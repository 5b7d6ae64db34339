"""A scripted modem for MicroPython tests of the modem driver and the card application: `Sim`
answers each AT command as the real modems do (replies from the captures in ../shared/data/at/
where they exist); `a7670_up()` brings an A7670 from off to ready."""

SIM = r'''
import at, hwdata, modem, modem_a7670, modem_ec800m
class Sim:
    """A scripted modem: replies[cmd] = bytes or list of bytes (one per time it is sent);
    a missing entry means OK; None means no answer at all."""
    def __init__(self, profile, replies, **kw):
        self.m = modem.Modem(profile, hwdata.load(profile.HW_NAME), **kw)
        self.replies = replies
        self.now = 0
        self.writes = []
        self.pins = []
        self.events = []
        self.inbox = []
        self.silent = False
    def _answer(self, data):
        if not data.endswith(b"\r"):
            r = self.replies.get("PAYLOAD", b"\r\nOK\r\n")
        else:
            r = self.replies.get(data[:-1].decode(), b"\r\nOK\r\n")
        if isinstance(r, list):
            r = r.pop(0) if len(r) > 1 else r[0]
        if r is not None and not self.silent:
            self.inbox.append(r)
    def pump(self):
        while True:
            a = self.m.next_action()
            if a is None:
                break
            if a[0] == "write":
                self.writes.append(a[1])
                self._answer(a[1])
            else:
                self.pins.append(a)
        while True:
            e = self.m.next_event()
            if e is None:
                break
            if e[0] == "at_error":
                assert type(e[1]) is at.ATError, e
                e = ("at_error", e[1].kind)
            self.events.append(e)
    def feed(self, data):
        self.m.receive_data(data)
        self.pump()
    def run(self, ms, step=10):
        end = self.now + ms
        while self.now < end:
            self.now += step
            self.m.tick(self.now)
            self.pump()
            while self.inbox:
                self.m.receive_data(self.inbox.pop(0))
                self.pump()
    def take(self):
        ev = self.events
        self.events = []
        return ev
    def cmds(self):
        return [w[:-1].decode() for w in self.writes if w.endswith(b"\r")]
def show(*values):
    for v in values:
        print(repr(v))
A7670_UP = {
    "AT": [None, None, b"\r\nOK\r\n"],          # off: two probes unanswered, then booted
    "AT+CPIN?": b"\r\n+CPIN: READY\r\n\r\nOK\r\n",
    "AT+CSQ": b"\r\n+CSQ: 18,99\r\n\r\nOK\r\n",
    "AT+CREG?": b"\r\n+CREG: 1,1\r\n\r\nOK\r\n",
    "AT+CEREG?": b"\r\n+CEREG: 1,1\r\n\r\nOK\r\n",
    "AT+CCLK?": b'\r\n+CCLK: "24/08/23,06:39:56+32"\r\n\r\nOK\r\n',
    "AT+NETOPEN": b"\r\nOK\r\n\r\n+NETOPEN: 0\r\n",
    "AT+IPADDR": b"\r\n+IPADDR: 10.4.112.219\r\n\r\nOK\r\n",
}
def a7670_up(extra=None, **kw):
    # a modem that is off: each Sim its own copy of the reply lists (popped as they are used)
    r = dict((k, list(v) if isinstance(v, list) else v) for k, v in A7670_UP.items())
    if extra:
        r.update(extra)
    s = Sim(modem_a7670.A7670(), r, apn="cmnet", **kw)
    s.m.power_on(0)
    s.pump()
    s.run(1300)                      # probes time out -> PWRKEY
    s.feed(b"\r\n*ATREADY: 1\r\n")
    s.run(2000)
    return s
'''
