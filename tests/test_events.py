"""Events from decoded messages: every uplink type, validated against docs/event.schema.json."""

from __future__ import annotations

import copy
import json
import math
from datetime import datetime
from pathlib import Path

import jsonschema
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from carecard.host import event_schema, timefmt
from carecard.host import events as ev
from carecard.host.sinks.mqtt import topic_suffix
from carecard.protocol import decode_frame, encode_frame, spec

from eventgen import DEVICE, T0, position_message, uplink_messages

SCHEMA_PATH = Path(__file__).resolve().parent.parent / "docs" / "event.schema.json"
KEY = bytes(range(16))


@pytest.fixture(scope="module")
def validator() -> jsonschema.Draft202012Validator:
    schema = json.loads(SCHEMA_PATH.read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


def test_committed_schema_is_generated_from_the_spec() -> None:
    assert SCHEMA_PATH.read_text() == event_schema.schema_text(), (
        "docs/event.schema.json is stale: regenerate with "
        "`.venv/bin/python -m carecard.host.event_schema > docs/event.schema.json`")


def test_unknown_values_are_the_spec_field_rules() -> None:
    found = {(kind, f.name): f.sentinel for kind, plan in ev.PLANS.items() for f in plan if f.sentinel is not None}
    assert found == {
        ("status", "battery_pct"): 255, ("status", "rssi_dbm"): -128,
        ("position", "hdop_x10"): 255, ("position", "fix_age_s"): 65535,
        ("sos", "fix_age_s"): 65535, ("sos", "battery_pct"): 255, ("power", "battery_pct"): 255,
        ("status", "motion_count"): 65535, ("position", "sats"): 255,
        ("track", "hdop_x10"): 255, ("track", "sats"): 255,
    }


def test_every_uplink_type_has_a_plan_and_kinds_match_the_spec() -> None:
    assert ev.MESSAGE_KINDS == tuple(name for _c, name, _f in spec.UPLINK)
    assert ev.EVENT_KINDS[len(ev.MESSAGE_KINDS):] == ("alert", "registry")


def _check_event(message: dict, event: dict, validator: jsonschema.Draft202012Validator) -> None:
    validator.validate(event)
    assert event["schema"] == ev.SCHEMA_VERSION
    assert event["id"] == f"{message['device']}-{message['counter']}"
    assert event["device"] == str(message["device"])
    assert event["kind"] == message["type"]
    data = event["data"]
    assert data["device_time"] == message["time"]
    assert (event["time"] is None) == (not message["clock_synced"])
    if message["clock_synced"]:
        assert timefmt.parse_iso_utc(event["time"]) == message["time"]
    for field in ev.PLANS[message["type"]]:
        raw = message[field.name]
        if field.kind == "track":
            assert [p["device_time"] for p in data["points"]] == [p["time"] for p in raw]
            assert [p["lat_e7"] for p in data["points"]] == [p["lat_e7"] for p in raw]
            for point in data["points"]:
                assert math.isclose(point["lat"] * 1e7, point["lat_e7"], abs_tol=1e-6)
            continue
        if field.sentinel is not None and raw == field.sentinel:
            assert data[field.name] is None
        else:
            assert data[field.name] == raw
        if field.twin is not None and data[field.twin] is not None:
            assert math.isclose(data[field.twin] * field.divisor, raw, rel_tol=1e-12, abs_tol=1e-9)


@pytest.mark.parametrize("kind", ev.MESSAGE_KINDS)
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_events_of_every_type_match_the_schema(kind: str, data: st.DataObject,
                                               validator: jsonschema.Draft202012Validator) -> None:
    message = data.draw(uplink_messages(kinds=(kind,)))
    received = data.draw(st.floats(0, 2**32 - 1, allow_nan=False))
    _check_event(message, ev.event_from_message(message, received), validator)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(message=uplink_messages())
def test_events_from_real_frames(message: dict, validator: jsonschema.Draft202012Validator) -> None:
    """Through the real codec: encode, decode, then the event."""
    for _c, name, fields in spec.UPLINK:
        if name == message["type"]:
            for fname, kind, _d in fields:
                if kind == "str":
                    message[fname] = message[fname].encode()[: spec.MAX_STR].decode("utf-8", "ignore")
    decoded = decode_frame(encode_frame(message, KEY), KEY)
    _check_event(message, ev.event_from_message(decoded, T0 + 0.5), validator)


def test_position_event_in_human_units(validator: jsonschema.Draft202012Validator) -> None:
    event = ev.event_from_message(position_message(5), T0 + 301.25)
    validator.validate(event)
    assert event["id"] == f"{DEVICE}-5"
    assert event["time"] == "2025-11-29T00:05:00Z"
    assert event["received_at"] == "2025-11-29T00:05:01.250Z"
    d = event["data"]
    assert (d["lat"], d["lon"], d["hdop"], d["speed_ms"], d["course"]) == (24.700005, 118.399995, 1.2, 1.5, 90.0)
    assert d["lat_e7"] == 247000050 and d["clock_synced"] is True


def test_no_fix_and_unknown_values_become_null(validator: jsonschema.Draft202012Validator) -> None:
    message = position_message(1) | {"fix": "none", "hdop_x10": 255, "fix_age_s": 65535}
    event = ev.event_from_message(message, T0)
    validator.validate(event)
    d = event["data"]
    assert d["lat"] is None and d["lon"] is None and d["lat_e7"] == message["lat_e7"]
    assert d["hdop"] is None and d["hdop_x10"] is None and d["fix_age_s"] is None


def test_unsynced_clock_keeps_device_time_only(validator: jsonschema.Draft202012Validator) -> None:
    message = {"type": "track", "direction": "uplink", "device": DEVICE, "counter": 9, "time": 500,
               "clock_synced": False, "points": [{"time": 400, "lat_e7": 1, "lon_e7": -1}],
               "hdop_x10": 12, "sats": 8}
    event = ev.event_from_message(message, T0)
    validator.validate(event)
    assert event["time"] is None and event["data"]["device_time"] == 500
    assert event["data"]["points"] == [{"time": None, "device_time": 400, "lat": 1e-7, "lat_e7": 1,
                                        "lon": -1e-7, "lon_e7": -1}]


def test_hello_gets_a_version_string() -> None:
    message = {"type": "hello", "direction": "uplink", "device": DEVICE, "counter": 1, "time": T0,
               "clock_synced": True, "fw_major": 1, "fw_minor": 4, "fw_patch": 12,
               "reset_cause": "watchdog", "config_version": 3, "modem": "a7670", "downlink_min": 0,
               "motion_sensor": "lis2dh12"}
    assert ev.event_from_message(message, T0)["data"]["fw_version"] == "1.4.12"


def test_alert_events(validator: jsonschema.Draft202012Validator) -> None:
    alert = ev.alert_event(DEVICE, "inactivity", {"still_for_s": 43200, "last": "x"}, T0 + 0.5)
    validator.validate(alert)
    assert alert["id"] == f"{DEVICE}-alert-inactivity-{(T0 * 1000) + 500}"
    assert alert["kind"] == "alert" and alert["counter"] is None
    assert topic_suffix(alert) == f"{DEVICE}/alert/inactivity"
    assert ev.alert_event(str(DEVICE), "sos_unanswered", {}, T0, alert_id="engine-7")["id"] == "engine-7"


@pytest.mark.parametrize("call", [
    lambda: ev.alert_event(DEVICE, "bad/kind", {}, T0),
    lambda: ev.alert_event(DEVICE, "inactivity", {"x": object()}, T0),
    lambda: ev.alert_event(DEVICE, "inactivity", {"x": float("nan")}, T0),
    lambda: ev.alert_event("12ab", "inactivity", {}, T0),
    lambda: ev.alert_event(DEVICE, "inactivity", [], T0),  # type: ignore[arg-type]
    lambda: ev.event_from_message({"type": "ack", "direction": "downlink", "device": 1, "counter": 1,
                                   "time": 1, "acked": 1, "commands": []}, T0),
    lambda: ev.event_from_message({"type": "nope"}, T0),
    lambda: ev.event_from_message({k: v for k, v in position_message(1).items() if k != "sats"}, T0),
    lambda: ev.event_from_message(position_message(1), float("inf")),
    lambda: ev.event_from_message("position", T0),  # type: ignore[arg-type]
])
def test_bad_input_is_a_typed_error(call) -> None:  # noqa: ANN001
    with pytest.raises(ev.EventError):
        call()


def test_schema_rejects_what_it_should(validator: jsonschema.Draft202012Validator) -> None:
    good = ev.event_from_message(position_message(2), T0)
    for mutate in (
        lambda e: e.update(extra=1),
        lambda e: e.update(schema=2),
        lambda e: e.update(kind="telepathy"),
        lambda e: e["data"].pop("lat"),
        lambda e: e["data"].update(fix="4d"),
        lambda e: e["data"].update(lat_e7=spec.LAT_E7_MAX + 1),
        lambda e: e.update(time="2025-11-29 00:00:00"),
        lambda e: e.update(counter=None),
    ):
        bad = copy.deepcopy(good)
        mutate(bad)
        with pytest.raises(jsonschema.ValidationError):
            validator.validate(bad)


# --- the compiled event builders against a direct interpretation of the plans -----------------


def _reference_event(message: dict, received_at: float) -> dict:
    """The event rules of carecard.host.events applied field by field from PLANS (the generic
    algorithm the compiled builders replace), as the oracle for them."""
    mtype = message["type"]
    synced = bool(message.get("clock_synced", True))
    no_fix = message.get("fix") == ev.NO_FIX
    data: dict = {}
    for field in ev.PLANS[mtype]:
        value = message[field.name]
        if field.kind == "track":
            points = []
            for point in value:
                out: dict = {}
                for key, raw in point.items():
                    if key == "time":
                        out["time"] = timefmt._iso_slow(raw, False) if synced else None
                        out["device_time"] = raw
                        continue
                    twin, divisor = ev._twin(key)
                    if twin is not None:
                        out[twin] = raw / divisor
                    out[key] = raw
                points.append(out)
            data[field.name] = points
            continue
        if field.sentinel is not None and value == field.sentinel:
            value = None
        data[field.name] = value
        if field.twin is not None:
            if value is None or (no_fix and field.name in ("lat_e7", "lon_e7")):
                data[field.twin] = None
            else:
                data[field.twin] = value / field.divisor
    if all(part in data for part in ("fw_major", "fw_minor", "fw_patch")):
        data["fw_version"] = ".".join(str(data[p]) for p in ("fw_major", "fw_minor", "fw_patch"))
    data["device_time"] = message["time"]
    data["clock_synced"] = synced
    return {"schema": ev.SCHEMA_VERSION, "id": f"{message['device']}-{message['counter']}",
            "kind": mtype, "device": str(message["device"]), "counter": message["counter"],
            "time": timefmt._iso_slow(message["time"], False) if synced else None,
            "received_at": timefmt._iso_slow(float(received_at), True), "data": data}


def _canonical(event: dict) -> str:
    return json.dumps(event, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


@settings(max_examples=400, deadline=None)
@given(message=uplink_messages(), received=st.floats(0, 2**32 - 1, allow_nan=False) | st.integers(0, 2**32 - 1),
       sentinels=st.booleans(), no_fix=st.booleans())
def test_compiled_builders_match_the_plans(message: dict, received: float, sentinels: bool,
                                           no_fix: bool) -> None:
    if sentinels:  # the sentinel values, which the strategy rarely draws by itself
        for field in ev.PLANS[message["type"]]:
            if field.sentinel is not None:
                message[field.name] = field.sentinel
    if no_fix and "fix" in message:
        message["fix"] = ev.NO_FIX
    event = ev.event_from_message(message, received)
    expected = _reference_event(message, received)
    assert event == expected
    assert _canonical(event) == _canonical(expected)  # same key order, same number texts


def test_twins_of_missing_values_are_null() -> None:
    message = position_message(3) | {"speed_cms": None}
    assert ev.event_from_message(message, T0)["data"]["speed_ms"] is None


@settings(max_examples=2000, deadline=None)
@given(unix=st.floats(0, 2**34, allow_nan=False) | st.integers(0, 2**34)
       | st.integers(0, 2**32).map(lambda s: s + st_fraction_edge(s)))
def test_iso_utc_is_datetimes_text(unix: float) -> None:
    for millis in (False, True):
        assert timefmt.iso_utc(unix, millis=millis) == timefmt._iso_slow(unix, millis)


def st_fraction_edge(seed: int) -> float:
    """Fractions next to the rounding edges of microseconds and milliseconds."""
    return (0.9995, 0.9999995, 0.0000005, 0.0005, 0.4999995, 0.125)[seed % 6]


def test_iso_utc_edges() -> None:
    for unix in (0, 0.0, 1764374400.9999996, 1764374400.0000004, 2**32 - 0.0000001, 86399.9999999,
                 253402300799, 253402300799.5):
        for millis in (False, True):
            assert timefmt.iso_utc(unix, millis=millis) == timefmt._iso_slow(unix, millis)
    assert timefmt.iso_utc(T0) == "2025-11-29T00:00:00Z"
    assert timefmt.iso_utc(T0 + 1.25, millis=True) == "2025-11-29T00:00:01.250Z"
    for bad in (float("nan"), float(2**40), 2**40):  # datetime's errors, unchanged
        with pytest.raises((ValueError, OverflowError, OSError)):
            timefmt.iso_utc(bad)


@settings(max_examples=1000, deadline=None)
@given(unix=st.floats(0, 2**32, allow_nan=False) | st.integers(0, 2**32), millis=st.booleans())
def test_parse_iso_utc_reads_iso_utc_like_datetime(unix: float, millis: bool) -> None:
    text = timefmt.iso_utc(unix, millis=millis)
    assert timefmt.parse_iso_utc(text) == timefmt._parse_iso_slow(text)
    assert timefmt.parse_iso_utc(text) == datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def test_parse_iso_utc_other_forms_and_errors() -> None:
    for text in ("2025-11-29T00:00:00+08:00", "2025-11-29 00:00:00", "2025-11-29T00:00:00.5Z",
                 "2025-11-29T00:00:00.123456Z", " 2025-11-29T00:00:00Z ", "2025-11-29T00:00:00z",
                 "2025-11-29T00:00:01.250Z", "1970-01-01T00:00:00Z"):
        assert timefmt.parse_iso_utc(text) == timefmt._parse_iso_slow(text)
    for bad in ("", "Z", "2025-11-29T00:00:0xZ", "2025-13-29T00:00:00Z", "2025-11-29T00:00:00.1x3Z",
                "2025-11-29T00:00:00.+12Z", "yesterday"):
        with pytest.raises(ValueError):
            timefmt.parse_iso_utc(bad)


def _decoded(message: dict) -> dict:
    """The message as the receiver gets it: through the real codec (text fields cut to fit)."""
    for _c, name, fields in spec.UPLINK:
        if name == message["type"]:
            for fname, kind, _d in fields:
                if kind == "str":
                    message[fname] = message[fname].encode()[: spec.MAX_STR].decode("utf-8", "ignore")
    return decode_frame(encode_frame(message, KEY), KEY)


@settings(max_examples=500, deadline=None)
@given(message=uplink_messages(), received=st.floats(0, 2**32 - 1, allow_nan=False),
       sentinels=st.booleans(), no_fix=st.booleans())
def test_event_record_is_the_logs_text_of_the_event(message: dict, received: float, sentinels: bool,
                                                    no_fix: bool) -> None:
    from carecard.host.events import event_json

    if sentinels:
        for field in ev.PLANS[message["type"]]:
            if field.sentinel is not None:
                message[field.name] = field.sentinel
    if no_fix and "fix" in message:
        message["fix"] = ev.NO_FIX
    decoded = _decoded(message)
    event = ev.event_from_message(decoded, received)
    assert ev.event_record(decoded, received) == (event["id"], event_json(event))
    # and the log's text parses back to the same event, types included (LogEntry.event of a
    # frame skips the text and takes event_from_message's dict)
    back = ev.parse_body(event_json(event))
    assert back == event and _types(back) == _types(event)


def _types(value: object) -> object:
    if isinstance(value, dict):
        return {key: _types(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return (type(value).__name__, [_types(item) for item in value])
    return type(value).__name__


def test_event_record_compiles_every_fixed_type_and_falls_back_for_the_rest() -> None:
    from carecard.host.events import event_json

    assert set(ev.JSON_BUILDERS) == {k for k, plan in ev.PLANS.items() if all(f.kind != "track" for f in plan)}
    track = {"type": "track", "direction": "uplink", "device": DEVICE, "counter": 9, "time": T0,
             "clock_synced": True, "points": [{"time": T0 - 60, "lat_e7": 1, "lon_e7": -1}],
             "hdop_x10": 12, "sats": 8}
    odd = position_message(4) | {"fix": 2}  # an enum as its code: not what decode_frame gives
    for message, received in ((track, T0 + 0.5), (odd, T0 + 0.5), (position_message(5), T0)):
        event = ev.event_from_message(message, received)
        assert ev.event_record(message, received) == (event["id"], event_json(event))
    for bad in ({k: v for k, v in position_message(1).items() if k != "sats"}, {"type": "nope"},
                position_message(1) | {"direction": "downlink"}):
        with pytest.raises(ev.EventError):
            ev.event_record(bad, T0 + 0.5)


@settings(max_examples=100, deadline=None)
@given(messages=st.lists(uplink_messages(), min_size=1, max_size=6),
       times=st.lists(st.sampled_from([T0 + 0.25, T0 + 0.2504, T0 + 1.0, 0.0, 2**32 - 1.5]),
                      min_size=1, max_size=12))
def test_event_record_with_one_clock_per_wake_is_exact(messages: list, times: list) -> None:
    """The receiver stamps every frame of a wake alike and event_record memoises that stamp's
    text (and narrow fields' twin texts): runs of equal and changing stamps stay exact."""
    from carecard.host.events import event_json

    decoded = [_decoded(m) for m in messages]
    for i, received in enumerate(times):
        message = decoded[i % len(decoded)]
        event = ev.event_from_message(message, received)
        assert ev.event_record(message, received) == (event["id"], event_json(event))
