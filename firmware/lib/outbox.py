# The card's outbox: encoded frames on flash until the receiver acks them (sans-I/O for timing).
#
#   box = Outbox("/outbox.log", max_entries, max_bytes, retry_base_ms, retry_cap_ms, rand)
#   box.append(counter, frame, PRIO_SOS, now_ms)   # persisted before it returns
#   for counter in box.due(now_ms):                # SOS first, then calls, then routine; oldest first
#       send(box.read(counter)); box.on_sent(counter, now_ms)
#   box.on_ack(counter)                            # the only way an entry leaves (or eviction)
#   box.next_due(now_ms)                           # when to wake for the next retransmission
#
# Frames are already encoded and keyed by their frame counter (an int, allocated elsewhere:
# counter.py); the outbox never allocates counters. `rand(n)` is an injected random source
# returning an int in [0, n) (backoff jitter); `fs` an injected filesystem (open, rename,
# remove), the card's own by default.
#
# On flash: one append-only log of records
#     magic u8 | kind u8 | body length u16 LE | body | crc32 u32 LE (over kind, length, body)
#     kind APPEND: counter u32 LE | priority u8 | frame      kind REMOVE: counter u32 LE | reason u8
# A power cut tears at most the record being written: opening scans the log up to the first
# record that is incomplete or fails its CRC, keeps everything before it and rewrites the log
# without the torn tail. Rewrites (recovery, compaction of removed records) go to a new file that
# is flushed and closed before it replaces the log by rename, so a cut leaves the old log or the
# new one. RAM holds an index (counter, priority, offset, length, retry state per entry), never
# the frames: `read` loads one frame into a preallocated buffer.
import binascii
import struct

import cardfs
import ccspec

try:
    from micropython import const
except ImportError:  # CPython (host tools)

    def const(x):
        return x


# Priority classes: lower is more urgent (sent first). SOS and call records are never evicted.
PRIO_SOS = const(0)
PRIO_CALL = const(1)
PRIO_ROUTINE = const(2)
_PRIOS = const(3)

REASON_ACKED = const(0)
REASON_DROPPED = const(1)

_MAGIC = const(0xC5)
_APPEND = const(1)
_REMOVE = const(2)
_HEAD = const(4)
_CRC = const(4)
_APPEND_FIXED = const(5)  # counter + priority
_REMOVE_BODY = const(5)  # counter + reason
_MAX_BODY = _APPEND_FIXED + ccspec.MAX_FRAME
_MAX_RECORD = _HEAD + _MAX_BODY + _CRC
# Backoff jitter: a retry waits between (100 - JITTER_PCT)% and 100% of its exponential delay,
# so cards that lost the network together do not all retry in the same second.
JITTER_PCT = const(25)
# Compaction once removed records take more room than this and more than the live ones.
_COMPACT_MIN_BYTES = const(4096)


class OutboxError(Exception):
    """The outbox cannot do what was asked (says what and why)."""


class OutboxFull(OutboxError):
    """No room for a frame even after evicting every routine report."""


def record_size(frame_len):
    """Bytes one APPEND record of a frame of `frame_len` bytes takes on flash."""
    return _HEAD + _APPEND_FIXED + frame_len + _CRC


