"""The JSON Schema (draft 2020-12) of the events (carecard.host.events), generated from
protocol/spec.py: docs/event.schema.json is this module's output, and a test checks it is current.
Regenerate with `python -m carecard.host.event_schema > docs/event.schema.json`."""

from __future__ import annotations

import json
import re
from typing import Any

from carecard.host.events import (
    _ALERT_KIND_RE,
    _FW_PARTS,
    _ISO_Z_PATTERN,
    ALERT_KIND,
    EVENT_KINDS,
    MESSAGE_KINDS,
    PLANS,
    REGISTRY_CHANGES,
    REGISTRY_KIND,
    SCHEMA_VERSION,
    FieldPlan,
)
from carecard.protocol import spec
from carecard.protocol.codec import field_rule, value_bounds


def _int_range(kind: str) -> tuple[int, int]:
    bits = int(kind[1:])
    if kind[0] == "u":
        return 0, 2**bits - 1
    return -(2 ** (bits - 1)), 2 ** (bits - 1) - 1


def _nullable(schema: dict[str, Any]) -> dict[str, Any]:
    return {"anyOf": [schema, {"type": "null"}]}


def _field_schemas(field: FieldPlan) -> dict[str, Any]:
    kind = field.kind
    out: dict[str, Any] = {}
    if kind.startswith("enum:"):
        out[field.name] = {"enum": list(spec.ENUMS[kind[5:]]), "description": field.doc}
    elif kind == "str":
        out[field.name] = {"type": "string", "maxLength": spec.MAX_STR, "description": field.doc}
        text_rule = field_rule(field.name).get("text")
        if text_rule is not None:
            first_only, anywhere = spec.TEXT_RULES[text_rule]
            out[field.name]["pattern"] = (f"^[{re.escape(first_only)}]?" if first_only else "^") + \
                f"[{re.escape(anywhere)}]*$"
    elif kind == "track":
        point = {
            "type": "object",
            "additionalProperties": False,
            "required": ["time", "device_time", "lat", "lon", "lat_e7", "lon_e7"],
            "properties": {
                "time": {"type": ["string", "null"], "pattern": _ISO_Z_PATTERN,
                         "description": "point time, ISO 8601 UTC; null when the clock was not synced"},
                "device_time": {"type": "integer", "minimum": 0, "maximum": 2**32 - 1,
                                "description": "raw point time: Unix s, or seconds since boot"},
                "lat": {"type": "number", "minimum": -90, "maximum": 90, "description": "degrees"},
                "lon": {"type": "number", "minimum": -180, "maximum": 180, "description": "degrees"},
                "lat_e7": {"type": "integer", "minimum": -spec.LAT_E7_MAX, "maximum": spec.LAT_E7_MAX},
                "lon_e7": {"type": "integer", "minimum": -spec.LON_E7_MAX, "maximum": spec.LON_E7_MAX},
            },
        }
        out[field.name] = {"type": "array", "minItems": 1, "maxItems": spec.MAX_TRACK_POINTS,
                           "items": point, "description": field.doc}
    else:
        low, high = _int_range(kind)
        bounds = value_bounds(field.name)
        if bounds is not None:
            low, high = bounds[0], bounds[1]
        raw: dict[str, Any] = {"type": "integer", "minimum": low, "maximum": high}
        rule = field_rule(field.name)
        doc = field.doc
        if "unit" in rule:
            doc += f" ({rule['unit']})"
        if field.sentinel is not None:
            raw = _nullable(raw)
            doc += f"; null when the card sent {field.sentinel} (unknown)"
        raw["description"] = doc
        out[field.name] = raw
        if field.twin is not None:
            twin: dict[str, Any] = {"type": "number"}
            if bounds is not None:
                twin["minimum"], twin["maximum"] = low / field.divisor, high / field.divisor
            twin = _nullable(twin)
            unit = rule["human"][2]
            twin["description"] = (f"{field.name} / {field.divisor}" + (f" ({unit})" if unit else "")
                                   + "; null when unknown")
            if field.needs_fix:
                twin["description"] += " or without a fix"
            out[field.twin] = twin
    return out


