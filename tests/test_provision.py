"""Provisioning flashed virtual cards (host/factory/provision.py) from a sheet: the config the
card's own config.py writes and reads back, the registry, the records and settings files, the
counter kept monotonic on re-provisioning; and `carecard provision` refusing a bad sheet before
anything is written."""

from __future__ import annotations

import json
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import pytest

from carecard.host.cli import main
from carecard.host.engine.settings import Settings
from carecard.host.paths import ingest_db_path
from carecard.host.storage.sqlite.store import SQLiteStore
from carecard.host.factory.cardstep import ModemSession, identity_of
from carecard.host.factory.flash import ImageCache, flash_device
from carecard.host.factory.link import DeviceError, DeviceLink
from carecard.host.factory.provision import CardIdentity, log_path, provision_card, register, settings_path_of
from carecard.host.factory.sheet import read_sheet
from carecard.host.receiver.registry import load_key_file, make_imei, read_records
from carecard.tools.vcard.modem_sim import Identity, Timing
from carecard.tools.vcard.pty_modem import PtyModem
from carecard.tools.vdevice import VirtualDevice
from test_sheet import GOOD, HEADER, csv_file

MPREMOTE = str(Path(sys.executable).parent / "mpremote")


FAST_MODEM = Timing(cpin_after_ms=100, pdn_after_ms=150, sms_done_after_ms=200, ims_pdn_after_ms=250,
                    pb_done_after_ms=300, register_after_ms=200)
CARD_IMEIS = [make_imei(86277107681700 + i) for i in range(3)]


@pytest.fixture(scope="module")
def cards(tmp_path_factory, card_port):
    """Three flashed virtual cards, each with a simulated A7670 (its own IMEI and ICCID) on its
    UART 1, shared by this module's tests (flashing takes a while)."""
    made, modems = [], []
    tmp_path = tmp_path_factory.mktemp("cards")
    try:
        for i in range(3):
            folder = tmp_path / f"card{i}"
            folder.mkdir()
            modems.append(PtyModem(powered=True, timing=FAST_MODEM,
                                   identity=Identity(imei=str(CARD_IMEIS[i]), iccid=f"8986001234567890170{i}")))
            made.append(VirtualDevice(folder, interpreter=card_port.executable,
                                      uarts={1: modems[-1].port}).start())
            made[-1].modem = modems[-1]
        image = ImageCache().get(None)
        with ThreadPoolExecutor(3) as pool:
            list(pool.map(lambda card: flash_device(card.port, image), made))
        yield made
    finally:
        for card in made:
            card.stop()
        for modem in modems:
            modem.close()


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


def test_a_batch_is_provisioned_registered_and_recorded(cards, tmp_path, request):
    from receiver_helpers import ReceiverProcess

    elders = read_sheet(csv_file(tmp_path, [HEADER] + GOOD))
    data = tmp_path / "data"
    data.mkdir()
    records = tmp_path / "batch.jsonl"
    receiver = ReceiverProcess(data)  # running before the cards are registered
    request.addfinalizer(lambda: receiver.proc.poll() is None and receiver.kill())  # a failed assert
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
    # the sheet's village column in the registry (a grid worker's dashboard shows its cards)
    registry = SQLiteStore(ingest_db_path(data))
    try:
        villages = {device: d.village for device, d in registry.load_devices().items()}
    finally:
        registry.close()
    assert [villages[r.identity.imei] for r in results] == ["官桥村", "官桥村", None]
    assert len({r.values["device_key"] for r in results}) == 3
    good, problems = read_records(records)  # the records file is importable as documented
    assert not problems and [s.name for s in good] == [e.name for e in elders]
    settings = Settings.from_mapping(json.loads(settings_path_of(records).read_text(encoding="utf-8")))
    first = settings.for_device(str(results[0].identity.imei))
    assert (first.name, first.wake, first.home) == ("王奶奶", 6 * 3600 + 1800, (24.95, 118.38))
    assert first.grid_worker == ("+85291234567 网格员 陈",)
    # and in the registry, where a running receiver's engine picks them up (settings loader)
    store = SQLiteStore(ingest_db_path(data))
    try:
        _defaults, in_registry = store.load_engine_settings()
    finally:
        store.close()
    assert {device: table["wake"] for device, table in in_registry.items()} == {
        r.identity.imei: e.wake for r, e in zip(results, elders)}
    assert Settings.from_mapping({"devices": {str(d): t for d, t in in_registry.items()}}).for_device(
        str(results[0].identity.imei)).home == (24.95, 118.38)
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