class Outbox:
    def __init__(self, path, max_entries, max_bytes, retry_base_ms, retry_cap_ms, rand, fs=None):
        if max_entries < 1 or max_bytes < record_size(ccspec.MAX_FRAME):
            raise OutboxError("outbox bounds: at least 1 entry and %d bytes (one largest frame) "
                              "are needed, got %d entries, %d bytes"
                              % (record_size(ccspec.MAX_FRAME), max_entries, max_bytes))
        if retry_base_ms < 1 or retry_cap_ms < retry_base_ms:
            raise OutboxError("outbox retry: 1 <= retry_base_ms <= retry_cap_ms needed, got %d, %d"
                              % (retry_base_ms, retry_cap_ms))
        self.path = path
        self._tmp = path + ".new"
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self.retry_base_ms = retry_base_ms
        self.retry_cap_ms = retry_cap_ms
        self._rand = rand
        self._fs = fs if fs is not None else cardfs.OsFs()
        self._buf = bytearray(_MAX_RECORD)
        self._mv = memoryview(self._buf)
        # Index, in append order.
        self._ctr = []
        self._prio = []
        self._off = []  # file offset of the frame
        self._len = []  # frame length
        self._tries = []
        self._due = []
        self.live_bytes = 0  # bytes the live entries' records take (what compaction keeps)
        self.file_bytes = 0
        # Counters for the status report and the log.
        self.evicted = 0  # routine reports dropped to make room
        self.refused = 0  # appends refused (OutboxFull)
        self.unknown_acks = 0  # acks of counters not in the outbox (duplicates, late acks)
        self.torn_bytes = 0  # bytes of torn or corrupt tail discarded when opening
        self.compactions = 0
        self._f = None
        self._open()

    # ------------------------------------------------------------------------------ queries

    def __len__(self):
        return len(self._ctr)

    def counters(self):
        """Counters of the entries, in append order."""
        return list(self._ctr)

    def priority(self, counter):
        return self._prio[self._index(counter)]

    def read(self, counter):
        """The frame of `counter` as a memoryview of a buffer the next outbox call reuses."""
        i = self._index(counter)
        n = self._len[i]
        f = self._f
        f.seek(self._off[i])
        mv = self._mv[:n]
        got = f.readinto(mv)
        if got != n:
            raise OutboxError("outbox %s: frame %d reads %r of %d bytes" % (self.path, counter, got, n))
        return mv

    def next_due(self, now_ms):
        """The earliest time (ms) an entry is due (now_ms if one is already due), None if empty."""
        if not self._due:
            return None
        t = min(self._due)
        return now_ms if t < now_ms else t

    def due(self, now_ms, limit=0):
        """Counters due at now_ms: SOS first, then call records, then routine; oldest first within
        a class. At most `limit` of them (0: all)."""
        out = []
        for p in range(_PRIOS):
            prio = self._prio
            dues = self._due
            for i in range(len(prio)):
                if prio[i] == p and dues[i] <= now_ms:
                    out.append(self._ctr[i])
                    if len(out) == limit:
                        return out
        return out

    # ------------------------------------------------------------------------------ changes

    def append(self, counter, frame, prio, now_ms):
        """Persist `frame` under `counter`; it is due at once. Evicts the oldest routine reports
        if the bounds need it (returns how many); raises OutboxFull if even that is not enough."""
        n = len(frame)
        if type(counter) is not int or not 0 <= counter <= 0xFFFFFFFF:
            raise OutboxError("outbox append: counter %r is not a u32" % (counter,))
        if type(prio) is not int or not 0 <= prio < _PRIOS:
            raise OutboxError("outbox append: priority %r is not 0 (SOS), 1 (call), 2 (routine)" % (prio,))
        if not 0 < n <= ccspec.MAX_FRAME:
            raise OutboxError("outbox append: frame of %d bytes (1..%d)" % (n, ccspec.MAX_FRAME))
        if counter in self._ctr:
            raise OutboxError("outbox append: counter %d is already queued" % counter)
        size = record_size(n)
        # Which routine entries must go, oldest first; nothing is written unless it all fits.
        entries = len(self._ctr)
        room = self.live_bytes
        victims = 0
        i = 0
        while entries + 1 > self.max_entries or room + size > self.max_bytes:
            while i < len(self._prio) and self._prio[i] != PRIO_ROUTINE:
                i += 1
            if i == len(self._prio):
                i = -1
                break
            entries -= 1
            room -= record_size(self._len[i])
            victims += 1
            i += 1
        if i < 0:
            self.refused += 1
            raise OutboxFull("outbox full: %d entries, %d of %d bytes; evicting every routine "
                             "report (%d) frees too little; frame %d (priority %d) not stored"
                             % (len(self._ctr), self.live_bytes, self.max_bytes, victims, counter,
                                prio))
        dropped = 0
        while dropped < victims:
            j = self._prio.index(PRIO_ROUTINE)
            self._remove(j, REASON_DROPPED)
            self.evicted += 1
            dropped += 1
        off = self._write_append(counter, prio, frame)
        self._add(counter, prio, off, n, now_ms)
        return victims

    def on_sent(self, counter, now_ms):
        """`counter` was handed to the modem at now_ms: schedule its retransmission (exponential
        backoff from retry_base_ms, capped at retry_cap_ms, jittered down by up to JITTER_PCT%)."""
        i = self._index(counter)
        tries = self._tries[i] + 1
        self._tries[i] = tries
        delay = self.retry_base_ms
        cap = self.retry_cap_ms
        while tries > 1 and delay < cap:
            delay += delay
            tries -= 1
        if delay > cap:
            delay = cap
        spread = delay * JITTER_PCT // 100
        if spread > 0:
            delay -= self._rand(spread + 1)
        self._due[i] = now_ms + delay

    def retry_all(self, now_ms):
        """Every entry due at now_ms (the link is back: backoffs timed for a dead link no
        longer apply), so due() hands them out in priority order, SOS first."""
        dues = self._due
        for i in range(len(dues)):
            if dues[i] > now_ms:
                dues[i] = now_ms

    def attempts(self, counter):
        return self._tries[self._index(counter)]

    def on_ack(self, counter):
        """The receiver acked `counter`: the entry leaves (persisted). False if it was not queued."""
        try:
            i = self._ctr.index(counter)
        except ValueError:
            self.unknown_acks += 1
            return False
        self._remove(i, REASON_ACKED)
        self._maybe_compact()
        return True

    def close(self):
        if self._f is not None:
            self._f.close()
            self._f = None

    def compact(self):
        """Rewrite the log with the live entries only (power-loss safe)."""
        self._rewrite()

    # ---------------------------------------------------------------------------- internals

    def _index(self, counter):
        try:
            return self._ctr.index(counter)
        except ValueError:
            raise OutboxError("outbox: no frame with counter %r" % (counter,))

    def _add(self, counter, prio, off, n, now_ms):
        self._ctr.append(counter)
        self._prio.append(prio)
        self._off.append(off)
        self._len.append(n)
        self._tries.append(0)
        self._due.append(now_ms)
        self.live_bytes += record_size(n)

    def _drop_index(self, i):
        self.live_bytes -= record_size(self._len[i])
        self._ctr.pop(i)
        self._prio.pop(i)
        self._off.pop(i)
        self._len.pop(i)
        self._tries.pop(i)
        self._due.pop(i)

    def _remove(self, i, reason):
        buf = self._buf
        struct.pack_into("<BBHIB", buf, 0, _MAGIC, _REMOVE, _REMOVE_BODY, self._ctr[i], reason)
        self._write(_HEAD + _REMOVE_BODY)
        self._drop_index(i)

    def _write_append(self, counter, prio, frame):
        n = len(frame)
        buf = self._buf
        struct.pack_into("<BBHIB", buf, 0, _MAGIC, _APPEND, _APPEND_FIXED + n, counter, prio)
        self._mv[_HEAD + _APPEND_FIXED:_HEAD + _APPEND_FIXED + n] = frame
        off = self.file_bytes + _HEAD + _APPEND_FIXED
        self._write(_HEAD + _APPEND_FIXED + n)
        return off

    def _seal(self, n):
        """Put the CRC after the n bytes of header + body in the buffer; the record's size."""
        crc = binascii.crc32(self._mv[1:n])
        struct.pack_into("<I", self._buf, n, crc)
        return n + _CRC

    def _write(self, n):
        size = self._seal(n)
        f = self._f
        try:
            f.seek(self.file_bytes)
            f.write(self._mv[:size])
            f.flush()
        except OSError as e:
            # The record may be torn: the log on flash is what a reopen makes of it.
            self._reload()
            raise OutboxError("outbox %s: write failed (%s); reopened with %d entries"
                              % (self.path, e, len(self._ctr)))
        self.file_bytes += size

    def _reload(self):
        try:
            self.close()
        except OSError:
            pass
        self._f = None
        self._open()

    def _maybe_compact(self):
        dead = self.file_bytes - self.live_bytes
        if dead > _COMPACT_MIN_BYTES and dead > self.live_bytes:
            self._rewrite()

    def _open(self):
        fs = self._fs
        # A rewrite interrupted before its rename leaves a temporary file: the log is still whole
        # unless the log was already removed (filesystems whose rename does not replace), in
        # which case the temporary file is complete.
        try:
            fs.open(self.path, "rb").close()
            have_log = True
        except OSError:
            have_log = False
        try:
            fs.open(self._tmp, "rb").close()
            have_tmp = True
        except OSError:
            have_tmp = False
        if have_tmp:
            if have_log:
                fs.remove(self._tmp)
            else:
                fs.rename(self._tmp, self.path)
                have_log = True
        if not have_log:
            fs.open(self.path, "wb").close()
        self._ctr = []
        self._prio = []
        self._off = []
        self._len = []
        self._tries = []
        self._due = []
        self.live_bytes = 0
        self._f = fs.open(self.path, "r+b")
        good, size = self._scan()
        self.file_bytes = good
        if good < size:
            self.torn_bytes += size - good
            self._rewrite()

    def _scan(self):
        """Index the log; (end of the last good record, file size)."""
        f = self._f
        buf = self._buf
        mv = self._mv
        pos = 0
        while True:
            f.seek(pos)
            got = f.readinto(mv[:_HEAD])
            if got != _HEAD:
                break
            magic, kind, blen = struct.unpack_from("<BBH", buf, 0)
            if magic != _MAGIC or blen > _MAX_BODY:
                break
            if kind == _APPEND:
                if blen <= _APPEND_FIXED:
                    break
            elif kind == _REMOVE:
                if blen != _REMOVE_BODY:
                    break
            else:
                break
            want = blen + _CRC
            got = f.readinto(mv[_HEAD:_HEAD + want])
            if got != want:
                break
            end = _HEAD + blen
            if binascii.crc32(mv[1:end]) != struct.unpack_from("<I", buf, end)[0]:
                break
            counter, b = struct.unpack_from("<IB", buf, _HEAD)
            if kind == _APPEND:
                if b < _PRIOS and counter not in self._ctr:
                    self._add(counter, b, pos + _HEAD + _APPEND_FIXED, blen - _APPEND_FIXED, 0)
            else:
                try:
                    self._drop_index(self._ctr.index(counter))
                except ValueError:
                    pass
            pos += _HEAD + blen + _CRC
        f.seek(0, 2)
        return pos, f.tell()

    def _rewrite(self):
        fs = self._fs
        old = self._f
        new = fs.open(self._tmp, "wb")
        pos = 0
        offs = []
        done = False
        try:
            for i in range(len(self._ctr)):
                n = self._len[i]
                old.seek(self._off[i])
                mv = self._mv
                if old.readinto(mv[_HEAD + _APPEND_FIXED:_HEAD + _APPEND_FIXED + n]) != n:
                    raise OutboxError("outbox %s: frame %d unreadable during rewrite"
                                      % (self.path, self._ctr[i]))
                struct.pack_into("<BBHIB", self._buf, 0, _MAGIC, _APPEND, _APPEND_FIXED + n,
                                 self._ctr[i], self._prio[i])
                size = self._seal(_HEAD + _APPEND_FIXED + n)
                new.write(mv[:size])
                offs.append(pos + _HEAD + _APPEND_FIXED)
                pos += size
            new.flush()
            done = True
        finally:
            new.close()
            if not done:
                fs.remove(self._tmp)  # the log is untouched: it stays the outbox
        old.close()
        self._f = None
        try:
            fs.rename(self._tmp, self.path)
        except OSError:
            # A filesystem whose rename does not replace (FAT): the complete new file stays and
            # _open finishes the job after a cut between these two steps.
            fs.remove(self.path)
            fs.rename(self._tmp, self.path)
        self._f = fs.open(self.path, "r+b")
        self._off = offs
        self.file_bytes = pos
        self.compactions += 1
