# Packet data for modem.Modem: the bearer (PDP context) and one UDP socket. The profile knows
# the vendor's commands (A7670 AT+NETOPEN / AT+CIPOPEN, EC800M AT+QIACT / AT+QIOPEN) and reports
# back through net_pending / net_result / udp_result / udp_received / send_result.
#
# Events: ("net", up, detail), ("udp", "open"|"closed"|"failed", detail), ("udp_sent", n),
# ("udp_send_failed", status, err), ("udp_recv", payload, remote).
from modem import ModemError


class Data:
    def __init__(self, modem):
        self.m = modem
        self.net_up = False
        self.ip = None
        self.udp_state = "closed"
        self.udp_remote = None
        self.recv_from = None     # "ip:port" announced before the next datagram (A7670)
        self._udp_wanted = None   # (host, port) to open once the bearer is up
        self._t_net = modem.add_timer(self._on_net_timer)

    # ---- application-facing ------------------------------------------------------------------
    def udp_open(self, host, port):
        m = self.m
        if m.state not in ("ready", "net"):
            raise ModemError("udp_open in state %s: the modem is not up" % m.state)
        self.udp_remote = (host, port)
        if not self.net_up:
            self._udp_wanted = (host, port)
            m._set_state("net")
            m.p.open_net(m, m.apn)
            return
        m.p.udp_open(m, host, port)

    def udp_send(self, payload):
        if self.udp_state != "open":
            raise ModemError("udp_send with the socket %s; call udp_open first" % self.udp_state)
        if not payload:
            raise ModemError("udp_send of an empty datagram")
        self.m.p.udp_send(self.m, bytes(payload))

    def udp_close(self):
        self.m.p.udp_close(self.m)

    # ---- for the core ------------------------------------------------------------------------
    def open_net(self):
        self.m.p.open_net(self.m, self.m.apn)

    def lost(self, reason):
        """The modem's session ended; reason None: quietly (the core reports why)."""
        if reason is not None:
            if self.udp_state != "closed":
                self.udp_result("closed", reason)
            if self.net_up:
                self.net_up = False
                self.m.emit(("net", False, reason))
        self.net_up = False
        self.udp_state = "closed"
        self.m.cancel(self._t_net)

    # ---- for profiles ------------------------------------------------------------------------
    def net_pending(self, ms):
        """A bearer activation is under way; fail it if no result within ms."""
        self.m.timer(self._t_net, ms)

    def net_activating(self):
        """Whether a bearer activation is under way (its URC result is expected)."""
        return self.m.state == "net" or self.m.pending(self._t_net)

    def net_result(self, up, detail=None):
        """The packet-data bearer came up (detail = IP) or failed/went down."""
        m = self.m
        m.cancel(self._t_net)
        self.net_up = up
        if up:
            self.ip = detail
        else:
            self.udp_state = "closed"
        m.emit(("net", up, detail))
        if m.state == "net":
            m.net_settled()
            if self._udp_wanted is not None and up:
                host, port = self._udp_wanted
                self._udp_wanted = None
                m.p.udp_open(m, host, port)

    def udp_result(self, state, detail=None):
        self.udp_state = "open" if state == "open" else "closed"
        self.m.emit(("udp", state, detail))

    def udp_received(self, payload, remote=None):
        self.m.emit(("udp_recv", payload, remote or self.recv_from))
        self.recv_from = None

    def send_result(self, sent, status=None, err=None):
        """A datagram went out (sent: bytes) or not (sent < 0: status, err say why)."""
        if sent < 0:
            self.m.emit(("udp_send_failed", status, err))
        else:
            self.m.emit(("udp_sent", sent))

    def _on_net_timer(self):
        self.net_result(False, "timeout")
