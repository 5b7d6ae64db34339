"""`carecard demo --quick` (what `make demo` runs, shortened): virtual cards provisioned from the
example sheet through the factory path, the real firmware on the card-like port against a real
receiver, and what it leaves: pictures that are real PNGs of a sensible size, GeoJSON and GPX
that parse, and closing hints that work in a fresh shell."""

from __future__ import annotations

import json
import struct
import subprocess
import sys
from pathlib import Path

import gpxpy
import pytest

from carecard.tools import micropython


def run_demo(*args: str, cwd: Path | None = None, timeout: float = 900) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "carecard.host.cli", "demo", *args],
                          capture_output=True, text=True, timeout=timeout, cwd=cwd,
                          env={**__import__("os").environ, "COLUMNS": "160"})


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    assert data[12:16] == b"IHDR" and data[-8:-4] == b"IEND", f"{path} is a truncated PNG"
    return struct.unpack(">II", data[16:24])


def test_the_quick_demo_provisions_runs_and_draws_the_village(card_port, monkeypatch, tmp_path):
    monkeypatch.setenv(micropython.SELECT_VARIABLE, card_port.executable)
    data = tmp_path / "demo"
    # a relative --data, as `make demo` gives it (data/demo)
    run = run_demo("--data", "demo", "--quick", cwd=tmp_path)
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-4000:]
    out = run.stdout
    # provisioned through the factory path: registered with the receiver, records and settings
    assert (data / "provisioning.jsonl").exists() and (data / "village.csv").exists()
    records = [json.loads(line) for line in (data / "provisioning.jsonl").read_text().splitlines()]
    assert [r["name"] for r in records] == ["陈阿婆", "王大爷", "李奶奶"]
    # each board's libraries deployed to its ROMFS partition and verified (the marker boot.py trusts)
    for n in (1, 2, 3):
        assert (data / "cards" / f"card{n}.romfs").read_bytes()[:3] == b"\xd2\xcd\x31"
        assert len((data / "cards" / f"card{n}" / "romfs.sha256").read_text().strip()) == 64
    # the live timeline: the SOS day's long press, its frame and the cascade's calls
    assert "王大爷 hold key=1 seconds=3" in out and "王大爷 SOS frame sent" in out
    assert "call key 1" in out and "no_answer" in out and "confirmed" in out
    # alerts live from the receiver's engine on the village's virtual clock: the SOS raised to
    # family and grid worker as its frame came in; the card on the table asked to check in (the
    # engine's prompt reached the card as a downlink with its next ack, nobody answered), then
    # escalated to the family
    assert "王大爷 ALERT sos raised -> family, grid_worker" in out
    assert "李奶奶 ALERT inactivity checkin -> card" in out
    assert "李奶奶 downlink: checkin_prompt" in out and "'answer': 'no_response'" in out
    assert "李奶奶 ALERT inactivity family -> family" in out
    assert "the village's day" in out
    # what it showed are the engine's commits: its alerts in the store, resolved when the day
    # ended and the card was removed from the registry; its check-in prompt in the command queue
    from carecard.host.paths import ingest_db_path
    from carecard.host.storage.sqlite.store import SQLiteStore

    store = SQLiteStore(ingest_db_path(data))
    try:
        alerts = {(a.device, a.kind, a.state, a.closed_reason) for a in store.list_alerts()}
        commands = [(c.device, c.cmd, c.state) for c in store.list_commands()]
    finally:
        store.close()
    imei = {r["name"]: int(r["imei"]) for r in records}
    table, sos = imei["李奶奶"], imei["王大爷"]
    assert (sos, "sos", "resolved", "removed") in alerts, alerts
    assert (table, "inactivity", "resolved", "removed") in alerts, alerts
    assert (table, "checkin_prompt", "done") in commands, commands
    pictures = sorted((data / "pictures").glob("*.png"))
    assert len(pictures) == 6                          # a track and a day strip per card
    for picture in pictures:
        width, height = png_size(picture)
        assert 600 <= width <= 2000 and 200 <= height <= 1200, (picture, width, height)
        assert 10_000 <= picture.stat().st_size <= 2_000_000, picture
        assert str(picture.relative_to(tmp_path)) in out   # the demo says where it wrote them
    for path in (data / "pictures").glob("*.geojson"):
        doc = json.loads(path.read_text())
        assert doc["type"] == "FeatureCollection" and doc["features"]
    gpx_files = list((data / "pictures").glob("*.gpx"))
    assert len(gpx_files) == 3
    for path in gpx_files:
        gpx = gpxpy.parse(path.read_text())
        assert sum(len(s.points) for t in gpx.tracks for s in t.segments) > 0
    # the closing hints work pasted into a fresh shell (no venv on PATH, another folder)
    hints = [line.strip() for line in out.split("look around:\n", 1)[1].splitlines()
             if line.strip().startswith(("/", "carecard")) and "serve" not in line]
    assert len(hints) == 3
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    for hint in hints:
        shell = subprocess.run(["/bin/sh", "-c", hint], cwd=elsewhere, capture_output=True, text=True,
                               env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}, timeout=60)
        assert shell.returncode == 0 and shell.stdout, (hint, shell.stderr)


