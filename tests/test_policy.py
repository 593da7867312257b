"""Policy: evaluation semantics, the shipped default policy, validation errors, versions.

Pure tests: no Redis, no model. Scores are set by hand in ``Facts``.
"""

from __future__ import annotations

import re
import textwrap
from dataclasses import replace
from itertools import combinations
from pathlib import Path

import pytest

from service.policy import Facts, LoadedPolicy, PolicyError, evaluate, load_policy, parse_policy

REPO = Path(__file__).resolve().parents[1]
DEFAULT_POLICY = REPO / "policies" / "default.yaml"

# the order the policy promises, written out here rather than imported from the module
ORDER = ["allow", "label", "limit_reach", "review", "remove"]


# --------------------------------------------------------------------------- helpers

HEADER = """\
name: test
markets: [cn, intl]
default_market: cn
categories:
  hate:
    description: hateful content
    threshold: 0.8
    thresholds: {en: 0.9}
  spam:
    description: spam and scams
    threshold: 0.5
keywords:
  words:
    terms: [casino, ass, 加微信, whatsapp me]
    regexes: ['vx[:：]?\\s*[a-z0-9]{5,}']
  other:
    terms: [lottery]
rules:
"""


def make_policy(rules: str) -> LoadedPolicy:
    """The test header plus ``rules`` (YAML list items, written at column 0)."""
    return parse_policy(HEADER + textwrap.indent(textwrap.dedent(rules), "  "), source="test.yaml")


def single_rule(when: str, action: str = "label") -> LoadedPolicy:
    return make_policy(f"- id: r\n  when: {when}\n  action: {action}\n")


def always(rule_id: str, action: str, **extra: object) -> str:
    """A rule that matches every post with text under 1000 characters."""
    lines = [f"- id: {rule_id}", "  when: {text_chars_lt: 1000}", f"  action: {action}"]
    lines += [f"  {key}: {value}" for key, value in extra.items()]
    return "\n".join(lines) + "\n"


def facts(**overrides: object) -> Facts:
    base = Facts(
        text="hello world",
        language="en",
        script="Latn",
        mixed=False,
        scores={},
        market="cn",
        account_age_days=None,
    )
    return replace(base, **overrides)


def own(lp: LoadedPolicy, f: Facts):
    """The outcome in the post's own market."""
    return evaluate(lp, f)[f.market]


# --------------------------------------------------------------------------- decision


@pytest.mark.parametrize(("a", "b"), list(combinations(ORDER, 2)))
def test_most_severe_matching_action_wins(a: str, b: str) -> None:
    # b is more severe than a; list the less severe rule first and then the other way round
    for rules in (always("x", a) + always("y", b), always("y", b) + always("x", a)):
        out = own(make_policy(rules), facts())
        assert out.action == b
        assert [m.action for m in out.matches] == [b, a]


def test_no_match_is_allow_with_no_reasons() -> None:
    lp = single_rule("{language: [zh]}", action="remove")
    out = own(lp, facts(language="en"))
    assert (out.action, out.matches, out.labels, out.queue) == ("allow", (), (), None)


def test_allow_rule_is_listed_but_decides_nothing_more() -> None:
    out = own(make_policy(always("ok", "allow")), facts())
    assert out.action == "allow"
    assert [m.rule_id for m in out.matches] == ["ok"]


def test_all_matches_sorted_by_severity_then_priority() -> None:
    rules = (
        always("a", "review")
        + always("e", "review", priority=5)
        + always("c", "remove", priority=-1)
        + always("b", "review", priority=5)
        + always("d", "label", priority=9)
    )
    out = own(make_policy(rules), facts())
    assert out.action == "remove"
    # ties in severity and priority fall back to the rule id (b before e)
    assert [m.rule_id for m in out.matches] == ["c", "b", "e", "a", "d"]


# --------------------------------------------------------------------------- conditions

