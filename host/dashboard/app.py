"""The dashboard's Starlette application (make_app) and how `carecard serve` runs it (serve).

Every page needs a session (cookie `carecard_session`: Secure, HttpOnly, SameSite=Strict); every
POST carries the session's CSRF token (form field `csrf`); the login form a double-submit token.
A card or an alert the account may not see is answered 404, exactly like one that does not exist.
Alert buttons queue a request for the alert engine (AlertStore.request_alert_action, source
"dashboard"); the engine changes the alert, and every open page follows through /live.

/live is a server-sent event stream: `changed` whenever CardData.change_mark moves (polled every
LIVE_POLL_S); the page then fetches its own URL with `X-Partial: 1` and swaps its live part.
"""

from __future__ import annotations

import asyncio
import json
import re
import secrets
import time
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, AsyncIterator, Mapping
from urllib.parse import urlsplit

from jinja2 import pass_context
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response, StreamingResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.templating import Jinja2Templates

from carecard.host.dashboard.accounts import AccountStore, LoginLimiter, Session, accounts_db_path
from carecard.host.dashboard.cards import CardData, CardSummary, registry_source
from carecard.host.dashboard.i18n import DEFAULT_LANGUAGE, LANGUAGES, translate
from carecard.host.storage import AlertActionError

HERE = Path(__file__).parent
VENDOR_DIR = HERE / "vendor" / "node_modules"
SESSION_COOKIE = "carecard_session"
LOGIN_CSRF_COOKIE = "carecard_login_csrf"
LANG_COOKIE = "carecard_lang"
LIVE_POLL_S = 1.0
LIVE_PING_S = 15.0
_DAY_RE = re.compile(r"^\d{4}-\d{2}-\d{2}$")


@dataclass
class DashboardConfig:
    data_dir: Path
    tile_url: str | None = None  # e.g. https://tile.example/{z}/{x}/{y}.png; None: plain background
    tile_attribution: str = ""
    # the alert engine's settings file as tables (Settings.load_tables; homes, time zones, limits),
    # overridden by the registry's engine settings as the engine does
    settings_tables: Mapping[str, Any] | None = None
    store: str = "sqlite"  # the receivers' store: "sqlite" (DATA/carecard.sqlite) or a PostgreSQL URL
    secure_cookies: bool = True
    limiter: LoginLimiter | None = None  # None: kept in the accounts database (DATA/dashboard.sqlite)


def _local(t: float | None, offset_s: int = 8 * 3600, fmt: str = "%Y-%m-%d %H:%M") -> str:
    if t is None:
        return "-"
    return datetime.fromtimestamp(t, timezone(timedelta(seconds=offset_s))).strftime(fmt)


def _age(t: float | None, now: float, language: str) -> str:
    if t is None:
        return translate("never", language)
    seconds = max(0, int(now - t))
    if seconds < 3600:
        text = f"{seconds // 60} min" if language == "en" else f"{seconds // 60} 分钟"
    elif seconds < 86400:
        text = f"{seconds // 3600} h" if language == "en" else f"{seconds // 3600} 小时"
    else:
        text = f"{seconds // 86400} d" if language == "en" else f"{seconds // 86400} 天"
    return f"{text} {translate('ago', language)}"


def _battery_svg(points: list[tuple[float, int]], width: int = 600, height: int = 120) -> str:
    """An inline SVG polyline of battery percentage over time (no script needed)."""
    if len(points) < 2:
        return ""
    t0, t1 = points[0][0], points[-1][0]
    span = max(t1 - t0, 1.0)
    coords = " ".join(f"{(t - t0) / span * width:.1f},{height - pct / 100 * height:.1f}" for t, pct in points)
    return (f'<svg class="battery" viewBox="0 0 {width} {height}" preserveAspectRatio="none" role="img">'
            f'<line x1="0" y1="{height * 0.8}" x2="{width}" y2="{height * 0.8}" class="limit"/>'
            f'<polyline points="{coords}"/></svg>')


