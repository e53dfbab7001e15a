"""The JSON API under /api: what the pages show, for tools. Described at /api/openapi.json.

Reads come from the transaction log (via :mod:`mailferry.web.data`); queue actions go to the
queue control service. Every POST needs the session's CSRF token in ``X-CSRF-Token`` (see
auth.py); ``GET /api/whoami`` hands it out.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Body, Depends, HTTPException, Path, Query, Request, Security
from fastapi.security import APIKeyHeader

from mailferry.control.service import ControlError
from mailferry.tracker.query import Query as TraceQuery
from mailferry.tracker.query import QueryError
from mailferry.web import models
from mailferry.web.auth import CSRF_HEADER
from mailferry.web.data import Data
from mailferry.web.services import QueueControl

ID_PATTERN = r"^[A-Za-z0-9]{1,64}$"  # as control/service.py checks
LOG_NAME_PATTERN = r"^[A-Za-z0-9._-]{1,100}$"

_ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"model": models.Error, "description": "a filter that cannot be used"},
    401: {"model": models.Error, "description": "login required (HTTP Basic for tools)"},
    403: {"model": models.Error, "description": "missing or wrong CSRF token, or foreign origin"},
}
_NOT_FOUND: dict[int | str, dict[str, Any]] = {404: {"model": models.Error}}
_QUEUE_ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"model": models.Error, "description": "a request the queue cannot act on"},
    404: {"model": models.Error, "description": "no such message in the queue"},
    409: {"model": models.Error, "description": "the queue refused the action"},
    503: {"model": models.Error, "description": "queue control is not available"},
}

router = APIRouter(prefix="/api", responses=_ERRORS)


def get_data(request: Request) -> Data:
    return request.app.state.data


def get_queue(request: Request) -> QueueControl:
    queue = request.app.state.services.queue
    if queue is None:
        raise HTTPException(503, "queue control is not available in this server")
    return queue


# Described as an API key in the OpenAPI document: a header every POST carries, not a
# parameter of the operation.
_csrf_header = APIKeyHeader(name=CSRF_HEADER, auto_error=False, scheme_name="csrf",
                            description="the csrf_token of GET /api/whoami (with its cookie)")


def require_csrf(request: Request,
                 x_csrf_token: Annotated[str | None, Security(_csrf_header)] = None) -> None:
    auth = request.app.state.auth
    if not auth.csrf_ok(request.state.web_session, x_csrf_token):
        raise HTTPException(403, f"missing or wrong {CSRF_HEADER} (GET /api/whoami gives it)")


DataDep = Annotated[Data, Depends(get_data)]
QueueDep = Annotated[QueueControl, Depends(get_queue)]
Limit = Annotated[int, Query(ge=1, le=1000)]
OptText = Annotated[str | None, Query(max_length=500)]


@router.get("/whoami", response_model=models.WhoAmI)
async def whoami(request: Request) -> models.WhoAmI:
    """Who this session is, whether a login is needed, and the CSRF token for POSTs."""
    auth = request.app.state.auth
    return models.WhoAmI(user=request.state.user, login_required=auth.login_required,
                         csrf_token=auth.csrf_token(request.state.web_session))


@router.get("/sessions", response_model=models.SessionList)
async def list_sessions(
        data: DataDep,
        kind: Annotated[Literal["S", "C"] | None, Query(description="S served, C connected")]
        = None,
        state: Literal["active", "success", "failed"] | None = None,
        peer: OptText = None, limit: Limit = 200) -> models.SessionList:
    """Live and recent sessions, live ones first, then newest first."""
    return await data.run(data.sessions, kind, state, peer, limit)


@router.get("/sessions/{file}/{line}", response_model=models.SessionDetail,
            responses=_NOT_FOUND)
async def get_session(data: DataDep,
                      file: Annotated[str, Path(pattern=LOG_NAME_PATTERN)],
                      line: Annotated[int, Path(ge=1, le=1 << 40)]) -> models.SessionDetail:
    """One session: its log lines with notes (as ``trace --explain`` gives them)."""
    found = await data.run(data.session, file, line)
    if found is None:
        raise HTTPException(404, f"no session at {file}:{line} in the recent log")
    return found


@router.get("/messages", response_model=models.MessageList)
async def search_messages(
        data: DataDep,
        sender: Annotated[str | None, Query(max_length=500, description="a@b, a@, @dom, glob, <>")]
        = None,
        rcpt: OptText = None,
        ip: Annotated[str | None, Query(max_length=100, description="client or remote server")]
        = None,
        msgid: Annotated[str | None, Query(max_length=100)] = None,
        since: Annotated[str | None, Query(max_length=40, description="HH:MM or YYYY-MM-DD HH:MM")]
        = None,
        until: Annotated[str | None, Query(max_length=40)] = None,
        status: models.MessageStatus | None = None,
        limit: Limit = 200) -> models.MessageList:
    """Messages in the recent log matching every filter given (as ``mailferry trace``)."""
    query = make_query(sender=sender, rcpt=rcpt, ip=ip, msgid=msgid, since=since, until=until,
                       status=status)
    return await data.run(data.messages, query, limit)


def make_query(**kw: str | None) -> TraceQuery:
    """Empty fields are no filter (an HTML form sends them all)."""
    try:
        return TraceQuery(**{k: v for k, v in kw.items() if v not in (None, "")})
    except QueryError as e:
        raise HTTPException(400, str(e).replace("--", "")) from None


@router.get("/messages/{msgid}", response_model=models.MessageDetail, responses=_NOT_FOUND)
async def get_message(data: DataDep, msgid: Annotated[str, Path(pattern=ID_PATTERN)]
                      ) -> models.MessageDetail:
    """One message's story: received, every delivery attempt with the remote replies, bounce."""
    found = await data.run(data.message, msgid)
    if found is None:
        raise HTTPException(404, f"no message {msgid} in the recent log")
    return found


