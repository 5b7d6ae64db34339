"""Versioned host events: what the receiver hands to its sinks and the alert engine.

A decoded uplink message (carecard.protocol.decode_frame) becomes one event:

    {"schema": 1, "id": "861234567890123-5", "kind": "position", "device": "861234567890123",
     "counter": 5, "time": "2025-11-29T00:00:00Z", "received_at": "2025-11-29T00:00:01.250Z",
     "data": {...}}

`data` is derived from the field list in protocol/spec.py, never from a copy of it:

- every payload field keeps its spec name and raw value (integers with unit suffixes, enums as
  their names), except that a field's "unknown" value (its rule in spec.FIELDS) becomes null;
- fields whose rule names a human unit (spec.FIELDS "human") also get that twin: `lat_e7` ->
  `lat` (degrees), `hdop_x10` -> `hdop`, `course_x10` -> `course` (degrees), `speed_cms` ->
  `speed_ms` (m/s), `battery_mv` -> `battery_v` (volts); the twin is null when the raw value is
  unknown, and for fields that need a fix (`lat`/`lon`) when the message says it has no fix;
- track points become {"time", "device_time", "lat", "lon", "lat_e7", "lon_e7"};
- `device_time` (the header's raw time) and `clock_synced` are kept; when the card's clock was not
  synced the header time is seconds since boot, so the event's `time` is null.

Alerts (from the inactivity engine) are built by `alert_event`. The schema is documented in
docs/events.md and as JSON Schema in docs/event.schema.json (carecard.host.event_schema). Time
texts come from carecard.host.timefmt; MQTT topics are the MQTT sink's.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any, Mapping, NamedTuple

import orjson

from carecard.host.timefmt import iso_utc
from carecard.protocol import spec
from carecard.protocol.codec import field_rule, value_bounds
from carecard.protocol.generated import compile_generated

SCHEMA_VERSION = 1
ALERT_KIND = "alert"
# A change of the device registry (`carecard devices add|remove`): data {"change": one of REGISTRY_CHANGES}
REGISTRY_KIND = "registry"
REGISTRY_CHANGES = ("added", "removed")

# The "no fix" label of the fix enum: positions carried with it have no valid coordinates.
NO_FIX = spec.ENUMS["fix"][0]

_ALERT_KIND_RE = re.compile(r"^[a-z][a-z0-9_]{0,39}$")
_ISO_Z_PATTERN = r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,6})?Z$"
_U64_MAX = 2**64 - 1


class EventError(ValueError):
    """A message or alert that cannot become an event (a bug upstream: decoded messages always can)."""


class FieldPlan(NamedTuple):
    name: str
    kind: str
    doc: str
    sentinel: int | None  # the raw value meaning "unknown" (null in the event)
    twin: str | None  # human-unit twin's name
    divisor: int
    needs_fix: bool  # the twin is null when the message has no fix


def _twin(name: str) -> tuple[str | None, int]:
    human = field_rule(name).get("human")
    if human is None:
        return None, 1
    return human[0], human[1]


def _plan(fields: tuple) -> tuple[FieldPlan, ...]:
    plans = []
    for name, kind, doc in fields:
        rule = field_rule(name)
        twin, divisor = _twin(name)
        plans.append(FieldPlan(name, kind, doc, rule.get("unknown"), twin, divisor,
                               bool(rule.get("needs_fix"))))
    return tuple(plans)


# Message type name -> the plan for its payload fields, built once from spec.UPLINK.
PLANS: dict[str, tuple[FieldPlan, ...]] = {name: _plan(fields) for _code, name, fields in spec.UPLINK}
MESSAGE_KINDS: tuple[str, ...] = tuple(PLANS)
EVENT_KINDS: tuple[str, ...] = MESSAGE_KINDS + (ALERT_KIND, REGISTRY_KIND)

_FW_PARTS = ("fw_major", "fw_minor", "fw_patch")


def _check_received_at(received_at: float, what: str) -> float:
    if isinstance(received_at, bool) or not isinstance(received_at, (int, float)):
        raise EventError(f"{what}: expected Unix seconds, got {type(received_at).__name__}")
    if not math.isfinite(received_at) or not 0 <= received_at < 2**32:
        raise EventError(f"{what}: {received_at!r} is not a Unix time")
    return float(received_at)


def _device_text(device: Any, what: str) -> str:
    if isinstance(device, str) and device.isdigit() and device.isascii():
        device = int(device)
    if type(device) is not int or not 0 <= device <= _U64_MAX:
        raise EventError(f"{what}: device must be an IMEI as an integer or decimal text, got {device!r}")
    return str(device)


# Track point keys -> (twin, divisor), looked up once per key.
_POINT_TWINS: dict[str, tuple[str | None, int]] = {}


def _convert_point(point: Mapping[str, Any], synced: bool) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in point.items():
        if key == "time":
            out["time"] = iso_utc(value) if synced else None
            out["device_time"] = value
            continue
        found = _POINT_TWINS.get(key)
        if found is None:
            found = _POINT_TWINS[key] = _twin(key)
        twin, divisor = found
        if twin is not None:
            out[twin] = value / divisor
        out[key] = value
    return out


# --- event construction, compiled per message type from its plan ------------------------------
#
# For each uplink type, a function `data(m, synced)` that builds the event's `data` object from a
# decoded message, generated once at import from PLANS (so from protocol/spec.py): straight-line
# code, no per-frame walk over the field plans. The rules it applies are the ones the module
# docstring states; tests compare it with a direct interpretation of the plans for every type.


def _field_source(field: FieldPlan, var: str) -> tuple[list[str], list[tuple[str, str]]]:
    """The rules for one integer field, as code: the lines that turn `var` (its raw value) into
    the event's (its "unknown" sentinel to None) and the data keys it gives with their
    expressions (its own name; its human-unit twin, None when unknown or, for coordinates,
    without a fix: `no_fix`)."""
    lines = []
    if field.sentinel is not None:
        lines += [f"    if {var} == {field.sentinel!r}:", f"        {var} = None"]
    items = [(field.name, var)]
    if field.twin is not None:
        unknown = f"{var} is None or no_fix" if field.needs_fix else f"{var} is None"
        items.append((field.twin, f"(None if {unknown} else {var} / {field.divisor!r})"))
    return lines, items


def _data_builder_source(kind: str, plan: tuple[FieldPlan, ...]) -> str:
    lines = [f"def _data_{kind}(m, synced):"]
    if any(f.twin is not None and f.needs_fix for f in plan):
        lines.append("    no_fix = m.get('fix') == NO_FIX")
    items = []
    for i, field in enumerate(plan):
        var = f"v{i}"
        lines.append(f"    {var} = m[{field.name!r}]")
        if field.kind == "track":
            lines.append(f"    {var} = [_convert_point(p, synced) for p in {var}]")
            items.append(f"{field.name!r}: {var}")
            continue
        field_lines, field_items = _field_source(field, var)
        lines += field_lines
        items += [f"{key!r}: {expr}" for key, expr in field_items]
    names = [f.name for f in plan]
    if all(part in names for part in _FW_PARTS):
        parts = ", ".join(f"v{names.index(part)}" for part in _FW_PARTS)
        items.append(f"'fw_version': '%s.%s.%s' % ({parts})")
    items.append("'device_time': m['time']")
    items.append("'clock_synced': synced")
    lines.append("    return {" + ", ".join(items) + "}")
    return "\n".join(lines) + "\n"


def _compile_data_builders() -> dict[str, Any]:
    builders = {}
    for kind, plan in PLANS.items():
        if not kind.isidentifier():
            raise ValueError(f"spec.py: message type {kind!r} is not an identifier")
        namespace: dict[str, Any] = {"NO_FIX": NO_FIX, "_convert_point": _convert_point}
        exec(compile_generated(_data_builder_source(kind, plan), f"event builder {kind}"), namespace)
        builders[kind] = namespace[f"_data_{kind}"]
    return builders


DATA_BUILDERS: dict[str, Any] = _compile_data_builders()

_PICKERS: dict[tuple[str, tuple[str, ...]], Any] = {}


def data_picker(kind: str, keys: tuple[str, ...]) -> Any:
    """A function `pick(message) -> tuple`: the values the event's `data` would hold under `keys`
    (None for a key the type does not have), compiled from the same rules as the event itself
    but computing only those keys, for a store that takes a few columns from many messages.
    None for a type whose fields are not all integers and labels (track)."""
    found = _PICKERS.get((kind, keys))
    if found is not None or (kind, keys) in _PICKERS:
        return found
    plan = PLANS[kind]
    picker = None
    if all(f.kind != "track" for f in plan):
        lines = ["def _pick(m):", "    no_fix = m.get('fix') == NO_FIX"]
        exprs: dict[str, str] = {}
        for i, field in enumerate(plan):
            field_lines, field_items = _field_source(field, f"v{i}")
            if not any(key in keys for key, _expr in field_items):
                continue
            lines.append(f"    v{i} = m[{field.name!r}]")
            lines += field_lines
            exprs.update(field_items)
        lines.append("    return (" + "".join(f"{exprs.get(key, 'None')}, " for key in keys) + ")")
        namespace: dict[str, Any] = {"NO_FIX": NO_FIX}
        exec(compile_generated("\n".join(lines) + "\n", f"data picker {kind}"), namespace)
        picker = namespace["_pick"]
    _PICKERS[(kind, keys)] = picker
    return picker
_MAX_U32 = 2**32


# The log's JSON: compact, UTF-8 as is, no NaN or infinity. One encoder object, made once.
_encode = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode


def event_json(event: Mapping[str, Any]) -> str:
    """An event as the log stores it (and as sinks that forward JSON send it): compact JSON,
    non-ASCII text as is, key order kept. Raises ValueError for NaN or infinity."""
    return _encode(event)


# Reading the log: orjson's parser (in C, about three times faster than json's scanner on these
# events) gives the same dicts json.loads does, with two exceptions handled here: what it refuses
# (NaN, infinity, a lone surrogate) goes through json, which decides; and an integer beyond 64 bits
# comes back from it as a float, so a float that large (|x| >= 2**63) sends the body through json
# too. Both readers therefore give the same event for every body.
_fast_loads = orjson.loads
_fast_dumps = orjson.dumps
_FastError = orjson.JSONDecodeError
_WIDE = float(2 ** 63)


def _maybe_widened(value: Any) -> bool:
    """Whether a parsed value holds a float of magnitude >= 2**63 (possibly a wide integer)."""
    for item in (value.values() if type(value) is dict else value):
        kind = type(item)
        if kind is float:
            if item >= _WIDE or item <= -_WIDE:
                return True
        elif (kind is dict or kind is list) and _maybe_widened(item):
            return True
    return False


def parse_body(body: str) -> Any:
    """A log body as json.loads gives it (faster). Raises ValueError or TypeError as it does."""
    try:
        value = _fast_loads(body)
    except (_FastError, TypeError):
        return json.loads(body)  # its verdict, and its error message
    # The quick proof that nothing was widened: orjson writes the value back as exactly the
    # stored text (the log's compact form). A widened integer would come back in float form, so
    # an exact match rules it out (about 1 us, against 3 us for walking every value); any
    # mismatch (other spacing, escapes, float spelling) just takes the walk below.
    try:
        if _fast_dumps(value) == body.encode():
            return value
    except (TypeError, UnicodeError, AttributeError):
        pass
    if (type(value) is dict or type(value) is list) and _maybe_widened(value):
        return json.loads(body)
    if type(value) is float and (value >= _WIDE or value <= -_WIDE):
        return json.loads(body)
    return value


# (received_at, its iso_utc text) of the last event made: one tuple, replaced whole
_received_memo: tuple[float, str] = (-1.0, "")


def _received_text(received_at: float) -> str:
    """iso_utc(received_at, millis=True), remembering the last one: a wake of the receiver
    stamps all its frames alike."""
    global _received_memo
    memo = _received_memo
    if memo[0] == received_at:
        return memo[1]
    text = iso_utc(received_at, millis=True)
    _received_memo = (received_at, text)
    return text


def event_from_message(message: Mapping[str, Any], received_at: float) -> dict[str, Any]:
    """A decoded uplink message (carecard.protocol.decode_frame) -> a schema-1 event.

    `received_at` is the host's Unix time when the frame arrived. Raises EventError for anything
    that is not a decoded uplink message (wrong direction, unknown type, missing field)."""
    if type(message) is not dict and not isinstance(message, Mapping):
        raise EventError(f"expected a decoded message (a dict), got {type(message).__name__}")
    mtype = message.get("type")
    build = DATA_BUILDERS.get(mtype) if type(mtype) is str else None
    if build is None or message.get("direction", "uplink") != "uplink":
        raise EventError(
            f"message type {mtype!r} ({message.get('direction', 'uplink')}) is not an uplink "
            f"message: events are made from {', '.join(MESSAGE_KINDS)}"
        )
    try:
        device = message["device"]
        counter = message["counter"]
        device_time = message["time"]
        synced = bool(message.get("clock_synced", True))
    except KeyError as exc:
        raise EventError(f"{mtype} message: header field {exc.args[0]!r} missing") from None
    if type(device) is int and 0 <= device <= _U64_MAX:
        device = str(device)
    else:
        device = _device_text(device, f"{mtype} message")
    if type(counter) is not int or counter < 0 or type(device_time) is not int or device_time < 0:
        raise EventError(f"{mtype} message: counter and time must be non-negative integers")
    if type(received_at) is not float or not 0.0 <= received_at < _MAX_U32:
        received_at = _check_received_at(received_at, f"{mtype} message")
    try:
        data = build(message, synced)
    except KeyError as exc:
        raise EventError(f"{mtype} message from device {device} counter {counter}: "
                         f"field {exc.args[0]!r} missing") from None
    received_text = _received_text(received_at)
    return {
        "schema": SCHEMA_VERSION,
        "id": f"{device}-{counter}",
        "kind": mtype,
        "device": device,
        "counter": counter,
        "time": iso_utc(device_time) if synced else None,
        "received_at": received_text,
        "data": data,
    }


# --- the event as JSON text, straight from a decoded message ---------------------------------
#
# The receiver stores each event as JSON (event_json). Building the dict
# and encoding it costs twice what filling one text template does, so for every uplink type whose
# fields are all fixed-size (all but `track`) a second function is compiled from the same plan:
# it writes the exact text event_json(event_from_message(message, received_at)) would (a test
# checks that for every type, with unknown values and without fix), from a message as
# carecard.protocol.decode_frame returns it (exact types: int, enum labels, str).


def _json_builder_source(kind: str, plan: tuple[FieldPlan, ...]) -> str | None:
    if any(f.kind == "track" for f in plan):
        return None
    lines = [f"def _json_{kind}(m, head, synced):"]
    if any(f.twin is not None and f.needs_fix for f in plan):
        lines.append("    no_fix = m.get('fix') == NO_FIX")
    parts: list[str] = []  # pieces of the data object's text: literal text or {expression}
    memos: list[str] = []  # module-level dicts: value -> twin text, for narrow integer fields
    values: list[str] = []
    for i, field in enumerate(plan):
        var = f"v{i}"
        key = json.dumps(field.name)
        lines.append(f"    {var} = m[{field.name!r}]")
        if field.kind.startswith("enum:"):
            lines.append(f"    {var}t = _ENUM_TEXT[{field.kind[5:]!r}][{var}]")
            parts.append(f"{key}:%s")
            values.append(f"{var}t")
            continue
        if field.kind == "str":
            parts.append(f"{key}:%s")
            values.append(f"_encode_text({var})")
            continue
        # an integer, maybe with an "unknown" sentinel (null) and a human-unit twin
        unknown = f"{var} == {field.sentinel!r}" if field.sentinel is not None else None
        if unknown:
            parts.append(f"{key}:%s")
            values.append(f"('null' if {unknown} else '%d' % {var})")
        else:
            parts.append(f"{key}:%d")
            values.append(var)
        if field.twin is not None:
            twin_unknown = " or ".join(x for x in (unknown, "no_fix" if field.needs_fix else None) if x)
            twin = f"_float_text({var} / {field.divisor!r})"
            if field.kind in _MEMO_KINDS:  # a narrow integer: its twin's text is memoised
                lines.append(f"    {var}f = _twin_text_{i}.get({var})")
                lines.append(f"    if {var}f is None:")
                lines.append(f"        {var}f = _memo_twin(_twin_text_{i}, {var}, {field.divisor!r})")
                memos.append(f"_twin_text_{i} = {{}}")
                twin = f"{var}f"
            parts.append(f"{json.dumps(field.twin)}:%s")
            values.append(f"('null' if {twin_unknown} else {twin})" if twin_unknown else twin)
    names = [f.name for f in plan]
    if all(part in names for part in _FW_PARTS):
        parts.append('"fw_version":%s')
        values.append("_encode_text('%s.%s.%s' % ({}))".format(", ".join(f"v{names.index(x)}" for x in _FW_PARTS)))
    parts.append('"device_time":%d')
    values.append("m['time']")
    parts.append('"clock_synced":%s')
    values.append("('true' if synced else 'false')")
    template = ",".join(parts).replace("%", "%%").replace("%%s", "%s").replace("%%d", "%d") + "}}"
    lines.append(f"    return head + {template!r} % ({', '.join(values)},)")
    return "\n".join(memos + lines) + "\n"


# Integer kinds narrow enough that a value -> twin text memo stays small (bounded anyway).
_MEMO_KINDS = frozenset(("u8", "i8", "u16", "i16"))
_TWIN_MEMO_MAX = 4096


def _memo_twin(memo: dict[int, str], value: int, divisor: int) -> str:
    """The twin's text (repr of value / divisor, as json.dumps writes a float), remembered."""
    text = float.__repr__(value / divisor)
    if len(memo) >= _TWIN_MEMO_MAX:
        memo.clear()
    memo[value] = text
    return text


