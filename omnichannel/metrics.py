"""Prometheus metrics of the engine, served at `/metrics`."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram

REGISTRY = CollectorRegistry(auto_describe=True)

MESSAGES_INGESTED = Counter(
    "omnichannel_messages_ingested_total", "Inbound messages stored", ["channel"],
    registry=REGISTRY,
)
MESSAGES_DUPLICATE = Counter(
    "omnichannel_messages_duplicate_total", "Repeated deliveries recognised and not stored again",
    ["channel"], registry=REGISTRY,
)
REQUESTS_REJECTED = Counter(
    "omnichannel_webhook_rejected_total", "Webhook requests refused", ["channel", "reason"],
    registry=REGISTRY,
)
EVENTS_PUBLISHED = Counter(
    "omnichannel_events_published_total", "Routed events confirmed by the bus", ["queue"],
    registry=REGISTRY,
)
PUBLISH_FAILURES = Counter(
    "omnichannel_publish_failures_total", "Bus publishes that failed and will be retried",
    registry=REGISTRY,
)
INGEST_BATCH_SIZE = Histogram(
    "omnichannel_ingest_batch_size", "Messages written per ingest transaction",
    buckets=(1, 2, 5, 10, 25, 50, 100, 250, 500), registry=REGISTRY,
)
INGEST_SECONDS = Histogram(
    "omnichannel_ingest_seconds", "Time from request to durable storage",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5), registry=REGISTRY,
)
DELIVERIES = Counter(
    "omnichannel_deliveries_total", "Outbound delivery attempts", ["channel", "outcome"],
    registry=REGISTRY,
)
EMAIL_IGNORED = Counter(
    "omnichannel_email_ignored_total",
    "Automated mail (auto-replies, delivery reports, lists) taken but not stored as a citizen's",
    ["kind"], registry=REGISTRY,
)
