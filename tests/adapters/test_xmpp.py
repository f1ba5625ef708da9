"""XMPP stanzas to messages and receipts, what is ignored, settings and the adapter offline."""

from __future__ import annotations

import asyncio
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest
from pydantic import ValidationError
from slixmpp import JID, ClientXMPP, Message

from omnichannel.adapters.xmpp import XmppAdapter
from omnichannel.adapters.xmpp_stanza import PLUGINS, inbound_message, receipt, stanza_id
from omnichannel.delivery import DeliveryError, Outgoing
from omnichannel.model import DeliveryStatus
from omnichannel.settings import XmppAccount

BOT = JID("lapor@xmpp.ambon.go.id")
GATEWAY = JID("lapor.xmpp.ambon.go.id")
NOW = datetime(2026, 3, 2, 8, 30, tzinfo=UTC)
SECRET = b"account-password-0123456789"


@pytest.fixture(scope="module")
def stream() -> Iterator[ClientXMPP]:
    """A stream that is never connected: its plugins teach slixmpp the extensions' stanzas."""
    loop = asyncio.new_event_loop()
    xmpp = ClientXMPP(str(BOT), "unused-password", loop=loop)
    for plugin in PLUGINS:
        xmpp.register_plugin(plugin)
    yield xmpp
    loop.close()


def stanza(stream: ClientXMPP, xml: str) -> Message:
    return Message(stream, ET.fromstring(xml))


def chat(body: str | None = "Lampu jalan di Tantui mati", *, sender: str = "budi@jabber.id/hp",
         to: str = str(BOT), kind: str | None = "chat", ident: str | None = "m1",
         extra: str = "") -> str:
    type_ = f' type="{kind}"' if kind else ""
    id_ = f' id="{ident}"' if ident else ""
    body_xml = f"<body>{body}</body>" if body is not None else ""
    return (f'<message xmlns="jabber:client" from="{sender}" to="{to}"{type_}{id_}>'
            f"{body_xml}{extra}</message>")


def test_a_chat_message_becomes_the_citizens_message(stream: ClientXMPP) -> None:
    message = inbound_message("lapor", BOT, stanza(stream, chat()), component=False, now=NOW)
    assert message is not None
    assert (message.channel, message.account, message.sender.id, message.text) == (
        "xmpp", "lapor", "budi@jabber.id", "Lampu jalan di Tantui mati")
    assert message.external_id == "budi@jabber.id/m1"
    assert message.sent_at == NOW
    assert "Lampu jalan" in message.raw["stanza"]


def test_a_message_without_type_is_normal_and_taken(stream: ClientXMPP) -> None:
    message = inbound_message("lapor", BOT, stanza(stream, chat(kind=None)), component=False,
                              now=NOW)
    assert message is not None and message.text == "Lampu jalan di Tantui mati"


def test_the_origin_id_is_the_dedupe_key_and_is_per_sender(stream: ClientXMPP) -> None:
    origin = '<origin-id xmlns="urn:xmpp:sid:0" id="origin-7"/>'
    first = inbound_message("lapor", BOT, stanza(stream, chat(extra=origin)),
                            component=False, now=NOW)
    again = inbound_message("lapor", BOT, stanza(stream, chat(ident="other", extra=origin)),
                            component=False, now=NOW)
    other = inbound_message("lapor", BOT, stanza(stream, chat(sender="ani@jabber.id/pc",
                                                               extra=origin)),
                            component=False, now=NOW)
    assert first is not None and again is not None and other is not None
    assert first.external_id == again.external_id == "budi@jabber.id/origin-7"
    assert other.external_id != first.external_id


def test_a_message_without_any_id_is_never_taken_for_another(stream: ClientXMPP) -> None:
    one = inbound_message("lapor", BOT, stanza(stream, chat(ident=None)), component=False,
                          now=NOW)
    two = inbound_message("lapor", BOT, stanza(stream, chat(ident=None)), component=False,
                          now=NOW)
    assert one is not None and two is not None and one.external_id != two.external_id


def test_a_message_the_server_kept_carries_its_delay_stamp(stream: ClientXMPP) -> None:
    delay = '<delay xmlns="urn:xmpp:delay" from="xmpp.ambon.go.id" stamp="2026-03-01T22:15:00Z"/>'
    message = inbound_message("lapor", BOT, stanza(stream, chat(extra=delay)),
                              component=False, now=NOW)
    assert message is not None
    assert message.sent_at == datetime(2026, 3, 1, 22, 15, tzinfo=UTC)


@pytest.mark.parametrize("xml", [
    chat(kind="error"), chat(kind="groupchat"), chat(kind="headline"),
    chat(""), chat("   \n "),
    # A chat state alone: the citizen is typing.
    chat(None, extra='<composing xmlns="http://jabber.org/protocol/chatstates"/>'),
    # Our own account, from another of its sessions.
    chat(sender=f"{BOT}/desktop"),
    # The server itself (announcements, MOTD) is not a citizen.
    chat(sender="xmpp.ambon.go.id"),
    # A carbon copy of a message of one of our other sessions.
    chat(None, sender=str(BOT), extra=(
        '<received xmlns="urn:xmpp:carbons:2"><forwarded xmlns="urn:xmpp:forward:0">'
        + chat(sender="budi@jabber.id/hp") + "</forwarded></received>")),
], ids=["error", "groupchat", "headline", "empty", "blank", "chat-state", "own", "server",
        "carbon"])