CONDITIONS = [
    # category without min_score: the category threshold (0.8), inclusive
    ("{category: hate}", dict(language="zh", scores={"hate": 0.8}), True),
    ("{category: hate}", dict(language="zh", scores={"hate": 0.79}), False),
    ("{category: hate}", dict(language="zh", scores={}), False),
    # ... and the per-language override for en (0.9)
    ("{category: hate}", dict(language="en", scores={"hate": 0.85}), False),
    ("{category: hate}", dict(language="en", scores={"hate": 0.9}), True),
    # an explicit min_score replaces the threshold, also for en
    ("{category: hate, min_score: 0.5}", dict(scores={"hate": 0.5}), True),
    ("{category: hate, min_score: 0.5}", dict(scores={"hate": 0.49}), False),
    # max_score is exclusive; alone it has no lower bound (a missing score is 0)
    ("{category: hate, max_score: 0.3}", dict(scores={"hate": 0.29}), True),
    ("{category: hate, max_score: 0.3}", dict(scores={"hate": 0.3}), False),
    ("{category: hate, max_score: 0.3}", dict(scores={}), True),
    ("{category: hate, min_score: 0.2, max_score: 0.6}", dict(scores={"hate": 0.4}), True),
    ("{category: hate, min_score: 0.2, max_score: 0.6}", dict(scores={"hate": 0.1}), False),
    ("{category: hate, min_score: 0.2, max_score: 0.6}", dict(scores={"hate": 0.7}), False),
    # another category's score does not count
    ("{category: spam}", dict(scores={"hate": 1.0}), False),
    ("{language: [zh, ja]}", dict(language="zh"), True),
    ("{language: [zh, ja]}", dict(language="en"), False),
    ("{script: [Hani]}", dict(script="Hani"), True),
    ("{script: [Hani]}", dict(script="Latn"), False),
    ("{mixed: true}", dict(mixed=True), True),
    ("{mixed: true}", dict(mixed=False), False),
    ("{mixed: false}", dict(mixed=False), True),
    ("{mixed: false}", dict(mixed=True), False),
    ("{market: [intl]}", dict(market="intl"), True),
    ("{market: [intl]}", dict(market="cn"), False),
    ("{account_age_days_lt: 3}", dict(account_age_days=1), True),
    ("{account_age_days_lt: 3}", dict(account_age_days=2.99), True),
    ("{account_age_days_lt: 3}", dict(account_age_days=3), False),
    ("{account_age_days_lt: 3}", dict(account_age_days=30), False),
    ("{account_age_days_lt: 3}", dict(account_age_days=None), False),
    ("{text_chars_lt: 5}", dict(text="hey"), True),
    ("{text_chars_lt: 5}", dict(text="   hey   "), True),  # surrounding space not counted
    ("{text_chars_lt: 5}", dict(text="hello"), False),
    # several keys in one node are ANDed
    ("{language: [en], mixed: false}", dict(language="en", mixed=False), True),
    ("{language: [en], mixed: false}", dict(language="en", mixed=True), False),
    ("{all: [{language: [en]}, {category: spam}]}", dict(scores={"spam": 0.6}), True),
    ("{all: [{language: [en]}, {category: spam}]}", dict(scores={"spam": 0.4}), False),
    (
        "{all: [{language: [en]}, {category: spam}]}",
        dict(language="zh", scores={"spam": 0.6}),
        False,
    ),
    ("{any: [{language: [zh]}, {category: spam}]}", dict(language="zh"), True),
    ("{any: [{language: [zh]}, {category: spam}]}", dict(scores={"spam": 0.6}), True),
    ("{any: [{language: [zh]}, {category: spam}]}", dict(scores={"spam": 0.4}), False),
    ("{not: {language: [zh]}}", dict(language="en"), True),
    ("{not: {language: [zh]}}", dict(language="zh"), False),
    ("{not: {any: [{language: [zh]}, {mixed: true}]}}", dict(language="en"), True),
    ("{not: {any: [{language: [zh]}, {mixed: true}]}}", dict(mixed=True), False),
    ("{language: [en], not: {category: spam}}", dict(scores={"spam": 0.1}), True),
    ("{language: [en], not: {category: spam}}", dict(scores={"spam": 0.9}), False),
    ("{keywords: words}", dict(text="best casino"), True),
    ("{keywords: words}", dict(text="best lottery"), False),
    ("{keywords: other}", dict(text="best lottery"), True),
]


@pytest.mark.parametrize(("when", "overrides", "matched"), CONDITIONS)
def test_condition(when: str, overrides: dict, matched: bool) -> None:
    lp = single_rule(when)
    f = facts(**overrides)
    out = own(lp, f)
    assert [m.rule_id for m in out.matches] == (["r"] if matched else [])
    assert out.action == ("label" if matched else "allow")


KEYWORDS = [
    ("Best CASINO in town", ("casino",)),
    ("ＣＡＳＩＮＯ night", ("casino",)),  # full-width folds to ASCII
    ("casino!", ("casino",)),
    ("casinos and more", ()),  # Latin terms on word boundaries only
    ("first class seats", ()),  # "ass" inside "class" does not fire
    ("bass guitar, assets", ()),
    ("what an ASS", ("ass",)),
    ("请加微信详聊", ("加微信",)),  # CJK terms anywhere
    ("加微信", ("加微信",)),
    ("加我whatsapp me", ("whatsapp me",)),  # a CJK neighbour is a word boundary
    ("whatsapp  me", ()),  # terms are literal: two spaces are not one
    ("vx: abc123", ("vx: abc123",)),
    ("ＶＸ：ABC123", ("vx:abc123",)),  # regexes run on the folded text
    ("vx abc", ()),  # regex needs 5+ characters
    ("casino 加微信", ("casino", "加微信")),
    ("nothing to see here", ()),
]