def make_app(config: DashboardConfig, accounts: AccountStore | None = None) -> Starlette:
    data = CardData(config.data_dir, config.settings_tables, registry_source(config.store, config.data_dir))
    store = accounts or AccountStore(accounts_db_path(config.data_dir))
    limiter = config.limiter or LoginLimiter(accounts_db_path(config.data_dir))
    templates = Jinja2Templates(directory=str(HERE / "templates"))
    tile_origin = ""
    if config.tile_url:
        parts = urlsplit(config.tile_url.replace("{s}", "a"))
        tile_origin = f"{parts.scheme}://{parts.netloc}" if parts.scheme in ("http", "https") else ""

    @pass_context
    def t(context: dict[str, Any], key: str) -> str:
        return translate(key, context.get("lang", DEFAULT_LANGUAGE))

    templates.env.globals["t"] = t
    templates.env.globals["local"] = _local

    def language(request: Request) -> str:
        value = request.cookies.get(LANG_COOKIE, DEFAULT_LANGUAGE)
        return value if value in LANGUAGES else DEFAULT_LANGUAGE

    def headers() -> dict[str, str]:
        img = "'self' data:" + (f" {tile_origin}" if tile_origin else "")
        return {
            "Content-Security-Policy": (f"default-src 'self'; img-src {img}; style-src 'self'; "
                                        "script-src 'self'; frame-ancestors 'none'; form-action 'self'; "
                                        "base-uri 'none'"),
            "X-Content-Type-Options": "nosniff",
            "Referrer-Policy": "same-origin",
            "Cache-Control": "no-store",
        }

    def set_cookie(response: Response, name: str, value: str, max_age: int | None = None) -> None:
        response.set_cookie(name, value, max_age=max_age, httponly=True, secure=config.secure_cookies,
                            samesite="strict", path="/")

    async def session_of(request: Request) -> Session | None:
        token = request.cookies.get(SESSION_COOKIE)
        if not token:
            return None
        return await run_in_threadpool(store.session, token, time.time())

    def render(request: Request, name: str, session: Session | None, context: dict[str, Any],
               status: int = 200) -> Response:
        partial = request.headers.get("x-partial") == "1"
        context = {"lang": language(request), "session": session, "now": time.time(),
                   "partial": partial, "path": request.url.path, **context}
        response = templates.TemplateResponse(request, name, context, status_code=status, headers=headers())
        return response

    def not_found(request: Request, session: Session | None) -> Response:
        # nothing of the asked URL is echoed: a 404 for another elder's card looks like any other
        return render(request, "not_found.html", session, {"path": "/"}, status=404)

    async def check_csrf(request: Request, session: Session) -> dict[str, str] | None:
        form = await request.form()
        sent = form.get("csrf")
        if not isinstance(sent, str) or not secrets.compare_digest(sent, session.csrf):
            return None
        return {k: v for k, v in form.items() if isinstance(v, str)}

    def visible_cards(session: Session) -> list[int] | None:
        """The cards the account sees (None: every card), by the registry's villages."""
        account = session.account
        if account.role == "admin":
            return None
        return [d for d, record in data.devices().items() if account.may_see(d, record.village)]

    def may_see(session: Session, device: int) -> bool:
        record = data.devices().get(device)
        return record is not None and session.account.may_see(device, record.village)

    def back_to(form: dict[str, str], default: str) -> str:
        target = form.get("next", "")
        # Only a path of this site: never //host or a scheme.
        if target.startswith("/") and not target.startswith("//") and "\\" not in target:
            return target
        return default

    # --- pages ------------------------------------------------------------------------------

    async def login_page(request: Request) -> Response:
        if await session_of(request):
            return RedirectResponse("/", status_code=303)
        return login_form(request, None, 200)

    def login_form(request: Request, error: str | None, status: int) -> Response:
        token = secrets.token_urlsafe(24)
        response = render(request, "login.html", None, {"login_csrf": token, "error": error}, status)
        set_cookie(response, LOGIN_CSRF_COOKIE, token, max_age=3600)
        return response

    async def login(request: Request) -> Response:
        form = await request.form()
        sent, cookie = form.get("csrf"), request.cookies.get(LOGIN_CSRF_COOKIE)
        if not isinstance(sent, str) or not cookie or not secrets.compare_digest(sent, cookie):
            return login_form(request, "login_failed", 403)
        name = str(form.get("name", "")).strip()
        password = str(form.get("password", ""))
        client = request.client.host if request.client else "unknown"
        now = time.time()
        wait = limiter.retry_after(name, client, now)
        if wait > 0:
            response = login_form(request, "login_limited", 429)
            response.headers["Retry-After"] = str(int(wait) + 1)
            return response
        account = await run_in_threadpool(store.verify, name, password)
        if account is None:
            limiter.failed(name, client, now)
            return login_form(request, "login_failed", 401)
        limiter.succeeded(name)
        token, _session = await run_in_threadpool(store.open_session, account, now)
        response = RedirectResponse("/", status_code=303)
        set_cookie(response, SESSION_COOKIE, token)
        response.delete_cookie(LOGIN_CSRF_COOKIE, path="/")
        return response

    async def logout(request: Request) -> Response:
        session = await session_of(request)
        if session is None:
            return RedirectResponse("/login", status_code=303)
        if await check_csrf(request, session) is None:
            return Response("missing or wrong CSRF token", status_code=403)
        token = request.cookies.get(SESSION_COOKIE, "")
        await run_in_threadpool(store.close_session, token)
        response = RedirectResponse("/login", status_code=303)
        response.delete_cookie(SESSION_COOKIE, path="/")
        return response

    async def set_language(request: Request) -> Response:
        session = await session_of(request)
        if session is None:
            return RedirectResponse("/login", status_code=303)
        form = await check_csrf(request, session)
        if form is None:
            return Response("missing or wrong CSRF token", status_code=403)
        response = RedirectResponse(back_to(form, "/"), status_code=303)
        chosen = form.get("lang", DEFAULT_LANGUAGE)
        response.set_cookie(LANG_COOKIE, chosen if chosen in LANGUAGES else DEFAULT_LANGUAGE,
                            max_age=365 * 86400, httponly=True, secure=config.secure_cookies,
                            samesite="strict", path="/")
        return response

    async def overview(request: Request) -> Response:
        session = await session_of(request)
        if session is None:
            return RedirectResponse("/login", status_code=303)
        devices = await run_in_threadpool(visible_cards, session)
        cards: list[CardSummary] = await run_in_threadpool(data.summaries, devices)
        now = time.time()
        lang = language(request)
        rows = [{"card": c, "seen": _age(c.last_seen, now, lang), "fix_age": _age(c.position_t, now, lang),
                 "offset": int(data.settings_for(c.device).utc_offset)} for c in cards]
        return render(request, "overview.html", session, {"rows": rows})

    async def card_page(request: Request) -> Response:
        session = await session_of(request)
        if session is None:
            return RedirectResponse("/login", status_code=303)
        device = request.path_params["device"]
        if not await run_in_threadpool(may_see, session, device):
            return not_found(request, session)
        day = request.query_params.get("day")
        if day is not None and not _DAY_RE.match(day):
            day = None
        try:
            detail = await run_in_threadpool(data.card, device, day)
        except ValueError:  # a date like 2025-02-30
            detail = await run_in_threadpool(data.card, device, None)
        if detail is None:
            return not_found(request, session)
        views = await run_in_threadpool(data.alert_views, [device])
        map_data = {"track": [[lat, lon] for _t, lat, lon in detail.track],
                    "home": list(detail.home) if detail.home else None,
                    "tiles": config.tile_url, "attribution": config.tile_attribution}
        return render(request, "card.html", session, {
            "detail": detail, "views": views,
            "map_json": json.dumps(map_data, ensure_ascii=False).replace("<", "\\u003c"),
            "battery_svg": _battery_svg(detail.battery), "offset": detail.utc_offset_s,
            "leaflet": (VENDOR_DIR / "leaflet" / "dist" / "leaflet.js").is_file(),
            "seen": _age(detail.summary.last_seen, time.time(), language(request))})

    async def alerts_page(request: Request) -> Response:
        session = await session_of(request)
        if session is None:
            return RedirectResponse("/login", status_code=303)
        return await alerts_response(request, session, None, 200)

    async def alerts_response(request: Request, session: Session, error: str | None, status: int) -> Response:
        devices = await run_in_threadpool(visible_cards, session)
        views = await run_in_threadpool(data.alert_views, devices)
        return render(request, "alerts.html", session, {"views": views, "error": error}, status)

    def alert_action(action: str):  # noqa: ANN202 (a Starlette endpoint)
        async def endpoint(request: Request) -> Response:
            session = await session_of(request)
            if session is None:
                return RedirectResponse("/login", status_code=303)
            alert_id = request.path_params["alert_id"]
            alert = await run_in_threadpool(data.alert, alert_id)
            if alert is None or not await run_in_threadpool(may_see, session, alert.device):
                return not_found(request, session)
            form = await check_csrf(request, session)
            if form is None:
                return Response("missing or wrong CSRF token", status_code=403)
            reason = (form.get("reason") or "").strip() or None
            if action == "resolve" and reason is None:
                return await alerts_response(request, session, "reason", 400)
            account = session.account
            by = account.display_name if account.display_name == account.name else \
                f"{account.display_name} ({account.name})"
            try:
                await run_in_threadpool(data.request_action, alert_id, action, by, reason)
            except AlertActionError as exc:
                return await alerts_response(request, session, str(exc), 409)
            return RedirectResponse(back_to(form, "/alerts"), status_code=303)
        return endpoint

    async def live(request: Request) -> Response:
        session = await session_of(request)
        if session is None:
            return Response("log in first", status_code=401)

        async def stream() -> AsyncIterator[str]:
            mark = await run_in_threadpool(data.change_mark)
            yield "retry: 2000\nevent: hello\ndata: {}\n\n"
            quiet = 0.0
            while not await request.is_disconnected():
                await asyncio.sleep(LIVE_POLL_S)
                if await run_in_threadpool(store.session, request.cookies.get(SESSION_COOKIE, ""),
                                           time.time()) is None:
                    yield "event: logout\ndata: {}\n\n"
                    return
                new = await run_in_threadpool(data.change_mark)
                if new != mark:
                    mark = new
                    quiet = 0.0
                    yield "event: changed\ndata: {}\n\n"
                else:
                    quiet += LIVE_POLL_S
                    if quiet >= LIVE_PING_S:
                        quiet = 0.0
                        yield ": ping\n\n"

        return StreamingResponse(stream(), media_type="text/event-stream",
                                 headers={**headers(), "X-Accel-Buffering": "no"})

    async def http_404(request: Request, exc: Exception) -> Response:
        return not_found(request, await session_of(request))

    routes = [
        Route("/", overview, methods=["GET"], name="overview"),
        Route("/login", login_page, methods=["GET"], name="login_page"),
        Route("/login", login, methods=["POST"], name="login"),
        Route("/logout", logout, methods=["POST"], name="logout"),
        Route("/language", set_language, methods=["POST"], name="language"),
        Route("/cards/{device:int}", card_page, methods=["GET"], name="card"),
        Route("/alerts", alerts_page, methods=["GET"], name="alerts"),
        Route("/alerts/{alert_id:str}/acknowledge", alert_action("acknowledge"), methods=["POST"],
              name="acknowledge"),
        Route("/alerts/{alert_id:str}/resolve", alert_action("resolve"), methods=["POST"], name="resolve"),
        Route("/live", live, methods=["GET"], name="live"),
        Mount("/static", StaticFiles(directory=str(HERE / "static")), name="static"),
        Mount("/vendor", StaticFiles(directory=str(VENDOR_DIR), check_dir=False), name="vendor"),
    ]
    app = Starlette(routes=routes, exception_handlers={404: http_404})
    app.state.accounts = store
    app.state.data = data
    return app