def test_what_is_not_a_citizens_message_is_ignored(stream: ClientXMPP, xml: str) -> None:
    assert inbound_message("lapor", BOT, stanza(stream, xml), component=False, now=NOW) is None


def test_a_component_ignores_its_own_addresses_and_takes_everyone_elses(
    stream: ClientXMPP,
) -> None:
    own = stanza(stream, chat(sender=f"dlhp@{GATEWAY}", to=f"lapor@{GATEWAY}"))
    citizen = stanza(stream, chat(to=f"dlhp@{GATEWAY}"))
    assert inbound_message("gw", GATEWAY, own, component=True, now=NOW) is None
    taken = inbound_message("gw", GATEWAY, citizen, component=True, now=NOW)
    assert taken is not None and taken.sender.id == "budi@jabber.id"


def test_a_receipt_from_the_recipient_marks_the_reply_delivered(stream: ClientXMPP) -> None:
    ident = stanza_id("omnichannel-12", "budi@jabber.id", SECRET)
    received = f'<received xmlns="urn:xmpp:receipts" id="{ident}"/>'
    update = receipt("lapor", stanza(stream, chat(None, extra=received)),
                     SECRET, now=NOW)
    assert update is not None
    assert (update.channel, update.account, update.external_id, update.status) == (
        "xmpp", "lapor", ident, DeliveryStatus.DELIVERED)


def test_a_receipt_from_anyone_else_is_not_believed(stream: ClientXMPP) -> None:
    ident = stanza_id("omnichannel-12", "budi@jabber.id", SECRET)
    received = f'<received xmlns="urn:xmpp:receipts" id="{ident}"/>'
    forged = stanza(stream, chat(None, sender="ani@jabber.id/pc", extra=received))
    assert receipt("lapor", forged, SECRET, now=NOW) is None
    guessed = '<received xmlns="urn:xmpp:receipts" id="omnichannel-12-0000000000000000"/>'
    assert receipt("lapor", stanza(stream, chat(None, extra=guessed)),
                   SECRET, now=NOW) is None
    # An ordinary message is no receipt.
    assert receipt("lapor", stanza(stream, chat()), SECRET, now=NOW) is None


def test_an_error_bounce_of_a_reply_marks_it_failed_with_the_condition(
    stream: ClientXMPP,
) -> None:
    ident = stanza_id("omnichannel-12", "budi@jabber.id", SECRET)
    error = ('<error type="cancel"><service-unavailable '
             'xmlns="urn:ietf:params:xml:ns:xmpp-stanzas"/></error>')
    bounce = stanza(stream, chat("Terima kasih", sender="budi@jabber.id", kind="error",
                                 ident=ident, extra=error))
    update = receipt("lapor", bounce, SECRET, now=NOW)
    assert update is not None and update.status is DeliveryStatus.FAILED
    assert update.error is not None and "service-unavailable" in update.error


def test_reply_ids_are_stable_and_differ_by_recipient_and_reply() -> None:
    one = stanza_id("omnichannel-12", "budi@jabber.id", SECRET)
    assert one == stanza_id("omnichannel-12", "budi@jabber.id", SECRET)
    assert one.startswith("omnichannel-12-")
    assert one != stanza_id("omnichannel-12", "ani@jabber.id", SECRET)
    assert one != stanza_id("omnichannel-13", "budi@jabber.id", SECRET)


def account(**values: object) -> XmppAccount:
    fields: dict[str, object] = {"account": "lapor", "jid": str(BOT),
                                 "password": "a-real-password-0123", **values}
    return XmppAccount.model_validate(fields)


def test_settings_check_the_jid_against_the_mode_and_refuse_example_passwords() -> None:
    assert account().mode == "client"
    assert account(mode="component", jid=str(GATEWAY), port=5347).host is None
    with pytest.raises(ValidationError, match="bare user JID"):
        account(mode="component")
    with pytest.raises(ValidationError, match="bare user JID"):
        account(jid=str(GATEWAY))
    with pytest.raises(ValidationError, match="example value"):
        account(password="changeme")
    with pytest.raises(ValidationError):
        account(mode="server")
    assert "a-real-password" not in repr(account())


def test_accounts_must_be_told_apart() -> None:
    with pytest.raises(ValueError, match="account"):
        XmppAdapter([account(), account(jid="other@xmpp.ambon.go.id")])
    with pytest.raises(ValueError, match="jid"):
        XmppAdapter([account(), account(account="other")])


def outgoing(account_name: str = "lapor", recipient: str = "budi@jabber.id") -> Outgoing:
    return Outgoing(message_id=12, conversation_id=3, tracking_number="AMB-2026-000003",
                    channel="xmpp", account=account_name, recipient=recipient,
                    text="Petugas menuju lokasi.")


async def test_a_reply_while_disconnected_is_retried_later() -> None:
    adapter = XmppAdapter([account(opd="dlhp")])
    assert not adapter.webhook
    assert adapter.bound_queue("lapor") == "dlhp" and adapter.bound_queue("other") is None
    with pytest.raises(DeliveryError) as offline:
        await adapter.send(outgoing())
    assert offline.value.retryable
    with pytest.raises(DeliveryError) as unknown:
        await adapter.send(outgoing("nobody"))
    assert not unknown.value.retryable
    await adapter.close()
