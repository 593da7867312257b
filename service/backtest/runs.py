"""The two runs: ``backtest`` measures one policy on labelled posts; ``diff`` lists the posts
whose action changes in some market between two policies, grouped by (old action -> new
action, language) and by (rule that appeared or disappeared, language). Text embeddings
are computed once for both policies of a diff, and the scores too when both policies have
the same scorer anchors. Results are plain JSON-able dicts.
"""

from __future__ import annotations

import time
from collections import Counter, defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from service.backtest.data import DataSpec, LabeledPost, describe
from service.backtest.metrics import (
    CAUGHT,
    CAUGHT_BY_RULE,
    FIRED,
    RULE_PRECISION,
    action_tables,
    category_rows,
    caught_rows,
    example,
    fired_categories,
    rule_rows,
)
from service.backtest.scoring import (
    Embedded,
    ScoredPost,
    as_policy,
    judge_posts,
    open_cache,
    score_posts,
)
from service.classifier.cache import EmbeddingCache
from service.pipeline import Assessment
from service.policy import SEVERITY, LoadedPolicy


def backtest(
    policy_path: LoadedPolicy | Path | str,
    data_path: Path | str | Sequence[LabeledPost],
    *,
    cache: EmbeddingCache | None = None,
    spec: DataSpec = DataSpec(),
    market: str | None = None,
    examples: int = 3,
    include_posts: bool = False,
    progress: bool | None = None,
    heads: Any = "auto",
) -> dict[str, Any]:
    """Measure a policy on labelled posts; a JSON-able dict (see ``backtest.metrics``).

    ``market`` evaluates every post as if posted there (default: the post's market column,
    else the policy's default market). ``include_posts`` adds every post's language,
    scores, fired categories and actions.
    """
    t0 = time.perf_counter()
    lp = as_policy(policy_path)
    posts = spec.load(data_path, lp.policy.categories)
    cache = open_cache(cache, progress)
    t1 = time.perf_counter()
    scored = score_posts(posts, lp, cache, progress=progress, heads=heads)
    t2 = time.perf_counter()
    judged = judge_posts(scored, lp, market)
    fired = fired_categories(scored, lp)
    labelled = {c for p in posts for c in p.labels} | ({spec.category} if spec.category else set())
    categories = category_rows(scored, fired, lp, labelled)
    caught = caught_rows(scored, judged, lp)
    actions = action_tables(scored, judged, lp)
    rules = rule_rows(scored, judged, lp, examples)
    t3 = time.perf_counter()
    languages = Counter(sp.language.code for sp in scored)
    result: dict[str, Any] = {
        "kind": "backtest",
        "policy": {"name": lp.name, "version": lp.version, "source": lp.source},
        "data": describe(data_path, posts),
        "languages": dict(languages.most_common()),
        "market": market
        or f"own (the post's market column, else the policy's default: {lp.policy.default_market})",
        "definitions": {
            "fired": FIRED,
            "caught": CAUGHT,
            "caught_by_category_rule": CAUGHT_BY_RULE,
            "rule_precision": RULE_PRECISION,
        },
        "categories": categories,
        "caught": caught,
        **actions,
        "rules": rules,
        "cache": cache.stats(),
        "timings_s": {
            "load": round(t1 - t0, 3),
            "score": round(t2 - t1, 3),
            "evaluate": round(t3 - t2, 3),
            "total": round(t3 - t0, 3),
        },
    }
    if include_posts:
        result["posts"] = _post_rows(scored, fired, judged, lp)
    return result


def _post_rows(
    scored: Sequence[ScoredPost],
    fired: Sequence[set[str]],
    judged: Sequence[Assessment],
    lp: LoadedPolicy,
) -> list[dict[str, Any]]:
    cats = list(lp.policy.categories)
    return [
        example(
            sp,
            scores=sp.scores,
            fired=sorted(f, key=cats.index),
            actions={m: o.action for m, o in a.outcomes.items()},
            rules={m: [x.rule_id for x in o.matches] for m, o in a.outcomes.items()},
            market=a.facts.market,
        )
        for sp, f, a in zip(scored, fired, judged, strict=True)
    ]


