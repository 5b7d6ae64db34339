"""The CareCard wire protocol: the one definition of every frame, field and code.

This file is plain data and runs unchanged on CPython and MicroPython (no imports, no type hints).
The host builds its construct codec from it (carecard.protocol.codec); the card reads it at import
as `ccspec` (firmware/lib/ccproto.py); docs/protocol.md is generated from it. Change a field here
and all three follow; nothing else lists fields.

Frame on the wire (one UDP datagram; stream transports wrap it, see framing):

    header (19 bytes, clear, authenticated) | payload (encrypted, AES-CTR) | tag (8 bytes)

    tag = HMAC-SHA256(mac_key, header || encrypted payload)[:8]
    keystream block i = AES-ECB(enc_key, device u64 | counter u32 | direction u8 | 0 u8 | i u16)
    enc_key = HMAC-SHA256(device_key, KDF_ENC)[:len(device_key)]   (AES-128 or AES-256)
    mac_key = HMAC-SHA256(device_key, KDF_MAC)

All integers are big-endian. Field kinds:
    u8 u16 u32 u64 i8 i16 i32   fixed-size integers
    enum:NAME                   u8 holding an index into ENUMS[NAME]
    str                         u8 byte length, then UTF-8 text
    track                       u8 count, then per point (TRACK_POINT) three varints: the
                                differences of time, lat_e7, lon_e7 from the previous point, the
                                first point's from 0, 0, 0; each difference n zigzag-mapped to
                                2n (n >= 0) or -2n - 1 (n < 0), then written as unsigned LEB128
                                (7 bits a byte, least significant first, high bit = more follow)
    list:NAME                   u8 count, then items laid out as STRUCTS[NAME]
    commands                    u8 count, then per command: seq u16, code u8, fields of COMMANDS
"""

VERSION = 3

# Versions the host decodes: OLDEST_VERSION..VERSION. A field added after the oldest is listed in
# ADDED with the version that added it and the raw value a frame of an older version stands for
# (appended fields only: older layouts are the newer ones cut short). The host answers a frame in
# its own version (downlink layouts have not changed); the card sends VERSION.
OLDEST_VERSION = 2
ADDED = {
    ("hello", "motion_sensor"): (3, 0),  # "unknown": a version 2 card did not say
    ("position", "source"): (3, 0),  # "fresh": version 2 cards never held a fix
    ("track", "hdop_x10"): (3, 255),  # unknown
    ("track", "sats"): (3, 255),  # unknown
}

# Frame-level limits and layout.
HEADER_LEN = 19
TAG_LEN = 8
MIN_FRAME = HEADER_LEN + TAG_LEN
MAX_FRAME = 512
MAX_TRACK_POINTS = 60
MAX_COMMANDS = 8
MAX_CONTACTS = 4
MAX_STR = 64

# Header flag bits; any other bit set makes the frame malformed.
FLAG_CLOCK_UNSYNCED = 0x01
FLAGS_KNOWN = 0x01

# Direction byte in the AES-CTR nonce: uplink and downlink keystreams never collide.
DIR_UPLINK = 0
DIR_DOWNLINK = 1

# Key-derivation labels (HMAC-SHA256 messages).
KDF_ENC = b"carecard-v1 enc"
KDF_MAC = b"carecard-v1 mac"

# Geographic limits of scaled coordinates (1e-7 degree).
LAT_E7_MAX = 900000000
LON_E7_MAX = 1800000000

