"""The code only a real board runs (firmware/board/, firmware/main.py) is type-checked by pyright
against the ESP32-S3 MicroPython stubs (installed by `make setup` into .venv/mpy-stubs; the
configuration is firmware/pyrightconfig.json), and the check is shown to catch a misuse of the
ESP32 API."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
CONFIG = REPO / "firmware" / "pyrightconfig.json"
STUBS = REPO / ".venv" / "mpy-stubs"


def pyright(project: Path) -> dict:
    exe = Path(sys.executable).parent / "pyright"
    if not exe.exists() or not (STUBS / "machine.pyi").exists():
        pytest.fail("pyright or the ESP32-S3 stubs are missing: run `make setup`", pytrace=False)
    proc = subprocess.run([str(exe), "-p", str(project), "--outputjson"], capture_output=True,
                          text=True, timeout=300)
    try:
        return json.loads(proc.stdout)
    except ValueError:
        pytest.fail(f"pyright gave no report (exit {proc.returncode}): {proc.stdout}{proc.stderr}",
                    pytrace=False)


def errors(report: dict) -> list[str]:
    return [f"{d['file']}:{d['range']['start']['line'] + 1}: {d['message']}"
            for d in report["generalDiagnostics"] if d["severity"] == "error"]


def test_board_code_type_checks_against_the_esp32_s3_stubs() -> None:
    report = pyright(CONFIG)
    assert report["summary"]["filesAnalyzed"] >= 2
    assert errors(report) == []


MISUSE = '''
import esp32
import machine


def misuse():
    machine.lightsleep("1000")
    machine.Pin(4).valu()
    esp32.wake_on_ext1(machine.Pin(4), esp32.WAKEUP_ANY_HIGH)
'''


def test_the_check_catches_misuse_of_the_esp32_api(tmp_path: Path) -> None:
    # the same configuration on a copy of firmware/board/ with one bad module added
    shutil.copytree(REPO / "firmware" / "board", tmp_path / "board")
    (tmp_path / "board" / "bad.py").write_text(MISUSE)
    config = json.loads(CONFIG.read_text())
    config["include"] = ["board"]
    config["typeshedPath"] = config["stubPath"] = str(STUBS)
    config["extraPaths"] = [str(REPO / "firmware" / "lib")]
    (tmp_path / "pyrightconfig.json").write_text(json.dumps(config))
    found = errors(pyright(tmp_path / "pyrightconfig.json"))
    assert all("bad.py" in e for e in found), found
    lines = sorted(int(e.split(":")[1]) for e in found)
    assert lines == [7, 8, 9], found
