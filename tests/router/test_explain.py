"""`explain`: which rule won and why, what matched, what was discarded, the runners-up."""

from __future__ import annotations

from omnichannel.router import parse_rules

RULES = """\
version: 1
opds:
  damkar: Pemadam Kebakaran
  dishub: Perhubungan
  pln: PLN
  perkim: Perkim
aliases: {jln: jalan}
negations: [bukan]
place_words: [di]
greetings: [halo]
rules:
  - {name: kebakaran, queue: damkar, tier: 1, weight: 3, any: [terbakar]}
  - {name: macet, queue: dishub, weight: 2, any: [macet, angkot]}
  - {name: padam, queue: pln, any: [mati lampu], none: [lampu jalan]}
  - {name: pju, queue: perkim, any: [lampu jalan]}
  - name: pungli
    queue: dishub
    all: [[pungli], [terminal]]
"""


def test_explain_names_the_winner_its_tier_score_and_evidence() -> None:
    rules = parse_rules(RULES, "t.yaml")
    text = "Macet di jln Sudirman, angkot antri, ada gudang TERBAKARRR!"
    out = rules.explain(text)
    assert "queue:    damkar (Pemadam Kebakaran)" in out
    assert "rule:     kebakaran" in out
    assert "* kebakaran -> damkar (line 12, tier 1, weight 3): score 3" in out
    assert '"terbakar" (as "TERBAKARRR")' in out
    assert "outranked: tier 1 decides" in out  # the traffic rule fired but lost on tier
    assert '"macet"' in out and '"angkot"' in out


def test_explain_shows_negated_phrases_exceptions_and_runners_up() -> None:
    rules = parse_rules(RULES, "t.yaml")
    out = rules.explain("bukan mati lampu, lampu jalan di depan yang mati; macet")
    assert "queue:    dishub" in out
    assert 'discarded by negation: "mati lampu" after "bukan"' in out
    assert 'exception (none) found: "lampu jalan"' in out
    assert "Queue totals in tier 2: dishub 2, perkim 1" in out
    assert "Runners-up: perkim 1" in out


def test_explain_shows_place_words_and_missing_all_groups() -> None:
    rules = parse_rules(RULES, "t.yaml")
    out = rules.explain("ada pungli, macet di angkot")
    assert '"angkot" [after place or cause word "di": counts 0.5]' in out
    assert "pungli -> dishub" in out
    assert "missing one of (all): [terminal]" in out


def test_explain_for_greetings_and_no_match() -> None:
    rules = parse_rules(RULES, "t.yaml")
    assert "greetings or fillers" in rules.explain("halo!!")
    out = rules.explain("saya mau tanya")
    assert "rule:     (none: fallback)" in out
    assert "No phrase of any rule occurs" in out


def test_explain_agrees_with_route() -> None:
    rules = parse_rules(RULES, "t.yaml")
    for text in ("macet", "mati lampu", "bukan mati lampu", "lampu jalan mati", "halo"):
        decision = rules.route(text)
        out = rules.explain(text)
        assert f"queue:    {decision.queue} " in out
        assert f"reason:   {decision.reason}" in out
