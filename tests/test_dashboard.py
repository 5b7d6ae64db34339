"""The dashboard over HTTP on a real uvicorn server (127.0.0.1): sign-in, sessions, CSRF, the login
rate limit, what each role may see (a family member gets 404 for another elder on every route),
the acknowledge/resolve path into the engine's queue, the live stream and `carecard users`."""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Iterator

import httpx
import pytest
from starlette.routing import Mount, Route

from carecard.host.cli import main
from carecard.host.dashboard.accounts import AccountStore, accounts_db_path
from carecard.host.paths import ingest_db_path
from carecard.host.storage.sqlite.store import SQLiteStore

from dashboard_helpers import (
    CHEN,
    LI,
    NAMES,
    NAMES_ALL,
    OTHER_VILLAGE,
    PASSWORD,
    VILLAGE,
    WANG,
    ZHAO,
    HOME,
    EngineSide,
    Served,
    add_accounts,
    make_village,
    register_village,
    serve,
)


@pytest.fixture(scope="module")
def village_and_day(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, Served, str]]:
    """The village served, and the local day of its cards' walk."""
    data = tmp_path_factory.mktemp("village")
    day = make_village(data)
    add_accounts(data)
    served = serve(data)
    try:
        yield data, served, day
    finally:
        served.stop()


@pytest.fixture(scope="module")
def village(village_and_day: tuple[Path, Served, str]) -> tuple[Path, Served]:
    data, served, _day = village_and_day
    return data, served


class Browser:
    """An HTTP client that keeps the session cookie itself: httpx never sends a Secure cookie over
    plain http, a browser does on 127.0.0.1 (a trustworthy origin)."""

    def __init__(self, url: str):
        self.client = httpx.Client(base_url=url, follow_redirects=False, timeout=10)
        self.cookies: dict[str, str] = {}

    def _remember(self, response: httpx.Response) -> httpx.Response:
        for header in response.headers.get_list("set-cookie"):
            name, _, rest = header.partition("=")
            value = rest.split(";", 1)[0]
            if "max-age=0" in header.lower() or value in ('""', ""):
                self.cookies.pop(name, None)
            else:
                self.cookies[name] = value
        return response

    def _cookie_header(self) -> dict[str, str]:
        return {"cookie": "; ".join(f"{k}={v}" for k, v in self.cookies.items())} if self.cookies else {}

    def get(self, path: str) -> httpx.Response:
        return self._remember(self.client.get(path, headers=self._cookie_header()))

    def post(self, path: str, data: dict[str, str]) -> httpx.Response:
        return self._remember(self.client.post(path, data=data, headers=self._cookie_header()))

    def csrf(self, html: str) -> str:
        found = re.search(r'name="csrf" value="([^"]+)"', html)
        assert found, "no CSRF field on the page"
        return found.group(1)

    def login(self, name: str, password: str = PASSWORD) -> httpx.Response:
        page = self.get("/login")
        return self.post("/login", {"csrf": self.csrf(page.text), "name": name, "password": password})

    def session_csrf(self) -> str:
        return self.csrf(self.get("/").text)


def logged_in(url: str, name: str) -> Browser:
    browser = Browser(url)
    assert browser.login(name).status_code == 303
    return browser


def test_pages_need_a_session_and_the_cookie_is_secure_httponly_samesite(village: tuple[Path, Served]) -> None:
    _data, served = village
    browser = Browser(served.url)
    for path in ("/", f"/cards/{WANG}", "/alerts"):
        response = browser.get(path)
        assert response.status_code == 303 and response.headers["location"] == "/login"
    assert browser.get("/live").status_code == 401
    response = browser.login("grid")
    assert response.status_code == 303
    cookie = next(h for h in response.headers.get_list("set-cookie") if h.startswith("carecard_session="))
    flags = {part.strip().lower() for part in cookie.split(";")[1:]}
    assert {"httponly", "secure", "samesite=strict", "path=/"} <= flags
    page = browser.get("/")
    assert page.status_code == 200
    assert all(name in page.text for name in NAMES.values())
    assert "default-src 'self'" in page.headers["content-security-policy"]


