"""firmware/lib/config.py on MicroPython: the provisioned JSON file validated field by field,
safe mode for a missing or damaged file (still calling every contact it can read), atomic saves
checked by cutting the power at every byte of a save. The rules for keys and numbers are the
protocol's (protocol/spec.py FIELDS and TEXT_RULES), read here from the same definition."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from carecard.protocol import spec

from power_cut_fs import POWER_CUT_FS

SERVICE = POWER_CUT_FS + r"""
import sys, json
import config

def view(cfg):
    return {"ok": cfg.ok, "safe_mode": cfg.safe_mode, "problems": cfg.problems,
            "bad_fields": cfg.bad_fields, "values": cfg.values,
            "contacts": [list(c) for c in cfg.contacts]}

while True:
    line = sys.stdin.readline()
    if not line:
        break
    req = json.loads(line)
    try:
        op = req["op"]
        if op == "load":
            ans = view(config.load(req["path"]))
        elif op == "validate":
            ans = view(config.validate(req["data"]))
        elif op == "number":
            ans = [config.number_problem(n) for n in req["numbers"]]
        elif op == "defaults":
            ans = {"defaults": config.DEFAULTS, "required": list(config.REQUIRED),
                   "keys": [config.KEY_MIN, config.KEY_MAX]}
        elif op == "save":
            fs = CutFs(req["cut"], req.get("flip", False)) if "cut" in req else None
            ans = view(config.save(req["data"], req["path"], fs=fs))
    except Exception as exc:
        ans = {"error": "%s: %s" % (type(exc).__name__, exc)}
    print(json.dumps(ans))