def _compile_json_builders() -> dict[str, Any]:
    from json.encoder import encode_basestring  # what the C encoder uses with ensure_ascii=False

    builders = {}
    enum_text = {name: {label: json.dumps(label, ensure_ascii=False) for label in labels}
                 for name, labels in spec.ENUMS.items()}
    for kind, plan in PLANS.items():
        source = _json_builder_source(kind, plan)
        if source is None:
            continue
        namespace: dict[str, Any] = {"NO_FIX": NO_FIX, "_ENUM_TEXT": enum_text,
                                     "_encode_text": encode_basestring, "_float_text": float.__repr__,
                                     "_memo_twin": _memo_twin}
        exec(compile_generated(source, f"event json {kind}"), namespace)
        builders[kind] = namespace[f"_json_{kind}"]
    return builders


JSON_BUILDERS: dict[str, Any] = _compile_json_builders()
_HEAD = ('{"schema":%d,"id":"%%s-%%d","kind":"%%s","device":"%%s","counter":%%d,"time":%%s,'
         '"received_at":"%%s","data":{' % SCHEMA_VERSION)


def event_record(message: Mapping[str, Any], received_at: float) -> tuple[str, str]:
    """(event id, the event's JSON as the log stores it) for a message from
    carecard.protocol.decode_frame: the same as (event["id"], event_json(event)) for
    event = event_from_message(message, received_at), in a third of the time. Types that have
    no compiled template (track) and anything unexpected go through event_from_message. Raises
    EventError as event_from_message does."""
    mtype = message.get("type") if type(message) is dict else None
    build = JSON_BUILDERS.get(mtype) if type(mtype) is str else None
    if build is not None and message.get("direction", "uplink") == "uplink" \
            and type(received_at) is float and 0.0 <= received_at < _MAX_U32:
        try:
            device = message["device"]
            counter = message["counter"]
            device_time = message["time"]
            synced = message.get("clock_synced", True)
            if type(device) is int and 0 <= device <= _U64_MAX and type(counter) is int and counter >= 0 \
                    and type(device_time) is int and device_time >= 0 and type(synced) is bool:
                device = str(device)
                received_text = _received_text(received_at)
                head = _HEAD % (device, counter, mtype, device, counter,
                                f'"{iso_utc(device_time)}"' if synced else "null", received_text)
                return f"{device}-{counter}", build(message, head, synced)
        except (KeyError, TypeError, ValueError):
            pass  # a missing or odd field: the general path says what is wrong
    event = event_from_message(message, received_at)
    return event["id"], event_json(event)


