# The card's configuration: one JSON file on flash, written at provisioning.
#
#   cfg = config.load("/config.json")   # never raises
#   cfg.ok          every field valid (problems may still list unknown fields)
#   cfg.safe_mode   a required field is missing or bad, or the file is missing or unreadable:
#                   the card cannot reach its server, but still calls every contact it could read
#   cfg.problems    ["where: what is wrong, why, what to do", ...], one per problem
#   cfg.bad_fields  names of the fields that were bad (for the problem report)
#   cfg.values      every field, defaults filled in for optional fields absent or bad
#   cfg.contacts    [(key, name, number)] of the contacts that passed, by key
#   config.save(values, "/config.json")  # validates, writes a temporary file, flushes, reads it
#                                        # back, renames it over the old one (a reset leaves the
#                                        # old file or the new one)
#
# The protocol defines what a contact's key and number may be (ccspec.FIELDS "key" and "number",
# ccspec.TEXT_RULES, MAX_STR): the same rules the card's encoder and the host apply, so a
# provisioned contact can always be sent in a frame. Device keys are what cccrypto accepts.
import json

import cardfs
import ccspec

# Optional fields and their defaults: the one definition (provisioning tools read it from here).
# Times in the unit their name says. A default is chosen for an elder's card that must last a
# week: see each comment.
DEFAULTS = {
    "config_version": 0,
    "apn": "",  # empty: the modem's own APN from the SIM
    "sim_pin": None,  # the SIM's PIN when it has one enabled (digits), None: no PIN
    "owner_name": "",  # the elder's name, for the SOS SMS to the family ("" : not given)
    "grid_worker_key": None,  # the key whose contact is the village grid worker (None: none)
    "position_s": 900,  # a position every 15 min while still: the host's inactivity logic
    "status_s": 3600,  # battery, signal and motion counts hourly
    "gnss_timeout_s": 120,  # longest fix attempt: 4x the receivers' cold-start TTFF
    "quiet_hours": None,  # [start_hour, end_hour] with no buzzer for routine prompts; None: none
    "auto_answer_rings": 3,  # calls from a contact answer themselves after 3 rings; 0: never
    "sos_rounds": 3,  # the SOS cascade calls every contact up to 3 times
    "long_press_ms": 2000,  # a 2 s hold of any key is SOS
    "debounce_ms": 30,  # key contact bounce of dome and tact switches settles within ~10 ms
    "stuck_ms": 30000,  # a key down this long is reported stuck, once
    "motion_threshold_mg": 96,  # any-motion threshold: above table vibration, below a step
    "motion_duration_ms": 40,  # the motion must last this long (filters a single knock)
    "moving_position_s": 60,  # moving mode: a fix a minute, batched into track frames
    "moving_quiet_s": 300,  # moving mode ends after 5 min without motion
    "motion_burst_count": 3,  # this many motion interrupts ...
    "motion_burst_s": 30,  # ... within 30 s start moving mode (a walk, not a knock)
    "track_points": 10,  # fixes per track frame (10 min of walking in one frame)
    "watchdog_s": 60,  # the watchdog bites after 60 s without a feed (the loop feeds at half)
    "outbox_entries": 64,
    "outbox_bytes": 16384,  # flash the outbox may take (its log compacts at about twice this)
    "retry_base_s": 30,  # first retransmission after 30 s, doubling ...
    "retry_cap_s": 1800,  # ... up to every 30 min
}
REQUIRED = ("device_id", "device_key", "server_host", "server_port", "contacts")

# (minimum, maximum) of the integer fields; None: no such bound.
_INT_RANGES = {
    "config_version": (0, 0xFFFF),  # the hello's config_version is a u16
    "server_port": (1, 65535),
    "position_s": (10, 7 * 86400),
    "status_s": (60, 7 * 86400),
    "gnss_timeout_s": (10, 1800),
    "auto_answer_rings": (0, 20),
    "sos_rounds": (1, 10),
    "long_press_ms": (500, 10000),
    "debounce_ms": (1, 200),
    "stuck_ms": (5000, 600000),
    "motion_threshold_mg": (16, 2000),
    "motion_duration_ms": (0, 5000),
    "moving_position_s": (10, 3600),
    "moving_quiet_s": (60, 86400),
    "motion_burst_count": (1, 100),
    "motion_burst_s": (1, 600),
    "track_points": (1, ccspec.MAX_TRACK_POINTS),
    "watchdog_s": (10, 600),
    "outbox_entries": (4, 1024),
    "outbox_bytes": (2048, 1048576),
    "retry_base_s": (1, 3600),
    "retry_cap_s": (1, 86400),
}

