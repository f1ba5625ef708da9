"""The agents' HTTP API: read conversations, reply, change status, follow events live."""

from __future__ import annotations

import asyncio
import contextlib
import re
from typing import TYPE_CHECKING, Any

import orjson
from aiohttp import web
from aiohttp.helpers import content_disposition_header
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from omnichannel.adapters.api import describe_errors
from omnichannel.appkeys import ENGINE
from omnichannel.http import fail, json_response, parse_json, read_body, require_bearer
from omnichannel.model import ConversationStatus, RoutedEvent, Template
from omnichannel.store import outbound, queries
from omnichannel.store.ingest import as_utc
from omnichannel.store.tables import utcnow

if TYPE_CHECKING:
    from omnichannel.app import Engine

routes = web.RouteTableDef()

#: Largest number of unread events a live (SSE) listener may fall behind by before the engine
#: drops it.
LIVE_BACKLOG = 10000


#: A media type safe to echo back in a header (providers and citizens choose these).
_MEDIA_TYPE = re.compile(r"^[a-z0-9][a-z0-9!#$&.+^_-]*/[a-z0-9][a-z0-9!#$&.+^_-]*$")


class TemplateRequest(BaseModel):
    """An approved template to send instead of free text (WhatsApp, outside its reply window)."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=512)
    language: str = Field(default="id", pattern=r"^[a-z]{2,3}(_[A-Z]{2})?$")
    parameters: list[str] = Field(default_factory=list, max_length=20)


class ReplyFile(BaseModel):
    """A file uploaded with `POST /api/v1/attachments`, sent with a reply."""

    model_config = ConfigDict(extra="forbid")

    blob_id: str = Field(pattern=r"^[0-9a-f]{64}$")
    content_type: str = Field(pattern=_MEDIA_TYPE.pattern, max_length=200)
    filename: str | None = Field(default=None, min_length=1, max_length=200)


class ReplyRequest(BaseModel):
    """An agent's reply to the citizen: text and files, or an approved template."""

    model_config = ConfigDict(extra="forbid")

    text: str | None = Field(default=None, min_length=1, max_length=4096)
    template: TemplateRequest | None = None
    attachments: list[ReplyFile] = Field(default_factory=list, max_length=10)
    author: str = Field(default="agent", min_length=1, max_length=200)

    @model_validator(mode="after")
    def _text_or_template(self) -> ReplyRequest:
        if self.template is not None and (self.text is not None or self.attachments):
            raise ValueError("a template is sent alone, without text or attachments")
        if self.template is None and self.text is None and not self.attachments:
            raise ValueError("give text, attachments or a template")
        return self


class StatusRequest(BaseModel):
    """A new status for a conversation."""

    model_config = ConfigDict(extra="forbid")

    status: ConversationStatus


def _engine(request: web.Request) -> Engine:
    engine = request.app[ENGINE]
    require_bearer(request, engine.settings.agent_token, "the agent API")
    return engine


#: Ids are 64-bit in the database: anything larger can name nothing.
_MAX_ID = 2**63 - 1


def _int(value: str | None, name: str, default: int | None = None) -> int | None:
    if value is None:
        return default
    try:
        number = int(value)
    except ValueError:
        fail(400, f"{name} must be an integer, not {value!r}")
    if not 0 <= number <= _MAX_ID:
        fail(400, f"{name} must be between 0 and {_MAX_ID}")
    return number


def _conversation_id(request: web.Request) -> int:
    """The `{id}` of the path as an integer, refused with 400 otherwise."""
    value = _int(request.match_info["id"], "conversation id")
    assert value is not None  # the route always has an id
    return value


async def _body(request: web.Request, model: type[BaseModel], engine: Engine) -> Any:
    payload = parse_json(await read_body(request, engine.settings.max_body_bytes))
    try:
        return model.model_validate(payload)
    except ValidationError as exc:
        fail(422, "invalid request", detail=describe_errors(exc))