"""

KEY_HEX = "00112233445566778899aabbccddeeff"
GOOD = {
    "device_id": 861234567890123,
    "device_key": KEY_HEX,
    "server_host": "cc.example.cn",
    "server_port": 47800,
    "apn": "cmnet",
    "contacts": [
        {"key": 2, "name": "二儿子", "number": "13900000002"},
        {"key": 1, "name": "大儿子", "number": "+8613900000001"},
        {"key": 3, "name": "小儿子", "number": "13900000003"},
        {"key": 4, "name": "网格员 陈", "number": "059512345"},
    ],
    "grid_worker_key": 4,
    "position_s": 600,
    "quiet_hours": [22, 7],
    "auto_answer_rings": 2,
    "sos_rounds": 4,
    "long_press_ms": 2500,
    "motion_threshold_mg": 128,
    "motion_duration_ms": 80,
}


class Card:
    def __init__(self, batch):
        self.batch = batch

    def __call__(self, **req) -> dict:
        return json.loads(self.batch.call(json.dumps(req)))


@pytest.fixture(scope="module")
def card(mpy):
    with mpy.Batch(SERVICE) as batch:
        yield Card(batch)


@pytest.fixture(scope="module")
def defaults(card):
    return card(op="defaults")


def test_a_good_config_loads_with_defaults_for_what_it_leaves_out(card, defaults, tmp_path):
    path = tmp_path / "config.json"
    path.write_text(json.dumps(GOOD, ensure_ascii=False), encoding="utf-8")
    cfg = card(op="load", path=str(path))
    assert cfg["ok"] and not cfg["safe_mode"] and cfg["problems"] == []
    assert cfg["contacts"] == [[1, "大儿子", "+8613900000001"], [2, "二儿子", "13900000002"],
                               [3, "小儿子", "13900000003"], [4, "网格员 陈", "059512345"]]
    for name, default in defaults["defaults"].items():
        assert cfg["values"][name] == GOOD.get(name, default), name
    assert cfg["values"]["device_id"] == GOOD["device_id"]


def test_the_key_range_is_the_protocols(defaults):
    assert defaults["keys"] == [spec.FIELDS["key"]["min"], spec.FIELDS["key"]["max"]]


def test_a_missing_file_is_safe_mode_that_says_so(card, tmp_path):
    cfg = card(op="load", path=str(tmp_path / "none.json"))
    assert cfg["safe_mode"] and cfg["contacts"] == [] and cfg["bad_fields"] == ["config"]
    assert "missing" in cfg["problems"][0] and "provisioning" in cfg["problems"][0]


@pytest.mark.parametrize("field,value,fragment", [
    ("device_id", "861234567890123", "text '861234567890123' is not a device id"),
    ("device_id", 0, "number 0 is not a device id"),
    ("device_id", 1 << 64, "is not a device id"),
    ("device_key", "0011", "2 bytes: device key must be 16 or 32 bytes"),
    ("device_key", "zz" * 16, "not hex text"),
    ("server_host", "", "empty"),
    ("server_host", "a b", "contains a space"),
    ("server_port", 0, "number 0 is outside 1..65535"),
    ("server_port", True, "true/false is outside 1..65535"),
    ("contacts", {"key": 1}, "expected a list of up to 4 contacts"),
])
def test_a_bad_required_field_is_safe_mode_naming_it(card, field, value, fragment):
    cfg = card(op="validate", data={**GOOD, field: value})
    assert cfg["safe_mode"] and not cfg["ok"]
    assert field in cfg["bad_fields"]
    assert any(p.startswith(field) and fragment in p for p in cfg["problems"]), cfg["problems"]


@pytest.mark.parametrize("field", ["device_id", "device_key", "server_host", "server_port", "contacts"])
def test_a_missing_required_field_is_safe_mode_and_keeps_the_contacts(card, field):
    data = {k: v for k, v in GOOD.items() if k != field}
    cfg = card(op="validate", data=data)
    assert cfg["safe_mode"] and f"{field}: missing (required; provision the card again)" in cfg["problems"]
    if field != "contacts":
        assert len(cfg["contacts"]) == 4


@pytest.mark.parametrize("field,value,fragment", [
    ("sos_rounds", 0, "number 0 is outside 1..10"),
    ("long_press_ms", "2000", "text '2000' is outside 500..10000"),
    ("quiet_hours", [22, 22], "two different hours 0..23"),
    ("quiet_hours", [22, 24], "two different hours 0..23"),
    ("grid_worker_key", 5, "number 5 is not a key number 1..4"),
    ("apn", 5, "expected text, got number 5"),
    ("motion_threshold_mg", 5000, "outside 16..2000"),
    ("sim_pin", 1234, "a SIM PIN is 4 to 8 digits as text"),
    ("sim_pin", "12a4", "a SIM PIN is 4 to 8 digits as text"),
])
def test_a_bad_optional_field_gets_its_default_and_is_reported(card, defaults, field, value, fragment):
    cfg = card(op="validate", data={**GOOD, field: value})
    assert not cfg["safe_mode"] and not cfg["ok"] and cfg["bad_fields"] == [field]
    assert cfg["values"][field] == defaults["defaults"][field]
    (problem,) = cfg["problems"]
    assert problem.startswith(field + ": ") and fragment in problem and "the default" in problem


def test_contacts_are_checked_one_by_one(card):
    contacts = [
        {"key": 1, "name": "a", "number": "139-0000"},
        {"key": 2, "name": "b", "number": "13900000002", "ring": 3},
        {"key": 2, "name": "c", "number": "13900000003"},
        {"key": 9, "name": "d", "number": "13900000004"},
        {"key": 3, "name": "e", "number": "1"},
    ]
    cfg = card(op="validate", data={**GOOD, "contacts": contacts, "grid_worker_key": 1})
    assert not cfg["safe_mode"]
    assert cfg["contacts"] == [[2, "b", "13900000002"]]
    problems = cfg["problems"]
    assert any(p.startswith("contacts[0].number: '-' at position 3 is not allowed") for p in problems)
    assert "contacts[1].ring: unknown field, ignored (key, name, number expected)" in problems
    assert any(p.startswith("contacts[2].key: key 2 is given twice") for p in problems)
    assert any(p.startswith("contacts[3].key: number 9 is not a key number 1..4") for p in problems)
    assert any(p.startswith("contacts: 5 contacts, at most 4") for p in problems)
    # the grid worker's contact was bad: no grid worker rather than the wrong person
    assert cfg["values"]["grid_worker_key"] is None
    assert any(p.startswith("grid_worker_key: key 1 has no valid contact") for p in problems)
    none = card(op="validate", data={**GOOD, "contacts": [{"key": 1, "number": "x"}]})
    assert none["safe_mode"] and "contacts: no valid contact: no key can call anyone" in none["problems"]


def test_unknown_fields_are_reported_not_fatal(card):
    cfg = card(op="validate", data={**GOOD, "sos_round": 3})
    assert not cfg["safe_mode"] and cfg["ok"]
    assert cfg["problems"] == ["sos_round: unknown field, ignored (a misspelt name?)"]


def test_cross_field_rules(card, defaults):
    cfg = card(op="validate", data={**GOOD, "retry_base_s": 600, "retry_cap_s": 60})
    assert cfg["values"]["retry_cap_s"] == defaults["defaults"]["retry_cap_s"]
    assert cfg["bad_fields"] == ["retry_cap_s"]
    cfg = card(op="validate", data={**GOOD, "stuck_ms": 5000, "long_press_ms": 6000})
    assert cfg["values"]["long_press_ms"] == defaults["defaults"]["long_press_ms"]


def protocol_allows(number: str) -> bool:
    first, anywhere = spec.TEXT_RULES[spec.FIELDS["number"]["text"]]
    if len(number.encode()) > spec.MAX_STR:
        return False
    return all(c in anywhere or (i == 0 and c in first) for i, c in enumerate(number))


@settings(max_examples=60)
@given(numbers=st.lists(st.text(alphabet="0123456789+- ()#*a中", max_size=70), min_size=1, max_size=20))
def test_number_characters_are_exactly_the_protocols(card, numbers):
    got = card(op="number", numbers=numbers)
    assert [p is None for p in got] == [protocol_allows(n) for n in numbers]


def test_every_truncation_of_the_file_loads_without_raising_and_salvages_whole_contacts(card, tmp_path):
    text = json.dumps(GOOD, ensure_ascii=False, indent=1).encode()
    good = {c["key"]: [c["key"], c["name"], c["number"]] for c in GOOD["contacts"]}
    requests = []
    for k in range(len(text)):
        path = tmp_path / f"t{k}.json"
        path.write_bytes(text[:k])
        requests.append(json.dumps({"op": "load", "path": str(path)}))
    # the flat {...} objects holding a number: the contacts as written
    objects = []
    start = text.find(b"{", 1)
    while start >= 0:
        end = text.find(b"}", start)
        if b'"number"' in text[start:end]:
            objects.append((end, json.loads(text[start:end + 1])["key"]))
        start = text.find(b"{", end)
    assert len(objects) == 4
    for k, line in enumerate(card.batch.call_many(requests)):
        cfg = json.loads(line)
        assert "error" not in cfg, (k, cfg)
        assert cfg["safe_mode"], k
        # every contact whose closing brace reached flash is called, exactly as written
        whole = sorted(key for end, key in objects if end < k)
        assert cfg["contacts"] == [good[key] for key in whole], k
        assert any(p.startswith("config: ") and "is not valid JSON" in p for p in cfg["problems"]), k


@settings(max_examples=80)
@given(blob=st.binary(max_size=400))
def test_any_bytes_in_the_file_load_without_raising(card, tmp_path_factory, blob):
    path = tmp_path_factory.mktemp("cfg") / "config.json"
    path.write_bytes(blob)
    cfg = card(op="load", path=str(path))
    assert "error" not in cfg and cfg["safe_mode"] and cfg["problems"]


@settings(max_examples=80)
@given(data=st.dictionaries(st.sampled_from(sorted(GOOD) + ["x", "sos_rounds", "stuck_ms"]),
                            st.one_of(st.none(), st.booleans(), st.integers(-5, 1 << 70), st.text(max_size=5),
                                      st.lists(st.integers(-1, 30), max_size=3),
                                      st.lists(st.dictionaries(st.sampled_from(["key", "name", "number"]),
                                                               st.one_of(st.integers(-1, 6), st.text("0123+x", max_size=4))),
                                               max_size=6))))
def test_any_json_object_validates_without_raising(card, data):
    cfg = card(op="validate", data=data)
    assert "error" not in cfg, cfg
    if cfg["safe_mode"]:
        assert cfg["problems"]
    for key, _name, number in cfg["contacts"]:
        assert 1 <= key <= 4 and protocol_allows(number)


def test_save_refuses_an_invalid_config_listing_every_problem(card, tmp_path):
    path = tmp_path / "config.json"
    ans = card(op="save", path=str(path), data={**GOOD, "server_port": 0, "sos_rounds": 99})
    assert ans["error"].startswith("ConfigError: ")
    assert "server_port: number 0 is outside 1..65535" in ans["error"]
    assert "sos_rounds: number 99 is outside 1..10" in ans["error"]
    assert not path.exists()


def test_save_then_load_round_trips(card, tmp_path):
    path = tmp_path / "config.json"
    assert card(op="save", path=str(path), data=GOOD)["ok"]
    cfg = card(op="load", path=str(path))
    assert cfg["ok"] and {k: cfg["values"][k] for k in GOOD if k != "contacts"} == \
        {k: v for k, v in GOOD.items() if k != "contacts"}
    assert not (tmp_path / "config.json.new").exists()


def test_a_save_that_reads_back_wrong_leaves_the_old_config(card, tmp_path):
    path = tmp_path / "config.json"
    assert card(op="save", path=str(path), data=GOOD)["ok"]
    new = {**GOOD, "sos_rounds": 7}
    ans = card(op="save", path=str(path), data=new, cut=10**6, flip=True)
    assert "reads back different" in ans["error"]
    assert card(op="load", path=str(path))["values"]["sos_rounds"] == GOOD["sos_rounds"]
    assert not (tmp_path / "config.json.new").exists()


def test_a_power_cut_at_every_byte_of_a_save_leaves_the_old_or_the_new_config(card, tmp_path):
    path = tmp_path / "config.json"
    old = GOOD
    new = {**GOOD, "sos_rounds": 7, "contacts": GOOD["contacts"][:2], "grid_worker_key": 2}
    size = len(json.dumps(new).encode())  # what MicroPython's json writes is no longer than this
    seen = set()
    budget = 0
    while True:
        for leftover in (path, tmp_path / "config.json.new"):
            leftover.unlink(missing_ok=True)
        assert card(op="save", path=str(path), data=old)["ok"]
        ans = card(op="save", path=str(path), data=new, cut=budget)
        cfg = card(op="load", path=str(path))
        assert cfg["ok"], (budget, cfg)
        rounds = cfg["values"]["sos_rounds"]
        assert rounds in (old["sos_rounds"], new["sos_rounds"]), budget
        seen.add(rounds)
        if "error" not in ans:
            assert rounds == 7
            break
        assert "power" in ans["error"], ans
        budget += 1
    assert seen == {old["sos_rounds"], 7} and budget > size // 2


def test_a_first_save_cut_short_is_not_provisioned_not_half_a_config(card, tmp_path):
    path = tmp_path / "config.json"
    ans = card(op="save", path=str(path), data=GOOD, cut=40)
    assert "power" in ans["error"]
    cfg = card(op="load", path=str(path))
    assert cfg["safe_mode"] and "missing" in cfg["problems"][0]


def test_a_replace_cut_between_remove_and_rename_is_completed_at_boot(card, tmp_path):
    """Filesystems whose rename does not replace: the old file removed, the new one whole."""
    path = tmp_path / "config.json"
    tmp = tmp_path / "config.json.new"
    tmp.write_text(json.dumps({**GOOD, "sos_rounds": 5}))
    cfg = card(op="load", path=str(path))
    assert cfg["ok"] and cfg["values"]["sos_rounds"] == 5
    assert path.exists() and not tmp.exists()


def test_a_file_that_is_not_an_object_still_gives_its_contacts(card, tmp_path):
    path = tmp_path / "config.json"
    path.write_text(json.dumps([{"key": 3, "name": "x", "number": "139"}, 5]))
    cfg = card(op="load", path=str(path))
    assert cfg["safe_mode"] and cfg["contacts"] == [[3, "x", "139"]]
    assert cfg["problems"][0] == "config: expected a JSON object, got list"


def test_the_defaults_and_the_limits_make_working_cores(mpy, tmp_path):
    """Every default and every extreme a valid config allows builds the cores that use it: keys,
    outbox, motion sensor (its steps fit the chip without clamping)."""
    code = """
