# The card's runtime: the hardware the board layer made, handed to the sans-I/O cores, driven by
# one loop (firmware/main.py: CardLoop(board.open_board(), config.load(...)).run()).
#
#   loop = CardLoop(hw, cfg, root="/")   hw: a board (board/__init__.py); cfg: config.Config
#   loop.step()                          one turn: interrupts, cores, jobs, then one wait
#   loop.run()                           step() for ever
#
# One turn: read the board's interrupt bits (keys, motion, RI) and the UARTs; feed the cores (keys,
# motion sensor, position policy, GNSS acquisition, battery, modem, the card application); carry
# out their actions on the board (GNSS power, modem PWRKEY / DTR / UART, buzzer / vibration /
# LED); encode uplinks into the outbox and send what is due when the modem's data link is up;
# then ask the scheduler how long to wait and whether the board may sleep, and wait (board.idle).
# The modem sleeps (DTR, DRX: still reachable for calls and SMS) whenever nothing is waiting to
# go out and no call or SMS is under way; the GNSS is powered only while a fix is wanted.
#
# What the card does with keys, calls, SMS and downlink commands is cardapp.CardApp's: every key
# event, modem event, fix, battery reading and the commands of each ack go to it, and its actions
# are carried out here (uplinks into the outbox, alerts on the outputs, a fix on request, the
# config re-read, the clock set, a reboot).
import board
import cardapp
import ccproto
import ccspec
import gnss
import hwdata
import positions
import scheduler
from battery import Battery
from counter import FileStore, UplinkCounter
from keys import Keys
from lis2dh12 import LIS2DH12, MotionError
from modem import Modem, ModemError
from modem_a7670 import A7670
from outbox import PRIO_CALL, PRIO_ROUTINE, Outbox

