"""The alert engine's per-device settings kept in the device registry: imported from the
documented settings file (`carecard alerts settings import`), shown, and used by the engine of a
running receiver from its next step."""

from __future__ import annotations

import json
from pathlib import Path

from carecard.host.receiver.service import ReceiverThread

from receiver_helpers import Card, exchange, provision, run_cli, udp_client
from test_engine_receiver import Clock, _config, _steps, _still_position, _store, _sync


def _settings_file(path: Path, device: int, **more: str) -> Path:
    lines = ["[defaults]", 'stillness_threshold = "60s"', 'report_interval = "60s"', 'checkin_window = "60s"',
             'wake = "00:00"', 'bedtime = "00:00"', 'wake_grace = "0s"', "",
             f'[devices."{device}"]', 'name = "王奶奶"', 'family = ["+8613700137000 Daughter"]',
             *(f"{key} = {value}" for key, value in more.items())]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_settings_are_imported_checked_and_shown(tmp_path: Path) -> None:
    device = next(iter(provision(tmp_path, 1)))
    data = ("--data", str(tmp_path))
    assert run_cli("alerts", "settings", "show", *data).stdout.startswith("no alert engine settings")
    good = _settings_file(tmp_path / "engine.toml", device)
    done = run_cli("alerts", "settings", "import", str(good), *data)
    assert done.returncode == 0, done.stderr
    shown = json.loads(run_cli("alerts", "settings", "show", "--json", *data).stdout)
    assert shown["defaults"]["stillness_threshold"] == "60s"
    assert shown["devices"][str(device)]["family"] == ["+8613700137000 Daughter"]
    mine = json.loads(run_cli("alerts", "settings", "show", str(device), "--json", *data).stdout)["settings"]
    assert (mine["name"], mine["stillness_threshold"], mine["family"]) == ("王奶奶", 60, ["+8613700137000 Daughter"])
    bad = _settings_file(tmp_path / "bad.toml", device, stillness="3")
    refused = run_cli("alerts", "settings", "import", str(bad), *data)
    assert refused.returncode == 1 and "unknown key 'stillness'" in refused.stderr
    stranger = tmp_path / "stranger.toml"
    stranger.write_text('[devices."861234567890123"]\nname = "nobody"\n')
    refused = run_cli("alerts", "settings", "import", str(stranger), *data)
    assert refused.returncode == 1 and "861234567890123 not in the registry" in refused.stderr
    # nothing of a refused file was saved
    assert json.loads(run_cli("alerts", "settings", "show", "--json", *data).stdout) == shown


def test_the_running_engine_uses_the_registrys_settings_from_its_next_step(tmp_path: Path) -> None:
    device, key = next(iter(provision(tmp_path, 1).items()))
    card = Card(device, key)
    clock = Clock()
    config = _config(tmp_path)
    config.engine.settings = None  # the defaults only: 3 h of stillness before anything
    with ReceiverThread(config, engine_clock=clock) as rt:
        port = rt.receiver.udp_ports[0]
        client = udp_client()
        exchange(client, port, _still_position(card, clock))
        exchange(client, port, _still_position(card, clock))
        clock.offset = 61
        _sync(rt)
        assert _steps(tmp_path) == []  # 61 s is no stillness with the defaults
        settings = _settings_file(tmp_path / "engine.toml", device)
        assert run_cli("alerts", "settings", "import", str(settings), "--data", str(tmp_path)).returncode == 0
        _sync(rt)
        assert _steps(tmp_path) == [("inactivity", "checkin")]
        clock.offset = 122
        _sync(rt)
        assert _steps(tmp_path)[-1] == ("inactivity", "family")
    store = _store(tmp_path)
    (alert,) = store.list_alerts()
    store.close()
    assert alert.notified[-1]["recipients"] == ["+8613700137000 Daughter"] and alert.details["name"] == "王奶奶"