@pytest.mark.parametrize(("text", "hits"), KEYWORDS)
def test_keyword_matching(text: str, hits: tuple[str, ...]) -> None:
    out = own(single_rule("{keywords: words}"), facts(text=text))
    if hits:
        [match] = out.matches
        assert match.keywords == (("words", hits),)
    else:
        assert out.matches == ()


def test_match_records_the_scores_and_keywords_that_fired() -> None:
    lp = single_rule("{all: [{category: spam}, {keywords: words}]}")
    [match] = own(lp, facts(text="Casino night", scores={"spam": 0.7, "hate": 0.95})).matches
    assert match.categories == (("spam", 0.7),)
    assert match.keywords == (("words", ("casino",)),)


# --------------------------------------------------------------------------- markets

MARKET_RULES = """\
- id: en-in-cn
  markets: [cn]
  when: {language: [en]}
  action: label
  labels: [foreign_language]
- id: spam-everywhere
  when: {category: spam}
  action: limit_reach
- id: intl-only-condition
  when: {market: [intl], mixed: true}
  action: review
"""


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        # an English post: labelled in cn, allowed in intl, whatever market it was posted in
        (dict(market="cn"), {"cn": "label", "intl": "allow"}),
        (dict(market="intl"), {"cn": "label", "intl": "allow"}),
        (dict(language="zh"), {"cn": "allow", "intl": "allow"}),
        (dict(scores={"spam": 0.6}), {"cn": "limit_reach", "intl": "limit_reach"}),
        # a market condition is evaluated per market, not against the post's market
        (dict(mixed=True, market="cn"), {"cn": "label", "intl": "review"}),
        # a market the policy does not list still gets an outcome; rules limited to
        # other markets do not apply there
        (dict(market="us"), {"cn": "label", "intl": "allow", "us": "allow"}),
        (
            dict(market="us", scores={"spam": 0.6}),
            {"cn": "limit_reach", "intl": "limit_reach", "us": "limit_reach"},
        ),
    ],
)
def test_outcome_per_market(overrides: dict, expected: dict[str, str]) -> None:
    outcomes = evaluate(make_policy(MARKET_RULES), facts(**overrides))
    assert {market: o.action for market, o in outcomes.items()} == expected
    assert all(o.market == market for market, o in outcomes.items())


def test_rule_restricted_to_a_market_is_not_listed_elsewhere() -> None:
    outcomes = evaluate(make_policy(MARKET_RULES), facts())
    assert [m.rule_id for m in outcomes["cn"].matches] == ["en-in-cn"]
    assert outcomes["cn"].labels == ("foreign_language",)
    assert outcomes["intl"].matches == ()
    assert outcomes["intl"].labels == ()


# --------------------------------------------------------------------------- queue, labels


@pytest.mark.parametrize(
    ("rules", "language", "queue"),
    [
        (always("r", "review"), "zh", "review:zh"),
        (always("r", "review"), "en", "review:en"),
        (always("r", "review"), "und", "review:und"),
        (always("r", "review", queue="review:urgent"), "zh", "review:urgent"),
        # the first review match in order (highest priority) names the queue
        (
            always("a", "review") + always("b", "review", queue="special", priority=5),
            "en",
            "special",
        ),
        (
            always("a", "review", priority=5) + always("b", "review", queue="special"),
            "en",
            "review:en",
        ),
        # no queue unless the decision is review
        (always("a", "review") + always("b", "remove"), "en", None),
        (always("a", "label", queue="q"), "en", None),
        (always("a", "limit_reach"), "en", None),
    ],
)
def test_review_queue(rules: str, language: str, queue: str | None) -> None:
    assert own(make_policy(rules), facts(language=language)).queue == queue


@pytest.mark.parametrize(
    ("rules", "labels"),
    [
        (always("a", "label", labels="[x, y]"), ("x", "y")),
        # from every match, once each, in the order of the matches
        (
            always("a", "label", labels="[x, y]") + always("b", "label", labels="[y, z]"),
            ("x", "y", "z"),
        ),
        (
            always("a", "label", labels="[x, y]") + always("b", "review", labels="[y, z]"),
            ("y", "z", "x"),
        ),
        (always("a", "label", labels="[x, x]"), ("x",)),
        # a rule that does not match contributes nothing
        (
            always("a", "label", labels="[x]")
            + "- id: n\n  when: {language: [zh]}\n  action: label\n  labels: [nope]\n",
            ("x",),
        ),
        (always("a", "remove"), ()),
    ],
)
def test_labels_collected_without_duplicates(rules: str, labels: tuple[str, ...]) -> None:
    assert own(make_policy(rules), facts()).labels == labels


# --------------------------------------------------------------------------- default policy


@pytest.fixture(scope="module")
def default_policy() -> LoadedPolicy:
    return load_policy(DEFAULT_POLICY)


