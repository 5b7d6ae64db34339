# The card's one event loop, sans-I/O: which periodic jobs are due, how long the loop may wait
# and whether it may sleep, on an injected clock (the board's now_ms, which never wraps).
#
#   sched = Scheduler(timings(cfg_values), now_ms)
#   sched.woke(cause, now_ms)         what ended the last wait (board.WAKE_*): counted
#   for job in sched.due(now_ms): ... JOB_STATUS (send a status frame), JOB_FEED (feed the
#                                     watchdog); each job's next time is set as it is handed out
#   ms, sleep = sched.plan(now_ms, deadline, quiet)
#       deadline: the earliest next_deadline() of the cores (None: none); quiet: True when the
#       modem is in DRX sleep (DTR high, nothing to send), the GNSS is off and no key is down.
#       ms: how long to wait (0: go round again at once), never past the watchdog's feed time;
#       sleep: light sleep allowed (only when quiet and the wait is worth a sleep's entry/exit)
#
# Every timing comes from the config (status_s, watchdog_s) or from the cores' own deadlines;
# the figures here are floors that keep the loop sane with any config.

try:
    from micropython import const
except ImportError:  # CPython (host tools)

    def const(x):
        return x


JOB_STATUS = "status"
JOB_FEED = "feed"
MIN_SLEEP_MS = const(20)  # below this a light sleep's entry and exit cost more than they save


class SchedulerError(ValueError):
    """Timings that cannot work (says which)."""


def timings(values):
    """status_ms, feed_ms (half the watchdog timeout: a late loop is fed before it bites) and
    watchdog_ms from config values (status_s, watchdog_s)."""
    out = {}
    for name in ("status_s", "watchdog_s"):
        value = values.get(name)
        if not isinstance(value, int) or value < 1:
            raise SchedulerError("scheduler: config value %s must be a positive integer, got %r"
                                 % (name, value))
    out["status_ms"] = values["status_s"] * 1000
    out["watchdog_ms"] = values["watchdog_s"] * 1000
    out["feed_ms"] = out["watchdog_ms"] // 2
    return out


class Scheduler:
    def __init__(self, timings, now_ms):
        self.t = timings
        # the first status soon after boot (the hello goes first), then every status_ms
        self._status_due = now_ms
        self._feed_due = now_ms
        self.wakes = {}
        self.loops = 0
        self.sleeps = 0

    def woke(self, cause, now_ms):
        self.wakes[cause] = self.wakes.get(cause, 0) + 1

    def due(self, now_ms):
        self.loops += 1
        jobs = []
        if now_ms >= self._feed_due:
            self._feed_due = now_ms + self.t["feed_ms"]
            jobs.append(JOB_FEED)
        if now_ms >= self._status_due:
            self._status_due = now_ms + self.t["status_ms"]
            jobs.append(JOB_STATUS)
        return jobs

    def status_now(self, now_ms):
        """Send the next status at once (a power event, a config change)."""
        self._status_due = now_ms

    def next_deadline(self):
        return self._status_due if self._status_due < self._feed_due else self._feed_due

    def plan(self, now_ms, deadline, quiet):
        until = self.next_deadline()
        if deadline is not None and deadline < until:
            until = deadline
        ms = until - now_ms
        if ms <= 0:
            return 0, False
        sleep = quiet and ms >= MIN_SLEEP_MS
        if sleep:
            self.sleeps += 1
        return ms, sleep
