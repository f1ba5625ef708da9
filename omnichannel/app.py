"""Wiring and lifecycle: the engine's stages and the aiohttp application that serves them."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from typing import Any

import aiohttp
import structlog
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from omnichannel import metrics
from omnichannel.adapters import ADAPTER_ROUTES, REGISTRY, Adapter
from omnichannel.adapters.base import EngineAccess
from omnichannel.adapters.webhook import handle_webhook
from omnichannel.appkeys import ENGINE
from omnichannel.blobs import BlobStore
from omnichannel.bus import Bus, Subscription, make_bus
from omnichannel.bus.work import make_work_queues
from omnichannel.delivery import Deliverer
from omnichannel.fetcher import Fetcher
from omnichannel.http import fail, json_response, require_bearer
from omnichannel.inbox.api import routes as inbox_routes
from omnichannel.model import InboundMessage, RouteDecision, RoutedEvent, StatusUpdate
from omnichannel.openapi import openapi_document
from omnichannel.pipeline import IngestPipeline, Publisher
from omnichannel.router import RulesError, RuleSet, load_rules
from omnichannel.settings import Settings
from omnichannel.store import outbound, outbox, queries
from omnichannel.store.database import Database, create_database
from omnichannel.store.ingest import Ingestor
from omnichannel.store.migrate import upgrade

log = structlog.get_logger(__name__)

class Engine:
    """Every stage of one `omnichannel serve` process, started and stopped together."""

    def __init__(self, settings: Settings, rules: RuleSet) -> None:
        self.settings = settings
        self.rules = rules
        self.db: Database = create_database(
            settings.database_url,
            ingest_pool_size=settings.ingest_pool_size,
            api_pool_size=settings.api_pool_size,
            api_statement_timeout_s=settings.api_statement_timeout_s,
        )
        self.bus: Bus = make_bus(settings.broker_url, prefix=settings.broker_prefix)
        self.publisher = Publisher(self.db, self.bus)
        self.live: set[asyncio.Queue[RoutedEvent | None]] = set()
        self._subscriptions: dict[str, Subscription] = {}
        self._http: aiohttp.ClientSession | None = None
        # Filled at start, when the HTTP client the adapters share can be made in the loop.
        self.adapters: dict[str, Adapter] = {}
        self._bound: dict[tuple[str, str], str | None] = {}
        self.blobs = BlobStore(settings.attachments_path)
        self.deliverer = Deliverer(
            self.db, self.sender_of, make_work_queues(self.bus), self.blobs,
            attempts=settings.delivery_attempts, timeout_s=settings.delivery_timeout_s,
            sweep_s=settings.delivery_sweep_s,
        )
        self.fetcher = Fetcher(
            self.db, self.sender_of, self.blobs, max_bytes=settings.max_attachment_bytes,
            attempts=settings.delivery_attempts, timeout_s=settings.fetch_timeout_s,
            too_large_text=settings.too_large_texts[settings.language],
            deliver=self.deliverer.submit,
        )
        # SQLite has one writer at a time: more writer tasks would only queue for its lock.
        writers = 1 if settings.is_sqlite else settings.ingest_writers
        ingestor = Ingestor(self._route, settings.tracking_prefix,
                            self._acknowledgement if settings.auto_ack else None)
        self.pipeline = IngestPipeline(
            self.db, ingestor, self.publisher, batch_size=settings.ingest_batch_size,
            workers=writers,
            on_outbound=self.deliverer.submit, on_fetch=self.fetcher.submit,
        )

    def sender_of(self, channel: str, account: str) -> Adapter | None:
        """The adapter that carries replies in conversations of `channel` and `account`."""
        for adapter in self.adapters.values():
            if adapter.serves(channel, account):
                return adapter
        return None

    def channels(self) -> set[str]:
        """Every channel the adapters carry replies on (a work queue each)."""
        return {c for adapter in self.adapters.values() for c in adapter.carries()}

    def _acknowledgement(self, message: InboundMessage, tracking: str, queue: str) -> str | None:
        """The reply to a conversation's first message: its tracking number and OPD."""
        adapter = self.adapters.get(message.channel)
        if adapter is not None and adapter.capabilities.acknowledges_inline:
            return None
        template = self.settings.auto_ack_texts[self.settings.language]
        return template.format(tracking_number=tracking, opd=self.rules.opds.get(queue, queue))

    def _route(self, message: InboundMessage) -> RouteDecision:
        key = (message.channel, message.account)
        if key not in self._bound:
            # Asked for every message: the answer per account is kept (accounts are few, but
            # the api channel takes any name, so the memory is bounded).
            if len(self._bound) > 10000:
                self._bound.clear()
            adapter = self.sender_of(*key)
            self._bound[key] = adapter.bound_queue(message.account) if adapter else None
        bound = self._bound[key]
        if bound is not None and bound not in self.rules.opds:
            # No queue exists for an OPD the rules do not declare: its events could never be
            # published. The rules route the message instead.
            log.warning("bound_queue_unknown", channel=message.channel,
                        account=message.account, queue=bound)
            bound = None
        if bound is not None:
            return RouteDecision(queue=bound, rule=f"account:{message.account}",
                                 reason=f"{message.channel} account {message.account!r} "
                                        f"belongs to {bound}")
        return self.rules.route(
            message.text, channel=message.channel, account=message.account,
            sender=message.sender.id,
        )

    async def reload_rules(self) -> list[str]:
        """Load the rules file again; on any error keep the rules in force and return the errors."""
        try:
            rules = load_rules(self.settings.rules_path)
        except RulesError as exc:
            errors = [str(e) for e in exc.errors]
            log.error("rules_reload_refused", errors=errors)
            return errors
        await self._declare(rules.opds)
        self.rules = rules
        log.info("rules_reloaded", opds=len(rules.opds))
        return []

    async def _declare(self, codes: Iterable[str]) -> None:
        """Declare the queues of `codes` and, in process, consume the ones not yet consumed."""
        await self.bus.start(list(codes))
        if not self.settings.broker_url:
            # In process, the engine is the consumer of its own queues: the live view.
            for code in codes:
                if code not in self._subscriptions:
                    self._subscriptions[code] = await self.bus.consume(code, self._consume_live)

    async def _consume_live(self, event: RoutedEvent) -> None:
        await self._fan_out((event,))

    async def _fan_out(self, events: Sequence[RoutedEvent]) -> None:
        for listener in list(self.live):
            for event in events:
                if listener.full():
                    # A listener this far behind has gone away without closing; drop it.
                    self.live.discard(listener)
                    break
                listener.put_nowait(event)

    async def start(self) -> None:
        """Migrate the database, declare the bus topology and start every stage."""
        await upgrade(self.settings.database_url)
        async with self.db.api.connect() as conn:
            # Events stored for a queue the rules no longer name must still have somewhere
            # to go, or the relay would retry them forever.
            pending = await outbox.pending_queues(conn)
        await self._declare(set(self.rules.opds) | pending)
        if self.settings.broker_url:
            # RabbitMQ's OPD queues belong to their consumers; this process shows agents
            # what it has published itself.
            self.publisher.add_listener(self._fan_out)
        self._http = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=self.settings.delivery_timeout_s)
        )
        for name, build in REGISTRY.items():
            self.adapters[name] = build(self.settings, self._http)
        await self.publisher.start()
        await self.pipeline.start()
        access = EngineAccess(submit=self.pipeline.submit, record_receipts=self.record_receipts,
                              thread=self._thread, blobs=self.blobs,
                              citizen_messages=self._citizen_messages)
        await self.deliverer.start(sorted(self.channels()))
        await self.fetcher.start()
        for adapter in self.adapters.values():
            await adapter.start(access)
        log.info("engine_started", database=self.db.dialect,
                 bus="rabbitmq" if self.settings.broker_url else "in-process",
                 opds=len(self.rules.opds))

    async def _thread(self, channel: str, account: str, address: str,
                      after_id: int) -> list[dict[str, Any]]:
        async with self.db.api.connect() as conn:
            return await queries.thread(conn, channel=channel, account=account,
                                        address=address, after_id=after_id)

    async def _citizen_messages(self, conversation_id: int) -> list[dict[str, Any]]:
        async with self.db.api.connect() as conn:
            return await queries.citizen_messages(conn, conversation_id)

    async def record_receipts(self, receipts: list[StatusUpdate]) -> None:
        """Store providers' delivery receipts and advance their messages' delivery states."""
        async with self.db.write(self.db.ingest) as conn:
            advanced = await outbound.record_receipts(conn, receipts)
        log.info("receipts_recorded", receipts=len(receipts), advanced=advanced)

    def end_live_streams(self) -> None:
        """Tell every live (SSE) listener to finish, so shutdown need not wait for them."""
        for listener in list(self.live):
            with contextlib.suppress(asyncio.QueueFull):
                listener.put_nowait(None)

    async def stop(self) -> None:
        """Stop taking messages, publish what was stored, then release every resource."""
        await self.pipeline.stop()
        await self.publisher.stop()
        await self.fetcher.stop()
        await self.deliverer.stop()
        for adapter in self.adapters.values():
            await adapter.close()
        for subscription in self._subscriptions.values():
            await subscription.cancel()
        if self._http is not None:
            await self._http.close()
        await self.bus.close()
        await self.db.dispose()
        log.info("engine_stopped")


