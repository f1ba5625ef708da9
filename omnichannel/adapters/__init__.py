"""Channel adapters: the registry from channel name to the adapter built from the settings."""

from __future__ import annotations

from collections.abc import Callable, Mapping

import aiohttp

from omnichannel.adapters.api import ApiAdapter
from omnichannel.adapters.base import Adapter
from omnichannel.adapters.telegram import TelegramAdapter
from omnichannel.adapters.twilio import TwilioAdapter
from omnichannel.delivery import DeliveryError, Outgoing
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
    TwilioAdapter.name: lambda settings, session: TwilioAdapter(
        settings.twilio_accounts, session=session, api_url=settings.twilio_api_url,
        timeout_s=settings.delivery_timeout_s, phone_region=settings.phone_region,
        public_url=settings.public_url,
    ),
}

#: Every conversation channel a registered adapter may carry: most carry the channel they are
#: named after, Twilio carries sms and whatsapp.
CHANNELS: frozenset[str] = frozenset(REGISTRY) | TwilioAdapter.channels


class ServingSender:
    """Sends a reply through the adapter that serves its conversation's channel and account.

    One provider may carry several channels and one channel several providers, so the
    conversation's account decides, at send time.
    """

    def __init__(self, adapters: Mapping[str, Adapter]) -> None:
        self._adapters = adapters

    async def send(self, message: Outgoing) -> str | None:
        """`send` of the first adapter that `serves` the message's channel and account."""
        for adapter in self._adapters.values():
            if adapter.serves(message.channel, message.account):
                return await adapter.send(message)
        raise DeliveryError(f"no channel adapter serves {message.channel} account "
                            f"{message.account!r}", retryable=False)


__all__ = ["CHANNELS", "REGISTRY", "Adapter", "Factory", "ServingSender"]
