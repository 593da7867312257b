"""Review rules, pure: tables of input -> expected output, the error cases beside the good
ones. Policy review sections are validated with file:line errors like the rest."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from service.policy import PolicyError, load_policy, parse_policy
from service.policy.model import Review
from service.review import rules
from service.schemas import Decision

DEFAULT = load_policy("policies/default.yaml")

REVIEW = Review.model_validate({
    "severity": {"self_harm": "severe", "scam_spam": "low"},
    "queues": {"general": {"sla_minutes": 60}, "self_harm": {"sla_minutes": 30, "severity": "severe"}},
    "pools": {
        "zh": {"reviewers": 10, "items_per_hour": 30, "languages": ["zh"]},
        "both": {"reviewers": 2, "items_per_hour": 20, "languages": ["zh", "en"]},
    },
    "reviewers": {"alice": "both", "li": "zh"},
})  # fmt: skip


@pytest.mark.parametrize(("language", "capacity"), [("zh", 320.0), ("en", 20.0), ("ja", 0.0)])
def test_capacity_splits_a_pool_over_its_languages(language, capacity):
    assert rules.capacity_per_hour(REVIEW, language) == capacity


@pytest.mark.parametrize(
    ("depth", "capacity", "wait"),
    [(0, 0.0, 0.0), (0, 10.0, 0.0), (10, 20.0, 1800.0), (1, 0.0, None), (320, 320.0, 3600.0)],
)
def test_expected_wait_is_depth_over_capacity(depth, capacity, wait):
    assert rules.expected_wait_s(depth, capacity) == wait


@pytest.mark.parametrize(
    ("capacity", "sla_s", "limit"),
    [(20.0, 3600, 20), (20.0, 1800, 10), (2.0, 3600, 2), (0.0, 3600, 0), (0.5, 3600, 0),
     (30.0, 60, 0), (1.0, 7200, 2)],
)  # fmt: skip
def test_admission_limit_is_what_the_sla_allows(capacity, sla_s, limit):
    assert rules.admission_limit(capacity, sla_s) == limit


@pytest.mark.parametrize(
    ("depth", "limit", "over"), [(0, 2, False), (1, 2, False), (2, 2, True), (5, 2, True), (0, 0, True)]
)
def test_overflow_decision(depth, limit, over):
    assert rules.overflows(depth, limit) is over


@pytest.mark.parametrize(
    ("overflow", "severity", "action"),
    [
        ("limit_reach", "medium", "limit_reach"),
        ("allow", "low", "allow"),
        ("label", "high", "label"),
        ("allow", "severe", "limit_reach"),  # severe never falls back to allow
        ("label", "severe", "limit_reach"),
        ("remove", "severe", "remove"),
        ("limit_reach", "severe", "limit_reach"),
    ],
)
def test_fallback_action_has_a_floor_for_severe_items(overflow, severity, action):
    assert rules.fallback_action(overflow, severity) == action


@pytest.mark.parametrize(
    ("higher", "lower"),
    [
        (("severe", 0.1, None), ("high", 1.0, 10**9)),  # severity dominates score and reach
        (("high", 0.9, None), ("high", 0.5, 100)),  # then the score and the reach
        (("high", 0.5, 10**6), ("high", 0.9, None)),  # a huge audience weighs as much as score
        (("medium", 0.5, 1000), ("medium", 0.5, 10)),  # then the reach
        (("medium", 0.5, 10), ("medium", 0.5, None)),
    ],
)
def test_priority_order(higher, lower):
    assert rules.priority(*higher) > rules.priority(*lower)


def test_queue_score_orders_by_priority_then_age():
    assert rules.queue_score(300.0, 2000) > rules.queue_score(299.99, 1000)
    assert rules.queue_score(300.0, 1000) > rules.queue_score(300.0, 2000)  # older first
    assert rules.queue_score(449.99, 1.8e9) < 2**53  # exact in a Redis (double) score


@pytest.mark.parametrize(
    ("name", "admin", "languages"),
    [("alice", False, {"zh", "en"}), ("li", False, {"zh"}), ("bob", False, set()), ("bob", True, None)],
)
def test_reviewer_languages(name, admin, languages):
    got = rules.reviewer_languages(REVIEW, name, admin)
    assert got == (frozenset(languages) if languages is not None else None)


@pytest.mark.parametrize(
    ("queue", "languages", "seen"),
    [("en/general", frozenset({"en"}), True), ("zh/general", frozenset({"en"}), False),
     ("zh/appeal", None, True), ("en/general", frozenset(), False)],
)  # fmt: skip
def test_visibility(queue, languages, seen):
    assert rules.visible(queue, languages) is seen


def decision(action: str, language: str, reasons: list[dict], market: str = "intl") -> Decision:
    return Decision.model_validate({
        "post_id": "p1", "action": action, "market": market, "reasons": reasons,
        "outcomes": {market: {"action": action, "rules": [r["rule"] for r in reasons]}},
        "language": {"code": language, "script": "Latn", "confidence": 0.9},
        "scores": {"self_harm": 0.8}, "policy": {"name": "x", "version": "v"},
        "model": {"name": "m", "version": "v"},
        "timings": {"queue_wait_ms": 0, "processing_ms": 1}, "decided_at": datetime.now(UTC),
    })  # fmt: skip


SELF_HARM = {"rule": "self-harm-support", "action": "review", "categories": {"self_harm": 0.8}}
ZH_HARM = {"rule": "harmful-zh-review", "action": "review", "categories": {"scam_spam": 0.7, "hate": 0.6}}
KEYWORDS = {"rule": "gambling-drug-terms", "action": "review", "keywords": {"drug_terms": ["x"]}}


@pytest.mark.parametrize(
    ("d", "queue", "severity", "category"),
    [
        (decision("review", "en", [SELF_HARM]), "en/self_harm", "severe", "self_harm"),
        # the most severe category that fired (hate: high) over the higher-scored one
        (decision("review", "zh", [ZH_HARM]), "zh/general", "high", "hate"),
        (decision("review", "zh", [KEYWORDS]), "zh/general", "medium", None),
        (decision("remove", "en", [{"rule": "severe-harm", "action": "remove"}]), None, None, None),
        (decision("allow", "en", []), None, None, None),
    ],
)
def test_route_by_language_and_reason(d, queue, severity, category):
    routing = rules.route(d, DEFAULT.policy)
    if queue is None:
        assert routing is None
        return
    assert (routing.queue, routing.severity, routing.category) == (queue, severity, category)


def test_plan_prepares_the_queued_and_the_fallback_decision():
    d = decision("review", "en", [SELF_HARM])
    planned = rules.plan(d, {"text": "t", "author": {"id": "a", "followers": 100}}, DEFAULT.policy, 1e9)
    queued = Decision.model_validate_json(planned.decision_json)
    assert queued.action == "review" and queued.review.queue == "en/self_harm"
    assert queued.review.fallback is None
    entry = planned.review
    assert entry.queue == "en/self_harm" and entry.fallback_stat == "en|limit_reach"
    # default policy: English capacity 30/h, self_harm SLA 60 min
    assert entry.limit == 30
    fallback = Decision.model_validate_json(entry.fallback_json)
    assert fallback.action == "limit_reach" and fallback.outcomes["intl"].action == "limit_reach"
    assert fallback.review.fallback.applied and fallback.review.fallback.instead_of == "review"
    assert "pending_review" in fallback.labels


@pytest.mark.parametrize(
    ("action", "has_item", "queued"),
    [("review", True, True), ("remove", True, False), ("limit_reach", True, False),
     ("label", False, False), ("allow", False, False)],
)  # fmt: skip
def test_plan_keeps_an_item_for_what_can_be_appealed(action, has_item, queued):
    reasons = [SELF_HARM] if action == "review" else []
    planned = rules.plan(decision(action, "en", reasons), {"text": "t"}, DEFAULT.policy, 1e9)
    assert (planned.review is not None) is has_item
    assert bool(planned.review and planned.review.queue) is queued


@pytest.mark.parametrize(
    ("verdict", "fields"),
    [
        ("remove", ["rule|r1|en|judged", "rule|r1|en|confirmed",
                    "category|hate|en|judged", "category|hate|en|confirmed"]),
        ("allow", ["rule|r1|en|judged", "category|hate|en|judged"]),
    ],
)  # fmt: skip
def test_feedback_fields(verdict, fields):
    item = {"language": "en", "rules": ["r1"], "categories": ["hate"]}
    assert rules.feedback_fields(item, verdict) == fields


def test_precision_rows():
    counts = {"rule|r1|en|judged": "4", "rule|r1|en|confirmed": "1", "rule|r1|zh|judged": "2",
              "rule|r1|zh|confirmed": "2", "category|hate|en|judged": "1",
              "appeal|en|overturned": "3", "appeal|en|upheld": "1"}  # fmt: skip
    out = rules.precision_rows(counts)
    assert out["rules"] == [
        {"name": "r1", "language": "en", "judged": 4, "confirmed": 1, "precision": 0.25,
         "overturn_rate": 0.75},
        {"name": "r1", "language": "zh", "judged": 2, "confirmed": 2, "precision": 1.0,
         "overturn_rate": 0.0},
    ]  # fmt: skip
    assert out["categories"][0]["precision"] == 0.0
    assert out["appeals"] == [{"language": "en", "upheld": 1, "overturned": 3, "overturn_rate": 0.75}]


@pytest.mark.parametrize(
    ("standing", "verdict", "outcome"),
    [("remove", "remove", "upheld"), ("remove", "allow", "overturned"),
     ("limit_reach", "label", "overturned")],
)  # fmt: skip
def test_appeal_outcome(standing, verdict, outcome):
    assert rules.appeal_outcome(standing, verdict) == outcome


@pytest.mark.parametrize(
    ("item", "final", "state"),
    [
        (None, "review", None),
        ({"state": "queued"}, "review", "queued"),
        ({"state": "leased", "verdict": None}, "review", "in_review"),
        ({"state": "resolved", "verdict": {"action": "remove"}}, "remove", "resolved"),
        ({"state": "resolved", "kind": "appeal", "verdict": {"action": "remove"},
          "appeal": {"reason": "r"}, "appeal_verdict": {"action": "allow"}}, "allow", "appeal_resolved"),
    ],
)  # fmt: skip
def test_merge_puts_the_human_verdict_on_top(item, final, state):
    merged = rules.merge({"post_id": "p", "action": "review", "review": None}, item, [])
    assert merged["final_action"] == final
    assert (merged["review"] or {}).get("state") == state


BASE = """name: t
categories:
  hate: {description: hateful content, threshold: 0.5}