def webhook_view(channel: str) -> Callable[[web.Request], Awaitable[web.Response]]:
    """The handler of `/webhooks/<channel>`."""

    async def view(request: web.Request) -> web.Response:
        engine = request.app[ENGINE]
        adapter = engine.adapters.get(channel)
        if adapter is None:
            fail(404, f"the {channel} channel is not configured")
        return await handle_webhook(
            adapter, request, engine.pipeline.submit, engine.record_receipts,
            max_body_bytes=engine.settings.max_body_bytes, public_url=engine.settings.public_url,
        )

    return view


async def healthz(_request: web.Request) -> web.Response:
    """Liveness: the process answers."""
    return json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    """Readiness: the database and the bus both answer."""
    engine = request.app[ENGINE]
    checks = {"database": await engine.db.ping(), "bus": await engine.bus.ping()}
    ok = all(checks.values())
    return json_response({"status": "ok" if ok else "unavailable", "checks": checks},
                         status=200 if ok else 503)


async def metrics_view(_request: web.Request) -> web.Response:
    """Prometheus metrics in the text exposition format."""
    return web.Response(body=generate_latest(metrics.REGISTRY),
                        headers={"Content-Type": CONTENT_TYPE_LATEST})


async def openapi_view(_request: web.Request) -> web.Response:
    """The OpenAPI 3.1 description of the HTTP API."""
    return json_response(openapi_document())