def test_default_policy_loads(default_policy: LoadedPolicy) -> None:
    p = default_policy.policy
    assert default_policy.name == "floodgate-default"
    assert p.markets == ["cn", "intl"]
    assert p.default_market == "cn"
    assert {"hate", "self_harm", "scam_spam"} <= set(p.categories)
    assert {"scam_contact", "gambling_terms", "drug_terms", "lexicon_sexual", "lexicon_ads",
            "lexicon_weapons"} == set(default_policy.matchers)
    ids = [r.id for r in p.rules]
    assert len(ids) == len(set(ids))
    assert default_policy.source == str(DEFAULT_POLICY)


def zh(text: str = "今天做了红烧肉，味道还不错", **kw: object) -> Facts:
    return facts(text=text, language="zh", script="Hani", **kw)


def en(text: str = "my cat knocked over my coffee again", **kw: object) -> Facts:
    return facts(text=text, language="en", script="Latn", **kw)


def _zh_threshold(category: str) -> float:
    """The default policy's Chinese threshold (tuned by `floodgate policy tune`: the cases
    below sit relative to it, not on a number that moves with every retrain)."""
    return load_policy(DEFAULT_POLICY).policy.categories[category].threshold_for("zh")


# a sexual score with some model support (>= 0.2, what the lexicon rules ask) that is still
# below the category's Chinese threshold
LEXICON_BAND = (0.2 + _zh_threshold("sexual")) / 2
assert 0.2 <= LEXICON_BAND < _zh_threshold("sexual")

DEFAULT_CASES = [
    # (facts, action per market, labels that must be in the own market's outcome, queue)
    pytest.param(zh(), {"cn": "allow", "intl": "allow"}, set(), None, id="zh-benign"),
    pytest.param(
        en(), {"cn": "label", "intl": "allow"}, {"foreign_language"}, None, id="en-benign"
    ),
    pytest.param(
        en(market="intl"), {"cn": "label", "intl": "allow"}, set(), None, id="en-benign-intl"
    ),
    pytest.param(
        zh(scores={"hate": 0.9}),
        {"cn": "review", "intl": "review"},
        set(),
        "review:zh",
        id="zh-hate",
    ),
    pytest.param(
        zh(scores={"hate": _zh_threshold("hate") - 0.01}), {"cn": "allow", "intl": "allow"},
        set(), None, id="zh-hate-below",
    ),
    # a lexicon term counts only with some model support (score >= 0.2, below threshold)
    pytest.param(zh("寂寞女在线裸聊，私聊我", scores={"sexual": LEXICON_BAND}),
                 {"cn": "review", "intl": "review"}, set(), "review:zh", id="zh-lexicon-sexual"),
    pytest.param(zh("寂寞女在线裸聊，私聊我", scores={"sexual": 0.1}),
                 {"cn": "allow", "intl": "allow"}, set(), None, id="zh-lexicon-without-model"),
    pytest.param(zh("今天的美腿穿搭分享", scores={"sexual": LEXICON_BAND}),
                 {"cn": "allow", "intl": "allow"}, set(), None, id="zh-dropped-lexicon-term"),
    pytest.param(
        en(scores={"hate": 0.9}, market="intl"),
        {"cn": "review", "intl": "review"},
        set(),
        "review:en",
        id="en-hate",
    ),
    pytest.param(
        en(scores={"hate": 0.98}),
        {"cn": "remove", "intl": "remove"},
        set(),
        None,
        id="en-hate-severe",
    ),
    pytest.param(
        zh("活着太累了", scores={"self_harm": 0.9}),
        {"cn": "review", "intl": "review"},
        {"show_support_resources"},
        "review:self_harm",
        id="zh-self-harm",
    ),
    pytest.param(
        en("I don't want to live anymore", scores={"self_harm": 0.9}, market="intl"),
        {"cn": "review", "intl": "review"},
        {"show_support_resources"},
        "review:self_harm",
        id="en-self-harm",
    ),
    pytest.param(
        zh(scores={"self_harm": 0.49}),
        {"cn": "allow", "intl": "allow"},
        set(),
        None,
        id="self-harm-below",
    ),
    pytest.param(
        zh("在家兼职日赚500，加微信了解详情", scores={"scam_spam": 0.6}),
        {"cn": "remove", "intl": "remove"},
        {"scam"},
        None,
        id="zh-scam-contact",
    ),
    pytest.param(
        en("easy money, ＷＨＡＴＳＡＰＰ ME now", scores={"scam_spam": 0.6}, market="intl"),
        {"cn": "remove", "intl": "remove"},
        {"scam"},
        None,
        id="en-scam-fullwidth-contact",
    ),
    pytest.param(
        zh("在家兼职日赚500，加微信了解详情", scores={"scam_spam": 0.3}),
        {"cn": "allow", "intl": "allow"},
        set(),
        None,
        id="contact-without-scam-score",
    ),
    pytest.param(
        zh("百家乐走起", scores={}),
        {"cn": "review", "intl": "review"},
        set(),
        "review:zh",
        id="gambling-term",
    ),
    pytest.param(
        en(
            "great deals, check my profile",
            scores={"scam_spam": 0.4},
            account_age_days=1,
            market="intl",
        ),
        {"cn": "limit_reach", "intl": "limit_reach"},
        {"new_account_promo"},
        None,
        id="new-account-promo",
    ),
    pytest.param(
        en(
            "great deals, check my profile",
            scores={"scam_spam": 0.4},
            account_age_days=30,
            market="intl",
        ),
        {"cn": "label", "intl": "allow"},
        set(),
        None,
        id="old-account-promo",
    ),
]


