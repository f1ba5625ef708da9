"""Channel adapters: the registry from channel name to the adapter built from the settings."""

from __future__ import annotations

from collections.abc import Callable

import aiohttp
from aiohttp import web

from omnichannel.adapters.api import ApiAdapter
from omnichannel.adapters.base import Adapter
from omnichannel.adapters.email import EmailAdapter
from omnichannel.adapters.telegram import TelegramAdapter
from omnichannel.adapters.twilio import TwilioAdapter
from omnichannel.adapters.webchat import WebchatAdapter
from omnichannel.adapters.webchat_routes import routes as webchat_routes
from omnichannel.adapters.whatsapp import WhatsAppAdapter
from omnichannel.adapters.xmpp import XmppAdapter
from omnichannel.settings import Settings

#: How to build each channel's adapter from the settings; one adapter serves every account
#: of its channel, and its webhook is `/webhooks/<name>`.
Factory = Callable[[Settings, aiohttp.ClientSession], Adapter]

REGISTRY: dict[str, Factory] = {
    ApiAdapter.name: lambda settings, session: ApiAdapter(
        token=settings.api_token, callback_url=settings.api_callback_url, session=session,
        phone_region=settings.phone_region,
    ),
    TelegramAdapter.name: lambda settings, _session: TelegramAdapter(
        settings.telegram_bots, api_url=settings.telegram_api_url,
        timeout_s=settings.delivery_timeout_s, phone_region=settings.phone_region,
    ),
    WhatsAppAdapter.name: lambda settings, session: WhatsAppAdapter(
        settings.whatsapp_accounts, app_secret=settings.whatsapp_app_secret,
        verify_token=settings.whatsapp_verify_token, session=session,
        api_url=settings.whatsapp_api_url, api_version=settings.whatsapp_api_version,
        timeout_s=settings.delivery_timeout_s,
    ),
    TwilioAdapter.name: lambda settings, session: TwilioAdapter(
        settings.twilio_accounts, session=session, api_url=settings.twilio_api_url,
        timeout_s=settings.delivery_timeout_s, phone_region=settings.phone_region,
        public_url=settings.public_url,
    ),
    XmppAdapter.name: lambda settings, _session: XmppAdapter(settings.xmpp_accounts),
    EmailAdapter.name: lambda settings, _session: EmailAdapter(
        settings.email_mailboxes, tracking_prefix=settings.tracking_prefix,
        listen_host=settings.email_smtp_host, listen_port=settings.email_smtp_port,
        helo_name=settings.email_helo_name, max_message_bytes=settings.email_max_message_bytes,
        max_attachment_bytes=settings.max_attachment_bytes,
        relay_networks=settings.email_relay_networks, relay_host=settings.email_relay_host,
        relay_port=settings.email_relay_port, relay_username=settings.email_relay_username,
        relay_password=(settings.email_relay_password.get_secret_value()
                        if settings.email_relay_password else None),
        relay_security=settings.email_relay_security, timeout_s=settings.delivery_timeout_s,
        imap_poll_s=settings.email_imap_poll_s,
    ),
    WebchatAdapter.name: lambda settings, _session: WebchatAdapter(
        settings.webchat_widgets, secret=settings.webchat_secret,
        token_days=settings.webchat_token_days, rate_per_minute=settings.webchat_rate_per_minute,
        upload_types=settings.webchat_upload_types, upload_bytes=settings.webchat_upload_bytes,
        resync_s=settings.webchat_resync_s, phone_region=settings.phone_region,
    ),
}

#: HTTP routes of adapters besides `/webhooks/<name>` (a widget's script, a chat page, a
#: socket). They are mounted when the application is built, before any adapter exists, so each
#: handler finds its adapter at request time in `request.app[ENGINE].adapters`.
ADAPTER_ROUTES: list[web.RouteTableDef] = []
ADAPTER_ROUTES.append(webchat_routes)


async def carried_channels() -> set[str]:
    """Every channel the registered adapters can carry (a work queue each in broker mode)."""
    async with aiohttp.ClientSession() as session:
        adapters = [build(Settings(), session) for build in REGISTRY.values()]
        try:
            return {channel for adapter in adapters for channel in adapter.carries()}
        finally:
            for adapter in adapters:
                await adapter.close()


__all__ = ["ADAPTER_ROUTES", "REGISTRY", "Adapter", "Factory", "carried_channels"]
