"""The default rules for Kota Ambon: they load, cover the catalogue, and route accurately."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from ruamel.yaml import YAML

from omnichannel.model import TRIAGE
from omnichannel.router import RuleSet, load_rules

REPO = Path(__file__).parents[2]
RULES = REPO / "config" / "routing.yaml"
SHARED = Path(__file__).parents[2].parent / "shared"
SAMPLES = SHARED / "routing-samples.jsonl"
CATALOGUE = SHARED / "opd-catalogue.yaml"
OWN = Path(__file__).parent / "citizen_messages.jsonl"
#: Written from the catalogue alone by someone who had not seen the rules or the other sets;
#: it stands for the messages the rules have never met.
HOLDOUT = Path(__file__).parent / "holdout_messages.jsonl"


@pytest.fixture(scope="module")
def rules() -> RuleSet:
    return load_rules(RULES)


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()
            if line.strip()]


def accuracy(rules: RuleSet, items: list[dict[str, Any]]) -> tuple[float, list[str]]:
    misses = []
    for item in items:
        decision = rules.route(item["text"], channel=item.get("channel"))
        if decision.queue != item["queue"]:
            misses.append(f"{item['id']}: want {item['queue']}, got {decision.queue} "
                          f"({decision.rule}: {decision.reason})")
    return 1 - len(misses) / len(items), misses


def test_default_rules_load_and_cover_the_catalogue(rules: RuleSet) -> None:
    if not CATALOGUE.exists():
        pytest.skip(f"catalogue not found at {CATALOGUE}")
    catalogue = YAML(typ="safe").load(CATALOGUE.read_text(encoding="utf-8"))
    assert set(catalogue) <= set(rules.opds), set(catalogue) - set(rules.opds)
    for code, entry in catalogue.items():
        assert rules.opds[code] == entry["name"]
    routed_to = {rule.queue for rule in rules.rules}
    assert set(catalogue) - {TRIAGE} <= routed_to, "every department needs at least one rule"


def test_own_messages_cover_every_queue_and_are_varied() -> None:
    items = read_jsonl(OWN)
    assert len(items) >= 150
    counts = Counter(item["queue"] for item in items)
    if CATALOGUE.exists():
        catalogue = YAML(typ="safe").load(CATALOGUE.read_text(encoding="utf-8"))
        assert set(counts) == set(catalogue)
    assert min(counts.values()) >= 5
    assert len({item["id"] for item in items}) == len(items)
    assert len({item["text"] for item in items}) == len(items)


def test_accuracy_on_own_messages(rules: RuleSet) -> None:
    score, misses = accuracy(rules, read_jsonl(OWN))
    assert score >= 0.90, "\n".join(misses)


def test_accuracy_on_the_shared_samples(rules: RuleSet) -> None:
    if not SAMPLES.exists():
        pytest.skip(f"shared routing samples not found at {SAMPLES}")
    score, misses = accuracy(rules, read_jsonl(SAMPLES))
    assert score >= 0.95, "\n".join(misses)


@pytest.mark.parametrize(("text", "expected"), [
    # an active fire wins over everything, even a traffic jam around it
    ("Macet parah di Jl. Sudirman, angkot seng bisa lewat, ada ruko tabakar di ujung jalan",
     "damkar"),
    ("macet total di Jl. Sudirman pagi ini", "dishub"),
    # flooding from a blocked drain is PUPR; a flood with people at risk is BPBD
    ("Selokan tersumbat jadi tiap hujan air got meluap dan banjir masuk halaman", "dinas-pupr"),
    ("Banjir su sampai dada, ada lansia terjebak di rumah, tolong evakuasi", "bpbd"),
    # "mati lampu" is a power cut; a street light that is off is Perkim
    ("Mati lampu dari pagi di Kudamati, kulkas su bau", "pln"),
    ("Lampu jalan di lorong kami mati, malam gelap", "perkim"),
    ("Bukan mati lampu, cuma PJU depan rumah yang padam", "perkim"),
    # pungli at a school is Dikbud, by an official at any other office Inspektorat
    ("Sekolah pungut uang ujian 100rb, katanya wajib", "dikbud"),
    ("Pegawai kantor camat minta uang 150rb par urus surat, padahal gratis", "inspektorat"),
    # complaints about the complaint service itself go to triage
    ("Laporan saya minggu lalu tidak dibalas sama sekali, admin lambat", TRIAGE),
    # greetings and content-free messages
    ("Selamat pagi min", TRIAGE), ("tes", TRIAGE), ("👍👍", TRIAGE),
])
def test_catalogue_tie_breaks(rules: RuleSet, text: str, expected: str) -> None:
    decision = rules.route(text)
    assert decision.queue == expected, rules.explain(text)


def test_cli_style_messages(rules: RuleSet) -> None:
    assert rules.route("Sampah seng diangkut su satu minggu", channel="whatsapp").queue == "dlhp"
    assert rules.route("halo min").queue == TRIAGE
    assert rules.route("ada kebakaran rumah di Batu Merah").queue == "damkar"


def test_accuracy_on_messages_written_apart_from_the_rules(rules: RuleSet) -> None:
    items = read_jsonl(HOLDOUT)
    assert len(items) >= 250 and {i["queue"] for i in items} >= set(rules.opds)
    score, misses = accuracy(rules, items)
    assert score >= 0.90, "\n".join(misses)
