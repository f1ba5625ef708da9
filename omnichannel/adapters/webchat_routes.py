"""The web chat's HTTP routes: the widget's script, the standalone page, the socket, files.

Every route of a widget checks the page's `Origin` against the widget's origins (the
engine's own origin, where the standalone page lives, is always allowed) before anything
else, and refuses with 403; an unknown widget key is 404.
"""

from __future__ import annotations

import asyncio
import html
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import orjson
import sqlalchemy as sa
import structlog
from aiohttp import WSCloseCode, WSMsgType, web
from aiohttp.helpers import content_disposition_header

from omnichannel.adapters.webchat import (
    CHANNEL,
    ChatError,
    LiveSocket,
    WebchatAdapter,
    origin_allowed,
)
from omnichannel.adapters.webchat_token import TokenError, Visitor
from omnichannel.appkeys import ENGINE
from omnichannel.http import json_response, read_body
from omnichannel.pipeline import ShuttingDown
from omnichannel.settings import WebchatWidget
from omnichannel.tasks import cancel_and_wait

log = structlog.get_logger(__name__)

routes = web.RouteTableDef()

#: The widget's files, shipped as package data.
STATIC = Path(__file__).resolve().parent.parent / "webchat"
#: The standalone page runs our script and talks to us only; nothing else may load.
PAGE_CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
            "img-src 'self' blob:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
#: Largest frame a visitor may send (a message is at most 4,000 characters).
MAX_FRAME = 64 * 1024
DEFAULT_TITLES = {"id": "Layanan Pengaduan", "en": "Complaints service"}
#: How long a socket without `token` or `after` in its URL waits for the widget's hello.
HELLO_TIMEOUT_S = 10.0


class _Refused(Exception):
    """A request refused with a JSON error (and CORS headers, so the widget can read it)."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code


def _adapter(request: web.Request) -> WebchatAdapter:
    adapter = request.app[ENGINE].adapters.get(CHANNEL)
    if not isinstance(adapter, WebchatAdapter) or adapter.tokens is None:
        raise _Refused(404, "not_configured", "the web chat is not configured")
    return adapter


def _widget(request: web.Request, adapter: WebchatAdapter) -> WebchatWidget:
    widget = adapter.widget(request.match_info["key"])
    if widget is None:
        raise _Refused(404, "unknown_widget", "no chat widget has this key")
    return widget


def own_origins(request: web.Request) -> list[str]:
    """The engine's own origins: as this request reached it, and its public URL's."""
    origins = [f"{request.scheme}://{request.host}"]
    public = request.app[ENGINE].settings.public_url
    if public:
        parts = urlsplit(public)
        origins.append(f"{parts.scheme}://{parts.netloc}")
    return origins


def _check_origin(request: web.Request, widget: WebchatWidget, *, required: bool) -> None:
    origin = request.headers.get("Origin")
    if origin is None and not required:
        return  # a same-origin GET carries none; the token still has to prove the visitor
    if not origin_allowed(origin, widget, own_origins(request)):
        log.warning("webchat_origin_refused", widget=widget.key, origin=origin)
        raise _Refused(403, "origin_refused",
                       f"pages of {origin or 'an unnamed origin'} may not use this chat widget")


def _cors(request: web.Request) -> dict[str, str]:
    """CORS headers for an origin already checked (or none for a same-origin request)."""
    origin = request.headers.get("Origin")
    if not origin:
        return {}
    return {"Access-Control-Allow-Origin": origin, "Vary": "Origin",
            "Access-Control-Allow-Methods": "GET, POST, OPTIONS",
            "Access-Control-Allow-Headers": "Authorization, Content-Type",
            "Access-Control-Max-Age": "600"}


def _refusal(request: web.Request, refused: _Refused) -> web.Response:
    response = json_response({"error": str(refused), "code": refused.code},
                             status=refused.status)
    if refused.code != "origin_refused":
        response.headers.update(_cors(request))
    return response


def _visitor(request: web.Request, adapter: WebchatAdapter, widget: WebchatWidget) -> Visitor:
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise _Refused(401, "token_required", "send the visitor token as a bearer token")
    assert adapter.tokens is not None
    try:
        return adapter.tokens.read(token.strip(), widget.key)
    except TokenError as exc:
        raise _Refused(401, "invalid_token", str(exc)) from exc


def _nonnegative(value: str | None, what: str) -> int:
    try:
        number = int(value or "0")
    except ValueError:
        number = -1
    if number < 0:
        raise _Refused(400, "invalid_" + what, f"{what} must be a non-negative integer")
    return number


@routes.get("/webchat/widget.js")
async def script(_request: web.Request) -> web.StreamResponse:
    """The widget: one script, no build step, embedded with one `<script>` tag."""
    return web.FileResponse(STATIC / "widget.js", headers={
        "Content-Type": "text/javascript; charset=utf-8", "Cache-Control": "public, max-age=300",
        "X-Content-Type-Options": "nosniff"})


@routes.get("/webchat/widget.css")
async def stylesheet(_request: web.Request) -> web.StreamResponse:
    """The widget's styles, loaded inside its shadow root."""
    return web.FileResponse(STATIC / "widget.css", headers={
        "Content-Type": "text/css; charset=utf-8", "Cache-Control": "public, max-age=300",
        # Host pages of other origins load it into their document.
        "Access-Control-Allow-Origin": "*", "X-Content-Type-Options": "nosniff"})