FW_VERSION = (0, 3, 0)
_UART_CHUNK = 256
# One datagram at a time: the next AT+CIPSEND only when the last one finished (sent or failed),
# or after this long without a result (the modem lost it); a full outbox never floods the AT queue.
_SEND_WAIT_MS = 30000
# How often the loop looks at a working modem (its UART input and the AT engine's timers) and
# at the GNSS while it acquires: a 1 Hz NMEA burst is ~500 bytes at 9600 baud, read well before
# the 512-byte UART buffer fills.
_MODEM_POLL_MS = 100
_GNSS_POLL_MS = 250
# The battery's divider and charger pins are read at most this often (not every turn of a loop
# that polls a working modem ten times a second); the status and power events use the latest.
_BATTERY_MS = 10000
COUNTER_FILE = "uplink.cnt"  # the uplink counter record; provisioning writes it there too
OUTBOX_FILE = "outbox.log"
# Alerts on the outputs: a short buzz for every key press taken; while an SOS runs the LED is
# on and the motor pulses; a check-in prompt buzzes and blinks until answered.
_KEY_BUZZ_MS = 120
_PULSE_MS = 500


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
        self.modem = Modem(A7670(), hwdata.load(A7670.HW_NAME), apn=v.get("apn", ""),
                           pin=v.get("sim_pin"), max_data=ccspec.MAX_FRAME)
        self._buf = bytearray(_UART_CHUNK)
        self._pwrkey_release = None  # when to release PWRKEY (ms), or None
        self._sleep_asked = False  # AT+CSCLK sent since the modem last woke
        self._sending_until = None  # a datagram handed to the modem: no next one before its result
        self.encoder = None
        self.outbox = None
        self.decoder = None
        if cfg.source is not None and "device_id" in v and "device_key" in v:
            import binascii

            key = binascii.unhexlify(v["device_key"])
            self.encoder = ccproto.Encoder(v["device_id"], key)
            self.decoder = ccproto.Decoder(v["device_id"], key)
            self.counter = UplinkCounter(FileStore(root + COUNTER_FILE))
            self.outbox = Outbox(root + OUTBOX_FILE, v["outbox_entries"], v["outbox_bytes"],
                                 v["retry_base_s"] * 1000, v["retry_cap_s"] * 1000, _rand)
        self.app = cardapp.CardApp(cfg, self.modem, now)
        self.unix_at = None  # (unix_s, now_ms) when the time was known
        rtc = hw.rtc_unix()
        if rtc is not None:
            self._set_time(rtc, now, False)
        self.uplinks_made = 0
        self._reboot_at = None
        self._battery_due = now
        # alerts: what the outputs show, and until when the key buzz lasts
        self._key_buzz_until = None
        self._sos_alert = False
        self._checkin_alert = False
        self._outputs = [None, None, None]  # buzzer, vibration, led as last set
        self.modem.power_on(now)
        self.uplink("hello", {
            "fw_major": FW_VERSION[0], "fw_minor": FW_VERSION[1], "fw_patch": FW_VERSION[2],
            "reset_cause": self.reset_cause, "config_version": v.get("config_version", 0),
            "modem": A7670.NAME, "downlink_min": 0,
            "motion_sensor": "lis2dh12" if self.motion is not None else "none"}, PRIO_CALL, now)

    # ---- time --------------------------------------------------------------------------------
    def _set_time(self, unix_s, now_ms, set_rtc=True):
        self.unix_at = (unix_s, now_ms)
        self.app.set_clock(unix_s, now_ms)
        if set_rtc:
            self.hw.set_rtc_unix(unix_s)

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
        if self._sending_until is not None and now_ms < self._sending_until:
            return
        self._sending_until = None
        for counter in box.due(now_ms, 1):
            try:
                data.udp_send(bytes(box.read(counter)))
            except Exception as exc:  # the modem's queue or state: try again on a later turn
                self.problems.append("send: %s" % exc)
                return
            box.on_sent(counter, now_ms)
            self._sending_until = now_ms + _SEND_WAIT_MS

    def _downlink(self, payload, now_ms):
        try:
            message = self.decoder.decode(payload)
        except ccproto.ProtoError as exc:
            self.problems.append("downlink: %s" % exc)
            return
        if message.get("type") == "ack":
            self.outbox.on_ack(message["acked"])
            if message.get("commands"):
                self.app.on_commands(message["commands"], now_ms)
                self._app(now_ms)
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
        # the driver's clock first: what RI, the keys or the application start this turn (a
        # wake-up before a dial) times its waits from now, not from the last turn
        self.modem.tick(now)
        if events & board.EV_RI:
            self.modem.ri()
        n = hw.modem_read(self._buf)
        if n:
            self.modem.receive_data(bytes(self._buf[:n]))
        n = hw.gnss_read(self._buf)
        if n:
            self.gnss.receive_data(bytes(self._buf[:n]), now)

        self._battery(now)  # before the jobs: a status reports this turn's reading
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
        self.modem.tick(now)
        self._modem(now)
        self.app.poll(now)
        self._app(now)
        self._modem(now)  # what the application asked of the modem goes out this turn
        self._send_due(now)
        self._modem_actions(now)  # a datagram held for the modem's wake: DTR low now
        self._alerts(now)
        if self._pwrkey_release is not None and now >= self._pwrkey_release:
            hw.modem_pwrkey(False)
            self._pwrkey_release = None
        if self._reboot_at is not None and now >= self._reboot_at:
            hw.reboot()

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
        # (and one at a time: while a datagram is with the modem, its result or _sending_until)
        sending = self.outbox is not None and self.modem.data.udp_state == "open"
        if sending and self._sending_until is not None:
            due = self._sending_until
        else:
            due = self.outbox.next_due(self.hw.now_ms()) if sending else None
        # the driver's own timers too (the wake after DTR low, a command's timeout): a command
        # held for the wake goes out when the UART is ready, not at the loop's next job
        modem_due = self.modem.next_deadline() if self.modem.state != "off" else None
        for d in (self.keys.next_deadline(), self.positions.next_deadline(), self._pwrkey_release, due,
                  self.app.next_deadline(), self._alert_deadline(), self._reboot_at, modem_due):
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
            self.app.on_key(ev, now)
            self._app(now)  # an SOS frame is in the outbox before anything else happens
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
                    self._set_time(fix.time, now)
                self.positions.fix_result(fix, now, self.unix(now)[0])
                last = self.positions.last_fix()
                if last is not None:
                    self.app.on_fix(last[0], last[1], last[2], last[3], last[4], last[5])
                self._positions(now)
            ev = self.gnss.next_event()

    def _battery(self, now):
        if now < self._battery_due:
            return
        self._battery_due = now + _BATTERY_MS
        hw = self.hw
        self.battery.sample(self.battery.pin_uv_to_mv(hw.battery_uv()), now)
        chrg, stdby = hw.charger_pins()
        self.battery.charger(chrg, stdby, now)
        if self.battery.pct is not None:
            self.app.on_battery(self.battery.pct)
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

    def _modem_actions(self, now):
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

    def _modem(self, now):
        m = self.modem
        self._modem_actions(now)
        ev = m.next_event()
        while ev is not None:
            kind = ev[0]
            if kind == "time" and self.unix_at is None and ev[1] is not None:
                self._set_time(ev[1], now)
            elif kind in ("awake", "state"):
                self._sleep_asked = False
            elif kind in ("udp_sent", "udp_send_failed", "udp", "net", "failed", "powered_down"):
                self._sending_until = None  # the datagram's fate is known (or the link gone)
                if kind == "udp" and ev[1] == "open" and self.outbox is not None:
                    self.outbox.retry_all(now)  # a new link: what waited goes now, SOS first
            elif kind == "udp_recv" and self.decoder is not None:
                self._downlink(ev[1], now)
            elif kind == "ready" and self.outbox is not None:
                try:
                    m.data.udp_open(self.cfg.values["server_host"], self.cfg.values["server_port"])
                except ModemError as exc:
                    self.problems.append(str(exc))
            self.app.on_modem_event(ev, now)
            ev = m.next_event()
        self._app(now)
        if m.sleeping and not self.app.idle():
            m.wake()  # a call or an SMS under way: keep the UART awake for its URCs
        offline = m.state == "no_network"
        if (m.state == "ready" or offline) and not m.sleeping and not self._sleep_asked and \
                self.app.idle() and (offline or self.outbox is None or not len(self.outbox)):
            # nothing waiting to go out (or no network to send it on): DRX sleep, still
            # reachable for calls and SMS; out of coverage the modem searches asleep and its
            # +CREG/+CEREG when it finds a network wake the card (RI)
            self._sleep_asked = True
            try:
                m.sleep()
            except ModemError as exc:
                self.problems.append(str(exc))

    # ---- the card application's actions ------------------------------------------------------
    def _app(self, now):
        app = self.app
        act = app.next_action()
        while act is not None:
            kind = act[0]
            if kind == "uplink":
                self.uplink(act[1], act[2], act[3], now)
            elif kind == "alert":
                self._alert(act[1], act[2], now)
            elif kind == "locate":
                self.positions.locate(now)
                self.positions.poll(now)
                self._positions(now)
            elif kind == "config":
                self._new_config(act[1], now)
            elif kind == "set_time":
                self._set_time(act[1], now)
            elif kind == "reboot":
                self._reboot_at = now + act[1] * 1000
            act = app.next_action()

    def _new_config(self, cfg, now):
        """A downlink changed the config (already saved): take up its timings."""
        v = cfg.values
        self.cfg = cfg
        self.positions.t = positions.timings(v)
        self.sched.t = scheduler.timings(v)
        self.gnss.timeout_ms = v["gnss_timeout_s"] * 1000

    # ---- alerts on the outputs ---------------------------------------------------------------
    def _alert(self, kind, on, now):
        if kind == "key":
            self._key_buzz_until = now + _KEY_BUZZ_MS
        elif kind == "sos":
            self._sos_alert = on
        elif kind == "checkin":
            self._checkin_alert = on

    def _alert_deadline(self):
        d = self._key_buzz_until
        if self._sos_alert or self._checkin_alert:
            now = self.hw.now_ms()
            toggle = now - now % _PULSE_MS + _PULSE_MS
            if d is None or toggle < d:
                d = toggle
        return d

    def _alerts(self, now):
        if self._key_buzz_until is not None and now >= self._key_buzz_until:
            self._key_buzz_until = None
        pulse = (now // _PULSE_MS) % 2 == 0
        checkin = self._checkin_alert and pulse
        want = (self._key_buzz_until is not None or checkin,
                (self._sos_alert or self._checkin_alert) and pulse,
                self._sos_alert or checkin)
        out = self._outputs
        hw = self.hw
        if want[0] != out[0]:
            hw.buzzer(want[0])
        if want[1] != out[1]:
            hw.vibration(want[1])
        if want[2] != out[2]:
            hw.led(want[2])
        self._outputs = list(want)
