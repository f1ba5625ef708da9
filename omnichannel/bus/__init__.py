"""Message bus: routed events to OPD queues, over RabbitMQ or in process."""

from __future__ import annotations

from omnichannel.bus.base import (
    DEFAULT_DELIVERY_LIMIT,
    Bus,
    BusError,
    Handler,
    Subscription,
    decode_event,
    encode_event,
)
from omnichannel.bus.memory import DeadLetter, MemoryBus
from omnichannel.bus.rabbitmq import RabbitBus

__all__ = [
    "DEFAULT_DELIVERY_LIMIT",
    "Bus",
    "BusError",
    "DeadLetter",
    "Handler",
    "MemoryBus",
    "RabbitBus",
    "Subscription",
    "decode_event",
    "encode_event",
    "make_bus",
]


def make_bus(
    url: str | None,
    *,
    prefix: str = "omnichannel",
    delivery_limit: int = DEFAULT_DELIVERY_LIMIT,
) -> Bus:
    """The RabbitMQ bus for an AMQP URL; the in-process bus when `url` is None or empty."""
    if not url:
        return MemoryBus(delivery_limit=delivery_limit)
    return RabbitBus(url, prefix=prefix, delivery_limit=delivery_limit)
