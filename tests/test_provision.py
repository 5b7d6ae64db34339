"""Provisioning flashed virtual cards (host/factory/provision.py) from a sheet: the config the
card's own config.py writes and reads back, the registry, the records and settings files, the
counter kept monotonic on re-provisioning; and `carecard provision` refusing a bad sheet before
anything is written."""

from __future__ import annotations

import json
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from carecard.host.cli import main
from carecard.host.engine.settings import Settings
from carecard.host.factory.flash import ImageCache, flash_device
from carecard.host.factory.link import DeviceError, DeviceLink
from carecard.host.factory.provision import CardIdentity, log_path, provision_card, register, settings_path_of
from carecard.host.factory.sheet import read_sheet
from carecard.host.receiver.registry import load_key_file, make_imei, read_records
from carecard.tools.vdevice import VirtualDevice
from test_sheet import GOOD, HEADER, csv_file

MPREMOTE = str(Path(sys.executable).parent / "mpremote")


@pytest.fixture(scope="module")
def cards(tmp_path_factory, card_port):
    """Three flashed virtual cards, shared by this module's tests (flashing takes a while)."""
    made = []
    tmp_path = tmp_path_factory.mktemp("cards")
    for i in range(3):
        folder = tmp_path / f"card{i}"
        folder.mkdir()
        made.append(VirtualDevice(folder, interpreter=card_port.executable).start())
    image = ImageCache().get(None)
    try:
        with ThreadPoolExecutor(3) as pool:
            list(pool.map(lambda card: flash_device(card.port, image), made))
        yield made
    finally:
        for card in made:
            card.stop()