@router.get("/report", response_model=models.Report)
async def get_report(data: DataDep) -> models.Report:
    """The numbers of ``mailferry report`` over the recent log, with bounces per hour."""
    return await data.run(data.report)


# -- the queue ----------------------------------------------------------------------------------
@router.get("/queue", response_model=models.QueueList, responses=_QUEUE_ERRORS)
async def list_queue(queue: QueueDep) -> models.QueueList:
    """What is in the queue now, and why it is still there."""
    return models.QueueList(items=[models.QueueItem(**item) for item in await queue.list()])


@router.get("/queue/{msgid}", response_model=models.QueueDetail, responses=_QUEUE_ERRORS)
async def show_queued(queue: QueueDep, msgid: Annotated[str, Path(pattern=ID_PATTERN)]
                      ) -> models.QueueDetail:
    """One queued message, with its headers, its delivery history and its story in the log."""
    return models.QueueDetail(**await queue_call(queue.show, msgid))


@router.post("/queue/flush", response_model=models.ActionResult, responses=_QUEUE_ERRORS,
             dependencies=[Depends(require_csrf)])
async def flush_queue(request: Request, queue: QueueDep,
                      body: Annotated[models.FlushRequest | None, Body()] = None
                      ) -> models.ActionResult:
    """Try deferred messages now: all, one message, or one destination domain."""
    body = body or models.FlushRequest()
    await queue_call(queue.flush, body.msgid, body.domain, actor=actor_of(request))
    what = body.msgid or (f"mail for {body.domain}" if body.domain else "the queue")
    return models.ActionResult(ok=True, message=f"flushed {what}")


@router.post("/queue/{msgid}/{action}", response_model=models.ActionResult,
             responses=_QUEUE_ERRORS, dependencies=[Depends(require_csrf)])
async def queue_action(request: Request, queue: QueueDep,
                       msgid: Annotated[str, Path(pattern=ID_PATTERN)],
                       action: Literal["hold", "release", "delete", "bounce", "flush"]
                       ) -> models.ActionResult:
    """Hold, release, delete, bounce or flush one queued message."""
    await do_action(queue, msgid, action, actor_of(request))
    return models.ActionResult(ok=True, message=f"{action}: {msgid}")


async def do_action(queue: QueueControl, msgid: str, action: str, actor: str) -> None:
    if action == "flush":
        await queue_call(queue.flush, msgid, None, actor=actor)
    else:
        await queue_call(getattr(queue, action), msgid, actor=actor)


def actor_of(request: Request) -> str:
    """Who did it, for the SYSTEM line the queue writes: ``admin@… (web UI, 192.0.2.7)``."""
    client = request.client.host if request.client else "?"
    return f"{request.state.user or 'local user'} (web UI, {client})"


async def queue_call(fn: Any, *args: Any, **kw: Any) -> Any:
    """Call the queue service; its refusals become 404 (no such message), 400 (a request that
    cannot be right) or 409 (refused in this state), never a 500."""
    try:
        return await fn(*args, **kw)
    except ControlError as e:
        message = str(e)
        if message.startswith(("no message ", "not a message ID")) or "left the queue" in message:
            status = 404
        elif message.startswith(("give a message ID", "not a domain")):
            status = 400
        else:
            status = 409
        raise HTTPException(status, message) from None
