# The card's runtime: the hardware the board layer made, handed to the sans-I/O cores, driven by
# one loop (firmware/main.py: CardLoop(board.open_board(), config.load(...)).run()).
#
#   loop = CardLoop(hw, cfg, root="/")   hw: a board (board/__init__.py); cfg: config.Config
#   loop.step()                          one turn: interrupts, cores, jobs, then one wait
#   loop.run()                           step() for ever
#
# One turn: read the board's interrupt bits (keys, motion, RI) and the UARTs; feed the cores (keys,
# motion sensor, position policy, GNSS acquisition, battery, modem); carry out their actions on
# the board (GNSS power, modem PWRKEY / DTR / UART); encode uplinks into the outbox and send what
# is due when the modem's data link is up; then ask the scheduler how long to wait and whether
# the board may sleep, and wait (board.idle). The modem sleeps (DTR, DRX) whenever nothing is
# waiting to go out; the GNSS is powered only while the position policy wants a fix.
import board
import ccproto
import gnss
import hwdata
import positions
import scheduler
from battery import Battery
from counter import FileStore, UplinkCounter
from keys import SHORT, SOS, Keys
from lis2dh12 import LIS2DH12, MotionError
from modem import Modem, ModemError
from modem_a7670 import A7670
from outbox import PRIO_CALL, PRIO_ROUTINE, PRIO_SOS, Outbox

FW_VERSION = (0, 3, 0)
_UART_CHUNK = 256
_SENDS_PER_TURN = 4
# How often the loop looks at a working modem (its UART input and the AT engine's timers) and
# at the GNSS while it acquires: a 1 Hz NMEA burst is ~500 bytes at 9600 baud, read well before
# the 512-byte UART buffer fills.
_MODEM_POLL_MS = 100
_GNSS_POLL_MS = 250


def _rand(n):
    import random

    return random.getrandbits(16) % n if n > 0 else 0