def test_carecard_provision_a_batch_over_ports_then_a_card_boots_and_is_accepted(cards, tmp_path, capsys):
    """`carecard provision --port ...` on three virtual cards: a bad sheet touches nothing; a good
    one goes through each card's modem (IMEI and ICCID from it, the SIM phonebook), its config,
    the registry; then a card boots its own main.py from that config and its frames reach a real
    `carecard receive`, which accepts them."""
    from receiver_helpers import ReceiverProcess

    data = tmp_path / "data"
    data.mkdir()
    receiver = ReceiverProcess(data)  # running before the cards are registered
    try:
        rows = [HEADER] + [list(r) for r in GOOD]
        for row in rows[1:]:
            row[HEADER.index("server")] = f"127.0.0.1:{receiver.udp_port}"
        ports = [arg for card in cards for arg in ("--port", card.port)]
        bad = [list(r) for r in rows]
        bad[3][HEADER.index("wake_time")] = "25:00"
        before = {card.port: sorted(p.name for p in card.folder.iterdir()) for card in cards}
        assert main(["provision", "--sheet", str(csv_file(tmp_path, bad)), "--data", str(data), *ports]) == 1
        assert "row 4, column wake_time" in capsys.readouterr().err
        assert {card.port: sorted(p.name for p in card.folder.iterdir()) for card in cards} == before
        assert not (data / "provisioning.jsonl").exists()

        sheet = csv_file(tmp_path, rows)
        status = main(["provision", "--sheet", str(sheet), "--data", str(data), "--modem-wait", "30", *ports])
        out = capsys.readouterr().out
        assert status == 0, out
        elders = read_sheet(sheet)
        for card, elder, imei in zip(cards, elders, CARD_IMEIS):
            assert f"{card.port}: IMEI {imei}, ICCID " in out  # from the card's modem
            assert f"{imei}  {card.modem.sim.identity.iccid}  {elder.name}" in out  # its label
            values = card_config(card.port)["values"]  # the card's own config.py reads it back
            assert (values["device_id"], values["owner_name"]) == (imei, elder.name)
            assert values["contacts"] == [[c.key, c.name, c.number] for c in elder.contacts]
            book = card.modem.control(lambda sim: dict(sim.phonebook))
            assert sorted(book) == [c.key for c in elder.contacts]
        keys = load_key_file(data)
        assert set(keys) >= set(CARD_IMEIS)
        settings = Settings.from_mapping(json.loads(settings_path_of(data / "provisioning.jsonl")
                                                    .read_text(encoding="utf-8")))
        assert settings.for_device(str(CARD_IMEIS[0])).home == (24.95, 118.38)

        # the first card boots its own main.py (a soft reset at the friendly prompt) from the
        # provisioned config: its modem driver opens data and its frames reach the receiver
        card = cards[0]
        card._send_child(b"\x04")
        stored = wait_for_frames(data, CARD_IMEIS[0], within_s=120)
    finally:
        status, err = receiver.terminate()
    # stored: authenticated with the key provisioning wrote on the card and registered
    assert stored, err[-3000:]
    assert stored[0][1] == "hello", stored  # the card's first frame after a boot


def wait_for_frames(data: Path, device: int, within_s: float) -> list[tuple[int, str]]:
    """`device`'s frames the receiver stored (counter, type), once there are some (or [] after
    within_s seconds)."""
    import sqlite3
    import time

    from carecard.host.paths import ingest_db_path

    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        conn = sqlite3.connect(f"file:{ingest_db_path(data)}?mode=ro", uri=True, timeout=5)
        try:
            found = [(row[0], row[1]) for row in conn.execute(
                "SELECT counter, type FROM frames WHERE device = ? ORDER BY counter", (device,))]
        finally:
            conn.close()
        if found:
            return found
        time.sleep(0.5)
    return []


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


# --- the card step: the card's own modem driver on the card, the simulated A7670 on its UART ---

@pytest.fixture(scope="module")
def flashed(tmp_path_factory, card_port):
    """One flashed card's flash (a folder); each test boots its own device on it."""
    folder = tmp_path_factory.mktemp("flashed")
    with VirtualDevice(folder, interpreter=card_port.executable) as card:
        flash_device(card.port, ImageCache().get(None))
    return folder


