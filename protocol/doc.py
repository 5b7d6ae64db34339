"""docs/protocol.md, generated from spec.py so the byte tables cannot drift from the code.

`carecard protocol-doc` rewrites it; a test fails when the committed file is not current.
"""

from __future__ import annotations

import json

from carecard.protocol import spec
from carecard.protocol.codec import INTEGERS, Track, encode_frame

SIZES = {"u8": 1, "u16": 2, "u32": 4, "u64": 8, "i8": 1, "i16": 2, "i32": 4}
KIND_TEXT = {
    "str": "u8 length + UTF-8",
    "track": "u8 count + points (see Track encoding)",
    "commands": "u8 count + commands",
}

EXAMPLE_KEY = bytes(range(16))
EXAMPLE_POSITION = {
    "type": "position", "device": 861234567890123, "counter": 7, "time": 1764374400,
    "lat_e7": 249012345, "lon_e7": 1184567890, "alt_m": 30, "hdop_x10": 9, "sats": 8,
    "fix": "3d", "fix_age_s": 3, "speed_cms": 120, "course_x10": 900, "source": "fresh",
}

EXAMPLE_TRACK = [{"time": 1764374400, "lat_e7": 249012345, "lon_e7": 1184567890},
                 {"time": 1764374430, "lat_e7": 249012400, "lon_e7": 1184567800}]


def _kind_text(kind: str) -> str:
    if kind in INTEGERS:
        return kind
    if kind.startswith("enum:"):
        return f"u8 enum `{kind[5:]}`"
    if kind.startswith("list:"):
        return f"u8 count + `{kind[5:]}` items"
    return KIND_TEXT[kind]


def _text_rule_text(name: str) -> str:
    first_only, anywhere = spec.TEXT_RULES[name]
    lead = f"an optional leading `{first_only}`, then " if len(first_only) == 1 else \
        (f"one optional leading character of `{first_only}`, then " if first_only else "")
    return f"{name} text: {lead}only characters of `{anywhere}` (may be empty)"


def _values_text(name: str) -> str:
    """The field's rule in spec.FIELDS as table text: range, unknown value, human unit, text."""
    rule = spec.FIELDS.get(name, {})
    parts = []
    if "min" in rule:
        parts.append(f"{rule['min']}..{rule['max']}")
    if "unknown" in rule:
        parts.append(f"{rule['unknown']} = unknown")
    if "human" in rule:
        twin, divisor, unit = rule["human"]
        parts.append(f"/ {divisor} = `{twin}`" + (f" ({unit})" if unit else ""))
    if "needs_fix" in rule:
        parts.append("meaningless without a fix")
    if "text" in rule:
        parts.append(_text_rule_text(rule["text"]))
    return "; ".join(parts)


