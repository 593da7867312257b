"""A backtest's tables, pure functions over scored and judged posts (JSON-able rows).

* per category and language, whether the category *fired* (its score reached the threshold
  for the post's language) against the label: confusion counts, precision / recall / F1
  (``service.classification``, 4 digits);
* the share of labelled posts a non-allow action caught, per category, language and market;
* benign posts actioned, and actions per language, own market and every market;
* per rule, how many posts it matched and, for rules that test categories, how many of
  them carry one of those labels.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from service import classification
from service.backtest.scoring import ScoredPost
from service.pipeline import Assessment
from service.policy import ACTIONS, Condition, LoadedPolicy

FIRED = "category fired: the category's score reached its threshold for the post's language"
CAUGHT = "caught: the post's action in its own market is not allow"
CAUGHT_BY_RULE = "caught by a rule on the category: a matching rule's condition fired on it"
RULE_PRECISION = (
    "share of a rule's matches labelled with one of the "
    "categories its condition tests (rules without categories: none)"
)
DIGITS = 4  # figures in results; the tables print 3


def prf(tp: int, fp: int, fn: int) -> dict[str, float | None]:
    """Precision, recall, F1; None where undefined (nothing predicted / nothing labelled)."""
    return classification.prf(tp, fp, fn, DIGITS)


def share(n: int, d: int) -> float | None:
    return round(n / d, DIGITS) if d else None


def category_metrics(
    rows: Iterable[tuple[str, str, bool, bool]], languages: Sequence[str] = ()
) -> list[dict[str, Any]]:
    """(category, language, labelled, predicted) rows -> one row per category x language.

    Every category gets an ``all`` row; a language row appears when the category has
    labelled or predicted posts in it, or when the language is in ``languages``.
    """
    counts: dict[tuple[str, str], Counter] = defaultdict(Counter)
    cats: dict[str, None] = {}
    for cat, lang, truth, pred in rows:
        cats[cat] = None
        key = classification.outcome(truth, pred)
        counts[(cat, lang)][key] += 1
        counts[(cat, "all")][key] += 1
    out = []
    for cat in cats:
        langs = ["all"] + sorted(
            {lg for c, lg in counts if c == cat and lg != "all"},
            key=lambda lg: (-sum(counts[(cat, lg)].values()), lg),
        )
        for lang in langs:
            c = counts[(cat, lang)]
            support, predicted = c["tp"] + c["fn"], c["tp"] + c["fp"]
            if lang != "all" and not (support or predicted) and lang not in languages:
                continue
            out.append(
                {
                    "category": cat,
                    "language": lang,
                    "posts": sum(c.values()),
                    "support": support,
                    "fired": predicted,
                    **{k: c[k] for k in classification.OUTCOMES},
                    **prf(c["tp"], c["fp"], c["fn"]),
                }
            )
    return out


def fired_categories(scored: Sequence[ScoredPost], lp: LoadedPolicy) -> list[set[str]]:
    """Per post, the categories whose score reached their threshold for its language."""
    cats = lp.policy.categories
    return [
        {c for c in cats if sp.scores[c] >= cats[c].threshold_for(sp.language.code)}
        for sp in scored
    ]


def category_rows(
    scored: Sequence[ScoredPost],
    fired: Sequence[set[str]],
    lp: LoadedPolicy,
    labelled: set[str],
) -> list[dict[str, Any]]:
    """``category_metrics`` of the fired categories, with each row's threshold and whether
    the data labels the category at all (``labelled``)."""
    cats = list(lp.policy.categories)
    rows = category_metrics(
        (c, sp.language.code, c in sp.post.labels, c in f)
        for sp, f in zip(scored, fired, strict=True)
        for c in cats
    )
    for row in rows:
        row["labelled_in_data"] = row["category"] in labelled
        cat = lp.policy.categories[row["category"]]
        row["threshold"] = (
            cat.threshold if row["language"] == "all" else cat.threshold_for(row["language"])
        )
    return rows


def caught_rows(
    scored: Sequence[ScoredPost], judged: Sequence[Assessment], lp: LoadedPolicy
) -> list[dict[str, Any]]:
    """Labelled posts caught by a non-allow action (own market), per category and language
    ("any": any label), per market, and by a rule on the category."""
    cats = list(lp.policy.categories)
    caught: dict[tuple[str, str], Counter] = defaultdict(Counter)
    for sp, a in zip(scored, judged, strict=True):
        own = a.own
        by_cat = {c for m in own.matches for c, _ in m.categories}
        groups = [("any", "all"), ("any", sp.language.code)] if sp.post.labels else []
        groups += [(c, g) for c in sp.post.labels for g in ("all", sp.language.code)]
        for key in groups:
            caught[key]["positives"] += 1
            caught[key]["caught"] += own.action != "allow"
            for m, o in a.outcomes.items():
                caught[key][("market", m)] += o.action != "allow"
            if key[0] != "any":
                caught[key]["by_rule"] += key[0] in by_cat

    def order(kv: tuple[tuple[str, str], Counter]) -> tuple:
        (c, g), n = kv
        return (c == "any", cats.index(c) if c in cats else 0, g != "all", -n["positives"], g)

    return [
        {
            "category": c,
            "language": g,
            "positives": n["positives"],
            "caught": n["caught"],
            "share": share(n["caught"], n["positives"]),
            "caught_by_category_rule": n["by_rule"] if c != "any" else None,
            "share_by_category_rule": share(n["by_rule"], n["positives"]) if c != "any" else None,
            "caught_by_market": {m: n[("market", m)] for m in lp.policy.markets},
        }
        for (c, g), n in sorted(caught.items(), key=order)
    ]


def action_tables(
    scored: Sequence[ScoredPost], judged: Sequence[Assessment], lp: LoadedPolicy
) -> dict[str, Any]:
    """``benign_actioned`` (unlabelled posts with a non-allow action), ``actions`` per
    language in the post's own market and ``actions_by_market``."""
    own_actions: dict[str, Counter] = defaultdict(Counter)
    by_market: dict[str, dict[str, Counter]] = defaultdict(lambda: defaultdict(Counter))
    benign: dict[str, Counter] = defaultdict(Counter)
    for sp, a in zip(scored, judged, strict=True):
        lang = sp.language.code
        for g in ("all", lang):
            own_actions[g][a.own.action] += 1
            if not sp.post.labels:
                benign[g]["benign"] += 1
                benign[g]["actioned"] += a.own.action != "allow"
                for m, o in a.outcomes.items():
                    benign[g][("market", m)] += o.action != "allow"
        for m, o in a.outcomes.items():
            for g in ("all", lang):
                by_market[m][g][o.action] += 1
    langs = Counter(sp.language.code for sp in scored)
    lang_order = ["all"] + [lg for lg, _ in langs.most_common()]

    def table(counter: Mapping[str, Counter]) -> dict[str, dict[str, int]]:
        return {
            g: {a: counter[g][a] for a in ACTIONS if counter[g][a]}
            for g in lang_order
            if g in counter
        }

    return {
        "benign_actioned": [
            {
                "language": g,
                "benign": benign[g]["benign"],
                "actioned": benign[g]["actioned"],
                "share": share(benign[g]["actioned"], benign[g]["benign"]),
                "caught_by_market": {m: benign[g][("market", m)] for m in lp.policy.markets},
            }
            for g in lang_order
            if g in benign
        ],
        "actions": table(own_actions),
        "actions_by_market": {m: table(by_market[m]) for m in by_market},
    }