# What a field's value means, beyond its byte layout, by field name: a name means the same in every
# message, command, structure and track point that has it. The host's codec and the card's encoder
# and decoder enforce the ranges and text rules; host events, stores and docs take units, unknown
# values and human units from here. Keys of a rule (each optional):
#   unit       what one step of the raw integer is
#   min, max   the allowed range (inclusive) when narrower than the field's kind
#   unknown    the raw value that means "not known" (allowed besides min..max): null in host
#              events, never stored as a value
#   human      (name, divisor, unit): the host's twin field in human units, raw value / divisor
#   needs_fix  the value means nothing when the message's `fix` is "none" (its twin is null then)
#   text       a name in TEXT_RULES: the characters the text may hold
FIELDS = {
    "time": {"unit": "s"},
    "lat_e7": {"unit": "1e-7 degree", "min": -LAT_E7_MAX, "max": LAT_E7_MAX,
               "human": ("lat", 10000000, "degree"), "needs_fix": True},
    "lon_e7": {"unit": "1e-7 degree", "min": -LON_E7_MAX, "max": LON_E7_MAX,
               "human": ("lon", 10000000, "degree"), "needs_fix": True},
    "alt_m": {"unit": "m"},
    "hdop_x10": {"unit": "0.1", "unknown": 255, "human": ("hdop", 10, "")},
    "fix_age_s": {"unit": "s", "unknown": 65535},
    "sats": {"unknown": 255},
    "motion_count": {"unknown": 65535},
    "speed_cms": {"unit": "cm/s", "human": ("speed_ms", 100, "m/s")},
    "course_x10": {"unit": "0.1 degree", "human": ("course", 10, "degree")},
    "battery_mv": {"unit": "mV", "human": ("battery_v", 1000, "V")},
    "battery_pct": {"unit": "%", "unknown": 255},
    "rssi_dbm": {"unit": "dBm", "unknown": -128},
    "ring_s": {"unit": "s"},
    "talk_s": {"unit": "s"},
    "response_s": {"unit": "s"},
    # Downlink settings: an answer window an elder can use, report intervals from a minute (what
    # a fix and a send take) to a week (the battery lasts about that), a GNSS acquisition from a
    # hot start to ten cold ones, a reboot delay long enough to confirm it first.
    "timeout_s": {"unit": "s", "min": 10, "max": 3600},
    "position_s": {"unit": "s", "min": 60, "max": 604800},
    "status_s": {"unit": "s", "min": 60, "max": 604800},
    "gnss_timeout_s": {"unit": "s", "min": 5, "max": 600},
    "unix": {"unit": "s"},
    "delay_s": {"unit": "s", "min": 1, "max": 3600},
    "key": {"min": 1, "max": MAX_CONTACTS},
    "number": {"text": "phone"},
}

# Text rules: name -> (characters allowed only as the first one, characters allowed anywhere).
# A phone number goes into the modem's dial command: an optional leading "+", then ASCII digits
# (empty: no number behind the key).
TEXT_RULES = {
    "phone": ("+", "0123456789"),
}

HEADER = (
    ("version", "u8", "protocol version (VERSION: the one in docs/protocol.md's title)"),
    ("type", "u8", "message type code"),
    ("flags", "u8", "bit 0: clock not yet synced, `time` is seconds since boot"),
    ("device", "u64", "device id: the modem's IMEI as an integer"),
    ("counter", "u32", "per-device monotonic frame counter, one per direction"),
    ("time", "u32", "Unix seconds (UTC) when the message was made"),
)

# The fields of one track point (kind `track`), in their order on the wire.
TRACK_POINT = (
    ("time", "u32", "Unix time (UTC), or time since boot when the clock is not synced"),
    ("lat_e7", "i32", "latitude"),
    ("lon_e7", "i32", "longitude"),
)

ENUMS = {
    "reset_cause": ("power_on", "hard", "watchdog", "deep_sleep", "soft", "brownout", "unknown"),
    "modem": ("unknown", "a7670", "ec800m"),
    "charging": ("discharging", "charging", "full"),
    "fix": ("none", "2d", "3d"),
    # a held fix is the last valid one re-sent while the motion sensor saw no motion since it
    "fix_source": ("fresh", "held"),
    "motion_sensor": ("unknown", "none", "lis2dh12"),
    # `answered`: the modem reported the call active (may be ring-back on some networks);
    # `confirmed`: the callee acknowledged (DTMF key), the only trustworthy "someone answered";
    # `missed`: an incoming call that ended before the card answered it.
    "call_outcome": ("answered", "confirmed", "busy", "no_answer", "rejected", "failed",
                     "cancelled", "no_number", "missed"),
    "sos_trigger": ("long_press", "key_combo", "fall", "checkin_timeout"),
    "checkin_answer": ("ok", "help", "no_response"),
    "power_event": ("low", "critical", "recovered", "charger_connected", "charger_full",
                    "charger_removed", "shutdown"),
    "command_result": ("done", "rejected", "unsupported", "bad_value"),
}

STRUCTS = {
    "contact": (
        ("key", "u8", "key number"),
        ("number", "str", "phone number"),
        ("name", "str", "name shown to the technician (UTF-8)"),
    ),
}