def test_wrong_passwords_are_refused_and_rate_limited(village: tuple[Path, Served]) -> None:
    _data, served = village
    browser = Browser(served.url)
    statuses = [browser.login("wang_daughter", "not the password").status_code for _ in range(6)]
    assert statuses == [401] * 5 + [429]
    # the right password is refused too while the account is limited
    limited = browser.login("wang_daughter")
    assert limited.status_code == 429 and int(limited.headers["retry-after"]) > 0
    assert "carecard_session" not in browser.cookies
    assert browser.login("nobody", "whatever-123").status_code == 401


def test_the_login_limit_survives_a_restart_of_the_server(village: tuple[Path, Served]) -> None:
    data, _served = village
    first = serve(data)  # a server of its own, stopped here (the module's keeps serving)
    try:
        browser = Browser(first.url)
        assert [browser.login("guessed_name", f"guess {i}").status_code for i in range(5)] == [401] * 5
    finally:
        first.stop()
    restarted = serve(data)
    try:
        again = Browser(restarted.url).login("guessed_name", "guess 6")
        assert again.status_code == 429 and int(again.headers["retry-after"]) > 0
    finally:
        restarted.stop()


def test_a_login_without_its_csrf_token_is_refused(village: tuple[Path, Served]) -> None:
    _data, served = village
    browser = Browser(served.url)
    browser.get("/login")
    response = browser.post("/login", {"csrf": "forged", "name": "grid", "password": PASSWORD})
    assert response.status_code == 403 and "carecard_session" not in browser.cookies


def test_every_action_needs_the_session_csrf_token(village: tuple[Path, Served]) -> None:
    data, served = village
    engine = EngineSide(data)
    try:
        alert = engine.raise_sos(LI, time.time())
    finally:
        engine.close()
    browser = logged_in(served.url, "grid")
    for path in (f"/alerts/{alert.id}/acknowledge", f"/alerts/{alert.id}/resolve", "/logout", "/language"):
        assert browser.post(path, {"csrf": "forged", "reason": "x", "lang": "en"}).status_code == 403, path
    store = SQLiteStore(ingest_db_path(data))
    try:
        assert store.list_alert_actions(alert.id) == []
    finally:
        store.close()


def _routes(app) -> list[Route]:  # noqa: ANN001
    return [route for route in app.routes if isinstance(route, Route)]


@pytest.mark.parametrize("account, own_card", [("chen_son", CHEN), ("grid_other", ZHAO)])
def test_a_family_member_or_another_villages_grid_worker_gets_404_for_another_elder_on_every_route(
        village: tuple[Path, Served], account: str, own_card: int) -> None:
    """Every route of the application, enumerated from it: a route with a card or an alert in its
    path answers 404 for another elder's; a route without answers nothing of another elder."""
    data, served = village
    engine = EngineSide(data)
    try:
        wang_alert = engine.raise_sos(WANG, time.time())
        own_alert = engine.raise_sos(own_card, time.time())
    finally:
        engine.close()
    others = {"device": str(WANG), "alert_id": wang_alert.id}
    own = {"device": str(own_card), "alert_id": own_alert.id}
    family = logged_in(served.url, account)
    csrf = family.session_csrf()
    form = {"csrf": csrf, "reason": "test", "next": "/", "lang": "zh"}
    app = served.server.config.app
    checked = 0
    for route in _routes(app):
        params = set(route.param_convertors)
        assert params <= set(others), f"route {route.path} has a parameter this test does not know: {params}"
        if not params:
            continue
        for method in sorted(route.methods - {"HEAD"}):
            path = route.path
            for name in params:
                path = re.sub(r"\{" + name + r"(:[a-z]+)?\}", others[name], path)
            response = family.get(path) if method == "GET" else family.post(path, form)
            assert response.status_code == 404, f"{method} {path}: {response.status_code}"
            assert NAMES[WANG] not in response.text and str(WANG) not in response.text
            checked += 1
    assert checked >= 3
    # routes without a card in the path show only the family's own elder
    for route in _routes(app):
        if route.param_convertors or "GET" not in route.methods or route.path in ("/live", "/login"):
            continue
        text = family.get(route.path).text
        for device, name in NAMES_ALL.items():
            if device != own_card:
                assert name not in text and str(device) not in text, (route.path, name)
        assert route.path != "/" or NAMES_ALL[own_card] in text
    # the same routes with the family's own elder work (not 404 for everything)
    assert family.get(f"/cards/{own['device']}").status_code == 200
    ack = family.post(f"/alerts/{own['alert_id']}/acknowledge", {"csrf": csrf, "next": "/alerts"})
    assert ack.status_code == 303
    # an unknown card is the same 404
    assert family.get("/cards/123456789012345").status_code == 404
    # the administrator sees the other elder's card
    assert logged_in(served.url, "admin").get(f"/cards/{WANG}").status_code == 200