def _data_schema(kind: str) -> dict[str, Any]:
    props: dict[str, Any] = {}
    for field in PLANS[kind]:
        props.update(_field_schemas(field))
    if all(any(f.name == part for f in PLANS[kind]) for part in _FW_PARTS):
        props["fw_version"] = {"type": "string", "pattern": r"^\d+\.\d+\.\d+$"}
    props["device_time"] = {"type": "integer", "minimum": 0, "maximum": 2**32 - 1,
                            "description": "the header's raw time: Unix s, or seconds since boot "
                                           "when clock_synced is false"}
    props["clock_synced"] = {"type": "boolean"}
    return {"type": "object", "additionalProperties": False, "required": list(props),
            "properties": props}


def event_json_schema() -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) of schema-version-1 events, generated from protocol/spec.py."""
    defs: dict[str, Any] = {f"data_{kind}": _data_schema(kind) for kind in MESSAGE_KINDS}
    defs["data_alert"] = {
        "type": "object",
        "additionalProperties": False,
        "required": ["alert", "details"],
        "properties": {"alert": {"type": "string", "pattern": _ALERT_KIND_RE.pattern},
                       "details": {"type": "object"}},
    }
    branches = []
    for kind in MESSAGE_KINDS:
        branches.append({
            "if": {"properties": {"kind": {"const": kind}}},
            "then": {"properties": {"data": {"$ref": f"#/$defs/data_{kind}"},
                                    "counter": {"type": "integer"},
                                    "id": {"pattern": r"^\d{1,20}-\d{1,10}$"}}},
        })
    branches.append({
        "if": {"properties": {"kind": {"const": ALERT_KIND}}},
        "then": {"properties": {"data": {"$ref": "#/$defs/data_alert"}, "counter": {"type": "null"},
                                "time": {"type": "string"}}},
    })
    defs["data_registry"] = {
        "type": "object",
        "additionalProperties": False,
        "required": ["change"],
        "properties": {"change": {"enum": list(REGISTRY_CHANGES)}},
    }
    branches.append({
        "if": {"properties": {"kind": {"const": REGISTRY_KIND}}},
        "then": {"properties": {"data": {"$ref": "#/$defs/data_registry"}, "counter": {"type": "null"},
                                "time": {"type": "string"}}},
    })
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": f"urn:carecard:event:{SCHEMA_VERSION}",
        "title": f"CareCard host event, schema version {SCHEMA_VERSION}",
        "description": "One event per stored uplink message, an alert or a registry change. See docs/events.md. "
                       "Generated by `python -m carecard.host.event_schema` from protocol/spec.py.",
        "type": "object",
        "additionalProperties": False,
        "required": ["schema", "id", "kind", "device", "counter", "time", "received_at", "data"],
        "properties": {
            "schema": {"const": SCHEMA_VERSION},
            "id": {"type": "string", "minLength": 1, "maxLength": 200,
                   "description": "stable id for de-duplication: <device>-<counter> for messages"},
            "kind": {"enum": list(EVENT_KINDS)},
            "device": {"type": "string", "pattern": r"^\d{1,20}$",
                       "description": "device id (the modem's IMEI) as decimal text"},
            "counter": {"type": ["integer", "null"], "minimum": 0, "maximum": 2**32 - 1},
            "time": {"type": ["string", "null"], "pattern": _ISO_Z_PATTERN,
                     "description": "when the card made the message, ISO 8601 UTC; null when "
                                    "the card's clock was not synced"},
            "received_at": {"type": "string", "pattern": _ISO_Z_PATTERN,
                            "description": "when the host received the frame, ISO 8601 UTC"},
            "data": {"type": "object"},
        },
        "allOf": branches,
        "$defs": defs,
    }


def schema_text() -> str:
    """docs/event.schema.json as it must be committed."""
    return json.dumps(event_json_schema(), indent=2, ensure_ascii=False) + "\n"


if __name__ == "__main__":  # entry point: regenerate docs/event.schema.json
    import sys

    sys.stdout.write(schema_text())