_KEY_RULE = ccspec.FIELDS["key"]
KEY_MIN = _KEY_RULE["min"]
KEY_MAX = _KEY_RULE["max"]
_PHONE_FIRST, _PHONE_ANY = ccspec.TEXT_RULES[ccspec.FIELDS["number"]["text"]]


def _device_bits():
    for name, kind, _doc in ccspec.HEADER:
        if name == "device":
            return int(kind[1:])
    raise ImportError("protocol header has no device field")


_DEVICE_MAX = (1 << _device_bits()) - 1


class ConfigError(ValueError):
    """A configuration that cannot be saved (every problem listed in `problems`)."""

    def __init__(self, problems):
        super().__init__("; ".join(problems))
        self.problems = problems


class Config:
    def __init__(self):
        self.values = {}
        self.contacts = []
        self.problems = []
        self.bad_fields = []
        self.safe_mode = False
        self.source = None  # the path the values came from (None: nothing readable)

    @property
    def ok(self):
        return not self.safe_mode and not self.bad_fields

    def contact(self, key):
        """(name, number) behind a key, or None."""
        for k, name, number in self.contacts:
            if k == key:
                return name, number
        return None

    def _bad(self, field, why):
        self.problems.append("%s: %s" % (field, why))
        top = field.split("[")[0].split(".")[0]
        if top not in self.bad_fields:
            self.bad_fields.append(top)


def _is_int(v):
    return isinstance(v, int) and not isinstance(v, bool)


def _text(value, limit=ccspec.MAX_STR):
    """A problem with a text field, or None."""
    if not isinstance(value, str):
        return "expected text, got %s" % _kind(value)
    n = len(value.encode("utf-8"))
    if n > limit:
        return "%d bytes of UTF-8, the card keeps at most %d" % (n, limit)
    return None


def _kind(value):
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true/false"
    if _is_int(value):
        return "number %d" % value
    if isinstance(value, str):
        return "text %r" % value
    return type(value).__name__


def number_problem(number):
    """Why `number` cannot be a contact's number (the protocol's phone rule), or None."""
    p = _text(number)
    if p:
        return p
    for i in range(len(number)):
        c = number[i]
        if c in _PHONE_ANY or (i == 0 and c in _PHONE_FIRST):
            continue
        return ("%r at position %d is not allowed: digits only, with an optional leading %s"
                % (c, i, " or ".join(_PHONE_FIRST) if _PHONE_FIRST else "nothing"))
    return None


def _check_contact(cfg, i, item, seen):
    where = "contacts[%d]" % i
    if not isinstance(item, dict):
        cfg._bad(where, "expected an object {key, name, number}, got %s" % _kind(item))
        return None
    key = item.get("key")
    if not _is_int(key) or not KEY_MIN <= key <= KEY_MAX:
        cfg._bad(where + ".key", "%s is not a key number %d..%d" % (_kind(key), KEY_MIN, KEY_MAX))
        return None
    if key in seen:
        cfg._bad(where + ".key", "key %d is given twice; the first contact for it is kept" % key)
        return None
    number = item.get("number")
    p = number_problem(number)
    if p:
        cfg._bad(where + ".number", p)
        return None
    name = item.get("name", "")
    p = _text(name)
    if p:
        cfg._bad(where + ".name", p + " (the contact is kept without a name)")
        name = ""
    for extra in item:
        if extra not in ("key", "name", "number"):
            cfg.problems.append("%s.%s: unknown field, ignored (key, name, number expected)"
                                % (where, extra))
    seen.append(key)
    return (key, name, number)


def _check_contacts(cfg, value):
    if not isinstance(value, list):
        cfg._bad("contacts", "expected a list of up to %d contacts, got %s"
                 % (ccspec.MAX_CONTACTS, _kind(value)))
        return []
    if len(value) > ccspec.MAX_CONTACTS:
        cfg._bad("contacts", "%d contacts, at most %d (one per key); the first %d are used"
                 % (len(value), ccspec.MAX_CONTACTS, ccspec.MAX_CONTACTS))
    out = []
    seen = []
    for i in range(min(len(value), ccspec.MAX_CONTACTS)):
        c = _check_contact(cfg, i, value[i], seen)
        if c is not None:
            out.append(c)
    out.sort(key=lambda c: c[0])
    return out


