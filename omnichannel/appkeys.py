"""Typed keys of the objects the aiohttp application carries."""

from __future__ import annotations

from typing import TYPE_CHECKING

from aiohttp import web

if TYPE_CHECKING:
    from omnichannel.app import Engine

#: The engine whose stages serve this application.
ENGINE: web.AppKey[Engine] = web.AppKey("engine")
