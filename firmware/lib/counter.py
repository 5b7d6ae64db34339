# Frame counters that survive reboots without a flash write per frame (protocol: docs/protocol.md,
# "Counters across reboots"). Sans-I/O core over an injected store (load() -> bytes or None,
# save(bytes)); FileStore is the thin layer over a filesystem (temp file + rename).
#
# A BlockCounter persists one number, `limit`: no counter below it may be taken as new (all may
# have been used). Claiming a counter at or above `limit` first persists limit = counter + block,
# so flash is written once per `block` counters, and a reboot, which starts from the persisted
# limit, never reuses a counter.
import struct
from binascii import crc32

try:
    from micropython import const
except ImportError:  # CPython, for tooling only
    def const(x):
        return x

_MAGIC = b"ccnt"
_FORMAT = ">4sII"  # magic, limit, crc32 of the first 8 bytes
_RECORD_LEN = const(12)
_U32_MAX = 0xFFFFFFFF
DEFAULT_BLOCK = const(256)
_ENOENT = const(2)

OK = "ok"
MISSING = "missing"  # no record: a new card (or a lost file)
CORRUPT = "corrupt"  # a record that does not check out: started from 0


class CounterExhausted(Exception):
    """The 32-bit counter space is used up: the card needs a new key (reprovisioning)."""


def encode_record(limit):
    head = struct.pack(">4sI", _MAGIC, limit)
    return head + struct.pack(">I", crc32(head) & _U32_MAX)


def decode_record(data):
    # The limit in a record, or None when it is not a valid record.
    if data is None or len(data) != _RECORD_LEN:
        return None
    magic, limit, check = struct.unpack(_FORMAT, data)
    if magic != _MAGIC or check != crc32(data[:8]) & _U32_MAX:
        return None
    return limit


class BlockCounter:
    def __init__(self, store, block=DEFAULT_BLOCK):
        if block < 1:
            raise ValueError("block must be at least 1")
        self.store = store
        self.block = block
        data = store.load()
        limit = decode_record(data)
        if limit is None:
            self.status = MISSING if data is None else CORRUPT
            limit = 0
        else:
            self.status = OK
        self.start = limit  # the limit found at boot
        self.limit = limit
        self.writes = 0

    def claim(self, counter):
        # Persist before `counter` is used: afterwards limit > counter.
        if counter > _U32_MAX:
            raise CounterExhausted("counter %d is beyond 32 bits" % counter)
        if counter >= self.limit:
            limit = counter + self.block
            if limit > _U32_MAX:
                limit = _U32_MAX if counter < _U32_MAX else counter + 1
            self.store.save(encode_record(limit))
            self.limit = limit
            self.writes += 1


class UplinkCounter:
    """The card's uplink frame counter: `take()` never returns a value twice, across reboots.
    At boot it jumps to the persisted limit and reserves the next block at once."""

    def __init__(self, store, block=DEFAULT_BLOCK):
        self.blocks = BlockCounter(store, block)
        self.next = self.blocks.start
        self.blocks.claim(self.next)

    @property
    def status(self):
        return self.blocks.status

    def take(self):
        counter = self.next
        self.blocks.claim(counter)
        self.next = counter + 1
        return counter

    def resync(self, next_counter):
        # The host's `resync`: continue from `next_counter` (never go back).
        if next_counter > self.next:
            self.next = next_counter
            self.blocks.claim(next_counter)


class DownlinkGuard:
    """The downlink counters the card has applied: each at most once, across reboots. `lowest`
    is the smallest counter it may still apply (told to the host in `hello` as downlink_min);
    `claim(counter)` persists before the downlink is applied, False for one below `lowest`."""

    def __init__(self, store, block=DEFAULT_BLOCK):
        self.blocks = BlockCounter(store, block)
        self.lowest = self.blocks.start

    @property
    def status(self):
        return self.blocks.status

    def claim(self, counter):
        if counter < self.lowest:
            return False
        self.blocks.claim(counter)
        self.lowest = counter + 1
        return True


class FileStore:
    """One record in a file, replaced atomically: written to `path + ".tmp"`, then renamed over
    `path` (a power cut leaves the old record or the new one, never half of one)."""

    def __init__(self, path, fs=None, opener=open):
        if fs is None:
            import os as fs
        self.path = path
        self.temp = path + ".tmp"
        self.fs = fs
        self.open = opener

    def load(self):
        # The record's bytes; None when there is no file; b"" when it cannot be read (corrupt).
        try:
            with self.open(self.path, "rb") as handle:
                return handle.read(64)
        except OSError as exc:
            return None if exc.args and exc.args[0] == _ENOENT else b""

    def save(self, data):
        with self.open(self.temp, "wb") as handle:
            handle.write(data)
            handle.flush()
        self.fs.rename(self.temp, self.path)