def test_ctrl_c_stops_every_card_at_once_and_the_receiver_with_them(card_port, monkeypatch, tmp_path):
    """Ctrl-C while the village plays: the cards stop at their next quantum (they do not play
    their days to the end first), the receiver stops, the demo says where the data is, 130."""
    import signal

    monkeypatch.setenv(micropython.SELECT_VARIABLE, card_port.executable)
    data = tmp_path / "demo"
    proc = subprocess.Popen([sys.executable, "-m", "carecard.host.cli", "demo", "--data", str(data)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**__import__("os").environ, "COLUMNS": "160"},
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        assert proc.stdout is not None
        seen = []
        for line in proc.stdout:   # the village is playing: its first card's first hours
            seen.append(line)
            if " 林秀英 " in line and line.startswith("12-07 0"):
                break
        proc.send_signal(signal.SIGINT)
        rest, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    out = "".join(seen) + rest
    assert proc.returncode == 130, out[-3000:]
    assert f"interrupted: the cards and the receiver stopped; what they stored is in {data}" in out
    assert "12-08" not in out and "the village's day" not in out   # the days were not played out
    receiver_pid = int((data / "receiver.lock").read_text().split()[0])   # it had started
    assert not Path(f"/proc/{receiver_pid}").exists(), "the receiver is still running"


def test_the_demo_refuses_a_folder_it_did_not_make(tmp_path):
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "precious.txt").write_text("keep me")
    refused = run_demo("--data", str(tmp_path / "other"))
    assert refused.returncode == 1 and "not a demo folder" in refused.stderr
    assert (tmp_path / "other" / "precious.txt").read_text() == "keep me"


def test_the_summary_fits_80_columns_and_says_no_minus_zero():
    """The summary table on an 80-column terminal keeps every value whole (no word broken over
    lines), and an alert a few seconds "before" its incident (the SOS frame is stamped before
    the hold step's minute ends) reads +0 min, never -0 min."""
    from datetime import datetime
    from types import SimpleNamespace

    from rich.console import Console

    from carecard.host.commands.demo_cmd import summary_table
    from carecard.tools.vcard import demo

    def row(elder: str, scenario: str, alerts: list[str], delay: float | None, **more) -> dict:
        card = SimpleNamespace(elder=SimpleNamespace(name=elder),
                               day=next(d for d in demo.DAYS if d.scenario == scenario))
        return {"card": card, "frames": 129, "calls": 2, "alerts": alerts, "alert_steps": 3,
                "incident": None if delay is None else datetime(2026, 12, 7, 10, 20),
                "first_alert": None if delay is None else datetime(2026, 12, 7, 13, 25),
                "delay_min": delay, "days_per_charge": 4.6,
                "checks": [SimpleNamespace(passed=True)] * 3, **more}

    rows = [row(d.elder, d.scenario, ["inactivity", "offline", "low_battery"], 185.0) for d in demo.DAYS]
    rows[2]["delay_min"] = -0.2
    rows[0].update(alerts=[], incident=None, first_alert=None, delay_min=None)
    console = Console(width=80, record=True, color_system=None)
    console.print(summary_table(rows))
    text = console.export_text()
    assert max(len(line) for line in text.splitlines()) <= 80
    assert "-0 min" not in text and "+0 min" in text and "+185 min" in text
    for d in demo.DAYS:
        assert d.elder in text and d.title in text, (d.title, text)
    assert "13:25 +185 min" in text and "4.6 d" in text and "3/3" in text
    assert "inactivity," in text and "offline," in text and "low_battery" in text