@routes.get("/api/v1/conversations")
async def list_conversations(request: web.Request) -> web.Response:
    """Conversations newest first, filtered by `queue` and `status`, paged by `before`."""
    engine = _engine(request)
    status = request.query.get("status")
    if status is not None and status not in ConversationStatus.__members__.values():
        fail(400, f"unknown status {status!r}",
             allowed=[s.value for s in ConversationStatus])
    limit = _int(request.query.get("limit"), "limit", 50)
    if limit is None or not 1 <= limit <= 500:
        fail(400, "limit must be between 1 and 500")
    async with engine.db.api.connect() as conn:
        items = await queries.list_conversations(
            conn, queue=request.query.get("queue"), status=status, limit=limit,
            before_id=_int(request.query.get("before"), "before"),
        )
    return json_response({"conversations": items})


@routes.get("/api/v1/conversations/{id}")
async def get_conversation(request: web.Request) -> web.Response:
    """One conversation with its messages in the citizen's order."""
    engine = _engine(request)
    conversation_id = _conversation_id(request)
    async with engine.db.api.connect() as conn:
        conversation = await queries.get_conversation(conn, conversation_id)
    if conversation is None:
        fail(404, f"conversation {conversation_id} does not exist")
    return json_response(conversation)


@routes.post("/api/v1/conversations/{id}/messages")
async def reply(request: web.Request) -> web.Response:
    """Store an agent's reply and hand it to the conversation's channel for delivery."""
    engine = _engine(request)
    conversation_id = _conversation_id(request)
    body: ReplyRequest = await _body(request, ReplyRequest, engine)
    template = None
    if body.template is not None:
        t = body.template
        template = Template(name=t.name, language=t.language, parameters=tuple(t.parameters))
    files = []
    for file in body.attachments:
        path = engine.blobs.path(file.blob_id)
        if path is None:
            fail(422, f"no uploaded file {file.blob_id}; upload it to /api/v1/attachments first")
        files.append({**file.model_dump(), "size": path.stat().st_size, "status": "stored"})
    async with engine.db.write(engine.db.api) as conn:
        target = await queries.conversation_channel(conn, conversation_id)
        if target is None:
            fail(404, f"conversation {conversation_id} does not exist")
        _check_channel_allows(engine, target, template, bool(files))
        message = await outbound.add_outbound(
            conn, conversation_id, channel=target.channel, account=target.account,
            text=body.text or ("" if files else _describe(template)), author=body.author,
            template=template, attachments=files,
        )
    engine.deliverer.submit(message["id"], target.channel)
    return json_response(message, status=202)


def _describe(template: Template | None) -> str:
    """What the inbox shows of a template reply."""
    assert template is not None
    shown = f"[template {template.name} ({template.language})]"
    return " ".join([shown, *template.parameters])


def _check_channel_allows(
    engine: Engine, target: Any, template: Template | None, files: bool
) -> None:
    """Refuse, with a reason the inbox can show, what the conversation's channel cannot send."""
    adapter = engine.sender_of(target.channel, target.account)
    if adapter is None:
        fail(409, f"no adapter is configured to send on {target.channel} account "
                  f"{target.account!r}")
    capabilities = adapter.capabilities_of(target.channel)
    if files and not capabilities.media:
        fail(422, f"the {target.channel} channel cannot carry files; reply with text")
    if template is not None:
        if not capabilities.templates:
            fail(422, f"the {target.channel} channel does not send templates; reply with text")
        return
    window = capabilities.reply_window
    if window is not None:
        closed_at = as_utc(target.last_inbound_at) + window
        if utcnow() >= closed_at:
            fail(422, f"the {target.channel} reply window closed at {closed_at.isoformat()} "
                      f"({window.total_seconds() / 3600:g} hours after the citizen's last "
                      "message); only an approved template can be sent until they write again",
                 reason="reply_window_closed", window_closed_at=closed_at.isoformat())


@routes.post("/api/v1/attachments")
async def upload(request: web.Request) -> web.Response:
    """Keep a file an agent will send with a reply; the body is the file itself."""
    engine = _engine(request)
    content_type = request.headers.get("Content-Type", "").split(";")[0].strip().lower()
    if not _MEDIA_TYPE.fullmatch(content_type) or content_type.startswith("multipart/"):
        fail(415, "send the file itself as the body, with its media type as Content-Type")
    content = await read_body(request, engine.settings.max_attachment_bytes)
    if not content:
        fail(400, "the file is empty")
    blob_id = await engine.blobs.put(content)
    return json_response({"blob_id": blob_id, "content_type": content_type,
                          "size": len(content)}, status=201)