class CardLoop:
    def __init__(self, hw, cfg, root="/", gnss_part="gnss_l76k"):
        self.hw = hw
        self.cfg = cfg
        v = cfg.values
        now = hw.now_ms()
        self.problems = list(cfg.problems)
        self.reset_cause = hw.reset_cause()
        self.sched = scheduler.Scheduler(scheduler.timings(v), now)
        hw.watchdog_start(self.sched.t["watchdog_ms"])
        self.keys = Keys(hw.key_count, v["debounce_ms"], v["long_press_ms"], v["stuck_ms"])
        self.keys.start([hw.key_level(k) for k in range(hw.key_count)], now)
        self.motion = None
        if hw.motion_i2c is not None:
            sensor = LIS2DH12(hw.motion_i2c)
            try:
                if sensor.present():
                    sensor.configure(v["motion_threshold_mg"], v["motion_duration_ms"])
                    self.motion = sensor
            except MotionError as exc:
                self.problems.append(str(exc))
        self.positions = positions.PositionPolicy(positions.timings(v), self.motion is not None, now)
        self.gnss = gnss.FixAcquisition(hwdata.load(gnss_part), timeout_ms=v["gnss_timeout_s"] * 1000)
        self.battery = Battery()
        self.modem = Modem(A7670(), hwdata.load(A7670.HW_NAME), apn=v.get("apn", ""))
        self._buf = bytearray(_UART_CHUNK)
        self._pwrkey_release = None  # when to release PWRKEY (ms), or None
        self._sleep_asked = False  # AT+CSCLK sent since the modem last woke
        self.encoder = None
        self.outbox = None
        self.decoder = None
        if cfg.source is not None and "device_id" in v and "device_key" in v:
            import binascii

            key = binascii.unhexlify(v["device_key"])
            self.encoder = ccproto.Encoder(v["device_id"], key)
            self.decoder = ccproto.Decoder(v["device_id"], key)
            self.counter = UplinkCounter(FileStore(root + "counter.bin"))
            self.outbox = Outbox(root + "outbox.log", v["outbox_entries"], v["outbox_bytes"],
                                 v["retry_base_s"] * 1000, v["retry_cap_s"] * 1000, _rand)
        self.unix_at = None  # (unix_s, now_ms) when the time was known
        rtc = hw.rtc_unix()
        if rtc is not None:
            self.unix_at = (rtc, now)
        self.uplinks_made = 0
        self.modem.power_on(now)
        self.uplink("hello", {
            "fw_major": FW_VERSION[0], "fw_minor": FW_VERSION[1], "fw_patch": FW_VERSION[2],
            "reset_cause": self.reset_cause, "config_version": v.get("config_version", 0),
            "modem": A7670.NAME, "downlink_min": 0,
            "motion_sensor": "lis2dh12" if self.motion is not None else "none"}, PRIO_CALL, now)

    # ---- time --------------------------------------------------------------------------------
    def unix(self, now_ms):
        """(Unix seconds now, synced); before any time source: seconds since boot, not synced."""
        if self.unix_at is None:
            return now_ms // 1000, False
        return self.unix_at[0] + (now_ms - self.unix_at[1]) // 1000, True

    # ---- uplinks -----------------------------------------------------------------------------
    def uplink(self, mtype, values, prio, now_ms):
        """Encode a message and persist it in the outbox before anything else happens."""
        if self.outbox is None:
            return False
        unix_s, synced = self.unix(now_ms)
        counter = self.counter.take()
        frame = self.encoder.encode(mtype, values, counter, unix_s, synced)
        self.outbox.append(counter, frame, prio, now_ms)
        self.uplinks_made += 1
        return True

    def _send_due(self, now_ms):
        box = self.outbox
        data = self.modem.data
        if box is None or not len(box) or data.udp_state != "open":
            return
        sent = 0
        for counter in box.due(now_ms, _SENDS_PER_TURN):
            data.udp_send(bytes(box.read(counter)))
            box.on_sent(counter, now_ms)
            sent += 1

    def _downlink(self, payload, now_ms):
        try:
            message = self.decoder.decode(payload)
        except ccproto.ProtoError as exc:
            self.problems.append("downlink: %s" % exc)
            return
        if message.get("type") == "ack":
            self.outbox.on_ack(message["acked"])
        elif message.get("type") == "resync":
            self.counter.resync(message["next_counter"])

    # ---- one turn ----------------------------------------------------------------------------
    def step(self):
        hw = self.hw
        now = hw.now_ms()
        events = hw.take_events()
        for k in range(hw.key_count):
            if events & (board.EV_KEY << k):
                self.keys.edge(k, hw.key_level(k), now)
        if events & board.EV_MOTION and self.motion is not None:
            self.motion.service()
            self.positions.motion(now)
        if events & board.EV_RI:
            self.modem.ri()
        n = hw.modem_read(self._buf)
        if n:
            self.modem.receive_data(bytes(self._buf[:n]))
        n = hw.gnss_read(self._buf)
        if n:
            self.gnss.receive_data(bytes(self._buf[:n]), now)

        for job in self.sched.due(now):
            if job == scheduler.JOB_FEED:
                hw.feed()
            elif job == scheduler.JOB_STATUS:
                self._status(now)
        self.keys.poll(now)
        self._keys(now)
        self.positions.poll(now)
        self._positions(now)
        self.gnss.poll(now)
        self._gnss(now)
        self._battery(now)
        self.modem.tick(now)
        self._modem(now)
        self._send_due(now)
        if self._pwrkey_release is not None and now >= self._pwrkey_release:
            hw.modem_pwrkey(False)
            self._pwrkey_release = None

        deadline = self._deadline()
        quiet = (self.modem.sleeping and not self.gnss.acquiring
                 and not any(self.keys.down(k) for k in range(hw.key_count)))
        ms, sleep = self.sched.plan(hw.now_ms(), deadline, quiet)
        if ms > 0:
            cause = hw.idle(ms, sleep)
            self.sched.woke(cause, hw.now_ms())

    def run(self):
        while True:
            self.step()

    # ---- cores -> board and uplinks --------------------------------------------------------
    def _deadline(self):
        best = None
        # the outbox's retransmissions only while the data link is open (it opens on an event)
        sending = self.outbox is not None and self.modem.data.udp_state == "open"
        for d in (self.keys.next_deadline(), self.positions.next_deadline(), self._pwrkey_release,
                  self.outbox.next_due(self.hw.now_ms()) if sending else None):
            if d is not None and (best is None or d < best):
                best = d
        poll = None
        if self.modem.state != "off" and not self.modem.sleeping:
            poll = _MODEM_POLL_MS  # its UART and timers while it works
        elif self.gnss.acquiring:
            poll = _GNSS_POLL_MS
        if poll is not None:
            soon = self.hw.now_ms() + poll
            if best is None or soon < best:
                best = soon
        return best

    def _keys(self, now):
        ev = self.keys.next_event()
        while ev is not None:
            kind = ev[0]
            if kind == SOS:
                last = self.positions.last_fix()
                self.uplink("sos", {
                    "trigger": "long_press", "lat_e7": last[0] if last else 0,
                    "lon_e7": last[1] if last else 0, "fix": last[2] if last else "none",
                    "fix_age_s": min((now - last[5]) // 1000, 65534) if last else 65535,
                    "battery_pct": self.battery.pct if self.battery.pct is not None else 255},
                    PRIO_SOS, now)
            elif kind == SHORT:
                contact = self.cfg.contact(ev[1] + 1)
                if contact is not None and contact[1] and self.modem.state == "ready":
                    try:
                        self.modem.voice.dial(contact[1])
                    except ModemError as exc:
                        self.problems.append(str(exc))
            ev = self.keys.next_event()

    def _positions(self, now):
        act = self.positions.next_action()
        while act is not None:
            if act[0] == "acquire":
                if not self.gnss.acquiring:
                    self.gnss.start(now)
                    self.positions.acquiring(now)
            elif act[0] == "uplink":
                self.uplink(act[1], act[2], PRIO_ROUTINE, now)
            act = self.positions.next_action()

    def _gnss(self, now):
        hw = self.hw
        ev = self.gnss.next_event()
        while ev is not None:
            if ev == gnss.POWER_ON:
                hw.gnss_power(True)
            elif ev == gnss.POWER_OFF:
                hw.gnss_power(False)
            elif ev == gnss.BACKUP_ON:
                hw.gnss_backup(True)
            elif ev == gnss.BACKUP_OFF:
                hw.gnss_backup(False)
            else:  # a Result
                fix = ev.fix if ev.status == gnss.FIX else None
                if fix is not None and fix.time is not None and self.unix_at is None:
                    self.unix_at = (fix.time, now)
                    hw.set_rtc_unix(fix.time)
                self.positions.fix_result(fix, now, self.unix(now)[0])
                self._positions(now)
            ev = self.gnss.next_event()

    def _battery(self, now):
        hw = self.hw
        self.battery.sample(self.battery.pin_uv_to_mv(hw.battery_uv()), now)
        chrg, stdby = hw.charger_pins()
        self.battery.charger(chrg, stdby, now)
        ev = self.battery.next_event()
        while ev is not None:
            self.uplink("power", {"event": ev[0], "battery_mv": ev[1], "battery_pct": ev[2]},
                        PRIO_ROUTINE, now)
            ev = self.battery.next_event()

    def _status(self, now):
        pct = self.battery.pct
        self.uplink("status", {
            "battery_mv": self.battery.mv or 0, "battery_pct": pct if pct is not None else 255,
            "charging": self.battery.charging, "rssi_dbm": -128,
            "motion_count": self.positions.take_motion_count(),
            "outbox_depth": len(self.outbox) if self.outbox is not None else 0}, PRIO_ROUTINE, now)

    def _modem(self, now):
        hw = self.hw
        m = self.modem
        act = m.next_action()
        while act is not None:
            kind = act[0]
            if kind == "write":
                hw.modem_write(act[1])
            elif kind == "pwrkey":
                hw.modem_pwrkey(True)
                self._pwrkey_release = now + act[1]
            elif kind == "dtr":
                hw.modem_dtr(act[1])
            elif kind == "power_cut":
                hw.modem_power(False)
            act = m.next_action()
        ev = m.next_event()
        while ev is not None:
            kind = ev[0]
            if kind == "time" and self.unix_at is None:
                self.unix_at = (ev[1], now)
                hw.set_rtc_unix(ev[1])
            elif kind in ("awake", "state"):
                self._sleep_asked = False
            elif kind == "udp_recv" and self.decoder is not None:
                self._downlink(ev[1], now)
            elif kind == "ready" and self.outbox is not None:
                try:
                    m.data.udp_open(self.cfg.values["server_host"], self.cfg.values["server_port"])
                except ModemError as exc:
                    self.problems.append(str(exc))
            ev = m.next_event()
        if m.state == "ready" and not m.sleeping and not self._sleep_asked and \
                (self.outbox is None or not len(self.outbox)):
            # nothing waiting to go out: DRX sleep, still reachable for calls and SMS
            self._sleep_asked = True
            try:
                m.sleep()
            except ModemError as exc:
                self.problems.append(str(exc))