rules:
  - id: r
    when: {category: hate}
    action: review
    queue: review:hate
"""
GOOD_REVIEW = """review:
  severity: {hate: high}
  queues:
    hate: {sla_minutes: 60}
  pools:
    en_pool: {reviewers: 1, items_per_hour: 10, languages: [en]}
  reviewers: {alice: en_pool}
"""


def test_the_default_policy_declares_review():
    review = DEFAULT.policy.review
    assert rules.capacity_per_hour(review, "zh") > 100 * rules.capacity_per_hour(review, "en") > 0


def test_a_good_review_section_loads():
    assert parse_policy(BASE + GOOD_REVIEW).policy.review.reviewers == {"alice": "en_pool"}


@pytest.mark.parametrize(
    ("edit", "line", "message"),
    [
        (("en_pool}", "en_pol}"), 15, "unknown pool 'en_pol' (did you mean 'en_pool'?)"),
        (("{hate: high}", "{hat: high}"), 10, "unknown category 'hat'"),
        (("hate: {sla_minutes: 60}", "hat: {sla_minutes: 60}"), 8,
         "review queue 'hate' is not declared under review.queues"),
        (("{sla_minutes: 60}", "{sla_minutes: 60, severity: severe, overflow: allow}"), 12,
         "a severe queue never falls back to 'allow'"),
        (("{sla_minutes: 60}", "{sla_minuts: 60}"), 12, "did you mean 'sla_minutes'"),
        (("items_per_hour: 10", "items_per_hour: 0"), 14, "greater than 0"),
        (("languages: [en]", "languages: [EN]"), 14, "pattern"),
        (("queue: review:hate", "queue: review:spam"), 8,
         "review queue 'spam' is not declared"),
    ],
)  # fmt: skip
def test_review_errors_point_at_their_line(edit, line, message):
    text = BASE + GOOD_REVIEW
    text = text.replace(*edit, 1)
    with pytest.raises(PolicyError) as exc:
        parse_policy(text, source="p.yaml")
    errors = exc.value.errors
    assert any(message in e for e in errors), errors
    assert any(e.startswith(f"p.yaml:{line}:") and message in e for e in errors), errors


def test_verdict_counters_are_their_own_rows():
    item = {"language": "en", "kind": "appeal", "rules": ["r1"], "categories": []}
    assert rules.verdict_field(item, "allow") == "verdict|en|appeal|allow"
    assert rules.verdict_field({}, "remove") == "verdict|und|review|remove"
    counts = {"verdict|en|review|remove": "3", "verdict|en|appeal|allow": "1",
              "rule|r1|en|judged": "3", "rule|r1|en|confirmed": "3"}  # fmt: skip
    assert rules.verdict_rows(counts) == [
        {"language": "en", "kind": "appeal", "action": "allow", "count": 1},
        {"language": "en", "kind": "review", "action": "remove", "count": 3},
    ]  # fmt: skip
    out = rules.precision_rows(counts)  # verdict counters are no rule or category
    assert [r["name"] for r in out["rules"]] == ["r1"] and out["categories"] == []
    assert rules.summary(counts, {})["verdicts"] == rules.verdict_rows(counts)


def test_recent_post_shows_the_human_action_on_top():
    decision = {"post_id": "p1", "action": "review", "language": {"code": "en", "script": "Latn"}}
    item = {"language": "en", "state": "resolved", "kind": "review", "text": "hi there",
            "verdict": {"action": "remove"}}  # fmt: skip
    row = rules.recent_post("p1", 1_000, decision, item)
    assert row == {"post_id": "p1", "at_ms": 1_000, "status": "decided", "action": "review",
                   "final_action": "remove", "language": "en", "review_state": "resolved",
                   "text": "hi there"}  # fmt: skip
    allowed = rules.recent_post("p2", 2_000, {"post_id": "p2", "action": "allow",
                                              "language": {"code": "zh"}}, None)  # fmt: skip
    assert (allowed["final_action"], allowed["text"], allowed["review_state"]) == ("allow", None, None)
    pending = rules.recent_post("p3", 3_000, None, None)
    assert pending["status"] == "undecided" and pending["action"] is None