@routes.post("/api/v1/messages/{id}/retry")
async def retry(request: web.Request) -> web.Response:
    """Send a failed reply again."""
    engine = _engine(request)
    message_id = _int(request.match_info["id"], "message id")
    assert message_id is not None
    try:
        async with engine.db.write(engine.db.api) as conn:
            found = await outbound.retry(conn, message_id)
            message = await outbound.outbound_message(conn, message_id) if found else None
    except outbound.RetryRefused as exc:
        fail(409, str(exc))
    if message is None:
        fail(404, f"message {message_id} does not exist")
    engine.deliverer.submit(message_id, message["channel"])
    message.pop("raw", None)
    message.pop("delivery_lease_until", None)
    return json_response(message, status=202)


@routes.post("/api/v1/conversations/{id}/status")
async def set_status(request: web.Request) -> web.Response:
    """Move a conversation to another status (e.g. `resolved`)."""
    engine = _engine(request)
    conversation_id = _conversation_id(request)
    body: StatusRequest = await _body(request, StatusRequest, engine)
    try:
        async with engine.db.write(engine.db.api) as conn:
            found = await queries.set_status(conn, conversation_id, body.status)
    except queries.ConflictError as exc:
        fail(409, str(exc))
    if not found:
        fail(404, f"conversation {conversation_id} does not exist")
    return json_response({"id": conversation_id, "status": body.status.value})


@routes.get("/api/v1/messages/{id}/attachments/{position}")
async def attachment(request: web.Request) -> web.StreamResponse:
    """A file the citizen sent, once fetched from the provider into the store."""
    engine = _engine(request)
    message_id = _int(request.match_info["id"], "message id")
    position = _int(request.match_info["position"], "attachment position")
    assert message_id is not None and position is not None
    async with engine.db.api.connect() as conn:
        message = await outbound.outbound_message(conn, message_id)
    if message is None or position >= len(message["attachments"] or []):
        fail(404, f"message {message_id} has no attachment {position}")
    entry = message["attachments"][position]
    path = engine.blobs.path(entry.get("blob_id") or "")
    if path is None:
        state = entry.get("status", "pending")
        fail(404, f"attachment {position} of message {message_id} is not stored ({state})",
             fetch_status=state)
    content_type = (entry.get("content_type") or "").lower()
    if not _MEDIA_TYPE.fullmatch(content_type):
        content_type = "application/octet-stream"
    filename = entry.get("filename") or f"attachment-{message_id}-{position}"
    return web.FileResponse(path, headers={
        "Content-Type": content_type,
        # A citizen's file must never run as a page of this origin.
        "Content-Disposition": content_disposition_header("attachment", filename=filename),
        "X-Content-Type-Options": "nosniff",
        "Content-Security-Policy": "sandbox; default-src 'none'",
        "Cache-Control": "private, max-age=3600",
    })


@routes.get("/api/v1/events")
async def events(request: web.Request) -> web.StreamResponse:
    """Server-sent events: every routed message as it is confirmed, optionally of one queue."""
    engine = _engine(request)
    queue_filter = request.query.get("queue")
    response = web.StreamResponse(headers={
        "Content-Type": "text/event-stream", "Cache-Control": "no-cache",
    })
    await response.prepare(request)
    inbox: asyncio.Queue[RoutedEvent | None] = asyncio.Queue(maxsize=LIVE_BACKLOG)
    engine.live.add(inbox)
    try:
        await response.write(b": connected\n\n")
        # `None` is the engine's word that it is shutting down.
        while (event := await inbox.get()) is not None:
            if queue_filter is None or event.queue == queue_filter:
                data = orjson.dumps(event.to_json())
                await response.write(
                    b"id: %d\nevent: routed\ndata: %s\n\n" % (event.message_id, data)
                )
    finally:
        engine.live.discard(inbox)
        with contextlib.suppress(ConnectionResetError):
            await response.write_eof()
    return response