@contextmanager
def card_with_modem(folder: Path, card_port, **modem):
    """A virtual card on `folder` whose UART 1 is a simulated A7670 (`modem`: ModemSim options)."""
    with PtyModem(powered=True, timing=FAST_MODEM, **modem) as pm, \
            VirtualDevice(folder, interpreter=card_port.executable, uarts={1: pm.port}) as card:
        yield card, pm


def elder_row(tmp_path: Path, **columns: str):
    header = HEADER + list(columns)
    return read_sheet(csv_file(tmp_path, [header, GOOD[0] + list(columns.values())]))[0]


def test_the_card_step_reads_the_modem_and_fills_the_sim_phonebook(flashed, card_port, tmp_path):
    imei = make_imei(86277107681810)
    elder = elder_row(tmp_path, imei=str(imei))
    identity = Identity(imei=str(imei), iccid="89860012345678901237")
    with card_with_modem(flashed, card_port, identity=identity) as (card, pm):
        pm.control(lambda sim: sim.phonebook.update({3: ("+8613911112222", 129, "old")}))
        with DeviceLink(card.port) as link:
            session = ModemSession(link, pin=elder.sim_pin)
            report = session.check(wait_s=30)
            card_identity = identity_of(report, elder, card.port)
            book = session.write_phonebook(elder)
            session.close()
        commands = pm.control(lambda sim: [text for _, way, text in sim.transcript if way == "in"])
        book_on_sim = pm.control(lambda sim: dict(sim.phonebook))
        charset = pm.control(lambda sim: sim.cscs)
    assert (report.sim, report.registration, report.model) == ("ready", "home", "A7670E-FASE")
    assert card_identity == CardIdentity(imei, "89860012345678901237", "READY", "home")
    # the driver's own bring-up ran (echo off, verbose errors, SIM check), then the identity
    sent = b"".join(commands)
    for command in (b"ATE0\r", b"AT+CMEE=1\r", b"AT+CPIN?\r", b"AT+CGSN\r", b"AT+CICCID\r"):
        assert command in sent
    # the contacts of keys 1, 2 and 4 in entries 1, 2 and 4, names in UCS-2; entry 3 cleared
    assert book_on_sim == {1: ("+8613800138000", 145, "大儿子"), 2: ("+8659522345678", 145, "二儿子"),
                           4: ("+85291234567", 145, "网格员 陈")}
    assert 'AT+CPBW=1,"+8613800138000",145,"5927513F5B50"\r'.encode() in sent
    assert book.entries == [(1, "+8613800138000", "大儿子"), (2, "+8659522345678", "二儿子"),
                            (4, "+85291234567", "网格员 陈")]
    assert charset == "IRA"  # put back


def test_a_long_name_is_cut_to_what_the_sim_stores(flashed, card_port, tmp_path):
    rows = [HEADER, list(GOOD[0])]
    rows[1][HEADER.index("contact1_name")] = "南安市官桥镇大儿子"  # 9 characters, the SIM holds 6
    elder = read_sheet(csv_file(tmp_path, rows))[0]
    with card_with_modem(flashed, card_port) as (card, pm), DeviceLink(card.port) as link:
        session = ModemSession(link)
        identity_of(session.check(wait_s=30), elder, card.port)
        book = session.write_phonebook(elder)
        assert pm.control(lambda sim: sim.phonebook[1]) == ("+8613800138000", 145, "南安市官桥镇")
    assert book.shortened == [1]


