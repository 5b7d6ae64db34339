"""`carecard devices` add / import / list, and the provisioning-records format."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

from hypothesis import HealthCheck, given, settings, strategies as st

from carecard.host.keyfile import load_keys
from carecard.host.receiver.registry import make_imei, read_records

from receiver_helpers import run_cli

IMEI_A = str(make_imei(86123456000001))
IMEI_B = str(make_imei(86123456000002))
IMEI_C = str(make_imei(86123456000003))
KEY = "00112233445566778899aabbccddeeff"


def test_add_list_and_key_file_is_private(tmp_path: Path) -> None:
    data = tmp_path / "data"
    result = run_cli("devices", "add", IMEI_A, "--name", "王奶奶", "--key", KEY, "--contact",
                     "1:+8613800138000:Son", "--contact", "4:+8613900139000:网格员", "--iccid",
                     "89860012345678901234", "--data", str(data))
    assert result.returncode == 0, result.stderr
    assert KEY not in result.stdout + result.stderr  # never printed unless asked for
    mode = stat.S_IMODE(os.stat(data / "keys.json").st_mode)
    assert mode == 0o600
    assert load_keys(data / "keys.json") == {int(IMEI_A): bytes.fromhex(KEY)}
    listing = run_cli("devices", "--data", str(data))
    assert listing.returncode == 0
    assert IMEI_A in listing.stdout and "王奶奶" in listing.stdout and "never" in listing.stdout
    records = [json.loads(line) for line in run_cli("devices", "--data", str(data), "--json").stdout.splitlines()]
    assert records[0]["contacts"] == [{"key": 1, "number": "+8613800138000", "name": "Son"},
                                      {"key": 4, "number": "+8613900139000", "name": "网格员"}]
    assert records[0]["iccid"] == "89860012345678901234"

    again = run_cli("devices", "add", IMEI_A, "--name", "x", "--generate-key", "--data", str(data))
    assert again.returncode == 1 and "already registered" in again.stderr
    replaced = run_cli("devices", "add", IMEI_A, "--name", "x", "--generate-key", "--print-key",
                       "--replace", "--data", str(data))
    assert replaced.returncode == 0
    printed = replaced.stdout.strip().splitlines()[-1]
    assert load_keys(data / "keys.json")[int(IMEI_A)] == bytes.fromhex(printed)


def test_add_rejects_bad_input_with_one_line(tmp_path: Path) -> None:
    data = str(tmp_path / "data")
    cases = [
        (["devices", "add", "861234567890123", "--name", "a", "--generate-key"], "check digit"),
        (["devices", "add", "12345", "--name", "a", "--generate-key"], "not an IMEI"),
        (["devices", "add", IMEI_A, "--name", "a", "--key", "abc"], "not hexadecimal"),
        (["devices", "add", IMEI_A, "--name", "a", "--key", "00" * 20], "16 or 32 bytes"),
        (["devices", "add", IMEI_A, "--name", "a", "--generate-key", "--contact", "5:+861:x"], "1-4"),
        (["devices", "add", IMEI_A, "--name", "a", "--generate-key", "--contact", "1:abc:x"], "phone number"),
        (["devices", "add", IMEI_A, "--name", "a", "--generate-key", "--contact", "1:+8613800000000:a",
          "--contact", "1:+8613800000001:b"], "twice"),
        (["devices", "add", IMEI_A, "--name", "a" * 80, "--generate-key"], "longer than"),
    ]
    for argv, message in cases:
        result = run_cli(*argv, "--data", data)
        assert result.returncode != 0, argv
        assert message in result.stderr, (argv, result.stderr)
        assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1
        assert "00" * 20 not in result.stderr
    assert not (tmp_path / "data" / "keys.json").exists()


def test_import_csv_reports_every_bad_row_and_imports_the_good_ones(tmp_path: Path) -> None:
    data = tmp_path / "data"
    records = tmp_path / "batch-7.csv"
    records.write_text(
        "imei,key,name,contact1_number,contact1_name,contact4_number,contact4_name,iccid,phone\n"
        f"{IMEI_A},{KEY},Grandma Li,+8613800000001,Son,+8613900000004,Grid worker,89860012345678901234,+8613700000000\n"
        f"861234567890123,{KEY},Bad check digit,,,,,,\n"
        f"{IMEI_B},nothex,Bad key,,,,,,\n"
        f"{IMEI_C},{KEY},,,,,,,\n"
        f"{IMEI_B},{KEY},Half contact,+8613800000001,,,,,\n"
        f"{IMEI_B},{KEY},Grandpa Wu,,,,,,\n"
        f"{IMEI_A},{KEY},Duplicate of line 2,,,,,,\n"
        f"{IMEI_C},{KEY},Too few cells\n",
        encoding="utf-8")
    result = run_cli("devices", "import", str(records), "--data", str(data))
    assert result.returncode == 1
    errors = result.stderr.strip().splitlines()
    assert [e.split(": ", 1)[0] for e in errors] == [f"{records}:{n}" for n in (3, 4, 5, 6, 8, 9)]
    assert "check digit" in errors[0] and "hexadecimal" in errors[1] and "name" in errors[2]
    assert "contact1_name" in errors[3] and "already given at" in errors[4] and "cells" in errors[5]
    assert "imported 2 devices" in result.stdout
    assert set(load_keys(data / "keys.json")) == {int(IMEI_A), int(IMEI_B)}
    listing = json.loads(run_cli("devices", "--data", str(data), "--json").stdout.splitlines()[0])
    assert listing["phone"] == "+8613700000000" and len(listing["contacts"]) == 2
    # importing the same file again: every row is now a problem, nothing changes
    again = run_cli("devices", "import", str(records), "--data", str(data))
    assert again.returncode == 1 and "imported 0 devices" in again.stdout
    assert again.stderr.count("already registered") == 2


def test_import_jsonl(tmp_path: Path) -> None:
    data = tmp_path / "data"
    records = tmp_path / "batch.jsonl"
    lines = [
        {"imei": IMEI_A, "key": KEY, "name": "Grandma Li",
         "contacts": [{"key": 1, "number": "+8613800000001", "name": "Son"}], "iccid": "89860012345678901234"},
        {"imei": IMEI_B, "key": KEY, "name": "Grandpa Wu", "unknown_field": 1},
        {"imei": int(IMEI_C), "key": KEY * 2, "name": "Auntie Zhang", "phone": "+8613700000001"},
    ]
    records.write_text("\n".join(json.dumps(line) for line in lines) + "\n{not json\n\n")
    result = run_cli("devices", "import", str(records), "--data", str(data))
    assert result.returncode == 1
    assert f"{records}:2: unknown field 'unknown_field'" in result.stderr
    assert f"{records}:4: not valid JSON" in result.stderr
    keys = load_keys(data / "keys.json")
    assert keys == {int(IMEI_A): bytes.fromhex(KEY), int(IMEI_C): bytes.fromhex(KEY * 2)}


def test_import_is_all_or_nothing_when_the_key_file_cannot_be_written(tmp_path: Path) -> None:
    data = tmp_path / "data"
    assert run_cli("devices", "add", IMEI_A, "--name", "a", "--key", KEY, "--data", str(data)).returncode == 0
    before = (data / "keys.json").read_bytes()
    (data / "keys.json.tmp").mkdir()  # a real write failure, even for root: EISDIR
    records = tmp_path / "r.csv"
    records.write_text(f"imei,key,name\n{IMEI_B},{KEY},b\n{IMEI_C},{KEY},c\n")
    result = run_cli("devices", "import", str(records), "--data", str(data))
    assert result.returncode == 1 and "nothing imported" in result.stderr, result.stderr
    assert (data / "keys.json").read_bytes() == before
    listing = run_cli("devices", "--data", str(data), "--json").stdout.splitlines()
    assert [json.loads(line)["imei"] for line in listing] == [IMEI_A]
    (data / "keys.json.tmp").rmdir()
    assert run_cli("devices", "import", str(records), "--data", str(data)).returncode == 0
    assert len(run_cli("devices", "--data", str(data), "--json").stdout.splitlines()) == 3


def test_remove_takes_the_card_and_its_key_out_and_adding_it_again_works(tmp_path: Path) -> None:
    data = tmp_path / "data"
    for imei, name in ((IMEI_A, "王奶奶"), (IMEI_B, "李爷爷")):
        assert run_cli("devices", "add", imei, "--name", name, "--key", KEY, "--data", str(data)).returncode == 0
    queued = run_cli("send", IMEI_A, "locate", "--data", str(data))
    assert queued.returncode == 0, queued.stderr

    (data / "keys.json.tmp").mkdir()  # the key file cannot be written (EISDIR, even for root)
    failed = run_cli("devices", "remove", IMEI_A, "--data", str(data))
    assert failed.returncode == 1 and "cannot write the key file" in failed.stderr, failed.stderr
    assert int(IMEI_A) in load_keys(data / "keys.json")
    assert "王奶奶" in run_cli("devices", "--data", str(data)).stdout  # nothing of it happened
    (data / "keys.json.tmp").rmdir()

    removed = run_cli("devices", "remove", IMEI_A, "--data", str(data))
    assert removed.returncode == 0, removed.stderr
    assert f"removed device {IMEI_A} (王奶奶)" in removed.stdout
    assert load_keys(data / "keys.json") == {int(IMEI_B): bytes.fromhex(KEY)}
    records = {r["imei"]: r for r in map(json.loads, run_cli("devices", "--data", str(data), "--json",
                                                               "--all").stdout.splitlines())}
    assert (records[IMEI_A]["name"], records[IMEI_A]["key"]) == ("", False)
    assert [c["state"] for c in records[IMEI_A]["commands"]] == ["cancelled"]
    assert records[IMEI_B]["name"] == "李爷爷"
    listing = run_cli("devices", "--data", str(data)).stdout
    assert "(removed)" in listing and "王奶奶" not in listing

    for unknown in (IMEI_A, IMEI_C):  # removed already, never added: one line naming it
        again = run_cli("devices", "remove", unknown, "--data", str(data))
        assert again.returncode == 1 and again.stdout == ""
        assert again.stderr.count("\n") == 1 and f"device {unknown} is not registered" in again.stderr
        assert "carecard devices" in again.stderr
    bad = run_cli("devices", "remove", "86-12", "--data", str(data))
    assert bad.returncode == 2 and "not a device id" in bad.stderr

    back = run_cli("devices", "add", IMEI_A, "--name", "张奶奶", "--generate-key", "--data", str(data))
    assert back.returncode == 0, back.stderr
    assert "张奶奶" in run_cli("devices", "--data", str(data)).stdout


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=st.text(max_size=300), binary=st.binary(max_size=200))
def test_records_parser_never_crashes(tmp_path: Path, text: str, binary: bytes) -> None:
    from carecard.host.receiver.registry import RegistryError

    for name, content in (("r.csv", ("imei,key,name\n" + text).encode()), ("r.jsonl", text.encode()),
                          ("b.csv", binary)):
        path = tmp_path / name
        path.write_bytes(content)
        try:
            good, problems = read_records(path)
        except RegistryError as exc:
            assert str(exc)
            continue
        for problem in problems:
            assert str(problem).startswith(f"{path}:")
        for spec_ in good:
            assert len(str(spec_.device)) == 15 and len(spec_.key) in (16, 32)


def test_add_and_import_set_the_village(tmp_path: Path) -> None:
    data = tmp_path / "data"
    added = run_cli("devices", "add", IMEI_A, "--name", "王奶奶", "--key", KEY, "--village", "石井村",
                    "--data", str(data))
    assert added.returncode == 0, added.stderr
    csv_records = tmp_path / "batch.csv"
    csv_records.write_text(f"imei,key,name,village\n{IMEI_B},{KEY},李爷爷,水头村\n{IMEI_C},{KEY},陈阿婆,\n",
                           encoding="utf-8")
    imported = run_cli("devices", "import", str(csv_records), "--data", str(data))
    assert imported.returncode == 0, imported.stderr
    listed = {r["imei"]: r["village"] for r in map(json.loads, run_cli(
        "devices", "--data", str(data), "--json").stdout.splitlines())}
    assert listed == {IMEI_A: "石井村", IMEI_B: "水头村", IMEI_C: None}

    jsonl = tmp_path / "more.jsonl"
    jsonl.write_text(json.dumps({"imei": IMEI_A, "key": KEY, "name": "王奶奶", "village": "官桥村"}) + "\n"
                     + json.dumps({"imei": IMEI_B, "key": KEY, "name": "李爷爷", "village": "\x07"}) + "\n")
    replaced = run_cli("devices", "import", str(jsonl), "--replace", "--data", str(data))
    assert replaced.returncode == 1 and f"{jsonl}:2: village: control characters" in replaced.stderr
    listed = {r["imei"]: r["village"] for r in map(json.loads, run_cli(
        "devices", "--data", str(data), "--json").stdout.splitlines())}
    assert listed[IMEI_A] == "官桥村"
    bad = run_cli("devices", "add", IMEI_C, "--name", "x", "--key", KEY, "--village", " ", "--replace",
                  "--data", str(data))
    assert bad.returncode == 2 and "--village" in bad.stderr