# (code, name, fields). Codes are stable forever: never reuse one.
UPLINK = (
    (1, "hello", (
        ("fw_major", "u8", "firmware version, major"),
        ("fw_minor", "u8", "firmware version, minor"),
        ("fw_patch", "u8", "firmware version, patch"),
        ("reset_cause", "enum:reset_cause", "why the card (re)started"),
        ("config_version", "u16", "version of the provisioned configuration"),
        ("modem", "enum:modem", "modem profile in use"),
        ("downlink_min", "u32", "lowest downlink counter the card applies (those below may have "
                                "been applied before this boot): the host continues from it"),
        ("motion_sensor", "enum:motion_sensor", "the card's motion sensor (none: its status "
                                                "frames report motion_count unknown)"),
    )),
    (2, "status", (
        ("battery_mv", "u16", "battery voltage"),
        ("battery_pct", "u8", "state of charge"),
        ("charging", "enum:charging", "charger state"),
        ("rssi_dbm", "i8", "signal strength"),
        ("motion_count", "u16", "motion-sensor interrupts since the last status (unknown: no "
                                "sensor; version 2: key presses and motion events)"),
        ("outbox_depth", "u16", "messages waiting in the card's outbox"),
    )),
    (3, "position", (
        ("lat_e7", "i32", "latitude"),
        ("lon_e7", "i32", "longitude"),
        ("alt_m", "i16", "altitude above mean sea level"),
        ("hdop_x10", "u8", "horizontal dilution of precision (unknown also when >= 25.5)"),
        ("sats", "u8", "satellites used in the fix"),
        ("fix", "enum:fix", "fix type"),
        ("fix_age_s", "u16", "time from the fix to this message (unknown: older or none)"),
        ("speed_cms", "u16", "ground speed"),
        ("course_x10", "u16", "course over ground"),
        ("source", "enum:fix_source", "fresh fix, or the last one held (no motion since it, the "
                                      "GNSS left off; fix_age_s grows)"),
    )),
    (4, "track", (
        ("points", "track", "positions, oldest first: time, lat_e7, lon_e7"),
        ("hdop_x10", "u8", "the largest HDOP of the points (their accuracy is at least this)"),
        ("sats", "u8", "the fewest satellites used by a point"),
    )),
    (5, "call", (
        ("key", "u8", "key pressed"),
        ("number", "str", "number dialled"),
        ("outcome", "enum:call_outcome", "how the call ended"),
        ("ring_s", "u16", "time ringing"),
        ("talk_s", "u16", "time connected"),
    )),
    (6, "sos", (
        ("trigger", "enum:sos_trigger", "what raised the SOS"),
        ("lat_e7", "i32", "last known latitude (0 without a fix)"),
        ("lon_e7", "i32", "last known longitude (0 without a fix)"),
        ("fix", "enum:fix", "fix type of that position"),
        ("fix_age_s", "u16", "age of that position (unknown: older or none)"),
        ("battery_pct", "u8", "state of charge"),
    )),
    (7, "checkin", (
        ("prompt_id", "u16", "the check-in prompt answered"),
        ("answer", "enum:checkin_answer", "the elder's answer"),
        ("response_s", "u16", "time from prompt to answer"),
    )),
    (8, "power", (
        ("event", "enum:power_event", "battery or charger event"),
        ("battery_mv", "u16", "battery voltage"),
        ("battery_pct", "u8", "state of charge"),
    )),
    (9, "command_result", (
        ("seq", "u16", "sequence number of the downlink command"),
        ("result", "enum:command_result", "what the card did with it"),
    )),
)

DOWNLINK = (
    (128, "ack", (
        ("acked", "u32", "counter of the uplink frame acknowledged"),
        ("commands", "commands", "commands for the card, applied in order"),
    )),
    # The answer to an authentic uplink whose counter the host has already seen with other
    # content (or that is older than its replay window and not stored): a card that lost its
    # counter. The frame is not stored; the card continues from next_counter and sends again.
    (129, "resync", (
        ("rejected", "u32", "counter of the uplink frame not stored (already used)"),
        ("next_counter", "u32", "uplink counter to continue from: every one below it is used"),
    )),
)

# Commands carried in an ack: (code, name, fields).
COMMANDS = (
    (1, "locate_now", ()),
    (2, "checkin_prompt", (
        ("prompt_id", "u16", "identifies the prompt in the answer"),
        ("timeout_s", "u16", "how long to wait for the elder's answer"),
    )),
    (3, "set_intervals", (
        ("position_s", "u32", "time between position reports"),
        ("status_s", "u32", "time between status reports"),
        ("gnss_timeout_s", "u16", "longest GNSS acquisition"),
    )),
    (4, "set_contacts", (
        ("contacts", "list:contact", "the numbers behind keys 1-4"),
    )),
    (5, "set_time", (
        ("unix", "u32", "current Unix time"),
    )),
    (6, "reboot", (
        ("delay_s", "u16", "delay before rebooting"),
    )),
)
