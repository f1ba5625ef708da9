"""The matcher's work depends on the message, not on how many rules there are."""

from __future__ import annotations

from omnichannel.router import RuleSet, parse_rules


def generated(n: int) -> RuleSet:
    lines = ["version: 1", "opds:", "  a: A", "  b: B", "rules:"]
    for i in range(n):
        lines.append(f"  - name: r{i}")
        lines.append(f"    queue: {'a' if i % 2 else 'b'}")
        lines.append(f"    any: [kata{i}, frasa{i} panjang, 'awal{i}*']")
        if i % 10 == 0:
            lines.append(f"    none: [kecuali{i}]")
        if i % 25 == 0:
            lines.append(f"    all: [syarat{i}]")
            lines.append(f"    regex: ['angka{i} \\d+']")
    return parse_rules("\n".join(lines) + "\n", "generated.yaml")


def test_only_rules_touched_by_the_message_are_evaluated() -> None:
    small, large = generated(20), generated(1000)
    text = "ada kata7 dan frasa12 panjang serta awal3xyz, lainnya tidak ada"
    for rules in (small, large):
        evaluation = rules.evaluate(text)
        assert {r.rule.name for r in evaluation.results} == {"r7", "r12", "r3"}
        # one point each; r3 and r7 both name queue a (2 > 1), and r3 comes first
        assert (evaluation.decision.queue, evaluation.decision.rule) == ("a", "r3")
    # a tie (one point each): the queue whose rule comes first wins
    assert large.evaluate("kata999 frasa502 panjang").decision.rule == "r502"


def test_regex_rules_run_only_when_their_cheap_conditions_hold() -> None:
    rules = generated(1000)
    assert rules.route("angka50 123").queue == "triage"  # 'all: [syarat50]' does not hold
    decision = rules.route("syarat50 angka50 123")
    assert decision.rule == "r50"
    assert "/angka50" in decision.reason
