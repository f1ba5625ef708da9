"""The `omnichannel` command: help, rules check/explain, route, db upgrade."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import sqlalchemy as sa

from omnichannel.cli import main
from tests.conftest import REPO

RULES = REPO / "config" / "routing.yaml"


def run(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "omnichannel.cli", *args], cwd=REPO,
                          input=stdin, capture_output=True, text=True, timeout=60)


def test_help_lists_every_subcommand() -> None:
    result = run("--help")
    assert result.returncode == 0
    for command in ("serve", "db", "rules", "route"):
        assert command in result.stdout
    assert run("rules", "--help").returncode == 0


def test_rules_check_accepts_the_default_rules(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["rules", "check", str(RULES)]) == 0
    assert "ok" in capsys.readouterr().out


def test_rules_check_reports_errors_with_line_numbers(tmp_path: Path) -> None:
    broken = tmp_path / "routing.yaml"
    text = RULES.read_text()
    broken.write_text(text + "\n  - name: x\n    queue: no-such-opd\n    any: [foo]\n")
    result = run("rules", "check", str(broken))
    assert result.returncode == 1
    line = len(text.splitlines()) + 3
    assert f"{broken}:{line}:" in result.stderr, result.stderr
    assert "no-such-opd" in result.stderr


def test_rules_explain_names_the_rule(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["rules", "explain", str(RULES), "ada kebakaran rumah di Batu Merah"]) == 0
    assert "damkar" in capsys.readouterr().out


def test_route_reads_and_writes_json_lines(tmp_path: Path) -> None:
    lines = [{"id": "a", "text": "Sampah seng diangkut su satu minggu", "channel": "whatsapp"},
             {"id": "b", "text": "halo min"}]
    src = tmp_path / "in.jsonl"
    src.write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    result = run("route", "--rules", str(RULES), "--jsonl", str(src))
    assert result.returncode == 0, result.stderr
    out = [json.loads(x) for x in result.stdout.splitlines()]
    assert [(o["id"], o["queue"]) for o in out] == [("a", "dlhp"), ("b", "triage")]
    assert all("rule" in o for o in out)
    bad = run("route", "--rules", str(RULES), "--jsonl", "-", stdin='{"no_text": 1}\n')
    assert bad.returncode == 1 and "text" in bad.stdout


def test_db_upgrade_creates_the_schema(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    db = tmp_path / "cli.db"
    monkeypatch.setenv("OMNICHANNEL_DATABASE_URL", f"sqlite+aiosqlite:///{db}")
    monkeypatch.setenv("OMNICHANNEL_CONFIG", str(REPO / "config" / "omnichannel.yaml"))
    for _ in range(2):  # idempotent
        result = run("db", "upgrade")
        assert result.returncode == 0, result.stderr
    tables = set(sa.inspect(sa.create_engine(f"sqlite:///{db}")).get_table_names())
    assert {"contact", "contact_identity", "conversation", "message"} <= tables


def test_bad_configuration_exits_with_a_message(tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OMNICHANNEL_API_TOKEN", "change-me")
    result = run("db", "upgrade")
    assert result.returncode == 2
    assert "api_token" in result.stderr
