"""The message-bus interface: publish routed events to OPD queues and consume them."""

from __future__ import annotations

import abc
import json
import re
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

try:  # orjson is several times faster; the standard library is the fallback.
    import orjson as _orjson
except ImportError:  # pragma: no cover
    _orjson = None  # type: ignore[assignment]

from omnichannel.model import RoutedEvent

#: A handler of one routed event; raising makes the bus redeliver the event.
Handler = Callable[[RoutedEvent], Awaitable[None]]

#: Failed deliveries an event may have before the next failure dead-letters it (RabbitMQ's
#: `x-delivery-limit`): handlers see one event at most `DEFAULT_DELIVERY_LIMIT + 1` times. A
#: delivery fails when the handler raises or when its consumer stops before it is acknowledged.
DEFAULT_DELIVERY_LIMIT = 5

# A code becomes part of a routing key (`opd.<code>`) and a queue name: no dots, no topic
# wildcards, nothing a broker could read as structure.
_CODE_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,99}")


class BusError(Exception):
    """A publish was not confirmed for some events; the caller should retry the batch.

    `failed` holds the `message_id`s of the events that failed (consumers dedupe by message id,
    so retrying the whole batch is safe too).
    """

    def __init__(self, message: str, failed: Sequence[int] = ()) -> None:
        super().__init__(message)
        self.failed: tuple[int, ...] = tuple(failed)


class Subscription(abc.ABC):
    """A running consumer of one queue."""

    @abc.abstractmethod
    async def cancel(self) -> None:
        """Stop taking new events and wait for the handlers in progress; idempotent."""


class Bus(abc.ABC):
    """Carries `RoutedEvent`s from the router to the OPD queues, durably and at least once."""

    @abc.abstractmethod
    async def start(self, queue_codes: Sequence[str]) -> None:
        """Connect if needed and declare the queues of `queue_codes`; idempotent, may add codes."""

    @abc.abstractmethod
    async def publish(self, events: Sequence[RoutedEvent]) -> None:
        """Return once every event is durably accepted; raise `BusError` if any was not."""

    @abc.abstractmethod
    async def consume(
        self, queue_code: str, handler: Handler, *, prefetch: int = 100
    ) -> Subscription:
        """Run `handler` for each event of the queue, up to `prefetch` at once.

        An event is acknowledged when the handler returns; when it raises, the event is
        redelivered, and dead-lettered once the delivery limit is reached. Delivery is at least
        once: handlers must be idempotent (dedupe by `event.message_id`).
        """

    @abc.abstractmethod
    async def ping(self) -> bool:
        """Whether the bus can publish now (for readiness probes); never raises."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Cancel every subscription and release the connection; idempotent."""


def check_code(code: str) -> str:
    """Return `code` if it can name a queue, else raise `ValueError`."""
    if not isinstance(code, str) or not _CODE_RE.fullmatch(code):
        raise ValueError(f"invalid queue code {code!r}: use letters, digits, '-' and '_'")
    return code


def routing_key(code: str) -> str:
    """Topic routing key of a queue code: `opd.<code>` (same as `RoutedEvent.routing_key`)."""
    return f"opd.{code}"


def encode_event(event: RoutedEvent) -> bytes:
    """The published body of an event: UTF-8 JSON of `event.to_json()`."""
    data = event.to_json()
    if _orjson is not None:
        return _orjson.dumps(data)
    return json.dumps(data, ensure_ascii=False, separators=(",", ":")).encode()  # pragma: no cover


def decode_event(body: bytes) -> RoutedEvent:
    """Parse a published body; raises `ValueError`, `KeyError` or `TypeError` when malformed."""
    data: Any = _orjson.loads(body) if _orjson is not None else json.loads(body)
    if not isinstance(data, dict):
        raise ValueError("event body is not a JSON object")
    return RoutedEvent.from_json(data)
