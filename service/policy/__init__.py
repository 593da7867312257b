"""Policy: the YAML operators edit, validated with file:line errors, and its pure evaluation.

A policy names categories (each with a score threshold, optional per-language overrides,
and a description plus example texts in several languages that the zero-shot scorer
embeds), keyword lists, the markets it decides for, and rules. A rule is a condition tree
(all / any / not over language, script, mixed-language, category scores, keyword hits,
account age and market) and an action. Evaluation is a pure function of the post's facts
and the policy: no Redis, no model, no clock.

The decision for a market is the most severe action among the rules that match there;
every matching rule is listed in the reasons. A post gets one outcome per market, and its
own market's outcome is its ``action``.
"""

from service.policy.evaluate import Facts, Outcome, RuleMatch, evaluate
from service.policy.model import (
    ACTIONS,
    SEVERITY,
    Category,
    Condition,
    KeywordList,
    Policy,
    Rule,
    policy_json_schema,
)
from service.policy.parse import LoadedPolicy, PolicyError, load_policy, parse_policy
from service.policy.text import KeywordMatcher, collapse, fold

__all__ = [
    "ACTIONS",
    "SEVERITY",
    "Category",
    "Condition",
    "Facts",
    "KeywordList",
    "KeywordMatcher",
    "LoadedPolicy",
    "Outcome",
    "Policy",
    "PolicyError",
    "Rule",
    "RuleMatch",
    "evaluate",
    "load_policy",
    "parse_policy",
    "fold",
    "collapse",
    "policy_json_schema",
]
