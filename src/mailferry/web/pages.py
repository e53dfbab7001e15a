"""The pages people use: server-rendered Jinja2 over the very functions the API calls.

Read-only except for the queue forms (POST with the session's CSRF token, then a redirect back,
so a reload never repeats an action) and login/logout.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import quote

from fastapi import APIRouter, Form, HTTPException, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates

from mailferry.web import api, charts
from mailferry.web.auth import CSRF_FIELD, Auth

templates = Jinja2Templates(directory=Path(__file__).parent / "templates")


def _epoch(value: object) -> str:
    """A Unix time from the queue → local ``YYYY-MM-DD HH:MM:SS``; anything else as it is."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        try:
            return datetime.fromtimestamp(value).strftime("%Y-%m-%d %H:%M:%S")
        except (OverflowError, OSError, ValueError):
            return str(value)
    return "" if value is None else str(value)


def _age(seconds: object) -> str:
    if not isinstance(seconds, int | float):
        return ""
    s = int(seconds)
    if s < 120:
        return f"{s} s"
    return f"{s // 60} min" if s < 7200 else f"{s / 3600:.1f} h"


templates.env.filters["epoch"] = _epoch
templates.env.filters["age"] = _age
router = APIRouter(include_in_schema=False)

_STATUSES = ["delivered", "deferred", "failed", "rejected", "aborted", "queued", "incomplete"]


def render(request: Request, name: str, status_code: int = 200, **context: Any) -> Response:
    auth: Auth = request.app.state.auth
    context.update(request=request, user=request.state.user,
                   login_required=auth.login_required,
                   csrf_field=CSRF_FIELD, csrf=auth.csrf_token(request.state.web_session),
                   hostname=request.app.state.services.hostname)
    return templates.TemplateResponse(request, name, context, status_code=status_code)


def error_page(request: Request, status: int, detail: str) -> Response:
    if not hasattr(request.state, "web_session"):
        return Response(detail + "\n", status, media_type="text/plain")
    return render(request, "error.html", status, status=status, detail=detail)


def _check_csrf(request: Request, token: str) -> None:
    if not request.app.state.auth.csrf_ok(request.state.web_session, token):
        raise HTTPException(403, "the form has expired: reload the page and try again")


@router.get("/")
async def home() -> Response:
    return RedirectResponse("/sessions", 303)


@router.get("/sessions", response_class=HTMLResponse)
async def sessions_page(request: Request, kind: str | None = None, state: str | None = None,
                        peer: Annotated[str | None, Query(max_length=100)] = None,
                        live: bool = False) -> Response:
    data = request.app.state.data
    kind = kind if kind in ("S", "C") else None
    state = state if state in ("active", "success", "failed") else None
    found = await data.run(data.sessions, kind, state, peer or None, 500)
    return render(request, "sessions.html", sessions=found, kind=kind, state=state,
                  peer=peer or "", live=live)


@router.get("/sessions/{file}/{line}", response_class=HTMLResponse)
async def session_page(request: Request, file: str, line: int) -> Response:
    data = request.app.state.data
    found = await data.run(data.session, file, line)
    if found is None:
        raise HTTPException(404, f"no session at {file}:{line} in the recent log")
    return render(request, "session.html", detail=found)


@router.get("/messages", response_class=HTMLResponse)
async def messages_page(request: Request, sender: str = "", rcpt: str = "", ip: str = "",
                        msgid: str = "", since: str = "", until: str = "",
                        status: str = "") -> Response:
    data = request.app.state.data
    form = {"sender": sender, "rcpt": rcpt, "ip": ip, "msgid": msgid, "since": since,
            "until": until, "status": status if status in _STATUSES else ""}
    error, found = None, None
    try:
        query = api.make_query(**{k: v.strip()[:500] for k, v in form.items()})
    except HTTPException as e:
        error = str(e.detail)
    else:
        found = await data.run(data.messages, query, 500)
    return render(request, "messages.html", form=form, found=found, error=error,
                  statuses=_STATUSES)


@router.get("/messages/{msgid}", response_class=HTMLResponse)
async def message_page(request: Request, msgid: str) -> Response:
    data = request.app.state.data
    found = await data.run(data.message, msgid[:100])
    if found is None:
        raise HTTPException(404, f"no message {msgid} in the recent log")
    return render(request, "message.html", detail=found)