@pytest.mark.parametrize(("f", "actions", "labels", "queue"), DEFAULT_CASES)
def test_default_policy_decisions(
    default_policy: LoadedPolicy, f: Facts, actions: dict, labels: set, queue: str | None
) -> None:
    outcomes = evaluate(default_policy, f)
    assert {m: o.action for m, o in outcomes.items()} == actions
    assert labels <= set(outcomes[f.market].labels)
    assert outcomes[f.market].queue == queue


def test_default_policy_new_account_scam_is_at_least_limit_reach(
    default_policy: LoadedPolicy,
) -> None:
    for f in (
        zh("低价代购，欢迎咨询", scores={"scam_spam": 0.6}, account_age_days=1),
        en("cheap bags, best price", scores={"scam_spam": 0.6}, account_age_days=1, market="intl"),
    ):
        for outcome in evaluate(default_policy, f).values():
            assert ORDER.index(outcome.action) >= ORDER.index("limit_reach")
            assert "new-account-promo" in [m.rule_id for m in outcome.matches]


def test_default_policy_lists_every_matching_rule(default_policy: LoadedPolicy) -> None:
    f = zh("加微信领取", scores={"scam_spam": 0.9, "self_harm": 0.8}, account_age_days=1)
    out = evaluate(default_policy, f)["cn"]
    assert out.action == "remove"
    assert [m.rule_id for m in out.matches] == [
        "scam-with-contact",
        "self-harm-support",
        "harmful-zh-review",
        "new-account-promo",
    ]


# --------------------------------------------------------------------------- validation

BASE = """\
name: t
markets: [cn, intl]
categories:
  hate:
    description: hate speech
    threshold: 0.8
keywords:
  contact:
    terms: [telegram]
rules:
  - id: r1
    when: {category: hate}
    action: review
"""


def mutate(old: str, new: str) -> str:
    assert BASE.count(old) == 1, old
    return BASE.replace(old, new)


def line_of(text: str, marker: str) -> int:
    lines = [i for i, line in enumerate(text.splitlines(), 1) if marker in line]
    assert len(lines) == 1, (marker, lines)
    return lines[0]


