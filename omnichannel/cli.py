"""The `omnichannel` command: serve, migrate the database, check and try routing rules."""

from __future__ import annotations

import argparse
import asyncio
import gc
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TextIO

import orjson
import structlog
from aiohttp import web

from omnichannel import __version__
from omnichannel.appkeys import ENGINE
from omnichannel.logging import configure_logging
from omnichannel.router import RulesError, RuleSet, load_rules
from omnichannel.settings import ConfigError, Settings, load_settings

log = structlog.get_logger(__name__)


def _settings(args: argparse.Namespace) -> Settings:
    settings = load_settings(args.config)
    configure_logging(settings.log_level, settings.log_format)
    return settings


def _rules_or_exit(path: Path) -> RuleSet:
    try:
        return load_rules(path)
    except RulesError as exc:
        for error in exc.errors:
            print(error, file=sys.stderr)
        raise SystemExit(1) from exc


def _new_loop() -> asyncio.AbstractEventLoop:
    """uvloop where it is installed (it halves the engine's CPU per request), else asyncio's."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is not built for every platform
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


def cmd_serve(args: argparse.Namespace) -> int:
    """Run every stage in one process until SIGINT/SIGTERM; SIGHUP reloads the rules."""
    from omnichannel.app import build_app

    settings = _settings(args)
    overrides = {k: v for k, v in (("host", args.host), ("port", args.port)) if v is not None}
    if overrides:
        settings = settings.model_copy(update=overrides)
    app = build_app(settings, _rules_or_exit(settings.rules_path))

    async def on_startup(app: web.Application) -> None:
        # Objects made at start-up live as long as the process: keep the collector off them,
        # and collect the young generation less often, to cut pauses from tail latency.
        gc.freeze()
        gc.set_threshold(20_000, 50, 100)
        engine = app[ENGINE]
        reloads: set[asyncio.Task[list[str]]] = set()

        def reload() -> None:
            task = asyncio.ensure_future(engine.reload_rules())
            reloads.add(task)
            task.add_done_callback(reloads.discard)

        asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, reload)

    app.on_startup.append(on_startup)
    log.info("listening", host=settings.host, port=settings.port)
    web.run_app(app, host=settings.host, port=settings.port, print=None, access_log=None,
                loop=_new_loop())
    return 0


def cmd_db_upgrade(args: argparse.Namespace) -> int:
    """Apply every pending schema migration."""
    from omnichannel.store.migrate import upgrade

    settings = _settings(args)
    asyncio.run(upgrade(settings.database_url, args.revision))
    print(f"database at revision {args.revision}")
    return 0


def cmd_rules_check(args: argparse.Namespace) -> int:
    """Validate a rules file: exit 0 when valid, else print each error with its line."""
    rules = _rules_or_exit(args.path)
    print(f"{args.path}: ok ({len(rules.opds)} queues)")
    return 0


def cmd_rules_explain(args: argparse.Namespace) -> int:
    """Show which rule routes TEXT and why."""
    rules = _rules_or_exit(args.path)
    print(rules.explain(args.text, channel=args.channel, account=args.account,
                        sender=args.sender))
    return 0


def cmd_telegram_set_webhook(args: argparse.Namespace) -> int:
    """Register `<public_url>/webhooks/telegram` and each bot's secret with Telegram."""
    from omnichannel.adapters.telegram import TelegramAdapter

    settings = _settings(args)
    base = args.url or settings.public_url
    if not base:
        print("omnichannel: set public_url (or pass --url) to the address Telegram can reach",
              file=sys.stderr)
        return 2
    if not settings.telegram_bots:
        print("omnichannel: no Telegram bot is configured (telegram_bots)", file=sys.stderr)
        return 2
    url = base.rstrip("/") + "/webhooks/telegram"

    async def register() -> list[str]:
        adapter = TelegramAdapter(settings.telegram_bots, api_url=settings.telegram_api_url,
                                  timeout_s=settings.delivery_timeout_s)
        try:
            return await adapter.set_webhooks(url)
        finally:
            await adapter.close()

    for account in asyncio.run(register()):
        print(f"{account}: webhook set to {url}")
    return 0


