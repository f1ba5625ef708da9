"""Structured logging through structlog: JSON lines by default, secrets never rendered."""

from __future__ import annotations

import logging
import sys

import structlog

#: Keys whose values are replaced before a log line is rendered.
_SECRET_KEYS = frozenset(
    {"token", "api_token", "agent_token", "authorization", "password", "secret"}
)


def _mask_secrets(
    _logger: object, _method: str, event: structlog.typing.EventDict
) -> structlog.typing.EventDict:
    """Replace the value of any secret-looking key so it cannot leak into logs."""
    for key in event.keys() & _SECRET_KEYS:
        event[key] = "***"
    return event


def configure_logging(level: str = "info", fmt: str = "json") -> None:
    """Route structlog and the standard library's logging to stderr in one format."""
    renderer: structlog.typing.Processor = (
        structlog.processors.JSONRenderer()
        if fmt == "json"
        else structlog.dev.ConsoleRenderer(colors=False)
    )
    shared: list[structlog.typing.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        _mask_secrets,
    ]
    structlog.configure(
        processors=[*shared, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=shared,
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                structlog.processors.format_exc_info,
                renderer,
            ],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # aiohttp's access log repeats what our own request logging says, at every request.
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    # slixmpp logs every stanza and event at debug and each connection step at info.
    logging.getLogger("slixmpp").setLevel(max(root.level, logging.WARNING))