# (policy text, [(marker on the offending line or a line number, message fragments)])
INVALID = [
    pytest.param(
        "name: t\ndescription: a: b\nrules: []\n",
        [(2, ["YAML syntax", "mapping values are not allowed"])],
        id="yaml-syntax",
    ),
    pytest.param("name: t\n\tcategories: {}\n", [(2, ["YAML syntax"])], id="yaml-tab"),
    pytest.param("- a\n- b\n", [(1, ["a policy is a mapping"])], id="top-list"),
    pytest.param("just words\n", [(1, ["a policy is a mapping"])], id="top-scalar"),
    pytest.param("", [(1, ["a policy is a mapping"])], id="empty-file"),
    pytest.param(
        mutate("rules:", "rulez:"),
        [
            (1, ["rules: Field required"]),
            ("rulez:", ["unknown key 'rulez'", "did you mean 'rules'"]),
        ],
        id="unknown-top-key",
    ),
    pytest.param(
        mutate("    action: review", "    actoin: review"),
        [
            ("- id: r1", ["action: Field required"]),
            ("actoin:", ["unknown key 'actoin'", "did you mean 'action'"]),
        ],
        id="unknown-rule-key",
    ),
    pytest.param(
        mutate("    threshold: 0.8", "    treshold: 0.8"),
        [
            ("description: hate", ["threshold: Field required"]),
            ("treshold", ["did you mean 'threshold'"]),
        ],
        id="unknown-category-key",
    ),
    pytest.param(
        mutate(
            "{category: hate}",
            "\n      all:\n        - {category: hate}\n        - {langauge: [en]}",
        ),
        [("langauge", ["rules.0.when.all.1.langauge", "did you mean 'language'"])],
        id="unknown-condition-key-nested",
    ),
    pytest.param(
        mutate("action: review", "action: delete"),
        [("action: delete", ["rules.0.action", "'remove'"])],
        id="bad-action",
    ),
    pytest.param(
        mutate("threshold: 0.8", "threshold: 1.5"),
        [("threshold: 1.5", ["categories.hate.threshold", "less than or equal to 1"])],
        id="threshold-too-high",
    ),
    pytest.param(
        mutate("threshold: 0.8", "threshold: 0.8\n    thresholds: {en: -0.1}"),
        [("thresholds:", ["categories.hate.thresholds.en", "greater than or equal to 0"])],
        id="language-threshold-negative",
    ),
    pytest.param(
        mutate("terms: [telegram]", "terms: [telegram]\n    regexes: ['(unclosed']"),
        [("regexes:", ["keywords.contact.regexes", "bad regex '(unclosed'"])],
        id="bad-regex",
    ),
    pytest.param(
        mutate("terms: [telegram]", "terms: [telegram]\n    regexes: ['(?i)abc']"),
        [("regexes:", ["keywords.contact.regexes", "bad regex '(?i)abc'"])],
        id="regex-with-global-flag",  # valid alone, but not inside the joined pattern
    ),
    pytest.param(
        mutate("{category: hate}", "{category: hat}"),
        [("{category: hat}", ["unknown category 'hat'", "did you mean 'hate'"])],
        id="unknown-category",
    ),
    pytest.param(
        mutate(
            "{category: hate}",
            "\n      any:\n        - {language: [en]}\n        - not: {category: hte}",
        ),
        [("{category: hte}", ["rules.0.when.any.1.not.category", "unknown category 'hte'"])],
        id="unknown-category-nested",
    ),
    pytest.param(
        mutate("{category: hate}", "{keywords: contacts}"),
        [("{keywords: contacts}", ["unknown keyword list 'contacts'", "did you mean 'contact'"])],
        id="unknown-keyword-list",
    ),
    pytest.param(
        BASE + "  - id: r1\n    when: {category: hate}\n    action: label\n",
        [(14, ["rules.1.id", "duplicate rule id 'r1'"])],
        id="duplicate-rule-id",
    ),
    pytest.param(
        mutate("{category: hate}", "{}"),
        [("when: {}", ["rules.0.when", "empty condition"])],
        id="empty-when",
    ),
    pytest.param(
        mutate("{category: hate}", "{all: []}"),
        [("when: {all: []}", ["rules.0.when.all", "at least 1 item"])],
        id="empty-all-would-match-everything",
    ),
    pytest.param(
        mutate("{category: hate}", "{language: null}"),
        [("when: {language: null}", ["rules.0.when", "without a value: language"])],
        id="null-condition-would-match-everything",
    ),
    pytest.param(
        BASE.replace("action: review", "action: review\n    action: allow", 1),
        [("action: allow", ["duplicate key 'action'"])],
        id="duplicate-yaml-key",
    ),
    pytest.param(
        mutate("{category: hate}", "{not: {}}"),
        [("when: {not: {}}", ["rules.0.when.not", "empty condition"])],
        id="empty-not",
    ),
    pytest.param(
        mutate("{category: hate}", "{language: [en], min_score: 0.5}"),
        [("min_score", ["rules.0.when", "need a category"])],
        id="min-score-without-category",
    ),
    pytest.param(
        mutate("{category: hate}", "{category: hate, min_score: 2}"),
        [("min_score", ["rules.0.when.min_score", "less than or equal to 1"])],
        id="min-score-out-of-range",
    ),
    pytest.param(
        mutate("{category: hate}", "{language: [english]}"),
        [("english", ["rules.0.when.language.0", "should match pattern"])],
        id="bad-language-code",
    ),
    pytest.param(
        mutate("{category: hate}", "{account_age_days_lt: 0}"),
        [("account_age_days_lt", ["greater than 0"])],
        id="account-age-zero",
    ),
    pytest.param(
        mutate("    action: review", "    action: review\n    markets: [us]"),
        [("markets: [us]", ["rules.0.markets", "unknown market 'us'"])],
        id="unknown-rule-market",
    ),
    pytest.param(
        mutate("{category: hate}", "{market: [us]}"),
        [("{market: [us]}", ["rules.0.when.market", "unknown market 'us'"])],
        id="unknown-condition-market",
    ),
    pytest.param(
        mutate("markets: [cn, intl]", "markets: [intl]"),
        [(1, ["default_market 'cn' is not in markets"])],  # default_market is implicit: no line
        id="default-market-not-listed",
    ),
    pytest.param(
        mutate("- id: r1", "- id: Rule One"),
        [("Rule One", ["rules.0.id", "pattern"])],
        id="bad-rule-id",
    ),
    pytest.param(
        mutate("    when: {category: hate}\n", ""),
        [("- id: r1", ["rules.0.when: Field required"])],
        id="rule-without-when",
    ),
    pytest.param(
        BASE.split("rules:")[0] + "rules: []\n",
        [("rules: []", ["rules", "at least 1"])],
        id="no-rules",
    ),
    pytest.param(
        mutate("{category: hate}", "{category: hat, keywords: nope}"),
        [
            ("{category: hat", ["unknown category 'hat'"]),
            ("{category: hat", ["unknown keyword list 'nope'"]),
        ],
        id="two-errors-reported-separately",
    ),
]