async def reload_rules_view(request: web.Request) -> web.Response:
    """Reload the rules file; a broken file is refused and the rules in force stay."""
    engine = request.app[ENGINE]
    require_bearer(request, engine.settings.agent_token, "the admin API")
    errors = await engine.reload_rules()
    if errors:
        fail(422, "the rules file is invalid; the previous rules stay in force", errors=errors)
    return json_response({"status": "reloaded", "opds": sorted(engine.rules.opds)})


def build_app(settings: Settings, rules: RuleSet | None = None) -> web.Application:
    """The aiohttp application of one engine process."""
    if rules is None:
        rules = load_rules(settings.rules_path)
    # The body limit is ours to enforce with a clear message; aiohttp's own would answer first.
    app = web.Application(client_max_size=settings.max_body_bytes * 2 + 1024)
    engine = Engine(settings, rules)
    app[ENGINE] = engine

    async def lifecycle(_app: web.Application) -> AsyncIterator[None]:
        await engine.start()
        yield
        await engine.stop()

    async def on_shutdown(_app: web.Application) -> None:
        engine.end_live_streams()

    app.cleanup_ctx.append(lifecycle)
    app.on_shutdown.append(on_shutdown)
    for channel in REGISTRY:
        app.router.add_route("*", f"/webhooks/{channel}", webhook_view(channel))
    for routes in ADAPTER_ROUTES:
        app.router.add_routes(routes)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics_view)
    app.router.add_get("/openapi.json", openapi_view)
    app.router.add_post("/api/v1/admin/rules/reload", reload_rules_view)
    app.router.add_routes(inbox_routes)
    return app