@routes.get("/chat/{key}")
async def page(request: web.Request) -> web.Response:
    """The standalone chat page of a widget, to share as a link."""
    try:
        widget = _widget(request, _adapter(request))
    except _Refused as refused:
        return web.Response(status=refused.status, text=str(refused),
                            content_type="text/plain")
    title = html.escape(widget.title or DEFAULT_TITLES[widget.language])
    body = (f'<!doctype html>\n<html lang="{widget.language}"><head><meta charset="utf-8">'
            '<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>{title}</title></head><body>"
            f'<script src="/webchat/widget.js" data-widget="{html.escape(widget.key)}" '
            'data-mode="page"></script></body></html>\n')
    return web.Response(text=body, content_type="text/html", headers={
        "Content-Security-Policy": PAGE_CSP, "X-Content-Type-Options": "nosniff",
        "Referrer-Policy": "no-referrer", "Cache-Control": "no-cache"})


@routes.get("/chat/{key}/socket")
async def socket(request: web.Request) -> web.StreamResponse:
    """A visitor's live chat: welcome, what they missed, then messages both ways."""
    try:
        adapter = _adapter(request)
        widget = _widget(request, adapter)
        # Before the upgrade: a page of another site never gets a socket.
        _check_origin(request, widget, required=True)
        after = _nonnegative(request.query.get("after"), "after")
    except _Refused as refused:
        return json_response({"error": str(refused), "code": refused.code},
                             status=refused.status)
    assert adapter.tokens is not None
    ws = web.WebSocketResponse(heartbeat=25.0, max_msg_size=MAX_FRAME)
    await ws.prepare(request)
    token = request.query.get("token")
    if "token" not in request.query and "after" not in request.query:
        # The widget says hello first, so its token stays out of URLs (and proxies' logs).
        hello = await _hello(ws)
        if hello is None:
            await ws.close(code=WSCloseCode.POLICY_VIOLATION, message=b"hello expected")
            return ws
        token, after = hello
    visitor, new = adapter.visitor_of(token, widget)
    await ws.send_json({
        "type": "welcome", "token": adapter.tokens.issue(visitor), "new": new,
        "visitor": _details(visitor),
        "widget": {"title": widget.title, "language": widget.language,
                   "require": list(widget.require)},
        "upload": {"types": sorted(adapter.upload_types), "bytes": adapter.upload_bytes},
    })
    live = await adapter.serve(ws, widget, visitor, 0 if new else after)
    resync = asyncio.create_task(_resync(adapter, widget, live))
    try:
        async for msg in ws:
            if msg.type != WSMsgType.TEXT:
                continue
            visitor = await _frame(adapter, widget, visitor, live, msg.data)
    finally:
        await cancel_and_wait([resync])
        adapter.forget(widget, live)
    return ws


async def _hello(ws: web.WebSocketResponse) -> tuple[str | None, int] | None:
    """The token and cursor of the widget's first frame, `{"type": "hello", "token", "after"}`."""
    try:
        async with asyncio.timeout(HELLO_TIMEOUT_S):
            msg = await ws.receive()
        frame = orjson.loads(msg.data) if msg.type == WSMsgType.TEXT else None
    except (TimeoutError, orjson.JSONDecodeError):
        return None
    if not isinstance(frame, dict) or frame.get("type") != "hello":
        return None
    token, after = frame.get("token"), frame.get("after", 0)
    if (token is not None and not isinstance(token, str)) or not isinstance(after, int) \
            or after < 0:
        return None
    return token, after


async def _resync(adapter: WebchatAdapter, widget: WebchatWidget, live: LiveSocket) -> None:
    """Every few seconds, what the thread holds past the cursor: replies another process
    sent, whose live push could not reach this socket."""
    while True:
        await asyncio.sleep(adapter.resync_s)
        try:
            await adapter.resync(widget, live)
        except Exception:
            # The next round tries again; the socket stays open.
            log.exception("webchat_resync_failed", widget=widget.key)