import config, keys, outbox, lis2dh12, hwdata
lo = {}
hi = {}
for name, (a, b) in config._INT_RANGES.items():
    lo[name] = a
    hi[name] = b
lo["stuck_ms"] = max(lo["stuck_ms"], lo["long_press_ms"] + 1)
lo["retry_cap_s"] = max(lo["retry_cap_s"], lo["retry_base_s"])
part = hwdata.load("accel_lis2dh12")
chip_max = 127 * part["threshold_lsb_mg"][str(part["mode"]["full_scale_g"])]
for v in (config.DEFAULTS, lo, hi):
    k = keys.Keys(4, v["debounce_ms"], v["long_press_ms"], v["stuck_ms"])
    b = outbox.Outbox(PATH, v["outbox_entries"], v["outbox_bytes"], v["retry_base_s"] * 1000,
                      v["retry_cap_s"] * 1000, lambda n: 0)
    b.close()
    acc = lis2dh12.LIS2DH12(None, part)
    ths, dur = acc.steps(v["motion_threshold_mg"], v["motion_duration_ms"])
    assert v["motion_threshold_mg"] <= chip_max and dur < 127, v
print("ok")
""".replace("PATH", repr(str(tmp_path / "ob.log")))
    assert mpy.run(code).strip() == "ok"