def route_lines(rules: RuleSet, lines: TextIO, out: TextIO) -> int:
    """Route each JSON line of `lines` to one JSON line of `out`; returns the number of errors."""
    errors = 0
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            item = orjson.loads(line)
            if not isinstance(item, dict) or not isinstance(item.get("text"), str):
                raise ValueError("each line must be an object with a string `text`")
        except ValueError as exc:
            errors += 1
            out.write(orjson.dumps({"line": number, "error": str(exc)}).decode() + "\n")
            continue
        decision = rules.route(item["text"], channel=item.get("channel"),
                               account=item.get("account"), sender=item.get("sender"))
        result = {"queue": decision.queue, "rule": decision.rule, "reason": decision.reason}
        if "id" in item:
            result = {"id": item["id"], **result}
        if "queue" in item:
            result["expected"] = item["queue"]
        out.write(orjson.dumps(result).decode() + "\n")
    return errors


def cmd_route(args: argparse.Namespace) -> int:
    """Route a JSON-lines file of messages and print one decision per line."""
    rules = _rules_or_exit(args.rules)
    if args.jsonl == "-":
        errors = route_lines(rules, sys.stdin, sys.stdout)
    else:
        with open(args.jsonl, encoding="utf-8") as handle:
            errors = route_lines(rules, handle, sys.stdout)
    return 1 if errors else 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every subcommand."""
    parser = argparse.ArgumentParser(
        prog="omnichannel",
        description="Route citizens' messages from every channel to the OPD that must act.",
    )
    parser.add_argument("--version", action="version", version=f"omnichannel {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def with_config(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
        p.add_argument("--config", type=Path, default=None,
                       help="YAML configuration file (default: $OMNICHANNEL_CONFIG or "
                            "config/omnichannel.yaml when present)")
        return p

    serve = with_config(sub.add_parser("serve", help="run every stage in one process"))
    serve.add_argument("--host", help="address to listen on (overrides the configuration)")
    serve.add_argument("--port", type=int, help="port to listen on (overrides the configuration)")
    serve.set_defaults(func=cmd_serve)

    db = sub.add_parser("db", help="database schema").add_subparsers(
        dest="db_command", required=True, metavar="COMMAND")
    up = with_config(db.add_parser("upgrade", help="apply pending migrations"))
    up.add_argument("revision", nargs="?", default="head", help="target revision (default head)")
    up.set_defaults(func=cmd_db_upgrade)

    rules = sub.add_parser("rules", help="routing rules").add_subparsers(
        dest="rules_command", required=True, metavar="COMMAND")
    check = rules.add_parser("check", help="validate a rules file (exit 1 with errors)")
    check.add_argument("path", type=Path)
    check.set_defaults(func=cmd_rules_check)
    explain = rules.add_parser("explain", help="show which rule routes a text and why")
    explain.add_argument("path", type=Path)
    explain.add_argument("text")
    explain.add_argument("--channel")
    explain.add_argument("--account", help="account or widget key the message came through")
    explain.add_argument("--sender")
    explain.set_defaults(func=cmd_rules_explain)

    channels = sub.add_parser("channels", help="set up channels with their providers")
    channel = channels.add_subparsers(dest="channel", required=True, metavar="CHANNEL")
    telegram = channel.add_parser("telegram", help="Telegram bots").add_subparsers(
        dest="telegram_command", required=True, metavar="COMMAND")
    set_webhook = with_config(telegram.add_parser(
        "set-webhook", help="register the webhook URL and secret of every configured bot"))
    set_webhook.add_argument("--url", help="public base URL (default: public_url setting)")
    set_webhook.set_defaults(func=cmd_telegram_set_webhook)

    route = sub.add_parser("route", help="route JSON lines ({text, channel?}) to JSON lines")
    route.add_argument("--rules", type=Path, required=True, help="rules file")
    route.add_argument("--jsonl", required=True, help="input file, or - for standard input")
    route.set_defaults(func=cmd_route)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `omnichannel` console script."""
    args = build_parser().parse_args(argv)
    try:
        result: int = args.func(args)
    except ConfigError as exc:
        print(f"omnichannel: {exc}", file=sys.stderr)
        return 2
    return result


if __name__ == "__main__":
    raise SystemExit(main())