def rule_categories(cond: Condition, negated: bool = False) -> set[str]:
    """Categories a rule tests positively (not those under a ``not``)."""
    found = {cond.category} if cond.category and not negated else set()
    for child in (cond.all or []) + (cond.any or []):
        found |= rule_categories(child, negated)
    if cond.not_ is not None:
        found |= rule_categories(cond.not_, not negated)
    return found


def example(sp: ScoredPost, **extra: Any) -> dict[str, Any]:
    return {
        "line": sp.post.line,
        "id": sp.post.id,
        "text": sp.post.text,
        "language": sp.language.code,
        "labels": list(sp.post.labels),
        **extra,
    }


def rule_rows(
    scored: Sequence[ScoredPost], judged: Sequence[Assessment], lp: LoadedPolicy, examples: int
) -> list[dict[str, Any]]:
    """Per rule: posts it matched (own market, per language, per market), the posts it
    decided, and for rules on categories how many matches carry one of those labels."""
    cats = list(lp.policy.categories)
    rows = []
    for rule in lp.policy.rules:
        rcats = sorted(rule_categories(rule.when), key=cats.index)
        matched, decided, true_pos = [], 0, 0
        per_market: Counter = Counter()
        per_lang: Counter = Counter()
        for sp, a in zip(scored, judged, strict=True):
            for m, o in a.outcomes.items():
                if any(x.rule_id == rule.id for x in o.matches):
                    per_market[m] += 1
            hit = next((x for x in a.own.matches if x.rule_id == rule.id), None)
            if hit is None:
                continue
            matched.append((sp, hit))
            per_lang[sp.language.code] += 1
            decided += a.own.matches[0].rule_id == rule.id
            true_pos += bool(set(rcats) & set(sp.post.labels))
        rows.append(
            {
                "rule": rule.id,
                "action": rule.action,
                "markets": list(rule.markets) if rule.markets else None,
                "categories": rcats,
                "matched": len(matched),
                "matched_by_language": dict(per_lang.most_common()),
                "matched_by_market": {m: per_market[m] for m in lp.policy.markets},
                "decided": decided,
                "labelled_matches": true_pos if rcats else None,
                "precision": (
                    classification.precision(true_pos, len(matched) - true_pos, DIGITS)
                    if rcats
                    else None
                ),
                "examples": [
                    example(
                        sp,
                        categories=dict(hit.categories),
                        keywords={k: list(v) for k, v in hit.keywords},
                    )
                    for sp, hit in matched[:examples]
                ],
            }
        )
    return rows