def _check_field(name, value):
    """Why `value` is not valid for field `name` (other than contacts), or None."""
    if name == "device_id":
        if not _is_int(value) or not 0 < value <= _DEVICE_MAX:
            return "%s is not a device id (the modem's IMEI as a number, 1..%d)" % (_kind(value), _DEVICE_MAX)
    elif name == "device_key":
        if not isinstance(value, str):
            return "expected the device key as hex text, got %s" % _kind(value)
        try:
            import binascii

            raw = binascii.unhexlify(value)
        except (ValueError, TypeError):
            return "not hex text (two hex digits per byte)"
        import cccrypto

        try:
            cccrypto.FrameCrypto(raw)
        except ValueError as e:
            return "%d bytes: %s" % (len(raw), e)
    elif name in ("server_host", "apn"):
        p = _text(value, 253 if name == "server_host" else 63)
        if p:
            return p
        if name == "server_host" and not value:
            return "empty: the receiver's host name or IP address is needed"
        if " " in value:
            return "contains a space"
    elif name == "owner_name":
        p = _text(value, 32)
        if p:
            return p
    elif name == "sim_pin":
        if value is not None and (not isinstance(value, str) or not 4 <= len(value) <= 8
                                  or not all("0" <= c <= "9" for c in value)):
            return "%s: a SIM PIN is 4 to 8 digits as text (or null)" % _kind(value)
    elif name == "grid_worker_key":
        if value is not None and (not _is_int(value) or not KEY_MIN <= value <= KEY_MAX):
            return "%s is not a key number %d..%d (or null)" % (_kind(value), KEY_MIN, KEY_MAX)
    elif name == "quiet_hours":
        if value is not None and (
                not isinstance(value, list) or len(value) != 2
                or not all(_is_int(h) and 0 <= h <= 23 for h in value) or value[0] == value[1]):
            return "%s: expected [start_hour, end_hour], two different hours 0..23, or null" % _kind(value)
    elif name in _INT_RANGES:
        low, high = _INT_RANGES[name]
        if not _is_int(value) or not low <= value <= high:
            return "%s is outside %d..%d" % (_kind(value), low, high)
    return None


def validate(data):
    """A Config from parsed JSON (anything): field by field, never raises."""
    cfg = Config()
    if not isinstance(data, dict):
        cfg._bad("config", "expected a JSON object, got %s" % _kind(data))
        cfg.safe_mode = True
        cfg.values = dict(DEFAULTS)
        cfg.values["contacts"] = []
        return cfg
    values = {}
    for name in REQUIRED:
        if name not in data:
            cfg._bad(name, "missing (required; provision the card again)")
            cfg.safe_mode = True
            continue
        if name == "contacts":
            values[name] = cfg.contacts = _check_contacts(cfg, data[name])
            continue
        why = _check_field(name, data[name])
        if why:
            cfg._bad(name, why)
            cfg.safe_mode = True
        else:
            values[name] = data[name]
    for name in DEFAULTS:
        if name not in data:
            values[name] = DEFAULTS[name]
            continue
        why = _check_field(name, data[name])
        if why:
            cfg._bad(name, why + "; the default %s is used" % json.dumps(DEFAULTS[name]))
            values[name] = DEFAULTS[name]
        else:
            values[name] = data[name]
    # Cross-field rules.
    if values["retry_cap_s"] < values["retry_base_s"]:
        cfg._bad("retry_cap_s", "%d is below retry_base_s %d; the defaults are used"
                 % (values["retry_cap_s"], values["retry_base_s"]))
        values["retry_cap_s"] = DEFAULTS["retry_cap_s"]
        values["retry_base_s"] = DEFAULTS["retry_base_s"]
    if values["stuck_ms"] <= values["long_press_ms"]:
        cfg._bad("stuck_ms", "%d is not above long_press_ms %d; the defaults are used"
                 % (values["stuck_ms"], values["long_press_ms"]))
        values["stuck_ms"] = DEFAULTS["stuck_ms"]
        values["long_press_ms"] = DEFAULTS["long_press_ms"]
    gw = values["grid_worker_key"]
    if gw is not None and cfg.contact(gw) is None and "contacts" in values:
        cfg._bad("grid_worker_key", "key %d has no valid contact; no grid worker is set" % gw)
        values["grid_worker_key"] = None
    for name in data:
        if name not in DEFAULTS and name not in REQUIRED:
            cfg.problems.append("%s: unknown field, ignored (a misspelt name?)" % name)
    if "contacts" in values and not cfg.contacts:
        cfg._bad("contacts", "no valid contact: no key can call anyone")
        cfg.safe_mode = True
    values.setdefault("contacts", cfg.contacts)
    cfg.values = values
    return cfg