@pytest.mark.parametrize("modem, columns, wait_s, what, fix", [
    ({"sim": "absent"}, {}, 30, "row 2 (王奶奶): no SIM card in the modem", "insert the elder's SIM"),
    ({"sim": "pin"}, {}, 30, "row 2 (王奶奶): the SIM asks for its PIN",
     "write the SIM's PIN in the sim_pin column of row 2"),
    ({"sim": "pin", "sim_pin": "4321"}, {"sim_pin": "1234"}, 30,
     "row 2 (王奶奶): the SIM refused the PIN in the sim_pin column", "correct the sim_pin of row 2"),
    ({"coverage": False}, {}, 1.5, "row 2 (王奶奶): not registered on a network within 1.5 s "
                                   "(status searching, no signal)", "check the antenna"),
    ({"identity": Identity(imei=str(make_imei(86277107681811)))}, {"imei": str(make_imei(86277107681812))}, 30,
     f"row 2 (王奶奶): the card on this port has IMEI {make_imei(86277107681811)}, the sheet says "
     f"{make_imei(86277107681812)}", f"put the card labelled {make_imei(86277107681812)} on"),
], ids=["no-sim", "sim-pin", "wrong-pin", "not-registered", "imei-mismatch"])
def test_a_card_that_cannot_be_provisioned_says_why_and_the_fix(flashed, card_port, tmp_path, modem, columns,
                                                                wait_s, what, fix):
    elder = elder_row(tmp_path, **columns)
    with card_with_modem(flashed, card_port, **modem) as (card, pm), DeviceLink(card.port) as link:
        session = ModemSession(link, pin=elder.sim_pin)
        report = session.check(wait_s=wait_s)
        with pytest.raises(DeviceError) as info:
            identity_of(report, elder, card.port, wait_s=wait_s)
    assert info.value.what == what and info.value.port == card.port
    assert info.value.fix.startswith(fix)


def test_the_sim_pin_from_the_sheet_unlocks_the_sim(flashed, card_port, tmp_path):
    elder = elder_row(tmp_path, sim_pin="2468")
    with card_with_modem(flashed, card_port, sim="pin", sim_pin="2468") as (card, pm), \
            DeviceLink(card.port) as link:
        report = ModemSession(link, pin=elder.sim_pin).check(wait_s=30)
    assert identity_of(report, elder, card.port).sim == "READY"
    assert report.registration == "home"


def test_carecard_provision_reports_a_failing_card_and_registers_nothing_for_it(flashed, card_port, tmp_path,
                                                                               capsys):
    data = tmp_path / "data"
    sheet = csv_file(tmp_path, [HEADER] + GOOD)
    with card_with_modem(flashed, card_port, sim="absent") as (card, pm):
        status = main(["provision", "--sheet", str(sheet), "--data", str(data), "--port", card.port,
                       "--row", "3", "--modem-wait", "5"])
    captured = capsys.readouterr()
    assert status == 1
    assert (f"{card.port}: FAILED: row 3 (李爷爷): no SIM card in the modem; insert the elder's SIM"
            in captured.out)
    assert "1 of 1 cards failed" in captured.err
    assert not (data / "provisioning.jsonl").exists() and not (data / "keys.json").exists()


@pytest.mark.parametrize("args, message", [
    (["--port", "/dev/pts/a", "--port", "/dev/pts/b"], "2 ports but 3 elders in the sheet: give one --row per --port"),
    (["--port", "/dev/pts/a", "--row", "2", "--row", "3"], "1 port but 2 rows given"),
    (["--port", "/dev/pts/a", "--port", "/dev/pts/a", "--row", "2", "--row", "3"], "port /dev/pts/a is given twice"),
    (["--port", "/dev/pts/a", "--row", "9"], "no elder on row 9 of the sheet"),
])
def test_ports_and_rows_that_do_not_pair_up_touch_nothing(tmp_path, capsys, args, message):
    data = tmp_path / "data"
    status = main(["provision", "--sheet", str(csv_file(tmp_path, [HEADER] + GOOD)), "--data", str(data), *args])
    assert status == 2
    err = capsys.readouterr().err
    assert message in err and "no card was touched" in err
    assert not data.exists()


def test_the_readme_way_on_a_virtual_board_with_a_modem(tmp_path, card_port, capsys):
    """README's "from the demo to real cards" on a virtual board: `python -m
    carecard.tools.vdevice --modem`, then `carecard flash` and `carecard provision --port`; the
    IMEI is the board's modem's."""
    import signal

    data = tmp_path / "data"
    sheet = csv_file(tmp_path, [HEADER] + GOOD)
    proc = subprocess.Popen([sys.executable, "-m", "carecard.tools.vdevice", "--modem", "--interpreter",
                             card_port.executable, str(tmp_path / "board")], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        port, folder, *_, imei = proc.stdout.readline().split()
        assert main(["flash", "--port", port]) == 0
        status = main(["provision", "--sheet", str(sheet), "--data", str(data), "--port", port, "--row", "3"])
        out = capsys.readouterr().out
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=30)
    assert status == 0, out
    assert f"{port}: IMEI {imei}, ICCID " in out and f"{imei}  " in out and "李爷爷" in out
    assert int(imei) in load_key_file(data)