@pytest.mark.parametrize(("text", "expected"), INVALID)
def test_invalid_policy(text: str, expected: list[tuple[int | str, list[str]]]) -> None:
    with pytest.raises(PolicyError) as info:
        parse_policy(text, source="bad.yaml")
    errors = info.value.errors
    assert len(errors) == len(expected), errors
    for error, (where, fragments) in zip(sorted(errors, key=_line), expected, strict=True):
        line = where if isinstance(where, int) else line_of(text, where)
        assert _line(error) == line, error
        for fragment in fragments:
            assert fragment in error, (fragment, error)
    assert str(info.value) == "\n".join(errors)


def _line(error: str) -> int:
    m = re.match(r"^bad\.yaml:(\d+):(\d+): \S", error)
    assert m, f"not file:line:col: message: {error!r}"
    return int(m.group(1))


def test_invalid_utf8_reports_line_and_column() -> None:
    raw = BASE.encode().replace(b"hate speech", b"hate \xff speech")
    with pytest.raises(PolicyError) as info:
        parse_policy(raw, source="bad.yaml")
    [error] = info.value.errors
    assert error.startswith(f"bad.yaml:{line_of(BASE, 'hate speech')}:23: ")
    assert "not valid UTF-8" in error


def test_valid_base_policy_parses() -> None:
    # the base of the error table is itself valid: each error above comes from its mutation
    lp = parse_policy(BASE)
    assert [r.id for r in lp.policy.rules] == ["r1"]


def test_load_policy_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.yaml"
    with pytest.raises(PolicyError) as info:
        load_policy(path)
    [error] = info.value.errors
    assert error.startswith(f"{path}: cannot read")


def test_load_policy_errors_name_the_file(tmp_path: Path) -> None:
    path = tmp_path / "p.yaml"
    path.write_text(mutate("action: review", "action: nuke"), encoding="utf-8")
    with pytest.raises(PolicyError) as info:
        load_policy(path)
    [error] = info.value.errors
    assert error.startswith(f"{path}:13:13: rules.0.action: ")


# --------------------------------------------------------------------------- version


def test_version_is_a_function_of_the_bytes(tmp_path: Path) -> None:
    a = parse_policy(BASE.encode())
    assert a.version == parse_policy(BASE.encode()).version
    assert a.version == parse_policy(BASE).version  # str and its UTF-8 bytes
    assert re.fullmatch(r"[0-9a-f]{16}", a.version)
    path = tmp_path / "p.yaml"
    path.write_bytes(BASE.encode())
    assert load_policy(path).version == a.version


@pytest.mark.parametrize(
    ("old", "new"),
    [
        ("threshold: 0.8", "threshold: 0.7"),  # one character, a different policy
        ("name: t", "name: u"),
        ("action: review", "action: review "),  # one character, the same policy
        ("\nrules:", "\n#\nrules:"),  # a comment
    ],
)
def test_one_character_changes_the_version(old: str, new: str) -> None:
    changed = mutate(old, new)
    assert abs(len(changed) - len(BASE)) <= 2
    assert parse_policy(changed).version != parse_policy(BASE).version


# --------------------------------------------------------------------------- evasion folding

FOLD_POLICY = """\
name: t
categories:
  scam_spam: {description: scams, threshold: 0.8}
keywords:
  contact:
    terms: [加微信, casino, 賭場]
rules:
  - id: contact
    when: {keywords: contact}
    action: review
"""


@pytest.mark.parametrize(
    "text, hit",
    [
        ("快来加微信", "加微信"),
        ("快来加 微 信", "加微信"),  # spaced out
        ("快来加😀微😀信", "加微信"),  # emoji between characters
        ("快来加\u200b微\u200b信", "加微信"),  # zero-width spaces
        ("c a s i n o tonight", "casino"),
        ("c.a.s.i.n.o tonight", "casino"),
        ("ＣＡＳＩＮＯ", "casino"),  # full-width
        ("澳门赌场", "赌场"),  # Simplified text, Traditional term in the list
        ("澳門賭場", "赌场"),  # Traditional text
        ("I am a cat", None),  # single letters in ordinary text are not joined
        ("casinos are fun", None),  # word boundary still holds
    ],
)
def test_keywords_see_through_evasion(text, hit):
    lp = parse_policy(FOLD_POLICY)
    out = evaluate(lp, facts(text=text, language="zh"))
    matches = out["cn"].matches
    if hit is None:
        assert matches == ()
    else:
        assert dict(matches[0].keywords)["contact"] == (hit,)


