"""Routing: a YAML rules file decides which OPD queue a citizen's message goes to.

`load_rules` / `parse_rules` validate a rules file (every error with file, line and column) and
compile it into a `RuleSet`, whose `route` is a pure function from a message to a
`RouteDecision` and whose `explain` says why.
"""

from omnichannel.router.rules import (
    Lexicon,
    Phrase,
    Rule,
    RuleError,
    RulesError,
    RuleSet,
    load_rules,
    parse_rules,
)

__all__ = [
    "Lexicon",
    "Phrase",
    "Rule",
    "RuleError",
    "RuleSet",
    "RulesError",
    "load_rules",
    "parse_rules",
]
