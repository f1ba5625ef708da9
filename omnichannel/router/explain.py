"""Human-readable explanation of one routing decision, for `omnichannel rules explain`."""

from __future__ import annotations

from typing import TYPE_CHECKING

from omnichannel.router.matcher import Evaluation, Hit, RuleResult, format_number

if TYPE_CHECKING:
    from omnichannel.router.rules import RuleSet


def _hit(evaluation: Evaluation, hit: Hit) -> str:
    source = evaluation.tokens.source(hit.start, hit.end)
    text = f'"{hit.text}"'
    if source.casefold() != hit.text.casefold():
        text += f' (as "{source}")'
    why = []
    if hit.place:
        word = evaluation.tokens.source(hit.start - 1, hit.start)
        why.append(f'after place or cause word "{word}"')
    if hit.settled:
        why.append("in a clause saying it is fine or done")
    if why:
        text += f" [{' and '.join(why)}: counts {format_number(hit.factor)}]"
    return text


def _negated(evaluation: Evaluation, hit: Hit) -> str:
    text = _hit(evaluation, hit)
    if hit.negated_by is not None:
        word = evaluation.tokens.source(hit.negated_by, hit.negated_by + 1)
        text += f' after "{word}"'
    return text


def _rule_line(result: RuleResult) -> str:
    rule = result.rule
    return (f"{rule.name} -> {rule.queue} (line {rule.line}, tier {rule.tier}, "
            f"weight {format_number(rule.weight)})")


def _details(evaluation: Evaluation, result: RuleResult) -> list[str]:
    lines: list[str] = []
    if result.matched:
        lines.append("matched: " + ", ".join(_hit(evaluation, h) for h in result.matched))
    if result.groups_matched:
        lines.append("all-groups matched: "
                     + ", ".join(_hit(evaluation, h) for h in result.groups_matched))
    if result.regex_matched:
        lines.append("regex matched: " + ", ".join(f"/{p}/" for p in result.regex_matched))
    if result.group_regex_matched:
        lines.append("all-groups matched by regex: "
                     + ", ".join(f"/{p}/" for p in result.group_regex_matched))
    if result.negated:
        lines.append("discarded by negation: "
                     + ", ".join(_negated(evaluation, h) for h in result.negated))
    if result.shadowed:
        once = dict.fromkeys(_hit(evaluation, h) for h in result.shadowed)
        lines.append("inside a longer phrase, not counted: " + ", ".join(once))
    if result.exceptions:
        lines.append("exception (none) found: "
                     + ", ".join(_hit(evaluation, h) for h in result.exceptions))
    for group in result.groups_missing:
        shown = ", ".join(group[:8]) + (", ..." if len(group) > 8 else "")
        lines.append(f"missing one of (all): [{shown}]")
    if not result.source_ok:
        rule = result.rule
        wanted = [f"{k} in {sorted(v)}" for k, v in (("channel", rule.channel),
                                                     ("account", rule.account),
                                                     ("sender", rule.sender)) if v]
        lines.append("source does not match: needs " + ", ".join(wanted))
    return lines


def explain(rules: RuleSet, evaluation: Evaluation) -> str:
    """Which rule won, its tier and score, the phrases matched or discarded, and runners-up."""
    decision = evaluation.decision
    name = rules.opds.get(decision.queue, "")
    lines = [
        f"text:     {evaluation.tokens.original}",
        f"tokens:   {' '.join(evaluation.tokens.words) or '(none)'}",
        f"queue:    {decision.queue} ({name})",
        f"rule:     {decision.rule if decision.rule is not None else '(none: fallback)'}",
        f"reason:   {decision.reason}",
    ]
    if evaluation.greeting:
        lines.append("The message holds only greetings or fillers, so a person triages it.")
        return "\n".join(lines)

    fired = [r for r in evaluation.results if r.fired]
    unfired = [r for r in evaluation.results if not r.fired]
    if fired:
        lines.append("")
        lines.append("Rules that fired (lowest tier wins; within it, rules of one queue add up):")
        for result in sorted(fired, key=lambda r: (r.rule.tier, -r.score, r.rule.index)):
            mark = "*" if result.rule.name == decision.rule else " "
            outranked = ("" if result.rule.tier == evaluation.tier
                         else f"  [outranked: tier {evaluation.tier} decides]")
            lines.append(f" {mark} {_rule_line(result)}: score "
                         f"{format_number(result.score)}{outranked}")
            lines.extend(f"      {line}" for line in _details(evaluation, result))
    if evaluation.totals:
        ranked = sorted(evaluation.totals.items(), key=lambda kv: -kv[1])
        lines.append("")
        lines.append(f"Queue totals in tier {evaluation.tier}: "
                     + ", ".join(f"{q} {format_number(s)}" for q, s in ranked))
        runners = [f"{q} {format_number(s)}" for q, s in ranked if q != decision.queue]
        lower = sorted({r.rule.queue for r in fired if r.rule.tier != evaluation.tier})
        lines.append("Runners-up: " + (", ".join(runners) if runners else "none in this tier")
                     + (f"; outranked by tier: {', '.join(lower)}" if lower else ""))
    if unfired:
        lines.append("")
        lines.append("Rules touched but not fired:")
        for result in unfired:
            lines.append(f"   {_rule_line(result)}: {result.why_not}")
            lines.extend(f"      {line}" for line in _details(evaluation, result))
    if not evaluation.results:
        lines.append("")
        lines.append("No phrase of any rule occurs in the message.")
    return "\n".join(lines)