def _details(visitor: Visitor) -> dict[str, str | None]:
    return {"name": visitor.name, "phone": visitor.phone, "email": visitor.email}


async def _frame(adapter: WebchatAdapter, widget: WebchatWidget, visitor: Visitor, live: LiveSocket,
                 data: str) -> Visitor:
    """Handle one frame of the visitor's; returns the visitor (new details after `identify`)."""
    client_id = None
    try:
        try:
            frame = orjson.loads(data)
        except orjson.JSONDecodeError as exc:
            raise ChatError("invalid_frame", "frames are JSON objects") from exc
        if not isinstance(frame, dict):
            raise ChatError("invalid_frame", "frames are JSON objects")
        client_id = frame.get("id")
        kind = frame.get("type")
        if kind == "message":
            await live.send(await adapter.take_message(widget, visitor, client_id,
                                                       frame.get("text"), origin=live))
        elif kind == "seen":
            await adapter.take_receipts(widget, live, frame)
        elif kind == "identify":
            visitor = adapter.identify(visitor, frame)
            assert adapter.tokens is not None
            await live.send({"type": "token", "token": adapter.tokens.issue(visitor),
                             "visitor": _details(visitor)})
        else:
            raise ChatError("invalid_frame", f"unknown frame type {kind!r}")
    except ChatError as exc:
        await live.send({"type": "error", "id": client_id, "code": exc.code,
                         "message": str(exc)})
    except ShuttingDown:
        await live.send({"type": "error", "id": client_id, "code": "unavailable",
                         "message": "the service is restarting; the message is sent again "
                                    "when the chat reconnects", "retry": True})
    except (sa.exc.SQLAlchemyError, OSError, RuntimeError):
        log.exception("webchat_store_failed", widget=widget.key)
        await live.send({"type": "error", "id": client_id, "code": "unavailable",
                         "message": "the message could not be stored; it is sent again",
                         "retry": True})
    return visitor


@routes.route("OPTIONS", "/chat/{key}/upload")
@routes.route("OPTIONS", "/chat/{key}/files/{seq}/{position}")
async def preflight(request: web.Request) -> web.Response:
    """CORS preflight of the upload and file routes, for the widget's origins only."""
    try:
        widget = _widget(request, _adapter(request))
        _check_origin(request, widget, required=True)
    except _Refused as refused:
        return _refusal(request, refused)
    return web.Response(status=204, headers=_cors(request))


@routes.post("/chat/{key}/upload")
async def upload(request: web.Request) -> web.Response:
    """An image from the visitor: the body is the file; `?id=` the widget's message id,
    `?name=` the file's name."""
    try:
        adapter = _adapter(request)
        widget = _widget(request, adapter)
        _check_origin(request, widget, required=True)
        visitor = _visitor(request, adapter, widget)
        try:
            content = await read_body(request, adapter.upload_bytes)
        except web.HTTPRequestEntityTooLarge as exc:
            raise _Refused(413, "too_large", f"the file is larger than {adapter.upload_bytes} "
                                             "bytes") from exc
        try:
            ack = await adapter.take_upload(widget, visitor, request.query.get("id"), content,
                                            request.query.get("name"))
        except ChatError as exc:
            raise _Refused(exc.status, exc.code, str(exc)) from exc
        except ShuttingDown as exc:
            raise _Refused(503, "unavailable", "the service is restarting; retry") from exc
    except _Refused as refused:
        return _refusal(request, refused)
    response = json_response(ack, status=200 if ack["duplicate"] else 201)
    response.headers.update(_cors(request))
    return response


@routes.get("/chat/{key}/files/{seq}/{position}")
async def file(request: web.Request) -> web.StreamResponse:
    """A file of the visitor's own conversation, for the visitor's token only."""
    try:
        adapter = _adapter(request)
        widget = _widget(request, adapter)
        _check_origin(request, widget, required=False)
        visitor = _visitor(request, adapter, widget)
        seq = _nonnegative(request.match_info["seq"], "seq")
        position = _nonnegative(request.match_info["position"], "position")
        entry = await adapter.attachment(widget, visitor.id, seq, position)
        path = request.app[ENGINE].blobs.path((entry or {}).get("blob_id") or "")
        if entry is None or path is None:
            raise _Refused(404, "no_file", f"message {seq} of this chat has no file {position}")
    except _Refused as refused:
        return _refusal(request, refused)
    content_type = str(entry.get("content_type") or "application/octet-stream").lower()
    filename = entry.get("filename") or f"file-{seq}-{position}"
    return web.FileResponse(path, headers={
        **_cors(request), "Content-Type": content_type,
        # Read by the widget into a blob URL; opened directly, it never runs as a page here.
        "Content-Disposition": content_disposition_header("attachment", filename=filename),
        "X-Content-Type-Options": "nosniff",
        "Content-Security-Policy": "sandbox; default-src 'none'",
        "Cache-Control": "private, max-age=3600",
    })


