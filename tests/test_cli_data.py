"""How every command finds the data folder (--data, else CARECARD_DATA, else the receiver's
configuration file: --config or ./carecard.toml, else ./data), cards by IMEI or name, --json
output, --version, tables with Chinese names, and decode's checks without a key."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest

from carecard.host.cli import build_parser, main
from carecard.host.commands.devices_cmds import display_width
from carecard.host.commands.receive_cmd import build_config
from carecard.host.keyfile import load_keys
from carecard.host.paths import ingest_db_path
from carecard.host.receiver.registry import make_imei
from carecard.protocol import encode_frame, spec
from carecard.protocol.doc import EXAMPLE_KEY, EXAMPLE_POSITION

from cli_helpers import DEVICE, NAME, fill_data_folder
from receiver_helpers import run_cli

OTHER = str(make_imei(86123456000017))


@pytest.fixture
def places(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Path]:
    """Four filled data folders, one per way of naming it, and a working folder with no ./data."""
    folders = {}
    for how in ("flag", "env", "config", "default_config"):
        folders[how] = tmp_path / f"data-{how}"
        fill_data_folder(folders[how])
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    monkeypatch.delenv("CARECARD_DATA", raising=False)
    (tmp_path / "receiver.toml").write_text('[receive]\ndata_dir = "data-config"\n')
    (work / "carecard.toml").write_text(f'[receive]\ndata_dir = "{folders["default_config"]}"\n')
    return {"root": tmp_path, "work": work, **folders}


# Each command, as the card's owner would run it; `{device}` is filled in with IMEI or name.
COMMANDS = [
    ["devices"],
    ["devices", "--json"],
    ["events"],
    ["events", "{device}"],
    ["track", "{device}", "--format", "csv"],
    ["send", "{device}", "locate"],
    ["send", "{device}", "intervals", "--position", "600", "--status", "3600"],
]


def _argv(command: list[str], device: str) -> list[str]:
    return [part.replace("{device}", device) for part in command]


def _queued(folder: Path) -> int:
    with sqlite3.connect(ingest_db_path(folder)) as conn:
        return conn.execute("SELECT COUNT(*) FROM commands").fetchone()[0]


@pytest.mark.parametrize("command", COMMANDS, ids=[" ".join(c) for c in COMMANDS])
@pytest.mark.parametrize("device", [str(DEVICE), NAME], ids=["imei", "name"])
def test_every_command_finds_the_data_folder_the_same_way(places: dict[str, Path], command: list[str],
                                                          device: str, monkeypatch: pytest.MonkeyPatch,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    argv = _argv(command, device)
    expected = {"flag": argv + ["--data", str(places["flag"])],
                "config": argv + ["--config", str(places["root"] / "receiver.toml")],
                "default_config": argv}
    for how, args in expected.items():  # --data beats the file; a given --config beats ./carecard.toml
        before = {name: _queued(places[name]) for name in ("flag", "env", "config", "default_config")}
        assert main(args) == 0, (how, capsys.readouterr().err)
        out = capsys.readouterr().out
        assert str(DEVICE) in out or NAME in out, (how, out)
        if command[0] == "send":
            after = {name: _queued(places[name]) for name in before}
            assert [name for name in before if after[name] != before[name]] == [how]
    monkeypatch.setenv("CARECARD_DATA", str(places["env"]))
    before = _queued(places["env"])
    assert main(argv + ["--config", str(places["root"] / "receiver.toml")]) == 0  # env beats the file
    assert str(DEVICE) in capsys.readouterr().out or command[0] == "send"
    if command[0] == "send":
        assert _queued(places["env"]) == before + 1
    assert main(argv + ["--data", str(places["flag"])]) == 0  # the flag beats the environment


def test_check_finds_the_data_folder_the_same_way(places: dict[str, Path], monkeypatch: pytest.MonkeyPatch,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    (places["default_config"] / "events.sqlite").unlink()  # tells the folders apart
    assert main(["check"]) == 0 and capsys.readouterr().out == "carecard.sqlite: ok\n"
    monkeypatch.setenv("CARECARD_DATA", str(places["env"]))
    assert main(["check"]) == 0 and "events.sqlite: ok" in capsys.readouterr().out


def test_devices_add_and_import_write_where_the_others_read(places: dict[str, Path],
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    target = places["root"] / "data-new"
    monkeypatch.setenv("CARECARD_DATA", str(target))
    assert main(["devices", "add", OTHER, "--name", "李爷爷", "--generate-key"]) == 0
    assert int(OTHER) in load_keys(target / "keys.json")
    monkeypatch.delenv("CARECARD_DATA")
    records = places["root"] / "records.csv"
    records.write_text(f"imei,name,key\n{make_imei(86123456000025)},Zhang,{'11' * 16}\n")
    assert main(["devices", "import", str(records)]) == 0  # ./carecard.toml's data_dir
    assert make_imei(86123456000025) in load_keys(places["default_config"] / "keys.json")


def test_receive_reads_the_same_configuration(places: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    parser = build_parser()
    assert build_config(parser.parse_args(["receive"])).data_dir == places["default_config"]
    config = build_config(parser.parse_args(["receive", "--config", str(places["root"] / "receiver.toml")]))
    assert config.data_dir == places["root"] / "data-config"
    monkeypatch.setenv("CARECARD_DATA", str(places["env"]))
    assert build_config(parser.parse_args(["receive"])).data_dir == places["env"]
    assert build_config(parser.parse_args(["receive", "--data", "x"])).data_dir == Path("x")
    (places["work"] / "carecard.toml").unlink()
    monkeypatch.delenv("CARECARD_DATA")
    assert build_config(parser.parse_args(["receive"])).data_dir == Path("data")


def test_a_bad_configuration_file_stops_every_command_with_one_line(places: dict[str, Path],
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    (places["work"] / "carecard.toml").write_text("[receive]\ndata_dir = 5\n")
    for argv in (["devices"], ["events"], ["track", str(DEVICE)], ["send", str(DEVICE), "locate"]):
        assert main(argv) == 1, argv
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "carecard.toml" in err and "data_dir" in err, err


def test_json_output_of_send_and_import(places: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    data = ["--data", str(places["flag"])]
    capsys.readouterr()
    assert main(["send", NAME, "checkin", "--timeout", "120", "--json", *data]) == 0
    queued = json.loads(capsys.readouterr().out)
    assert queued["device"] == str(DEVICE) and queued["cmd"] == "checkin_prompt"
    assert queued["args"]["timeout_s"] == 120 and queued["state"] == "queued"
    assert main(["send", str(DEVICE), "--json", *data, "cancel", str(queued["seq"])]) == 0
    assert json.loads(capsys.readouterr().out)["state"] == "cancelled"
    records = places["root"] / "records.jsonl"
    records.write_text(f'{{"imei": "{OTHER}", "name": "Li", "key": "{"22" * 16}"}}\nnot json\n')
    assert main(["devices", "import", str(records), "--json", *data]) == 1
    out, err = capsys.readouterr()
    report = json.loads(out)
    assert report["imported"] == [OTHER] and len(report["bad_records"]) == 1 and err == ""
    assert main(["devices", "import", str(records), "--json", *data]) == 1
    again = json.loads(capsys.readouterr().out)
    assert again["imported"] == [] and "already registered" in again["bad_records"][1]


def test_version() -> None:
    result = run_cli("--version")
    assert result.returncode == 0 and result.stdout.strip() == "carecard 0.1.0"


def test_help_states_the_exit_statuses() -> None:
    text = run_cli("--help").stdout
    assert "\n  0  done\n  1  failed:" in text and "\n  2  usage:" in text
    assert "provisioning" not in text and "simulation" not in text


def test_table_columns_line_up_with_chinese_names(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = ["--data", str(tmp_path)]
    for imei, name in ((OTHER, "Li Wei"), (str(make_imei(86123456000033)), "王奶奶")):
        assert main(["devices", "add", imei, "--name", name, "--generate-key", *data]) == 0
    capsys.readouterr()
    assert main(["devices", *data]) == 0
    header, *rows = capsys.readouterr().out.splitlines()
    column = display_width(header[:header.index("LAST SEEN")])
    assert all(display_width(row[:row.index("never")]) == column for row in rows), rows
    assert display_width("王奶奶") == 6 and display_width("Li") == 2


@pytest.mark.parametrize("frame, reason", [
    (bytes([spec.VERSION, 1]) + bytes(598), "exceeds the maximum"),
    (bytes([9]) + encode_frame(EXAMPLE_POSITION, EXAMPLE_KEY)[1:], "version 9"),
    (bytes([spec.VERSION, 255]) + encode_frame(EXAMPLE_POSITION, EXAMPLE_KEY)[2:], "type code 255"),
])
def test_decode_without_a_key_rejects_what_no_key_could_accept(frame: bytes, reason: str,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["decode", frame.hex()]) == 1
    out, err = capsys.readouterr()
    assert out == "" and err.count("\n") == 1 and reason in err


def test_decode_without_a_key_names_the_type(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["decode", encode_frame(EXAMPLE_POSITION, EXAMPLE_KEY).hex()]) == 0
    header = json.loads(capsys.readouterr().out)
    assert header["type"] == "position" and header["direction"] == "uplink" and header["verified"] is False


def test_decode_stream_with_no_frame_says_so(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["decode", "--stream", bytes(range(1, 200)).hex()]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no frame found in 398 bytes" in err


@pytest.mark.usefixtures("mpy")  # the benchmark runs the card's codec on MicroPython
def test_bench_json_gives_every_figure_as_data() -> None:
    result = run_cli("bench", "protocol", "--json", "--frames", "200", "--rounds", "1",
                     "--card-frames", "50", timeout=300)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)  # one object, nothing else on stdout
    assert report["bench"] == "protocol" and report["status"] == 0
    figures = {figure["name"]: figure for figure in report["figures"]}
    assert figures["position frame"]["numbers"] == [len(encode_frame(EXAMPLE_POSITION, EXAMPLE_KEY))]
    rate, microseconds = figures["host decode+verify"]["numbers"]
    assert rate > 0 and microseconds == pytest.approx(1e6 / rate, rel=0.01)
    assert result.stderr.startswith("carecard bench protocol: measuring")  # said before the first figure


def test_bench_figure_lines_become_data() -> None:
    from carecard.host.commands.bench_cmds import figure

    assert figure("host decode+verify: 77,778 frames/s (12.86 us/frame)") == {
        "name": "host decode+verify", "text": "77,778 frames/s (12.86 us/frame)", "numbers": [77778, 12.86]}
    assert figure("  ratio: the parser takes 2.50x the time") == {
        "name": "ratio", "text": "the parser takes 2.50x the time", "numbers": [2.5]}
    assert figure("medians of 5 runs") == {"name": None, "text": "medians of 5 runs", "numbers": [5]}
