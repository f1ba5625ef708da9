"""The one HTTP path of every webhook adapter: bound, verify, parse, store, acknowledge."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import sqlalchemy as sa
import structlog
from aiohttp import web

from omnichannel import metrics
from omnichannel.adapters.base import (
    Adapter,
    ChannelDisabled,
    PayloadError,
    SignatureError,
    WebhookRequest,
)
from omnichannel.http import fail, read_body
from omnichannel.model import InboundMessage, StatusUpdate
from omnichannel.pipeline import ShuttingDown
from omnichannel.store.ingest import Stored

log = structlog.get_logger(__name__)

Submit = Callable[[InboundMessage], Awaitable[Stored]]
#: Records providers' delivery receipts durably.
RecordReceipts = Callable[[list[StatusUpdate]], Awaitable[object]]


async def webhook_request(
    request: web.Request, max_body_bytes: int, public_url: str | None
) -> WebhookRequest:
    """The provider's request as data, its body bounded, its URL as the provider called it."""
    body = await read_body(request, max_body_bytes)
    # Behind a proxy the server sees its own address; providers sign the public one.
    url = public_url.rstrip("/") + request.path_qs if public_url else str(request.url)
    return WebhookRequest(method=request.method, url=url, headers=request.headers, body=body,
                          query=request.query)


async def handle_webhook(
    adapter: Adapter, request: web.Request, submit: Submit, record_receipts: RecordReceipts, *,
    max_body_bytes: int, public_url: str | None,
) -> web.Response:
    """Answer a provider: 2xx only once every message and receipt it sent is stored durably."""
    if not adapter.webhook:
        fail(404, f"the {adapter.name} channel has no webhook: it receives messages over "
                  f"{adapter.receives_over}")
    if request.method not in adapter.methods:
        raise web.HTTPMethodNotAllowed(request.method, sorted(adapter.methods))
    try:
        incoming = await webhook_request(request, max_body_bytes, public_url)
        try:
            adapter.verify(incoming)
        except ChannelDisabled as exc:
            fail(503, str(exc))
        except SignatureError as exc:
            log.warning("webhook_refused", channel=adapter.name, reason=str(exc))
            fail(exc.status, str(exc))
        try:
            messages = adapter.parse(incoming)
            receipts = adapter.statuses(incoming)
        except PayloadError as exc:
            fail(exc.status, str(exc), detail=exc.detail)
    except web.HTTPException as exc:
        metrics.REQUESTS_REJECTED.labels(adapter.name, str(exc.status)).inc()
        raise
    try:
        stored = await asyncio.gather(*(submit(m) for m in messages))
        if receipts:
            await record_receipts(receipts)
    except ShuttingDown:
        fail(503, "the engine is shutting down; retry later")
    except (RuntimeError, sa.exc.SQLAlchemyError, OSError):
        log.exception("webhook_store_failed", channel=adapter.name)
        fail(500, "the message could not be stored; retry later")
    return adapter.acknowledge(incoming, stored)