def test_homes_come_from_the_registry_over_the_settings_file_and_follow_its_changes(
        village: tuple[Path, Served]) -> None:
    import json

    data, served = village
    family = logged_in(served.url, "grid")

    def home(device: int) -> list[float] | None:
        page = family.get(f"/cards/{device}").text
        found = re.search(r'<script type="application/json" id="map-data">(.*?)</script>', page, re.S)
        assert found, "no map data on the card's page"
        return json.loads(found.group(1))["home"]

    assert home(LI) == list(HOME[LI])  # the settings file's
    store = SQLiteStore(ingest_db_path(data))
    try:
        store.save_engine_settings(None, {LI: {"home": {"lat": 24.95, "lon": 118.55}}}, time.time())
        assert home(LI) == [24.95, 118.55]  # the registry's, without a restart
        store.save_engine_settings({"home": {"lat": 24.0, "lon": 118.0}}, {LI: {"home": {"lat": 24.96, "lon": 118.56}}},
                                   time.time())
        assert home(LI) == [24.96, 118.56] and home(WANG) == list(HOME[WANG])  # a device's table wins
    finally:
        store.save_engine_settings({}, {LI: {}}, time.time())
        store.close()
    assert home(LI) == list(HOME[LI])


def test_a_grid_worker_sees_the_cards_of_their_village_only(village: tuple[Path, Served]) -> None:
    _data, served = village
    grid = logged_in(served.url, "grid").get("/").text
    assert all(f'id="card-{d}"' in grid for d in NAMES) and f'id="card-{ZHAO}"' not in grid
    other = logged_in(served.url, "grid_other").get("/").text
    assert re.findall(r'id="card-(\d+)"', other) == [str(ZHAO)]
    admin = logged_in(served.url, "admin").get("/").text
    assert sorted(map(int, re.findall(r'id="card-(\d+)"', admin))) == sorted(NAMES_ALL)


def test_acknowledge_and_resolve_queue_requests_for_the_engine(village: tuple[Path, Served]) -> None:
    data, served = village
    engine = EngineSide(data)
    try:
        alert = engine.raise_sos(CHEN, time.time())
        grid = logged_in(served.url, "grid")
        csrf = grid.session_csrf()
        page = grid.get("/alerts").text
        assert f'id="alert-{alert.id}"' in page and "我去看看" in page
        assert grid.post(f"/alerts/{alert.id}/acknowledge", {"csrf": csrf, "next": "//evil.example/"}).status_code == 303
        pending = engine.store.pending_alert_actions()
        mine = [a for a in pending if a.alert_id == alert.id]
        assert [(a.action, a.by, a.source) for a in mine] == [("acknowledge", "网格员小林 (grid)", "dashboard")]
        assert "等待系统确认" in grid.get("/alerts").text  # requested, not yet handled
        engine.handle_requests(time.time())
        assert engine.store.get_alert(alert.id).state == "acknowledged"
        # acknowledged already: a second acknowledge is refused with the engine store's reason
        again = grid.post(f"/alerts/{alert.id}/acknowledge", {"csrf": csrf})
        assert again.status_code == 409 and "网格员小林" in again.text
        assert grid.post(f"/alerts/{alert.id}/resolve", {"csrf": csrf, "reason": ""}).status_code == 400
        done = grid.post(f"/alerts/{alert.id}/resolve", {"csrf": csrf, "reason": "她没事，摔倒后已扶起"})
        assert done.status_code == 303 and done.headers["location"] == "/alerts"
        engine.handle_requests(time.time())
        resolved = engine.store.get_alert(alert.id)
        assert resolved.state == "resolved" and resolved.closed_by == "网格员小林 (grid)"
        assert engine.store.list_alert_actions(alert.id)[-1].reason == "她没事，摔倒后已扶起"
    finally:
        engine.close()