def diff(
    old_policy_path: LoadedPolicy | Path | str,
    new_policy_path: LoadedPolicy | Path | str,
    data_path: Path | str | Sequence[LabeledPost],
    *,
    cache: EmbeddingCache | None = None,
    spec: DataSpec = DataSpec(),
    market: str | None = None,
    examples: int = 3,
    progress: bool | None = None,
    heads: Any = "auto",
) -> dict[str, Any]:
    """Posts whose action changes in some market between two policies (see the module doc).

    ``changed`` lists every such post with its per-market old/new action and rules; rule
    groups also count posts whose matched rules changed without a change of action.
    """
    t0 = time.perf_counter()
    old, new = as_policy(old_policy_path), as_policy(new_policy_path)
    posts = spec.load(data_path, set(old.policy.categories) | set(new.policy.categories))
    cache = open_cache(cache, progress)
    embedded = Embedded(posts, cache, progress, heads)
    scored_old, scored_new = embedded.scored(old), embedded.scored(new)
    changes = _Changes(
        scored_old,
        scored_new,
        judge_posts(scored_old, old, market),
        judge_posts(scored_new, new, market),
    )
    return {
        "kind": "diff",
        "old": {"name": old.name, "version": old.version, "source": old.source},
        "new": {"name": new.name, "version": new.version, "source": new.source},
        "data": describe(data_path, posts),
        "market": market or "own",
        "scores_reused": embedded.scorer_versions[old.version]
        == embedded.scorer_versions[new.version],
        "posts": len(posts),
        "changed_posts": len(changes.changed),
        "rules_only_changed": changes.rules_only,
        "by_transition": changes.by_transition(examples),
        "by_rule": changes.by_rule(examples),
        "changed": changes.changed,
        "cache": cache.stats(),
        "timings_s": {"total": round(time.perf_counter() - t0, 3)},
    }


class _Changes:
    """Per post and market, the old and new action and rules of a diff, and their groups."""

    def __init__(
        self,
        scored_old: Sequence[ScoredPost],
        scored_new: Sequence[ScoredPost],
        judged_old: Sequence[Assessment],
        judged_new: Sequence[Assessment],
    ) -> None:
        self.scored = scored_old
        # (market, old action, new action, language) -> post indexes
        self.transitions: dict[tuple[str, str, str, str], list[int]] = defaultdict(list)
        # (rule, "appeared" / "disappeared", language) -> post index -> markets
        self.rule_groups: dict[tuple[str, str, str], dict[int, set[str]]] = defaultdict(dict)
        self.changed: list[dict[str, Any]] = []
        self.rules_only = 0
        for i, (sp, jo, jn) in enumerate(zip(scored_old, judged_old, judged_new, strict=True)):
            per_market = self._compare(i, sp.language.code, jo.outcomes, jn.outcomes)
            if any(m["old"] != m["new"] for m in per_market.values()):
                self.changed.append(
                    {
                        "index": i,
                        **example(sp),
                        "market": jn.facts.market,
                        "scores_old": sp.scores,
                        "scores_new": scored_new[i].scores,
                        "markets": per_market,
                    }
                )
            elif per_market:
                self.rules_only += 1

    def _compare(self, i: int, lang: str, oo: dict, on: dict) -> dict[str, dict[str, Any]]:
        """Record post ``i``'s transitions and rule changes; its markets that changed."""
        per_market = {}
        for m in dict.fromkeys([*oo, *on]):
            a_old = oo[m].action if m in oo else "allow"
            a_new = on[m].action if m in on else "allow"
            r_old = [x.rule_id for x in oo[m].matches] if m in oo else []
            r_new = [x.rule_id for x in on[m].matches] if m in on else []
            for rid in set(r_new) - set(r_old):
                self.rule_groups[(rid, "appeared", lang)].setdefault(i, set()).add(m)
            for rid in set(r_old) - set(r_new):
                self.rule_groups[(rid, "disappeared", lang)].setdefault(i, set()).add(m)
            if a_old != a_new:
                self.transitions[(m, a_old, a_new, lang)].append(i)
            if a_old != a_new or set(r_old) != set(r_new):
                per_market[m] = {"old": a_old, "new": a_new, "old_rules": r_old, "new_rules": r_new}
        return per_market

    def _labelled(self, idx: Sequence[int] | dict[int, Any]) -> int:
        return sum(1 for i in idx if self.scored[i].post.labels)

    def by_transition(self, examples: int) -> list[dict[str, Any]]:
        return [
            {
                "market": m,
                "old": a,
                "new": b,
                "language": lang,
                "direction": "stricter" if SEVERITY.get(b, 0) > SEVERITY.get(a, 0) else "laxer",
                "count": len(idx),
                "labelled": self._labelled(idx),
                "examples": [example(self.scored[i]) for i in idx[:examples]],
            }
            for (m, a, b, lang), idx in sorted(
                self.transitions.items(), key=lambda kv: (-len(kv[1]), kv[0])
            )
        ]

    def by_rule(self, examples: int) -> list[dict[str, Any]]:
        changed = {c["index"] for c in self.changed}
        return [
            {
                "rule": rid,
                "change": change,
                "language": lang,
                "count": len(idx),
                "action_changed": sum(1 for i in idx if i in changed),
                "markets": sorted({m for ms in idx.values() for m in ms}),
                "labelled": self._labelled(idx),
                "examples": [example(self.scored[i]) for i in list(idx)[:examples]],
            }
            for (rid, change, lang), idx in sorted(
                self.rule_groups.items(), key=lambda kv: (-len(kv[1]), kv[0])
            )
        ]