def alert_event(device: int | str, alert_kind: str, details: Mapping[str, Any], at: float,
                *, alert_id: str | None = None) -> dict[str, Any]:
    """An alert raised by the host (e.g. the inactivity engine) as a schema-1 event.

    `alert_kind` is a short lower-case word (`inactivity`, `sos_unanswered`...): it becomes part of
    the MQTT topic. `details` is any JSON object. `at` is the host's Unix time of the alert.
    The id defaults to "<device>-alert-<alert_kind>-<at in Unix milliseconds>", so re-raising the
    same alert at the same moment (e.g. after a restart) de-duplicates downstream; pass `alert_id`
    to use the engine's own stable id instead."""
    where = f"alert {alert_kind!r}"
    device_text = _device_text(device, where)
    if not isinstance(alert_kind, str) or not _ALERT_KIND_RE.match(alert_kind):
        raise EventError(f"{where}: alert kind must match {_ALERT_KIND_RE.pattern}")
    if not isinstance(details, Mapping):
        raise EventError(f"{where}: details must be an object, got {type(details).__name__}")
    try:
        plain_details = json.loads(json.dumps(dict(details), allow_nan=False))
    except (TypeError, ValueError) as exc:
        raise EventError(f"{where}: details are not JSON: {exc}") from None
    when = _check_received_at(at, where)
    if alert_id is None:
        alert_id = f"{device_text}-alert-{alert_kind}-{round(when * 1000)}"
    elif not isinstance(alert_id, str) or not 0 < len(alert_id) <= 200:
        raise EventError(f"{where}: alert_id must be non-empty text of at most 200 characters")
    return _host_event(ALERT_KIND, alert_id, device_text, when, {"alert": alert_kind, "details": plain_details})


def registry_event(device: int | str, change: str, at: float) -> dict[str, Any]:
    """A change of the device registry as a schema-1 event: `change` "added" (the card became
    registered: new, or added again after a removal) or "removed" (`carecard devices remove`).
    The device registry writes it in the change's own transaction; the alert engine stops
    judging a removed card until it is added again. `at` is the host's Unix time of the change."""
    where = f"registry change {change!r}"
    device_text = _device_text(device, where)
    if change not in REGISTRY_CHANGES:
        raise EventError(f"{where}: change must be one of {', '.join(REGISTRY_CHANGES)}")
    when = _check_received_at(at, where)
    return _host_event(REGISTRY_KIND, f"{device_text}-registry-{change}-{round(when * 1000)}", device_text, when,
                       {"change": change})


def _host_event(kind: str, event_id: str, device_text: str, when: float, data: dict[str, Any]) -> dict[str, Any]:
    """An event the host makes (no frame, so no counter): its time and received_at are both `when`."""
    stamp = iso_utc(when, millis=True)
    return {
        "schema": SCHEMA_VERSION,
        "id": event_id,
        "kind": kind,
        "device": device_text,
        "counter": None,
        "time": stamp,
        "received_at": stamp,
        "data": data,
    }