@router.get("/queue", response_class=HTMLResponse)
async def queue_page(request: Request, done: str = "") -> Response:
    queue = request.app.state.services.queue
    items, error = [], None
    if queue is None:
        error = "Queue control is not available in this server."
    else:
        try:
            items = (await api.list_queue(queue)).items
        except HTTPException as e:
            error = str(e.detail)
    return render(request, "queue.html", items=items, error=error, done=done[:200])


@router.post("/queue/flush")
async def queue_flush_form(request: Request,
                           csrf_token: Annotated[str, Form()] = "") -> Response:
    _check_csrf(request, csrf_token)
    queue = api.get_queue(request)
    await api.queue_call(queue.flush, None, None, actor=api.actor_of(request))
    return RedirectResponse("/queue?done=" + quote("flushed the queue"), 303)


@router.post("/queue/{msgid}/{action}")
async def queue_action_form(request: Request, msgid: str, action: str,
                            csrf_token: Annotated[str, Form()] = "") -> Response:
    _check_csrf(request, csrf_token)
    if action not in ("hold", "release", "delete", "bounce", "flush"):
        raise HTTPException(404, f"no action {action}")
    queue = api.get_queue(request)
    await api.do_action(queue, msgid, action, api.actor_of(request))
    return RedirectResponse("/queue?done=" + quote(f"{action}: {msgid}"), 303)


@router.get("/report", response_class=HTMLResponse)
async def report_page(request: Request) -> Response:
    data = request.app.state.data
    rep = await data.run(data.report)
    # "2026-11-29 14" → "11-29 14h": short enough to stand under a bar.
    hours = [f"{h.hour[5:]}h" if len(h.hour) > 2 else f"{h.hour}h" for h in rep.per_hour]
    traffic = charts.bar_chart(hours, {
        "received": [h.received for h in rep.per_hour],
        "delivered": [h.delivered for h in rep.per_hour],
        "bounced": [h.bounced for h in rep.per_hour]}, title="messages per hour")
    delays = charts.bar_chart([c.name for c in rep.delay_histogram],
                              {"deliveries": [c.count for c in rep.delay_histogram]},
                              title="delivery delay", bar_width=28)
    return render(request, "report.html", report=rep, traffic=traffic, delays=delays,
                  traffic_legend=charts.legend(["received", "delivered", "bounced"]))


@router.get("/api-docs", response_class=HTMLResponse)
async def api_page(request: Request) -> Response:
    spec = request.app.openapi()
    ops = [(method.upper(), path, op.get("summary", ""), op.get("description", ""))
           for path, item in spec["paths"].items() for method, op in item.items()]
    return render(request, "api.html", ops=ops)


# -- login ----------------------------------------------------------------------------------------
def _safe_next(target: str) -> str:
    """Only a path on this server: never //evil.example or a full URL (an open redirect)."""
    return target if target.startswith("/") and not target.startswith("//") and \
        "\\" not in target else "/sessions"


@router.get("/login", response_class=HTMLResponse)
async def login_page(request: Request, next: str = "/sessions") -> Response:
    return render(request, "login.html", next=_safe_next(next), failed=False)


@router.post("/login")
async def login(request: Request, user: Annotated[str, Form(max_length=320)] = "",
                password: Annotated[str, Form(max_length=1000)] = "",
                csrf_token: Annotated[str, Form()] = "",
                next: Annotated[str, Form()] = "/sessions") -> Response:
    _check_csrf(request, csrf_token)
    auth: Auth = request.app.state.auth
    if not await auth.check_password(user, password):
        from mailferry.web.app import login_failed
        login_failed(request)
        return render(request, "login.html", 401, next=_safe_next(next), failed=True)
    from mailferry.web.app import set_session_cookie
    response = RedirectResponse(_safe_next(next), 303)
    # A new nonce at login: a cookie planted before it (session fixation) is worth nothing.
    set_session_cookie(response, auth.cookie_value(auth.new_session(user.strip().lower())))
    return response


@router.post("/logout")
async def logout(request: Request, csrf_token: Annotated[str, Form()] = "") -> Response:
    _check_csrf(request, csrf_token)
    auth: Auth = request.app.state.auth
    from mailferry.web.app import set_session_cookie
    response = RedirectResponse("/login" if auth.login_required else "/sessions", 303)
    set_session_cookie(response, auth.cookie_value(auth.new_session()))
    return response
