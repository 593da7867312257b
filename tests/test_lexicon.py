"""Lexicon selection: which terms survive the labelled data, and the lists the policy uses."""

from __future__ import annotations

from pathlib import Path

import pytest

from service.classifier import lexicon
from service.classifier.datasets import Example
from service.classifier.lexicon import LEXICON_MIN_SCORE
from service.config import REPO_ROOT
from service.policy import load_policy

LST = lexicon.LexiconList("lexicon_test", "sexual", ("words.txt",), "test list")


def _example(text: str, labels=(), covers=("sexual",), split="train") -> Example:
    """An example whose text lands in `split` (the split is a hash of the text)."""
    for i in range(200):
        ex = Example(f"{text} {i}", frozenset(labels), "zh", "t", frozenset(covers))
        if ex.split == split:
            return ex
    raise AssertionError("no suffix puts the text in that split")


@pytest.fixture
def root(tmp_path: Path) -> Path:
    (tmp_path / "words.txt").write_text(
        "\n".join(["约炮", "美腿", "裸聊", "SM", "屌", "ＡＤＵＬＴ", "escort girls", "约炮", "!!!"]),
        "utf-8",
    )
    return tmp_path


def test_terms_are_folded_deduplicated_and_short_ones_left_untested(root):
    terms = lexicon.read_terms(LST, root)
    assert terms == ["约炮", "美腿", "裸聊", "sm", "屌", "adult", "escort girls", "!!!"]
    assert [t for t in terms if lexicon.too_short(t)] == ["sm", "屌", "!!!"]


def test_a_term_that_fires_on_negatives_is_dropped_and_unseen_terms_are_kept(root):
    examples = [
        _example("同城约炮私聊", labels={"sexual"}),
        _example("今天的美腿穿搭分享"),  # benign: 美腿 is an ordinary word here
        _example("夏天美腿必备单品"),
        # a hateful row from a source that does not label "sexual": neither positive nor
        # negative for it, so its hit on 约炮 is not counted
        _example("约炮的人都是垃圾", labels={"hate"}, covers=("hate",)),
        # the test split is never used for selection
        _example("约炮 不要 约炮", split="test"),
    ]
    (sel,) = lexicon.select(examples, root, (LST,))
    assert sel.read == 8 and sorted(sel.too_short) == ["!!!", "sm", "屌"]
    assert (sel.stats["约炮"].positive, sel.stats["约炮"].negative) == (1, 0)
    assert sel.stats["美腿"].negative == 2
    assert sel.kept == ["约炮", "裸聊", "adult", "escort girls"]
    assert "美腿" in sel.dropped


def test_precise_terms_survive_a_few_negative_hits():
    stats = lexicon.TermStats(positive=lexicon.MIN_POSITIVE_HITS * 4, negative=1)
    assert lexicon.keep(stats)
    assert not lexicon.keep(lexicon.TermStats(positive=lexicon.MIN_POSITIVE_HITS - 1, negative=1))
    assert not lexicon.keep(lexicon.TermStats(positive=5, negative=5))


def test_latin_terms_match_whole_words_only(root):
    examples = [_example("we are adults here"), _example("adult content escort girls", labels={"sexual"})]
    stats = lexicon.term_stats(["adult", "escort girls"], "sexual", lexicon.folded(examples))
    assert (stats["adult"].positive, stats["adult"].negative) == (1, 0)
    assert stats["escort girls"].positive == 1


def test_written_lists_load_as_policy_keywords(root, tmp_path):
    (sel,) = lexicon.select([_example("同城约炮私聊", labels={"sexual"})], root, (LST,))
    (path,) = lexicon.write_lists([sel], tmp_path / "lists")
    policy = tmp_path / "p.yaml"
    policy.write_text(
        "name: t\ncategories: {sexual: {description: sex, threshold: 0.5}}\n"
        "keywords: {lex: {files: [lists/lexicon_test.txt]}}\n"
        "rules: [{id: r, when: {keywords: lex}, action: review}]\n",
        "utf-8",
    )
    lp = load_policy(policy)
    assert path.read_text("utf-8").startswith("# sexual: test list.")
    assert lp.matchers["lex"].find("同城约炮") == ["约炮"]


def test_missing_lexicon_file_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="words.txt"):
        lexicon.read_terms(LST, tmp_path)


def test_default_policy_uses_every_lexicon_list_at_the_measured_score():
    lp = load_policy(REPO_ROOT / "policies" / "default.yaml")
    for lst in lexicon.LISTS:
        assert lst.name in lp.matchers and lp.matchers[lst.name].terms
        (rule,) = [r for r in lp.policy.rules if any(c.keywords == lst.name for c in r.when.all or [])]
        scores = [c for c in rule.when.all if c.category == lst.category]
        assert [c.min_score for c in scores] == [LEXICON_MIN_SCORE]