def _table(fields: tuple, start: int | None, *, varints: bool = False) -> list[str]:
    lines = ["| offset | size | field | type | unit | values | meaning |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    offset = start
    for name, kind, doc in fields:
        if kind.startswith("enum:"):
            size: int | None = 1
        else:
            size = SIZES.get(kind)
        where = "" if offset is None else str(offset)
        unit = spec.FIELDS.get(name, {}).get("unit", "")
        lines.append(f"| {where} | {'varint' if varints else size if size else 'var'} | `{name}` | {_kind_text(kind)} | {unit} "
                     f"| {_values_text(name)} | {doc} |")
        offset = None if offset is None or size is None else offset + size
    return lines


def _track_encoding() -> list[str]:
    names = ", ".join(f"`{name}`" for name, _kind, _doc in spec.TRACK_POINT)
    return [
        "## Track encoding", "",
        f"A `track` field is a u8 count (1 to {spec.MAX_TRACK_POINTS}), then for each point, oldest",
        f"first, three varints: the differences of {names} from the previous point. The first",
        "point's differences are from 0, 0, 0 (so its varints hold its absolute values).",
        "",
        "- zigzag mapping of a difference `n` to an unsigned integer: `2n` when `n >= 0`, `-2n - 1`",
        "  when `n < 0` (0, -1, 1, -2, 2 ... become 0, 1, 2, 3, 4 ...);",
        "- varint: unsigned LEB128, 7 bits a byte, least significant group first; the high bit",
        "  (0x80) of a byte says another byte follows.",
        "",
        "Point fields (each written as the varint of its zigzag-mapped difference):", "",
        *_table(spec.TRACK_POINT, None, varints=True), "",
        "Example: the points below encode as the payload bytes after them (before encryption).", "",
        "```", json.dumps(EXAMPLE_TRACK), Track.build(EXAMPLE_TRACK).hex(" "), "```", "",
    ]


def _payload_size(fields: tuple) -> int | None:
    total = 0
    for _name, kind, _doc in fields:
        size = 1 if kind.startswith("enum:") else SIZES.get(kind)
        if size is None:
            return None
        total += size
    return total


def _resync_size() -> int:
    fields = next(fields for _code, name, fields in spec.DOWNLINK if name == "resync")
    return spec.HEADER_LEN + (_payload_size(fields) or 0) + spec.TAG_LEN


def _counters() -> list[str]:
    """The counter rules across reboots (uplink blocks, resync, downlinks applied once)."""
    return [
        "## Counters across reboots", "",
        "Each direction has its own counter per device, and a counter is used once, ever: the host",
        "stores a frame once and acks its retransmissions (same counter, same tag) again; a counter",
        "used again with other content is not stored.", "",
        "**Uplink counter, reserved in blocks** (the card: `firmware/lib/counter.py`). The card keeps",
        "one number in flash, a limit L: every counter below L may have been used. Before it uses a",
        "counter c >= L it writes L = c + block, so flash is written once per block of frames, not",
        "per frame. At boot it continues from L and reserves the next block at once: a reboot skips",
        "at most the rest of a block and never reuses a counter. The record (magic, L, CRC-32) is",
        "replaced atomically (temp file, then rename); a missing or corrupt record starts from 0,",
        "and resync recovers.", "",
        "**Resync.** A frame that authenticates but whose counter the host has seen with other",
        "content, or that is older than the host's replay window and not stored, can only come from",
        "the key holder: a card that lost its counter. Its frames would otherwise be rejected",
        "forever, unacked. The host does not store it and answers with `resync` (instead of an",
        "`ack`, with the next downlink counter): `rejected` = the frame's counter, `next_counter` =",
        "one above the highest counter the host has seen from the card. The card moves its counter",
        "up to `next_counter` (never down: a replayed old `resync` changes nothing) and sends the",
        "message again under a new counter. A retransmission of a stored frame is acked, never",
        f"resynced. A `resync` frame is {_resync_size()} bytes; it goes to an address other than the",
        "card's last verified one only when it is no larger than the frame that drew it.", "",
        "**Downlinks applied once.** The card keeps a second limit D the same way: every downlink",
        "counter below D may have been applied. It applies a downlink only when its counter is at",
        "least its lowest (D at boot, then one above the last applied), and persists D past the",
        "counter before applying it. A recorded downlink replayed after a reboot (a `reboot`",
        "command, `set_time`, a power cut) has a counter below D: rejected as a replay, never",
        "applied twice. The host's downlink counters only rise, per device (reserved in blocks in",
        "its store, so a host restart never reuses one either). Since D can be ahead of them after",
        "a reboot, the card's `hello` carries `downlink_min` = D and the host continues from there",
        "(above it); the card sends `hello` first after every boot, before its outbox.", "",
        "A card whose downlink record is lost (a flash fault) starts again from 0: until it",
        "applies its first downlink after that, a recorded downlink could be applied once more;",
        "the first one it applies (the host's counter, above every recorded one) closes that gap.",
        "",
    ]


def _versions() -> list[str]:
    out = ["## Versions", "",
           f"The card sends version {spec.VERSION}. The host decodes versions {spec.OLDEST_VERSION} to "
           f"{spec.VERSION} and answers each frame in its version (downlink layouts are the same in all "
           "of them). Fields added since an older version are appended to their message: a frame of "
           "that version is the newer layout cut short, and the host decodes the missing fields as "
           "the value below.", "",
           "| message | field | since version | a frame of an older version decodes as |",
           "| --- | --- | --- | --- |"]
    kinds = {(name, f[0]): f[1] for _c, name, fields in spec.UPLINK + spec.DOWNLINK for f in fields}
    for (message, field), (since, raw) in spec.ADDED.items():
        kind = kinds[(message, field)]
        value = f"`{spec.ENUMS[kind[5:]][raw]}`" if kind.startswith("enum:") else f"{raw}"
        unknown = spec.FIELDS.get(field, {}).get("unknown")
        if unknown is not None and raw == unknown:
            value += " (unknown)"
        out.append(f"| `{message}` | `{field}` | {since} | {value} |")
    return out + [""]


def render() -> str:
    out = [
        "# CareCard wire protocol, version %d" % spec.VERSION,
        "",
        "Generated from `protocol/spec.py` by `carecard protocol-doc`; do not edit by hand.",
        "",
        "## Frame",
        "",
        "```",
        f"header ({spec.HEADER_LEN} bytes, clear, authenticated) | payload (AES-CTR) | tag ({spec.TAG_LEN} bytes)",
        "```",
        "",
        f"Frames are {spec.MIN_FRAME} to {spec.MAX_FRAME} bytes. All integers are big-endian. One UDP",
        "datagram carries one frame; TCP and serial wrap each frame as",
        "`0x00 | COBS(frame | CRC-32 little-endian) | 0x00`.",
        "",
        "Security (per-device 16- or 32-byte key `K`):",
        "",
        f"- `enc_key = HMAC-SHA256(K, \"{spec.KDF_ENC.decode()}\")[:len(K)]` (AES-128 or AES-256)",
        f"- `mac_key = HMAC-SHA256(K, \"{spec.KDF_MAC.decode()}\")`",
        "- keystream block i = `AES-ECB(enc_key, device u64 | counter u32 | direction u8 | 0x00 | i u16)`,",
        f"  direction {spec.DIR_UPLINK} = uplink (card to host), {spec.DIR_DOWNLINK} = downlink",
        f"- `tag = HMAC-SHA256(mac_key, header | encrypted payload)[:{spec.TAG_LEN}]`",
        "- each direction has its own strictly increasing counter; the host recognises a",
        "  retransmission (same counter, same tag: acked again, stored once) and rejects a reused",
        "  counter with other content (not stored: a card that lost its counter is told the next",
        "  one to use, see Counters across reboots).",
        "",
        "### Header",
        "",
        *_table(spec.HEADER, 0),
        "",
        f"Flags: bit 0 (0x{spec.FLAG_CLOCK_UNSYNCED:02x}) = clock not yet synced. Other bits must be 0.",
        "",
    ]
    for title, rows in (("Uplink messages (card to host)", spec.UPLINK),
                        ("Downlink messages (host to card)", spec.DOWNLINK)):
        out += [f"## {title}", ""]
        for code, name, fields in rows:
            size = _payload_size(fields)
            total = "variable" if size is None else f"{size} bytes, frame {spec.HEADER_LEN + size + spec.TAG_LEN} bytes"
            out += [f"### `{name}` (type {code}; payload {total})", "", *_table(fields, spec.HEADER_LEN), ""]
    out += ["## Commands (in an `ack`)", "",
            "Each command: `seq` u16, command code u8, then its fields. The card confirms each with a",
            "`command_result` uplink carrying the same `seq`.", ""]
    for code, name, fields in spec.COMMANDS:
        out += [f"### `{name}` (code {code})", ""]
        out += _table(fields, None) if fields else ["No fields."]
        out += [""]
    out += _track_encoding()
    out += _versions()
    out += ["## Structures", ""]
    for name, fields in spec.STRUCTS.items():
        out += [f"### `{name}`", "", *_table(fields, None), ""]
    out += ["## Enumerations", "", "| enum | codes |", "| --- | --- |"]
    for name, labels in spec.ENUMS.items():
        out.append(f"| `{name}` | " + ", ".join(f"{i} `{label}`" for i, label in enumerate(labels)) + " |")
    out += ["", "## Limits", "",
            f"- strings: at most {spec.MAX_STR} bytes of UTF-8",
            f"- track: 1 to {spec.MAX_TRACK_POINTS} points; commands per ack: at most {spec.MAX_COMMANDS};"
            f" contacts: at most {spec.MAX_CONTACTS}",
            f"- latitude within +-{spec.LAT_E7_MAX} and longitude within +-{spec.LON_E7_MAX} (1e-7 degree)",
            "", *_counters(), "## Example", "",
            f"A position frame with key `{EXAMPLE_KEY.hex()}`:", "", "```"]
    frame = encode_frame(EXAMPLE_POSITION, EXAMPLE_KEY)
    out += [str(EXAMPLE_POSITION).replace("'", '"'), f"{frame.hex()}  ({len(frame)} bytes)", "```", ""]
    return "\n".join(out)