def test_the_live_stream_says_changed_when_an_alert_is_raised(village: tuple[Path, Served]) -> None:
    data, served = village
    browser = logged_in(served.url, "grid")
    with browser.client.stream("GET", "/live", headers=browser._cookie_header()) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        lines = response.iter_lines()
        assert next(line for line in lines if line.startswith("event:")) == "event: hello"
        engine = EngineSide(data)
        try:
            engine.raise_sos(LI, time.time())
        finally:
            engine.close()
        assert next(line for line in lines if line.startswith("event:")) == "event: changed"


def test_the_card_page_has_track_home_timeline_battery_and_contacts(
        village_and_day: tuple[Path, Served, str]) -> None:
    _data, served, day = village_and_day
    family = logged_in(served.url, "chen_son")
    page = family.get(f"/cards/{CHEN}?day={day}").text
    track = re.search(r'<script type="application/json" id="map-data">(.*?)</script>', page, re.S)
    assert track
    import json

    map_data = json.loads(track.group(1))
    assert len(map_data["track"]) == 18 and map_data["home"] == [24.9051, 118.5801] and map_data["tiles"] is None
    assert 'class="tl-moving"' in page and 'class="tl-still"' in page
    assert "<polyline points=" in page  # battery over the weeks
    assert "+8613800138001" in page and "网格员小林" in page
    assert "/vendor/leaflet/dist/leaflet.js" in page
    assert family.get("/vendor/leaflet/dist/leaflet.js").status_code == 200
    # another day: no positions, still a page
    empty = family.get(f"/cards/{CHEN}?day=2020-01-01").text
    assert '"track": []' in empty
    assert family.get(f"/cards/{CHEN}?day=2020-02-30").status_code == 200


