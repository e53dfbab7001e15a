"""The web application: JSON API, pages and /metrics on one FastAPI app.

``create_app(services)`` is all the daemon (and the tests) call. The guard middleware applies
auth.py's rules to every request before any route sees it: loopback Host names when no login is
needed, the session cookie, the login (Basic for /api and /metrics), and the origin of POSTs.
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import quote

from fastapi import FastAPI, Request
from fastapi.exceptions import HTTPException
from fastapi.responses import JSONResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles

from mailferry.inbound.guard import Reason
from mailferry.web import api, pages
from mailferry.web.auth import COOKIE, MAX_AGE, Auth, loopback_host, same_origin
from mailferry.web.data import Data
from mailferry.web.index import LogIndex
from mailferry.web.services import WebServices

_HERE = Path(__file__).parent
_SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
_PUBLIC = ("/static/", "/login", "/api/openapi.json")


def create_app(services: WebServices) -> FastAPI:
    app = FastAPI(title="mailferry", version="1", openapi_url="/api/openapi.json",
                  docs_url=None, redoc_url=None,  # their pages load scripts from a CDN
                  description="Sessions, messages, the queue and the report of a mailferry "
                              "server. Every POST needs the X-CSRF-Token of GET /api/whoami.")
    index = LogIndex(services.log_dir, days=services.http.history_days)
    app.state.services = services
    app.state.data = Data(index, services.session_live)
    app.state.auth = Auth(services.http, services.directory)
    app.include_router(api.router)
    app.include_router(pages.router)
    app.mount("/static", StaticFiles(directory=_HERE / "static"), name="static")
    registry = services.metrics_registry
    if registry is None:
        from prometheus_client import CollectorRegistry
        registry = CollectorRegistry()

    @app.get("/metrics", include_in_schema=False)
    async def metrics() -> Response:
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> Response:
        if _is_api(request.url.path):
            return JSONResponse({"detail": str(exc.detail)}, exc.status_code,
                                headers=getattr(exc, "headers", None))
        return pages.error_page(request, exc.status_code, str(exc.detail))

    @app.middleware("http")
    async def guard(request: Request, call_next) -> Response:  # type: ignore[no-untyped-def]
        auth: Auth = app.state.auth
        path = request.url.path
        host = request.headers.get("host")
        if services.guard is not None and services.guard.client_blocked(client_ip(request)):
            return _refuse(path, 403, "your address is blocked (too many failed logins or other "
                                      "abuse; see mailferry block list)")
        if not auth.login_required and not loopback_host(host):
            return _refuse(path, 400, "this server answers only to a loopback host name "
                                      "(127.0.0.1, [::1], localhost)")
        ws = auth.read_cookie(request.cookies.get(COOKIE))
        fresh = ws is None
        if ws is None:
            ws = auth.new_session()
        request.state.web_session = ws
        user = ws.user
        header = request.headers.get("authorization")
        if user is None and header and (_is_api(path) or path == "/metrics"):
            user = await auth.check_basic(header)
            if user is None:
                login_failed(request)
        request.state.user = user
        if auth.login_required and user is None and not path.startswith(_PUBLIC):
            if _is_api(path) or path == "/metrics":
                return _refuse(path, 401, "login required", {"WWW-Authenticate":
                                                             'Basic realm="mailferry"'})
            target = path + (f"?{request.url.query}" if request.url.query else "")
            return RedirectResponse(f"/login?next={quote(target)}", 303)
        if request.method not in _SAFE_METHODS and not same_origin(
                request.headers.get("origin"), request.headers.get("referer"), host):
            return _refuse(path, 403, "this request did not come from this server's pages")
        response = await call_next(request)
        if fresh and not any(v.startswith(COOKIE + "=") for v in
                             response.headers.getlist("set-cookie")):
            set_session_cookie(response, auth.cookie_value(ws))
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        response.headers.setdefault("X-Frame-Options", "DENY")
        response.headers.setdefault("Referrer-Policy", "same-origin")
        response.headers.setdefault(
            "Content-Security-Policy",
            "default-src 'self'; img-src 'self' data:; style-src 'self'; frame-ancestors 'none'")
        return response

    return app


def set_session_cookie(response: Response, value: str) -> None:
    response.set_cookie(COOKIE, value, max_age=MAX_AGE, httponly=True, samesite="strict",
                        path="/")


def _is_api(path: str) -> bool:
    return path.startswith("/api/")


def _refuse(path: str, status: int, detail: str, headers: dict[str, str] | None = None
            ) -> Response:
    if _is_api(path) or path == "/metrics":
        return JSONResponse({"detail": detail}, status, headers=headers)
    return Response(detail + "\n", status, media_type="text/plain", headers=headers)


def client_ip(request: Request) -> str:
    return request.client.host if request.client is not None else ""


def login_failed(request: Request) -> None:
    """A wrong password at the web's door counts like a failed SMTP AUTH of that address
    ([protection] max_auth_failures): the same guessing, the same block."""
    guard = request.app.state.services.guard
    if guard is not None:
        guard.offence(client_ip(request), Reason.AUTHFAIL)