# --------------------------------------------------------------------------- includes


def test_keyword_and_regex_files_beside_the_policy(tmp_path):
    (tmp_path / "lists").mkdir()
    (tmp_path / "lists" / "gambling.txt").write_text("# our list\n百家乐\n\nbaccarat\n", "utf-8")
    (tmp_path / "lists" / "contact.re").write_text(r"wx\d{4}" + "\n", "utf-8")
    policy = FOLD_POLICY.replace(
        "    terms: [加微信, casino, 賭場]",
        "    terms: [加微信]\n    files: [lists/gambling.txt]\n    regex_files: [lists/contact.re]",
    )
    path = tmp_path / "p.yaml"
    path.write_text(policy, "utf-8")
    lp = load_policy(path)
    assert set(lp.includes) == {"lists/gambling.txt", "lists/contact.re"}
    for text in ("百家乐走起", "baccarat night", "add wx1234"):
        assert evaluate(lp, facts(text=text))["cn"].action == "review", text
    # the version covers the included files: editing a list makes a new version
    before = lp.version
    (tmp_path / "lists" / "gambling.txt").write_text("百家乐\n", "utf-8")
    assert load_policy(path).version != before
    # a bundle reloads the same version without the disk
    from service.policy.parse import load_bundle

    again = load_policy(path)
    assert load_bundle(again.bundle()).version == again.version


@pytest.mark.parametrize(
    "files, content, expected",
    [
        ("files: [lists/missing.txt]", None, ["p.yaml:6:13", "cannot read 'lists/missing.txt'"]),
        ("files: [../outside.txt]", None, ["p.yaml:6:13", "stay beside the policy"]),
        ("regex_files: [lists/bad.re]", "ok\n(unclosed\n", ["lists/bad.re:2:1", "bad regex"]),
    ],
)
def test_include_errors_point_at_the_right_file_and_line(tmp_path, files, content, expected):
    (tmp_path / "lists").mkdir()
    if content is not None:
        (tmp_path / "lists" / "bad.re").write_text(content, "utf-8")
    policy = FOLD_POLICY.replace("    terms: [加微信, casino, 賭場]", f"    {files}")
    path = tmp_path / "p.yaml"
    path.write_text(policy, "utf-8")
    with pytest.raises(PolicyError) as err:
        load_policy(path)
    [message] = err.value.errors
    for fragment in expected:
        assert fragment in message


# --------------------------------------------------------------------------- unreachable rules

UNREACHABLE_BASE = """\
name: t
markets: [cn, intl]
categories:
  hate: {description: hate speech, threshold: 0.5}
rules:
  - id: fine
    when: {category: hate}
    action: review
  - id: r2
{markets}    when: {when}
    action: remove
"""


@pytest.mark.parametrize(
    "markets, when, fragment",
    [
        (
            "",
            "{all: [{language: [en]}, {language: [zh]}]}",
            "language conditions exclude each other",
        ),
        ("", "{all: [{language: [en]}, {not: {language: [en]}}]}", "is excluded"),
        (
            "",
            "{category: hate, min_score: 0.9, max_score: 0.5}",
            "hate score must be >= 0.9 and < 0.5",
        ),
        ("", "{all: [{category: hate}, {not: {category: hate}}]}", "hate score"),
        ("    markets: [cn]\n", "{market: [intl]}", "market conditions exclude each other"),
        ("", "{all: [{mixed: true}, {mixed: false}]}", "mixed must be both"),
        ("", "{all: [{account_age_days_lt: 3}, {not: {account_age_days_lt: 5}}]}", "account age"),
        ("", "{all: [{text_chars_lt: 5}, {not: {text_chars_lt: 10}}]}", "text length"),
    ],
)
def test_unreachable_rules_are_refused(markets, when, fragment):
    text = UNREACHABLE_BASE.replace("{markets}", markets).replace("{when}", when)
    with pytest.raises(PolicyError) as err:
        parse_policy(text, "p.yaml")
    [message] = err.value.errors
    line = 11 if markets else 10
    assert message.startswith(f"p.yaml:{line}:11: rules.1.when: rule 'r2' can never match")
    assert fragment in message


@pytest.mark.parametrize(
    "when",
    [
        "{any: [{language: [en]}, {all: [{language: [en]}, {language: [zh]}]}]}",
        "{not: {any: [{language: [en]}, {language: [zh]}]}}",
        "{all: [{category: hate, min_score: 0.2}, {not: {category: hate, min_score: 0.6}}]}",
        "{all: [{keywords: nothing_known}]}".replace(
            "{keywords: nothing_known}", "{language: [en]}"
        ),
    ],
)
def test_satisfiable_rules_are_not_called_unreachable(when):
    text = UNREACHABLE_BASE.replace("{markets}", "").replace("{when}", when)
    assert parse_policy(text, "p.yaml").policy.rules[1].id == "r2"