def _read(fs, path):
    f = fs.open(path, "rb")
    try:
        return f.read()
    finally:
        f.close()


def load(path, fs=None):
    """The configuration in `path`; a safe-mode Config when it is missing or unreadable."""
    cfg = None
    try:
        cfg = _load(path, fs if fs is not None else cardfs.OsFs())
    except Exception as e:  # the card must boot whatever the file holds
        cfg = Config()
        cfg._bad("config", "unexpected %s while loading: %s" % (type(e).__name__, e))
        cfg.safe_mode = True
        cfg.values = dict(DEFAULTS)
        cfg.values["contacts"] = []
    return cfg


def _load(path, fs):
    tmp = path + ".new"
    try:
        raw = _read(fs, path)
    except OSError:
        raw = None
        # A save on a filesystem whose rename does not replace removes the old file just before
        # renaming the new one, which it has read back whole: finish that. A temporary file that
        # does not parse is a save cut short on a card never provisioned: not adopted.
        try:
            candidate = _read(fs, tmp)
            json.loads(candidate.decode("utf-8"))
            fs.rename(tmp, path)
            raw = candidate
        except (OSError, ValueError, UnicodeError):
            raw = None
    if raw is None:
        cfg = Config()
        cfg._bad("config", "%s is missing: the card is not provisioned (run the provisioning tool)"
                 % path)
        cfg.safe_mode = True
        cfg.values = dict(DEFAULTS)
        cfg.values["contacts"] = []
        return cfg
    try:
        text = raw.decode("utf-8")
        data = json.loads(text)
    except (ValueError, UnicodeError) as e:
        cfg = Config()
        cfg._bad("config", "%s is not valid JSON (%s): provision the card again" % (path, e))
        cfg.safe_mode = True
        cfg.values = dict(DEFAULTS)
        cfg.contacts = _salvage_contacts(cfg, raw)
        cfg.values["contacts"] = cfg.contacts
        cfg.source = path
        return cfg
    cfg = validate(data)
    cfg.source = path
    if not isinstance(data, dict):
        cfg.contacts = _salvage_contacts(cfg, raw)
        cfg.values["contacts"] = cfg.contacts
    return cfg


def _salvage_contacts(cfg, raw):
    """Contacts from a damaged file: every flat {...} that parses as a valid contact."""
    found = []
    seen = []
    start = raw.find(b"{", 1)
    while start >= 0:
        end = raw.find(b"}", start)
        if end < 0:
            break
        inner = raw.find(b"{", start + 1)
        if 0 <= inner < end:
            start = inner
            continue
        try:
            item = json.loads(raw[start:end + 1].decode("utf-8"))
        except (ValueError, UnicodeError):
            item = None
        if isinstance(item, dict) and "number" in item:
            c = _check_contact(cfg, len(found), item, seen)
            if c is not None:
                found.append(c)
                if len(found) == ccspec.MAX_CONTACTS:
                    break
        start = raw.find(b"{", end)
    if found:
        cfg.problems.append("contacts: %d read from the damaged file" % len(found))
    found.sort(key=lambda c: c[0])
    return found


def save(values, path, fs=None):
    """Validate `values` (a dict as in the file) and write them atomically; raises ConfigError
    listing every problem, OSError if the filesystem fails (the old file is then untouched)."""
    fs = fs if fs is not None else cardfs.OsFs()
    cfg = validate(values)
    if not cfg.ok:
        raise ConfigError(cfg.problems)
    data = json.dumps(values).encode("utf-8")
    tmp = path + ".new"
    f = fs.open(tmp, "wb")
    try:
        f.write(data)
        f.flush()
    finally:
        f.close()
    if _read(fs, tmp) != data:
        fs.remove(tmp)
        raise OSError("config: %s reads back different from what was written" % tmp)
    try:
        fs.rename(tmp, path)
    except OSError:
        fs.remove(path)  # a filesystem whose rename does not replace (FAT); load() completes it
        fs.rename(tmp, path)
    return cfg