def _refused(description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": {
        "type": "object", "required": ["error"],
        "properties": {"error": {"type": "string"}, "code": {"type": "string"}}}}}}


_KEY = {"name": "key", "in": "path", "required": True,
        "schema": {"type": "string", "pattern": "^[A-Za-z0-9_-]{8,64}$"}}
#: The answer to a stored message: the widget's id and the message's sequence number.
_ACK: dict[str, Any] = {"description": "stored durably", "content": {"application/json": {
    "schema": {"type": "object", "properties": {
        "type": {"const": "ack"}, "id": {"type": "string"}, "seq": {"type": "integer"},
        "duplicate": {"type": "boolean"}}}}}}
_VISITOR: list[dict[str, list[str]]] = [{"bearer": []}]
_PREFLIGHT: dict[str, Any] = {"summary": "CORS preflight", "parameters": [_KEY],
                              "responses": {"204": {"description": "allowed"},
                                            "403": _refused("Origin not allowed")}}
#: The web chat's routes in the OpenAPI document (`omnichannel/openapi.py` merges them).
OPENAPI_PATHS: dict[str, Any] = {
    "/webhooks/webchat": {"post": {
        "summary": "None: the web chat takes messages on its socket, not by webhook",
        "responses": {"404": _refused("the web chat has no webhook")}}},
    "/webchat/widget.js": {"get": {
        "summary": "The widget's script, embedded with one script tag (data-widget=<key>)",
        "responses": {"200": {"description": "JavaScript",
                              "content": {"text/javascript": {}}}}}},
    "/webchat/widget.css": {"get": {
        "summary": "The widget's styles, loaded inside its shadow root",
        "responses": {"200": {"description": "CSS", "content": {"text/css": {}}}}}},
    "/chat/{key}": {"get": {
        "summary": "The widget's standalone chat page", "parameters": [_KEY],
        "responses": {"200": {"description": "HTML", "content": {"text/html": {}}},
                      "404": {"description": "no widget has this key"}}}},
    "/chat/{key}/socket": {"get": {
        "summary": "The visitor's WebSocket (see the README for its frames)",
        "parameters": [_KEY,
                       {"name": "token", "in": "query", "schema": {"type": "string"},
                        "description": "the visitor token of an earlier welcome frame"},
                       {"name": "after", "in": "query", "schema": {"type": "integer",
                                                                    "minimum": 0},
                        "description": "the cursor of the last history frame"}],
        "responses": {"101": {"description": "switched to the WebSocket protocol"},
                      "403": _refused("Origin not allowed for this widget"),
                      "404": _refused("no widget has this key")}}},
    "/chat/{key}/upload": {
        "options": _PREFLIGHT,
        "post": {
            "summary": "A photo from the visitor (the body is the image)", "security": _VISITOR,
            "parameters": [_KEY,
                           {"name": "id", "in": "query", "required": True,
                            "schema": {"type": "string"},
                            "description": "the widget's id for the message"},
                           {"name": "name", "in": "query", "schema": {"type": "string"}}],
            "requestBody": {"required": True, "content": {"image/*": {}}},
            "responses": {"201": _ACK, "200": {**_ACK, "description": "already stored"},
                          "401": _refused("missing or invalid visitor token"),
                          "403": _refused("Origin not allowed, or details required first"),
                          "413": _refused("larger than webchat_upload_bytes"),
                          "415": _refused("not an allowed image type"),
                          "429": _refused("too many messages")}}},
    "/chat/{key}/files/{seq}/{position}": {
        "options": _PREFLIGHT,
        "get": {
            "summary": "A file of the visitor's own conversation", "security": _VISITOR,
            "parameters": [_KEY,
                           {"name": "seq", "in": "path", "required": True,
                            "schema": {"type": "integer"}},
                           {"name": "position", "in": "path", "required": True,
                            "schema": {"type": "integer"}}],
            "responses": {"200": {"description": "the file, as an attachment"},
                          "401": _refused("missing or invalid visitor token"),
                          "404": _refused("no such file in this visitor's conversation")}}},
}