def test_users_add_list_remove(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                               monkeypatch: pytest.MonkeyPatch) -> None:
    make_village(tmp_path)
    import io

    monkeypatch.setattr("sys.stdin", io.StringIO("a long password\n"))
    assert main(["users", "add", "li_son", "--role", "family", "--card", str(LI), "--display-name", "李爷爷的儿子",
                 "--password-stdin", "--data", str(tmp_path)]) == 0
    monkeypatch.setattr("sys.stdin", io.StringIO("a long password\n"))
    assert main(["users", "add", "x", "--role", "family", "--card", str(LI), "--card", str(WANG),
                 "--password-stdin", "--data", str(tmp_path)]) == 1
    monkeypatch.setattr("sys.stdin", io.StringIO("a long password\n"))
    assert main(["users", "add", "y", "--role", "family", "--card", "861234567890123",
                 "--password-stdin", "--data", str(tmp_path)]) == 1
    monkeypatch.setattr("sys.stdin", io.StringIO("short\n"))
    assert main(["users", "add", "z", "--role", "admin", "--password-stdin", "--data", str(tmp_path)]) == 1
    monkeypatch.setattr("sys.stdin", io.StringIO("a long password\n"))
    assert main(["users", "add", "g", "--role", "grid_worker", "--password-stdin", "--data", str(tmp_path)]) == 1
    monkeypatch.setattr("sys.stdin", io.StringIO("a long password\n"))
    assert main(["users", "add", "f", "--role", "family", "--card", str(LI), "--village", VILLAGE,
                 "--password-stdin", "--data", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert "exactly one elder" in err and "not registered" in err and "at least 8" in err
    assert "--village" in err and "a family account" in err
    monkeypatch.setattr("sys.stdin", io.StringIO("a long password\n"))
    assert main(["users", "add", "lin", "--role", "grid_worker", "--village", OTHER_VILLAGE,
                 "--password-stdin", "--data", str(tmp_path)]) == 0
    assert main(["users", "list", "--data", str(tmp_path)]) == 0
    assert capsys.readouterr().out.splitlines()[-2:] == [
        f"li_son\tfamily\t{LI}\t李爷爷的儿子", f"lin\tgrid_worker\tvillage {OTHER_VILLAGE}\tlin"]
    store = AccountStore(accounts_db_path(tmp_path))
    try:
        account = store.verify("li_son", "a long password")
        assert account is not None and account.devices == (LI,)
        digest = store._conn.execute("SELECT password_hash FROM accounts").fetchone()[0]
        assert digest.startswith("$argon2id$")
    finally:
        store.close()
    assert main(["users", "remove", "li_son", "--data", str(tmp_path)]) == 0
    assert main(["users", "remove", "li_son", "--data", str(tmp_path)]) == 1


def test_an_accounts_database_from_before_villages_gets_the_column(tmp_path: Path) -> None:
    import sqlite3

    conn = sqlite3.connect(accounts_db_path(tmp_path))
    conn.execute("CREATE TABLE accounts (name TEXT PRIMARY KEY, role TEXT NOT NULL, password_hash TEXT NOT NULL, "
                 "devices TEXT NOT NULL, display_name TEXT NOT NULL, created_at REAL NOT NULL)")
    conn.execute("INSERT INTO accounts VALUES ('lin', 'grid_worker', 'x', ?, 'lin', 1.0)", (f"[{WANG}]",))
    conn.commit()
    conn.close()
    store = AccountStore(accounts_db_path(tmp_path))
    try:
        old = store.get("lin")
        assert old is not None and (old.devices, old.village) == ((WANG,), None)
        assert old.may_see(WANG, VILLAGE) and not old.may_see(LI, VILLAGE)
        new = store.add("xiao", "grid_worker", "a long password", village=VILLAGE)
        assert store.get("xiao") == new and new.may_see(LI, VILLAGE) and not new.may_see(ZHAO, OTHER_VILLAGE)
    finally:
        store.close()


def test_serve_on_the_postgresql_store(pg_cluster, tmp_path: Path) -> None:  # noqa: ANN001
    """`carecard serve --store postgresql://...` (a real process): the registry, its villages and
    engine settings, the alerts and the requests are the PostgreSQL store's."""
    import subprocess
    import sys

    from carecard.host.storage.postgresql import PostgreSQLStore

    from dashboard_helpers import free_port

    url = pg_cluster.new_database()
    data = tmp_path / "data"
    data.mkdir()
    store = PostgreSQLStore(url)
    register_village(store, data)
    store.save_engine_settings(None, {CHEN: {"home": {"lat": 24.93, "lon": 118.57}}}, time.time())
    engine = EngineSide(data, store)
    try:
        alert = engine.raise_sos(CHEN, time.time())
        add_accounts(data)
        port = free_port()
        process = subprocess.Popen([sys.executable, "-m", "carecard.host.cli", "serve", "--data", str(data),
                                    "--store", url, "--listen", f"127.0.0.1:{port}"],
                                   stderr=subprocess.PIPE, text=True)
        try:
            assert process.stderr is not None
            started = process.stderr.readline()
            assert started.startswith("dashboard on"), started + process.stderr.read()
            base = f"http://127.0.0.1:{port}"
            grid = logged_in(base, "grid")
            overview = grid.get("/").text
            assert re.findall(r'id="card-(\d+)" data-state="(\w+)"', overview)[0] == (str(CHEN), "alert_open")
            assert f'id="card-{WANG}"' in overview and f'id="card-{ZHAO}"' not in overview
            card = grid.get(f"/cards/{CHEN}").text
            assert '"home": [24.93, 118.57]' in card and f'id="alert-{alert.id}"' in card
            acked = grid.post(f"/alerts/{alert.id}/acknowledge", {"csrf": grid.session_csrf(), "next": "/"})
            assert acked.status_code == 303
            (request,) = store.pending_alert_actions()
            assert (request.alert_id, request.action, request.source) == (alert.id, "acknowledge", "dashboard")
            family = logged_in(base, "chen_son")
            assert family.get(f"/cards/{WANG}").status_code == 404
            assert family.get(f"/cards/{CHEN}").status_code == 200
        finally:
            process.terminate()
            process.wait(20)
    finally:
        engine.close()