def card_config(port: str) -> dict:
    proc = subprocess.run([MPREMOTE, "connect", port, "exec",
                           "import config, json; c = config.load('/config.json'); "
                           "print(json.dumps({'ok': c.ok, 'values': c.values}))"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return json.loads(proc.stdout)


CARD_SENDS = r"""
import binascii, json, socket, time, ccproto, config, counter
cfg = config.load('/config.json')
up = counter.UplinkCounter(counter.FileStore('/uplink.cnt'))
key = binascii.unhexlify(cfg.values['device_key'])
enc = ccproto.Encoder(cfg.values['device_id'], key)
dec = ccproto.Decoder(cfg.values['device_id'], key)
sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
sock.settimeout(1)
address = socket.getaddrinfo('127.0.0.1', PORT)[0][-1]
frame = enc.encode('status', {'battery_mv': 3900, 'battery_pct': 80, 'charging': 0, 'rssi_dbm': -70,
                              'motion_count': 0, 'outbox_depth': 0}, up.take(), int(time.time()))
answer = None
for attempt in range(30):  # the receiver reloads its registry every registry_poll_s
    sock.sendto(frame, address)
    try:
        answer = dec.decode(sock.recv(512))
        break
    except OSError:
        pass
print(json.dumps({'type': answer and answer['type'], 'attempts': attempt + 1}))
"""


def test_a_batch_is_provisioned_registered_and_recorded(cards, tmp_path):
    from receiver_helpers import ReceiverProcess

    elders = read_sheet(csv_file(tmp_path, [HEADER] + GOOD))
    data = tmp_path / "data"
    data.mkdir()
    records = tmp_path / "batch.jsonl"
    receiver = ReceiverProcess(data)  # running before the cards are registered
    results = []
    for n, (card, elder) in enumerate(zip(cards, elders)):
        identity = CardIdentity(make_imei(86277107681800 + n), f"8986001234567890123{n}", "READY", "home")
        with DeviceLink(card.port) as link:
            results.append(provision_card(link, elder, identity))
    register(results, {r.port: e for r, e in zip(results, elders)}, data, records)
    for card, elder, result in zip(cards, elders, results):
        # the card's own config.py reads what was written, through the real mpremote
        on_card = card_config(card.port)
        assert on_card["ok"]
        values = on_card["values"]
        assert values["device_id"] == result.identity.imei
        assert values["contacts"] == [[c.key, c.name, c.number] for c in elder.contacts]
        assert (values["server_host"], values["server_port"]) == (elder.server_host, elder.server_port)
        assert values["config_version"] == result.config_version
        assert not (card.folder / "config.json.new").exists()
        assert result.label == f"{result.identity.imei}  {result.identity.iccid}  {elder.name}"
    keys = load_key_file(data)
    assert {keys[r.identity.imei].hex() for r in results} == {r.values["device_key"] for r in results}
    assert len({r.values["device_key"] for r in results}) == 3
    good, problems = read_records(records)  # the records file is importable as documented
    assert not problems and [s.name for s in good] == [e.name for e in elders]
    settings = Settings.from_mapping(json.loads(settings_path_of(records).read_text(encoding="utf-8")))
    first = settings.for_device(str(results[0].identity.imei))
    assert (first.name, first.wake, first.home) == ("王奶奶", 6 * 3600 + 1800, (24.95, 118.38))
    assert first.grid_worker == ("+85291234567 网格员 陈",)
    log = [json.loads(line) for line in log_path(records).read_text(encoding="utf-8").splitlines()]
    assert [entry["firmware"] for entry in log] == [r.firmware for r in results]
    assert "key" not in log[0]
    # a provisioned card, with its config and the firmware's codec and counter, sends a frame
    # the running receiver accepts (acks) once it has picked the registry change up
    proc = subprocess.run([MPREMOTE, "connect", cards[0].port, "exec",
                           CARD_SENDS.replace("PORT", str(receiver.udp_port))],
                          capture_output=True, text=True, timeout=120)
    status, err = receiver.terminate()
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert json.loads(proc.stdout)["type"] == "ack", (proc.stdout, err[-2000:])


def test_reprovisioning_moves_the_counter_up_with_a_new_key(cards, tmp_path):
    elder = read_sheet(csv_file(tmp_path, [HEADER] + GOOD))[0]
    identity = CardIdentity(make_imei(86277107681899))
    card = cards[0]
    with DeviceLink(card.port) as link:
        first = provision_card(link, elder, identity)
    with DeviceLink(card.port) as link:
        second = provision_card(link, elder, identity, host_counter=5000)
    assert second.values["device_key"] != first.values["device_key"]
    assert second.config_version == first.config_version + 1 and second.counter_from == 5001
    # the card's counter module continues above everything the host has seen
    proc = subprocess.run([MPREMOTE, "connect", card.port, "exec",
                           "import counter; print(counter.UplinkCounter(counter.FileStore('/uplink.cnt')).take())"],
                          capture_output=True, text=True, timeout=60)
    assert int(proc.stdout) >= 5001
    with DeviceLink(card.port) as link:  # never moved back down
        third = provision_card(link, elder, identity, host_counter=10)
    assert third.counter_from >= 5001


def test_an_unflashed_card_is_refused(tmp_path, card_port):
    folder = tmp_path / "blank"
    folder.mkdir()
    elder = read_sheet(csv_file(tmp_path, [HEADER] + GOOD))[0]
    with VirtualDevice(folder, interpreter=card_port.executable) as blank, DeviceLink(blank.port) as link:
        with pytest.raises(DeviceError, match="no CareCard firmware") as info:
            provision_card(link, elder, CardIdentity(make_imei(86277107681898)))
    assert "carecard flash --port" in info.value.fix
    assert list(folder.iterdir()) == []


def test_a_bad_sheet_is_rejected_with_every_problem(tmp_path, capsys):
    rows = [HEADER] + [list(r) for r in GOOD]
    rows[2][HEADER.index("contact1_number")] = "1234"
    rows[3][HEADER.index("bed_time")] = "late"
    status = main(["provision", "--sheet", str(csv_file(tmp_path, rows))])
    err = capsys.readouterr().err
    assert status == 1
    assert "row 3, column contact1_number: '1234' is not a Chinese mobile number" in err
    assert "row 4, column bed_time: 'late' is not a time of day" in err
    assert "2 problems; no card was touched" in err


def test_a_good_sheet_is_listed(tmp_path, capsys):
    assert main(["provision", "--sheet", str(csv_file(tmp_path, [HEADER] + GOOD))]) == 0
    out = capsys.readouterr().out
    assert "3 elders" in out and "王奶奶" in out and "+8613800138000" in out
    assert main(["provision", "--sheet", str(csv_file(tmp_path, [HEADER] + GOOD)), "--row", "3"]) == 0
    out = capsys.readouterr().out
    assert "1 elder" in out and "李爷爷" in out and "王奶奶" not in out
    assert main(["provision", "--sheet", str(csv_file(tmp_path, [HEADER] + GOOD)), "--row", "9"]) == 2
